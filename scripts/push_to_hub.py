"""Build the Hub repository folder of a saved model and upload it: the same as `hf-rnn-attention push`.

python scripts/push_to_hub.py runs/multi30k_de_en_luong user/rnn-attention-multi30k-de-en --language de en --dry-run
"""

import sys

from hf_rnn_attention.cli import main

if __name__ == "__main__":
    main(["push", *sys.argv[1:]])

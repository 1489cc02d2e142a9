"""Train from a recipe: the same as `hf-rnn-attention train`.

python scripts/train.py --config configs/date.yaml [--set training.num_train_epochs=3] [--output-dir DIR]
"""

import sys

from hf_rnn_attention.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])

"""Where the decoding time goes: `torch.profiler` over the translate path (sorted, continuous batching for
greedy) of a saved model, after a warm-up on the first 64 sentences; prints the operator table.

    python scripts/profile_decoding.py runs/benchmark_peers/bahdanau --source $PEERS/data/test.raw.de --num-beams 1
"""

import argparse
import time
from pathlib import Path

from decoding_args import add_decoding_arguments
from torch.profiler import ProfilerActivity, profile
from transformers import AutoTokenizer

from hf_rnn_attention import RNNAttentionForConditionalGeneration
from hf_rnn_attention.inference import translate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_decoding_arguments(parser)
    parser.add_argument("--rows", type=int, default=30, help="operators to print")
    args = parser.parse_args()
    model = RNNAttentionForConditionalGeneration.from_pretrained(args.model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    sources = Path(args.source).read_text(encoding="utf-8").splitlines()
    settings = dict(num_beams=args.num_beams, max_new_tokens=args.max_new_tokens, length_penalty=0.0,
                    batch_size=args.batch_size)  # fmt: skip
    translate(model, tokenizer, sources[:64], **settings)  # warm-up
    start = time.perf_counter()
    translate(model, tokenizer, sources, **settings)
    print(f"translate without the profiler: {time.perf_counter() - start:.2f} s")
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        translate(model, tokenizer, sources, **settings)
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()

"""The arguments of the decoding scripts (benchmark_peers.py decode, profile_decoding.py, memory_stages.py): a
saved model, its source sentences and the translate command's settings. Only argparse here: memory_stages.py
measures the imports that come after it."""

import argparse


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir")
    parser.add_argument("--source", required=True, help="one source sentence per line")
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=100)

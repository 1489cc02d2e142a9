"""Where greedy decoding's time goes: the hand-written greedy loop of `benchmark_peers.py` over length-sorted
batches, its steps grouped by how many sentences were still running, and the encoder apart.

    python scripts/decode_split.py runs/benchmark_peers/bahdanau --source $PEERS/data/test.raw.de
"""

import argparse
import time
from collections import defaultdict
from pathlib import Path

import torch
from transformers import AutoTokenizer

from hf_rnn_attention import RNNAttentionForConditionalGeneration

BUCKETS = [(49, 64), (17, 48), (5, 16), (2, 4), (1, 1)]


@torch.inference_mode()
def split(model, batches, max_new_tokens):
    core, eos = model.model, model.config.eos_token_id
    steps, encoder_seconds = defaultdict(lambda: [0, 0.0]), 0.0  # rows → [steps, seconds]
    for batch in batches:
        start = time.perf_counter()
        cache = core.start_decoding(core.encoder(batch["input_ids"], batch["attention_mask"]), batch["attention_mask"])
        encoder_seconds += time.perf_counter() - start
        memory, state, feed = cache.memory, cache.state, cache.input_feed
        tokens = torch.full((batch["input_ids"].shape[0], 1), model.config.decoder_start_token_id)
        for _ in range(max_new_tokens):
            start, rows = time.perf_counter(), tokens.shape[0]
            decoded = core.decoder(tokens, memory, state, feed)
            tokens = model.compute_logits(decoded.attentional[:, -1]).argmax(-1, keepdim=True)  # (R, 1)
            going = tokens.squeeze(1) != eos
            state, feed = decoded.state, decoded.input_feed
            done = not bool(going.any())
            if not done and not bool(going.all()):
                keep = going.nonzero().squeeze(1)
                tokens = tokens[keep]
                memory = type(memory)(*(tensor.index_select(0, keep) for tensor in memory))
                state = tuple(s.index_select(1, keep) for s in state)
                feed = feed.index_select(0, keep) if feed is not None else None
            steps[rows][0] += 1
            steps[rows][1] += time.perf_counter() - start
            if done:
                break
    return steps, encoder_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--source", required=True)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=100)
    args = parser.parse_args()
    model = RNNAttentionForConditionalGeneration.from_pretrained(args.model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    sources = Path(args.source).read_text(encoding="utf-8").splitlines()
    order = sorted(sources, key=lambda text: len(tokenizer(text)["input_ids"]))
    batches = [tokenizer(order[i : i + args.batch_size], padding=True, return_tensors="pt")
               for i in range(0, len(order), args.batch_size)]  # fmt: skip
    split(model, batches[:2], args.max_new_tokens)  # warm-up
    start = time.perf_counter()
    steps, encoder_seconds = split(model, batches, args.max_new_tokens)
    total = time.perf_counter() - start
    print("| sentences still running | steps | seconds | ms a step |\n|---|---|---|---|")
    for low, high in BUCKETS:
        count = sum(n for rows, (n, _) in steps.items() if low <= rows <= high)
        seconds = sum(s for rows, (_, s) in steps.items() if low <= rows <= high)
        label = f"{low}–{high}" if low != high else str(low)
        print(f"| {label} | {count} | {seconds:.2f} | {1000 * seconds / max(count, 1):.1f} |")
    print(f"| the encoder, {len(batches)} batches | | {encoder_seconds:.2f} | |\n| in all | | {total:.2f} | |")


if __name__ == "__main__":
    main()

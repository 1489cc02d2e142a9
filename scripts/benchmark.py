"""Speed of training and decoding at the reference size, on synthetic data.

Training: target tokens per second for one optimizer step (forward, backward, clipping, Adam) on random
batches of 64 pairs with lengths around 15, for the Luong preset (fast path and forced step path) and the
Bahdanau preset (step path by construction).
Decoding: sentences per second of `generate()` (greedy, beam 5) beside a minimal hand-written greedy loop over
the same model (the floor for generate()'s overhead). An untrained model rarely emits EOS, so every sentence
runs to `--max-new-tokens`.

    python scripts/benchmark.py                       # everything, prints a Markdown table and JSON
    python scripts/benchmark.py --only train --train-seconds 20
"""

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from benchmark_peers import handwritten_greedy  # the same floor in both benchmarks (scripts/ is on sys.path)

from hf_rnn_attention import RNNAttentionConfig, RNNAttentionForConditionalGeneration

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def build_model(preset: str, vocab_size: int, seed: int = 0) -> RNNAttentionForConditionalGeneration:
    config = RNNAttentionConfig.from_json_file(CONFIGS / f"{preset}.json")
    config.vocab_size = vocab_size
    torch.manual_seed(seed)
    return RNNAttentionForConditionalGeneration(config)


def random_pairs(n: int, vocab_size: int, mean_length: int, generator: torch.Generator):
    """Right-padded sources and labels (-100 at padding) with lengths uniform in mean ± 5, EOS-terminated."""
    low, high = max(2, mean_length - 5), mean_length + 5
    source_lengths = torch.randint(low, high + 1, (n,), generator=generator)
    target_lengths = torch.randint(low, high + 1, (n,), generator=generator)
    source = torch.randint(3, vocab_size, (n, high), generator=generator)
    labels = torch.randint(3, vocab_size, (n, high + 1), generator=generator)
    positions = torch.arange(high + 1)
    source_mask = (positions[:high][None, :] < source_lengths[:, None]).long()
    source = source.masked_fill(source_mask == 0, 0)
    labels[torch.arange(n), target_lengths] = 2  # EOS after the target tokens
    labels = labels.masked_fill(positions[None, :] > target_lengths[:, None], -100)
    return source, source_mask, labels


def batches(source, mask, labels, batch_size):
    for start in range(0, source.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        width = int(mask[rows].sum(1).max())
        label_width = int(labels[rows].ne(-100).sum(1).max())
        yield source[rows, :width], mask[rows, :width], labels[rows, :label_width]


def bench_training(preset, fast_path, args):
    model = build_model(preset, args.vocab_size).train()
    model.model.decoder.fast_path = fast_path
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    source, mask, labels = random_pairs(64 * 400, args.vocab_size, args.mean_length, generator)
    stream = batches(source, mask, labels, args.batch_size)

    def step():
        input_ids, attention_mask, batch_labels = next(stream)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=batch_labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return int(batch_labels.ne(-100).sum())

    for _ in range(args.warmup_steps):
        step()
    tokens, steps, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < args.train_seconds:
        tokens += step()
        steps += 1
    elapsed = time.perf_counter() - start
    return {"target_tokens_per_s": tokens / elapsed, "steps": steps, "seconds": elapsed}


def bench_decoding(preset, mode, args):
    model = build_model(preset, args.vocab_size).eval()
    generator = torch.Generator().manual_seed(2)
    n = args.decode_sentences if mode != "beam5" else args.beam_sentences
    source, mask, _ = random_pairs(n, args.vocab_size, args.mean_length, generator)
    start = time.perf_counter()
    for input_ids, attention_mask, _ in batches(source, mask, torch.zeros_like(source), args.decode_batch_size):
        if mode == "handwritten_greedy":
            handwritten_greedy(model, input_ids, attention_mask, args.max_new_tokens)
        else:
            with torch.inference_mode():
                model.generate(
                    input_ids,
                    attention_mask=attention_mask,
                    max_new_tokens=args.max_new_tokens,
                    num_beams=5 if mode == "beam5" else 1,
                    do_sample=False,
                )
    elapsed = time.perf_counter() - start
    return {"sentences_per_s": n / elapsed, "sentences": n, "seconds": elapsed}


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, Python {platform.python_version()}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["train", "decode"], default=None)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--mean-length", type=int, default=15)
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--train-seconds", type=float, default=30.0)
    parser.add_argument("--decode-sentences", type=int, default=1000)
    parser.add_argument("--beam-sentences", type=int, default=200)
    parser.add_argument("--decode-batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()

    results = {"machine": machine(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "rows": []}
    if args.only in (None, "train"):
        for preset, fast_path, label in [
            ("luong", True, "luong, fast path"),
            ("luong", False, "luong, step path"),
            ("bahdanau", True, "bahdanau (step path)"),
        ]:
            row = {"work": "train", "model": label, **bench_training(preset, fast_path, args)}
            results["rows"].append(row)
            print(f"train  {label:24s} {row['target_tokens_per_s']:8.0f} target tokens/s", flush=True)
    if args.only in (None, "decode"):
        for preset in ("luong", "bahdanau"):
            for mode in ("handwritten_greedy", "greedy", "beam5"):
                row = {"work": "decode", "model": preset, "mode": mode, **bench_decoding(preset, mode, args)}
                results["rows"].append(row)
                print(f"decode {preset:9s} {mode:19s} {row['sentences_per_s']:8.1f} sentences/s", flush=True)

    print(f"\nmachine: {results['machine']}\ndate: {results['date']}")
    print("\n| work | model | mode | result |\n|---|---|---|---|")
    for row in results["rows"]:
        if row["work"] == "train":
            print(f"| train | {row['model']} | teacher forcing | {row['target_tokens_per_s']:.0f} target tokens/s |")
        else:
            print(f"| decode | {row['model']} | {row['mode']} | {row['sentences_per_s']:.1f} sentences/s |")
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

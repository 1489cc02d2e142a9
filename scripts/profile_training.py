"""Where a training step's time goes, on the peers' benchmark batches (../shared/peers/README.md).

Trains a few steps (forward, backward, clip, Adam) of a preset on batches of 64 random Multi30k pairs tokenized
with the peers' BPE, under `torch.profiler`, and prints the time per part of the model: forward time by module
(encoder, bridge, decoder recurrence, attention, output layer, loss) from forward hooks, backward time by the
autograd function that ran it, and the optimizer. Then the top operators by self time.

    python scripts/profile_training.py --preset bahdanau [--steps 6] [--peers /tmp/peers] [--bf16] [--by-shape]

--by-shape also groups the matrix products by shape: the output layer, the fused loops' per-step products (at
most 64 rows), the other big products and the batched products (`bmm`), with the GFLOP/s of each.
"""

import argparse
import random
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile, record_function
from transformers import DataCollatorForSeq2Seq

from hf_rnn_attention import RNNAttentionConfig, RNNAttentionForConditionalGeneration
from hf_rnn_attention.cli import resolve_config_path
from hf_rnn_attention.tokenization import tokenizer_from_file

PARTS = {  # module path (prefix) → the part it belongs to, most specific first
    "model.encoder": "encoder (embedding + packed BiLSTM)",
    "model.bridge": "bridge",
    "model.decoder.attention": "attention (scores, softmax, context)",
    "model.decoder.attention_combine": "attentional vector tanh(W_c[c; h])",
    "model.decoder.rnn": "decoder RNN",
}


def batches(args, tokenizer, model):
    source = open(f"{args.peers}/data/train.raw.de", encoding="utf-8").read().splitlines()
    target = open(f"{args.peers}/data/train.raw.en", encoding="utf-8").read().splitlines()
    rows = random.Random(0).sample(range(len(source)), 64 * (args.steps + 2))
    collate = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
    for start in range(0, len(rows), 64):
        chunk = rows[start : start + 64]
        yield collate([{"input_ids": tokenizer(source[i])["input_ids"],
                        "labels": tokenizer(text_target=target[i])["input_ids"]} for i in chunk])  # fmt: skip


def peers_tokenizer_and_config(preset: str, peers: str):
    """The peers' BPE and the model config of `preset` for their work (dropout 0.2, untied output layer)."""
    tokenizer = tokenizer_from_file(f"{peers}/data/bpe8k.json")
    config = RNNAttentionConfig.from_json_file(resolve_config_path(preset, (".json",)))
    config.vocab_size, config.dropout, config.tie_word_embeddings = len(tokenizer), 0.2, False
    config.pad_token_id, config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    config.bos_token_id = config.decoder_start_token_id = tokenizer.bos_token_id
    return tokenizer, config


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="bahdanau")
    parser.add_argument("--peers", default="/tmp/peers")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CPUs with AVX-512 BF16)")
    parser.add_argument("--by-shape", action="store_true", help="the matrix products grouped by shape, with GFLOP/s")
    args = parser.parse_args()

    tokenizer, config = peers_tokenizer_and_config(args.preset, args.peers)
    torch.manual_seed(0)
    model = RNNAttentionForConditionalGeneration(config).train()
    # the train command's optimizer for this work (configs/peers_work.yaml: adamw_torch_fused, weight decay 0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0, fused=True)
    stream = batches(args, tokenizer, model)

    def step(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = model(**batch, return_logits=False).loss
        optimizer.zero_grad(set_to_none=True)
        with record_function("## backward"):
            loss.backward()
        with record_function("## optimizer (clip + Adam)"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        return int(batch["labels"].ne(-100).sum())

    for _ in range(2):  # warm-up
        step(next(stream))
    hooks = []
    for name, module in model.named_modules():
        part = next((PARTS[prefix] for prefix in PARTS if name == prefix), None)
        if part is not None:
            frames = {}
            hooks.append(module.register_forward_pre_hook(
                lambda m, a, part=part, frames=frames: frames.__setitem__(id(a), record_function(f"# {part}").__enter__())))  # fmt: skip
            hooks.append(module.register_forward_hook(
                lambda m, a, o, frames=frames: frames.pop(id(a)).__exit__(None, None, None)))  # fmt: skip
    # the output layer by wrapping compute_logits: a hook on lm_head would send it down nn.Linear's own path
    compute_logits = model.compute_logits

    def timed_logits(*args, **kwargs):
        with record_function("# output layer"):
            return compute_logits(*args, **kwargs)

    model.compute_logits = timed_logits
    tokens, started = 0, time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.by_shape) as prof:
        for _ in range(args.steps):
            tokens += step(next(stream))
    elapsed = time.perf_counter() - started
    for hook in hooks:
        hook.remove()

    events = prof.key_averages()
    forward = defaultdict(float)
    backward = defaultdict(float)
    for event in events:
        if event.key.startswith("# "):
            forward[event.key[2:]] += event.cpu_time_total / 1e3 / args.steps
        elif event.key.startswith("## "):
            forward[event.key[3:]] += event.cpu_time_total / 1e3 / args.steps
        elif event.key.startswith("autograd::engine::evaluate_function: "):
            backward[event.key.split(": ", 1)[1]] += event.cpu_time_total / 1e3 / args.steps
    print(f"{args.preset}{' bf16' if args.bf16 else ''}: {tokens / elapsed:.0f} target tokens/s under the profiler, "
          f"{elapsed / args.steps * 1e3:.0f} ms per step, {tokens / args.steps:.0f} target tokens per batch\n")  # fmt: skip
    print("| part (forward, from module hooks; backward and optimizer as wholes) | ms per step |\n|---|---|")
    for part, ms in sorted(forward.items(), key=lambda item: -item[1]):
        print(f"| {part} | {ms:.1f} |")
    print("\n| backward: autograd function (top 12) | ms per step |\n|---|---|")
    for name, ms in sorted(backward.items(), key=lambda item: -item[1])[:12]:
        print(f"| {name} | {ms:.1f} |")
    print("\n" + events.table(sort_by="self_cpu_time_total", row_limit=15))
    if args.by_shape:
        print_products_by_shape(prof, args.steps, config.vocab_size)


def product_flops(event) -> int:
    """Multiply-adds × 2 of one call of a matrix product, from its recorded input shapes."""
    shapes = event.input_shapes
    if event.key == "aten::mm":
        (m, k), (_, n) = shapes[0], shapes[1]
        return 2 * m * k * n
    if event.key == "aten::addmm":
        (m, k), (_, n) = shapes[1], shapes[2]
        return 2 * m * k * n
    if event.key == "aten::bmm":
        (b, m, k), (_, _, n) = shapes[0], shapes[1]
        return 2 * b * m * k * n
    (m, k), (n, _) = shapes[0], shapes[1]  # oneDNN's linear: x (M, K), weight (N, K)
    return 2 * m * k * n


def print_products_by_shape(prof, steps: int, vocab_size: int) -> None:
    products = ("aten::mm", "aten::addmm", "aten::bmm", "mkldnn::_linear_pointwise")
    groups = defaultdict(lambda: [0.0, 0.0])  # group → [ms per step, GFLOP per step]
    for event in prof.key_averages(group_by_input_shape=True):
        if event.key not in products:
            continue
        dims = [d for shape in event.input_shapes if isinstance(shape, list) for d in shape]
        if vocab_size in dims:
            group = "the output layer (forward and backward)"
        elif event.key == "aten::bmm":
            group = "batched products (bmm: the attention's context and its backward)"
        elif min((d for d in dims if d > 1), default=0) <= 64:
            group = "the fused loops' per-step products (<= 64 rows)"
        else:
            group = "the other big products (input projections, W_c, weight gradients)"
        groups[group][0] += event.self_cpu_time_total / 1e3 / steps
        groups[group][1] += product_flops(event) * event.count / 1e9 / steps
    print("\n| products | ms per step | GFLOP per step | GFLOP/s |\n|---|---|---|---|")
    for group, (ms, gflop) in sorted(groups.items(), key=lambda item: -item[1][0]):
        print(f"| {group} | {ms:.0f} | {gflop:.1f} | {gflop / ms * 1e3 if ms else 0:.0f} |")


if __name__ == "__main__":
    main()

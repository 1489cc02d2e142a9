"""Training steps of two versions of the modeling file, alternating in one process.

    python scripts/ab_training_step.py --baseline HEAD~1 [--preset luong] [--steps 10] [--rounds 8] [--peers /tmp/peers]

The machine of BENCHMARKS.md is a shared VM whose speed drifts by tens of percent within an hour, so two separate
runs cannot tell a change of a few percent. This loads `hf_rnn_attention/modeling_rnn_attention.py` as it was at
`--baseline` (`git show`) beside the working tree's, builds the same model from each (the same initial weights),
and times rounds of the same batches of the peers' work (64 random Multi30k pairs each, the peers' BPE, as
`profile_training.py` makes them, with its model config): forward, backward, clip 1.0 and fused AdamW, as the train command runs them.
The two versions take turns, each going first in every other round. Prints the ms per step of every round, the
medians and their ratio. Both versions share the rest of the package (configuration, tokenization) as it is now.
"""

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import profile_training  # noqa: E402  (the peers' batches)

from hf_rnn_attention import modeling_rnn_attention  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def baseline_module(revision: str) -> dict:
    """The modeling file at `revision`, executed as a module of its own (its relative imports resolved to the
    installed package)."""
    source = subprocess.run(["git", "show", f"{revision}:hf_rnn_attention/modeling_rnn_attention.py"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout  # fmt: skip
    source = source.replace("from .", "from hf_rnn_attention.")
    namespace = {"__name__": f"modeling_rnn_attention_at_{revision}"}
    exec(compile(source, f"modeling_rnn_attention.py@{revision}", "exec"), namespace)
    return namespace


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="git revision of the modeling file to compare against")
    parser.add_argument("--preset", default="luong")
    parser.add_argument("--peers", default="/tmp/peers")
    parser.add_argument("--steps", type=int, default=10, help="batches per round")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()

    tokenizer, config = profile_training.peers_tokenizer_and_config(args.preset, args.peers)
    versions = {"baseline": baseline_module(args.baseline)["RNNAttentionForConditionalGeneration"],
                "working tree": modeling_rnn_attention.RNNAttentionForConditionalGeneration}  # fmt: skip
    torch.manual_seed(0)
    models = {name: cls(config).train() for name, cls in versions.items()}
    models["baseline"].load_state_dict(models["working tree"].state_dict())
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0, fused=True)
                  for name, model in models.items()}  # fmt: skip
    batches = list(profile_training.batches(argparse.Namespace(peers=args.peers, steps=args.steps), tokenizer,
                                            models["working tree"]))  # fmt: skip

    def step(name, batch):
        model, optimizer = models[name], optimizers[name]
        loss = model(**batch, return_logits=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    for name in models:  # warm-up: oneDNN kernels, allocator
        for batch in batches[:2]:
            step(name, batch)
    times = {name: [] for name in models}
    for round_ in range(args.rounds):
        order = list(models) if round_ % 2 == 0 else list(reversed(models))
        for name in order:
            started = time.perf_counter()
            for batch in batches[2:]:
                step(name, batch)
            times[name].append((time.perf_counter() - started) / len(batches[2:]) * 1e3)
    for name, values in times.items():
        print(f"{name:>12}: {' '.join(f'{v:.0f}' for v in values)} ms per step; median {statistics.median(values):.1f}")
    ratio = statistics.median(times["working tree"]) / statistics.median(times["baseline"])
    print(f"working tree / baseline ({args.baseline}), {args.preset}: {ratio:.3f} of the time per step")


if __name__ == "__main__":
    main()

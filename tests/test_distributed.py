"""The train command under torchrun: two CPU processes (DDP, gloo) train one model."""

import hashlib
import json
import math
import os
import socket
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file

# What `hf-rnn-attention train` does (cli.cmd_train → run_training), plus a digest of each rank's weights.
DRIVER = textwrap.dedent(
    """
    import hashlib, json, os, sys
    from hf_rnn_attention.cli import apply_overrides, load_recipe, run_training

    output_dir, report_dir = sys.argv[1], sys.argv[2]
    recipe = apply_overrides(load_recipe("date"), [
        "data.num_examples=400", "data.validation_size=40", "data.test_size=40",
        "training.num_train_epochs=2", "training.per_device_train_batch_size=16",
        "training.per_device_eval_batch_size=40", "training.warmup_steps=0", "training.logging_steps=1",
        "training.eval_strategy=no", "training.save_strategy=no", "training.load_best_model_at_end=false",
        "early_stopping_patience=0", f"training.output_dir={output_dir}",
    ])
    trainer, results = run_training(recipe)
    state = trainer.model.state_dict()
    digest = hashlib.sha256(b"".join(state[k].detach().cpu().numpy().tobytes() for k in sorted(state))).hexdigest()
    embedding = hashlib.sha256(state["model.shared.weight"].detach().cpu().numpy().tobytes()).hexdigest()
    rank = int(os.environ["RANK"])
    with open(os.path.join(report_dir, f"rank{rank}.json"), "w") as handle:
        json.dump({"world_size": trainer.args.world_size, "global_step": trainer.state.global_step,
                   "digest": digest, "embedding": embedding, "train_rows": len(trainer.train_dataset),
                   "first_loss": trainer.state.log_history[0]["loss"]}, handle)
    """
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_train_one_model(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    output_dir, report_dir = tmp_path / "model", tmp_path / "reports"
    report_dir.mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               str(script), str(output_dir), str(report_dir)]  # fmt: skip
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]

    reports = [json.loads((report_dir / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert all(report["world_size"] == 2 for report in reports)
    # the same weights in both processes after training: one model, gradients averaged by DDP
    assert reports[0]["digest"] == reports[1]["digest"]
    # each process saw half of every batch: steps per epoch = rows / (2 processes x 16)
    expected_steps = 2 * math.ceil(reports[0]["train_rows"] / (2 * 16))
    assert reports[0]["global_step"] == reports[1]["global_step"] == expected_steps
    # the first process saved that model (and the second did not write over it)
    saved = load_file(str(output_dir / "model.safetensors"))
    assert hashlib.sha256(saved["model.shared.weight"].numpy().tobytes()).hexdigest() == reports[0]["embedding"]
    assert (output_dir / "tokenizer.json").exists() and (output_dir / "results.json").exists()
    assert torch.isfinite(torch.tensor(reports[0]["first_loss"]))

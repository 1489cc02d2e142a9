"""The command line end to end: a tiny version of the demo, then the saved folder in use."""

import io
import json
import sys

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from hf_rnn_attention.cli import apply_overrides, load_recipe, main

TINY_DEMO = [
    "--set", "data.num_examples=10000",
    "--set", "data.validation_size=200",
    "--set", "data.test_size=300",
    "--set", "training.num_train_epochs=8",
    "--set", "training.warmup_steps=50",
    "--set", "early_stopping_patience=0",
]  # fmt: skip


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    output = tmp_path_factory.mktemp("demo") / "date"
    main(["demo", "--output-dir", str(output), *TINY_DEMO])
    return output


def test_demo_trains_saves_and_reports(demo_dir, capsys):
    results = json.loads((demo_dir / "results.json").read_text())
    assert results["test"]["beam1"]["exact_match"] >= 80.0  # the full demo reaches >= 99 %
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "attention.png"):  # fmt: skip
        assert (demo_dir / name).exists(), name
    assert (demo_dir / "attention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tokenizer_config = json.loads((demo_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_saved_demo_loads_with_auto_classes_and_converts_dates(demo_dir):
    model = AutoModelForSeq2SeqLM.from_pretrained(demo_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(demo_dir)
    batch = tokenizer(["September 27, 1994", "27 Sep 1994"], padding=True, return_tensors="pt")
    assert "token_type_ids" not in batch
    with torch.no_grad():
        generated = model.generate(**batch, num_beams=3, max_new_tokens=16)
    assert tokenizer.batch_decode(generated, skip_special_tokens=True) == ["1994-09-27", "1994-09-27"]


def test_translate_command_reads_stdin(demo_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("March 3, 2021\n1999년 12월 31일\n"))
    main(["translate", str(demo_dir), "--num-beams", "2"])
    assert capsys.readouterr().out.splitlines() == ["2021-03-03", "1999-12-31"]


def test_train_refuses_to_overwrite_a_saved_model(demo_dir):
    with pytest.raises(SystemExit, match="--overwrite"):
        main(["demo", "--output-dir", str(demo_dir), *TINY_DEMO])


def test_recipe_overrides_and_bad_sections():
    recipe = apply_overrides(load_recipe("date"), ["training.learning_rate=0.01", "model.dropout=0.0"])
    assert recipe["training"]["learning_rate"] == 0.01 and recipe["model"]["dropout"] == 0.0
    switched = apply_overrides(recipe, ["training.eval_strategy=no", "training.save_strategy=steps"])
    assert switched["training"]["eval_strategy"] == "no"  # not YAML 1.1's False
    assert (
        apply_overrides(recipe, ["training.predict_with_generate=false"])["training"]["predict_with_generate"] is False
    )
    with pytest.raises(ValueError, match="unknown section"):
        apply_overrides(recipe, ["trainer.lr=1"])
    with pytest.raises(ValueError, match="section.key=value"):
        apply_overrides(recipe, ["learning_rate"])

"""The Hub round trip without a network: the repository folder and its card, and loading by repo id from the
standard Hugging Face cache layout in a fresh process that has neither the network nor this package."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
from huggingface_hub import ModelCard
from test_pipeline import TEXTS, model_and_tokenizer, reference  # noqa: F401  (fixture)

from hf_rnn_attention.cli import main
from hf_rnn_attention.tokenization import save_tokenizer

RESULTS = {"test": {"beam1": {"bleu": 40.83, "bleu_lowercase": 41.07, "chrf": 59.96, "exact_match": 5.3},
                    "beam5": {"bleu": 41.8, "bleu_lowercase": 42.01, "chrf": 60.91, "exact_match": 5.4}}}  # fmt: skip


@pytest.fixture
def saved_model(model_and_tokenizer, tmp_path):  # noqa: F811
    model, tokenizer = model_and_tokenizer
    folder = tmp_path / "trained"
    model.save_pretrained(folder)
    save_tokenizer(tokenizer, folder)
    (folder / "results.json").write_text(json.dumps(RESULTS))
    return folder


def test_dry_run_builds_the_repository_folder_and_card(saved_model, tmp_path):
    repo = tmp_path / "repo"
    main(["push", str(saved_model), "someone/rnn-demo", "--folder", str(repo), "--dry-run", "--language", "de", "en",
          "--dataset", "bentrevett/multi30k", "--dataset-name", "Multi30k"])  # fmt: skip
    for name in ("README.md", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "modeling_rnn_attention.py", "configuration_rnn_attention.py",
                 "pipeline_rnn_attention.py"):  # fmt: skip
        assert (repo / name).exists(), name
    card = ModelCard.load(repo / "README.md")
    assert card.data.pipeline_tag == "translation" and card.data.library_name == "transformers"
    assert card.data.language == ["de", "en"] and card.data.datasets == ["bentrevett/multi30k"]
    values = {(r.metric_name, r.dataset_split): r.metric_value for r in card.data.eval_results}
    assert values[("bleu (beam5)", "test")] == 41.8 and values[("chrf (beam1)", "test")] == 59.96
    assert 'pipeline("translation", model="someone/rnn-demo", trust_remote_code=True)' in card.text
    with pytest.raises(FileExistsError, match="overwrite"):
        main(["push", str(saved_model), "someone/rnn-demo", "--folder", str(repo), "--dry-run"])


FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    sys.modules["hf_rnn_attention"] = None  # the package is NOT importable here
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, pipeline
    repo, texts = sys.argv[1], json.loads(sys.argv[2])
    tokenizer = AutoTokenizer.from_pretrained(repo, trust_remote_code=True)
    model = AutoModelForSeq2SeqLM.from_pretrained(repo, trust_remote_code=True).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**batch, num_beams=3, max_new_tokens=10)
    direct = [t.strip() for t in tokenizer.batch_decode(generated, skip_special_tokens=True)]
    translated = pipeline("translation", model=repo, trust_remote_code=True)(texts, num_beams=3, max_new_tokens=10)
    print(json.dumps({"direct": direct, "pipeline": [r["translation_text"] for r in translated]}))
    """
)


def lay_into_hub_cache(folder, hf_home, repo_id, commit="0123456789abcdef0123456789abcdef01234567"):
    """The layout huggingface_hub writes: blobs by content hash, a snapshot of links, refs/main."""
    root = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True)
    (root / "snapshots" / commit).mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    for path in folder.iterdir():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        (root / "blobs" / digest).write_bytes(path.read_bytes())
        os.symlink(f"../../blobs/{digest}", root / "snapshots" / commit / path.name)


def test_loads_by_repo_id_from_the_hub_cache_offline_without_the_package(model_and_tokenizer, saved_model, tmp_path):  # noqa: F811
    model, tokenizer = model_and_tokenizer
    repo = tmp_path / "repo"
    main(["push", str(saved_model), "someone/rnn-demo", "--folder", str(repo), "--dry-run"])
    hf_home = tmp_path / "hf_home"
    lay_into_hub_cache(repo, hf_home, "someone/rnn-demo")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(hf_home), PYTHONPATH="")
    env.pop("HF_HUB_CACHE", None)
    script = tmp_path / "fresh.py"
    script.write_text(FRESH_PROCESS)
    result = subprocess.run([sys.executable, str(script), "someone/rnn-demo", json.dumps(TEXTS)], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]  # only our JSON line
    assert lines, result.stdout[-2000:] + result.stderr[-2000:]
    outputs = json.loads(lines[-1])
    expected = reference(model, tokenizer, TEXTS, num_beams=3)
    assert outputs["direct"] == expected and outputs["pipeline"] == expected

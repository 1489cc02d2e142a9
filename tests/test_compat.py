"""transformers 4.57 as well as 5.x: a folder saved under one loads under the other (with and without the
package), and on 4.57 the built-in translation / summarization / text2text pipelines run this model.

The cross-version test needs a second environment (`HF_RNN_ATTENTION_OTHER_PYTHON`); `.ci/run` runs the suite
in both and points each at the other."""

import json
import os
import subprocess
import textwrap

import pytest
import torch
import transformers
from conftest import OTHER_PYTHON, OTHER_PYTHON_REASON
from test_pipeline import TEXTS, model_and_tokenizer, reference  # noqa: F401  (fixture)
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, pipeline

from hf_rnn_attention.tokenization import save_tokenizer

MAJOR = int(transformers.__version__.split(".")[0])

# Run by the other environment's python. `blocked`: load as remote code with the package NOT importable;
# otherwise load through the package's Auto registration and save the folder again under that version.
OTHER_SIDE = textwrap.dedent(
    """
    import json, sys
    folder, mode, texts, resave = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
    if mode == "blocked":
        sys.modules["hf_rnn_attention"] = None
    else:
        import hf_rnn_attention  # registers the Auto classes and the pipeline task
    import torch, transformers
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
    remote = mode == "blocked"
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=remote)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=remote).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch, labels=batch["input_ids"]).logits
        outputs = {
            beams: [t.strip() for t in tokenizer.batch_decode(
                model.generate(**batch, num_beams=beams, max_new_tokens=10), skip_special_tokens=True)]
            for beams in (1, 3)
        }
    if resave != "-":
        from hf_rnn_attention.tokenization import save_tokenizer
        model.save_pretrained(resave)
        save_tokenizer(tokenizer, resave)
    print(json.dumps({"version": transformers.__version__, "module": type(model).__module__,
                      "logits": logits.tolist(), "outputs": outputs}))
    """
)


def run_other(folder, mode, tmp_path, resave="-"):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH="")
    result = subprocess.run([OTHER_PYTHON, "-c", OTHER_SIDE, str(folder), mode, json.dumps(TEXTS), str(resave)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert int(out["version"].split(".")[0]) != MAJOR, f"the other python has transformers {out['version']} too"
    return out


def logits_of(model, tokenizer):
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch, labels=batch["input_ids"]).logits


@pytest.mark.skipif(not OTHER_PYTHON, reason=OTHER_PYTHON_REASON)
def test_a_folder_saved_under_one_major_loads_under_the_other_and_back(model_and_tokenizer, tmp_path):  # noqa: F811
    model, tokenizer = model_and_tokenizer
    folder, resaved = tmp_path / "saved_here", tmp_path / "saved_there"
    model.save_pretrained(folder)
    save_tokenizer(tokenizer, folder)
    expected = {str(beams): reference(model, tokenizer, TEXTS, num_beams=beams) for beams in (1, 3)}
    ours = logits_of(model, tokenizer)

    remote = run_other(folder, "blocked", tmp_path)  # there, as remote code without the package
    assert remote["module"].startswith("transformers_modules"), remote["module"]
    assert remote["outputs"] == expected
    torch.testing.assert_close(torch.tensor(remote["logits"]), ours, atol=1e-5, rtol=0)

    packaged = run_other(folder, "package", tmp_path, resave=resaved)  # there, with the package; saved again
    assert packaged["module"] == "hf_rnn_attention.modeling_rnn_attention"
    assert packaged["outputs"] == expected

    # ... and the folder saved there loads here, by Auto classes and by the classic pipeline task name
    back = AutoModelForSeq2SeqLM.from_pretrained(resaved).eval()
    back_tokenizer = AutoTokenizer.from_pretrained(resaved)
    assert back_tokenizer(TEXTS)["input_ids"] == tokenizer(TEXTS)["input_ids"]
    torch.testing.assert_close(logits_of(back, back_tokenizer), ours, atol=1e-5, rtol=0)
    assert reference(back, back_tokenizer, TEXTS, num_beams=3) == expected["3"]
    config = json.loads((resaved / "config.json").read_text())
    assert set(config["custom_pipelines"]) == {"translation", "text2text-generation", "summarization"}
    translate = pipeline("translation", model=str(resaved), trust_remote_code=True)
    assert translate(TEXTS, num_beams=3, max_new_tokens=10) == [{"translation_text": t} for t in expected["3"]]


@pytest.mark.skipif(MAJOR >= 5, reason="transformers 5 removed the built-in translation/summarization pipelines")
@pytest.mark.parametrize(
    ("task", "key"),
    [
        ("translation", "translation_text"),
        ("summarization", "summary_text"),
        ("text2text-generation", "generated_text"),
    ],
)
def test_transformers4_builtin_pipelines_run_the_model(model_and_tokenizer, task, key):  # noqa: F811
    model, tokenizer = model_and_tokenizer
    pipe = pipeline(task, model=model, tokenizer=tokenizer)
    assert type(pipe).__module__.startswith("transformers.pipelines")  # the built-in class, not ours
    for beams in (1, 3):  # (4.57's translation pipeline defaults to 4 beams: ask explicitly)
        results = pipe(TEXTS, num_beams=beams, max_new_tokens=10)
        assert results == [{key: text} for text in reference(model, tokenizer, TEXTS, num_beams=beams)]

"""The text-to-text pipeline: in-process, with attention, and by classic task names from a saved folder in a
fresh process without the package."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import tiny_config
from transformers import pipeline

from hf_rnn_attention import RNNAttentionForConditionalGeneration
from hf_rnn_attention.tokenization import save_tokenizer, train_tokenizer

WORDS = "the a cat dog sat ran on under mat tree red blue big small house garden".split()


@pytest.fixture(scope="module")
def model_and_tokenizer():
    generator = torch.Generator().manual_seed(0)
    sentences = [
        " ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (6,), generator=generator)) for _ in range(300)
    ]
    tokenizer = train_tokenizer(sentences, vocab_size=60)
    torch.manual_seed(3)
    config = tiny_config(vocab_size=len(tokenizer), init_std=0.5, attention_type="general", input_feeding=True)
    model = RNNAttentionForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.lm_head.bias[tokenizer.eos_token_id] = -2.0  # long enough outputs to exercise the attention paths
    return model, tokenizer


TEXTS = ["the cat sat on the mat", "a big red dog ran under the small tree", "blue house"]


def reference(model, tokenizer, texts, **generate_kwargs):
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=10, **generate_kwargs)
    return [text.strip() for text in tokenizer.batch_decode(out, skip_special_tokens=True)]


def test_pipeline_outputs_equal_generate_single_and_batched(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    pipe = pipeline("rnn-attention-text2text", model=model, tokenizer=tokenizer)
    expected = [reference(model, tokenizer, [text], num_beams=3)[0] for text in TEXTS]
    assert pipe(TEXTS[0], num_beams=3, max_new_tokens=10) == [{"generated_text": expected[0]}]
    batched = pipe(TEXTS, num_beams=3, max_new_tokens=10, batch_size=2)
    assert batched == [{"generated_text": text} for text in expected]
    several = pipe(TEXTS[0], num_beams=4, num_return_sequences=2, max_new_tokens=10)
    assert len(several) == 2 and several[0]["generated_text"] == expected[0]


def spy_on_continuous(model, monkeypatch):
    """Records the batch_size of each generate_continuous call."""
    calls, original = [], model.generate_continuous

    def spy(source_ids, batch_size=64, **kwargs):
        calls.append(batch_size)
        return original(source_ids, batch_size=batch_size, **kwargs)

    monkeypatch.setattr(model, "generate_continuous", spy)
    return calls


MORE_TEXTS = [*TEXTS, "the dog", "a small red house under the big blue tree on the mat", "cat", "the garden"]


@pytest.mark.parametrize("num_beams", [1, 3])
def test_a_list_is_decoded_sorted_and_continuously_with_each_text_its_own_output(model_and_tokenizer, monkeypatch,
                                                                                 num_beams):  # fmt: skip
    """A list of strings goes through generate_continuous (sorted by length; continuous batching when greedy) and
    each text gets generate()'s output on that text alone, in input order; max_source_length still truncates."""
    model, tokenizer = model_and_tokenizer
    pipe = pipeline("rnn-attention-text2text", model=model, tokenizer=tokenizer)
    calls = spy_on_continuous(model, monkeypatch)
    expected = [reference(model, tokenizer, [text], num_beams=num_beams)[0] for text in MORE_TEXTS]
    assert len(set(expected)) > 1
    results = pipe(MORE_TEXTS, num_beams=num_beams, max_new_tokens=10, batch_size=3)
    assert results == [{"generated_text": text} for text in expected] and calls == [3]
    assert pipe(MORE_TEXTS, num_beams=num_beams, max_new_tokens=10) == results and calls == [3, 1]  # default 1
    truncated = [tokenizer.decode(tokenizer(text, truncation=True, max_length=3)["input_ids"], skip_special_tokens=True)
                 for text in MORE_TEXTS]  # fmt: skip
    expected = [reference(model, tokenizer, [text], num_beams=num_beams)[0] for text in truncated]
    results = pipe(MORE_TEXTS, num_beams=num_beams, max_new_tokens=10, batch_size=4, max_source_length=3)
    assert results == [{"generated_text": text} for text in expected] and calls == [3, 1, 4]


def test_settings_given_to_the_pipeline_hold_on_both_paths_and_greedy_lists_are_batched_continuously(
    model_and_tokenizer, monkeypatch
):
    """generate() settings passed to pipeline(...) apply to one text and to a list (transformers 4.x keeps them in
    the pipeline's generation_config), and a greedy list reaches continuous batching, not generate() per batch."""
    model, tokenizer = model_and_tokenizer
    continuous, original = [], model._greedy_continuous
    monkeypatch.setattr(model, "_greedy_continuous", lambda *args: continuous.append(1) or original(*args))
    pipe = pipeline("rnn-attention-text2text", model=model, tokenizer=tokenizer, max_new_tokens=2)
    expected = []
    for text in TEXTS:
        with torch.no_grad():
            out = model.generate(**tokenizer([text], return_tensors="pt"), max_new_tokens=2)
        expected.append(tokenizer.decode(out[0], skip_special_tokens=True).strip())
    assert expected != [reference(model, tokenizer, [text])[0] for text in TEXTS]  # the setting changes the output
    assert pipe(TEXTS[1]) == [{"generated_text": expected[1]}] and continuous == []
    assert pipe(TEXTS, batch_size=2) == [{"generated_text": text} for text in expected] and continuous == [1]


def test_a_list_asking_for_attention_or_several_sequences_takes_the_usual_path(model_and_tokenizer, monkeypatch):
    model, tokenizer = model_and_tokenizer
    pipe = pipeline("rnn-attention-text2text", model=model, tokenizer=tokenizer)
    calls = spy_on_continuous(model, monkeypatch)
    with_attention = pipe(TEXTS, return_attention=True, max_new_tokens=10, batch_size=2)
    assert [r["generated_text"] for r in with_attention] == [reference(model, tokenizer, [t])[0] for t in TEXTS]
    several = pipe(TEXTS, num_beams=4, num_return_sequences=2, max_new_tokens=10, batch_size=2)
    assert [len(r) for r in several] == [2, 2, 2]
    several_at_init = pipeline("rnn-attention-text2text", model=model, tokenizer=tokenizer, num_beams=4,
                               num_return_sequences=2)  # fmt: skip
    assert [len(r) for r in several_at_init(TEXTS, max_new_tokens=10, batch_size=2)] == [2, 2, 2]
    assert pipe([], max_new_tokens=10) == pipe([], return_attention=True) == pipe([], num_return_sequences=2) == []
    assert calls == []


@pytest.mark.parametrize("num_beams", [1, 4])
def test_returned_attention_is_the_teacher_forced_attention_of_the_output(model_and_tokenizer, num_beams):
    """The attention of the returned hypothesis (traced through beam_indices for beam search) equals the
    attention the model computes when it reads that output with teacher forcing."""
    model, tokenizer = model_and_tokenizer
    pipe = pipeline("rnn-attention-text2text", model=model, tokenizer=tokenizer)
    (result,) = pipe(TEXTS[1], return_attention=True, num_beams=num_beams, max_new_tokens=10)
    source = tokenizer(TEXTS[1], return_tensors="pt")
    assert result["source_tokens"] == tokenizer.convert_ids_to_tokens(source["input_ids"][0].tolist())
    target_ids = tokenizer.convert_tokens_to_ids(result["target_tokens"])
    decoder_input_ids = torch.tensor([[model.config.decoder_start_token_id, *target_ids[:-1]]])
    with torch.no_grad():
        forced = model(**source, decoder_input_ids=decoder_input_ids, output_attentions=True).cross_attentions[0][0]
    torch.testing.assert_close(torch.tensor(result["attention"]), forced, atol=1e-5, rtol=1e-5)


FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    sys.modules["hf_rnn_attention"] = None  # the package is NOT importable here
    from transformers import pipeline
    folder, texts = sys.argv[1], json.loads(sys.argv[2])
    results = {}
    for task in ("translation", "text2text-generation", "summarization"):
        pipe = pipeline(task, model=folder, trust_remote_code=True)
        assert type(pipe).__module__.startswith("transformers_modules"), type(pipe).__module__
        results[task] = pipe(texts, num_beams=3, max_new_tokens=10)
    print(json.dumps(results))
    """
)


def test_classic_task_names_load_from_a_saved_folder_without_the_package(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    save_tokenizer(tokenizer, folder)
    # with the package imported, its own task name loads the folder without trust_remote_code
    local = pipeline("rnn-attention-text2text", model=str(folder))
    assert local(TEXTS, num_beams=3, max_new_tokens=10) == [
        {"generated_text": text} for text in reference(model, tokenizer, TEXTS, num_beams=3)
    ]
    config = json.loads((folder / "config.json").read_text())
    assert set(config["custom_pipelines"]) == {"translation", "text2text-generation", "summarization"}
    assert (folder / "pipeline_rnn_attention.py").exists()
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH="")
    script = tmp_path / "fresh.py"
    script.write_text(FRESH_PROCESS)
    result = subprocess.run([sys.executable, str(script), str(folder), json.dumps(TEXTS)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    expected = reference(model, tokenizer, TEXTS, num_beams=3)
    assert results["translation"] == [{"translation_text": text} for text in expected]
    assert results["text2text-generation"] == [{"generated_text": text} for text in expected]
    assert results["summarization"] == [{"summary_text": text} for text in expected]

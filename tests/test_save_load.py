"""save_pretrained / from_pretrained, Auto classes, tied weights, and loading as Hub remote code."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import random_batch, tiny_model
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from hf_rnn_attention import RNNAttentionConfig, RNNAttentionForConditionalGeneration, RNNAttentionModel


def outputs_of(model):
    input_ids, mask = random_batch(batch=3, source_len=6, lengths=[6, 3, 5], seed=9)
    labels = torch.randint(3, 40, (3, 5), generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=mask, labels=labels).logits
        generated = model.generate(input_ids, attention_mask=mask, max_new_tokens=8, num_beams=3)
    return logits, generated


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
def test_save_load_gives_identical_outputs(tmp_model_dir, tie, rnn_type):
    model = tiny_model(tie_word_embeddings=tie, rnn_type=rnn_type, attention_type="additive", decoder_style="bahdanau")
    model.save_pretrained(tmp_model_dir)
    assert (tmp_model_dir / "model.safetensors").exists()
    loaded = RNNAttentionForConditionalGeneration.from_pretrained(tmp_model_dir).eval()
    (logits, generated), (loaded_logits, loaded_generated) = outputs_of(model), outputs_of(loaded)
    assert torch.equal(generated, loaded_generated)
    # weights are bit-identical (checked below); MKL may sum in another order for differently aligned memory
    torch.testing.assert_close(loaded_logits, logits, atol=1e-6, rtol=0)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert (loaded.lm_head.weight is loaded.model.shared.weight) == tie
    assert loaded.model.encoder.embed_tokens.weight is loaded.model.shared.weight
    assert loaded.model.decoder.embed_tokens.weight is loaded.model.shared.weight


def test_auto_classes(tmp_model_dir):
    model = tiny_model()
    model.save_pretrained(tmp_model_dir)
    assert isinstance(AutoConfig.from_pretrained(tmp_model_dir), RNNAttentionConfig)
    auto = AutoModelForSeq2SeqLM.from_pretrained(tmp_model_dir).eval()
    assert type(auto) is RNNAttentionForConditionalGeneration
    torch.testing.assert_close(outputs_of(model)[0], outputs_of(auto)[0], atol=1e-6, rtol=0)
    base = AutoModel.from_pretrained(tmp_model_dir)
    assert type(base) is RNNAttentionModel
    torch.testing.assert_close(base.shared.weight, model.model.shared.weight)
    config = json.loads((tmp_model_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSeq2SeqLM"].endswith("RNNAttentionForConditionalGeneration")
    assert (tmp_model_dir / "modeling_rnn_attention.py").exists()
    assert (tmp_model_dir / "configuration_rnn_attention.py").exists()


def test_tied_weights_survive_resize_token_embeddings(tmp_model_dir):
    model = tiny_model()
    model.resize_token_embeddings(50)
    assert model.config.vocab_size == 50
    assert model.lm_head.weight is model.model.shared.weight
    assert model.model.encoder.embed_tokens.weight is model.model.shared.weight
    assert model.model.decoder.embed_tokens.weight is model.model.shared.weight
    assert model.lm_head.weight.shape == (50, 12) and model.lm_head.bias.shape == (50,)
    input_ids, mask = random_batch(vocab_size=50)
    out = model(input_ids=input_ids, attention_mask=mask, labels=torch.randint(3, 50, (4, 3)))
    assert out.logits.shape[-1] == 50
    model.save_pretrained(tmp_model_dir)
    loaded = RNNAttentionForConditionalGeneration.from_pretrained(tmp_model_dir)
    assert loaded.lm_head.weight is loaded.model.shared.weight
    torch.testing.assert_close(loaded.model.shared.weight, model.model.shared.weight)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["hf_rnn_attention"] = None  # the package is NOT importable in this process
    import torch
    from transformers import AutoModelForSeq2SeqLM
    path, out = sys.argv[1], sys.argv[2]
    model = AutoModelForSeq2SeqLM.from_pretrained(path, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    inputs = torch.load(out + ".inputs.pt")
    with torch.no_grad():
        logits = model(**inputs["forward"]).logits
        generated = model.generate(**inputs["generate"], max_new_tokens=8, num_beams=3)
    torch.save({"logits": logits, "generated": generated}, out)
    """
)


def test_fresh_process_loads_remote_code_without_the_package(tmp_path, tmp_model_dir):
    model = tiny_model(attention_type="general", input_feeding=True)
    model.save_pretrained(tmp_model_dir)
    input_ids, mask = random_batch(batch=3, source_len=6, lengths=[6, 3, 5], seed=9)
    labels = torch.randint(3, 40, (3, 5))
    inputs = {
        "forward": dict(input_ids=input_ids, attention_mask=mask, labels=labels),
        "generate": dict(input_ids=input_ids, attention_mask=mask),
    }
    out = tmp_path / "remote.pt"
    torch.save(inputs, str(out) + ".inputs.pt")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH="")
    script = tmp_path / "remote.py"
    script.write_text(REMOTE_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_model_dir), str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.load(out)
    with torch.no_grad():
        torch.testing.assert_close(remote["logits"], model(**inputs["forward"]).logits, atol=1e-6, rtol=0)
        assert torch.equal(remote["generated"], model.generate(**inputs["generate"], max_new_tokens=8, num_beams=3))

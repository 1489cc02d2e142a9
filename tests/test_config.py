"""RNNAttentionConfig: defaults, aliases, presets and clear errors for bad values."""

import json
from pathlib import Path

import pytest

from hf_rnn_attention import RNNAttentionConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_defaults_match_the_issue():
    config = RNNAttentionConfig()
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id, config.decoder_start_token_id) == (
        0,
        1,
        2,
        1,
    )
    assert config.is_encoder_decoder and config.bidirectional and config.teacher_forcing_ratio == 1.0
    assert config.model_type == "rnn_attention"
    assert config.encoder_output_size == 2 * config.encoder_hidden_size


@pytest.mark.parametrize("alias, canonical", [("luong", "general"), ("bahdanau", "additive"), ("Dot", "dot")])
def test_attention_aliases(alias, canonical):
    assert RNNAttentionConfig(attention_type=alias, decoder_hidden_size=512).attention_type == canonical


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("rnn_type", "rnn", "lstm"),
        ("bridge", "mlp", "linear"),
        ("attention_type", "cosine", "additive"),
        ("decoder_style", "transformer", "bahdanau"),
        ("encoder_layers", 0, ">= 1"),
        ("vocab_size", 2.5, ">= 1"),
        ("dropout", 1.5, "[0, 1]"),
        ("teacher_forcing_ratio", -0.1, "[0, 1]"),
        ("pad_token_id", 9000, "vocab_size"),
        ("init_std", 0, "> 0"),
    ],
)
def test_bad_values_raise_naming_field_and_allowed_values(field, value, allowed):
    with pytest.raises(ValueError) as error:
        RNNAttentionConfig(**{field: value})
    assert f"`{field}`" in str(error.value) and allowed in str(error.value)


def test_inconsistent_sizes_raise():
    with pytest.raises(ValueError, match="decoder_hidden_size"):
        RNNAttentionConfig(attention_type="dot", decoder_hidden_size=300)
    with pytest.raises(ValueError, match="decoder_hidden_size"):
        RNNAttentionConfig(bridge="last", decoder_hidden_size=300)
    with pytest.raises(ValueError, match="input_feeding"):
        RNNAttentionConfig(input_feeding=True, decoder_style="bahdanau")
    with pytest.raises(ValueError, match="input_feeding"):
        RNNAttentionConfig(input_feeding=True, attention_type="none")


@pytest.mark.parametrize("preset", ["bahdanau", "luong", "tiny"])
def test_presets_load(preset):
    config = RNNAttentionConfig.from_json_file(CONFIGS / f"{preset}.json")
    expected = json.loads((CONFIGS / f"{preset}.json").read_text())
    for key, value in expected.items():
        assert getattr(config, key) == value


def test_save_and_load_round_trip(tmp_path):
    config = RNNAttentionConfig(attention_type="bahdanau", decoder_style="bahdanau", rnn_type="gru", bridge="zeros")
    config.save_pretrained(tmp_path)
    loaded = RNNAttentionConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()

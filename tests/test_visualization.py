"""Attention heatmaps: the figure, the PNG, Korean labels that render, and the weights they show."""

import warnings

import pytest
import torch
from conftest import random_batch, tiny_model

from hf_rnn_attention.visualization import greedy_attention, plot_attention


def test_heatmap_of_korean_tokens_renders_every_glyph(tmp_path):
    source = ["▁2001", "년", "▁12", "월", "▁5", "일", "▁수요일", "</s>"]
    target = ["▁2001", "-", "12", "-", "05", "</s>"]
    weights = torch.softmax(torch.randn(len(target), len(source)), dim=-1)
    path = tmp_path / "attention.png"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figure = plot_attention(source, target, weights, title="2001년 12월 5일 수요일", path=path)
    missing = [str(w.message) for w in caught if "missing from" in str(w.message)]
    assert not missing, missing[:2]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    axis = figure.axes[0]
    assert [label.get_text() for label in axis.get_xticklabels()][:2] == ["_2001", "년"]


def test_heatmap_rejects_weights_of_the_wrong_shape():
    with pytest.raises(ValueError, match="target_len=2"):
        plot_attention(["a", "b", "c"], ["x", "y"], torch.zeros(3, 2))


class IdTokenizer:
    """Token ids as text, enough for greedy_attention on a tiny model."""

    eos_token_id = 2

    def __init__(self, input_ids, mask):
        self.batch = {"input_ids": input_ids, "attention_mask": mask}

    def __call__(self, texts, return_tensors="pt"):
        from transformers import BatchEncoding

        return BatchEncoding(self.batch)

    def convert_ids_to_tokens(self, ids):
        return [str(i) for i in ids]


def test_greedy_attention_returns_one_distribution_per_output_token():
    model = tiny_model(attention_type="general")
    input_ids, mask = random_batch(batch=1, source_len=6, lengths=[6])
    source, target, weights = greedy_attention(model, IdTokenizer(input_ids, mask), "ignored", max_new_tokens=5)
    assert len(source) == 6 and weights.shape == (len(target), 6) and 1 <= len(target) <= 5
    torch.testing.assert_close(weights.sum(-1), torch.ones(len(target)))

import os

# Tests never reach the Hugging Face Hub: without this, a stray download retries for minutes.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from hf_rnn_attention import RNNAttentionConfig, RNNAttentionForConditionalGeneration  # noqa: E402

# The workplace's real data: ../shared/data beside the repository (tests that need it skip where it is absent).
SHARED_DATA = Path(
    os.environ.get("HF_RNN_ATTENTION_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)

# Optional: the python of a second environment whose transformers has the other major version (4.57 <-> 5.x),
# to check that a folder saved under one loads under the other. `.ci/run` sets it for both of its test runs.
OTHER_PYTHON = os.environ.get("HF_RNN_ATTENTION_OTHER_PYTHON")
OTHER_PYTHON_REASON = "set HF_RNN_ATTENTION_OTHER_PYTHON to a python with the other transformers major (4.57 / 5.x)"

# (attention_type, decoder_style, input_feeding): every combination the decoder distinguishes.
DECODER_VARIANTS = [
    ("none", "luong", False),
    ("none", "bahdanau", False),
    ("dot", "luong", False),
    ("scaled_dot", "luong", False),
    ("general", "luong", False),
    ("general", "luong", True),
    ("additive", "luong", False),
    ("additive", "bahdanau", False),
    ("dot", "bahdanau", False),
    ("general", "bahdanau", False),
]


def tiny_config(**overrides) -> RNNAttentionConfig:
    settings = dict(
        vocab_size=40,
        embedding_size=12,
        encoder_hidden_size=8,
        encoder_layers=2,
        decoder_hidden_size=16,
        decoder_layers=2,
        dropout=0.0,
        init_std=0.3,
    )
    settings.update(overrides)
    return RNNAttentionConfig(**settings)


def tiny_model(seed: int = 0, **overrides) -> RNNAttentionForConditionalGeneration:
    torch.manual_seed(seed)
    return RNNAttentionForConditionalGeneration(tiny_config(**overrides)).eval()


def random_batch(batch: int = 4, source_len: int = 7, lengths=None, vocab_size: int = 40, seed: int = 1, pad: int = 0):
    """Right-padded source ids and mask; tokens in [3, vocab) so no pad/bos/eos appears inside a sentence."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab_size, (batch, source_len), generator=generator)
    lengths = lengths or [source_len - (i % 3) for i in range(batch)]
    mask = torch.zeros(batch, source_len, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    return input_ids.masked_fill(mask == 0, pad), mask


@pytest.fixture
def tmp_model_dir(tmp_path):
    return tmp_path / "model"

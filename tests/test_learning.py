"""Known answers on a tiny problem: every attention type learns to reverse short sequences."""

import pytest
import torch
from conftest import tiny_config

from hf_rnn_attention import RNNAttentionForConditionalGeneration

SYMBOLS = range(3, 13)  # 10 symbols; 0/1/2 are pad/bos/eos


def reversal_batch(batch_size, generator, min_len=3, max_len=6, eos=2):
    lengths = torch.randint(min_len, max_len + 1, (batch_size,), generator=generator)
    source = torch.zeros(batch_size, max_len, dtype=torch.long)
    labels = torch.full((batch_size, max_len + 1), -100, dtype=torch.long)
    for row, length in enumerate(lengths.tolist()):
        tokens = torch.randint(SYMBOLS.start, SYMBOLS.stop, (length,), generator=generator)
        source[row, :length] = tokens
        labels[row, :length] = tokens.flip(0)
        labels[row, length] = eos
    return source, source.ne(0).long(), labels


def train_reversal(steps, seed=0, lr=1e-2, **config):
    """Adam with a linear learning-rate decay to 0 and gradient clipping, on fresh random batches."""
    torch.manual_seed(seed)
    model = RNNAttentionForConditionalGeneration(
        tiny_config(
            vocab_size=13,
            embedding_size=32,
            encoder_hidden_size=64,
            encoder_layers=1,
            decoder_hidden_size=128,
            decoder_layers=1,
            init_std=0.1,
            **config,
        )
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        input_ids, mask, labels = reversal_batch(64, generator)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    return model.eval()


def exact_match(model, n=300, seed=1234):
    input_ids, mask, labels = reversal_batch(n, torch.Generator().manual_seed(seed))
    generated = model.generate(input_ids, attention_mask=mask, max_new_tokens=8)[:, 1:]  # drop the start token
    correct = 0
    for row, label in zip(generated.tolist(), labels.tolist(), strict=True):
        expected = [t for t in label if t != -100]
        correct += row[: len(expected)] == expected
    return correct / n


@pytest.mark.parametrize(
    "attention_type, decoder_style, input_feeding, steps",
    [
        ("dot", "luong", False, 300),
        ("scaled_dot", "luong", False, 300),
        ("general", "luong", True, 300),
        ("additive", "bahdanau", False, 300),
        ("none", "luong", False, 500),  # no attention: the whole source squeezed through one context vector
    ],
)
def test_every_attention_type_learns_reversal(attention_type, decoder_style, input_feeding, steps):
    model = train_reversal(
        steps, attention_type=attention_type, decoder_style=decoder_style, input_feeding=input_feeding
    )
    accuracy = exact_match(model)
    assert accuracy >= 0.95, f"{attention_type}: exact match {accuracy:.3f}"

"""Behaviour of the model against references: padding invariance, fast path = step path, masking,
loss, scheduled sampling, gradients."""

import pytest
import torch
import torch.nn.functional as F
from conftest import DECODER_VARIANTS, random_batch, tiny_config, tiny_model

from hf_rnn_attention import RNNAttentionForConditionalGeneration
from hf_rnn_attention.modeling_rnn_attention import (
    CACHE_FIELD,
    PackedLSTMRecurrence,
    output_layer,
    packed_lstm,
    shift_tokens_right,
)


def variant_kwargs(attention_type, decoder_style, input_feeding, **extra):
    return dict(attention_type=attention_type, decoder_style=decoder_style, input_feeding=input_feeding, **extra)


def test_shift_tokens_right_builds_teacher_forcing_inputs():
    labels = torch.tensor([[5, 6, 2, -100], [7, 2, -100, -100]])
    assert shift_tokens_right(labels, pad_token_id=0, decoder_start_token_id=1).tolist() == [
        [1, 5, 6, 2],
        [1, 7, 2, 0],
    ]


def test_loss_is_mean_cross_entropy_over_non_ignored_labels():
    model = tiny_model()
    input_ids, mask = random_batch()
    labels = torch.randint(3, 40, (4, 5))
    labels[0, 3:] = -100
    labels[2, 1:] = -100
    out = model(input_ids=input_ids, attention_mask=mask, labels=labels)
    keep = labels.ne(-100)
    expected = F.cross_entropy(out.logits[keep], labels[keep])
    torch.testing.assert_close(out.loss, expected)
    # the decoder inputs were the labels shifted right; with labels, no logits where nothing is labelled
    again = model(input_ids=input_ids, attention_mask=mask, decoder_input_ids=shift_tokens_right(labels, 0, 1))
    torch.testing.assert_close(again.logits[keep], out.logits[keep])
    assert out.logits[~keep].abs().max() == 0


def test_loss_with_every_label_ignored_is_zero_not_nan():
    model = tiny_model()
    input_ids, mask = random_batch()
    labels = torch.full((4, 3), -100)
    out = model(input_ids=input_ids, attention_mask=mask, labels=labels)
    assert out.loss.item() == 0.0


@pytest.mark.parametrize("variant", DECODER_VARIANTS)
def test_padding_invariance(variant):
    """A sentence alone and inside a batch of longer, padded sentences gives the same outputs."""
    model = tiny_model(**variant_kwargs(*variant))
    input_ids, mask = random_batch(batch=4, source_len=9, lengths=[4, 9, 6, 8], seed=3)
    target = torch.randint(3, 40, (4, 6), generator=torch.Generator().manual_seed(4))

    batched = model(input_ids=input_ids, attention_mask=mask, labels=target, output_attentions=True)
    alone = model(input_ids=input_ids[:1, :4], attention_mask=mask[:1, :4], labels=target[:1], output_attentions=True)
    torch.testing.assert_close(
        batched.encoder_last_hidden_state[0, :4], alone.encoder_last_hidden_state[0], atol=1e-5, rtol=1e-5
    )
    assert batched.encoder_last_hidden_state[0, 4:].abs().max() == 0  # padding outputs are zero
    torch.testing.assert_close(batched.logits[0], alone.logits[0], atol=1e-5, rtol=1e-5)
    if variant[0] != "none":
        torch.testing.assert_close(
            batched.cross_attentions[0][0, :, :4], alone.cross_attentions[0][0], atol=1e-5, rtol=1e-5
        )

    generated_batch = model.generate(input_ids, attention_mask=mask, max_new_tokens=8, num_beams=3)
    generated_alone = model.generate(input_ids[:1, :4], attention_mask=mask[:1, :4], max_new_tokens=8, num_beams=3)
    length = generated_alone.shape[1]
    assert generated_batch[0, :length].tolist() == generated_alone[0].tolist()


def test_extra_padding_columns_change_nothing():
    model = tiny_model()
    input_ids, mask = random_batch(batch=3, source_len=6, lengths=[6, 5, 3])
    padded_ids = F.pad(input_ids, (0, 4))
    padded_mask = F.pad(mask, (0, 4))
    labels = torch.randint(3, 40, (3, 5))
    a = model(input_ids=input_ids, attention_mask=mask, labels=labels)
    b = model(input_ids=padded_ids, attention_mask=padded_mask, labels=labels)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "variant", [v for v in DECODER_VARIANTS if v[2] is False and (v[1] == "luong" or v[0] == "none")]
)
@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
def test_fast_path_equals_step_path(variant, rnn_type):
    """The one-call parallel decoder gives the same logits and gradients as the step-by-step loop."""
    config = tiny_config(rnn_type=rnn_type, **variant_kwargs(*variant))
    torch.manual_seed(0)
    model = RNNAttentionForConditionalGeneration(config).train()  # dropout is 0: train mode is deterministic
    assert model.model.decoder.can_run_parallel
    input_ids, mask = random_batch(batch=3, source_len=7, lengths=[7, 3, 5])
    labels = torch.randint(3, 40, (3, 6))
    labels[1, 4:] = -100

    def run(fast):
        model.zero_grad()
        model.model.decoder.fast_path = fast
        out = model(input_ids=input_ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    fast_logits, fast_grads = run(True)
    step_logits, step_grads = run(False)
    torch.testing.assert_close(fast_logits, step_logits, atol=1e-5, rtol=1e-5)
    assert fast_grads.keys() == step_grads.keys()
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], step_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_dropout_drops_at_rate_p_and_scales_the_rest():
    """The model's dropout (a cheaper mask than PyTorch's on the CPU) zeroes a fraction p, scales the rest by
    1 / (1 − p) (its gradient too), follows torch.manual_seed, and is the identity in eval mode and at p = 0."""
    from hf_rnn_attention.modeling_rnn_attention import Dropout, dropout

    x = torch.rand(300, 1001) + 1.0  # no zeros of its own; an odd count of elements
    for p in (0.1, 0.5, 0.9):
        torch.manual_seed(0)
        out = dropout(x, p, True)
        dropped = (out == 0).double().mean().item()
        assert abs(dropped - p) < 0.005, (p, dropped)  # 300,300 draws: the standard error is under 0.001
        torch.testing.assert_close(out[out != 0], x[out != 0] / (1 - p))
        torch.manual_seed(0)
        torch.testing.assert_close(dropout(x, p, True), out, rtol=0, atol=0)
    leaf = x.clone().requires_grad_(True)
    out = dropout(leaf, 0.3, True)
    out.sum().backward()
    torch.testing.assert_close(leaf.grad, (out != 0).float() / 0.7)
    assert dropout(x, 1.0, True).abs().max() == 0
    assert dropout(x, 1.0 - 2**-40, True).abs().max() == 0  # p that rounds to 2³² words of 2³²: all dropped
    with pytest.raises(ValueError, match="between 0 and 1"):
        dropout(x, 1.5, True)
    assert dropout(x, 0.0, True) is x or torch.equal(dropout(x, 0.0, True), x)
    module = Dropout(0.5)
    assert torch.equal(module.eval()(x), x)
    assert (module.train()(x) == 0).any()


def test_pack_and_unpack_equal_pytorchs_pack_and_pad():
    """`pack` gives PyTorch's PackedSequence (data, batch sizes, both orders, ties included) and `unpack` its
    padded tensor, with the same gradient through both."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from hf_rnn_attention.modeling_rnn_attention import pack, unpack

    x = torch.randn(5, 6, 3, requires_grad=True)
    lengths = torch.tensor([4, 6, 1, 4, 5])
    upstream = torch.randn(5, 6, 3)
    ours, positions = pack(x, lengths)
    theirs = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    for field in ("data", "batch_sizes", "sorted_indices", "unsorted_indices"):
        torch.testing.assert_close(getattr(ours, field), getattr(theirs, field), rtol=0, atol=0, msg=field)
    mine = unpack(ours.data * 2, positions, 5, 6)
    reference = pad_packed_sequence(theirs._replace(data=theirs.data * 2), batch_first=True, total_length=6)[0]
    torch.testing.assert_close(mine, reference, rtol=0, atol=0)
    (grad_mine,) = torch.autograd.grad((mine * upstream).sum(), x)
    (grad_reference,) = torch.autograd.grad((reference * upstream).sum(), x)
    torch.testing.assert_close(grad_mine, grad_reference, rtol=0, atol=0)
    assert grad_mine[2, 1:].abs().max() == 0  # padding gets no gradient


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("with_state", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_packed_lstm_equals_torch_lstm(bidirectional, with_state, dtype):
    """The fused packed LSTM (hoisted input projection, written-out backward) gives nn.LSTM's outputs, final
    states and gradients (inputs, initial state, every weight) on a packed, unsorted batch, in float64 and in
    float32 (the sigmoid form of tanh)."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 6, num_layers=2, bidirectional=bidirectional, batch_first=True).to(dtype)
    lengths = torch.tensor([3, 6, 1, 6, 4])
    directions = 2 if bidirectional else 1
    inputs = torch.randn(5, 6, 5, dtype=dtype, requires_grad=True)
    state = tuple(torch.randn(2 * directions, 5, 6, dtype=dtype, requires_grad=True) for _ in range(2))
    out_weights = torch.randn(5, 6, 6 * directions, dtype=dtype)
    state_weights = [torch.randn(2 * directions, 5, 6, dtype=dtype) for _ in range(2)]

    def run(function):
        for tensor in (inputs, *state, *lstm.parameters()):
            tensor.grad = None
        packed = torch.nn.utils.rnn.pack_padded_sequence(inputs, lengths, batch_first=True, enforce_sorted=False)
        outputs, final = function(packed, state if with_state else None)
        padded = torch.nn.utils.rnn.pad_packed_sequence(outputs, batch_first=True)[0]
        loss = (padded * out_weights).sum() + sum((f * w).sum() for f, w in zip(final, state_weights, strict=True))
        loss.backward()
        grads = [t.grad.clone() for t in (inputs, *(state if with_state else ()), *lstm.parameters())]
        return padded.detach(), [f.detach() for f in final], grads

    fused = run(lambda packed, st: packed_lstm(lstm, packed, st))
    reference = run(lambda packed, st: lstm(packed, st))
    tolerance = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else {}
    torch.testing.assert_close(fused[0], reference[0], **tolerance)
    for ours, theirs in zip(fused[1] + fused[2], reference[1] + reference[2], strict=True):
        torch.testing.assert_close(ours, theirs, **tolerance)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("layers", [1, 2])
def test_padded_lstm_equals_the_packed_lstm(bidirectional, layers):
    """Inference over the padded batch (oneDNN's LSTM, padding held by saturated gates) gives the packed LSTM's
    outputs (0 at padding) and final states, rows of every length, with trained-size weights and inputs; the
    encoder takes that path in eval mode without gradients."""
    from hf_rnn_attention.modeling_rnn_attention import pack, padded_lstm, runs_padded, unpack

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 6, num_layers=layers, bidirectional=bidirectional, batch_first=True).eval()
    with torch.no_grad():
        for weight in lstm.parameters():
            weight.mul_(8)  # pre-activations well beyond the gates' saturation
    lengths = torch.tensor([3, 7, 1, 7, 4, 2])
    inputs = torch.randn(6, 7, 5) * 3
    with torch.no_grad():
        assert runs_padded(lstm, inputs) == torch.backends.mkldnn.is_available()
        outputs, (h, c) = padded_lstm(lstm, inputs, lengths)
        packed, positions = pack(inputs, lengths)
        reference_packed, (reference_h, reference_c) = lstm(packed)
    reference = unpack(reference_packed.data, positions, 6, 7)
    torch.testing.assert_close(outputs, reference, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(h, reference_h, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(c, reference_c, atol=1e-5, rtol=1e-4)
    assert not runs_padded(lstm, inputs.requires_grad_())  # gradients: the packed path
    assert not runs_padded(lstm.train(), inputs.detach())


def test_encoder_in_inference_equals_the_packed_encoder(monkeypatch):
    """The encoder takes the padded path in eval mode without gradients, and gives what the packed path gives,
    an empty source (which reads one pad token) included."""
    from hf_rnn_attention import modeling_rnn_attention

    model = tiny_model(seed=3, encoder_layers=2)
    input_ids, mask = random_batch(batch=4, source_len=7, lengths=[7, 3, 5, 1], seed=2)
    mask[3] = 0  # an empty source
    calls = []
    padded = modeling_rnn_attention.padded_lstm
    monkeypatch.setattr(modeling_rnn_attention, "padded_lstm", lambda *a: calls.append(1) or padded(*a))
    with torch.no_grad():
        ours = model.model.encoder(input_ids, mask)
        assert calls == ([1] if torch.backends.mkldnn.is_available() else [])
        monkeypatch.setattr(modeling_rnn_attention, "runs_padded", lambda *a: False)
        reference = model.model.encoder(input_ids, mask)
    for field in ("last_hidden_state", "final_hidden_state", "final_cell_state"):
        torch.testing.assert_close(getattr(ours, field), getattr(reference, field), atol=1e-5, rtol=1e-4)


def test_padded_lstm_test_fails_without_the_padding_input():
    """Without the saturated gates the padding runs through the recurrence: the final forward states and the
    reverse direction's outputs then differ from the packed LSTM's."""
    from hf_rnn_attention.modeling_rnn_attention import padded_lstm

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 6, num_layers=2, bidirectional=True, batch_first=True).eval()
    lengths = torch.tensor([3, 7, 1])
    inputs = torch.randn(3, 7, 5)
    with torch.no_grad():
        ours = padded_lstm(lstm, inputs, lengths)
        unguarded = padded_lstm(lstm, inputs, lengths.new_full((3,), 7))  # every position read as a token
    assert not torch.allclose(ours[1][1], unguarded[1][1], atol=1e-3)
    assert not torch.allclose(ours[0][0, :3], unguarded[0][0, :3], atol=1e-3)


@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_training_output_layer_equals_linear(bias, onednn, monkeypatch):
    """The output layer's own autograd function (oneDNN, or MKL into padded rows) gives nn.Linear's logits and
    gradients."""
    from hf_rnn_attention import modeling_rnn_attention

    if onednn and not modeling_rnn_attention.ONEDNN_LINEAR:
        pytest.skip("this torch build has no oneDNN linear")
    monkeypatch.setattr(modeling_rnn_attention, "ONEDNN_LINEAR", onednn)
    torch.manual_seed(0)
    head = torch.nn.Linear(6, 37, bias=bias)  # 37: not a multiple of 16
    hidden = torch.randn(2, 5, 6, requires_grad=True)
    weights = torch.randn(2, 5, 37)

    def run(function):
        for tensor in (hidden, *head.parameters()):
            tensor.grad = None
        logits = function(hidden)
        (logits * weights).sum().backward()
        return logits.detach(), [t.grad.clone() for t in (hidden, *head.parameters())]

    ours, reference = run(lambda x: output_layer(head, x)), run(head)
    assert ours[0].shape == (2, 5, 37)
    if not onednn:
        assert ours[0].stride(-2) == 64  # rows padded to 64 floats
    torch.testing.assert_close(ours[0], reference[0])
    for mine, theirs in zip(ours[1], reference[1], strict=True):
        torch.testing.assert_close(mine, theirs)


def test_training_linear_equals_f_linear(monkeypatch):
    """The training paths' linear layers (oneDNN's forward and input gradient) give F.linear's values and
    gradients: 2 and 3 dimensions, with and without bias, a strided weight (a slice of the LSTM's input weights,
    as the fused loops take it), a strided input, and an expanded upstream gradient (which takes MKL). oneDNN sees
    row counts in multiples of 64 only (it keeps a compiled kernel per shape, and batches bring new row counts)."""
    from hf_rnn_attention import modeling_rnn_attention
    from hf_rnn_attention.modeling_rnn_attention import training_linear

    if not modeling_rnn_attention.ONEDNN_LINEAR:
        pytest.skip("this torch build has no oneDNN linear (training_linear is F.linear there)")
    calls = []
    product = modeling_rnn_attention._onednn_product
    monkeypatch.setattr(
        modeling_rnn_attention, "_onednn_product", lambda *a: calls.append(a[0].shape[0]) or product(*a)
    )
    torch.manual_seed(0)
    full = torch.randn(130, 300, requires_grad=True)
    bias = torch.randn(130, requires_grad=True)
    wide = torch.randn(97, 400, requires_grad=True)
    # input, weight, bias, upstream gradient (None: out.sum(), an expanded gradient), oneDNN calls: one per product
    # where the input is the narrower side (its rows padded), two where it is the wider (64 rows as they are, the
    # other 33 padded: the wide operand is never copied)
    cases = [
        (torch.randn(9, 6), full[:, :6], bias, torch.randn(9, 130), 2),
        (torch.randn(2, 5, 294), full[:, 6:], None, torch.randn(2, 5, 130), 2),
        (wide[:, 50:350], full, bias, torch.randn(97, 130), 3),  # a column slice: rows 400 floats apart
        (torch.randn(97, 300), full, bias, None, 2),
    ]
    for x, weight, b, upstream, expected_calls in cases:
        if x.is_leaf:
            x.requires_grad_(True)
        inputs = (x, full) if b is None else (x, full, b)

        def run(function, x=x, weight=weight, b=b, upstream=upstream, inputs=inputs):
            out = function(x, weight, b)
            loss = out.sum() if upstream is None else (out * upstream).sum()
            return [out.detach(), *torch.autograd.grad(loss, inputs)]

        calls.clear()
        ours = run(training_linear)
        assert len(calls) == expected_calls  # the forward, and the input gradient unless it is expanded (MKL)
        assert all(rows % 64 == 0 for rows in calls), calls
        reference = run(F.linear)
        assert ours[0].shape == reference[0].shape
        for mine, theirs in zip(ours, reference, strict=True):  # sums of up to 300 products: float32 rounding
            torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-5)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        x = torch.randn(4, 300, requires_grad=True)
        (grad,) = torch.autograd.grad(training_linear(x, full, bias).square().sum(), x, create_graph=True)
        grad.sum().backward()


def test_inference_linear_equals_the_layer():
    """Decoding's linear layers (oneDNN where the build has it) give nn.Linear's values, for 1 to 3 dimensions."""
    from hf_rnn_attention.modeling_rnn_attention import linear

    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 37)
    for shape in [(6,), (4, 6), (4, 1, 6), (9, 6), (33, 1, 6)]:  # 9 and 33 rows: padded to 10 and 40 for oneDNN
        x = torch.randn(*shape)
        with torch.no_grad():
            out = linear(layer, x)
            torch.testing.assert_close(out, layer(x))
            assert out.shape == (*shape[:-1], 37) and out.is_contiguous()
    x = torch.randn(4, 6, requires_grad=True)
    linear(layer, x).sum().backward()  # with gradients: nn.Linear's own path
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand(4, 6))


def test_row_buckets_pad_by_at_most_a_quarter_and_leave_few_shapes():
    """Decoding pads the rows of oneDNN products to a few sizes (each size costs a cached oneDNN primitive)."""
    from hf_rnn_attention.modeling_rnn_attention import _row_bucket

    buckets = [_row_bucket(rows) for rows in range(1, 321)]
    assert buckets[:8] == list(range(1, 9))  # small batches: exact
    assert all(rows <= bucket <= 1.25 * rows for rows, bucket in enumerate(buckets, start=1))
    assert all(_row_bucket(bucket) == bucket for bucket in buckets)
    assert len(set(buckets[:64])) == 20 and {64, 320} <= set(buckets)  # full batch, and 64 sentences x 5 beams


@pytest.mark.parametrize("onednn", [True, False])
def test_compute_logits_returns_a_contiguous_tensor_unless_asked_not_to(onednn, monkeypatch):
    """compute_logits() hands out contiguous logits; with contiguous=False the padded-row view may come back."""
    from hf_rnn_attention import modeling_rnn_attention

    monkeypatch.setattr(modeling_rnn_attention, "ONEDNN_LINEAR", onednn and modeling_rnn_attention.ONEDNN_LINEAR)
    model = tiny_model(tie_word_embeddings=False).train()  # vocab_size 40 (not a multiple of 16); dropout 0
    hidden = torch.randn(3, 2, model.config.decoder_hidden_size)
    logits = model.compute_logits(hidden)
    assert logits.is_contiguous()
    torch.testing.assert_close(logits, model.lm_head(hidden))
    view = model.compute_logits(hidden, contiguous=False)
    torch.testing.assert_close(view, logits)
    if not modeling_rnn_attention.ONEDNN_LINEAR:
        assert view.stride(-2) == 64  # the padded rows, not copied


def test_additive_score_is_bahdanaus_formula():
    """v_aᵀ tanh(W_a s + U_a h̄), computed through the sigmoid, equals the formula with torch.tanh."""
    from hf_rnn_attention.modeling_rnn_attention import AdditiveScore

    torch.manual_seed(0)
    score = AdditiveScore(tiny_config(attention_type="additive"))
    query = torch.randn(2, 3, score.query_projection.in_features)
    memory = torch.randn(2, 4, score.key_projection.in_features)
    keys = score.project_keys(memory)
    expected = torch.tanh(score.query_projection(query).unsqueeze(2) + keys.unsqueeze(1)) @ score.energy.weight[0]
    torch.testing.assert_close(score(query, keys), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_bahdanau_recurrence_equals_step_path(dtype):
    """Bahdanau order, additive score, one LSTM layer: the fused recurrence (written-out backward) gives the
    step-by-step loop's loss, attention weights and every gradient, also through the attention weights and
    the returned state."""
    config = tiny_config(attention_type="additive", decoder_style="bahdanau", decoder_layers=1)
    torch.manual_seed(0)
    model = RNNAttentionForConditionalGeneration(config).train().to(dtype)  # dropout is 0
    decoder = model.model.decoder
    input_ids, mask = random_batch(batch=5, source_len=7, lengths=[7, 3, 5, 6, 2])
    labels = torch.randint(3, 40, (5, 7), generator=torch.Generator().manual_seed(5))
    labels[0, 4:] = -100
    labels[2, 1:] = -100
    labels[3, 5:] = -100
    labels[4, 2] = -100
    decoder_mask = (torch.arange(7)[None, :] < torch.tensor([4, 7, 1, 5, 7])[:, None]).long()

    def run(fast):
        model.zero_grad()
        decoder.fast_path = fast
        assert decoder.can_fuse(torch.zeros(1))
        out = model(input_ids=input_ids, attention_mask=mask, labels=labels, decoder_attention_mask=decoder_mask,
                    output_attentions=True, use_cache=True)  # fmt: skip
        h, c = getattr(out, CACHE_FIELD).state
        (out.loss + 0.3 * (out.cross_attentions[0] ** 2).sum() + (h**2).sum() + 0.7 * c.sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return out.loss.detach(), out.cross_attentions[0].detach(), grads

    tolerance = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else {}
    fused, step = run(True), run(False)
    torch.testing.assert_close(fused[0], step[0], **tolerance)
    torch.testing.assert_close(fused[1], step[1], **tolerance)
    assert fused[2].keys() == step[2].keys()
    for name in fused[2]:
        torch.testing.assert_close(fused[2][name], step[2][name], **tolerance, msg=name)


def test_fused_loops_run_their_float32_step_products_through_onednn(monkeypatch):
    """In float32 training the fused Bahdanau loop's per-step products (at most the batch's rows) go through oneDNN
    (the speed this path exists for; the loss and gradients are checked against the step loop above), and with
    oneDNN off they fall back to MKL with the same loss."""
    from hf_rnn_attention import modeling_rnn_attention

    if not modeling_rnn_attention.ONEDNN_LINEAR:
        pytest.skip("this torch build has no oneDNN linear")
    config = tiny_config(attention_type="additive", decoder_style="bahdanau", decoder_layers=1)
    torch.manual_seed(0)
    model = RNNAttentionForConditionalGeneration(config).train()
    input_ids, mask = random_batch(batch=5, source_len=7, lengths=[7, 3, 5, 6, 2])
    labels = torch.randint(3, 40, (5, 6), generator=torch.Generator().manual_seed(5))
    rows = []
    product = modeling_rnn_attention._onednn_product
    monkeypatch.setattr(modeling_rnn_attention, "_onednn_product", lambda *a: rows.append(a[0].shape[0]) or product(*a))

    def loss():
        out = model(input_ids=input_ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        return out.loss.detach()

    with_onednn = loss()
    step_rows = [n for n in rows if n <= 5]  # the training linears see multiples of 64
    assert len(step_rows) >= 2 * 6  # forward and backward of each of the 6 steps, at least
    rows.clear()
    monkeypatch.setattr(modeling_rnn_attention, "ONEDNN_LINEAR", False)
    torch.testing.assert_close(loss(), with_onednn)
    assert rows == []


def test_fused_loops_pad_their_onednn_step_products_to_row_buckets(monkeypatch):
    """The per-step products' rows go to oneDNN padded to `_row_bucket` sizes (oneDNN keeps a primitive per shape),
    in the forward and the backward, with the loss and gradients of the unpadded MKL products."""
    from hf_rnn_attention import modeling_rnn_attention

    if not modeling_rnn_attention.ONEDNN_LINEAR:
        pytest.skip("this torch build has no oneDNN linear")
    config = tiny_config(attention_type="additive", decoder_style="bahdanau", decoder_layers=1)
    torch.manual_seed(0)
    model = RNNAttentionForConditionalGeneration(config).train()
    lengths = [7, 7, 7, 6, 6, 5, 5, 4, 3, 2, 2]  # the encoder's steps run 11, 11, 9, 8, 7, 5 and 3 rows
    input_ids, mask = random_batch(batch=11, source_len=7, lengths=lengths)
    labels = torch.randint(3, 40, (11, 6), generator=torch.Generator().manual_seed(5))  # 11 rows every step
    rows = []
    product = modeling_rnn_attention._onednn_product
    monkeypatch.setattr(modeling_rnn_attention, "_onednn_product", lambda *a: rows.append(a[0].shape[0]) or product(*a))

    def loss_and_gradients():
        model.zero_grad()
        out = model(input_ids=input_ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        return out.loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    loss, gradients = loss_and_gradients()
    step_rows = {n for n in rows if n < 64}  # the training linears see multiples of 64
    assert step_rows & {12, 10} and not step_rows & {9, 11}  # 11 → 12 and 9 → 10 rows
    assert step_rows <= {modeling_rnn_attention._row_bucket(n) for n in range(1, 65)}
    rows.clear()
    monkeypatch.setattr(modeling_rnn_attention, "ONEDNN_LINEAR", False)  # MKL, unpadded
    reference_loss, reference_gradients = loss_and_gradients()
    assert rows == []
    torch.testing.assert_close(loss, reference_loss)
    for gradient, reference in zip(gradients, reference_gradients, strict=True):
        torch.testing.assert_close(gradient, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", DECODER_VARIANTS)
@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
@pytest.mark.parametrize("fast", [True, False])
def test_skipping_target_padding_gives_the_same_loss_and_gradients(variant, rnn_type, fast):
    """With labels the decoder stops after each row's last label and the output layer runs only where there is
    a label (the step path shrinks its batch, the fast path packs). Loss, labelled logits and every gradient
    equal decoding every padded position (the reference), to 1e-5."""
    config = tiny_config(rnn_type=rnn_type, decoder_layers=2, **variant_kwargs(*variant))
    torch.manual_seed(0)
    model = RNNAttentionForConditionalGeneration(config).train()  # dropout is 0: train mode is deterministic
    model.model.decoder.fast_path = fast
    input_ids, mask = random_batch(batch=5, source_len=7, lengths=[7, 3, 5, 6, 2])
    labels = torch.randint(3, 40, (5, 7), generator=torch.Generator().manual_seed(5))
    labels[0, 4:] = -100  # lengths 4, 7, 1, 5 and 7, with one ignored label inside a row
    labels[2, 1:] = -100
    labels[3, 5:] = -100
    labels[4, 2] = -100
    keep = labels.ne(-100)

    def run(**padding):
        model.zero_grad()
        out = model(input_ids=input_ids, attention_mask=mask, labels=labels, **padding)
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    skipping, skipping_grads = run()
    everything, everything_grads = run(decoder_attention_mask=torch.ones_like(labels))  # decodes all positions
    torch.testing.assert_close(skipping.loss, everything.loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(skipping.logits[keep], everything.logits[keep], atol=1e-5, rtol=1e-5)
    assert skipping.logits[~keep].abs().max() == 0
    assert skipping_grads.keys() == everything_grads.keys()
    for name in skipping_grads:
        torch.testing.assert_close(skipping_grads[name], everything_grads[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("variant", DECODER_VARIANTS)
@pytest.mark.parametrize("fast", [True, False])
def test_decoder_attention_mask_returns_each_rows_state_after_its_last_token(variant, fast):
    """As for a packed sequence: the state (and input feed) a padded batch returns equals decoding each row
    alone up to its length; outputs at padding are 0."""
    model = tiny_model(decoder_layers=2, **variant_kwargs(*variant))
    model.model.decoder.fast_path = fast
    input_ids, mask = random_batch(batch=4, source_len=6, lengths=[6, 4, 5, 2])
    decoder_input_ids = torch.randint(3, 40, (4, 5), generator=torch.Generator().manual_seed(2))
    lengths = [3, 5, 1, 4]
    decoder_mask = (torch.arange(5)[None, :] < torch.tensor(lengths)[:, None]).long()
    with torch.no_grad():
        batched = model.model(input_ids=input_ids, attention_mask=mask, decoder_input_ids=decoder_input_ids,
                              decoder_attention_mask=decoder_mask, use_cache=True, output_attentions=True)  # fmt: skip
        assert batched.last_hidden_state[decoder_mask == 0].abs().max() == 0
        if model.config.attention_type != "none":
            assert batched.cross_attentions[0][decoder_mask == 0].abs().max() == 0
        for row, length in enumerate(lengths):
            alone = model.model(input_ids=input_ids[row : row + 1], attention_mask=mask[row : row + 1],
                                decoder_input_ids=decoder_input_ids[row : row + 1, :length], use_cache=True)  # fmt: skip
            torch.testing.assert_close(batched.last_hidden_state[row, :length], alone.last_hidden_state[0],
                                       atol=1e-5, rtol=1e-5)  # fmt: skip
            for ours, reference in zip(
                getattr(batched, CACHE_FIELD).state, getattr(alone, CACHE_FIELD).state, strict=True
            ):
                torch.testing.assert_close(ours[:, row], reference[:, 0], atol=1e-5, rtol=1e-5)
            if model.config.input_feeding:
                torch.testing.assert_close(getattr(batched, CACHE_FIELD).input_feed[row],
                                           getattr(alone, CACHE_FIELD).input_feed[0], atol=1e-5, rtol=1e-5)  # fmt: skip


@pytest.mark.parametrize("variant", [v for v in DECODER_VARIANTS if v[0] != "none"])
def test_masked_positions_get_exactly_zero_attention(variant):
    model = tiny_model(**variant_kwargs(*variant))
    input_ids, mask = random_batch(batch=3, source_len=8, lengths=[8, 2, 5])
    out = model(input_ids=input_ids, attention_mask=mask, labels=torch.randint(3, 40, (3, 4)), output_attentions=True)
    weights = out.cross_attentions[0]  # (B, T, S)
    assert weights.shape == (3, 4, 8)
    assert torch.all(weights.masked_select(mask[:, None, :].expand_as(weights) == 0) == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4))


def test_source_with_no_valid_position_gives_finite_outputs():
    model = tiny_model(attention_type="additive", decoder_style="bahdanau")
    input_ids, mask = random_batch(batch=2, source_len=5, lengths=[5, 2])
    input_ids[1] = 0
    mask[1] = 0
    out = model(input_ids=input_ids, attention_mask=mask, labels=torch.randint(3, 40, (2, 4)), output_attentions=True)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    assert torch.isfinite(out.cross_attentions[0]).all()
    assert torch.isfinite(
        model.generate(
            input_ids, attention_mask=mask, max_new_tokens=4, output_scores=True, return_dict_in_generate=True
        ).scores[0]
    ).all()


def test_scheduled_sampling_ratio_zero_feeds_own_argmax_predictions():
    """With ratio 0 every step reads the model's previous argmax: re-running teacher-forced on those
    predictions reproduces the same logits."""
    model = tiny_model(attention_type="general", input_feeding=True)
    input_ids, mask = random_batch()
    labels = torch.randint(3, 40, (4, 6))
    model.train()
    model.teacher_forcing_ratio = 0.0
    free_running = model(input_ids=input_ids, attention_mask=mask, labels=labels).logits
    predictions = free_running.argmax(-1)
    model.eval()
    forced = model(
        input_ids=input_ids, attention_mask=mask, decoder_input_ids=shift_tokens_right(predictions, 0, 1)
    ).logits
    torch.testing.assert_close(free_running, forced, atol=1e-5, rtol=1e-5)
    gold = model(input_ids=input_ids, attention_mask=mask, labels=labels).logits
    assert not torch.allclose(free_running[:, 1:], gold[:, 1:], atol=1e-3)


def test_scheduled_sampling_ratio_one_and_eval_mode_are_teacher_forcing():
    model = tiny_model(attention_type="additive", decoder_style="bahdanau")
    input_ids, mask = random_batch()
    labels = torch.randint(3, 40, (4, 6))
    reference = model(input_ids=input_ids, attention_mask=mask, labels=labels).logits  # eval, ratio 1
    model.teacher_forcing_ratio = 0.0
    torch.testing.assert_close(model(input_ids=input_ids, attention_mask=mask, labels=labels).logits, reference)  # eval
    model.train()
    model.teacher_forcing_ratio = 1.0
    torch.testing.assert_close(model(input_ids=input_ids, attention_mask=mask, labels=labels).logits, reference)


def test_scheduled_sampling_mixes_gold_and_predicted_tokens_per_sequence_and_step():
    model = tiny_model(attention_type="general")
    input_ids, mask = random_batch(batch=8)
    labels = torch.randint(3, 40, (8, 10))
    gold = model(input_ids=input_ids, attention_mask=mask, labels=labels).logits
    model.train()
    model.teacher_forcing_ratio = 0.5
    torch.manual_seed(0)
    mixed = model(input_ids=input_ids, attention_mask=mask, labels=labels).logits
    # step 0 always reads the start token; later steps differ from teacher forcing in some rows but not all
    torch.testing.assert_close(mixed[:, 0], gold[:, 0])
    differs = (mixed - gold).abs().amax(-1) > 1e-6  # (B, T)
    assert differs.any() and not differs[:, 1:].all()
    loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    assert model.model.encoder.rnn.weight_ih_l0.grad.abs().sum() > 0


@pytest.mark.parametrize("variant", DECODER_VARIANTS)
def test_gradcheck_float64(variant):
    """Analytic gradients of the loss equal float64 central differences, for every entry of every parameter
    (tied weights included: the shared embedding is read by encoder, decoder and output layer).
    (torch.autograd.gradcheck through torch.func.functional_call does not see the tied output layer, so the
    finite differences are taken in place.)"""
    config = tiny_config(
        vocab_size=9,
        embedding_size=3,
        encoder_hidden_size=2,
        encoder_layers=1,
        decoder_hidden_size=4,
        decoder_layers=1,
        **variant_kwargs(*variant),
    )
    torch.manual_seed(0)
    model = RNNAttentionForConditionalGeneration(config).double().eval()
    input_ids, mask = random_batch(batch=2, source_len=3, lengths=[3, 2], vocab_size=9)
    inputs = dict(input_ids=input_ids, attention_mask=mask, labels=torch.tensor([[4, 5, 2], [6, 2, -100]]))
    params = dict(model.named_parameters())
    analytic = dict(zip(params, torch.autograd.grad(model(**inputs).loss, list(params.values())), strict=True))
    eps = 1e-6
    with torch.no_grad():
        for name, param in params.items():
            flat = param.view(-1)
            numeric = torch.empty_like(flat)
            for index in range(flat.numel()):
                original = flat[index].item()
                flat[index] = original + eps
                up = model(**inputs).loss.item()
                flat[index] = original - eps
                down = model(**inputs).loss.item()
                flat[index] = original
                numeric[index] = (up - down) / (2 * eps)
            torch.testing.assert_close(analytic[name].view(-1), numeric, atol=1e-7, rtol=1e-4, msg=name)


def test_output_projection_and_tied_head_share_the_embedding():
    model = tiny_model()  # decoder 16 != embedding 12: projection before the tied head
    assert model.output_projection is not None
    assert model.lm_head.weight is model.model.shared.weight
    assert model.model.encoder.embed_tokens.weight is model.model.shared.weight
    assert model.model.decoder.embed_tokens.weight is model.model.shared.weight
    untied = tiny_model(tie_word_embeddings=False)
    assert untied.output_projection is None and untied.lm_head.weight is not untied.model.shared.weight
    assert untied.model.encoder.embed_tokens.weight is untied.model.shared.weight


def test_bad_inputs_raise_clear_errors():
    model = tiny_model()
    input_ids, mask = random_batch()
    with pytest.raises(ValueError, match="right-padded"):
        model(input_ids=input_ids, attention_mask=mask.flip(1), labels=torch.randint(3, 40, (4, 3)))
    with pytest.raises(ValueError, match="outside"):
        model(input_ids=input_ids + 100, attention_mask=mask, labels=torch.randint(3, 40, (4, 3)))
    with pytest.raises(ValueError, match="labels"):
        model(input_ids=input_ids, attention_mask=mask, labels=torch.full((4, 3), 99))
    with pytest.raises(ValueError, match="decoder_input_ids"):
        model(input_ids=input_ids, attention_mask=mask)


# ─────────────── reference decoders written by hand from the papers, using the module's weights ───────────────


def lstm_cell(rnn, x, h, c):
    """One step of a one-layer nn.LSTM: gates i, f, g, o (PyTorch's order)."""
    gates = x @ rnn.weight_ih_l0.T + rnn.bias_ih_l0 + h @ rnn.weight_hh_l0.T + rnn.bias_hh_l0
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def gru_cell(rnn, x, h):
    """One step of a one-layer nn.GRU: reset r, update z, candidate n."""
    xr, xz, xn = (x @ rnn.weight_ih_l0.T + rnn.bias_ih_l0).chunk(3, dim=-1)
    hr, hz, hn = (h @ rnn.weight_hh_l0.T + rnn.bias_hh_l0).chunk(3, dim=-1)
    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h


def reference_logits(model, input_ids, mask, decoder_input_ids):
    """Bahdanau order: e = vᵀ tanh(W s_{t-1} + U h̄), c = Σ α h̄, s_t = GRU([y; c], s_{t-1});
    Luong order: h_t = LSTM([y; h̃_{t-1}], h_{t-1}), score h_tᵀ W_a h̄, h̃_t = tanh(W_c [c; h_t]).
    Output: W_o (P h̃_t) + b with W_o the shared embedding."""
    core, config = model.model, model.config
    encoded = core.encoder(input_ids, mask)
    memory = encoded.last_hidden_state  # (B, S, M), trusted: checked by padding invariance and packing tests
    pad = ~mask.bool()
    bridge = core.bridge
    h = torch.tanh(encoded.final_hidden_state @ bridge.hidden_projection.weight.T + bridge.hidden_projection.bias)
    c = None
    if config.rnn_type == "lstm":
        c = torch.tanh(encoded.final_cell_state @ bridge.cell_projection.weight.T + bridge.cell_projection.bias)
    decoder, rnn = core.decoder, core.decoder.rnn
    score = decoder.attention.score
    feed = torch.zeros_like(h)
    logits = []
    for t in range(decoder_input_ids.shape[1]):
        y = core.shared.weight[decoder_input_ids[:, t]]  # (B, E)

        def attend(query):
            if config.attention_type == "additive":
                keys = memory @ score.key_projection.weight.T  # U h̄
                energy = torch.tanh((query @ score.query_projection.weight.T)[:, None, :] + keys)
                scores = (energy @ score.energy.weight.T).squeeze(-1)  # (B, S)
            else:  # general
                scores = torch.einsum("bh,bsh->bs", query, memory @ score.key_projection.weight.T)
            alpha = torch.softmax(scores.masked_fill(pad, float("-inf")), dim=-1)
            return torch.einsum("bs,bsm->bm", alpha, memory)

        if config.decoder_style == "bahdanau":
            context = attend(h)  # with s_{t-1}
            h = gru_cell(rnn, torch.cat([y, context], -1), h)
        else:
            h, c = lstm_cell(rnn, torch.cat([y, feed], -1) if config.input_feeding else y, h, c)
            context = attend(h)  # with h_t
        feed = torch.tanh(torch.cat([context, h], -1) @ decoder.attention_combine.weight.T)
        logits.append(model.output_projection(feed) @ core.shared.weight.T + model.lm_head.bias)
    return torch.stack(logits, dim=1)


@pytest.mark.parametrize(
    "settings",
    [
        dict(rnn_type="gru", attention_type="additive", decoder_style="bahdanau"),
        dict(rnn_type="lstm", attention_type="general", decoder_style="luong", input_feeding=True),
        dict(rnn_type="lstm", attention_type="general", decoder_style="luong"),
    ],
)
def test_logits_equal_a_hand_written_reference_decoder(settings):
    # float64 and large weights: attention then moves the logits far more than the tolerance
    model = tiny_model(decoder_layers=1, init_std=1.0, **settings).double()
    input_ids, mask = random_batch(batch=3, source_len=7, lengths=[7, 3, 5])
    decoder_input_ids = torch.randint(3, 40, (3, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference_logits(model, input_ids, mask, decoder_input_ids)
        actual = model(input_ids=input_ids, attention_mask=mask, decoder_input_ids=decoder_input_ids).logits
    assert expected.abs().max() > 1.0
    torch.testing.assert_close(actual, expected, atol=1e-10, rtol=1e-10)


# ─────────────────────────────────────────── inputs in other forms ───────────────────────────────────────────


@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
def test_tuple_encoder_outputs_and_return_dict_false(rnn_type):
    model = tiny_model(rnn_type=rnn_type)
    input_ids, mask = random_batch()
    labels = torch.randint(3, 40, (4, 5))
    reference = model(input_ids=input_ids, attention_mask=mask, labels=labels, output_hidden_states=True)
    encoder_tuple = model.get_encoder()(input_ids, mask, output_hidden_states=True, return_dict=False)
    again = model(encoder_outputs=encoder_tuple, attention_mask=mask, labels=labels, output_hidden_states=True)
    torch.testing.assert_close(again.logits, reference.logits)
    assert again.encoder_hidden_states is not None
    as_tuple = model(input_ids=input_ids, attention_mask=mask, labels=labels, return_dict=False)
    torch.testing.assert_close(as_tuple[0], reference.loss)
    torch.testing.assert_close(as_tuple[1], reference.logits)
    with pytest.raises(ValueError, match="final states"):
        model(encoder_outputs=(encoder_tuple[0],), attention_mask=mask, labels=labels)


def test_unknown_arguments_and_left_padded_decoder_mask_raise():
    model = tiny_model()
    input_ids, mask = random_batch()
    labels = torch.randint(3, 40, (4, 5))
    with pytest.raises(TypeError, match="lables"):
        model(input_ids=input_ids, attention_mask=mask, lables=labels, decoder_input_ids=labels)
    left_padded = torch.ones(4, 5, dtype=torch.long)
    left_padded[0, 0] = 0
    with pytest.raises(ValueError, match="right-padded"):
        model(input_ids=input_ids, attention_mask=mask, labels=labels, decoder_attention_mask=left_padded)
    right_padded = torch.ones(4, 5, dtype=torch.long)
    right_padded[0, 3:] = 0
    model(input_ids=input_ids, attention_mask=mask, labels=labels, decoder_attention_mask=right_padded)


def test_a_cache_passed_in_training_mode_is_advanced():
    model = tiny_model().train()
    input_ids, mask = random_batch()
    first = model(input_ids=input_ids, attention_mask=mask, decoder_input_ids=torch.ones(4, 1, dtype=torch.long),
                  use_cache=True)  # fmt: skip
    cache = getattr(first, CACHE_FIELD)
    model(input_ids=input_ids, attention_mask=mask, decoder_input_ids=torch.full((4, 1), 5), cache=cache)
    assert cache.get_seq_length() == 2


def test_the_cache_is_taken_under_its_old_name_too_but_not_under_both():
    """transformers 5.24 renamed `past_key_values` to `cache`; code written for 4.57 to 5.23 passes the old name."""
    model = tiny_model().eval()
    input_ids, mask = random_batch()
    start = torch.ones(4, 1, dtype=torch.long)
    cache = getattr(
        model(input_ids=input_ids, attention_mask=mask, decoder_input_ids=start, use_cache=True), CACHE_FIELD
    )
    old = model(decoder_input_ids=torch.full((4, 1), 5), past_key_values=cache).logits
    assert cache.get_seq_length() == 2
    cache = getattr(
        model(input_ids=input_ids, attention_mask=mask, decoder_input_ids=start, use_cache=True), CACHE_FIELD
    )
    new = model(decoder_input_ids=torch.full((4, 1), 5), cache=cache).logits
    torch.testing.assert_close(old, new)
    with pytest.raises(ValueError, match="not both"):
        model(decoder_input_ids=torch.full((4, 1), 5), cache=cache, past_key_values=cache)


def test_half_precision_attention_over_an_empty_row_stays_finite():
    from hf_rnn_attention.modeling_rnn_attention import Attention

    attention = Attention(tiny_config(attention_type="dot", encoder_hidden_size=8, decoder_hidden_size=16)).half()
    values = torch.randn(2, 5, 16).half() * 20
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    memory = attention.memory(values, mask)
    context, weights = attention(-torch.randn(2, 3, 16).half() * 20, memory)
    assert torch.isfinite(weights).all() and torch.isfinite(context).all()
    assert torch.all(weights[0, :, 3:] == 0)


def test_output_flags_default_to_the_config():
    model = tiny_model()
    input_ids, mask = random_batch()
    labels = torch.randint(3, 40, (4, 5))
    assert model(input_ids=input_ids, attention_mask=mask, labels=labels).cross_attentions is None
    model.config.output_attentions = True
    model.config.output_hidden_states = True
    out = model(input_ids=input_ids, attention_mask=mask, labels=labels)
    assert out.cross_attentions[0].shape == (4, 5, 7) and out.decoder_hidden_states is not None
    assert (
        model(input_ids=input_ids, attention_mask=mask, labels=labels, output_attentions=False).cross_attentions is None
    )
    model.config.return_dict = False
    assert isinstance(model(input_ids=input_ids, attention_mask=mask, labels=labels), tuple)


def test_label_smoothing_equals_the_trainers_label_smoother():
    """config.label_smoothing gives the loss `Seq2SeqTrainingArguments(label_smoothing_factor=ε)` computes."""
    from transformers.trainer_pt_utils import LabelSmoother

    model = tiny_model(label_smoothing=0.1)
    with torch.no_grad():
        model.lm_head.bias[5] = 6.0  # a peaked distribution: smoothing makes a difference
    input_ids, mask = random_batch()
    labels = torch.randint(3, 40, (4, 5), generator=torch.Generator().manual_seed(7))
    labels[1, 2:] = -100
    out = model(input_ids=input_ids, attention_mask=mask, labels=labels)
    reference = LabelSmoother(epsilon=0.1)({"logits": out.logits}, labels)
    torch.testing.assert_close(out.loss, reference)
    model.config.label_smoothing = 0.0
    plain = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
    assert abs(float(out.loss - plain)) > 1e-2  # the smoothing term is there
    with pytest.raises(ValueError, match="label_smoothing"):
        tiny_config(label_smoothing=1.0)


@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
def test_one_inference_step_by_cells_equals_the_rnn(rnn_type):
    """generate()'s steps on the CPU go through torch.lstm_cell / gru_cell layer by layer: nn.LSTM's values."""
    decoder = tiny_model(rnn_type=rnn_type).model.decoder  # 2 decoder layers
    inputs = torch.randn(11, 1, decoder.rnn.input_size)  # 11 rows: padded to 12 for oneDNN's products
    state = tuple(torch.randn(2, 11, decoder.rnn.hidden_size) for _ in range(2 if rnn_type == "lstm" else 1))
    with torch.no_grad():
        assert decoder._decodes_by_cells(inputs)
        outputs, new_state = decoder._rnn(inputs, state)
        reference, reference_state = decoder.rnn(inputs, state if rnn_type == "lstm" else state[0])
    torch.testing.assert_close(outputs, reference)
    reference_state = reference_state if rnn_type == "lstm" else (reference_state,)
    for ours, theirs in zip(new_state, reference_state, strict=True):
        torch.testing.assert_close(ours, theirs)
    assert not decoder._decodes_by_cells(inputs)  # with gradients: nn.LSTM's own path


def _relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours.float() - reference).abs().max() / reference.abs().max().clamp(min=1e-12))


def test_packed_lstm_under_bf16_autocast_runs_bf16_products_and_float32_states():
    """Under CPU autocast to bfloat16 the fused packed LSTM takes its products' operands in bf16 and keeps its
    states in float32: outputs and gradients within bf16 rounding of the float32 result, but not equal to it (the
    products did run in bf16), float32 outputs, and bf16 inputs (what autocast's linear layers give) get bf16
    gradients."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 6, num_layers=2, bidirectional=True, batch_first=True)
    lengths = torch.tensor([3, 6, 1, 6, 4])
    inputs = torch.randn(5, 6, 5, requires_grad=True)
    out_weights = torch.randn(5, 6, 12)

    def run(autocast):
        for tensor in (inputs, *lstm.parameters()):
            tensor.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            packed = torch.nn.utils.rnn.pack_padded_sequence(inputs, lengths, batch_first=True, enforce_sorted=False)
            outputs, final = packed_lstm(lstm, packed)
        padded = torch.nn.utils.rnn.pad_packed_sequence(outputs, batch_first=True)[0]
        ((padded * out_weights).sum() + final[0].sum() + final[1].pow(2).sum()).backward()
        return [padded.detach(), *(f.detach() for f in final)], [t.grad.clone() for t in (inputs, *lstm.parameters())]

    low, full = run(True), run(False)
    for ours, reference in zip(low[0] + low[1], full[0] + full[1], strict=True):
        assert ours.dtype == torch.float32
        assert 1e-5 < _relative_error(ours, reference) < 3e-2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gates = torch.randn(4, 24).bfloat16().requires_grad_()  # a bf16 input projection, as autocast gives it
        states, h, c = PackedLSTMRecurrence.apply(gates, torch.zeros(2, 6), torch.zeros(2, 6),
                                                  lstm.weight_hh_l0, [2, 2], False, torch.bfloat16)  # fmt: skip
    states.sum().backward()
    assert states.dtype == torch.float32 and gates.grad.dtype == torch.bfloat16


def test_fused_bahdanau_recurrence_under_bf16_autocast():
    """Under CPU autocast to bfloat16 the Bahdanau model still trains through the fused recurrence, with bf16
    products and float32 states: loss, attention weights and every gradient within bf16 rounding of float32
    (and not equal to it), where it used to fall back to the step loop."""
    from hf_rnn_attention import modeling_rnn_attention

    config = tiny_config(attention_type="additive", decoder_style="bahdanau", decoder_layers=1)
    torch.manual_seed(0)
    model = RNNAttentionForConditionalGeneration(config).train()  # dropout is 0
    input_ids, mask = random_batch(batch=5, source_len=7, lengths=[7, 3, 5, 6, 2])
    labels = torch.randint(3, 40, (5, 7), generator=torch.Generator().manual_seed(5))
    labels[0, 4:] = -100
    labels[2, 1:] = -100
    product_dtypes = []
    fused = modeling_rnn_attention.FusedBahdanauRecurrence.apply

    def spy(*args):
        product_dtypes.append(args[-1])
        return fused(*args)

    def run(autocast):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(input_ids=input_ids, attention_mask=mask, labels=labels, output_attentions=True)
        (out.loss + 0.3 * (out.cross_attentions[0].float() ** 2).sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return out.loss.detach(), out.cross_attentions[0].detach(), grads

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(modeling_rnn_attention.FusedBahdanauRecurrence, "apply", spy)
        low, full = run(True), run(False)
    assert product_dtypes == [torch.bfloat16, None]
    assert 1e-6 < _relative_error(low[0], full[0]) < 2e-2
    assert _relative_error(low[1], full[1]) < 3e-2
    assert low[2].keys() == full[2].keys()
    errors = sorted(_relative_error(low[2][name], full[2][name]) for name in full[2])
    # most within 2e-2; W_a's gradient, a sum with cancellation, about 1e-1 (the step loop under autocast,
    # which runs the attention in bf16 too, is 5x off for it in this model)
    assert errors[0] > 1e-6 and errors[len(errors) // 2] < 2e-2 and errors[-1] < 0.2, errors


@pytest.mark.parametrize("attention_type", ["dot", "general", "additive"])
def test_attention_runs_in_float32_under_cpu_autocast(attention_type):
    """Under CPU autocast the attention's batched products run in float32 (their shapes change with every batch,
    and oneDNN's bf16 kernels are compiled per shape): the same context and weights as without autocast, from bf16
    queries and keys as autocast's linear layers give them, and gradients that reach them."""
    from hf_rnn_attention.modeling_rnn_attention import Attention

    torch.manual_seed(0)
    config = tiny_config(attention_type=attention_type)
    attention = Attention(config)
    values = torch.randn(3, 5, config.encoder_output_size)
    mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2, [1] * 4 + [0]], dtype=torch.bool)
    query = torch.randn(3, 4, config.decoder_hidden_size).bfloat16().float()
    with torch.no_grad():
        memory = attention.memory(values, mask)
    bf16_memory = memory._replace(values=memory.values.bfloat16(), keys=memory.keys.bfloat16())
    expected = attention(query, bf16_memory._replace(values=bf16_memory.values.float(), keys=bf16_memory.keys.float()))
    bf16_query = query.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        context, weights = attention(bf16_query, bf16_memory)
    assert context.dtype == weights.dtype == torch.float32
    torch.testing.assert_close(context, expected[0], rtol=0, atol=0)
    torch.testing.assert_close(weights, expected[1], rtol=0, atol=0)
    assert weights[1, :, 3:].eq(0).all()
    context.sum().backward()
    assert bf16_query.grad.dtype == torch.bfloat16 and bf16_query.grad.abs().sum() > 0


def test_training_linear_pads_rows_to_multiples_of_64_under_bf16_autocast(monkeypatch):
    """Under CPU bf16 autocast the training products see row counts in multiples of 64 (oneDNN keeps a compiled
    kernel per shape), with the values and gradients of F.linear; without gradients (decoding) it is F.linear
    itself."""
    from hf_rnn_attention import modeling_rnn_attention
    from hf_rnn_attention.modeling_rnn_attention import training_linear

    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 37)
    x = torch.randn(2, 50, 6, requires_grad=True)  # 100 rows
    seen = []
    linear = F.linear

    def spy(inputs, weight, bias=None):
        seen.append(inputs.reshape(-1, inputs.shape[-1]).shape[0])
        return linear(inputs, weight, bias)

    monkeypatch.setattr(modeling_rnn_attention.F, "linear", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = training_linear(x, layer.weight, layer.bias)
        reference = linear(x, layer.weight, layer.bias)
    assert seen == [128] and out.shape == (2, 50, 37)
    torch.testing.assert_close(out, reference, atol=2e-2, rtol=2e-2)
    out.float().sum().backward()
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand(2, 50, 6), atol=5e-2, rtol=2e-2)
    seen.clear()
    torch.testing.assert_close(training_linear(x, layer.weight, layer.bias), linear(x, layer.weight, layer.bias))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():  # decoding: one row stays one row
        training_linear(x[:1, :1], layer.weight, layer.bias)
    # outside autocast, with gradients: oneDNN's own function where the build has it, else F.linear
    assert seen == ([1] if modeling_rnn_attention.ONEDNN_LINEAR else [100, 1])

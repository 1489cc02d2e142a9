"""A recurrent encoder–decoder with attention, as a Hugging Face transformers model.

The file reads top to bottom along the path of one sentence:

    input_ids ─▶ RNNAttentionEncoder (shared embedding → packed BiLSTM/GRU; `packed_lstm` trains it on the
                 CPU with the input projection hoisted and a written-out backward) ─▶ encoder outputs h̄_s
              ─▶ Bridge (decoder initial state from the encoder's final states)
              ─▶ score functions (dot, scaled dot, general, additive) and Attention (mask → softmax → Σ)
              ─▶ RNNAttentionDecoder (Luong or Bahdanau order, optional input feeding; a parallel
                 "fast path" when no step depends on the previous attention output, and for Bahdanau
                 order the `FusedBahdanauRecurrence` with its own backward)
              ─▶ RNNAttentionCache (decoder state, input feed and the per-sentence memory for generate())
              ─▶ RNNAttentionModel / RNNAttentionForConditionalGeneration (output layer, loss, teacher
                 forcing and scheduled sampling, GenerationMixin)

References:
    Bahdanau, Cho, Bengio (2015). Neural Machine Translation by Jointly Learning to Align and Translate.
    Luong, Pham, Manning (2015). Effective Approaches to Attention-based Neural Machine Translation.
    Bengio, Vinyals, Jaitly, Shazeer (2015). Scheduled Sampling for Sequence Prediction with RNNs.

Shapes use B = batch, S = source length, T = target length, E = embedding size, H = decoder hidden size,
M = encoder output size (2 x encoder hidden size when bidirectional), L = decoder layers, V = vocabulary.

Only torch and transformers are imported absolutely, so that a saved folder loads as Hub remote code.
"""

import copy
import inspect
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence
from transformers import GenerationConfig, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import Seq2SeqLMOutput, Seq2SeqModelOutput
from transformers.utils import ModelOutput

from .configuration_rnn_attention import RNNAttentionConfig

try:  # transformers 5.x: init functions that leave weights loaded from a checkpoint alone
    from transformers import initialization as init
except ImportError:  # transformers 4.x
    from torch.nn import init

RNN_CLASSES = {"lstm": nn.LSTM, "gru": nn.GRU}


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Teacher forcing inputs from labels: ``<sos> y_1 … y_{T-1}``; ignored label positions (-100) become pad."""
    shifted = labels.new_empty(labels.shape)  # (B, T)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill_(shifted == -100, pad_token_id)


# Arguments that transformers' generate(), pipelines or Trainer may pass and that this model does not use.
IGNORED_FORWARD_KWARGS = {
    "cache_position",
    "token_type_ids",
    "position_ids",
    "decoder_position_ids",
    "num_items_in_batch",
}


def _check_kwargs(kwargs: dict) -> None:
    """Reject misspelled or unsupported arguments instead of silently ignoring them."""
    given = {name for name, value in kwargs.items() if value is not None}
    unknown = sorted(given - IGNORED_FORWARD_KWARGS)
    if unknown:
        raise TypeError(f"forward() got unexpected argument(s) {unknown}.")


# transformers 5.24 renamed the cache argument and output field `past_key_values` to `cache`; 4.57 to 5.23 use the
# old name. The models take either name and return the cache under the field this transformers version has.
CACHE_FIELD = "cache" if "cache" in Seq2SeqLMOutput.__dataclass_fields__ else "past_key_values"


def _one_cache(cache, past_key_values):
    """The cache passed under its new name (`cache`) or its old one (`past_key_values`)."""
    if cache is not None and past_key_values is not None:
        raise ValueError(
            "Pass the cache as `cache` or as `past_key_values` (its name before transformers 5.24), not both."
        )
    return cache if cache is not None else past_key_values


def _decoder_lengths(decoder_attention_mask: torch.Tensor | None, target_len: int) -> torch.Tensor | None:
    """Lengths `(B,)` of a right-padded `decoder_attention_mask` `(B, T)`; None when there is none to use."""
    if decoder_attention_mask is None or decoder_attention_mask.shape[-1] != target_len:
        return None  # (with a cache, generate()'s mask also covers the tokens decoded before: nothing to skip)
    mask = decoder_attention_mask.bool()
    if bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise ValueError(
            "`decoder_attention_mask` must be right-padded: the decoder RNN reads every position, so padding "
            "may only follow the last real token."
        )
    return mask.sum(-1)


def _labelled_lengths(labels: torch.Tensor) -> torch.Tensor:
    """Per row, 1 + the last position whose label is not -100: the decoder need not run past it. `(B,)`"""
    positions = torch.arange(1, labels.shape[-1] + 1, device=labels.device)  # (T,)
    return (labels.ne(-100) * positions).amax(-1)


def _output_flags(config, output_attentions, output_hidden_states, return_dict):
    """Arguments left as None take the config's defaults, as in every transformers model."""
    return (
        config.output_attentions if output_attentions is None else output_attentions,
        config.output_hidden_states if output_hidden_states is None else output_hidden_states,
        config.return_dict if return_dict is None else return_dict,
    )


def _check_token_ids(name: str, ids: torch.Tensor, vocab_size: int) -> None:
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(
            f"`{name}` contains token ids outside [0, vocab_size={vocab_size}): min {int(ids.min())}, "
            f"max {int(ids.max())}. Use the tokenizer the model was trained with (labels may use -100 only)."
        )


# ───────────────────────────── Matrix products on the CPU: oneDNN where MKL is slow ─────────────────────────────
# PyTorch's CPU F.linear calls MKL. On an AMD EPYC (2 cores) MKL ran this model's decoding shapes about twice as
# slowly as oneDNN, which the same torch build carries (`torch.ops.mkldnn._linear_pointwise`, what inductor uses),
# and wrote the 8,003-wide training logits at 64-70 ms against oneDNN's 39 (scripts/kernel_benchmark.py). oneDNN is
# Intel's own library and as fast on Intel CPUs. `torch.backends.mkldnn.enabled = False` switches every use off.


def _onednn_linear_available() -> bool:
    """Whether this torch build has oneDNN's linear op."""
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


ONEDNN_LINEAR = _onednn_linear_available()


def _onednn_usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """oneDNN for float32 CPU tensors outside autocast (the layout aside: see [`_onednn_fits`])."""
    return (
        ONEDNN_LINEAR
        and torch.backends.mkldnn.enabled
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and x.numel() > 0
        and not torch.is_autocast_enabled("cpu")
    )


def _onednn_fits(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """oneDNN for float32 CPU tensors in plain row-major layout, outside autocast: for an operand with gaps between
    its rows (a column slice) it takes a reference kernel, measured about 20 times slower. (A transposed weight,
    dense in memory, runs at full speed: [`LinearFunction`]'s input gradient passes one.)"""
    return _onednn_usable(x, weight) and x.is_contiguous() and weight.is_contiguous()


def _row_bucket(rows: int) -> int:
    """`rows` rounded up to one of four sizes per octave above 8 (…, 8, 10, 12, 14, 16, 20, 24, …, 56, 64, 80, …):
    at most a quarter more rows."""
    if rows <= 8:
        return rows
    step = 1 << (rows.bit_length() - 3)
    return -(-rows // step) * step


def _onednn_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x Wᵀ + b through oneDNN, no autograd, its rows padded to [`_row_bucket`]: for decoding's products and the
    fused training loops' per-step products ([`_product`]), whose rows are at most the batch size.

    oneDNN builds and caches one primitive per input shape. These products meet every row count from the batch
    size down to 1 as sentences finish, and the cached primitives cost memory: the rows are padded with zeros to
    20 shapes for 1 to 64 rows instead of 64. Measured on test_2016 with the peers' models (2 cores, BENCHMARKS.md
    §4): peak RSS of greedy decoding 641 → 529-539 MiB (Luong), of beam-5 decoding 871 → 659-715 MiB (Luong) and
    881 → 713 MiB (Bahdanau), at the same speed to within the noise."""
    size = x.shape[-1]
    rows = x.numel() // size
    padded = _row_bucket(rows)
    if padded != rows:
        flat = torch.cat([x.reshape(rows, size), x.new_zeros(padded - rows, size)])  # (padded, K)
        out = _onednn_product(flat, weight, bias)[:rows]  # (rows, N): leading rows, contiguous
        return out.view(*x.shape[:-1], out.shape[-1])
    return _onednn_product(x, weight, bias)


def _hooked(layer: nn.Module) -> bool:
    """A layer whose own call must run: forward hooks, or accelerate's `_hf_hook` (device placement)."""
    return bool(layer._forward_hooks or layer._forward_pre_hooks) or getattr(layer, "_hf_hook", None) is not None


def _plain_linear(layer: nn.Module) -> bool:
    """An `nn.Linear` itself (not a subclass, which may change what its forward does) without hooks."""
    return type(layer) is nn.Linear and not _hooked(layer)


def linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)`; for a plain `nn.Linear` through oneDNN when nothing needs gradients (decoding) and
    [`_onednn_fits`], through [`training_linear`] with gradients. The output layer (8,003 × 512) took 6.8 ms for 64
    rows through MKL against 3.4 ms, and 2.1 ms for one row against 0.9 ms. The same values to float32 rounding."""
    if not _plain_linear(layer):
        return layer(x)
    if torch.is_grad_enabled():
        return training_linear(x, layer.weight, layer.bias)
    if not _onednn_fits(x, layer.weight):
        return layer(x)
    return _onednn_linear(x, layer.weight, layer.bias)


# ────────────────────────────────── Packed LSTM, fused for the CPU ──────────────────────────────────


def _tanh(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """tanh(x) = 2σ(2x) − 1, into `out` (in place without it), for the buffers of the fused loops below (outside
    autograd). On the CPU PyTorch's sigmoid is several times faster than its tanh (measured on 2 cores: 4.6× at
    (41, 28, 512), 3.5× at (64, 2048)), and the four passes of this form together still take a quarter to a half of
    one tanh. The values agree with `torch.tanh` to 2e-7."""
    return torch.mul(x, 2, out=x if out is None else out).sigmoid_().mul_(2).sub_(1)


def _lstm_gates_(gates: torch.Tensor, size: int) -> torch.Tensor:
    """In place on the pre-activations `(n, 4H)` of the gates [i, f, g, o]: σ, σ, tanh, σ, as one sigmoid over all
    four, g through tanh(x) = 2σ(2x) − 1 (see [`_tanh`])."""
    candidate = gates[:, 2 * size : 3 * size]
    candidate.mul_(2)
    gates.sigmoid_()
    candidate.mul_(2).sub_(1)
    return gates


def _onednn_lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh) -> tuple[torch.Tensor, torch.Tensor]:
    """`torch.lstm_cell(x, (h, c), …)` for inference on the CPU with both products through oneDNN (see [`linear`]):
    2.2 ms against 3.6 ms at batch 64, input 768, hidden 512 on 2 cores. Returns h, c `(B, H)`."""
    gates = _onednn_linear(x, w_ih, b_ih + b_hh)  # (B, 4H)
    gates.add_(_onednn_linear(h, w_hh, None))
    i, f, g, o = _lstm_gates_(gates, h.shape[1]).chunk(4, dim=1)  # σ, σ, tanh, σ
    c = torch.addcmul(f * c, i, g)  # c_t = f ⊙ c_{t-1} + i ⊙ g
    return _tanh(c, out=torch.empty_like(c)).mul_(o), c  # h_t = o ⊙ tanh(c_t)


def fused_product_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype of the fused training loops' matrix products: bfloat16 under CPU autocast to bfloat16, else None
    (the inputs' own dtype). With it the loops keep their states, gates and attention in float32 and round only
    the products' operands to bfloat16 (float32 accumulation, bfloat16 results), where autocast would run a whole
    `nn.LSTM` in bfloat16. On a CPU with AVX-512 BF16 those products run 2.5-3× faster than in float32."""
    if device.type == "cpu" and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16:
        return torch.bfloat16
    return None


def _low(x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """`x` in the product dtype (no copy without one)."""
    return x if dtype is None else x.to(dtype)


def _step_weight(weight: torch.Tensor, low) -> torch.Tensor:
    """The weight `W` `(N, K)` of a fused loop's per-step products x Wᵀ (the `nn.Linear` layout), prepared once
    per loop: in the product dtype `low`, or in float32 contiguous for oneDNN (see [`_product`])."""
    if low is not None:
        return weight.to(low)
    return weight.contiguous() if _onednn_usable(weight, weight) else weight


def _onednn_step(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a per-step product x Wᵀ goes through oneDNN (float32 on the CPU, `weight` from [`_step_weight`])."""
    return _onednn_usable(x, weight) and weight.is_contiguous()


def _product(x: torch.Tensor, weight: torch.Tensor, low) -> torch.Tensor:
    """x Wᵀ, a fused loop's per-step product: `x` `(n, K)` with n ≤ the batch size, `weight` from [`_step_weight`].

    With a product dtype `low` the operands are in it (float32 accumulation). In float32 on the CPU the product
    goes through oneDNN: at these shapes MKL runs well below the machine's matmul speed. Measured on 2 cores of an
    AMD EPYC (Zen 4), over the shrinking rows of one batch (scripts/kernel_benchmark.py): 40 → 27 ms for the
    Bahdanau loop's (n, 512) x (512, 2560), 32 → 22 ms for its backward (n, 2560) x (2560, 512), 28 → 17 ms for
    (n, 512) x (512, 2048), 5.7 → 5.3 ms for the encoder's (n, 256) x (256, 1024). Else MKL.

    oneDNN keeps a compiled primitive per shape, and the rows n shrink through every count from the batch size
    down as sentences end: [`_onednn_linear`] pads them to [`_row_bucket`] sizes, as in decoding. Measured on 300 steps of configs/multi30k_de_en_luong_20min.yaml (2 cores, Zen 5, BENCHMARKS.md §4): peak RSS
    1,491 → 1,429 MB and 1,511 → 1,366 MB in two pairs of runs, the same step time within the noise
    (scripts/ab_training_step.py: 0.96 Luong, 0.94 and 1.07 Bahdanau)."""
    if low is not None:
        return _low(x, low) @ weight.t()
    if _onednn_step(x, weight):
        return _onednn_linear(x.contiguous(), weight, None)
    return x @ weight.t()


def _add_product(base: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, low, out: torch.Tensor) -> torch.Tensor:
    """out = base + x Wᵀ (see [`_product`]); one addmm where the product goes through MKL."""
    if low is None and not _onednn_step(x, weight):
        return torch.addmm(base, x, weight.t(), out=out)
    return torch.add(base, _product(x, weight, low), out=out)


def _first_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """`x[:rows]` for a contiguous `x` as a tensor of its own (resized in place, the storage kept), not a view: a
    custom autograd function's output that is a view of its own intermediate may not be modified in place."""
    return x if x.shape[0] == rows else x.resize_(rows, *x.shape[1:])


def _pad_rows(x: torch.Tensor, multiple: int = 64) -> torch.Tensor:
    """`x` `(N, K)` with zero rows appended up to a multiple of `multiple`."""
    extra = -x.shape[0] % multiple
    return x if extra == 0 else torch.cat([x, x.new_zeros(extra, x.shape[1])])


def _onednn_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x Wᵀ + b `(N, V)` through oneDNN for `x` `(N, K)` with any number of rows N, in products whose rows are
    multiples of 64 (see [`LinearFunction`]: oneDNN keeps a kernel per shape). Where the input is the narrower side
    (K ≤ V, as in the output layer's forward) its rows are padded with zeros and the output resized to N rows;
    else (K > V, as in the output layer's input gradient (N, 8003) x (8003, 512), or W_c's forward) the rows up to
    the last multiple of 64 go as they are and only the rest is padded: the wider of input and output is never
    copied (for the output layer's gradient that was 31 MB a step)."""
    rows = x.shape[0]
    head = rows - rows % 64
    if head == rows:
        return _onednn_product(x, weight, bias)
    if x.shape[1] <= weight.shape[0] or head == 0:
        return _first_rows(_onednn_product(_pad_rows(x), weight, bias), rows)
    tail = _onednn_product(_pad_rows(x[head:]), weight, bias)[: rows - head]  # (N mod 64, V)
    return torch.cat([_onednn_product(x[:head], weight, bias), tail])


def _low_rows(x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """`x` `(N, K)` in the product dtype, its rows padded to a multiple of 64 with one (see [`training_linear`])."""
    return x if dtype is None else _pad_rows(x.to(dtype))


class LinearFunction(torch.autograd.Function):
    """y = x Wᵀ + b for rows x `(N, K)` in float32 training on the CPU, with the usual backward (two products).

    PyTorch's `F.linear` and its backward call MKL, which on the AMD EPYC of BENCHMARKS.md ran this model's
    training products at 87-169 GFLOP/s against oneDNN's 155-206. Here the forward and ∂L/∂x = ∂L/∂y W go through
    oneDNN where the build has it; ∂L/∂W = ∂L/∂yᵀ x stays with MKL (oneDNN read its two transposed operands no
    faster, and copying them costs more than it saves). Forward and backward together, 2 cores
    (scripts/kernel_benchmark.py): 23 → 19 ms for (976, 256) x (256, 2048), 44 → 38 ms for (976, 512) x (512, 2048),
    159 → 140 ms for the output layer's (976, 512) x (512, 8003).

    Both oneDNN products run on rows in multiples of 64 ([`_onednn_rows`]): oneDNN compiles and keeps a kernel for every
    shape it meets, and the number of rows (real tokens in the batch) changes with every batch. Unpadded, the peers'
    one-epoch work peaked at 2.6 GB of RSS in fp32 training (Bahdanau, 2026-12-02 run), 1.55 GB padded.

    Without oneDNN (only the output layer comes here then: see [`output_layer`]) the forward writes into rows
    padded to 64 floats and returns the `(N, V)` view of them: with V not a multiple of 16 (8,003 for an 8,000-piece
    BPE plus three special tokens) MKL writes unaligned output rows, (976, 512) x (512, 8003) in 64-70 ms on 2
    cores against 47-54 ms padded and 39 ms through oneDNN. Differentiable once (the oneDNN op has no gradient)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        if _onednn_fits(x, weight):
            return _onednn_rows(x, weight, bias)  # (N, V)
        vocab = weight.shape[0]
        logits = x.new_empty(x.shape[0], -(-vocab // 64) * 64)[:, :vocab]  # (N, V), row stride a multiple of 64
        if bias is None:
            return torch.mm(x, weight.t(), out=logits)
        return torch.addmm(bias, x, weight.t(), out=logits)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            if _onednn_fits(grad, weight):  # (N, V) x (V, K); Wᵀ as a transposed view
                grad_x = _onednn_rows(grad, weight.t(), None)
            else:
                grad_x = grad @ weight
        if ctx.needs_input_grad[1]:
            grad_weight = grad.t() @ x  # (V, N) x (N, K)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        return grad_x, grad_weight, grad_bias


def training_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for the training paths (with gradients, on the CPU): in float32 through
    [`LinearFunction`] where the build has oneDNN; under CPU autocast to bf16 with the rows of `x` padded to a
    multiple of 64. Otherwise, and without gradients (decoding: see [`linear`]), `F.linear` itself.

    oneDNN, which runs autocast's bf16 products on the CPU, compiles and keeps a kernel for every shape it meets,
    and the number of rows (real tokens in the batch) changes with every batch: 454 batches of the peers' work
    raised bf16 training's peak RSS to 2.8 GB against 1.4 GB in fp32. Padded to multiples of 64 they take a dozen
    shapes (measured on 51 steps: 1.91 → 1.51 GB, the same speed)."""
    if x.dim() < 2 or not torch.is_grad_enabled() or x.device.type != "cpu":
        return F.linear(x, weight, bias)
    flat = x.reshape(-1, x.shape[-1])  # (N, K)
    if fused_product_dtype(x.device) is not None:
        out = F.linear(_pad_rows(flat), weight, bias)[: flat.shape[0]]  # (N, V)
    elif _onednn_usable(flat, weight) and (bias is None or bias.dtype == weight.dtype):
        out = LinearFunction.apply(flat.contiguous(), weight.contiguous(), bias)  # (N, V)
    else:
        return F.linear(x, weight, bias)
    return out.view(*x.shape[:-1], out.shape[-1])


def _lstm_local_derivatives(gates, tanh_cells, previous_c, out) -> tuple[torch.Tensor, torch.Tensor]:
    """The LSTM's local derivatives for all steps at once, before a backward loop (they depend on the forward only):
    into `out` `(N, 4H)` those of the pre-activations of i, f, g, o — g σ'(·), c_{t-1} σ'(·), i (1 − g²) (of c_t)
    and tanh(c_t) σ'(·) (of h_t), with σ' = σ (1 − σ) — and, returned beside it, ∂h_t/∂c_t = o (1 − tanh²(c_t))
    `(N, H)`. `gates` `(N, 4H)`: i, f, g, o after their nonlinearities. [`_lstm_gate_gradients_`] then multiplies
    them by ∂L/∂c_t and ∂L/∂h_t at each step: five tensor operations a step instead of about twenty."""
    i, f, cand, o = gates.chunk(4, dim=1)  # (N, H) each
    torch.addcmul(gates, gates, gates, value=-1, out=out)  # σ − σ² = σ (1 − σ); the g part is replaced below
    local_i, local_f, local_g, local_o = out.chunk(4, dim=1)
    local_i.mul_(cand)
    local_f.mul_(previous_c)
    torch.mul(cand, cand, out=local_g).neg_().add_(1).mul_(i)
    local_o.mul_(tanh_cells)
    return out, torch.mul(tanh_cells, tanh_cells).neg_().add_(1).mul_(o)


def _lstm_gate_gradients_(local: torch.Tensor, grad_c: torch.Tensor, grad_h: torch.Tensor) -> torch.Tensor:
    """In place on one step's local derivatives `(n, 4H)` from [`_lstm_local_derivatives`]: ∂L/∂(pre-activations)
    of i, f, g (× ∂L/∂c_t `(n, H)`) and of o (× ∂L/∂h_t `(n, H)`)."""
    step = local.view(local.shape[0], 4, -1)  # (n, 4, H)
    step[:, :3].mul_(grad_c.unsqueeze(1))
    step[:, 3].mul_(grad_h)
    return local


class PackedLSTMRecurrence(torch.autograd.Function):
    """One direction of one LSTM layer over a packed batch, with a written-out backward.

        i, f, g, o = σ, σ, tanh, σ of (x_t + W_hh h_{t-1});   c_t = f ⊙ c_{t-1} + i ⊙ g;   h_t = o ⊙ tanh(c_t)

    x_t = W_ih input_t + b is computed by the caller for all positions in one product. On the CPU PyTorch runs a
    packed LSTM one time step at a time through autograd: every step records its operations, and its backward
    fills a zero tensor the size of the whole input for each step's slice and adds a full W_hh gradient. Here the
    forward runs unrecorded into packed buffers and the backward gives W_hh's gradient as one product over all
    steps. Rows are sorted longest first (a `PackedSequence`'s layout); the reverse direction starts each row
    at its own last token, as PyTorch's does. With a product dtype `low` (bf16, see [`fused_product_dtype`]) the
    products W_hh h_{t-1} take their operands in it and everything else stays in W_hh's dtype.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)  # under autocast: float32 in, autocast off
    def forward(ctx, input_gates, h0, c0, w_hh, batch_sizes, reverse, low=None):
        """input_gates `(N, 4H)` packed; h0, c0 `(B, H)`; w_hh `(4H, H)`; batch_sizes (list of int, n_0 = B);
        low: the products' dtype or None. Returns the packed states `(N, H)`
        and each row's last state h, c `(B, H)`."""
        w_step = _step_weight(w_hh, low)  # (4H, H)
        size, total = w_hh.shape[1], input_gates.shape[0]
        new = input_gates.new_empty
        states, cells, tanh_cells = new(total, size), new(total, size), new(total, size)
        previous_h, previous_c = new(total, size), new(total, size)  # each step's h_{t-1}, c_{t-1}
        gates = new(total, 4 * size)  # i, f, g, o after their nonlinearities
        h, c = h0.clone(), c0.clone()  # (B, H): rows not yet (reverse) or no longer (forward) running keep theirs
        offsets = _offsets(batch_sizes)
        for t in reversed(range(len(batch_sizes))) if reverse else range(len(batch_sizes)):
            n, rows = batch_sizes[t], slice(offsets[t], offsets[t] + batch_sizes[t])
            previous_h[rows], previous_c[rows] = h[:n], c[:n]
            g = _add_product(input_gates[rows], h[:n], w_step, low, out=gates[rows])  # (n, 4H)
            i, f, cand, o = _lstm_gates_(g, size).chunk(4, dim=1)  # σ, σ, tanh, σ
            c_t = torch.mul(f, previous_c[rows], out=cells[rows]).addcmul_(i, cand)
            h_t = torch.mul(o, _tanh(c_t, out=tanh_cells[rows]), out=states[rows])
            h[:n], c[:n] = h_t, c_t
        ctx.batch_sizes, ctx.reverse, ctx.low = batch_sizes, reverse, low
        ctx.save_for_backward(w_hh, tanh_cells, gates, previous_h, previous_c)
        return states, h, c

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    @once_differentiable
    def backward(ctx, grad_states, grad_h_last, grad_c_last):
        w_hh, tanh_cells, gates, previous_h, previous_c = ctx.saved_tensors
        batch_sizes, size, low = ctx.batch_sizes, w_hh.shape[1], ctx.low
        w_step = _step_weight(w_hh.t(), low)  # (H, 4H)
        batch = batch_sizes[0]
        grad_h = grad_h_last.clone() if grad_h_last is not None else w_hh.new_zeros(batch, size)  # carries (B, H)
        grad_c = grad_c_last.clone() if grad_c_last is not None else w_hh.new_zeros(batch, size)
        grad_gates, through = _lstm_local_derivatives(gates, tanh_cells, previous_c, torch.empty_like(gates))
        f = gates[:, size : 2 * size]  # (N, H)
        offsets = _offsets(batch_sizes)
        for t in range(len(batch_sizes)) if ctx.reverse else reversed(range(len(batch_sizes))):
            n, rows = batch_sizes[t], slice(offsets[t], offsets[t] + batch_sizes[t])
            grad_s = grad_h[:n] if grad_states is None else grad_states[rows] + grad_h[:n]  # ∂L/∂h_t: (n, H)
            grad_m = torch.addcmul(grad_c[:n], grad_s, through[rows])  # ∂L/∂c_t: (n, H)
            _lstm_gate_gradients_(grad_gates[rows], grad_m, grad_s)
            torch.mul(grad_m, f[rows], out=grad_c[:n])  # ∂L/∂c_{t-1}
            grad_h[:n] = _product(grad_gates[rows], w_step, low)  # ∂L/∂h_{t-1}
        grad_w_hh = (_low_rows(grad_gates, low).t() @ _low_rows(previous_h, low)).to(w_hh.dtype)  # (4H, H)
        return grad_gates, grad_h, grad_c, grad_w_hh, None, None, None


def _offsets(batch_sizes: list[int]) -> list[int]:
    """Where each time step's rows start in a packed tensor."""
    offsets = [0]
    for n in batch_sizes[:-1]:
        offsets.append(offsets[-1] + n)
    return offsets


def packed_lstm(lstm: nn.LSTM, packed: PackedSequence, state: tuple[torch.Tensor, torch.Tensor] | None = None):
    """`lstm(packed, state)` through [`PackedLSTMRecurrence`], with the same parameters and the same result
    (dropout between layers included). `state`: (h0, c0), each `(layers · directions, B, H)` in the input order.
    Returns the packed outputs and (h, c) like `nn.LSTM`. Each layer's input projection for both directions
    and all time steps is one product."""
    directions = 2 if lstm.bidirectional else 1
    data, batch_sizes = packed.data, packed.batch_sizes.tolist()
    batch, size = batch_sizes[0], lstm.hidden_size
    if state is None:
        state = (data.new_zeros(lstm.num_layers * directions, batch, size),) * 2
    elif packed.sorted_indices is not None:
        state = tuple(s.index_select(1, packed.sorted_indices) for s in state)
    last_h, last_c, low = [], [], fused_product_dtype(data.device)
    for layer in range(lstm.num_layers):
        suffixes = [f"_l{layer}", f"_l{layer}_reverse"][:directions]
        w_ih = torch.cat([getattr(lstm, "weight_ih" + s) for s in suffixes])  # (D·4H, input)
        bias = torch.cat([getattr(lstm, "bias_ih" + s) + getattr(lstm, "bias_hh" + s) for s in suffixes])
        input_gates = training_linear(data, w_ih, bias).split(4 * size, dim=1)  # D × (N, 4H)
        outputs = []
        for d, suffix in enumerate(suffixes):
            index = layer * directions + d
            states, h, c = PackedLSTMRecurrence.apply(input_gates[d], state[0][index], state[1][index],
                                                      getattr(lstm, "weight_hh" + suffix), batch_sizes, d == 1, low)  # fmt: skip
            outputs.append(states)
            last_h.append(h)
            last_c.append(c)
        data = torch.cat(outputs, dim=1) if directions == 2 else outputs[0]  # (N, D·H)
        if layer + 1 < lstm.num_layers and lstm.dropout > 0:
            data = dropout(data, lstm.dropout, lstm.training)
    final = tuple(torch.stack(s) for s in (last_h, last_c))  # (layers · directions, B, H), sorted order
    if packed.unsorted_indices is not None:
        final = tuple(s.index_select(1, packed.unsorted_indices) for s in final)
    return PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices), final


def runs_padded(lstm: nn.Module, x: torch.Tensor) -> bool:
    """Whether [`padded_lstm`] encodes `x`: inference (no gradients) of a batch-first LSTM in float32 on the CPU,
    through oneDNN."""
    return (
        isinstance(lstm, nn.LSTM)
        and lstm.batch_first
        and not lstm.training
        and not torch.is_grad_enabled()
        and lstm.bias
        and lstm.proj_size == 0
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.enabled
        and torch.backends.mkldnn.is_available()
    )


def padded_lstm(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor):
    """`lstm` over right-padded `x` `(B, S, X)` with each row's padding skipped, as over a packed sequence: the
    outputs `(B, S, D·H)` (0 at padding) and the final `(h, c)`, each `(layers · directions, B, H)`.

    On the CPU PyTorch runs a packed LSTM one time step at a time through MKL, but an unpacked one through
    oneDNN's LSTM, which takes the whole sequence in one call and ran the peers' encoder 1.3-1.6x faster (test_2016
    in 16 batches of 64 sorted by length, 2 cores: 0.85-1.07 s packed, 0.63-0.65 s this way). Padding must then
    leave the states alone: each layer gets one more input, 1 at padding and 0 at tokens, whose weights add -big
    to the input gate and +big to the forget gate, with big above anything the other terms can reach; σ then
    gives exactly 0 and 1 at padding (in float32), so c_t = c_{t-1}. The forward direction ends each row with the
    c of its last token (its h is read from the outputs there), and the reverse direction, which starts at the
    end of the padding, reaches a row's last token with the zero state it would start from. Inference only."""
    batch, total = x.shape[:2]
    directions, size = (2 if lstm.bidirectional else 1), lstm.hidden_size
    padding = (torch.arange(total, device=x.device)[None, :] >= lengths[:, None]).to(x.dtype)  # (B, S) 1 at padding
    last = (lengths - 1).clamp(min=0).view(batch, 1, 1).expand(batch, 1, size)  # each row's last token
    zeros = x.new_zeros(directions, batch, size)
    final_h, final_c = [], []
    for layer in range(lstm.num_layers):
        reach_x = x.abs().amax()  # |input| ≤ reach_x; |h| ≤ 1
        weights = []
        for suffix in [f"_l{layer}", f"_l{layer}_reverse"][:directions]:
            w_ih, w_hh, b_ih, b_hh = (
                getattr(lstm, name + suffix) for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            )
            reach = (w_ih.abs().sum(1) * reach_x + w_hh.abs().sum(1) + (b_ih + b_hh).abs()).amax()  # |pre-activation|
            big = reach + 200.0  # σ(-big + anything reachable) == 0 and σ(big + …) == 1 in float32
            column = torch.zeros(4 * size, 1, dtype=w_ih.dtype, device=w_ih.device)  # gates i, f, g, o
            column[:size], column[size : 2 * size] = -big, big
            weights += [torch.cat([w_ih, column], dim=1), w_hh, b_ih, b_hh]
        inputs = torch.cat([x, padding.unsqueeze(-1)], dim=-1)  # (B, S, X + 1)
        x, h, c = torch.lstm(inputs, (zeros, zeros), weights, True, 1, 0.0, False, lstm.bidirectional, True)
        h = h.clone()
        h[0] = x[..., :size].gather(1, last).squeeze(1)  # forward direction: h at each row's last token
        final_h.append(h)
        final_c.append(c)
        # between layers: inference, so no dropout; the padding's outputs feed nothing (its gates are saturated)
    outputs = x * (1 - padding).unsqueeze(-1)  # (B, S, D·H), 0 at padding
    return outputs, (torch.cat(final_h), torch.cat(final_c))


FUSED_LSTM_MIN_SIZE = 256  # hidden size from which packed_lstm trains faster than PyTorch's packed LSTM (CPU)


def run_packed(rnn: nn.Module, packed: PackedSequence, state=None):
    """`rnn(packed, state)`, through [`packed_lstm`] for an LSTM of hidden size ≥ `FUSED_LSTM_MIN_SIZE` that trains
    on the CPU, in float32 or under autocast to bfloat16 (bf16 products, float32 states: [`fused_product_dtype`]).
    cuDNN, GRUs, inference (where PyTorch's forward is the faster), other autocast dtypes and small layers (the
    built-in demo's 64 units trained faster through PyTorch's own, measured) keep PyTorch's own."""
    data = packed.data
    autocast_fits = not torch.is_autocast_enabled("cpu") or fused_product_dtype(data.device) is not None
    on_cpu = data.device.type == "cpu" and autocast_fits and torch.is_grad_enabled()
    fits = isinstance(rnn, nn.LSTM) and rnn.hidden_size >= FUSED_LSTM_MIN_SIZE and rnn.proj_size == 0 and rnn.bias
    if fits and on_cpu:
        return packed_lstm(rnn, packed, state)
    return rnn(packed, state)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """`F.dropout(x, p, training)`, with a cheaper random mask on the CPU: each element is kept when a random
    32-bit word is ≥ p · 2³² (exact to 2⁻³²), and the kept ones are scaled by 1 / (1 − p).

    PyTorch's CPU dropout draws one Bernoulli sample per element at about 9 ns each on the AMD EPYC of
    BENCHMARKS.md; 64 random bits serve two elements here. (1000, 512), 2 cores: 5.5 → 2.1 ms, and a training step
    of the peers' work has four such calls. The generator is torch's default, so `torch.manual_seed` still fixes
    the masks; on other devices, and for p = 0 or p within 2⁻³³ of 1, `F.dropout` itself."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    threshold = round(p * 2**32)  # words below it (of 2³²) drop their element
    if not training or threshold in (0, 2**32) or x.device.type != "cpu" or x.numel() == 0:
        return F.dropout(x, p, training)
    count = x.numel()
    words = torch.empty((count + 1) // 2, dtype=torch.int64, device=x.device).random_(-(2**63), None)  # 64 bits
    keep = words.view(torch.int32)[:count] >= threshold - 2**31  # (count,) P(keep) = 1 − p
    return x * keep.view(x.shape).to(x.dtype).mul_(1 / (1 - p))


class Dropout(nn.Dropout):
    """`nn.Dropout` through [`dropout`] (the same module otherwise: `p`, train/eval)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.p, self.training, inplace=True) if self.inplace else dropout(x, self.p, self.training)


def pack(x: torch.Tensor, lengths: torch.Tensor) -> tuple[PackedSequence, torch.Tensor]:
    """`pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)` as one gather, and beside it
    the position b·T + t in `x` `(B, T, F)` of every packed row (for [`unpack`]). `lengths` `(B,)`, each ≥ 1.

    PyTorch's pack and pad copy one time step at a time, and autograd records each of `pad_packed_sequence`'s
    copies: its backward clones the whole `(B, T, X)` gradient once per time step. Here packing and unpacking are
    one `index_select` and one `index_copy` each way. Rows are sorted longest first, as PyTorch sorts them."""
    batch, total = x.shape[:2]
    lengths, order = torch.sort(lengths.to(device="cpu", dtype=torch.long), descending=True)
    running = lengths[None, :] > torch.arange(int(lengths[0]))[:, None]  # (T', B): row b still runs at step t
    steps, rows = running.nonzero(as_tuple=True)  # time-major, as a PackedSequence lays its rows out
    positions = (order[rows] * total + steps).to(x.device)  # (N,)
    data = x.reshape(batch * total, -1).index_select(0, positions)  # (N, F)
    return PackedSequence(data, running.sum(dim=1), order.to(x.device), None), positions


def unpack(data: torch.Tensor, positions: torch.Tensor, batch: int, total: int) -> torch.Tensor:
    """Packed rows `(N, X)` back to `(B, T, X)` in the input order, 0 at padding: `pad_packed_sequence` for the
    `positions` that [`pack`] returned."""
    return data.new_zeros(batch * total, data.shape[1]).index_copy(0, positions, data).view(batch, total, -1)


# ─────────────────────────────────────────────── Encoder ───────────────────────────────────────────────


@dataclass
class RNNAttentionEncoderOutput(ModelOutput):
    """
    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(B, S, M)`): the encoder outputs h̄_s = [h_fwd; h_bwd]
            at every source position (zeros at padding); the attention memory.
        final_hidden_state (`torch.FloatTensor` of shape `(B, M)`): the top layer's final hidden states,
            [h_fwd at the last real token; h_bwd at the first token]. Batch-first, so generate() can expand it.
        final_cell_state (`torch.FloatTensor` of shape `(B, M)`, LSTM only): the matching final cell states.
        hidden_states: `(last_hidden_state,)` when `output_hidden_states`.
        attentions: always None (the encoder has no self-attention).
    """

    last_hidden_state: torch.FloatTensor | None = None
    final_hidden_state: torch.FloatTensor | None = None
    final_cell_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class RNNAttentionEncoder(nn.Module):
    """Shared embedding → dropout → packed (bi)directional LSTM/GRU. Padding never enters the recurrence."""

    main_input_name = "input_ids"

    def __init__(self, config: RNNAttentionConfig, embed_tokens: nn.Embedding):
        super().__init__()
        self.config = config
        self.embed_tokens = embed_tokens
        self.dropout = Dropout(config.dropout)
        self.rnn = RNN_CLASSES[config.rnn_type](
            config.embedding_size,
            config.encoder_hidden_size,
            num_layers=config.encoder_layers,
            batch_first=True,
            bidirectional=config.bidirectional,
            dropout=config.dropout if config.encoder_layers > 1 else 0.0,
        )

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> RNNAttentionEncoderOutput | tuple:
        """
        Args:
            input_ids (`(B, S)`): right-padded source token ids.
            attention_mask (`(B, S)`, 1 = token, 0 = padding): inferred from `pad_token_id` when not given.
        """
        _, output_hidden_states, return_dict = _output_flags(self.config, None, output_hidden_states, return_dict)
        if input_ids is None or input_ids.dim() != 2:
            raise ValueError("The encoder needs `input_ids` of shape (batch, source_length).")
        _check_token_ids("input_ids", input_ids, self.config.vocab_size)
        if attention_mask is None:
            attention_mask = input_ids.ne(self.config.pad_token_id)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"`attention_mask` has shape {tuple(attention_mask.shape)} but `input_ids` has {tuple(input_ids.shape)}."
            )
        mask = attention_mask.bool()  # (B, S)
        if bool((mask[:, 1:] & ~mask[:, :-1]).any()):
            raise ValueError(
                "`attention_mask` must be right-padded (each row: ones, then zeros); tokenize with padding_side='right'."
            )
        batch_size, source_len = input_ids.shape
        lengths = mask.sum(dim=1).clamp(min=1)  # (B,); an empty source reads one pad token and stays finite

        embedded = self.dropout(self.embed_tokens(input_ids))  # (B, S, E)
        if runs_padded(self.rnn, embedded):  # inference on the CPU: oneDNN's LSTM over the padded batch
            outputs, final = padded_lstm(self.rnn, embedded, lengths)  # (B, S, M); (layers · directions, B, H_enc)
        else:
            packed, positions = pack(embedded, lengths)
            packed_outputs, final = run_packed(self.rnn, packed)  # final: (layers · directions, B, H_enc)
            outputs = unpack(packed_outputs.data, positions, batch_size, source_len)  # (B, S, M)

        directions = 2 if self.config.bidirectional else 1

        def top_layer(state):  # (layers * directions, B, H_enc) → (B, M)
            state = state.view(self.config.encoder_layers, directions, batch_size, -1)[-1]  # (directions, B, H_enc)
            return state.transpose(0, 1).reshape(batch_size, -1)

        if self.config.rnn_type == "lstm":
            final_hidden, final_cell = top_layer(final[0]), top_layer(final[1])
        else:
            final_hidden, final_cell = top_layer(final), None

        result = RNNAttentionEncoderOutput(
            last_hidden_state=outputs,
            final_hidden_state=final_hidden,
            final_cell_state=final_cell,
            hidden_states=(outputs,) if output_hidden_states else None,
        )
        return result if return_dict else result.to_tuple()


# ─────────────────────────────────────────────── Bridge ────────────────────────────────────────────────


class Bridge(nn.Module):
    """The decoder's initial state s_0 from the encoder: the "context vector" of the classic encoder–decoder.

    `linear`: s_0 = tanh(W_s [h_fwd; h_bwd]) of the top layer's final states (a variant of Bahdanau et al. 2015,
    appendix A.2.2, which uses the backward state alone), and the same for the LSTM cell; `last`: the encoder's final states unchanged; `mean`: the masked mean of the encoder outputs;
    `zeros`: zeros. The same s_0 starts every decoder layer.
    """

    def __init__(self, config: RNNAttentionConfig):
        super().__init__()
        self.kind = config.bridge
        self.is_lstm = config.rnn_type == "lstm"
        self.num_layers = config.decoder_layers
        self.hidden_size = config.decoder_hidden_size
        if self.kind == "linear":
            self.hidden_projection = nn.Linear(config.encoder_output_size, config.decoder_hidden_size)
            self.cell_projection = (
                nn.Linear(config.encoder_output_size, config.decoder_hidden_size) if self.is_lstm else None
            )

    def forward(self, encoder_outputs: RNNAttentionEncoderOutput, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Returns the decoder state: `(h_0,)` for GRU or `(h_0, c_0)` for LSTM, each `(L, B, H)`."""
        final_hidden = encoder_outputs.final_hidden_state  # (B, M)
        final_cell = encoder_outputs.final_cell_state  # (B, M) or None
        if self.kind == "linear":
            hidden = torch.tanh(self.hidden_projection(final_hidden))  # (B, H)
            cell = torch.tanh(self.cell_projection(final_cell)) if self.is_lstm else None
        elif self.kind == "last":
            hidden, cell = final_hidden, final_cell
        elif self.kind == "mean":
            weights = mask.to(final_hidden.dtype).unsqueeze(-1)  # (B, S, 1)
            summed = (encoder_outputs.last_hidden_state * weights).sum(dim=1)  # (B, M)
            hidden = summed / weights.sum(dim=1).clamp(min=1.0)  # (B, H) with H == M
            cell = torch.zeros_like(hidden) if self.is_lstm else None
        else:  # zeros
            hidden = final_hidden.new_zeros(final_hidden.shape[0], self.hidden_size)
            cell = torch.zeros_like(hidden) if self.is_lstm else None
        state = (hidden,) if not self.is_lstm else (hidden, cell)
        return tuple(s.unsqueeze(0).expand(self.num_layers, -1, -1).contiguous() for s in state)  # (L, B, H)


# ─────────────────────────────────────────── Score functions ───────────────────────────────────────────
# Each score compares decoder queries with the encoder outputs. `project_keys` runs once per sentence
# (its result travels in the cache); `forward` runs for every decoding step.


class DotScore(nn.Module):
    """Luong et al. (2015), eq. 8, "dot": score(h_t, h̄_s) = h_tᵀ h̄_s. Needs H == M."""

    def __init__(self, config: RNNAttentionConfig):
        super().__init__()

    def project_keys(self, memory: torch.Tensor) -> torch.Tensor:
        return memory  # (B, S, M)

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return torch.bmm(query, keys.transpose(1, 2))  # (B, T, H) x (B, M, S) → (B, T, S)


class ScaledDotScore(DotScore):
    """Vaswani et al. (2017), eq. 1: score = h_tᵀ h̄_s / √d. The 1/√d is folded into the keys once per sentence."""

    def __init__(self, config: RNNAttentionConfig):
        super().__init__(config)
        self.scale = 1.0 / math.sqrt(config.decoder_hidden_size)

    def project_keys(self, memory: torch.Tensor) -> torch.Tensor:
        return memory * self.scale  # (B, S, M)


class GeneralScore(DotScore):
    """Luong et al. (2015), eq. 8, "general" (multiplicative): score = h_tᵀ W_a h̄_s; W_a h̄_s is the key."""

    def __init__(self, config: RNNAttentionConfig):
        super().__init__(config)
        self.key_projection = nn.Linear(config.encoder_output_size, config.decoder_hidden_size, bias=False)  # W_a

    def project_keys(self, memory: torch.Tensor) -> torch.Tensor:
        return linear(self.key_projection, memory)  # (B, S, H)


class AdditiveScore(nn.Module):
    """Bahdanau et al. (2015), appendix A.1.2 (Luong's "concat"): score = v_aᵀ tanh(W_a s + U_a h̄_s); U_a h̄_s is the key."""

    def __init__(self, config: RNNAttentionConfig):
        super().__init__()
        size = config.decoder_hidden_size
        self.key_projection = nn.Linear(config.encoder_output_size, size, bias=False)  # U_a
        self.query_projection = nn.Linear(config.decoder_hidden_size, size, bias=False)  # W_a
        self.energy = nn.Linear(size, 1, bias=False)  # v_a

    def project_keys(self, memory: torch.Tensor) -> torch.Tensor:
        return linear(self.key_projection, memory)  # (B, S, A)

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        query = linear(self.query_projection, query)  # (B, T, A)
        z = query.unsqueeze(2) + keys.unsqueeze(1)  # (B, T, 1, A) + (B, 1, S, A) → (B, T, S, A)
        # v_aᵀ tanh(z) as 2 v_aᵀ σ(2z) − Σ v_a: the same score, and on the CPU PyTorch's sigmoid is several times
        # faster than its tanh (see `_tanh`)
        return 2 * self.energy(z.mul_(2).sigmoid_()).squeeze(-1) - self.energy.weight.sum()  # (B, T, S)


SCORE_FUNCTIONS = {"dot": DotScore, "scaled_dot": ScaledDotScore, "general": GeneralScore, "additive": AdditiveScore}


# ────────────────────────────────────────────── Attention ──────────────────────────────────────────────


class Memory(NamedTuple):
    """What the decoder attends over; computed once per source sentence (per generate() call)."""

    values: torch.Tensor  # (B, S, M) encoder outputs h̄_s
    keys: torch.Tensor  # (B, S, K) h̄_s as the score function projects it
    mask_bias: torch.Tensor  # (B, 1, S) 0 at tokens, the most negative float32 at padding (added before softmax)


def _pad_source(memory: Memory, source_len: int) -> Memory:
    """`memory` padded along the source to `source_len` positions: values and keys 0, the padding bias at its
    most negative value (weight exactly 0 after the softmax)."""
    extra = source_len - memory.values.shape[1]
    if extra == 0:
        return memory
    values = F.pad(memory.values, (0, 0, 0, extra))  # (B, S', M)
    keys = F.pad(memory.keys, (0, 0, 0, extra))  # (B, S', K)
    bias = F.pad(memory.mask_bias, (0, extra), value=torch.finfo(memory.mask_bias.dtype).min)  # (B, 1, S')
    return Memory(values, keys, bias)


class Attention(nn.Module):
    """a_t = softmax(score(q_t, h̄) + mask), context c_t = Σ_s a_t(s) h̄_s. Works for one step or all T at once."""

    def __init__(self, config: RNNAttentionConfig):
        super().__init__()
        self.score = SCORE_FUNCTIONS[config.attention_type](config)

    def memory(self, encoder_outputs: torch.Tensor, mask: torch.Tensor) -> Memory:
        """Project the keys and build the padding bias once per sentence. `mask`: (B, S) bool."""
        keys = self.score.project_keys(encoder_outputs)  # (B, S, K)
        # at least float32: fp16 scores plus fp16's most negative value would overflow to -inf (NaN for empty rows)
        dtype = torch.promote_types(encoder_outputs.dtype, torch.float32)
        mask_bias = torch.zeros(mask.shape, dtype=dtype, device=encoder_outputs.device)
        mask_bias = mask_bias.masked_fill(~mask, torch.finfo(dtype).min).unsqueeze(1)  # (B, 1, S)
        return Memory(encoder_outputs, keys, mask_bias)

    def forward(self, query: torch.Tensor, memory: Memory) -> tuple[torch.Tensor, torch.Tensor]:
        """query `(B, T, H)` → context `(B, T, M)`, weights `(B, T, S)` (exactly 0 at padding). A memory of B / G
        rows serves G consecutive query rows each (beam search's K beams of a sentence).

        Under CPU autocast the attention runs in float32. Its batched products are a small part of the work
        (0.3 of 53 GFLOP a step of the peers' work), but their shapes change with every batch's (T, S), and
        oneDNN, which runs them in bfloat16, keeps a compiled kernel for every shape it meets. 250 steps of the
        Luong preset's bf16 training on the peers' work peaked at 1,725 MB that way, 1,264 MB in float32 (2 cores,
        AMD EPYC), at the same speed."""
        batch = memory.values.shape[0]
        if query.shape[0] != batch:  # G rows per memory row (beam search's beams share their sentence's memory)
            groups, steps = query.shape[0] // batch, query.shape[1]
            if groups * batch != query.shape[0]:
                raise ValueError(f"{query.shape[0]} query rows for a memory of {batch} rows: not a multiple.")
            # the G beams of a sentence are G more query positions over the same memory: (B·G, T, H) → (B, G·T, H)
            context, weights = self.forward(query.reshape(batch, groups * steps, -1), memory)
            return context.reshape(batch * groups, steps, -1), weights.reshape(batch * groups, steps, -1)
        if query.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return self._attend(query.float(), Memory(*(tensor.float() for tensor in memory)))
        return self._attend(query, memory)

    def _attend(self, query: torch.Tensor, memory: Memory) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.score(query, memory.keys) + memory.mask_bias  # (B, T, S)
        weights = torch.softmax(scores, dim=-1)  # (B, T, S)
        context = torch.bmm(weights.to(memory.values.dtype), memory.values)  # (B, T, S) x (B, S, M) → (B, T, M)
        return context, weights


# ─────────────────────────────── Bahdanau recurrence, fused for training ───────────────────────────────


class FusedBahdanauRecurrence(torch.autograd.Function):
    """The teacher-forced Bahdanau-order loop (additive score, one LSTM layer) with a written-out backward.

    Step t runs the n_t sentences still going (rows sorted longest first, laid out like a `PackedSequence`):

        a_t = softmax(v_aᵀ tanh(W_a s_{t-1} + U_a h̄) + mask)          Bahdanau et al. (2015), A.1.2
        c_t = Σ_s a_t(s) h̄_s                                             the context
        i, f, g, o = σ, σ, tanh, σ of (x_t + W_ic c_t + W_hh s_{t-1})     x_t = W_ie y_{t-1} + b, given
        m_t = f ⊙ m_{t-1} + i ⊙ g;   s_t = o ⊙ tanh(m_t)

    Why it exists: through autograd the same loop records some twenty operations per step and writes full
    weight gradients at every step. Here the forward runs unrecorded into preallocated packed buffers, the
    backward (backpropagation through time) is written out, and the gradients of W_hh, W_a, W_ic, v_a, the
    keys and the values are each one product over all steps. The caller hoists the embedding's share of the
    input projection (x_t) out of the loop. The (n, S, A) tanh of the score goes through the sigmoid,
    v_aᵀ tanh(z) = 2 v_aᵀ σ(2z) − Σ v_a, and the constant − Σ v_a is left out: the softmax does not see it.
    `test_fused_bahdanau_recurrence_equals_step_path` checks the loss and every gradient against the step loop.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)  # under autocast: float32 in, autocast off
    def forward(
        ctx, input_gates, h0, c0, keys, values, mask_bias, w_context, w_hh, w_query, energy, batch_sizes, low=None
    ):
        """
        Args:
            input_gates (`(N, 4H)`): x_t for every real position, packed time-major (N = Σ_t n_t).
            h0, c0 (`(B, H)`): the initial state. keys (`(B, S, A)`), values (`(B, S, M)`), mask_bias (`(B, S)`).
            w_context (`(4H, M)`): W_ic; w_hh (`(4H, H)`); w_query (`(A, H)`): W_a; energy (`(A,)`): v_a.
            batch_sizes (list of int): n_t, non-increasing, n_0 = B. low: the products' dtype, or None.
        Returns:
            packed states s_t (`(N, H)`), contexts c_t (`(N, M)`) and weights a_t (`(N, S)`); each row's
            state after its last step, s and m (`(B, H)` each).
        """
        size, total = w_hh.shape[1], input_gates.shape[0]
        w_recurrent = torch.cat([w_hh, w_query], dim=0)  # (4H + A, H): W_hh s and W_a s in one product
        w_recurrent_step, w_context_step = _step_weight(w_recurrent, low), _step_weight(w_context, low)
        new = input_gates.new_empty
        states, cells, tanh_cells = new(total, size), new(total, size), new(total, size)  # s_t, m_t, tanh(m_t)
        gates = new(total, 4 * size)  # i, f, g, o after their nonlinearities
        contexts, weights = new(total, values.shape[2]), new(total, keys.shape[1])
        hidden = new(total, keys.shape[1], keys.shape[2])  # σ(2 (W_a s_{t-1} + U_a h̄)): (N, S, A)
        keys2, energy2 = keys * 2, energy * 2  # (B, S, A), (A,): tanh(z) = 2σ(2z) − 1
        h_last, c_last = h0.clone(), c0.clone()
        h, c, offset = h0, c0, 0
        for t, n in enumerate(batch_sizes):
            rows = slice(offset, offset + n)
            recurrent = _product(h[:n], w_recurrent_step, low)  # (n, 4H + A)
            sig_t = torch.add(
                keys2[:n], recurrent[:, None, 4 * size :], alpha=2, out=hidden[rows]
            ).sigmoid_()  # (n, S, A)
            scores = torch.matmul(sig_t, energy2).add_(mask_bias[:n])  # v_aᵀ tanh(z) + Σ v_a: (n, S)
            a = weights[rows]  # (n, S)
            a.copy_(torch.softmax(scores, dim=-1))
            context = contexts[rows]  # (n, M)
            torch.bmm(a.unsqueeze(1), values[:n], out=context.unsqueeze(1))  # (n, 1, S) x (n, S, M)
            g = _add_product(input_gates[rows], context, w_context_step, low, out=gates[rows])  # (n, 4H)
            g.add_(recurrent[:, : 4 * size])
            i, f, cand, o = _lstm_gates_(g, size).chunk(4, dim=1)  # σ, σ, tanh, σ: (n, H) each
            c = torch.mul(f, c[:n], out=cells[rows]).addcmul_(i, cand)  # m_t
            h = torch.mul(o, _tanh(c, out=tanh_cells[rows]), out=states[rows])  # s_t
            ending = batch_sizes[t + 1] if t + 1 < len(batch_sizes) else 0  # rows ending..n-1 end here
            h_last[ending:n], c_last[ending:n] = h[ending:], c[ending:]
            offset += n
        ctx.batch_sizes, ctx.low = batch_sizes, low
        ctx.save_for_backward(h0, c0, keys, values, w_context, w_recurrent, energy,
                              states, cells, tanh_cells, gates, contexts, weights, hidden)  # fmt: skip
        return states, contexts, weights, h_last, c_last

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    @once_differentiable
    def backward(ctx, grad_states, grad_contexts, grad_weights, grad_h_last, grad_c_last):
        (h0, c0, keys, values, w_context, w_recurrent, energy,
         states, cells, tanh_cells, gates, contexts, weights, hidden) = ctx.saved_tensors  # fmt: skip
        batch_sizes, low = ctx.batch_sizes, ctx.low
        w_recurrent_step = _step_weight(w_recurrent.t(), low)  # (H, 4H + A)
        w_context_step = _step_weight(w_context.t(), low)  # (M, 4H)
        size, total = h0.shape[1], states.shape[0]

        def zeros_if_none(grad, like):
            return torch.zeros_like(like) if grad is None else grad

        grad_states = zeros_if_none(grad_states, states)
        grad_contexts = zeros_if_none(grad_contexts, contexts)
        # the carries: ∂L/∂s_t and ∂L/∂m_t from the steps after t; a row's last state starts its carry
        grad_h = zeros_if_none(grad_h_last, h0).clone()  # (B, H)
        grad_c = zeros_if_none(grad_c_last, c0).clone()  # (B, H)
        grad_recurrent = states.new_empty(total, w_recurrent.shape[0])  # (N, 4H + A): ∂L/∂gates, ∂L/∂(W_a s)
        grad_context_total = torch.empty_like(contexts)  # (N, M)
        grad_scores = torch.empty_like(weights)  # (N, S)
        grad_keys = torch.zeros_like(keys)  # (B, S, A)
        energy4 = energy * 4  # 1 − tanh²(z) = 4σ(2z)(1 − σ(2z))
        offsets = _offsets(batch_sizes)
        previous_c = torch.cat(  # m_{t-1} of every packed row: (N, H)
            [c0] + [cells[offsets[t - 1] : offsets[t - 1] + n] for t, n in enumerate(batch_sizes) if t]
        )
        grad_gates, through = _lstm_local_derivatives(gates, tanh_cells, previous_c, grad_recurrent[:, : 4 * size])
        f = gates[:, size : 2 * size]  # (N, H)
        for t in reversed(range(len(batch_sizes))):
            n, offset = batch_sizes[t], offsets[t]
            rows = slice(offset, offset + n)
            grad_s = grad_states[rows] + grad_h[:n]  # ∂L/∂s_t: (n, H)
            grad_m = torch.addcmul(grad_c[:n], grad_s, through[rows])  # ∂L/∂m_t: (n, H)
            grad_g = grad_gates[rows]  # (n, 4H) w.r.t. the pre-activations
            _lstm_gate_gradients_(grad_g, grad_m, grad_s)
            torch.mul(grad_m, f[rows], out=grad_c[:n])  # ∂L/∂m_{t-1}
            grad_context = _add_product(grad_contexts[rows], grad_g, w_context_step, low, out=grad_context_total[rows])
            a = weights[rows]  # (n, S)
            grad_a = torch.bmm(values[:n], grad_context.unsqueeze(2)).squeeze(2)  # (n, S, M) x (n, M, 1) → (n, S)
            if grad_weights is not None:
                grad_a = grad_a + grad_weights[rows]
            grad_e = grad_scores[rows]
            torch.mul(a, grad_a - (grad_a * a).sum(dim=1, keepdim=True), out=grad_e)  # softmax backward
            sig_t = hidden[rows]  # σ(2z): (n, S, A)
            grad_pre = torch.addcmul(sig_t, sig_t, sig_t, value=-1)  # σ(1 − σ) = (1 − tanh²(z)) / 4
            grad_pre.mul_(grad_e.unsqueeze(2)).mul_(energy4)  # ∂L/∂z: (n, S, A)
            grad_keys[:n] += grad_pre
            torch.sum(grad_pre, dim=1, out=grad_recurrent[rows, 4 * size :])  # ∂L/∂(W_a s_{t-1}): (n, A)
            grad_h[:n] = _product(grad_recurrent[rows], w_recurrent_step, low)  # ∂L/∂s_{t-1}: (n, H)

        # the weight gradients, each one product over all steps
        previous = torch.cat(
            [h0] + [states[offsets[t - 1] : offsets[t - 1] + n] for t, n in enumerate(batch_sizes) if t]
        )
        grad_w_recurrent = (_low_rows(grad_recurrent, low).t() @ _low_rows(previous, low)).to(h0.dtype)  # (4H + A, H)
        grad_gates = grad_recurrent[:, : 4 * size]  # (N, 4H)
        grad_w_context = (_low_rows(grad_gates, low).t() @ _low_rows(contexts, low)).to(h0.dtype)  # (4H, M)
        # ∂L/∂v_a = Σ ∂L/∂e · tanh(z) = 2 Σ ∂L/∂e · σ(2z) − Σ ∂L/∂e: (1, N·S) x (N·S, A)
        grad_energy = (grad_scores.reshape(1, -1) @ hidden.reshape(-1, hidden.shape[2])).mul_(2).sub_(grad_scores.sum())
        # ∂L/∂h̄_s = Σ_t a_t(s) ∂L/∂c_t, per row: the packed steps of each row, padded, in one batched product
        batch = batch_sizes[0]
        padded = torch.zeros(batch, len(batch_sizes), weights.shape[1] + contexts.shape[1], dtype=states.dtype,
                             device=states.device)  # fmt: skip
        for t, n in enumerate(batch_sizes):
            rows = slice(offsets[t], offsets[t] + n)
            padded[:n, t, : weights.shape[1]] = weights[rows]
            padded[:n, t, weights.shape[1] :] = grad_context_total[rows]
        grad_values = padded[:, :, : weights.shape[1]].transpose(1, 2) @ padded[:, :, weights.shape[1] :]
        return (grad_gates.contiguous(), grad_h, grad_c, grad_keys, grad_values, None, grad_w_context,
                grad_w_recurrent[: 4 * size], grad_w_recurrent[4 * size :], grad_energy.squeeze(0), None, None)  # fmt: skip


# ─────────────────────────────────────────────── Decoder ───────────────────────────────────────────────


class DecoderOutput(NamedTuple):
    attentional: torch.Tensor  # (B, T, H) the vectors the output layer reads (h̃_t; h_t without attention)
    attentions: torch.Tensor | None  # (B, T, S) attention weights, None without attention
    rnn_outputs: torch.Tensor  # (B, T, H) top-layer RNN states
    state: tuple[torch.Tensor, ...]  # (h,) or (h, c), each (L, B, H), after the last step
    input_feed: torch.Tensor | None  # (B, H) the last attentional vector, when input feeding


class RNNAttentionDecoder(nn.Module):
    """Autoregressive LSTM/GRU decoder with attention over the encoder outputs.

    Luong order (`decoder_style="luong"`): h_t = RNN([y_{t-1}; h̃_{t-1} if input feeding], h_{t-1}); attend with
    h_t; attentional vector h̃_t = tanh(W_c [c_t; h_t]) (Luong eq. 5).
    Bahdanau order (`decoder_style="bahdanau"`): attend with s_{t-1}; s_t = RNN([y_{t-1}; c_t], s_{t-1});
    h̃_t = tanh(W_c [c_t; s_t]): Luong's eq. 5 in Bahdanau order, as Joey NMT does (Bahdanau's own output,
    appendix A.2.2, is a maxout over U_o s_{i-1} + V_o E y_{i-1} + C_o c_i).
    Fast path: when no step reads the previous step's attention output (Luong order without input feeding, or
    no attention) the RNN runs over the whole target in one call and attention is one batched product. In
    Bahdanau order with the additive score and one LSTM layer, teacher-forced decoding runs through
    [`FusedBahdanauRecurrence`] (`can_fuse`); `fast_path = False` forces the step loop for both.
    """

    def __init__(self, config: RNNAttentionConfig, embed_tokens: nn.Embedding):
        super().__init__()
        self.embed_tokens = embed_tokens
        self.dropout = Dropout(config.dropout)
        self.is_lstm = config.rnn_type == "lstm"
        self.has_attention = config.attention_type != "none"
        self.bahdanau_order = config.decoder_style == "bahdanau" and self.has_attention
        self.input_feeding = config.input_feeding
        input_size = config.embedding_size
        if self.bahdanau_order:
            input_size += config.encoder_output_size  # [y_{t-1}; c_t]
        if self.input_feeding:
            input_size += config.decoder_hidden_size  # [y_{t-1}; h̃_{t-1}]
        self.rnn = RNN_CLASSES[config.rnn_type](
            input_size,
            config.decoder_hidden_size,
            num_layers=config.decoder_layers,
            batch_first=True,
            dropout=config.dropout if config.decoder_layers > 1 else 0.0,
        )
        if self.has_attention:
            self.attention = Attention(config)
            self.attention_combine = nn.Linear(  # W_c
                config.encoder_output_size + config.decoder_hidden_size, config.decoder_hidden_size, bias=False
            )
        # Set False to force the step-by-step loop where a fast path applies (the parallel one, or the fused
        # Bahdanau recurrence), to check or time it.
        self.fast_path = True

    @property
    def can_run_parallel(self) -> bool:
        """True when teacher-forced steps are independent given the RNN states: the fast path applies."""
        return not (self.bahdanau_order or self.input_feeding)

    def can_fuse(self, embedded: torch.Tensor) -> bool:
        """True when [`FusedBahdanauRecurrence`] runs the teacher-forced loop: Bahdanau order, additive score,
        one LSTM layer, no input feeding, and no autocast other than the CPU's to bfloat16 (bf16 products, float32
        states: [`fused_product_dtype`])."""
        device = embedded.device
        return (
            self.bahdanau_order
            and self.is_lstm
            and self.rnn.num_layers == 1
            and isinstance(self.attention.score, AdditiveScore)
            and not self.input_feeding
            and (not torch.is_autocast_enabled(device.type) or fused_product_dtype(device) is not None)
        )

    def _rnn(self, inputs: torch.Tensor, state: tuple[torch.Tensor, ...]):
        if isinstance(inputs, PackedSequence):
            outputs, state = run_packed(self.rnn, inputs, state if self.is_lstm else state[0])
        elif inputs.shape[1] == 1 and self._decodes_by_cells(inputs):
            return self._cell_step(inputs, state)
        else:
            outputs, state = self.rnn(inputs, state if self.is_lstm else state[0])
        return outputs, (state if self.is_lstm else (state,))

    def _decodes_by_cells(self, inputs: torch.Tensor) -> bool:
        """One inference step on the CPU: [`_cell_step`] instead of `nn.LSTM`/`nn.GRU`."""
        return (
            not self.training
            and not torch.is_grad_enabled()
            and inputs.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu")
            and self.rnn.bias
            and getattr(self.rnn, "proj_size", 0) == 0
        )

    def _cell_step(self, inputs: torch.Tensor, state: tuple[torch.Tensor, ...]):
        """One time step `(B, 1, input)` through an LSTM cell (its products through oneDNN where the build has it:
        [`_onednn_lstm_cell`]) or `torch.gru_cell`, layer by layer (inference: no dropout between layers). The same
        values as `self.rnn`, whose one-step path measured 3.0-5.7 ms against 2.0-2.2 ms for the oneDNN cell (batch
        64, input 768, hidden 512; scripts/kernel_benchmark.py)."""
        x, hidden, cells = inputs[:, 0], [], []  # x: (B, input)
        for layer in range(self.rnn.num_layers):
            weights = [
                getattr(self.rnn, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            ]
            if self.is_lstm and _onednn_fits(x, weights[0]):
                x, c = _onednn_lstm_cell(x, state[0][layer], state[1][layer], *weights)  # (B, H) each
                cells.append(c)
            elif self.is_lstm:
                x, c = torch.lstm_cell(x, (state[0][layer], state[1][layer]), *weights)  # (B, H) each
                cells.append(c)
            else:
                x = torch.gru_cell(x, state[0][layer], *weights)  # (B, H)
            hidden.append(x)
        new_state = (torch.stack(hidden),) + ((torch.stack(cells),) if self.is_lstm else ())  # (L, B, H) each
        return x.unsqueeze(1), new_state

    def _attentional(self, rnn_outputs: torch.Tensor, memory: Memory):
        """h̃ = tanh(W_c [c; h]) for `(B, T, H)` states; the states themselves without attention."""
        if not self.has_attention:
            return rnn_outputs, None
        context, weights = self.attention(rnn_outputs, memory)  # (B, T, M), (B, T, S)
        attentional = torch.tanh(linear(self.attention_combine, torch.cat([context, rnn_outputs], dim=-1)))  # (B, T, H)
        return attentional, weights

    def embed(self, input_ids: torch.LongTensor) -> torch.Tensor:
        return self.dropout(self.embed_tokens(input_ids))  # (B, T, E)

    def step(
        self, embedded: torch.Tensor, memory: Memory, state: tuple, input_feed: torch.Tensor | None
    ) -> DecoderOutput:
        """One decoding step: `embedded` `(B, 1, E)` → a `DecoderOutput` with T = 1."""
        if self.bahdanau_order:
            query = state[0][-1].unsqueeze(1)  # s_{t-1}, top layer: (B, 1, H)
            context, weights = self.attention(query, memory)  # (B, 1, M), (B, 1, S)
            rnn_output, state = self._rnn(torch.cat([embedded, context], dim=-1), state)  # (B, 1, H)
            combined = torch.cat([context, rnn_output], dim=-1)  # (B, 1, M + H)
            attentional = torch.tanh(linear(self.attention_combine, combined))  # (B, 1, H)
        else:
            if self.input_feeding:
                embedded = torch.cat([embedded, input_feed.unsqueeze(1)], dim=-1)  # (B, 1, E + H)
            rnn_output, state = self._rnn(embedded, state)  # (B, 1, H)
            attentional, weights = self._attentional(rnn_output, memory)
        new_feed = attentional.squeeze(1) if self.input_feeding else None  # (B, H)
        return DecoderOutput(attentional, weights, rnn_output, state, new_feed)

    def forward(
        self,
        input_ids: torch.LongTensor,
        memory: Memory,
        state: tuple,
        input_feed: torch.Tensor | None = None,
        lengths: torch.LongTensor | None = None,
    ) -> DecoderOutput:
        """Teacher-forced decoding of `input_ids` `(B, T)` from `state`; the fast path when it applies.

        `lengths` `(B,)`, optional: decode only the first `lengths[b]` (≥ 1) positions of row b. Padding gets
        no RNN step, no attention and no attentional vector (its outputs are 0), and `state` / `input_feed` are
        each row's values after its own last step, as for a packed sequence."""
        embedded = self.embed(input_ids)  # (B, T, E)
        if lengths is not None:
            lengths = lengths.to(device="cpu", dtype=torch.long).clamp(1, embedded.shape[1])  # (B,) one sync
            if bool((lengths == embedded.shape[1]).all()):
                lengths = None  # no padding to skip
        if embedded.shape[1] == 1:  # one position (generate()'s cached step): the step itself, whatever the path
            return self.step(embedded, memory, state, input_feed)
        if self.fast_path and self.can_run_parallel:
            return self._forward_parallel(embedded, memory, state, lengths)
        if self.fast_path and self.can_fuse(embedded):
            return self._forward_fused(embedded, memory, state, lengths)
        if lengths is None:
            return self._forward_steps(embedded, memory, state, input_feed)
        return self._forward_steps_shrinking(embedded, memory, state, input_feed, lengths)

    def _forward_parallel(self, embedded, memory: Memory, state: tuple, lengths) -> DecoderOutput:
        """Fast path: the RNN over all T steps in one call (packed when there is padding), then one batched
        attention."""
        if lengths is None:
            rnn_outputs, state = self._rnn(embedded, state)  # (B, T, H): one cuDNN/MKL call for all steps
            attentional, weights = self._attentional(rnn_outputs, memory)  # one batched attention
            return DecoderOutput(attentional, weights, rnn_outputs, state, None)
        batch, total = embedded.shape[:2]
        packed, positions = pack(embedded, lengths)
        packed_outputs, state = self._rnn(packed, state)  # state: each row's state after its last step
        rnn_outputs = unpack(packed_outputs.data, positions, batch, total)  # (B, T, H), 0 at padding
        if not self.has_attention:
            return DecoderOutput(rnn_outputs, None, rnn_outputs, state, None)
        context, weights = self.attention(rnn_outputs, memory)  # (B, T, M), (B, T, S): batched, cheap
        real_context = context.reshape(batch * total, -1).index_select(0, positions)  # (N, M)
        # the attentional vector (a (M + H) x H product) only for the N real positions: none for padding
        combined = torch.cat([real_context, packed_outputs.data], dim=-1)  # (N, M + H)
        attentional = torch.tanh(linear(self.attention_combine, combined))  # (N, H)
        weights = unpack(weights.reshape(batch * total, -1).index_select(0, positions), positions, batch, total)
        return DecoderOutput(unpack(attentional, positions, batch, total), weights, rnn_outputs, state, None)

    def _forward_fused(self, embedded, memory: Memory, state: tuple, lengths) -> DecoderOutput:
        """Bahdanau order through [`FusedBahdanauRecurrence`]: x_t = W_ie y_{t-1} + b for every real position in
        one product, the recurrence, then h̃_t = tanh(W_c [c_t; s_t]) for every position in one product."""
        batch, total, embedding_size = embedded.shape
        if lengths is None:
            lengths = torch.full((batch,), total, dtype=torch.long)
        packed, positions = pack(embedded, lengths)  # longest first
        order, rnn, score = packed.sorted_indices, self.rnn, self.attention.score
        input_gates = training_linear(
            packed.data, rnn.weight_ih_l0[:, :embedding_size], rnn.bias_ih_l0 + rnn.bias_hh_l0
        )
        states, contexts, weights, h_last, c_last = FusedBahdanauRecurrence.apply(
            input_gates,  # (N, 4H)
            state[0][0].index_select(0, order),  # s_0: (B, H)
            state[1][0].index_select(0, order),  # m_0: (B, H)
            memory.keys.index_select(0, order),  # (B, S, A)
            memory.values.index_select(0, order),  # (B, S, M)
            memory.mask_bias[:, 0].index_select(0, order),  # (B, S)
            rnn.weight_ih_l0[:, embedding_size:],  # W_ic: (4H, M)
            rnn.weight_hh_l0,  # (4H, H)
            score.query_projection.weight,  # W_a: (A, H)
            score.energy.weight[0],  # v_a: (A,)
            packed.batch_sizes.tolist(),
            fused_product_dtype(embedded.device),  # bf16 products under CPU autocast, else None
        )
        combine = self.attention_combine
        combined = torch.cat([contexts, states], dim=-1)  # (N, M + H)
        if _hooked(combine):
            attentional = torch.tanh(combine(combined))  # (N, H)
        else:
            attentional = torch.tanh(training_linear(combined, combine.weight, combine.bias))  # (N, H)

        final = tuple(s.index_select(0, packed.unsorted_indices).unsqueeze(0) for s in (h_last, c_last))  # (1, B, H)
        attentional, weights, states = (unpack(x, positions, batch, total) for x in (attentional, weights, states))
        return DecoderOutput(attentional, weights, states, final, None)

    def _forward_steps(self, embedded, memory: Memory, state: tuple, input_feed) -> DecoderOutput:
        """Step by step over all T positions (the reference path; generate() feeds one position at a time)."""
        steps = []
        for t in range(embedded.shape[1]):
            steps.append(self.step(embedded[:, t : t + 1], memory, state, input_feed))
            state, input_feed = steps[-1].state, steps[-1].input_feed
        return DecoderOutput(
            attentional=torch.cat([s.attentional for s in steps], dim=1),  # (B, T, H)
            attentions=torch.cat([s.attentions for s in steps], dim=1) if self.has_attention else None,  # (B, T, S)
            rnn_outputs=torch.cat([s.rnn_outputs for s in steps], dim=1),  # (B, T, H)
            state=state,
            input_feed=input_feed,
        )

    def _forward_steps_shrinking(self, embedded, memory: Memory, state: tuple, input_feed, lengths) -> DecoderOutput:
        """Step by step with no step for padding: rows sorted by length, step t runs only the n_t rows still
        going (the batch shrinks as sentences end), and the outputs are laid out like a `PackedSequence`."""
        order = torch.argsort(lengths, descending=True, stable=True)  # (B,) longest first
        unorder = torch.empty_like(order)
        unorder[order] = torch.arange(order.numel())
        batch_sizes = torch.bincount(lengths - 1, minlength=int(lengths.max())).flip(0).cumsum(0).flip(0)  # (T',)
        device_order = order.to(embedded.device)
        embedded = embedded.index_select(0, device_order)  # (B, T, E) longest first
        memory = Memory(*(tensor.index_select(0, device_order) for tensor in memory))
        state = tuple(s.index_select(1, device_order) for s in state)
        feed = input_feed.index_select(0, device_order) if input_feed is not None else None
        steps, ended, active = [], [], embedded.shape[0]  # ended: (state, feed) of rows that have finished
        for t, n in enumerate(batch_sizes.tolist()):
            if n < active:  # rows n … active-1 ended at the previous step: keep their final state, drop them
                ended.append((tuple(s[:, n:active] for s in state), feed[n:active] if feed is not None else None))
                state = tuple(s[:, :n].contiguous() for s in state)
                feed = feed[:n] if feed is not None else None
                memory = Memory(*(tensor[:n] for tensor in memory))
                active = n
            steps.append(self.step(embedded[:n, t : t + 1], memory, state, feed))
            state, feed = steps[-1].state, steps[-1].input_feed
        ended.append((state, feed))
        ended.reverse()  # longest rows first, as sorted
        final_state = tuple(torch.cat([e[0][i] for e in ended], dim=1).index_select(1, unorder.to(s.device))
                            for i, s in enumerate(state))  # fmt: skip
        if feed is not None:
            feed = torch.cat([e[1] for e in ended], dim=0).index_select(0, unorder.to(feed.device))

        def unpack(name):  # per-step (n_t, 1, X) → (B, T, X) in the input order, 0 at padding
            data = torch.cat([getattr(step, name).squeeze(1) for step in steps], dim=0)  # (N, X) time-major
            packed = PackedSequence(data, batch_sizes, device_order, unorder.to(data.device))
            return pad_packed_sequence(packed, batch_first=True, total_length=embedded.shape[1])[0]

        return DecoderOutput(
            attentional=unpack("attentional"),  # (B, T, H)
            attentions=unpack("attentions") if self.has_attention else None,  # (B, T, S)
            rnn_outputs=unpack("rnn_outputs"),  # (B, T, H)
            state=final_state,
            input_feed=feed,
        )


# ──────────────────────────────────────────────── Cache ────────────────────────────────────────────────


class RNNAttentionCache:
    """Incremental-decoding state for generate(): the decoder RNN state and input feed, which every step
    changes, and the memory (encoder outputs, projected keys, padding bias), computed once per sentence.

    Beam search only moves hypotheses between the beams of one sentence, and every beam of a sentence holds
    the same memory, so `reorder_cache` reorders the state and input feed and leaves the memory in place.
    """

    is_compileable = False
    is_croppable = False

    def __init__(self, memory: Memory, state: tuple[torch.Tensor, ...], input_feed: torch.Tensor | None = None):
        self.memory = memory
        self.state = state  # (h,) or (h, c), each (L, B, H)
        self.input_feed = input_feed  # (B, H) or None
        self.seq_length = 0  # decoder tokens consumed so far
        self.finished: torch.Tensor | None = None  # (B,) bool: the sentences that have been fed their EOS
        self._running: tuple[torch.Tensor, Memory] | None = None  # rows still decoding and their memory
        self._buffers: Memory | None = None  # continuous batching's memory buffers ([`reserve_rows`])
        self._rows = 0  # the rows of `_buffers` in use

    def running_rows(self, tokens: torch.LongTensor, eos_token_id: int) -> torch.Tensor:
        """`(B,)` True for the sentences still running at a step whose inputs are `tokens` `(B,)`: a sentence
        finishes when its EOS comes back as its input, and stays finished whatever it is fed after (generate()
        feeds padding). Padding fed to a sentence that has not ended is a real input: a model may predict it."""
        finished = tokens.eq(eos_token_id)  # (B,)
        if self.finished is not None and self.finished.shape == finished.shape:
            finished |= self.finished
        self.finished = finished
        return ~finished

    def running_memory(self, rows: torch.LongTensor) -> Memory:
        """The memory of the sentences in `rows` (those still being decoded), kept until the rows change."""
        if self._running is None or not torch.equal(self._running[0], rows):
            memory_rows = rows // self.memory_groups  # one memory row per sentence, `memory_groups` state rows each
            self._running = (rows, Memory(*(tensor.index_select(0, memory_rows) for tensor in self.memory)))
        return self._running[1]

    @property
    def memory_groups(self) -> int:
        """State rows per memory row: 1, or K when the K beams of each sentence share its memory ([`repeat_state`])."""
        return self.state[0].shape[1] // max(1, self.memory.values.shape[0])

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seq_length

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """In place: row i of the new state is row `beam_idx[i]` of the old one (within one sentence's beams)."""
        self.state = tuple(s.index_select(1, beam_idx.to(s.device)) for s in self.state)
        if self.input_feed is not None:
            self.input_feed = self.input_feed.index_select(0, beam_idx.to(self.input_feed.device))
        if self.finished is not None:
            self.finished = self.finished.index_select(0, beam_idx.to(self.finished.device))
        self._running = None

    def keep_sentences(self, sentences: torch.LongTensor, beams: int) -> None:
        """In place: keep only the sentences `sentences` `(A',)` of a beam search with `beams` consecutive state rows
        per sentence, as it drops the sentences it has finished. A memory shared by the beams ([`repeat_state`])
        keeps one row per sentence."""
        rows = (sentences[:, None] * beams + torch.arange(beams, device=sentences.device)).view(-1)  # (A'·K,)
        memory_rows = sentences if self.memory_groups == beams else rows
        self.memory = Memory(*(tensor.index_select(0, memory_rows) for tensor in self.memory))
        self.reorder_cache(rows)

    def repeat_state(self, copies: int) -> None:
        """In place: each row's state and input feed `copies` times in a row, as beam search gives a sentence K
        beams; the memory stays one row per sentence, which its K beams share (attention reads it once for all
        K: [`Attention.forward`]). At 64 sentences × 5 beams, 20 source tokens (2 cores): attention 4.3 → 3.1 ms a
        step, and dropping a finished sentence's memory 1.0 → 0.1 ms."""
        rows = torch.arange(self.state[0].shape[1], device=self.state[0].device).repeat_interleave(copies)
        self.reorder_cache(rows)

    def slice_rows(self, start: int, stop: int) -> "RNNAttentionCache":
        """A new cache of the rows `start` … `stop - 1` (views: memory, state and input feed are not copied)."""
        memory = Memory(*(tensor[start:stop] for tensor in self.memory))
        feed = self.input_feed[start:stop] if self.input_feed is not None else None
        return RNNAttentionCache(memory, tuple(s[:, start:stop] for s in self.state), feed)

    # Continuous batching ([`RNNAttentionForConditionalGeneration.generate_continuous`]) keeps a pool of running
    # sentences: new ones join it as others end. Its memory lives in buffers of `capacity` rows, of which the first
    # `rows` are in use, each valid (padded) over the buffers' whole source length; `self.memory` is the view of
    # the rows in use up to the longest source among them. Admitting copies only the new rows' memory, dropping
    # only the rows that move into the places of those that ended. Copying the whole memory whenever sentences
    # ended or joined had cost more: `index_select`, `cat` and `copy_` took 191 ms of the 2.0 s of operator time of
    # test_2016's greedy decoding (Bahdanau preset of the peers' work, 2 cores), 134 ms with `index_copy_` this way,
    # and the translate command's peak RSS fell from 523-535 to 507-520 MB.

    def reserve_rows(self, capacity: int) -> None:
        """In place: the memory moves into buffers of at least `capacity` rows, for `append_rows`/`drop_rows`."""
        if self.memory_groups != 1:
            raise ValueError("reserve_rows() needs one memory row per state row (not beams sharing their memory).")
        rows = self.memory.values.shape[0]
        self._buffers = Memory(*(tensor.new_empty((max(capacity, rows), *tensor.shape[1:])) for tensor in self.memory))
        for buffer, tensor in zip(self._buffers, self.memory, strict=True):
            buffer[:rows] = tensor
        self._rows = rows
        self._view(self.memory.values.shape[1])

    def _reserved(self) -> Memory:
        if self._buffers is None:
            raise ValueError("The pool's row operations need the memory in buffers: call reserve_rows() first.")
        return self._buffers

    def _view(self, source_len: int) -> None:
        values, keys, bias = self._reserved()
        rows = self._rows
        self.memory = Memory(values[:rows, :source_len], keys[:rows, :source_len], bias[:rows, :, :source_len])
        self.finished, self._running = None, None

    def append_rows(self, other: "RNNAttentionCache") -> None:
        """In place: `other`'s rows after this cache's own (reserved: [`reserve_rows`]), as continuous batching
        admits new sentences. Only their memory is copied, padded along the source to the buffers' length with
        zeros and the padding bias that gives those positions weight 0 (the buffers grow when `other` is longer or
        there is no room)."""
        count, source_len = other.memory.values.shape[:2]
        rows, capacity, buffer_len = self._rows, *self._reserved().values.shape[:2]
        if rows + count > capacity or source_len > buffer_len:  # grow: every row in use moves to the new buffers
            used = _pad_source(Memory(*(buffer[:rows] for buffer in self._buffers)), max(source_len, buffer_len))
            self._buffers = Memory(*(tensor.new_empty((max(capacity, rows + count), *tensor.shape[1:]))
                                     for tensor in used))  # fmt: skip
            for buffer, tensor in zip(self._buffers, used, strict=True):
                buffer[:rows] = tensor
        admitted = _pad_source(other.memory, self._buffers.values.shape[1])
        for buffer, tensor in zip(self._buffers, admitted, strict=True):
            buffer[rows : rows + count] = tensor
        self.state = tuple(
            torch.cat(pair, dim=1) for pair in zip(self.state, other.state, strict=True)
        )  # (L, A + n, H)
        if self.input_feed is not None:
            self.input_feed = torch.cat([self.input_feed, other.input_feed])  # (A + n, H)
        self._rows = rows + count
        self._view(max(self.memory.values.shape[1], source_len))

    def drop_rows(self, stopped: torch.Tensor) -> torch.Tensor:
        """In place: drop the rows where `stopped` `(A,)` is True. The running rows beyond the A' that stay move into
        the places of the stopped rows within them (only their memory is copied); returns `order` `(A',)`, the old
        row of each new row, for the caller's own per-row tensors."""
        buffers = self._reserved()
        running = ~stopped  # (A,)
        kept = int(running.sum())
        holes = stopped[:kept].nonzero().squeeze(1)  # (k,) stopped rows inside the kept range
        movers = running[kept:].nonzero().squeeze(1) + kept  # (k,) running rows beyond it
        order = torch.arange(kept, device=stopped.device)
        order[holes] = movers
        if holes.numel():
            for buffer in buffers:
                buffer.index_copy_(0, holes, buffer.index_select(0, movers))
        self.state = tuple(s.index_select(1, order) for s in self.state)
        if self.input_feed is not None:
            self.input_feed = self.input_feed.index_select(0, order)
        self._rows = kept
        self._view(self.memory.values.shape[1])
        return order

    def trim_source(self, source_len: int) -> None:
        """In place: the memory as a view of the reserved buffers' first `source_len` source positions (at most the
        buffers' length), once the rows in use have no token beyond them. Every row is padded over the buffers'
        whole length, so a longer view is valid too."""
        self._view(min(source_len, self._reserved().values.shape[1]))

    def __repr__(self) -> str:
        batch, source_len = self.memory.values.shape[:2]
        return f"RNNAttentionCache(batch={batch}, source_len={source_len}, seq_length={self.seq_length})"


# ───────────────────────────────────────────── Output layer ────────────────────────────────────────────


def output_layer(head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """`head(hidden)` `(…, V)`: through [`linear`] in decoding, through [`LinearFunction`] when training on the
    CPU in float32 (the result may then be a view with padded rows), through [`training_linear`] under CPU
    autocast to bf16; otherwise through [`linear`] (`head(hidden)` for anything but a plain `nn.Linear`)."""
    plain = not _plain_linear(head) or hidden.device.type != "cpu"
    if not plain and torch.is_grad_enabled() and fused_product_dtype(hidden.device) is not None:
        return training_linear(hidden, head.weight, head.bias)  # rows padded: see there
    if not torch.is_grad_enabled() or plain or hidden.dtype != head.weight.dtype or torch.is_autocast_enabled("cpu"):
        return linear(head, hidden)
    logits = LinearFunction.apply(hidden.reshape(-1, hidden.shape[-1]), head.weight, head.bias)  # (N, V)
    return logits.view(*hidden.shape[:-1], logits.shape[-1])


# ──────────────────────────────────────────────── Models ───────────────────────────────────────────────


class RNNAttentionPreTrainedModel(PreTrainedModel):
    config_class = RNNAttentionConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _no_split_modules = ["RNNAttentionEncoder", "RNNAttentionDecoder"]

    def _init_weights(self, module: nn.Module) -> None:
        """Uniform(-init_std, init_std) for every weight (Sutskever et al. 2014; Joey NMT's default), zero
        biases, zero padding embedding, LSTM forget-gate biases 1 (Jozefowicz et al. 2015)."""
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            init.uniform_(module.weight, -std, std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.uniform_(module.weight, -std, std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, (nn.LSTM, nn.GRU)):
            for name, param in module.named_parameters():
                if name.startswith("weight"):
                    init.uniform_(param, -std, std)
                elif name.startswith("bias"):
                    already_loaded = getattr(param, "_is_hf_initialized", False)
                    init.zeros_(param)
                    if isinstance(module, nn.LSTM) and name.startswith("bias_ih") and not already_loaded:
                        with torch.no_grad():  # gates are ordered input, forget, cell, output
                            param[module.hidden_size : 2 * module.hidden_size].fill_(1.0)


class RNNAttentionModel(RNNAttentionPreTrainedModel):
    """Encoder, bridge and attention decoder; returns the attentional vectors as `last_hidden_state`."""

    # One vocabulary, one embedding table: the encoder and the decoder always read `shared`.
    _tied_weights_keys = {
        "encoder.embed_tokens.weight": "shared.weight",
        "decoder.embed_tokens.weight": "shared.weight",
    }

    def __init__(self, config: RNNAttentionConfig):
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.embedding_size, padding_idx=config.pad_token_id)
        self.encoder = RNNAttentionEncoder(config, self.shared)
        self.bridge = Bridge(config)
        self.decoder = RNNAttentionDecoder(config, self.shared)
        self.post_init()

    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict:
        # transformers 5 ties nothing when tie_word_embeddings=False; here that flag only unties the output
        # layer, and the encoder and decoder still share the one embedding table.
        keys = super().get_expanded_tied_weights_keys(all_submodels=all_submodels)
        if not all_submodels:
            keys.update(self._tied_weights_keys)
        return keys

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.shared = value
        self.encoder.embed_tokens = value
        self.decoder.embed_tokens = value

    def start_decoding(
        self, encoder_outputs: RNNAttentionEncoderOutput, attention_mask: torch.Tensor | None
    ) -> RNNAttentionCache:
        """Everything computed once per source sentence: memory (keys, padding bias), bridge state, input feed."""
        values = encoder_outputs.last_hidden_state  # (B, S, M)
        if attention_mask is None:
            mask = torch.ones(values.shape[:2], dtype=torch.bool, device=values.device)
        else:
            mask = attention_mask.to(values.device).bool()  # (B, S)
        if self.decoder.has_attention:
            memory = self.decoder.attention.memory(values, mask)
        else:
            memory = Memory(values, values, values.new_zeros(values.shape[0], 1, values.shape[1]))
        if self.config.bridge in ("linear", "last") and encoder_outputs.final_hidden_state is None:
            raise ValueError(
                f"bridge={self.config.bridge!r} starts the decoder from the encoder's final states, but "
                "`encoder_outputs` has no `final_hidden_state`: pass the output of `model.get_encoder()`."
            )
        state = self.bridge(encoder_outputs, mask)  # (L, B, H) each
        input_feed = (
            values.new_zeros(values.shape[0], self.config.decoder_hidden_size) if self.config.input_feeding else None
        )
        return RNNAttentionCache(memory, state, input_feed)

    def encode(self, input_ids, attention_mask, encoder_outputs, output_hidden_states=None):
        """Run the encoder unless `encoder_outputs` were given (generate() passes them; a tuple is accepted)."""
        if encoder_outputs is None:
            if input_ids is None:
                raise ValueError("Pass `input_ids` (or precomputed `encoder_outputs`).")
            return self.encoder(input_ids, attention_mask, output_hidden_states=output_hidden_states, return_dict=True)
        if isinstance(encoder_outputs, RNNAttentionEncoderOutput):
            return encoder_outputs
        if isinstance(encoder_outputs, ModelOutput):
            return RNNAttentionEncoderOutput(**encoder_outputs)
        # a tuple, as `return_dict=False` gives it: (outputs, final hidden[, final cell][, hidden states])
        names = ["last_hidden_state", "final_hidden_state"]
        names += ["final_cell_state"] if self.config.rnn_type == "lstm" else []
        if len(encoder_outputs) < len(names):
            raise ValueError(
                f"`encoder_outputs` as a tuple must hold {tuple(names)} (the encoder's return_dict=False output); "
                f"got {len(encoder_outputs)} element(s). The bridge needs the encoder's final states."
            )
        values = dict(zip(names, encoder_outputs, strict=False))
        if len(encoder_outputs) > len(names):
            values["hidden_states"] = encoder_outputs[len(names)]
        return RNNAttentionEncoderOutput(**values)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: RNNAttentionEncoderOutput | tuple | None = None,
        cache: RNNAttentionCache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: RNNAttentionCache | None = None,
        **kwargs,
    ) -> Seq2SeqModelOutput | tuple:
        """
        Args:
            input_ids (`(B, S)`), attention_mask (`(B, S)`): the right-padded source.
            decoder_input_ids (`(B, T)`): decoder inputs, starting with `decoder_start_token_id`; with
                `cache`, only the new tokens.
            decoder_attention_mask (`(B, T)`): right-padded; the decoder does not run over padding (no step, no
                attention: outputs 0 there) and the returned state is each row's state after its last token.
            cache ([`RNNAttentionCache`]): the state after the tokens already decoded; updated in place.
            past_key_values: the same, under its name before transformers 5.24.
        Returns:
            `Seq2SeqModelOutput` with `last_hidden_state` `(B, T, H)` (the attentional vectors),
            `cross_attentions` = `((B, T, S),)` when `output_attentions`, and the cache when `use_cache`.
        """
        _check_kwargs(kwargs)
        output_attentions, output_hidden_states, return_dict = _output_flags(
            self.config, output_attentions, output_hidden_states, return_dict
        )
        if decoder_input_ids is None:
            raise ValueError("Pass `decoder_input_ids` (or `labels` to the ForConditionalGeneration model).")
        if attention_mask is None and input_ids is not None:
            attention_mask = input_ids.ne(self.config.pad_token_id)
        cache = _one_cache(cache, past_key_values)
        if cache is None:
            encoder_outputs = self.encode(input_ids, attention_mask, encoder_outputs, output_hidden_states)
            cache = self.start_decoding(encoder_outputs, attention_mask)
        else:  # the memory travels in the cache: never re-run the encoder for a step
            encoder_outputs = self.encode(None, None, encoder_outputs) if encoder_outputs is not None else None

        lengths = _decoder_lengths(decoder_attention_mask, decoder_input_ids.shape[1])  # (B,) or None
        decoded = self.decoder(decoder_input_ids, cache.memory, cache.state, cache.input_feed, lengths)
        if use_cache:
            cache.state, cache.input_feed = decoded.state, decoded.input_feed
            cache.seq_length += decoder_input_ids.shape[1]

        result = Seq2SeqModelOutput(
            last_hidden_state=decoded.attentional,
            **{CACHE_FIELD: cache if use_cache else None},
            decoder_hidden_states=(decoded.rnn_outputs,) if output_hidden_states else None,
            cross_attentions=(decoded.attentions,) if output_attentions and decoded.attentions is not None else None,
            encoder_last_hidden_state=cache.memory.values,
            encoder_hidden_states=encoder_outputs.hidden_states if output_hidden_states and encoder_outputs else None,
        )
        return result if return_dict else result.to_tuple()


class RNNAttentionForConditionalGeneration(RNNAttentionPreTrainedModel, GenerationMixin):
    """[`RNNAttentionModel`] with the output layer, the loss, teacher forcing / scheduled sampling and generate().

    Output layer: logits = W_o · dropout(h̃_t) + b. With `tie_word_embeddings`, W_o is the shared embedding and
    h̃_t is first projected from the decoder size H to the embedding size E (Press & Wolf 2017).
    """

    _tied_weights_keys = {"lm_head.weight": "model.shared.weight"}
    _is_stateful = True  # the cache is an RNN state: no assisted decoding, no cache cropping
    accepts_loss_kwargs = False  # the loss is a mean over real target tokens; no `num_items_in_batch`

    def __init__(self, config: RNNAttentionConfig):
        super().__init__(config)
        self.model = RNNAttentionModel(config)
        self.dropout = Dropout(config.dropout)
        tied_projection = config.tie_word_embeddings and config.decoder_hidden_size != config.embedding_size
        self.output_projection = (
            nn.Linear(config.decoder_hidden_size, config.embedding_size, bias=False) if tied_projection else None
        )
        lm_input = config.embedding_size if config.tie_word_embeddings else config.decoder_hidden_size
        self.lm_head = nn.Linear(lm_input, config.vocab_size)
        # Scheduled sampling: a plain attribute so that a callback can anneal it during training.
        self.teacher_forcing_ratio = config.teacher_forcing_ratio
        self.post_init()
        if self.generation_config is not None:
            # generate()'s default length (decoder start token included), in generation_config where a saved
            # generation_config.json overrides it. A length, not max_new_tokens: then a caller's max_length and
            # max_new_tokens both take effect (a default max_new_tokens would silently win over a caller's max_length).
            self.generation_config.max_length = 128

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus the text-to-text pipeline: `config.custom_pipelines` names it for
        "translation", "text2text-generation" and "summarization" and its file is saved beside the modeling code,
        so `pipeline("translation", model=folder, trust_remote_code=True)` works without this package."""
        import shutil
        from pathlib import Path

        from .pipeline_rnn_attention import custom_pipelines_entry

        self.config.custom_pipelines = custom_pipelines_entry()
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            shutil.copy(Path(__file__).with_name("pipeline_rnn_attention.py"), Path(save_directory))

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # generate() must not build a DynamicCache: the model returns its own RNNAttentionCache

    def get_encoder(self, *args, **kwargs):
        return self.model.encoder

    def get_decoder(self):
        return self.model.decoder

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.shared

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def compute_logits(self, attentional: torch.Tensor, contiguous: bool = True) -> torch.Tensor:
        """The output layer: `(…, H)` attentional vectors → `(…, V)` logits. `contiguous=False` may return a view
        with padded rows (see [`LinearFunction`]), for callers that only read it."""
        hidden = self.dropout(attentional)
        if self.output_projection is not None:
            hidden = linear(self.output_projection, hidden)  # (…, E)
        logits = output_layer(self.lm_head, hidden)  # (…, V)
        return logits.contiguous() if contiguous else logits

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: RNNAttentionEncoderOutput | tuple | None = None,
        cache: RNNAttentionCache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        return_logits: bool = True,
        past_key_values: RNNAttentionCache | None = None,
        **kwargs,
    ) -> Seq2SeqLMOutput | tuple:
        """
        Args:
            labels (`(B, T)`): target ids; -100 marks positions the loss ignores. Without `decoder_input_ids`
                the decoder reads the labels shifted right behind `decoder_start_token_id` (teacher forcing).
                Padding costs nothing: the decoder stops after each row's last labelled position (unless a
                `decoder_attention_mask` says otherwise) and the output layer runs only where there is a label.
            decoder_attention_mask (`(B, T)`): right-padded; see [`RNNAttentionModel.forward`].
            return_logits (`bool`, default True): with `labels`, False returns `logits=None` and computes the loss
                from the labelled rows alone. The (B, T, V) tensor is mostly zeros at padding, yet allocating it
                costs about a tenth of a CPU training step; [`RNNAttentionTrainer`] passes False when it trains.
        Returns:
            `Seq2SeqLMOutput`: `loss` (mean (label-smoothed, `config.label_smoothing`) cross-entropy over the
            labelled positions), `logits` `(B, T, V)` (with `labels`: 0 where the label is -100, as nothing reads
            them), `cross_attentions` `((B, T, S),)` when `output_attentions`, the cache when `use_cache`.
            One cached step (`cache`, T = 1) decodes only the sentences still running: a row that has been
            fed its EOS (and the padding generate() feeds after it) keeps its state and gets logits 0.
        """
        _check_kwargs(kwargs)
        output_attentions, output_hidden_states, return_dict = _output_flags(
            self.config, output_attentions, output_hidden_states, return_dict
        )
        past_key_values = _one_cache(cache, past_key_values)  # (named so below: `cache` is generate()'s word)
        if labels is not None:
            _check_token_ids("labels", labels.masked_fill(labels == -100, 0), self.config.vocab_size)
            if decoder_input_ids is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
            if labels.shape != decoder_input_ids.shape:
                raise ValueError(
                    f"`labels` {tuple(labels.shape)} do not match the decoder inputs {tuple(decoder_input_ids.shape)}."
                )
            if decoder_attention_mask is None and past_key_values is None:  # decode no further than the labels
                positions = torch.arange(labels.shape[1], device=labels.device)
                decoder_attention_mask = positions < _labelled_lengths(labels).clamp(min=1)[:, None]  # (B, T)
        if decoder_input_ids is None:
            raise ValueError("Pass `labels` or `decoder_input_ids`.")
        if past_key_values is None or decoder_input_ids.shape[1] > 1:
            _check_token_ids("decoder_input_ids", decoder_input_ids, self.config.vocab_size)
        if use_cache is None:  # a cache that is passed in is always advanced
            use_cache = past_key_values is not None or (self.config.use_cache and labels is None and not self.training)

        eos = self.config.eos_token_id
        cached_step = use_cache and past_key_values is not None and labels is None and decoder_input_ids.shape[1] == 1
        if cached_step and eos is not None and self.config.decoder_start_token_id != eos:
            # a sentence whose EOS came back as its input (generate() then feeds it padding) has finished:
            # decode only the sentences still running
            running = past_key_values.running_rows(decoder_input_ids[:, 0], eos)  # (B,)
            if not bool(running.all()):
                return self._step_running_rows(decoder_input_ids, past_key_values, running, output_attentions,
                                               output_hidden_states, return_dict)  # fmt: skip

        if self.training and self.teacher_forcing_ratio < 1.0 and decoder_input_ids.shape[1] > 1:
            outputs = self.scheduled_sampling_forward(input_ids, attention_mask, decoder_input_ids, encoder_outputs)
            logits = outputs.pop("logits")
            loss = self._loss(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)) if labels is not None else None
        else:
            outputs = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                decoder_input_ids=decoder_input_ids,
                decoder_attention_mask=decoder_attention_mask,
                encoder_outputs=encoder_outputs,
                cache=past_key_values,
                use_cache=use_cache,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                return_dict=True,
            )
            hidden = outputs.last_hidden_state  # (B, T, H)
            if labels is None:
                logits, loss = self.compute_logits(hidden), None  # (B, T, V)
            else:  # the output layer and the loss only where there is a label: no output row for padding
                labels = labels.to(hidden.device)
                labelled = labels.ne(-100)  # (B, T)
                token_logits = self.compute_logits(hidden[labelled], contiguous=False)  # (N, V)
                loss = self._loss(token_logits, labels[labelled])
                logits = None
                if return_logits:
                    logits = token_logits.new_zeros(*labels.shape, token_logits.shape[-1])  # (B, T, V)
                    logits[labelled] = token_logits

        result = Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            **{CACHE_FIELD: outputs.get(CACHE_FIELD)},
            decoder_hidden_states=outputs.get("decoder_hidden_states"),
            cross_attentions=outputs.get("cross_attentions") if output_attentions else None,
            encoder_last_hidden_state=outputs.get("encoder_last_hidden_state"),
            encoder_hidden_states=outputs.get("encoder_hidden_states"),
        )
        return result if return_dict else result.to_tuple()

    def _step_running_rows(self, decoder_input_ids, cache, running, output_attentions, output_hidden_states,
                           return_dict):  # fmt: skip
        """One cached decoding step for the sentences still running (`running` `(B,)`), as Joey NMT and
        OpenNMT-py drop finished sentences: a finished one gets no decoder step and no output row, its state
        stays, and its logits (and attention) are 0. generate() gives it padding whatever its logits: greedy
        decoding and sampling give exactly the outputs of decoding every row; beam search never runs a beam
        past its EOS."""
        rows = running.nonzero().squeeze(1)  # (R,)
        batch_size = decoder_input_ids.shape[0]
        state = tuple(s.index_select(1, rows) for s in cache.state)  # (L, R, H) each
        feed = cache.input_feed.index_select(0, rows) if cache.input_feed is not None else None  # (R, H)
        decoded = self.model.decoder(decoder_input_ids.index_select(0, rows), cache.running_memory(rows), state, feed)
        cache.state = tuple(s.index_copy(1, rows, new) for s, new in zip(cache.state, decoded.state, strict=True))
        if feed is not None:
            cache.input_feed = cache.input_feed.index_copy(0, rows, decoded.input_feed)
        cache.seq_length += 1

        def scatter(rows_tensor):  # (R, 1, X) → (B, 1, X), 0 for the finished sentences
            full = rows_tensor.new_zeros(batch_size, *rows_tensor.shape[1:])
            return full.index_copy(0, rows, rows_tensor)

        attentions = decoded.attentions if output_attentions else None
        result = Seq2SeqLMOutput(
            logits=scatter(self.compute_logits(decoded.attentional, contiguous=False)),  # (B, 1, V)
            **{CACHE_FIELD: cache},
            decoder_hidden_states=(scatter(decoded.rnn_outputs),) if output_hidden_states else None,
            cross_attentions=(scatter(attentions),) if attentions is not None else None,
            encoder_last_hidden_state=cache.memory.values,
        )
        return result if return_dict else result.to_tuple()

    # Logits processors and stopping criteria that look at each row on its own, so that they give the same answer
    # when beam search decodes only some of the sentences (by class name: both transformers 4.57 and 5.x).
    _ROW_WISE_PROCESSORS = frozenset({
        "MinLengthLogitsProcessor", "MinNewTokensLengthLogitsProcessor", "NoRepeatNGramLogitsProcessor",
        "RepetitionPenaltyLogitsProcessor", "ForcedBOSTokenLogitsProcessor", "ForcedEOSTokenLogitsProcessor",
        "InfNanRemoveLogitsProcessor", "SuppressTokensLogitsProcessor", "SuppressTokensAtBeginLogitsProcessor",
        "SequenceBiasLogitsProcessor", "NoBadWordsLogitsProcessor", "ExponentialDecayLengthPenalty",
        "LogitNormalization",
    })  # fmt: skip
    _ROW_WISE_CRITERIA = frozenset({"MaxLengthCriteria", "EosTokenCriteria", "MaxTimeCriteria", "StopStringCriteria"})

    def _own_loop_applies(self, cfg, logits_processor, stopping_criteria, synced_gpus, model_kwargs) -> bool:
        """Whether the model's own decoding loops (`_sample`, `_beam_search`) can do what generate() asked: no
        sampling, the cache, only the sequences returned, the encoder outputs (and attention mask) as the only
        model inputs, and logits processors and stopping criteria that look at each row on its own."""
        model_inputs = {"encoder_outputs", "attention_mask", "use_cache", "output_attentions", "output_hidden_states"}
        return not (
            synced_gpus
            or cfg.do_sample
            or cfg.return_dict_in_generate
            or not model_kwargs.get("use_cache", True)
            or model_kwargs.get("encoder_outputs") is None
            or any(value is not None for key, value in model_kwargs.items() if key not in model_inputs)
            or any(type(p).__name__ not in self._ROW_WISE_PROCESSORS for p in logits_processor)
            or any(type(c).__name__ not in self._ROW_WISE_CRITERIA for c in stopping_criteria)
        )

    def _decode_prompt(self, input_ids, model_kwargs) -> Seq2SeqLMOutput:
        """The own loops' first step: the decoder over the whole prompt `input_ids` `(N, P)`, starting the cache."""
        return self(
            attention_mask=model_kwargs.get("attention_mask"),
            encoder_outputs=model_kwargs["encoder_outputs"],
            decoder_input_ids=input_ids,
            use_cache=True,
            return_dict=True,
        )

    def _decode_prompt_once_per_sentence(
        self, input_ids, model_kwargs, copies: int
    ) -> tuple[torch.Tensor, RNNAttentionCache]:
        """`_decode_prompt` for beam search: `(N·copies, V)` last-position logits and the cache.

        generate() hands beam search each sentence `copies` (K) times: the same prompt and the same encoder outputs.
        When they are the same, the memory (the projected keys) and the first step are computed once per sentence
        and copied to its beams, as OpenNMT-py tiles its encoder states; otherwise for every row.
        """
        encoder_outputs, mask = model_kwargs["encoder_outputs"], model_kwargs.get("attention_mask")
        rows = input_ids.shape[0] // copies

        def same_per_sentence(tensor):  # (N·K, …): each sentence's K rows equal (one pass; generate() always gives
            # copies, but encoder outputs passed in by hand might not be)
            if tensor is None:
                return True
            grouped = tensor.reshape(rows, copies, -1)
            return bool((grouped == grouped[:, :1]).all())

        fields = ("last_hidden_state", "final_hidden_state", "final_cell_state")
        if copies == 1 or not (
            isinstance(encoder_outputs, RNNAttentionEncoderOutput)
            and all(same_per_sentence(t) for t in (input_ids, mask, *(getattr(encoder_outputs, f) for f in fields)))
        ):
            outputs = self._decode_prompt(input_ids, model_kwargs)
            return outputs.logits[:, -1, :], outputs[CACHE_FIELD]
        sliced = {f: getattr(encoder_outputs, f) for f in fields}
        sliced = {f: t[::copies] if t is not None else None for f, t in sliced.items()}
        first = {"encoder_outputs": RNNAttentionEncoderOutput(**sliced)}
        if mask is not None:
            first["attention_mask"] = mask[::copies]
        outputs = self._decode_prompt(input_ids[::copies], first)
        cache = outputs[CACHE_FIELD]
        cache.repeat_state(copies)  # the state K times; the memory once per sentence, shared by its beams
        return outputs.logits[:, -1, :].repeat_interleave(copies, dim=0), cache

    def _sample(self, input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus=False,
                streamer=None, **model_kwargs):  # fmt: skip
        """Greedy decoding over the sentences still running, as Joey NMT and OpenNMT-py do.

        transformers' loop carries every sentence to the end of the batch: at each step it copies, processes and
        takes the argmax of all B rows of logits and feeds padding to the finished ones. This loop gives the same
        sequences (the same logits processors and stopping criteria, on the rows they apply to), but a sentence
        that has hit a stopping criterion (its EOS) leaves the batch: no more decoder steps, output rows, logits
        processing or argmax for it. Each step is then what a hand-written greedy loop does.

        `input_ids` `(B, P)`: the decoder prompt; returns the `(B, ≤ max_length)` sequences, padded after EOS.
        Whatever this loop does not do goes to `GenerationMixin._sample`: sampling (whose random draws depend on
        the batch rows), `return_dict_in_generate` (scores, attentions), a streamer, `synced_gpus`,
        `use_cache=False`, other model inputs, no EOS, and logits processors or stopping criteria that are not
        row by row.
        """
        cfg = generation_config
        if (
            not self._own_loop_applies(cfg, logits_processor, stopping_criteria, synced_gpus, model_kwargs)
            or streamer is not None
            or cfg.max_length is None
            or cfg._pad_token_tensor is None
            or not any(hasattr(c, "eos_token_id") for c in stopping_criteria)  # else finished rows are not padded
        ):
            return super()._sample(input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus,
                                   streamer, **model_kwargs)  # fmt: skip
        batch_size, prompt_len = input_ids.shape
        max_length = max(cfg.max_length, prompt_len + 1)
        done = torch.full((batch_size, max_length), int(cfg._pad_token_tensor), dtype=torch.long,
                          device=input_ids.device)  # (B, L) the sequences, padded after EOS  # fmt: skip
        done[:, :prompt_len] = input_ids
        sequences = done.clone()  # (A, L) the A sentences still running (all B at first)
        sentences = torch.arange(batch_size, device=input_ids.device)  # (A,) each one's place in the batch
        outputs = self._decode_prompt(input_ids, model_kwargs)
        cache, cur_len = outputs[CACHE_FIELD], prompt_len
        cache.reserve_rows(batch_size)  # dropping a finished sentence then moves a few rows, not the whole memory
        logits = outputs.logits[:, -1, :]  # (A, V)
        del outputs
        decoder = self.model.decoder
        while True:
            scores = logits_processor(sequences[:, :cur_len], logits.float())  # (A, V)
            tokens = scores.argmax(dim=-1)  # (A,)
            sequences[:, cur_len] = tokens
            cur_len += 1
            stop = stopping_criteria(sequences[:, :cur_len], None)  # (A,) EOS, the length limit, …
            if cur_len == max_length:
                stop[:] = True
            if bool(stop.any()):
                ended = stop.nonzero().squeeze(1)
                done[sentences[ended]] = sequences[ended]
                if bool(stop.all()):
                    break
                order = cache.drop_rows(stop)  # (A',) the old row of each row that stays
                sentences, sequences, tokens = sentences[order], sequences[order], tokens[order]
            # one decoder step and one output row per running sentence: `decoder` and the output layer directly,
            # as the cached step of forward() would (every row here is running)
            decoded = decoder(tokens[:, None], cache.memory, cache.state, cache.input_feed)
            cache.state, cache.input_feed = decoded.state, decoded.input_feed
            cache.seq_length += 1
            logits = self.compute_logits(decoded.attentional[:, -1], contiguous=False)  # (A, V)
        return done[:, :cur_len]

    # The generation settings (`GenerationConfig.to_diff_dict()` keys) with which continuous batching gives
    # generate()'s sequences: token ids, the length limit, and options that greedy decoding does not read. Any
    # other setting (a logits processor, a stopping option, …) set to something other than its default
    # (`_generation_defaults`) sends the sentences to generate() batch by batch.
    _CONTINUOUS_SETTINGS = frozenset({
        "_from_model_config", "transformers_version", "bos_token_id", "decoder_start_token_id", "eos_token_id",
        "pad_token_id", "max_length", "max_new_tokens", "num_beams", "do_sample", "use_cache", "num_return_sequences",
        "output_attentions", "output_hidden_states", "length_penalty", "early_stopping", "temperature", "top_k",
        "top_p",
    })  # fmt: skip

    @staticmethod
    def _generation_defaults() -> dict:
        """The value each generation setting has when nobody sets it. transformers 5 leaves GenerationConfig()'s
        fields at None and fills the defaults in generate() (`_get_default_generation_params`), so a setting given
        as its default (`min_length=0`, `repetition_penalty=1.0`) shows in `to_diff_dict()`; in 4.x it does not."""
        defaults = GenerationConfig().to_dict()
        defaults.update(getattr(GenerationConfig, "_get_default_generation_params", dict)())
        return defaults

    def _changed_settings(self, config: GenerationConfig) -> set[str]:
        """The settings of `config` outside `_CONTINUOUS_SETTINGS` whose value is not their default."""
        defaults, missing = self._generation_defaults(), object()
        return {
            key for key, value in config.to_diff_dict().items()
            if key not in self._CONTINUOUS_SETTINGS and value != defaults.get(key, missing)
        }  # fmt: skip

    @torch.inference_mode()
    def generate_continuous(
        self, source_ids: list[list[int]], batch_size: int = 64, sort_by_length: bool = True, **generate_kwargs
    ) -> list[torch.LongTensor]:
        """generate() for many source sentences, at most `batch_size` of them decoded at a time; greedy decoding
        with continuous batching.

        Args:
            source_ids: each sentence's token ids, without padding.
            batch_size: the most sentences decoded at once (and encoded at once).
            sort_by_length: encode and decode the sentences longest first (a stable sort by token count), which
                gives the least padding; False: in the given order. The outputs come back in the given order
                either way.
            generate_kwargs: generate()'s settings (`max_new_tokens`, `num_beams`, …).
        Returns:
            For each sentence, in the input order, its generate() output up to its EOS: `(1 + n,)`, the decoder
            start token, then the n generated tokens.

        generate() decodes a batch until its last sentence has ended. Its greedy loop ([`_sample`]) drops the
        sentences that have ended, but a batch whose last sentence runs long then takes many steps of a few rows,
        and a step's cost hardly falls with its rows (reading the weights dominates it: 1.7 ms for 1 row, 8.5 ms
        for 64, Bahdanau preset of the peers' work on 2 cores). Continuous batching keeps the batch full: when
        sentences end, the next ones take their places (encoded `batch_size` at a time ahead of need); each row
        is decoded on its own, so every sentence gets generate()'s greedy tokens. On test_2016_flickr with the
        peers' Bahdanau model, 737 → about 245 decoder steps. Beam search, sampling and any setting outside
        `_CONTINUOUS_SETTINGS` go to generate() in batches of `batch_size` (sorted by length too).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive number of sentences, got {batch_size}.")
        # the settings generate() would use: the model's, what a given generation_config sets (its fields left at
        # the global defaults come from the model's, as in generate()), the other kwargs on top
        given = generate_kwargs.get("generation_config")
        settings = {key: value for key, value in generate_kwargs.items() if key != "generation_config"}
        config = copy.deepcopy(self.generation_config)
        unused = config.update(**{**(given.to_diff_dict() if given is not None else {}), **settings})
        if config.num_return_sequences not in (None, 1):
            raise ValueError("generate_continuous() returns one sequence per sentence: num_return_sequences must be 1.")
        max_new = config.max_new_tokens if config.max_new_tokens is not None else (config.max_length or 0) - 1
        special = (config.eos_token_id, config.pad_token_id, config.decoder_start_token_id)
        continuous = (
            not unused
            and not self._changed_settings(config)
            and config.num_beams in (None, 1)
            and not config.do_sample
            and config.use_cache
            and not config.output_attentions
            and not config.output_hidden_states
            and all(token is not None for token in special)
            and max_new >= 1
        )
        order = list(range(len(source_ids)))
        if sort_by_length:
            order.sort(key=lambda i: len(source_ids[i]), reverse=True)  # stable: equal lengths keep their order
        ordered = [source_ids[i] for i in order]
        if continuous:
            generated = self._greedy_continuous(ordered, batch_size, max_new, config)
        else:
            generated = self._generate_in_batches(ordered, batch_size, generate_kwargs, config)
        outputs: list[torch.LongTensor | None] = [None] * len(source_ids)
        for index, sequence in zip(order, generated, strict=True):
            outputs[index] = sequence
        return outputs

    def _pad_sources(self, source_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded `(n, S)` input ids and attention mask for a list of token id lists."""
        width = max(1, max(len(ids) for ids in source_ids))
        input_ids = torch.full((len(source_ids), width), self.config.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(source_ids), width, dtype=torch.long)
        for row, ids in enumerate(source_ids):
            input_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        return input_ids.to(self.device), mask.to(self.device)

    @staticmethod
    def _up_to_eos(row: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
        """A generate() output row `(L,)` cut after its first EOS (after the decoder start token)."""
        ends = torch.isin(row[1:], eos).nonzero()
        return row[: 2 + int(ends[0])] if ends.numel() else row

    def _generate_in_batches(self, source_ids, batch_size, generate_kwargs, config) -> list[torch.LongTensor]:
        """generate() on `batch_size` sentences at a time, in the given order (what is not continuous batching)."""
        outputs, eos = [], config.eos_token_id
        eos = torch.as_tensor(eos if eos is not None else [], dtype=torch.long, device=self.device).view(-1)
        for start in range(0, len(source_ids), batch_size):
            input_ids, mask = self._pad_sources(source_ids[start : start + batch_size])
            generated = self.generate(input_ids=input_ids, attention_mask=mask, **generate_kwargs)
            outputs.extend(self._up_to_eos(row, eos) for row in generated)
        return outputs

    def _greedy_continuous(self, source_ids, batch_size, max_new, config) -> list[torch.LongTensor]:
        """Continuous batching for `generate_continuous`: a pool of at most `batch_size` running sentences."""
        device, core = self.device, self.model
        eos = torch.as_tensor(config.eos_token_id, dtype=torch.long, device=device).view(-1)
        start_token, pad = int(config.decoder_start_token_id), int(config.pad_token_id)
        refill = max(1, batch_size // 16)  # admit new sentences once this many places are free (or none runs)
        outputs: list[torch.LongTensor | None] = [None] * len(source_ids)
        pool: RNNAttentionCache | None = None  # memory, state, input feed of the running sentences (A of them)
        sentence = torch.zeros(0, dtype=torch.long)  # (A,) each running sentence's index in source_ids
        source_lengths = torch.zeros(0, dtype=torch.long)  # (A,) its source tokens
        tokens = torch.zeros(0, dtype=torch.long, device=device)  # (A,) its next input token
        generated = torch.zeros(0, max_new, dtype=torch.long, device=device)  # (A, max_new) its tokens so far
        counts = torch.zeros(0, dtype=torch.long, device=device)  # (A,) how many
        ready, ready_from, next_sentence = None, 0, 0  # encoded sentences not yet admitted: ready[ready_from:]
        while True:
            running = sentence.numel()
            if running == 0 or batch_size - running >= refill:  # admit the next sentences
                while running < batch_size:
                    if ready is None or ready_from == ready.memory.values.shape[0]:
                        if next_sentence == len(source_ids):
                            break
                        chunk = list(range(next_sentence, min(next_sentence + batch_size, len(source_ids))))
                        input_ids, mask = self._pad_sources([source_ids[i] for i in chunk])
                        ready = core.start_decoding(core.encoder(input_ids, mask, return_dict=True), mask)
                        ready_lengths, ready_from, next_sentence = mask.sum(1).cpu(), 0, chunk[-1] + 1
                    take = min(batch_size - running, ready.memory.values.shape[0] - ready_from)
                    admitted = ready.slice_rows(ready_from, ready_from + take)
                    if pool is None or running == 0:
                        pool = admitted
                        pool.reserve_rows(batch_size)
                    else:
                        pool.append_rows(admitted)
                    first = next_sentence - ready.memory.values.shape[0] + ready_from
                    sentence = torch.cat([sentence, torch.arange(first, first + take)])
                    source_lengths = torch.cat([source_lengths, ready_lengths[ready_from : ready_from + take]])
                    tokens = torch.cat([tokens, tokens.new_full((take,), start_token)])
                    generated = torch.cat([generated, generated.new_full((take, max_new), pad)])
                    counts = torch.cat([counts, counts.new_zeros(take)])
                    ready_from += take
                    running += take
                if running == 0:
                    break
            # one decoder step and one output row per running sentence, as generate()'s greedy loop does
            decoded = core.decoder(tokens[:, None], pool.memory, pool.state, pool.input_feed)
            pool.state, pool.input_feed = decoded.state, decoded.input_feed
            tokens = self.compute_logits(decoded.attentional[:, -1], contiguous=False).float().argmax(dim=-1)  # (A,)
            generated[torch.arange(running, device=device), counts] = tokens
            counts += 1
            stop = torch.isin(tokens, eos) | (counts == max_new)  # (A,)
            if bool(stop.any()):
                for row in stop.nonzero().squeeze(1).tolist():
                    outputs[int(sentence[row])] = torch.cat([tokens.new_full((1,), start_token),
                                                             generated[row, : int(counts[row])]])  # fmt: skip
                order = pool.drop_rows(stop)  # (A',) the old row of each row that stays
                sentence, source_lengths = sentence[order.cpu()], source_lengths[order.cpu()]
                tokens, generated, counts = tokens[order], generated[order], counts[order]
                if order.numel():
                    pool.trim_source(max(1, int(source_lengths.max())))
        return outputs

    def _beam_search(self, input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus=False,
                     **model_kwargs):  # fmt: skip
        """Beam search that drops each sentence as soon as its hypotheses are final, as Joey NMT and OpenNMT-py do.

        transformers' loop decodes every beam of every sentence until the last sentence of the batch is done. This
        one runs the same algorithm through transformers' own per-sentence steps (top 2K continuations, the K best
        running beams, the K best finished hypotheses with the length penalty, the early-stopping test), so it gives
        the same sequences, but a sentence whose early-stopping test has passed (its hypotheses can no longer
        change) leaves the batch: no more decoder steps, output rows or top-k for it.

        `input_ids` `(B·K, P)`: the decoder prompt of each beam; returns the `(B·num_return_sequences, ≤ max_length)`
        sequences. Whatever this loop does not do goes to `GenerationMixin._beam_search`: beam sampling,
        `return_dict_in_generate` (scores, attentions, beam indices), `synced_gpus`, `use_cache=False`, other model
        inputs, and logits processors or stopping criteria that are not row by row.
        """
        cfg = generation_config
        if cfg.low_memory or not self._own_loop_applies(cfg, logits_processor, stopping_criteria, synced_gpus,
                                                        model_kwargs):  # fmt: skip
            return super()._beam_search(
                input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus, **model_kwargs
            )
        num_beams, prompt_len, max_length = cfg.num_beams, input_ids.shape[1], cfg.max_length
        batch_size, device = input_ids.shape[0] // num_beams, input_ids.device
        eos, pad = cfg._eos_token_tensor, cfg._pad_token_tensor
        beams_to_keep = max(2, 1 + (eos.shape[0] if eos is not None else 0)) * num_beams  # 2K candidates per sentence
        top_num_beam_mask = torch.arange(beams_to_keep, device=device) < num_beams  # (2K,)
        fill = (pad or eos[0]) if eos is not None else -1  # transformers' padding of finished hypotheses
        # the exact stop of `_best_hypotheses_are_final` holds when no score can grow as a hypothesis gets longer
        best_are_final = cfg.length_penalty <= 0 and all(
            type(p).__name__ in self._PROCESSORS_THAT_KEEP_SCORES_NON_POSITIVE for p in logits_processor
        )
        top_k_extra = {}  # transformers 4.57 also takes the vocabulary size
        if "vocab_size" in inspect.signature(self._get_top_k_continuations).parameters:
            top_k_extra["vocab_size"] = self.config.vocab_size

        # per active sentence (A of them; all B at first): K running beams and the K best finished hypotheses
        running = torch.full((batch_size, num_beams, max_length), fill, dtype=torch.long, device=device)  # (A, K, L)
        running[:, :, :prompt_len] = input_ids.view(batch_size, num_beams, prompt_len)
        finished = running.clone()  # (A, K, L)
        running_scores = torch.zeros(batch_size, num_beams, device=device)  # (A, K) summed log-probabilities
        running_scores[:, 1:] = -1e9  # only the first beam's continuations at the first step
        finished_scores = torch.full((batch_size, num_beams), -1e9, device=device)  # (A, K) length-penalised
        running_origins = torch.full((batch_size, num_beams, max_length - prompt_len), -1, dtype=torch.int32,
                                     device=device)  # (A, K, L - P) the row each token came from  # fmt: skip
        finished_origins = running_origins.clone()
        is_sent_finished = torch.zeros(batch_size, num_beams, dtype=torch.bool, device=device)  # (A, K)
        can_improve = torch.ones(batch_size, 1, dtype=torch.bool, device=device)  # (A, 1) early-stopping test
        sentences = torch.arange(batch_size, device=device)  # (A,) each active sentence's place in the batch
        done_sequences, done_lengths = finished.clone(), torch.zeros(batch_size, num_beams, dtype=torch.long,
                                                                     device=device)  # fmt: skip

        logits, cache = self._decode_prompt_once_per_sentence(input_ids, model_kwargs, num_beams)  # (B·K, V)
        cur_len = prompt_len
        while True:
            active = sentences.shape[0]
            log_probs = F.log_softmax(logits.float(), dim=-1)  # (A·K, V)
            del logits  # no (A·K, V) tensor of this step stays alive into the next step's forward
            log_probs = logits_processor(running[:, :, :cur_len].reshape(active * num_beams, cur_len), log_probs)
            log_probs = (log_probs.view(active, num_beams, -1) + running_scores[:, :, None]).view(active, -1)
            topk_scores, topk_sequences, topk_origins = self._get_top_k_continuations(
                accumulated_log_probs=log_probs, running_sequences=running, running_beam_indices=running_origins,
                cur_len=cur_len, decoder_prompt_len=prompt_len, do_sample=False, beams_to_keep=beams_to_keep,
                num_beams=num_beams, batch_size=active, **top_k_extra,
            )  # fmt: skip  # (A, 2K), (A, 2K, L), (A, 2K, L - P)
            del log_probs
            hits_stop = stopping_criteria(
                topk_sequences[:, :, : cur_len + 1].reshape(active * beams_to_keep, -1), None
            ).view(active, beams_to_keep)  # (A, 2K) EOS or the length limit
            running, running_scores, running_origins = self._get_running_beams_for_next_iteration(
                topk_log_probs=topk_scores, topk_running_sequences=topk_sequences,
                topk_running_beam_indices=topk_origins, next_token_hits_stopping_criteria=hits_stop,
                num_beams=num_beams,
            )  # fmt: skip
            finished, finished_scores, finished_origins, is_sent_finished = self._update_finished_beams(
                sequences=finished, topk_running_sequences=topk_sequences, beam_scores=finished_scores,
                topk_log_probs=topk_scores, beam_indices=finished_origins, topk_running_beam_indices=topk_origins,
                is_early_stop_heuristic_unsatisfied=can_improve, is_sent_finished=is_sent_finished,
                next_token_hits_stopping_criteria=hits_stop, top_num_beam_mask=top_num_beam_mask,
                num_beams=num_beams, cur_len=cur_len, decoder_prompt_len=prompt_len,
                length_penalty=cfg.length_penalty, early_stopping=cfg.early_stopping,
            )  # fmt: skip
            beam_rows = running_origins[:, :, cur_len - prompt_len].reshape(-1).long()  # (A·K) rows they extend
            cur_len += 1
            can_improve = self._check_early_stop_heuristic(
                is_early_stop_heuristic_unsatisfied=can_improve, running_beam_scores=running_scores,
                beam_scores=finished_scores, is_sent_finished=is_sent_finished, cur_len=cur_len,
                max_length=max_length, decoder_prompt_len=prompt_len, early_stopping=cfg.early_stopping,
                length_penalty=cfg.length_penalty,
            )  # fmt: skip
            # a sentence is final when no running beam can beat its finished hypotheses (or, with
            # early_stopping=True, when it has K of them); all are when every continuation hit a stopping criterion
            final = ~can_improve[:, 0]
            if cfg.early_stopping is True:
                final |= is_sent_finished.all(dim=1)
            if best_are_final:
                final |= self._best_hypotheses_are_final(finished_scores, is_sent_finished, running_scores,
                                                         cfg.num_return_sequences, cur_len + 1 - prompt_len,
                                                         cfg.length_penalty)  # fmt: skip
            if bool(hits_stop.all()):
                final[:] = True
            cache.reorder_cache(beam_rows)  # each running beam continues from the state it extends
            if bool(final.any()):
                done = final.nonzero().squeeze(1)
                done_sequences[sentences[done]] = finished[done]
                done_lengths[sentences[done]] = finished_origins[done].ge(0).sum(-1).long()
                keep = (~final).nonzero().squeeze(1)  # (A',)
                if keep.numel() == 0:
                    break
                sentences, running, finished = sentences[keep], running[keep], finished[keep]
                running_scores, finished_scores = running_scores[keep], finished_scores[keep]
                running_origins, finished_origins = running_origins[keep], finished_origins[keep]
                is_sent_finished, can_improve = is_sent_finished[keep], can_improve[keep]
                cache.keep_sentences(keep, num_beams)
            logits = self(
                decoder_input_ids=running[:, :, cur_len - 1].reshape(-1, 1),
                cache=cache,
                use_cache=True,
                return_dict=True,
            ).logits[:, -1, :]  # (A·K, V)

        num_return = cfg.num_return_sequences
        lengths = done_lengths[:, :num_return].reshape(-1)  # (B·R,) tokens generated, EOS included
        sequences = done_sequences[:, :num_return].reshape(batch_size * num_return, max_length)
        return sequences[:, : prompt_len + int(lengths.max())]

    # row-wise processors that keep log-probabilities ≤ 0 (they lower some to -inf, force one to 0, or scale negative
    # scores), so a hypothesis' summed log-probability never grows as it gets longer. Left out: SequenceBias and
    # ExponentialDecayLengthPenalty (they can add a positive amount), InfNanRemove (it turns +inf into a large value).
    _PROCESSORS_THAT_KEEP_SCORES_NON_POSITIVE = frozenset({
        "MinLengthLogitsProcessor", "MinNewTokensLengthLogitsProcessor", "NoRepeatNGramLogitsProcessor",
        "RepetitionPenaltyLogitsProcessor", "ForcedBOSTokenLogitsProcessor", "ForcedEOSTokenLogitsProcessor",
        "SuppressTokensLogitsProcessor", "SuppressTokensAtBeginLogitsProcessor", "NoBadWordsLogitsProcessor",
        "LogitNormalization",
    })  # fmt: skip

    @staticmethod
    def _best_hypotheses_are_final(finished_scores, is_sent_finished, running_scores, num_return, next_length,
                                   length_penalty) -> torch.Tensor:  # fmt: skip
        """Which sentences' `num_return` best finished hypotheses no running beam can beat any more: `(A,)` bool.

        transformers' early-stopping test waits until a sentence has K finished hypotheses, since it keeps K; only
        the best `num_return` are returned. With a length penalty ≤ 0 (0: OpenNMT-py's and Joey NMT's "no length
        penalty") and log-probabilities ≤ 0, a hypothesis' score only falls as it grows: every hypothesis still to
        finish scores at most the best running beam's summed log-probability divided by `next_length ** length_penalty`
        (`next_length`: the length of a hypothesis that finishes at the next step). Once the `num_return`-th best
        finished score is above that bound, transformers' loop would return the same hypotheses, and the sentence
        can leave the batch (what OpenNMT-py's beam search does with one returned hypothesis: stop when the best
        beam has ended). Strictly above, so ties cannot reorder.

        `finished_scores`, `is_sent_finished` `(A, K)`, sorted best first; `running_scores` `(A, K)`, sorted best first.
        """
        best_possible = running_scores[:, 0] / next_length**length_penalty  # (A,)
        last_returned = num_return - 1
        return is_sent_finished[:, last_returned] & (finished_scores[:, last_returned] > best_possible)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean (label-smoothed) cross-entropy of `(N, V)` logits over the labels that are not -100 (0 if none)."""
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp16/bf16 → fp32
        total = F.cross_entropy(
            logits, labels, ignore_index=-100, reduction="sum", label_smoothing=self.config.label_smoothing
        )
        return total / labels.ne(-100).sum().clamp(min=1)

    def scheduled_sampling_forward(self, input_ids, attention_mask, decoder_input_ids, encoder_outputs) -> dict:
        """Scheduled sampling (Bengio et al. 2015): step t reads the gold token y_{t-1} with probability
        `teacher_forcing_ratio`, else the model's own previous prediction argmax p(y_{t-1} | …), drawn per
        sequence per step. The first step always reads the start token."""
        if attention_mask is None and input_ids is not None:
            attention_mask = input_ids.ne(self.config.pad_token_id)
        encoder_outputs = self.model.encode(input_ids, attention_mask, encoder_outputs)
        cache = self.model.start_decoding(encoder_outputs, attention_mask)
        decoder = self.model.decoder
        state, input_feed = cache.state, cache.input_feed
        batch_size, target_len = decoder_input_ids.shape
        use_gold = torch.rand(batch_size, target_len, device=decoder_input_ids.device) < self.teacher_forcing_ratio

        logits, attentions = [], []
        tokens = decoder_input_ids[:, :1]  # (B, 1) the start token
        for t in range(target_len):
            if t > 0:
                predicted = logits[-1].detach().argmax(dim=-1)  # (B, 1) the model's own previous prediction
                tokens = torch.where(use_gold[:, t : t + 1], decoder_input_ids[:, t : t + 1], predicted)
            out = decoder.step(decoder.embed(tokens), cache.memory, state, input_feed)
            state, input_feed = out.state, out.input_feed
            logits.append(self.compute_logits(out.attentional, contiguous=False))  # (B, 1, V)
            attentions.append(out.attentions)
        cross = (torch.cat(attentions, dim=1),) if decoder.has_attention else None
        return {
            "logits": torch.cat(logits, dim=1),  # (B, T, V)
            "cross_attentions": cross,
            "encoder_last_hidden_state": encoder_outputs.last_hidden_state,
        }


__all__ = [
    "RNNAttentionCache",
    "RNNAttentionEncoder",
    "RNNAttentionDecoder",
    "RNNAttentionForConditionalGeneration",
    "RNNAttentionModel",
    "RNNAttentionPreTrainedModel",
    "shift_tokens_right",
]

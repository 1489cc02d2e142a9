"""The kernel choices of the modeling file, measured at this model's shapes on this machine (2 threads).

The CPU paths of `modeling_rnn_attention.py` pick one kernel over another: tanh through the sigmoid, oneDNN's linear
over the MKL behind `F.linear` (in decoding, for the fused training loops' per-step products, and for the training
linears' forward and input gradient), an LSTM cell over `nn.LSTM` for one decoding step, rows padded to 64 floats
for the 8,003-wide output layer, the packed LSTM with its written-out backward over PyTorch's packed `nn.LSTM`,
a dropout mask from 32-bit random words over PyTorch's Bernoulli samples. This script times each pair, so the
figures quoted in the docstrings and BENCHMARKS.md can be checked on any machine (a choice may not pay off on
another CPU). Each figure is the lower quartile of repeated
calls, in milliseconds.

    python scripts/kernel_benchmark.py [--output runs/kernel_benchmark.json]
"""

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from functools import partial

import torch
import torch.nn.functional as F

from hf_rnn_attention.modeling_rnn_attention import (
    ONEDNN_LINEAR,
    _onednn_linear,
    _onednn_lstm_cell,
    _onednn_product,
    _tanh,
    dropout,
    packed_lstm,
    training_linear,
)

# the rows of a fused loop's steps over one batch: 64 sentences, target lengths drawn from 6-30, longest first
BATCH_SIZES = [64] * 7 + [59, 57, 53, 51, 49, 45, 43, 39, 39, 36, 34, 33, 29, 27, 26, 22, 22, 20, 14, 12, 9, 7, 6]


def timed(function, calls: int = 50) -> float:
    for _ in range(5):
        function()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return round(sorted(times)[calls // 4] * 1e3, 3)


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    results = {}

    for shape in [(64, 2048), (41, 28, 512), (976, 512)]:  # LSTM gates, the additive score's z, W_c's output
        x, out = torch.randn(*shape), torch.empty(*shape)
        results[f"tanh {shape}"] = {"torch.tanh": timed(partial(torch.tanh, x, out=out)),
                                    "2*sigmoid(2x)-1": timed(partial(_tanh, x, out=out))}  # fmt: skip

    if ONEDNN_LINEAR:
        for rows, inputs, outputs in [(1, 512, 8003), (64, 512, 8003), (976, 512, 8003), (64, 1024, 512)]:
            x, weight, bias = torch.randn(rows, inputs), torch.randn(outputs, inputs), torch.randn(outputs)
            results[f"linear ({rows}, {inputs}) x ({inputs}, {outputs})"] = {
                "F.linear (MKL)": timed(partial(F.linear, x, weight, bias)),
                "oneDNN": timed(partial(_onednn_linear, x, weight, bias)),
            }
        padded = torch.empty(976, 8064)[:, :8003]
        x, weight, bias = torch.randn(976, 512), torch.randn(8003, 512), torch.randn(8003)
        results["linear (976, 512) x (512, 8003)"]["MKL into rows padded to 64"] = timed(
            lambda: torch.addmm(bias, x, weight.t(), out=padded)
        )

        # the fused training loops' per-step products, base + h Wᵀ over the shrinking rows of one batch
        for inputs, outputs in [(512, 2560), (2560, 512), (512, 2048), (256, 1024)]:
            h, weight = torch.randn(64, inputs), torch.randn(outputs, inputs)
            base, out = torch.randn(64, outputs), torch.empty(64, outputs)

            def mkl(h=h, weight=weight, base=base, out=out):
                for n in BATCH_SIZES:
                    torch.addmm(base[:n], h[:n], weight.t(), out=out[:n])

            def onednn(h=h, weight=weight, base=base, out=out):
                for n in BATCH_SIZES:
                    torch.add(base[:n], _onednn_product(h[:n], weight, None), out=out[:n])

            results[f"per-step products (n, {inputs}) x ({inputs}, {outputs}), n over one batch"] = {
                "addmm (MKL)": timed(mkl, calls=20), "oneDNN + add": timed(onednn, calls=20)}  # fmt: skip

        # the training linears, forward and backward (N target tokens of a batch)
        with torch.inference_mode(False):
            for inputs, outputs in [(256, 2048), (512, 2048), (1024, 512), (512, 8003)]:
                x = torch.randn(976, inputs, requires_grad=True)
                weight, bias = (
                    torch.randn(outputs, inputs, requires_grad=True),
                    torch.randn(outputs, requires_grad=True),
                )
                upstream = torch.randn(976, outputs)

                def train(function, x=x, weight=weight, bias=bias, upstream=upstream):
                    function(x, weight, bias).backward(upstream)

                results[f"training linear (976, {inputs}) x ({inputs}, {outputs}), forward + backward"] = {
                    "F.linear (MKL)": timed(partial(train, F.linear), calls=20),
                    "training_linear (oneDNN forward and input gradient)": timed(partial(train, training_linear), calls=20),
                }  # fmt: skip

    # dropout's mask: PyTorch's Bernoulli sample per element against 32-bit words from 64-bit draws
    with torch.inference_mode(False):
        x = torch.randn(1000, 512)
        results["dropout p=0.2, (1000, 512)"] = {"F.dropout": timed(lambda: F.dropout(x, 0.2, True)),
                                                 "dropout (modeling file)": timed(lambda: dropout(x, 0.2, True))}  # fmt: skip

    # the packed LSTMs of training, forward + backward over one batch (BATCH_SIZES rows per step): PyTorch's packed
    # nn.LSTM (one autograd record per step) against packed_lstm (PackedLSTMRecurrence's written-out backward)
    with torch.inference_mode(False):
        lengths = torch.tensor([sum(n > row for n in BATCH_SIZES) for row in range(64)])
        for inputs, hidden, layers, bidirectional in [(256, 256, 2, True), (256, 512, 1, False)]:
            lstm = torch.nn.LSTM(inputs, hidden, num_layers=layers, bidirectional=bidirectional, batch_first=True)
            x = torch.randn(64, len(BATCH_SIZES), inputs, requires_grad=True)

            def train(function, lstm=lstm, x=x):
                packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True)
                outputs, (h, c) = function(lstm, packed)
                (outputs.data.sum() + h.sum() + c.sum()).backward()

            name = f"{'bidirectional ' if bidirectional else ''}LSTM {layers} x {hidden}, input {inputs}, one batch"
            results[f"{name}, forward + backward"] = {
                "nn.LSTM (PyTorch's packed)": timed(partial(train, lambda lstm, packed: lstm(packed)), calls=10),
                "packed_lstm": timed(partial(train, packed_lstm), calls=10),
            }

    lstm = torch.nn.LSTM(768, 512, batch_first=True).eval()
    x, h, c = torch.randn(64, 768), torch.randn(64, 512), torch.randn(64, 512)
    weights = (lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)
    step = {"nn.LSTM": timed(lambda: lstm(x[:, None], (h[None], c[None]))),
            "torch.lstm_cell": timed(lambda: torch.lstm_cell(x, (h, c), *weights))}  # fmt: skip
    if ONEDNN_LINEAR:
        step["oneDNN cell"] = timed(lambda: _onednn_lstm_cell(x, h, c, *weights))
    results["one LSTM step, batch 64, input 768, hidden 512"] = step

    report = {"date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "machine": platform.processor() or
              platform.machine(), "torch": torch.__version__, "onednn_linear": ONEDNN_LINEAR, "ms": results}  # fmt: skip
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), None)
    report["machine"] = cpu or report["machine"]
    print(json.dumps(report, indent=2))
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()

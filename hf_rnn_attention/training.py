"""Training the Hugging Face way: scheduled-sampling schedules and their TrainerCallback, metrics for
`compute_metrics`, dataset tokenization and the `Seq2SeqTrainer` set-up (translation and metrics: inference.py).

Teacher forcing feeds the gold previous token to each decoder step; at test time the model reads its
own predictions, a mismatch called exposure bias. Scheduled sampling (Bengio et al. 2015) anneals the
probability of reading the gold token from 1 towards a floor during training; `ScheduledSamplingCallback`
sets `model.teacher_forcing_ratio` from a `TeacherForcingSchedule` before every epoch or step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

from .inference import text_metrics, translate  # noqa: F401  (their home is inference.py; kept importable here)

SCHEDULES = ("constant", "linear", "exponential", "inverse_sigmoid")
UNITS = ("epoch", "step")


# ─────────────────────────────────────────── Scheduled sampling ───────────────────────────────────────────


@dataclass
class TeacherForcingSchedule:
    """The teacher forcing ratio ε_i after i epochs (or steps), as in Bengio et al. (2015), section 2.4.

    - `constant`: ε_i = `ratio`.
    - `linear`: ε_i = max(`floor`, 1 − `slope`·i); the lecture's default is max(0.1, 1.0 − 0.1·epoch).
    - `exponential`: ε_i = max(`floor`, k^i) with k < 1.
    - `inverse_sigmoid`: ε_i = max(`floor`, k / (k + exp(i / k))) with k ≥ 1.
    """

    kind: str = "linear"
    unit: str = "epoch"
    ratio: float = 1.0
    slope: float = 0.1
    floor: float = 0.1
    k: float | None = None

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ValueError(f"scheduled sampling `kind` must be one of {list(SCHEDULES)}, got {self.kind!r}.")
        if self.unit not in UNITS:
            raise ValueError(f"scheduled sampling `unit` must be one of {list(UNITS)}, got {self.unit!r}.")
        for name in ("ratio", "floor"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"scheduled sampling `{name}` must be in [0, 1], got {getattr(self, name)!r}.")
        if self.slope < 0:
            raise ValueError(f"scheduled sampling `slope` must be >= 0, got {self.slope!r}.")
        if self.k is None:
            self.k = {"exponential": 0.9, "inverse_sigmoid": 5.0}.get(self.kind)
        if self.kind == "exponential" and not 0.0 < self.k < 1.0:
            raise ValueError(f"exponential schedule needs 0 < k < 1, got k={self.k!r}.")
        if self.kind == "inverse_sigmoid" and not self.k >= 1.0:
            raise ValueError(f"inverse_sigmoid schedule needs k >= 1, got k={self.k!r}.")

    def __call__(self, i: float) -> float:
        if self.kind == "constant":
            return self.ratio
        if self.kind == "linear":
            value = 1.0 - self.slope * i
        elif self.kind == "exponential":
            value = self.k**i
        else:  # inverse sigmoid
            value = self.k / (self.k + math.exp(min(i / self.k, 700.0)))
        return max(self.floor, min(1.0, value))


class ScheduledSamplingCallback(TrainerCallback):
    """Sets `model.teacher_forcing_ratio` from the schedule at the start of every epoch (or step);
    `RNNAttentionTrainer` logs it beside the loss.

    The ratio is a function of the trainer state (epoch or global step), so `resume_from_checkpoint`
    continues with the ratio the run had.
    """

    def __init__(self, schedule: TeacherForcingSchedule):
        self.schedule = schedule
        self.ratio = schedule(0)

    def _update(self, state, model) -> None:
        i = int(state.epoch or 0) if self.schedule.unit == "epoch" else state.global_step
        self.ratio = self.schedule(i)
        if model is not None:
            model.teacher_forcing_ratio = self.ratio

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._update(state, model)

    def on_epoch_begin(self, args, state, control, model=None, **kwargs):
        self._update(state, model)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.schedule.unit == "step":
            self._update(state, model)


def training_arguments(**settings) -> Seq2SeqTrainingArguments:
    """`Seq2SeqTrainingArguments` from a recipe's `training:` section, on transformers 4.57 and 5.x alike.

    Length-grouped batches are `train_sampling_strategy: group_by_length` on 5.x and `group_by_length: true`
    on 4.57; a recipe may use either spelling and gets length grouping on both."""
    fields = {field.name for field in dataclasses.fields(Seq2SeqTrainingArguments)}
    strategy, grouped = settings.pop("train_sampling_strategy", None), settings.pop("group_by_length", None)
    if strategy is not None and grouped is not None:
        raise ValueError("Give train_sampling_strategy or group_by_length, not both.")
    if grouped is not None:
        if not isinstance(grouped, bool):
            raise ValueError(f"group_by_length must be true or false, got {grouped!r}.")
        strategy = "group_by_length" if grouped else "random"
    if strategy is not None:
        if "train_sampling_strategy" in fields:  # transformers 5.x
            settings["train_sampling_strategy"] = strategy
        elif strategy in ("random", "group_by_length"):  # transformers 4.x
            settings["group_by_length"] = strategy == "group_by_length"
        else:
            raise ValueError(
                f"train_sampling_strategy={strategy!r} needs transformers 5; on this version use 'random' or "
                "'group_by_length'."
            )
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise ValueError(f"Unknown training settings {unknown}: see Seq2SeqTrainingArguments for the allowed names.")
    return Seq2SeqTrainingArguments(**settings)


def cpu_bf16_speedup(size: int = 1024, repeats: int = 3, timer=None) -> float:
    """How many times faster this CPU multiplies two `(size, size)` matrices in bfloat16 than in float32 (best of
    `repeats` each, with torch's threads). The CPU flags alone do not tell: bf16 matmuls ran at 2.1-4.4x float32 on
    an AMD EPYC with AVX-512 BF16, at 0.6x on an Intel Xeon that has the flag too, and are emulated, hundreds of
    times slower, on AVX2 CPUs: there a first full-size bf16 product 10x slower or worse ends the measurement, once
    a second one confirms it (in the train command a one-off stall of the first once read 0.05x on the EPYC).
    `timer(dtype, size)`: seconds for one product (tests give a fake one)."""
    import time

    import torch

    def product_seconds(dtype, n):
        a, b = (torch.randn(n, n).to(dtype) for _ in range(2))
        started = time.perf_counter()
        a @ b
        return time.perf_counter() - started

    timer = timer or product_seconds
    timer(torch.float32, size)  # warm-up
    fp32 = min(timer(torch.float32, size) for _ in range(repeats))
    timer(torch.bfloat16, 128)  # the bf16 kernels' one-time set-up (it took 0.3 s once: not the speed)
    first = timer(torch.bfloat16, size)  # warm-up at this shape, and the answer where bf16 is emulated
    if first > 10 * fp32:
        first = min(first, timer(torch.bfloat16, size))
        if first > 10 * fp32:
            return fp32 / first
    return fp32 / min(timer(torch.bfloat16, size) for _ in range(repeats))


def check_cpu_bf16(args: Seq2SeqTrainingArguments, log=print) -> float | None:
    """With `bf16` on for training on the CPU, measure [`cpu_bf16_speedup`] and say what it means: a warning where
    bf16 products are slower than float32 here (bf16 autocast would then train slower). Returns the speedup, or
    None when bf16 is off or training runs on a GPU."""
    import torch

    if not args.bf16 or (torch.cuda.is_available() and not args.use_cpu):
        return None
    speedup = cpu_bf16_speedup()
    if speedup < 1:
        log(f"warning: training.bf16 is on, but bf16 matrix products run at {speedup:.2f}x the speed of float32 on "
            "this CPU: bf16 autocast will train slower than float32 here. Leave training.bf16 off on this machine.")  # fmt: skip
    else:
        log(f"bf16 autocast: bf16 matrix products run {speedup:.1f}x as fast as float32 on this CPU.")
    return speedup


class RNNAttentionTrainer(Seq2SeqTrainer):
    """`Seq2SeqTrainer` that logs the model's teacher forcing ratio beside the training loss, and trains
    without materialising the (B, T, V) logits (`return_logits=False`), which nothing in a training step reads.

    (A callback cannot add the ratio: `Trainer.log` records the logs before it calls `on_log`.)"""

    def compute_loss(self, model, inputs, *args, **kwargs):
        if model.training and self.label_smoother is None and "labels" in inputs:
            inputs = {**inputs, "return_logits": False}
        return super().compute_loss(model, inputs, *args, **kwargs)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        ratio = getattr(self.model, "teacher_forcing_ratio", None)
        if "loss" in logs and ratio is not None:
            logs["teacher_forcing_ratio"] = round(float(ratio), 6)
        super().log(logs, *args, **kwargs)


# ─────────────────────────────────────────────── Metrics ────────────────────────────────────────────────


def build_compute_metrics(tokenizer) -> Callable:
    """`compute_metrics` for `Seq2SeqTrainer(predict_with_generate=True)`: decodes predictions and labels
    (the Trainer pads both with -100, which is replaced by the pad id before decoding)."""

    def compute_metrics(eval_prediction) -> dict[str, float]:
        predictions, labels = eval_prediction.predictions, eval_prediction.label_ids
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        predictions = np.where(predictions < 0, tokenizer.pad_token_id, predictions)
        labels = np.where(labels < 0, tokenizer.pad_token_id, labels)
        decoded = tokenizer.batch_decode(predictions, skip_special_tokens=True)
        references = tokenizer.batch_decode(labels, skip_special_tokens=True)
        return text_metrics(decoded, references)

    return compute_metrics


# ──────────────────────────────────────────── Data preparation ────────────────────────────────────────────


def tokenize_dataset(dataset, tokenizer, max_source_length: int = 128, max_target_length: int = 128):
    """`datasets.map` the `source`/`target` columns to `input_ids`, `attention_mask` and `labels`. Labels are
    not padded here: the collator pads them with -100. (Length-grouped batches group by the source length:
    the Trainer drops columns that `forward` does not take before it builds its sampler.)"""

    def encode(batch):
        encoded = tokenizer(batch["source"], truncation=True, max_length=max_source_length)
        targets = tokenizer(text_target=batch["target"], truncation=True, max_length=max_target_length)
        encoded["labels"] = targets["input_ids"]
        return encoded

    return dataset.map(encode, batched=True, remove_columns=["source", "target"], desc="Tokenizing")

"""Scheduled-sampling schedules and callback, metrics, in-order translation."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import tiny_model

from hf_rnn_attention.training import (
    ScheduledSamplingCallback,
    TeacherForcingSchedule,
    build_compute_metrics,
    text_metrics,
    translate,
)


def test_linear_schedule_is_the_lecture_default():
    schedule = TeacherForcingSchedule()  # linear, per epoch: max(0.1, 1.0 - 0.1 * epoch)
    assert [round(schedule(i), 6) for i in range(12)] == [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.1]
    steeper = TeacherForcingSchedule(kind="linear", slope=0.25, floor=0.3)
    assert [steeper(i) for i in range(5)] == [1.0, 0.75, 0.5, 0.3, 0.3]


def test_exponential_and_inverse_sigmoid_schedules():
    exponential = TeacherForcingSchedule(kind="exponential", k=0.8, floor=0.0)
    assert [exponential(i) for i in range(4)] == pytest.approx([1.0, 0.8, 0.64, 0.512])
    sigmoid = TeacherForcingSchedule(kind="inverse_sigmoid", k=10.0, floor=0.0)
    for i in (0, 5, 20, 100):
        assert sigmoid(i) == pytest.approx(10.0 / (10.0 + math.exp(i / 10.0)))
    assert sigmoid(10**6) == pytest.approx(0.0, abs=1e-12)  # no overflow
    assert TeacherForcingSchedule(kind="constant", ratio=0.75)(123) == 0.75


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(kind="cosine"), "kind"),
        (dict(unit="batch"), "unit"),
        (dict(floor=1.5), "floor"),
        (dict(kind="exponential", k=1.2), "k"),
        (dict(kind="inverse_sigmoid", k=0.5), "k"),
    ],
)
def test_bad_schedules_raise(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TeacherForcingSchedule(**kwargs)


def test_callback_sets_ratio_per_epoch_and_resumes():
    model = tiny_model()
    callback = ScheduledSamplingCallback(TeacherForcingSchedule(kind="linear", slope=0.2, floor=0.1))
    state = SimpleNamespace(epoch=0.0, global_step=0)
    callback.on_train_begin(None, state, None, model=model)
    assert model.teacher_forcing_ratio == 1.0
    state.epoch = 3.0
    callback.on_epoch_begin(None, state, None, model=model)
    assert model.teacher_forcing_ratio == pytest.approx(0.4)
    # a resumed run starts with the trainer state of its checkpoint: same ratio, no reset to 1
    resumed_model = tiny_model()
    resumed = ScheduledSamplingCallback(TeacherForcingSchedule(kind="linear", slope=0.2, floor=0.1))
    resumed.on_train_begin(None, SimpleNamespace(epoch=3.5, global_step=700), None, model=resumed_model)
    assert resumed_model.teacher_forcing_ratio == pytest.approx(0.4)


def test_callback_per_step():
    model = tiny_model()
    callback = ScheduledSamplingCallback(TeacherForcingSchedule(kind="exponential", unit="step", k=0.5, floor=0.0))
    for step in range(4):
        callback.on_step_begin(None, SimpleNamespace(epoch=0.0, global_step=step), None, model=model)
        assert model.teacher_forcing_ratio == pytest.approx(0.5**step)


def test_text_metrics_known_values():
    perfect = text_metrics(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["exact_match"] == 100.0
    mixed = text_metrics(["1994-09-27", "2000-01-02"], ["1994-09-27", "2000-01-01"])
    assert mixed["exact_match"] == 50.0
    cased = text_metrics(["The Cat sat on the mat ."], ["the cat sat on the mat ."])
    assert cased["bleu_lowercase"] == pytest.approx(100.0) and cased["bleu"] < 100.0
    with pytest.raises(ValueError, match="references"):
        text_metrics(["a"], ["a", "b"])


class CharTokenizer:
    """A minimal stand-in: one id per character, pad 0, eos 2."""

    pad_token_id = 0

    def batch_decode(self, rows, skip_special_tokens=True):
        return ["".join(chr(96 + int(t)) for t in row if int(t) > 2) for row in rows]


def test_compute_metrics_replaces_minus_100_before_decoding():
    compute = build_compute_metrics(CharTokenizer())
    predictions = np.array([[1, 3, 4, 2, -100], [1, 5, 6, 7, 2]])
    labels = np.array([[3, 4, 2, -100, -100], [5, 6, 8, 2, -100]])
    metrics = compute(SimpleNamespace(predictions=predictions, label_ids=labels))
    assert metrics["exact_match"] == 50.0


class WordTokenizer:
    """Whitespace tokenizer over a fixed vocabulary, enough to drive translate()."""

    def __init__(self, vocab_size=40):
        self.pad_token_id, self.eos_token_id = 0, 2

    def __call__(self, texts, padding=False, truncation=True, max_length=None, return_tensors=None):
        rows = [[3 + (hash(w) % 30) for w in text.split()] + [2] for text in texts]
        if return_tensors is None:
            return {"input_ids": rows}
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        from transformers import BatchEncoding

        return BatchEncoding({"input_ids": ids, "attention_mask": ids.ne(0).long()})

    def batch_decode(self, rows, skip_special_tokens=True):
        return [" ".join(str(int(t)) for t in row if int(t) > 2) for row in rows]


def test_translate_returns_outputs_in_input_order():
    model = tiny_model()
    tokenizer = WordTokenizer()
    texts = ["a b c d e f", "x", "p q r", "m n", "k l m n o p q r s"]
    together = translate(model, tokenizer, texts, batch_size=2, max_new_tokens=6)
    one_by_one = [translate(model, tokenizer, [text], batch_size=1, max_new_tokens=6)[0] for text in texts]
    assert together == one_by_one


def test_training_arguments_give_length_grouping_under_either_spelling_on_this_transformers():
    """Recipes say `group_by_length: true` (transformers 4.57) or `train_sampling_strategy: group_by_length`
    (5.x); both must turn length-grouped batches on, whichever version runs them."""
    import dataclasses

    from transformers import Seq2SeqTrainingArguments

    from hf_rnn_attention.training import training_arguments

    v5 = "train_sampling_strategy" in {field.name for field in dataclasses.fields(Seq2SeqTrainingArguments)}

    def grouped(args):
        return args.train_sampling_strategy == "group_by_length" if v5 else args.group_by_length is True

    for spelling in ({"group_by_length": True}, {"train_sampling_strategy": "group_by_length"}):
        assert grouped(training_arguments(output_dir="unused", report_to="none", **spelling)), spelling
    for spelling in ({"group_by_length": False}, {"train_sampling_strategy": "random"}, {}):
        assert not grouped(training_arguments(output_dir="unused", report_to="none", **spelling)), spelling
    with pytest.raises(ValueError, match="not both"):
        training_arguments(output_dir="unused", group_by_length=True, train_sampling_strategy="random")
    with pytest.raises(ValueError, match="true or false"):
        training_arguments(output_dir="unused", group_by_length="yes")
    with pytest.raises(ValueError, match="Unknown training settings"):
        training_arguments(output_dir="unused", learning_rat=1e-3)
    if not v5:
        with pytest.raises(ValueError, match="needs transformers 5"):
            training_arguments(output_dir="unused", train_sampling_strategy="batch_rebalance")


def test_trainer_trains_without_the_full_logits_and_evaluates_with_them(tmp_path):
    """RNNAttentionTrainer's training steps pass return_logits=False (no (B, T, V) tensor; the same loss), while
    evaluation, which may read the logits, still gets them."""
    from transformers import Seq2SeqTrainingArguments

    from hf_rnn_attention.training import RNNAttentionTrainer

    model = tiny_model()
    generator = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(3, 40, (5,), generator=generator).tolist(),
             "labels": torch.randint(3, 40, (4,), generator=generator).tolist() + [2]} for _ in range(8)]  # fmt: skip
    seen = []
    model.register_forward_hook(lambda module, args, output: seen.append((module.training, output.logits)))
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2,
                                    report_to=[], save_strategy="no", use_cpu=True)  # fmt: skip
    trainer = RNNAttentionTrainer(model=model, args=args, train_dataset=rows, eval_dataset=rows)
    trainer.train()
    assert [logits for training, logits in seen if training] == [None, None]
    seen.clear()
    trainer.evaluate()
    assert seen and all(not training and logits is not None for training, logits in seen)
    batch = {"input_ids": torch.tensor([rows[0]["input_ids"]]), "labels": torch.tensor([rows[0]["labels"]])}
    model.train()
    torch.testing.assert_close(model(**batch).loss, model(**batch, return_logits=False).loss)


def test_bf16_on_a_cpu_where_it_is_slow_gets_a_warning(monkeypatch):
    """training.bf16 on the CPU: the speed of bf16 products is measured, and a CPU where they are slower than
    float32 gets a warning that names the setting; with bf16 off nothing is measured."""
    from hf_rnn_attention import training

    speedup = training.cpu_bf16_speedup(size=128, repeats=2)
    assert math.isfinite(speedup) and speedup > 0
    messages = []
    args = SimpleNamespace(bf16=True, use_cpu=True)
    monkeypatch.setattr(training, "cpu_bf16_speedup", lambda: 0.01)
    assert training.check_cpu_bf16(args, messages.append) == 0.01
    assert "warning" in messages[-1] and "training.bf16" in messages[-1] and "0.01x" in messages[-1]
    monkeypatch.setattr(training, "cpu_bf16_speedup", lambda: 2.5)
    assert training.check_cpu_bf16(args, messages.append) == 2.5
    assert "warning" not in messages[-1] and "2.5x" in messages[-1]
    monkeypatch.setattr(training, "cpu_bf16_speedup", lambda: pytest.fail("measured with bf16 off"))
    assert training.check_cpu_bf16(SimpleNamespace(bf16=False, use_cpu=True), messages.append) is None


def test_bf16_speed_check_stops_early_where_bf16_is_emulated_but_not_on_one_stall():
    """The bf16 check's decisions, on a fake clock: an emulated bf16 (every product 200x float32) is called after
    two full-size products; one stalled first product is timed again and the CPU's real ratio comes back."""
    from hf_rnn_attention.training import cpu_bf16_speedup

    def fake(bf16_seconds):
        calls = []

        def timer(dtype, size):
            calls.append((dtype, size))
            return 1.0 if dtype == torch.float32 else bf16_seconds(len([c for c in calls if c == (dtype, size)]))

        return timer, calls

    timer, calls = fake(lambda k: 200.0)
    assert cpu_bf16_speedup(size=64, repeats=3, timer=timer) == 1 / 200
    assert calls.count((torch.bfloat16, 64)) == 2  # stopped: no repeats of a 200x product
    timer, calls = fake(lambda k: 20.0 if k == 1 else 0.4)  # the first full-size product stalls once
    assert cpu_bf16_speedup(size=64, repeats=3, timer=timer) == 1 / 0.4
    assert calls.count((torch.bfloat16, 64)) == 5
    timer, _ = fake(lambda k: 0.5)
    assert cpu_bf16_speedup(size=64, repeats=3, timer=timer) == 2.0

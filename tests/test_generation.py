"""generate(): cached decoding equals full recomputation for every decoding mode, and the options work."""

import copy
import itertools

import pytest
import torch
from conftest import DECODER_VARIANTS, random_batch, tiny_model
from transformers import GenerationConfig, GenerationMixin

from hf_rnn_attention import RNNAttentionCache
from hf_rnn_attention.modeling_rnn_attention import CACHE_FIELD

MODES = {
    "greedy": dict(),
    "beam": dict(num_beams=4, num_return_sequences=2),
    "sample": dict(do_sample=True, top_k=10, top_p=0.9, temperature=1.3, num_return_sequences=2),
}


def generate(model, mode, use_cache, batch=3, **extra):
    input_ids, mask = random_batch(batch=3, source_len=7, lengths=[7, 4, 6], seed=5)
    if batch != 3:
        input_ids, mask = random_batch(batch=batch, source_len=7, lengths=[7, 4, 6, 5, 7, 3, 6, 2][:batch], seed=6)
    torch.manual_seed(123)  # sampling draws the same numbers in both runs
    return model.generate(
        input_ids,
        attention_mask=mask,
        max_new_tokens=12,
        use_cache=use_cache,
        return_dict_in_generate=True,
        output_scores=True,
        **MODES[mode],
        **extra,
    )


def noisy_model(**kwargs):
    """A tiny random model whose outputs vary enough that beams really reorder; EOS kept unlikely so
    hypotheses run long enough to test the cache."""
    model = tiny_model(seed=7, init_std=0.5, **kwargs)
    with torch.no_grad():
        model.lm_head.bias[model.config.eos_token_id] = -3.0
    return model


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", DECODER_VARIANTS)
def test_cached_generate_equals_full_recomputation(mode, variant):
    model = noisy_model(attention_type=variant[0], decoder_style=variant[1], input_feeding=variant[2])
    cached = generate(model, mode, use_cache=True)
    full = generate(model, mode, use_cache=False)
    assert cached.sequences.tolist() == full.sequences.tolist()
    assert_running_scores_equal(cached, full, model.config.eos_token_id)


def assert_running_scores_equal(cached, full, eos):
    """Step by step, the scores of every sequence still running are equal (a finished sequence gets no
    decoder step in cached greedy decoding and sampling, so its scores are not computed there)."""
    finished = torch.zeros(cached.sequences.shape[0], dtype=torch.bool)
    for step, (a, b) in enumerate(zip(cached.scores, full.scores, strict=True)):
        if a.shape[0] != finished.shape[0]:  # beam search: scores per beam, and no beam runs past its EOS
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
            continue
        torch.testing.assert_close(a[~finished], b[~finished], atol=1e-5, rtol=1e-5)
        finished |= cached.sequences[:, step + 1] == eos


@pytest.mark.parametrize("mode", ["greedy", "sample"])
@pytest.mark.parametrize("variant", DECODER_VARIANTS[2:])
def test_finished_sentences_get_no_decoder_step(mode, variant):
    """As Joey NMT and OpenNMT-py do: once a sentence has emitted EOS, cached decoding runs the decoder and the
    output layer only for the sentences still running; the outputs equal full recomputation."""
    model = tiny_model(seed=7, init_std=0.5, attention_type=variant[0], decoder_style=variant[1],
                       input_feeding=variant[2])  # fmt: skip
    eos = model.config.eos_token_id  # a sentence runs up to and including the step that emits its EOS
    for bias in torch.arange(1.0, -3.0, -0.25).tolist():  # an EOS bias with which sentences end at different steps
        with torch.no_grad():
            model.lm_head.bias[eos] = bias
        full = generate(model, mode, use_cache=False, batch=8)
        lengths = [row.index(eos) + 1 if eos in row else len(row) for row in full.sequences[:, 1:].tolist()]
        if min(lengths) < max(lengths) - 1:
            break
    assert min(lengths) < max(lengths) - 1, lengths  # some sentences finished early
    rows = []
    model.model.decoder.register_forward_hook(lambda module, args, output: rows.append(args[0].shape[0]))
    cached = generate(model, mode, use_cache=True, batch=8)
    assert cached.sequences.tolist() == full.sequences.tolist()
    assert_running_scores_equal(cached, full, eos)
    assert rows == [sum(length > step for length in lengths) for step in range(len(rows))]  # only running rows


@pytest.mark.parametrize("mode", ["greedy", "beam"])
def test_cached_steps_of_the_bahdanau_model_take_the_step_path(mode, monkeypatch):
    """A cached step (one position) runs `decoder.step`, whose decoding products go through oneDNN, not the fused
    teacher-forcing recurrence (MKL, plus packing for a single position: measured 9.7 against 12.9 ms a step at
    batch 64). Teacher forcing over several positions still takes the fused recurrence."""
    from hf_rnn_attention import modeling_rnn_attention

    model = noisy_model(attention_type="additive", decoder_style="bahdanau", decoder_layers=1)  # fusable
    fused = modeling_rnn_attention.FusedBahdanauRecurrence.apply
    calls = []
    monkeypatch.setattr(modeling_rnn_attention.FusedBahdanauRecurrence, "apply",
                        lambda *args: calls.append(1) or fused(*args))  # fmt: skip
    generate(model, mode, use_cache=True)
    assert calls == []
    input_ids, mask = random_batch(batch=3, source_len=7, lengths=[7, 4, 6], seed=5)
    with torch.no_grad():
        model(input_ids, attention_mask=mask, labels=input_ids)
    assert calls == [1]


@pytest.mark.parametrize("mode", ["greedy", "beam"])
def test_decoding_products_run_on_bucketed_row_counts(mode, monkeypatch):
    """As sentences finish, every oneDNN product of a decoding step (LSTM cell, W_c, output layer) sees its rows
    padded to a `_row_bucket` size: oneDNN caches one primitive per shape, and the shapes stay few."""
    from hf_rnn_attention import modeling_rnn_attention

    if not modeling_rnn_attention.ONEDNN_LINEAR:
        pytest.skip("this torch build has no oneDNN linear")
    product = modeling_rnn_attention._onednn_product
    rows = []
    monkeypatch.setattr(modeling_rnn_attention, "_onednn_product",
                        lambda x, *args: rows.append(x.shape[0]) or product(x, *args))  # fmt: skip
    model = tiny_model(seed=7, init_std=0.5, attention_type="general", decoder_layers=1)
    input_ids, mask = random_batch(batch=24, source_len=7, seed=6)
    lengths = []  # how many sentences (greedy) or beams each step decodes
    model.model.decoder.register_forward_hook(lambda module, args, output: lengths.append(args[0].shape[0]))
    bucket = modeling_rnn_attention._row_bucket
    for bias in torch.arange(2.0, -3.0, -0.25).tolist():  # an EOS bias with which sentences end at different steps
        with torch.no_grad():
            model.lm_head.bias[model.config.eos_token_id] = bias
        rows.clear()
        lengths.clear()
        model.generate(input_ids, attention_mask=mask, max_new_tokens=12, num_beams={"greedy": 1, "beam": 3}[mode])
        if any(bucket(n) != n for n in lengths):
            break
    assert any(bucket(n) != n for n in lengths), lengths  # some steps ran a row count that needs padding
    assert all(bucket(r) == r for r in rows), sorted(set(rows))  # and oneDNN saw only bucket sizes


def test_beam_cache_test_fails_when_reorder_cache_does_nothing(monkeypatch):
    """The equality above depends on reorder_cache: with a no-op reorder, beam search goes wrong."""
    model = noisy_model(attention_type="general", input_feeding=True)
    full = generate(model, "beam", use_cache=False)
    monkeypatch.setattr(RNNAttentionCache, "reorder_cache", lambda self, beam_idx: None)
    broken = generate(model, "beam", use_cache=True)
    assert broken.sequences.tolist() != full.sequences.tolist()


def test_cache_memory_is_computed_once_and_travels_in_the_cache():
    model = noisy_model(attention_type="additive", decoder_style="bahdanau")
    calls = []
    score = model.model.decoder.attention.score
    original = score.project_keys
    score.project_keys = lambda memory: calls.append(memory.shape) or original(memory)
    encoder_calls = []
    model.model.encoder.register_forward_hook(lambda *args: encoder_calls.append(1))
    out = generate(model, "beam", use_cache=True)
    assert len(calls) == 1 and len(encoder_calls) == 1
    assert out.sequences.shape[1] > 5  # many steps ran on the one projection
    assert isinstance(getattr(out, CACHE_FIELD), RNNAttentionCache)
    assert getattr(out, CACHE_FIELD).get_seq_length() == out.sequences.shape[1] - 1


@pytest.mark.parametrize("mode", ["greedy", "beam"])
def test_generate_returns_cross_attentions(mode):
    model = noisy_model(attention_type="general")
    out = generate(model, mode, use_cache=True, output_attentions=True)
    rows = 3 * (4 if mode == "beam" else 1)
    assert len(out.cross_attentions) == len(out.scores)
    for step in out.cross_attentions:
        (weights,) = step
        assert weights.shape == (rows, 1, 7)
        torch.testing.assert_close(weights.sum(-1), torch.ones(rows, 1))
    # the second sentence has 4 real source tokens: no attention on its padding
    second = torch.cat([step[0] for step in out.cross_attentions], dim=1).view(3, -1, len(out.scores), 7)[1]
    assert second[..., 4:].abs().max() == 0


def test_beam_transition_scores_reconstruct_sequence_scores():
    model = noisy_model(attention_type="additive")
    out = generate(model, "beam", use_cache=True, length_penalty=1.0)
    transition = model.compute_transition_scores(out.sequences, out.scores, out.beam_indices, normalize_logits=False)
    lengths = (out.beam_indices >= 0).sum(dim=1)
    reconstructed = transition.sum(dim=1) / lengths
    torch.testing.assert_close(reconstructed, out.sequences_scores, atol=1e-4, rtol=1e-4)


def test_greedy_equals_argmax_of_teacher_forced_logits():
    """Greedy decoding reproduces the model's own argmax under teacher forcing on its output (a reference)."""
    model = noisy_model(attention_type="general", input_feeding=True)
    input_ids, mask = random_batch(batch=3, source_len=7, lengths=[7, 4, 6], seed=5)
    out = model.generate(input_ids, attention_mask=mask, max_new_tokens=10, min_new_tokens=10)
    logits = model(input_ids=input_ids, attention_mask=mask, decoder_input_ids=out[:, :-1]).logits
    logits[..., model.config.eos_token_id] = -float("inf")  # min_new_tokens suppresses EOS
    assert logits.argmax(-1).tolist() == out[:, 1:].tolist()


def test_length_and_repetition_options():
    model = noisy_model(attention_type="general")
    input_ids, mask = random_batch(batch=3, source_len=7, lengths=[7, 4, 6], seed=5)
    with torch.no_grad():
        model.lm_head.bias[model.config.eos_token_id] = 5.0  # EOS is now the favourite
    short = model.generate(input_ids, attention_mask=mask, max_new_tokens=10)
    assert short.shape[1] == 2  # start token + EOS
    forced = model.generate(input_ids, attention_mask=mask, max_new_tokens=10, min_new_tokens=6)
    assert forced.shape[1] >= 8 and not (forced[:, 1:7] == model.config.eos_token_id).any()
    with torch.no_grad():
        model.lm_head.bias[model.config.eos_token_id] = -10.0
    capped = model.generate(input_ids, attention_mask=mask, max_new_tokens=9)
    assert capped.shape[1] == 10
    no_repeat = model.generate(input_ids, attention_mask=mask, max_new_tokens=20, no_repeat_ngram_size=2)
    for row in no_repeat.tolist():
        bigrams = list(zip(row, row[1:], strict=False))
        assert len(bigrams) == len(set(bigrams))
    plain = model.generate(input_ids, attention_mask=mask, max_new_tokens=20)
    penalised = model.generate(input_ids, attention_mask=mask, max_new_tokens=20, repetition_penalty=5.0)
    distinct = lambda seqs: sum(len(set(row)) for row in seqs.tolist())  # noqa: E731
    assert distinct(penalised) > distinct(plain)


def test_seeded_sampling_is_reproducible_and_varies_with_the_seed():
    model = noisy_model(attention_type="general")
    a = generate(model, "sample", use_cache=True).sequences
    b = generate(model, "sample", use_cache=True).sequences
    assert a.tolist() == b.tolist()
    input_ids, mask = random_batch(batch=3, source_len=7, lengths=[7, 4, 6], seed=5)
    torch.manual_seed(999)
    c = model.generate(input_ids, attention_mask=mask, max_new_tokens=12, **MODES["sample"])
    assert c.tolist() != a.tolist()


def test_default_generation_length_lives_in_generation_config():
    model = tiny_model()
    assert model.generation_config.max_length == 128
    input_ids, mask = random_batch(batch=2, source_len=5, lengths=[5, 3], seed=5)
    with torch.no_grad():
        model.lm_head.bias[model.config.eos_token_id] = -10.0  # never stop early
    assert model.generate(input_ids, attention_mask=mask).shape[1] == 128
    assert model.generate(input_ids, attention_mask=mask, max_length=6).shape[1] == 6  # a caller's length wins
    assert model.generate(input_ids, attention_mask=mask, max_new_tokens=3).shape[1] == 4
    assert model.generation_config.decoder_start_token_id == 1
    assert model.generation_config.eos_token_id == 2


def test_manual_incremental_decoding_with_the_cache_matches_full_forward():
    """Stepping forward() with the returned cache (no encoder_outputs) equals one teacher-forced pass,
    and the encoder runs only once."""
    model = noisy_model(attention_type="general", input_feeding=True)
    input_ids, mask = random_batch(batch=3, source_len=7, lengths=[7, 4, 6], seed=5)
    decoder_input_ids = torch.randint(3, 40, (3, 6), generator=torch.Generator().manual_seed(3))
    full = model(input_ids=input_ids, attention_mask=mask, decoder_input_ids=decoder_input_ids).logits
    encoder_calls = []
    model.model.encoder.register_forward_hook(lambda *args: encoder_calls.append(1))
    cache, steps = None, []
    for t in range(6):
        out = model(
            input_ids=input_ids,
            attention_mask=mask,
            decoder_input_ids=decoder_input_ids[:, t : t + 1],
            cache=cache,
            use_cache=True,
        )
        cache = getattr(out, CACHE_FIELD)
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert len(encoder_calls) == 1 and cache.get_seq_length() == 6


@pytest.mark.parametrize("bridge", ["linear", "last", "mean", "zeros"])
@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
def test_cached_beam_search_for_every_bridge_and_cell(bridge, rnn_type):
    model = noisy_model(bridge=bridge, rnn_type=rnn_type, attention_type="additive", decoder_style="bahdanau")
    cached = generate(model, "beam", use_cache=True)
    full = generate(model, "beam", use_cache=False)
    assert cached.sequences.tolist() == full.sequences.tolist()
    torch.testing.assert_close(cached.sequences_scores, full.sequences_scores, atol=1e-5, rtol=1e-5)


# ── beam search that drops finished sentences ──────────────────────────────────────────────────────────────

BEAM_SETTINGS = [  # (num_beams, length_penalty, early_stopping, num_return_sequences, max_new_tokens, extra)
    (4, 1.0, False, 1, 20, {}),
    (4, -0.7, "never", 2, 20, {}),
    (2, 1.0, True, 2, 20, {}),
    (3, 0.0, False, 1, 20, {"no_repeat_ngram_size": 2, "min_new_tokens": 3}),
    (4, 1.0, False, 1, 4, {}),  # every sentence stops at the length limit
    (4, 1.0, False, 3, 20, {"repetition_penalty": 1.3, "bad_words_ids": [[5]]}),
]


def transformers_generate(model, *args, **kwargs):
    """generate() through GenerationMixin's own greedy/sampling and beam search loops: the reference for the
    model's loops."""
    originals = {name: getattr(type(model), name) for name in ("_sample", "_beam_search")}
    for name in originals:
        setattr(type(model), name, getattr(GenerationMixin, name))
    try:
        return model.generate(*args, **kwargs)
    finally:
        for name, method in originals.items():
            setattr(type(model), name, method)


def beam_batch():
    return random_batch(batch=8, source_len=7, lengths=[7, 4, 6, 5, 7, 3, 6, 2], seed=6)


def beam_model():
    """A tiny model with which the sentences of `beam_batch()` end at different steps in beam search."""
    model = tiny_model(seed=7, init_std=0.5, attention_type="general", input_feeding=True)
    with torch.no_grad():
        model.lm_head.bias[model.config.eos_token_id] = 0.4
    return model


@pytest.mark.parametrize(
    "variant", [("general", "luong", True), ("additive", "bahdanau", False), ("dot", "luong", False)]
)
@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
def test_beam_search_drops_finished_sentences_and_equals_transformers_loop(variant, rnn_type):
    """The model's beam search gives transformers' sequences for every length penalty, early-stopping mode,
    number of returned sequences and row-wise logits processor, while decoding fewer rows: a sentence whose
    hypotheses are final leaves the batch."""
    model = tiny_model(seed=7, init_std=0.5, attention_type=variant[0], decoder_style=variant[1],
                       input_feeding=variant[2], rnn_type=rnn_type)  # fmt: skip
    input_ids, mask = beam_batch()
    rows = []
    model.model.decoder.register_forward_hook(lambda module, args, output: rows.append(args[0].shape[0]))
    ours_rows = reference_rows = shrank = 0
    for eos_bias in (0.0, 0.2, 0.4):  # sentences end at different steps at some of these
        with torch.no_grad():
            model.lm_head.bias[model.config.eos_token_id] = eos_bias
        for beams, length_penalty, early_stopping, returned, new_tokens, extra in BEAM_SETTINGS:
            settings = dict(attention_mask=mask, num_beams=beams, length_penalty=length_penalty,
                            max_new_tokens=new_tokens, early_stopping=early_stopping,
                            num_return_sequences=returned, **extra)  # fmt: skip
            rows.clear()
            ours = model.generate(input_ids, **settings)
            ours_rows += sum(rows)
            shrank += len(set(rows)) > 1  # sentences left the batch
            rows.clear()
            reference = transformers_generate(model, input_ids, **settings)
            reference_rows += sum(rows)
            assert ours.tolist() == reference.tolist(), (eos_bias, settings)
    assert shrank >= 3 and ours_rows < 0.95 * reference_rows, (shrank, ours_rows, reference_rows)


def test_beam_search_falls_back_to_transformers_for_what_it_does_not_do():
    """Per-step outputs (`return_dict_in_generate`), a batch-aware logits processor and `use_cache=False` go
    through transformers' loop; the sequences are the same as the model's loop gives."""
    model = beam_model()
    input_ids, mask = beam_batch()
    settings = dict(attention_mask=mask, num_beams=4, max_new_tokens=20)
    ours = model.generate(input_ids, **settings)
    with_scores = model.generate(input_ids, return_dict_in_generate=True, output_scores=True, **settings)
    assert with_scores.sequences.tolist() == ours.tolist()
    assert with_scores.sequences_scores.shape == (8,)
    uncached = model.generate(input_ids, use_cache=False, **settings)
    assert uncached.tolist() == ours.tolist()

    allowed = lambda batch_id, prefix: list(range(3, 40)) if batch_id % 2 else list(range(2, 20))  # noqa: E731
    constrained = model.generate(input_ids, prefix_allowed_tokens_fn=allowed, **settings)
    assert constrained.tolist() == transformers_generate(model, input_ids, prefix_allowed_tokens_fn=allowed,
                                                            **settings).tolist()  # fmt: skip
    assert constrained.tolist() != ours.tolist()


def test_beam_search_test_fails_when_finished_sentences_keep_the_wrong_state(monkeypatch):
    """The equality above depends on dropping the right rows: keeping the first rows instead breaks it."""
    model = beam_model()
    input_ids, mask = beam_batch()
    settings = dict(attention_mask=mask, num_beams=4, max_new_tokens=20)
    reference = transformers_generate(model, input_ids, **settings)
    assert model.generate(input_ids, **settings).tolist() == reference.tolist()
    keep_sentences = RNNAttentionCache.keep_sentences

    def first_sentences(self, sentences, beams):
        return keep_sentences(self, torch.arange(sentences.shape[0]), beams)

    monkeypatch.setattr(RNNAttentionCache, "keep_sentences", first_sentences)
    assert model.generate(input_ids, **settings).tolist() != reference.tolist()


def test_beam_search_stops_a_sentence_once_its_best_hypotheses_cannot_be_beaten(monkeypatch):
    """Without a length penalty, a sentence leaves the beam as soon as its returned hypotheses score above every
    running beam (OpenNMT-py's stop), not only when it has K finished ones (transformers' test): the same
    sequences as transformers' loop, fewer decoded rows. With a positive length penalty the test does not apply."""
    # a model whose later hypotheses beat earlier finished ones: stopping on the worst running beam would fail
    model = tiny_model(seed=7, init_std=1.0, attention_type="general", input_feeding=True)
    input_ids, mask = beam_batch()
    rows = []
    model.model.decoder.register_forward_hook(lambda module, args, output: rows.append(args[0].shape[0]))
    decoded = {}
    for eos_bias, returned, penalty in itertools.product((0.0, 0.1, 0.2), (1, 2), (0.0, -0.5)):
        with torch.no_grad():  # sentences end at different steps
            model.lm_head.bias[model.config.eos_token_id] = eos_bias
        settings = dict(attention_mask=mask, num_beams=4, max_new_tokens=20, length_penalty=penalty,
                        num_return_sequences=returned)  # fmt: skip
        reference = transformers_generate(model, input_ids, **settings)
        rows.clear()
        assert model.generate(input_ids, **settings).tolist() == reference.tolist()
        decoded[returned] = decoded.get(returned, 0) + sum(rows)
        with monkeypatch.context() as patch:
            patch.setattr(
                type(model),
                "_best_hypotheses_are_final",
                staticmethod(lambda finished, *args: torch.zeros_like(finished[:, 0], dtype=torch.bool)),
            )
            rows.clear()
            assert model.generate(input_ids, **settings).tolist() == reference.tolist()
            key = (returned, "transformers' test only")
            decoded[key] = decoded.get(key, 0) + sum(rows)
    assert decoded[1] < decoded[2] <= decoded[2, "transformers' test only"], decoded
    assert decoded[1] < 0.9 * decoded[1, "transformers' test only"], decoded

    def not_for_a_positive_penalty(*args):
        raise AssertionError("the exact stop needs scores that never grow")

    monkeypatch.setattr(type(model), "_best_hypotheses_are_final", staticmethod(not_for_a_positive_penalty))
    model.generate(input_ids, attention_mask=mask, num_beams=4, max_new_tokens=20, length_penalty=1.0)
    # nor with a processor that can raise a score (a positive sequence bias), which the model's loop still runs
    rows.clear()
    model.generate(input_ids, attention_mask=mask, num_beams=4, max_new_tokens=20, length_penalty=0.0,
                   sequence_bias={(5,): 2.0})  # fmt: skip
    assert len(set(rows)) > 1, rows  # the model's own loop (it drops finished sentences), not transformers'


def test_beam_search_decodes_the_prompt_once_per_sentence():
    """generate() gives beam search each sentence K times; the keys and the first step are computed once per
    sentence and the state copied to its beams, which share the sentence's memory (the same logits, state and next
    step as computing every row), and for every row when the K copies differ."""
    model = beam_model()
    input_ids, mask = beam_batch()
    rows = []
    model.model.decoder.register_forward_hook(lambda module, args, output: rows.append(args[0].shape[0]))
    model.generate(input_ids, attention_mask=mask, num_beams=4, max_new_tokens=20)
    assert rows[:2] == [8, 32], rows

    copies = 3
    with torch.no_grad():
        encoder_outputs = model.get_encoder()(input_ids, mask)
    expanded = {
        "encoder_outputs": type(encoder_outputs)(
            **{key: value.repeat_interleave(copies, dim=0) for key, value in encoder_outputs.items()}
        ),
        "attention_mask": mask.repeat_interleave(copies, dim=0),
    }
    prompt = torch.full((8 * copies, 1), model.config.decoder_start_token_id)
    with torch.no_grad():
        every_row = model._decode_prompt(prompt, expanded)
        logits, cache = model._decode_prompt_once_per_sentence(prompt, expanded, copies)
        torch.testing.assert_close(logits, every_row.logits[:, -1], rtol=1e-6, atol=1e-6)
        assert cache.memory_groups == copies  # one memory row per sentence, shared by its beams
        for ours, reference in zip(
            (*(tensor.repeat_interleave(copies, dim=0) for tensor in cache.memory), *cache.state),
            (*every_row[CACHE_FIELD].memory, *every_row[CACHE_FIELD].state),
            strict=True,
        ):
            torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)
        # a step with the shared memory gives what a step with the memory repeated for every beam gives
        tokens = torch.randint(3, 40, (8 * copies, 1))
        shared = model.model.decoder(tokens, cache.memory, cache.state, cache.input_feed)
        repeated = model.model.decoder(tokens, every_row[CACHE_FIELD].memory, cache.state, cache.input_feed)
        for ours, reference in zip(shared, repeated, strict=True):
            if isinstance(ours, tuple):
                for a, b in zip(ours, reference, strict=True):
                    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
            elif ours is not None:
                torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)
        rows.clear()
        expanded["attention_mask"][1, -1] = 0  # one copy differs: every row is decoded
        logits, _ = model._decode_prompt_once_per_sentence(prompt, expanded, copies)
        assert rows == [8 * copies]
        assert torch.equal(logits, model._decode_prompt(prompt, expanded).logits[:, -1])


GREEDY_SETTINGS = [  # (max_new_tokens, extra)
    (20, {}),
    (20, {"no_repeat_ngram_size": 2, "min_new_tokens": 3}),
    (20, {"repetition_penalty": 1.3, "bad_words_ids": [[5]]}),
    (4, {}),  # every sentence stops at the length limit
    (None, {"max_length": 9}),
]


@pytest.mark.parametrize("variant", DECODER_VARIANTS)
@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
def test_greedy_loop_drops_finished_sentences_and_equals_transformers_loop(variant, rnn_type, monkeypatch):
    """The model's greedy loop gives transformers' sequences for every row-wise logits processor and stopping
    criterion, while a sentence that has emitted its EOS leaves the batch: the decoder and the logits processors
    see only the sentences still running (transformers' loop processes every row to the end)."""
    from transformers.generation import logits_process

    model = tiny_model(seed=7, init_std=0.5, attention_type=variant[0], decoder_style=variant[1],
                       input_feeding=variant[2], rnn_type=rnn_type)  # fmt: skip
    input_ids, mask = beam_batch()
    rows, processed = [], []
    model.model.decoder.register_forward_hook(lambda module, args, output: rows.append(args[0].shape[0]))
    penalty = logits_process.RepetitionPenaltyLogitsProcessor.__call__
    monkeypatch.setattr(logits_process.RepetitionPenaltyLogitsProcessor, "__call__",
                        lambda self, ids, scores: processed.append(scores.shape[0]) or penalty(self, ids, scores))  # fmt: skip
    shrank = spied = 0
    for eos_bias in (0.0, 0.125, 0.25, 0.375):  # sentences end at different steps at some of these
        with torch.no_grad():
            model.lm_head.bias[model.config.eos_token_id] = eos_bias
        for new_tokens, extra in GREEDY_SETTINGS:
            settings = dict(attention_mask=mask, **extra) | ({"max_new_tokens": new_tokens} if new_tokens else {})
            rows.clear()
            processed.clear()
            ours = model.generate(input_ids, **settings)
            shrank += len(set(rows)) > 1
            sequences = ours[:, 1:].tolist()
            lengths = [row.index(2) + 1 if 2 in row else len(row) for row in sequences]  # EOS included
            running = [sum(length > step for length in lengths) for step in range(len(sequences[0]))]
            assert rows == [8] + running[1:]  # the prompt, then one step per token for the running sentences
            assert processed in ([], running)
            spied += bool(processed)
            processed.clear()
            reference = transformers_generate(model, input_ids, **settings)
            assert ours.tolist() == reference.tolist(), (eos_bias, settings)
            assert processed in ([], [8] * len(running))
    assert shrank >= 2 and spied == 4  # the repetition-penalty setting ran the spied processor at every bias


def greedy_model():
    """A tiny model with which the sentences of `beam_batch()` end at different steps in greedy decoding."""
    model = tiny_model(seed=7, init_std=0.5, attention_type="general")
    with torch.no_grad():
        model.lm_head.bias[model.config.eos_token_id] = 0.0
    return model


def test_greedy_loop_test_fails_when_finished_sentences_keep_the_wrong_state(monkeypatch):
    """The equality above depends on dropping the right rows: keeping the first rows instead breaks it."""
    model = greedy_model()
    input_ids, mask = beam_batch()
    settings = dict(attention_mask=mask, max_new_tokens=20)
    reference = transformers_generate(model, input_ids, **settings)
    assert model.generate(input_ids, **settings).tolist() == reference.tolist()
    drop_rows = RNNAttentionCache.drop_rows

    def drop_the_last_rows(self, stopped):  # as many rows as stopped, but the last ones
        kept = int((~stopped).sum())
        drop_rows(self, torch.arange(stopped.shape[0]) >= kept)
        return torch.arange(kept)

    monkeypatch.setattr(RNNAttentionCache, "drop_rows", drop_the_last_rows)
    assert model.generate(input_ids, **settings).tolist() != reference.tolist()


def test_greedy_loop_falls_back_to_transformers_for_what_it_does_not_do():
    """Per-step outputs, a streamer, a batch-aware logits processor and `use_cache=False` go through
    transformers' loop and give the sequences of the model's loop."""
    from transformers.generation.streamers import BaseStreamer

    class Collect(BaseStreamer):
        def __init__(self):
            self.tokens = []

        def put(self, value):
            self.tokens.append(value.tolist())

        def end(self):
            pass

    model = greedy_model()
    input_ids, mask = beam_batch()
    settings = dict(attention_mask=mask, max_new_tokens=20)
    ours = model.generate(input_ids, **settings)
    assert len({(row + [2]).index(2) for row in ours.tolist()}) > 1  # sentences end at different steps
    with_scores = model.generate(input_ids, return_dict_in_generate=True, output_scores=True, **settings)
    assert with_scores.sequences.tolist() == ours.tolist()
    assert len(with_scores.scores) == ours.shape[1] - 1
    streamer = Collect()
    streamed = model.generate(input_ids[:1], attention_mask=mask[:1], streamer=streamer, max_new_tokens=20)
    assert [token for step in streamer.tokens for token in torch.tensor(step).view(-1).tolist()] == streamed[0].tolist()
    assert streamed.tolist() == ours[:1, : streamed.shape[1]].tolist()
    assert model.generate(input_ids, use_cache=False, **settings).tolist() == ours.tolist()
    allowed = lambda batch_id, prefix: list(range(3, 40)) if batch_id % 2 else list(range(2, 20))  # noqa: E731
    constrained = model.generate(input_ids, prefix_allowed_tokens_fn=allowed, **settings)
    assert constrained.tolist() == transformers_generate(model, input_ids, prefix_allowed_tokens_fn=allowed,
                                                       **settings).tolist()  # fmt: skip
    assert constrained.tolist() != ours.tolist()


@pytest.mark.parametrize("mode", ["greedy", "greedy-transformers", "sample"])
def test_a_sentence_that_predicts_padding_keeps_decoding(mode):
    """Padding fed to a sentence that has not emitted its EOS is a real input (the model predicted it), not a
    finished sentence: every cached loop equals full recomputation, which feeds it like any other token."""
    model = tiny_model(seed=7, init_std=0.5)
    input_ids, mask = beam_batch()
    with torch.no_grad():
        model.lm_head.bias[model.config.pad_token_id] = 0.2  # padding predicted mid-sentence by some sentences
        model.lm_head.bias[model.config.eos_token_id] = -1.0
    settings = dict(attention_mask=mask, max_new_tokens=12)
    if mode == "sample":
        settings.update(do_sample=True, top_k=3)
    runs = {}
    for use_cache in (True, False):
        torch.manual_seed(0)
        if mode == "greedy-transformers":
            runs[use_cache] = transformers_generate(model, input_ids, use_cache=use_cache, **settings)
        else:
            runs[use_cache] = model.generate(input_ids, use_cache=use_cache, **settings)
    padding_inside = runs[False][:, 1:-1] == model.config.pad_token_id
    assert padding_inside.any() and not padding_inside.all()
    assert runs[True].tolist() == runs[False].tolist()


def continuous_sources(count=13, seed=3):
    """Source sentences of 1-9 tokens in [3, 40): no pad, start or EOS inside."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 10, (count,), generator=generator).tolist()
    return [torch.randint(3, 40, (n,), generator=generator).tolist() for n in lengths]


def generate_one_by_one(model, sources, **settings):
    """generate() on each sentence alone: the reference for continuous batching."""
    rows = []
    for ids in sources:
        mask = torch.ones(1, len(ids), dtype=torch.long)
        row = model.generate(torch.tensor([ids]), attention_mask=mask, **settings)[0]
        ends = (row[1:] == model.config.eos_token_id).nonzero()
        rows.append(row[: 2 + int(ends[0])].tolist() if ends.numel() else row.tolist())
    return rows


@pytest.mark.parametrize("variant", DECODER_VARIANTS)
@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
def test_continuous_batching_gives_each_sentence_its_generate_output(variant, rnn_type):
    """generate_continuous decodes at most batch_size sentences at a time and admits the next ones as sentences
    end: each sentence gets generate()'s greedy output on its own, in the input order, with fewer decoder steps
    than batch after batch."""
    model = tiny_model(seed=7, init_std=0.5, attention_type=variant[0], decoder_style=variant[1],
                       input_feeding=variant[2], rnn_type=rnn_type)  # fmt: skip
    sources = continuous_sources()
    rows = []
    model.model.decoder.register_forward_hook(lambda module, args, output: rows.append(args[0].shape[0]))
    admitted_late = False
    for eos_bias in (0.0, 0.1, 0.2, 0.3, 0.4):  # sentences end at different steps at some of these
        with torch.no_grad():
            model.lm_head.bias[model.config.eos_token_id] = eos_bias
        reference = generate_one_by_one(model, sources, max_new_tokens=12)
        rows.clear()
        ours = model.generate_continuous(sources, batch_size=4, max_new_tokens=12)
        assert [row.tolist() for row in ours] == reference, eos_bias
        assert max(rows) <= 4
        steps = len(rows)
        rows.clear()
        for start in range(0, len(sources), 4):  # generate() batch after batch
            input_ids, mask = model._pad_sources(sources[start : start + 4])
            model.generate(input_ids, attention_mask=mask, max_new_tokens=12)
        admitted_late |= steps < len(rows)
    assert admitted_late


def test_running_memory_maps_beam_rows_to_their_sentences_memory():
    """With the K beams of each sentence sharing its memory row ([`repeat_state`]), the memory of running state rows
    is that of their sentences (row // K); it is kept while the rows stay the same and taken again when they
    change or the beams are reordered."""
    from hf_rnn_attention.modeling_rnn_attention import Memory

    generator = torch.Generator().manual_seed(0)
    memory = Memory(torch.randn(2, 5, 6, generator=generator), torch.randn(2, 5, 4, generator=generator),
                    torch.randn(2, 1, 5, generator=generator))  # fmt: skip
    cache = RNNAttentionCache(memory, (torch.randn(1, 2, 3, generator=generator),))
    cache.repeat_state(3)  # 2 sentences × 3 beams = 6 state rows, the memory still 2 rows
    assert cache.memory_groups == 3 and cache.state[0].shape[1] == 6 and cache.memory.values.shape[0] == 2
    rows = torch.tensor([1, 4, 5])  # sentence 0's second beam, sentence 1's last two
    running = cache.running_memory(rows)
    for got, full in zip(running, memory, strict=True):
        torch.testing.assert_close(got, full[[0, 1, 1]], rtol=0, atol=0)
    assert cache.running_memory(torch.tensor([1, 4, 5])) is running  # the same rows: kept
    other = cache.running_memory(torch.tensor([0, 2]))  # both of sentence 0
    assert other is not running and torch.equal(other.values, memory.values[[0, 0]])
    cache.reorder_cache(torch.tensor([2, 1, 0, 5, 4, 3]))
    assert cache.running_memory(torch.tensor([0, 2])) is not other  # reordered beams: taken again


def test_continuous_batching_pool_moves_only_the_rows_it_must():
    """The pool's memory buffers: drop_rows moves the running rows beyond the kept range into the stopped rows'
    places (the others stay where they are) and returns the old row of each; append_rows pads the shorter memory
    with zeros and the padding bias, growing the buffers when needed; trim_source narrows the view."""
    from hf_rnn_attention.modeling_rnn_attention import Memory

    generator = torch.Generator().manual_seed(0)

    def cache(rows, source_len):
        memory = Memory(torch.randn(rows, source_len, 6, generator=generator),
                        torch.randn(rows, source_len, 4, generator=generator), torch.zeros(rows, 1, source_len))  # fmt: skip
        state = tuple(torch.randn(2, rows, 5, generator=generator) for _ in range(2))
        return RNNAttentionCache(memory, state, torch.randn(rows, 5, generator=generator))

    pool = cache(6, 7)
    memory, state, feed = pool.memory, pool.state, pool.input_feed
    pool.reserve_rows(8)
    order = pool.drop_rows(torch.tensor([True, False, False, True, False, False]))
    assert order.tolist() == [4, 1, 2, 5]  # rows 4 and 5 fill the places of rows 0 and 3; rows 1 and 2 stay
    for got, full in zip(pool.memory, memory, strict=True):
        assert torch.equal(got, full[order])
    assert all(torch.equal(got, full[:, order]) for got, full in zip(pool.state, state, strict=True))
    assert torch.equal(pool.input_feed, feed[order])
    before = [tensor.clone() for tensor in pool.memory]
    longer = cache(3, 9)
    pool.append_rows(longer)  # 7 rows of 8, but a longer source (9): the buffers grow
    low = torch.finfo(torch.float32).min
    values, keys, bias = pool.memory
    assert values.shape == (7, 9, 6) and torch.equal(values[:4, :7], before[0])
    assert torch.equal(values[4:], longer.memory.values)
    assert not values[:4, 7:].any() and not keys[:4, 7:].any() and bool((bias[:4, :, 7:] == low).all())
    assert torch.equal(bias[:4, :, :7], before[2]) and not bias[4:].any()
    shorter = cache(3, 2)
    pool.append_rows(shorter)  # 10 rows: the buffers grow
    values, keys, bias = pool.memory
    assert values.shape == (10, 9, 6) and torch.equal(values[7:, :2], shorter.memory.values)
    assert not values[7:, 2:].any() and bool((bias[7:, :, 2:] == low).all())
    assert pool.state[0].shape == (2, 10, 5) and pool.input_feed.shape == (10, 5)
    wide = [tensor.clone() for tensor in pool.memory]
    pool.trim_source(5)
    assert torch.equal(pool.memory.values, wide[0][:, :5]) and torch.equal(pool.memory.keys, wide[1][:, :5])
    assert torch.equal(pool.memory.mask_bias, wide[2][..., :5])
    pool.trim_source(3)  # rows in use reach 3 positions at most: the view narrows
    pointers = [buffer.data_ptr() for buffer in pool._buffers]
    order = pool.drop_rows(torch.tensor([False] * 8 + [True, True]))  # the last two end: nothing moves
    assert order.tolist() == list(range(8)) and pool.memory.values.shape == (8, 3, 6)
    narrow = cache(1, 2)
    pool.append_rows(narrow)  # room and width: in place, only its row written
    assert [buffer.data_ptr() for buffer in pool._buffers] == pointers
    assert pool.memory.values.shape == (9, 3, 6) and torch.equal(pool.memory.values[8, :2], narrow.memory.values[0])
    assert not pool.memory.values[8, 2:].any() and float(pool.memory.mask_bias[8, 0, 2]) == low
    assert torch.equal(pool.memory.values[:8], wide[0][:8, :3])
    pool.drop_rows(torch.ones(9, dtype=torch.bool))  # every row ends
    assert pool.memory.values.shape[0] == 0 and pool.state[0].shape == (2, 0, 5)


def test_continuous_batching_test_fails_when_admitted_sentences_attend_to_padding(monkeypatch):
    """The equality above depends on the padding bias of the memory that admitting sentences pads: padding it
    with bias 0 (weight on the zero padding) breaks it."""
    import torch.nn.functional as F

    from hf_rnn_attention import modeling_rnn_attention

    model = tiny_model(seed=7, init_std=0.5, attention_type="general")
    with torch.no_grad():
        model.lm_head.bias[model.config.eos_token_id] = 0.0
    sources = sorted(continuous_sources(), key=len)  # shortest first: admitting longer sentences pads the pool
    reference = generate_one_by_one(model, sources, max_new_tokens=12)
    settings = dict(batch_size=4, max_new_tokens=12, sort_by_length=False)
    assert [row.tolist() for row in model.generate_continuous(sources, **settings)] == reference

    def pad_with_bias_zero(memory, source_len):
        extra = source_len - memory.values.shape[1]
        values, keys = (F.pad(tensor, (0, 0, 0, extra)) for tensor in memory[:2])
        return modeling_rnn_attention.Memory(values, keys, F.pad(memory.mask_bias, (0, extra), value=0.0))

    monkeypatch.setattr(modeling_rnn_attention, "_pad_source", pad_with_bias_zero)
    assert [row.tolist() for row in model.generate_continuous(sources, **settings)] != reference


def test_continuous_batching_hands_what_it_does_not_do_to_generate():
    """Beam search and logits processors go to generate() batch by batch; bad arguments get clear errors."""
    model = greedy_model()  # sentences of several lengths, which each setting below changes
    sources = continuous_sources(count=6)
    greedy = generate_one_by_one(model, sources, max_new_tokens=10)
    for settings in (dict(num_beams=3), dict(no_repeat_ngram_size=2), dict(repetition_penalty=1.3)):
        ours = model.generate_continuous(sources, batch_size=4, max_new_tokens=10, **settings)
        reference = generate_one_by_one(model, sources, max_new_tokens=10, **settings)
        assert reference != greedy, settings  # the setting changes the output: plain greedy decoding would fail
        assert [row.tolist() for row in ours] == reference
    # a generation_config is the base that the other kwargs update, as in generate()
    config = copy.deepcopy(model.generation_config)
    config.num_beams = 3
    ours = model.generate_continuous(sources, batch_size=4, max_new_tokens=10, generation_config=config)
    assert [row.tolist() for row in ours] == generate_one_by_one(model, sources, max_new_tokens=10, num_beams=3)
    config.num_beams = 1
    ours = model.generate_continuous(sources, batch_size=4, max_new_tokens=10, generation_config=config)
    assert [row.tolist() for row in ours] == greedy
    # and, as in generate(), what a given generation_config leaves unset comes from the model's
    model.generation_config.num_beams = 3
    given = GenerationConfig(max_new_tokens=10)
    ours = model.generate_continuous(sources, batch_size=4, generation_config=given)
    assert [row.tolist() for row in ours] == generate_one_by_one(model, sources, generation_config=given) != greedy
    model.generation_config.num_beams = 1
    with pytest.raises(ValueError, match="batch_size"):
        model.generate_continuous(sources, batch_size=0)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_continuous_batching_decodes_longest_first_and_answers_in_the_given_order(monkeypatch, num_beams):
    """generate_continuous encodes the sentences longest first (stable for equal lengths) unless told not to, on
    both paths, and returns each sentence's output in the given order."""
    model = greedy_model()
    sources = continuous_sources(count=9)
    encoded, original = [], model._pad_sources
    monkeypatch.setattr(model, "_pad_sources", lambda ids: encoded.extend(ids) or original(ids))
    reference = generate_one_by_one(model, sources, max_new_tokens=10, num_beams=num_beams)
    for sort_by_length, order in ((True, sorted(sources, key=len, reverse=True)), (False, sources)):
        encoded.clear()
        ours = model.generate_continuous(sources, batch_size=4, max_new_tokens=10, num_beams=num_beams,
                                         sort_by_length=sort_by_length)  # fmt: skip
        assert [row.tolist() for row in ours] == reference
        assert encoded == order != (sources if sort_by_length else sorted(sources, key=len, reverse=True))


def test_continuous_batching_takes_settings_given_as_their_defaults(monkeypatch):
    """Settings given at their default value (min_length=0, repetition_penalty=1.0, no_repeat_ngram_size=0: a
    generation_config written out in full) still decode continuously, with generate()'s outputs; the same
    settings at other values go to generate() batch by batch."""
    model = greedy_model()
    sources = continuous_sources(count=6)
    continuous, original = [], model._greedy_continuous
    monkeypatch.setattr(model, "_greedy_continuous", lambda *args: continuous.append(1) or original(*args))
    greedy = generate_one_by_one(model, sources, max_new_tokens=10)
    defaults = dict(min_length=0, repetition_penalty=1.0, no_repeat_ngram_size=0, typical_p=1.0)
    ours = model.generate_continuous(sources, batch_size=4, max_new_tokens=10, **defaults)
    assert [row.tolist() for row in ours] == greedy and len(continuous) == 1
    ours = model.generate_continuous(sources, batch_size=4, generation_config=GenerationConfig(max_new_tokens=10,
                                                                                             **defaults))  # fmt: skip
    assert [row.tolist() for row in ours] == greedy and len(continuous) == 2
    for settings in (dict(min_length=4), dict(repetition_penalty=1.3)):
        ours = model.generate_continuous(sources, batch_size=4, max_new_tokens=10, **settings)
        assert [row.tolist() for row in ours] == generate_one_by_one(model, sources, max_new_tokens=10, **settings)
        assert len(continuous) == 2, settings
    with pytest.raises(ValueError, match="num_return_sequences"):
        model.generate_continuous(sources, num_beams=3, num_return_sequences=2)

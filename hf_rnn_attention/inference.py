"""Using a trained model: in-order batched translation and the text metrics (sacreBLEU, chrF, exact match).

Kept apart from `training.py` so that decoding imports neither `Seq2SeqTrainer` nor its dependencies
(measured: about 95 MB less peak memory for a decoding process); sacreBLEU is imported by the metrics alone
(5 MB that the translate command does not need).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def text_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """sacreBLEU (13a, cased, detokenized), lowercased BLEU, chrF and exact match (in %)."""
    import sacrebleu

    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references.")
    exact = 100.0 * sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True))
    return {
        "bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
        "bleu_lowercase": sacrebleu.corpus_bleu(predictions, [references], lowercase=True).score,
        "chrf": sacrebleu.corpus_chrf(predictions, [references]).score,
        "exact_match": exact / max(1, len(predictions)),
    }


@torch.inference_mode()
def translate(
    model, tokenizer, texts: Sequence[str], batch_size: int = 64, max_source_length: int = 256, **generate_kwargs
) -> list[str]:
    """Generate for every text, in input order, at most `batch_size` texts at a time. The texts are tokenized and
    decoded through `model.generate_continuous` (sorted by their number of tokens, longest first: the least
    padding; greedy: continuous batching; otherwise generate() batch by batch), which returns them in input
    order."""
    texts = list(texts)
    if generate_kwargs.get("num_return_sequences", 1) != 1:
        raise ValueError("translate() returns one output per text: num_return_sequences must be 1.")
    if "max_new_tokens" in generate_kwargs and "max_length" in generate_kwargs:
        raise ValueError("Pass max_new_tokens or max_length, not both.")
    if "max_new_tokens" in generate_kwargs:  # as a length (decoder start token included), like generation_config's
        generate_kwargs["max_length"] = generate_kwargs.pop("max_new_tokens") + 1
    if not texts:
        return []
    source_ids = tokenizer(texts, truncation=True, max_length=max_source_length)["input_ids"]
    model.eval()
    generated = model.generate_continuous(source_ids, batch_size=batch_size, **generate_kwargs)
    return [text.strip() for text in tokenizer.batch_decode(generated, skip_special_tokens=True)]

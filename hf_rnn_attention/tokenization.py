"""A joint subword tokenizer for source and target, trained with 🤗 `tokenizers` and wrapped for transformers.

Source and target share one vocabulary (and the model shares one embedding table), so one tokenizer is
trained on the training text of both sides. The pipeline is SentencePiece-like and reversible:

* normalizer: ``NFKC`` (then ``Lowercase`` when asked);
* pre-tokenizer: ``Metaspace("▁", prepend_scheme="always")`` — every space becomes a ``▁`` glued to the
  front of the following word — then ``Punctuation("isolated")`` and, when ``split_digits``,
  ``Digits(individual_digits=True)``. Metaspace runs *first*: the later splits only cut a ``▁``-marked
  word into pieces (``"▁running."`` → ``"▁running"``, ``"."``; ``"▁1994"`` → ``"▁"``, ``"1"``, ``"9"``,
  ``"9"``, ``"4"``), they never move or drop a ``▁``. So every space of the input is still a ``▁``
  somewhere in the pieces, and no ``▁`` exists where there was no space;
* decoder: ``Metaspace`` with the same replacement and prepend scheme: it turns each ``▁`` back into a
  space and drops only the one it prepended at the start. Hence
  ``decode(encode(s), skip_special_tokens=True) == s`` for whitespace-normalised text (single spaces, no
  leading/trailing space, NFKC-stable characters seen in training), in any script (German, English,
  Korean, ...). Punctuation costs nothing here: a ``,`` after a word simply has no ``▁``;
* model: BPE (default) or Unigram, both with ``<unk>``;
* post-processor: ``TemplateProcessing`` appending ``</s>`` to every sequence (no ``<s>``: the model's
  decoder starts from ``decoder_start_token_id`` = 1 itself).

The special tokens come first, at fixed ids: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``<unk>`` 3, as the
model's config expects (pad 0, bos/decoder start 1, eos 2).

Labels are tokenized with ``tokenizer(text_target=...)`` (transformers 5 has no ``as_target_tokenizer``);
here they are the same ids as ``tokenizer(text)``.

:func:`save_tokenizer` writes a folder that ``AutoTokenizer.from_pretrained`` loads on transformers 5.x
and on 4.57 (transformers 5 writes ``"tokenizer_class": "TokenizersBackend"``, unknown to 4.x; it is
rewritten to ``"PreTrainedTokenizerFast"``, a name both know).

Command line::

    python -m hf_rnn_attention.tokenization --files train.de.gz train.en.gz --vocab-size 8000 --output tok/
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

__all__ = [
    "SPECIAL_TOKENS",
    "MODELS",
    "build_tokenizer",
    "main",
    "save_tokenizer",
    "tokenizer_from_file",
    "train_tokenizer",
    "train_tokenizer_from_dataset",
]

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
"""Special tokens, in id order: pad 0, bos / decoder start 1, eos 2, unk 3."""

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = SPECIAL_TOKENS
MODELS = ("bpe", "unigram")
"""The subword models :func:`train_tokenizer` can train."""

METASPACE = "▁"  # U+2581, as in SentencePiece
TOKENIZER_CLASS = "PreTrainedTokenizerFast"  # a class name transformers 4.x and 5.x both resolve
MODEL_INPUT_NAMES = ["input_ids", "attention_mask"]  # no token_type_ids


def build_tokenizer(model: str = "bpe", lowercase: bool = False, split_digits: bool = True) -> Tokenizer:
    """Return an untrained ``tokenizers.Tokenizer`` with this module's pipeline (see the module docstring).

    Args:
        model: ``"bpe"`` or ``"unigram"``.
        lowercase: add a ``Lowercase`` normalizer after ``NFKC``.
        split_digits: split every digit into its own pre-token.

    Raises:
        ValueError: ``model`` is not one of :data:`MODELS`.
    """
    model = _check_model(model)
    if model == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    else:
        tokenizer = Tokenizer(models.Unigram())

    steps = [normalizers.NFKC()]
    if lowercase:
        steps.append(normalizers.Lowercase())
    tokenizer.normalizer = normalizers.Sequence(steps)

    # Metaspace first, so that the later splits never separate a "▁" from the place of its space.
    pieces: list[pre_tokenizers.PreTokenizer] = [
        pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True),
        pre_tokenizers.Punctuation(behavior="isolated"),
    ]
    if split_digits:
        pieces.append(pre_tokenizers.Digits(individual_digits=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(pieces)
    tokenizer.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True)
    return tokenizer


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 8000,
    model: str = "bpe",
    min_frequency: int = 2,
    lowercase: bool = False,
    split_digits: bool = True,
) -> PreTrainedTokenizerFast:
    """Train a joint subword tokenizer on ``texts`` and wrap it as a transformers fast tokenizer.

    Args:
        texts: the training sentences — source and target lines together (any iterable, consumed once).
        vocab_size: the largest vocabulary, special tokens included (the trained one can be smaller when
            the text is small).
        model: ``"bpe"`` (default) or ``"unigram"``.
        min_frequency: BPE only: the least count of a pair to be merged (Unigram has no such setting).
        lowercase: lowercase everything (then decoding gives the lowercased text back).
        split_digits: split numbers into single digits (``"1994"`` → ``1 9 9 4``).

    Returns:
        A ``PreTrainedTokenizerFast`` with pad/bos/eos/unk at ids 0/1/2/3 that appends ``</s>`` to every
        sequence, pads on the right with 0 and returns ``input_ids`` and ``attention_mask`` only.

    Raises:
        ValueError: ``model`` is not ``"bpe"``/``"unigram"``, or ``vocab_size`` is too small.
    """
    model = _check_model(model)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ValueError(
            f"vocab_size must be an integer >= {len(SPECIAL_TOKENS) + 1} "
            f"(the {len(SPECIAL_TOKENS)} special tokens and at least one other), got {vocab_size!r}"
        )
    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of sentences, not a single string")

    tokenizer = build_tokenizer(model, lowercase=lowercase, split_digits=split_digits)
    if model == "bpe":
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            show_progress=False,
        )
    else:
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            unk_token=UNK_TOKEN,
            show_progress=False,
        )
    tokenizer.train_from_iterator(iter(texts), trainer=trainer)

    for expected_id, token in enumerate(SPECIAL_TOKENS):
        actual_id = tokenizer.token_to_id(token)
        if actual_id != expected_id:
            raise RuntimeError(f"special token {token!r} got id {actual_id}, expected {expected_id}")

    eos_id = SPECIAL_TOKENS.index(EOS_TOKEN)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS_TOKEN}",
        pair=f"$A {EOS_TOKEN} $B {EOS_TOKEN}",
        special_tokens=[(EOS_TOKEN, eos_id)],
    )
    return _wrap(tokenizer)


def tokenizer_from_file(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """A ready tokenizer from a ``tokenizers`` JSON file trained elsewhere (e.g. a shared joint BPE): the special
    tokens it lacks (``<pad> <s> </s> <unk>``) are added after its pieces and ``</s>`` is appended to every
    sequence, as for a tokenizer trained here. The pieces and their ids are kept as they are."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} does not exist (expected a `tokenizers` JSON file).")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as error:
        raise ValueError(f"{path} is not a `tokenizers` JSON file: {error}") from error
    missing = [token for token in SPECIAL_TOKENS if tokenizer.token_to_id(token) is None]
    tokenizer.add_special_tokens(missing)
    eos_id = tokenizer.token_to_id(EOS_TOKEN)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS_TOKEN}", pair=f"$A {EOS_TOKEN} $B {EOS_TOKEN}", special_tokens=[(EOS_TOKEN, eos_id)]
    )
    return _wrap(tokenizer)


def _wrap(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """The transformers fast tokenizer around a trained ``tokenizers.Tokenizer``."""
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        model_input_names=list(MODEL_INPUT_NAMES),
        padding_side="right",
        # The cleanup removes spaces before punctuation ("a , b" -> "a, b"): never exact, so off.
        clean_up_tokenization_spaces=False,
    )
    wrapped.padding_side = "right"
    return wrapped


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: str | os.PathLike) -> list[str]:
    """Save ``tokenizer`` to ``directory`` so that transformers 5.x and 4.57 both load it with ``AutoTokenizer``.

    Calls ``tokenizer.save_pretrained(directory)`` and then rewrites ``tokenizer_config.json``:
    ``tokenizer_class`` becomes ``"PreTrainedTokenizerFast"`` (transformers 5 writes ``"TokenizersBackend"``,
    which 4.x cannot resolve) and ``model_input_names``, ``padding_side`` and
    ``clean_up_tokenization_spaces`` are written explicitly, so that no ``token_type_ids`` come back and
    padding stays on the right after loading.

    Returns:
        The paths of the saved files.
    """
    directory = os.fspath(directory)
    saved = [str(path) for path in tokenizer.save_pretrained(directory)]
    config_path = os.path.join(directory, "tokenizer_config.json")
    with open(config_path, encoding="utf-8") as handle:
        config: dict[str, Any] = json.load(handle)
    config["tokenizer_class"] = TOKENIZER_CLASS
    config["model_input_names"] = list(tokenizer.model_input_names)
    config["padding_side"] = tokenizer.padding_side
    config["clean_up_tokenization_spaces"] = False
    for token_name in ("pad_token", "bos_token", "eos_token", "unk_token"):
        value = getattr(tokenizer, token_name, None)
        if value is not None:
            config[token_name] = str(value)
    # transformers 4.x reads `extra_special_tokens` as a dict of named tokens; 5.x may write a list.
    if isinstance(config.get("extra_special_tokens"), list) and not config["extra_special_tokens"]:
        del config["extra_special_tokens"]
    with open(config_path, "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=2, ensure_ascii=False, sort_keys=True)
        handle.write("\n")
    if config_path not in saved:
        saved.append(config_path)
    return saved


def _dataset_texts(dataset: Any, columns: Sequence[str], batch_size: int) -> Iterator[str]:
    """Yield the strings of ``columns``, batch by batch (a batch's column after the other)."""
    for batch in dataset.iter(batch_size=batch_size):
        for column in columns:
            for text in batch[column]:
                if text:
                    yield text


def train_tokenizer_from_dataset(
    dataset: Any,
    vocab_size: int = 8000,
    model: str = "bpe",
    columns: Sequence[str] = ("source", "target"),
    batch_size: int = 1000,
    **kwargs: Any,
) -> PreTrainedTokenizerFast:
    """Train the joint tokenizer on the ``"source"`` and ``"target"`` columns of a 🤗 ``datasets`` dataset.

    Args:
        dataset: a ``datasets.Dataset``, or a ``DatasetDict`` (its ``"train"`` split is used).
        vocab_size: see :func:`train_tokenizer`.
        model: see :func:`train_tokenizer`.
        columns: the string columns to train on.
        batch_size: rows read at a time (the text is streamed, never collected into one list).
        **kwargs: passed on to :func:`train_tokenizer` (``min_frequency``, ``lowercase``, ``split_digits``).

    Raises:
        ValueError: a ``DatasetDict`` without a ``"train"`` split, or a missing column.
    """
    if isinstance(dataset, dict):  # DatasetDict is a dict of splits
        if "train" not in dataset:
            raise ValueError(f"dataset has no 'train' split (splits: {sorted(dataset)})")
        dataset = dataset["train"]
    names = list(getattr(dataset, "column_names", None) or [])
    missing = [column for column in columns if column not in names]
    if missing:
        raise ValueError(f"dataset has no column(s) {missing} (columns: {names})")
    return train_tokenizer(
        _dataset_texts(dataset, list(columns), batch_size), vocab_size=vocab_size, model=model, **kwargs
    )


def _check_model(model: str) -> str:
    """``model`` lowercased, if it is one of :data:`MODELS`."""
    if not isinstance(model, str) or model.lower() not in MODELS:
        raise ValueError(f"model must be one of {', '.join(repr(m) for m in MODELS)}, got {model!r}")
    return model.lower()


def _read_lines(paths: Iterable[str | os.PathLike]) -> Iterator[str]:
    """The non-empty lines of text files (``.gz`` files are decompressed), without line endings."""
    for path in paths:
        opener = gzip.open if os.fspath(path).endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as handle:
            for line in handle:
                line = line.rstrip("\r\n")
                if line.strip():
                    yield line


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: train a joint tokenizer on the lines of text files and save it with :func:`save_tokenizer`."""
    parser = argparse.ArgumentParser(
        prog="hf-rnn-attention tokenizer",
        description="Train one joint subword tokenizer on the lines of the given files (plain or .gz).",
    )
    parser.add_argument("--files", nargs="+", required=True, help="training text files, one sentence a line")
    parser.add_argument("--vocab-size", type=int, default=8000, help="largest vocabulary size (default 8000)")
    parser.add_argument("--model", choices=MODELS, default="bpe", help="subword model (default bpe)")
    parser.add_argument("--min-frequency", type=int, default=2, help="BPE: least count of a merged pair")
    parser.add_argument("--lowercase", action="store_true", help="lowercase all text")
    parser.add_argument("--no-split-digits", action="store_true", help="keep numbers whole")
    parser.add_argument("--output", required=True, help="folder to save the tokenizer to")
    parser.add_argument("--overwrite", action="store_true", help="replace a tokenizer already saved in --output")
    args = parser.parse_args(argv)
    if (Path(args.output) / "tokenizer.json").exists() and not args.overwrite:
        raise SystemExit(f"{args.output} already holds a tokenizer; pass --overwrite to replace it.")

    tokenizer = train_tokenizer(
        _read_lines(args.files),
        vocab_size=args.vocab_size,
        model=args.model,
        min_frequency=args.min_frequency,
        lowercase=args.lowercase,
        split_digits=not args.no_split_digits,
    )
    save_tokenizer(tokenizer, args.output)
    print(f"saved a {args.model} tokenizer with {len(tokenizer)} tokens to {args.output}")
    return 0


if __name__ == "__main__":
    main()

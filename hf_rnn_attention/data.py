"""Parallel text for training, as `datasets` objects.

Every loader here returns a `datasets.Dataset` (or a `datasets.DatasetDict` of them) with exactly two string
columns, ``"source"`` and ``"target"``. The readers are strict: a ragged pair of files, an empty line, bytes
that are not UTF-8, a short TSV row or a bad JSON line raise `ParallelDataError`, whose message names the
file and the 1-based line number.

Readers (plain text or gzip, chosen by a ``.gz`` suffix):

- `read_parallel_files(source_path, target_path)`: two line-aligned text files;
- `read_tsv(path, source_column=0, target_column=1)`: one tab-separated file (no quoting);
- `read_jsonl(path, source_key="source", target_key="target")`: JSON lines, either ``{"source": ..., "target": ...}``
  or the Hub translation layout ``{"translation": {"de": ..., "en": ...}}`` with language codes as keys;
- `load_hub_dataset(name, config, ...)`: `datasets.load_dataset`, then a ``translation`` column or two named columns.

Synthetic tasks (deterministic for a seed): `make_date_task` (human-written dates in `DATE_FORMATS` to ISO 8601)
and `make_copy_task` (random symbols, copied or reversed). `split_dataset` makes a seeded train/validation/test
split.

`load_data(spec, seed)` is the one entry point a training config uses. The spec is a dict in one of these forms::

    {"task": "date" | "copy" | "reverse", "num_examples": 20000, "validation_size": 0.05, "test_size": 0.05}
        (copy and reverse also take "min_length", "max_length" and "vocabulary", as `make_copy_task` does)
    {"files": {"train": {"source": "train.de", "target": "train.en"},
               "validation": {"tsv": "valid.tsv"},
               "test": {"jsonl": "test.jsonl", "source_key": "de", "target_key": "en"}}}
    {"hub": {"name": "wmt16", "config": "de-en", "source_lang": "de", "target_lang": "en"}}

A fourth form, ``{"multi30k": {"root": PATH, "source_lang": "de", "target_lang": "en"}}``, is short for
``{"files": multi30k_files(PATH, "de", "en")}``.

Every form also takes ``"max_examples"`` (an int for every split, or a dict from split name to int) and
``"lowercase": true``. In the ``files`` and ``hub`` forms a missing ``validation`` or ``test`` split is cut from
``train`` (``validation_size`` / ``test_size``, default 0.05 each). `multi30k_files(root)` returns the
``files`` value for the Multi30k task 1 layout.
"""

from __future__ import annotations

import calendar
import datetime
import gzip
import json
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict, Features, Value

__all__ = [
    "DATE_FORMATS",
    "ParallelDataError",
    "format_date",
    "load_data",
    "load_hub_dataset",
    "make_copy_task",
    "make_date_task",
    "multi30k_files",
    "read_jsonl",
    "read_parallel_files",
    "read_tsv",
    "split_dataset",
]

PathLike = str | os.PathLike

FEATURES = Features({"source": Value("string"), "target": Value("string")})


class ParallelDataError(ValueError):
    """Bad parallel data; the message names the file and the 1-based line number."""


def _error(path: PathLike, line_number: int, problem: str) -> ParallelDataError:
    return ParallelDataError(f"{os.fspath(path)}, line {line_number}: {problem}")


def _to_dataset(sources: list[str], targets: list[str]) -> Dataset:
    return Dataset.from_dict({"source": sources, "target": targets}, features=FEATURES)


# --------------------------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------------------------


def _open_binary(path: PathLike):
    if os.fspath(path).endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _read_lines(path: PathLike) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, text without its line ending) for each line of a UTF-8 (or gzip) file.

    Lines are split on ``\\n`` only (so U+2028 and friends stay inside a line); one trailing ``\\r`` is removed,
    and a byte-order mark at the start of the file is dropped.
    """
    with _open_binary(path) as handle:
        for line_number, raw in enumerate(handle, start=1):
            raw = raw.removesuffix(b"\n").removesuffix(b"\r")
            if line_number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise _error(path, line_number, f"not valid UTF-8 ({error.reason} at byte {error.start})") from None
            yield line_number, text


def _read_text_file(path: PathLike) -> list[str]:
    lines = []
    for line_number, text in _read_lines(path):
        if not text.strip():
            raise _error(path, line_number, "empty line")
        lines.append(text)
    if not lines:
        raise ParallelDataError(f"{os.fspath(path)}: the file is empty (no lines)")
    return lines


def read_parallel_files(source_path: PathLike, target_path: PathLike) -> Dataset:
    """Read two line-aligned UTF-8 text files (plain or ``.gz``): line i of one translates line i of the other."""
    sources = _read_text_file(source_path)
    targets = _read_text_file(target_path)
    if len(sources) != len(targets):
        raise ParallelDataError(
            f"ragged parallel files: {os.fspath(source_path)} has {len(sources)} lines "
            f"but {os.fspath(target_path)} has {len(targets)} lines"
        )
    return _to_dataset(sources, targets)


def _check_column_index(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a column number >= 0, got {value!r}")


def read_tsv(path: PathLike, source_column: int = 0, target_column: int = 1) -> Dataset:
    """Read a tab-separated UTF-8 file (plain or ``.gz``); fields are split on tabs, with no quoting."""
    _check_column_index("source_column", source_column)
    _check_column_index("target_column", target_column)
    needed = max(source_column, target_column) + 1
    sources, targets = [], []
    for line_number, text in _read_lines(path):
        fields = text.split("\t")
        if len(fields) < needed:
            raise _error(path, line_number, f"{len(fields)} tab-separated column(s), need at least {needed}")
        for column in (source_column, target_column):
            if not fields[column].strip():
                raise _error(path, line_number, f"empty field in column {column}")
        sources.append(fields[source_column])
        targets.append(fields[target_column])
    if not sources:
        raise ParallelDataError(f"{os.fspath(path)}: the file is empty (no lines)")
    return _to_dataset(sources, targets)


def _json_value(record: dict, key: str, path: PathLike, line_number: int) -> str:
    if key in record:
        value = record[key]
    elif isinstance(record.get("translation"), dict) and key in record["translation"]:
        value = record["translation"][key]
    else:
        available = sorted(record)
        if isinstance(record.get("translation"), dict):
            available += [f"translation.{code}" for code in sorted(record["translation"])]
        raise _error(path, line_number, f"missing key {key!r} (found: {', '.join(available) or 'nothing'})")
    if not isinstance(value, str):
        raise _error(path, line_number, f"value of {key!r} is {type(value).__name__}, not a string")
    if not value.strip():
        raise _error(path, line_number, f"value of {key!r} is empty")
    return value


def read_jsonl(path: PathLike, source_key: str = "source", target_key: str = "target") -> Dataset:
    """Read JSON lines (plain or ``.gz``): one object per line with string values under the two keys.

    The keys may also be language codes inside a ``"translation"`` object, the Hub layout
    ``{"translation": {"de": "...", "en": "..."}}``.
    """
    sources, targets = [], []
    for line_number, text in _read_lines(path):
        if not text.strip():
            raise _error(path, line_number, "empty line")
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            raise _error(path, line_number, f"invalid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise _error(path, line_number, f"expected a JSON object, got {type(record).__name__}")
        sources.append(_json_value(record, source_key, path, line_number))
        targets.append(_json_value(record, target_key, path, line_number))
    if not sources:
        raise ParallelDataError(f"{os.fspath(path)}: the file is empty (no lines)")
    return _to_dataset(sources, targets)


# --------------------------------------------------------------------------------------------------------------------
# The Hub
# --------------------------------------------------------------------------------------------------------------------


def load_hub_dataset(
    name: str,
    config: str | None = None,
    source_lang: str | None = None,
    target_lang: str | None = None,
    source_column: str | None = None,
    target_column: str | None = None,
    split: str | None = None,
    **kwargs: Any,
) -> DatasetDict:
    """`datasets.load_dataset(name, config, split=split, **kwargs)`, mapped to source/target columns.

    Give `source_lang`/`target_lang` for a ``translation`` column (``{"de": ..., "en": ...}``), or
    `source_column`/`target_column` for two plain columns. With a `split`, the result holds that one split,
    keyed by its name without a slice (``"train[:1000]"`` becomes ``"train"``).
    """
    loaded = datasets.load_dataset(name, config, split=split, **kwargs)
    if isinstance(loaded, Dataset):
        loaded = DatasetDict({split.split("[")[0]: loaded})
    return _to_source_target(loaded, source_lang, target_lang, source_column, target_column)


def _translation_languages(dataset: Dataset) -> list[str]:
    feature = dataset.features["translation"]
    if isinstance(feature, datasets.Translation):
        return list(feature.languages)
    if isinstance(feature, dict):
        return list(feature)
    return []


def _to_source_target(
    dataset_dict: DatasetDict,
    source_lang: str | None,
    target_lang: str | None,
    source_column: str | None,
    target_column: str | None,
) -> DatasetDict:
    """Map every split of a loaded DatasetDict to exactly the columns ``source`` and ``target``.

    Named columns win; else a ``translation`` column with the two language codes; else existing
    ``source``/``target`` columns are kept. Anything else is a ValueError that lists the available columns.
    """
    if (source_column is None) != (target_column is None):
        raise ValueError("give both source_column and target_column, or neither")
    if (source_lang is None) != (target_lang is None):
        raise ValueError("give both source_lang and target_lang, or neither")
    mapped = {}
    for split_name, dataset in dataset_dict.items():
        mapped[split_name] = _split_to_source_target(
            split_name, dataset, source_lang, target_lang, source_column, target_column
        )
    return DatasetDict(mapped)


def _split_to_source_target(
    split_name: str,
    dataset: Dataset,
    source_lang: str | None,
    target_lang: str | None,
    source_column: str | None,
    target_column: str | None,
) -> Dataset:
    columns = dataset.column_names
    if source_column is not None:
        missing = [column for column in (source_column, target_column) if column not in columns]
        if missing:
            raise ValueError(
                f"split {split_name!r} has no column(s) {', '.join(map(repr, missing))}; "
                f"available columns: {', '.join(columns)}"
            )
        return _select_pair(dataset, lambda batch: (batch[source_column], batch[target_column]))
    if source_lang is not None and "translation" in columns:
        languages = _translation_languages(dataset)
        missing = [lang for lang in (source_lang, target_lang) if lang not in languages]
        if missing:
            raise ValueError(
                f"split {split_name!r}: the translation column has no language(s) {', '.join(map(repr, missing))}; "
                f"available languages: {', '.join(languages)}"
            )

        def from_translation(batch: dict) -> tuple[list[str], list[str]]:
            pairs = batch["translation"]
            return [pair[source_lang] for pair in pairs], [pair[target_lang] for pair in pairs]

        return _select_pair(dataset, from_translation)
    if source_lang is None and "source" in columns and "target" in columns:
        return _select_pair(dataset, lambda batch: (batch["source"], batch["target"]))
    raise ValueError(
        f"cannot find source/target in split {split_name!r}: give source_lang/target_lang for a 'translation' "
        f"column, or source_column/target_column; available columns: {', '.join(columns)}"
    )


def _select_pair(dataset: Dataset, pick) -> Dataset:
    def to_pair(batch: dict) -> dict:
        sources, targets = pick(batch)
        return {"source": sources, "target": targets}

    return dataset.map(to_pair, batched=True, remove_columns=dataset.column_names, features=FEATURES)


# --------------------------------------------------------------------------------------------------------------------
# Synthetic tasks
# --------------------------------------------------------------------------------------------------------------------

MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
KOREAN_WEEKDAYS = ["월요일", "화요일", "수요일", "목요일", "금요일", "토요일", "일요일"]

FIRST_YEAR = 1950
LAST_YEAR = 2049


def _ordinal(day: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, ..., 21st, 22nd, 23rd, ..., 31st."""
    if 11 <= day % 100 <= 13:
        suffix = "th"
    else:
        suffix = {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def _format_parts(d: datetime.date) -> dict[str, str]:
    month = MONTHS[d.month - 1]
    weekday = WEEKDAYS[d.weekday()]
    return {
        "Y": f"{d.year:04d}",
        "YY": f"{d.year % 100:02d}",
        "M": str(d.month),
        "MM": f"{d.month:02d}",
        "D": str(d.day),
        "DD": f"{d.day:02d}",
        "Do": _ordinal(d.day),
        "Month": month,
        "Mon": month[:3],
        "Weekday": weekday,
        "Wkd": weekday[:3],
        "KoWeekday": KOREAN_WEEKDAYS[d.weekday()],
    }


# Format name -> template over the parts of `_format_parts`; the comment shows 1994-09-27 (a Tuesday).
_TEMPLATES = {
    "month_day_year": "{Month} {D}, {Y}",  # September 27, 1994
    "month_day_year_lower": "{Month} {D}, {Y}",  # september 27, 1994 (lowercased below)
    "month_day_year_upper": "{Month} {D}, {Y}",  # SEPTEMBER 27, 1994 (uppercased below)
    "abbr_month_day_year": "{Mon} {D}, {Y}",  # Sep 27, 1994
    "day_month_year": "{D} {Month} {Y}",  # 27 September 1994
    "day_abbr_month_year": "{D} {Mon} {Y}",  # 27 Sep 1994
    "weekday_month_day_year": "{Weekday}, {Month} {D}, {Y}",  # Tuesday, September 27, 1994
    "weekday_month_day_year_upper": "{Weekday}, {Month} {D}, {Y}",  # TUESDAY, SEPTEMBER 27, 1994
    "abbr_weekday_day_abbr_month_year": "{Wkd}, {D} {Mon} {Y}",  # Tue, 27 Sep 1994
    "month_ordinal_day_year": "{Month} {Do}, {Y}",  # September 27th, 1994
    "the_ordinal_day_of_month_year": "the {Do} of {Month}, {Y}",  # the 27th of September, 1994
    "m/d/yy": "{M}/{D}/{YY}",  # 9/27/94 (month first)
    "m/d/yyyy": "{M}/{D}/{Y}",  # 9/27/1994 (month first)
    "mm/dd/yyyy": "{MM}/{DD}/{Y}",  # 09/27/1994 (month first)
    "dd/mm/yyyy": "{DD}/{MM}/{Y}",  # 27/09/1994 (day first: make_date_task uses it only for days 13-31)
    "dd.mm.yyyy": "{DD}.{MM}.{Y}",  # 27.09.1994 (day first)
    "d.m.yyyy": "{D}.{M}.{Y}",  # 27.9.1994 (day first)
    "yyyy/mm/dd": "{Y}/{MM}/{DD}",  # 1994/09/27
    "yyyy.m.d": "{Y}.{M}.{D}",  # 1994.9.27
    "iso": "{Y}-{MM}-{DD}",  # 1994-09-27
    "korean": "{Y}년 {M}월 {D}일",  # 1994년 9월 27일
    "korean_weekday": "{Y}년 {M}월 {D}일 {KoWeekday}",  # 1994년 9월 27일 화요일
    "korean_short_year": "{YY}년 {M}월 {D}일",  # 94년 9월 27일
    "korean_dots": "{Y}. {M}. {D}.",  # 1994. 9. 27.
}

DATE_FORMATS: list[str] = list(_TEMPLATES)
"""The names of the formats `format_date` knows (and `make_date_task` draws from, uniformly)."""


def format_date(date: datetime.date, fmt: str) -> str:
    """Write `date` in the format named `fmt` (one of `DATE_FORMATS`).

    Two-digit years (``m/d/yy``, ``korean_short_year``) read back as 19xx for 50-99 and 20xx for 00-49, so
    they are unambiguous for years 1950-2049.
    """
    if fmt not in _TEMPLATES:
        raise ValueError(f"unknown date format {fmt!r}; known formats: {', '.join(DATE_FORMATS)}")
    text = _TEMPLATES[fmt].format(**_format_parts(date))
    if fmt.endswith("_lower"):
        return text.lower()
    if fmt.endswith("_upper"):
        return text.upper()
    return text


def _random_date(rng: random.Random) -> datetime.date:
    year = rng.randint(FIRST_YEAR, LAST_YEAR)
    days_in_year = 366 if calendar.isleap(year) else 365
    return datetime.date(year, 1, 1) + datetime.timedelta(days=rng.randrange(days_in_year))


def _is_unambiguous(date: datetime.date, fmt: str) -> bool:
    """False for day-first slashes with a day that could be a month: 05/09/1994 would read as May 9 (m/d/yyyy)."""
    return fmt != "dd/mm/yyyy" or date.day > 12


def make_date_task(num_examples: int, seed: int = 0) -> Dataset:
    """Date normalisation: a date written in one of `DATE_FORMATS` -> ISO 8601 ``YYYY-MM-DD``.

    Years are uniform over 1950-2049, the day uniform within the year and the format uniform over
    `DATE_FORMATS` (day-first ``dd/mm/yyyy`` only for days 13-31, so that no slash date is both month-first
    and day-first). Every source string has exactly one target.
    """
    _check_count("num_examples", num_examples)
    rng = random.Random(seed)
    sources, targets = [], []
    for _ in range(num_examples):
        date = _random_date(rng)
        fmt = rng.choice(DATE_FORMATS)
        while not _is_unambiguous(date, fmt):
            fmt = rng.choice(DATE_FORMATS)
        sources.append(format_date(date, fmt))
        targets.append(date.isoformat())
    return _to_dataset(sources, targets)


def make_copy_task(
    num_examples: int,
    seed: int = 0,
    reverse: bool = False,
    min_length: int = 3,
    max_length: int = 12,
    vocabulary: str | Sequence[str] = "abcdefghijklmnopqrstuvwxyz",
) -> Dataset:
    """Copy (or reverse) a sequence: the source is `min_length`-`max_length` random symbols from `vocabulary`,
    separated by spaces; the target is the same sequence, reversed when `reverse` is true."""
    _check_count("num_examples", num_examples)
    if not 1 <= min_length <= max_length:
        raise ValueError(f"need 1 <= min_length <= max_length, got {min_length} and {max_length}")
    symbols = list(vocabulary)
    if not symbols or any(not symbol or symbol != symbol.strip() or " " in symbol for symbol in symbols):
        raise ValueError("vocabulary must be a non-empty sequence of symbols without spaces")
    rng = random.Random(seed)
    sources, targets = [], []
    for _ in range(num_examples):
        sequence = [rng.choice(symbols) for _ in range(rng.randint(min_length, max_length))]
        sources.append(" ".join(sequence))
        targets.append(" ".join(reversed(sequence) if reverse else sequence))
    return _to_dataset(sources, targets)


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")


# --------------------------------------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------------------------------------


def _split_count(name: str, size: float | int, total: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int | float):
        raise ValueError(f"{name} must be a fraction in [0, 1) or a count, got {size!r}")
    if isinstance(size, float):
        if not 0.0 <= size < 1.0:
            raise ValueError(f"{name} as a fraction must be in [0, 1), got {size}")
        return round(size * total)
    if not 0 <= size <= total:
        raise ValueError(f"{name} as a count must be in [0, {total}], got {size}")
    return size


def split_dataset(
    dataset: Dataset, validation_size: float | int = 0.05, test_size: float | int = 0.05, seed: int = 0
) -> DatasetDict:
    """Shuffle and split into ``train``/``validation``/``test`` (disjoint, covering every row), seeded.

    A float size is a fraction of the whole dataset (rounded to a count), an int is a number of rows.
    """
    total = len(dataset)
    num_validation = _split_count("validation_size", validation_size, total)
    num_test = _split_count("test_size", test_size, total)
    num_held_out = num_validation + num_test
    if num_held_out >= total and total > 0:
        raise ValueError(f"validation ({num_validation}) and test ({num_test}) leave no training rows out of {total}")
    empty = dataset.select([])
    if num_held_out == 0:
        return DatasetDict({"train": dataset.shuffle(seed=seed), "validation": empty, "test": empty})
    first = dataset.train_test_split(test_size=num_held_out, seed=seed)
    held_out = first["test"]
    if num_test == 0:
        validation, test = held_out, empty
    elif num_validation == 0:
        validation, test = empty, held_out
    else:
        second = held_out.train_test_split(test_size=num_test, seed=seed)
        validation, test = second["train"], second["test"]
    return DatasetDict({"train": first["train"], "validation": validation, "test": test})


# --------------------------------------------------------------------------------------------------------------------
# load_data: the entry point for a training config
# --------------------------------------------------------------------------------------------------------------------

_COMMON_KEYS = {"max_examples", "lowercase"}
_SPLIT_SIZE_KEYS = {"validation_size", "test_size"}
_TASK_KEYS = {"task", "num_examples"} | _SPLIT_SIZE_KEYS | _COMMON_KEYS
_COPY_TASK_KEYS = {"min_length", "max_length", "vocabulary"}
_FILES_KEYS = {"files"} | _SPLIT_SIZE_KEYS | _COMMON_KEYS
_HUB_KEYS = {"hub"} | _SPLIT_SIZE_KEYS | _COMMON_KEYS
_MULTI30K_KEYS = {"multi30k"} | _COMMON_KEYS
_MULTI30K_ENTRY_KEYS = {"root", "source_lang", "target_lang"}
_HUB_ENTRY_KEYS = {
    "name",
    "config",
    "source_lang",
    "target_lang",
    "source_column",
    "target_column",
    "split",
    "revision",
    "data_dir",
    "data_files",
}
_SPLIT_FILE_FORMS = {
    "source": ({"source", "target"}, set()),
    "tsv": ({"tsv"}, {"source_column", "target_column"}),
    "jsonl": ({"jsonl"}, {"source_key", "target_key"}),
}
TASKS = ("date", "copy", "reverse")


def _check_keys(where: str, given: dict, allowed: set[str], required: set[str] = frozenset()) -> None:
    if not isinstance(given, dict):
        raise ValueError(f"{where} must be a dict, got {type(given).__name__}")
    allowed_text = ", ".join(sorted(allowed))
    for key in given:
        if key not in allowed:
            raise ValueError(f"unknown key {key!r} in {where}; allowed keys: {allowed_text}")
    for key in sorted(required):
        if key not in given:
            raise ValueError(f"missing required key {key!r} in {where}; allowed keys: {allowed_text}")


def load_data(spec: dict, seed: int = 0) -> DatasetDict:
    """Load the data a training config describes (see the module docstring for the forms).

    Returns a DatasetDict with ``train``, ``validation`` and ``test`` (and any further split a ``files`` spec
    names); `seed` drives synthetic tasks and the splits cut from ``train``.
    """
    forms = [key for key in ("task", "files", "hub", "multi30k") if isinstance(spec, dict) and key in spec]
    if len(forms) != 1:
        given = sorted(spec) if isinstance(spec, dict) else repr(spec)
        raise ValueError(f"the data spec needs exactly one of the keys 'task', 'files', 'hub', 'multi30k'; got {given}")
    if forms == ["task"]:
        data = _load_task(spec, seed)
    elif forms == ["files"]:
        _check_keys("the data spec", spec, _FILES_KEYS, {"files"})
        data = _add_missing_splits(_load_files(spec["files"]), spec, seed)
    elif forms == ["hub"]:
        _check_keys("the data spec", spec, _HUB_KEYS, {"hub"})
        data = _add_missing_splits(_load_hub(spec["hub"]), spec, seed)
    else:
        _check_keys("the data spec", spec, _MULTI30K_KEYS, {"multi30k"})
        _check_keys("the 'multi30k' spec", spec["multi30k"], _MULTI30K_ENTRY_KEYS, {"root"})
        data = _load_files(multi30k_files(**spec["multi30k"]))
    if "max_examples" in spec:
        data = _cap_splits(data, spec["max_examples"])
    if spec.get("lowercase", False):
        data = data.map(_lowercase, batched=True)
    return data


def _load_task(spec: dict, seed: int) -> DatasetDict:
    task = spec["task"]
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; allowed tasks: {', '.join(TASKS)}")
    if task == "date":
        _check_keys("the data spec", spec, _TASK_KEYS, {"num_examples"})
        dataset = make_date_task(spec["num_examples"], seed=seed)
    else:
        _check_keys("the data spec", spec, _TASK_KEYS | _COPY_TASK_KEYS, {"num_examples"})
        options = {key: spec[key] for key in _COPY_TASK_KEYS if key in spec}
        dataset = make_copy_task(spec["num_examples"], seed=seed, reverse=task == "reverse", **options)
    return split_dataset(dataset, spec.get("validation_size", 0.05), spec.get("test_size", 0.05), seed=seed)


def _load_split_files(split_name: str, entry: dict) -> Dataset:
    where = f"files[{split_name!r}]"
    forms = [key for key in _SPLIT_FILE_FORMS if isinstance(entry, dict) and key in entry]
    if len(forms) != 1:
        raise ValueError(f"{where} needs exactly one of: 'source' with 'target', 'tsv', 'jsonl'; got {entry!r}")
    required, optional = _SPLIT_FILE_FORMS[forms[0]]
    _check_keys(where, entry, required | optional, required)
    if forms[0] == "source":
        return read_parallel_files(entry["source"], entry["target"])
    if forms[0] == "tsv":
        return read_tsv(entry["tsv"], entry.get("source_column", 0), entry.get("target_column", 1))
    return read_jsonl(entry["jsonl"], entry.get("source_key", "source"), entry.get("target_key", "target"))


def _load_files(files: dict) -> DatasetDict:
    if not isinstance(files, dict) or "train" not in files:
        raise ValueError(
            "missing required key 'train' in the 'files' spec; allowed keys: train (required), validation, test "
            f"and any other split name; got {files!r}"
        )
    return DatasetDict({split_name: _load_split_files(split_name, entry) for split_name, entry in files.items()})


def _load_hub(hub: dict) -> DatasetDict:
    _check_keys("the 'hub' spec", hub, _HUB_ENTRY_KEYS, {"name"})
    options = dict(hub)
    return load_hub_dataset(options.pop("name"), options.pop("config", None), **options)


def _add_missing_splits(data: DatasetDict, spec: dict, seed: int) -> DatasetDict:
    """Cut a missing ``validation`` and/or ``test`` split out of ``train``; complain about sizes that go unused."""
    for split_name in ("validation", "test"):
        if split_name in data and f"{split_name}_size" in spec:
            raise ValueError(f"'{split_name}_size' is given but the data already has a {split_name!r} split")
    missing = [split_name for split_name in ("validation", "test") if split_name not in data]
    if not missing:
        return data
    if "train" not in data:  # e.g. a hub spec with "split": "test"
        if _SPLIT_SIZE_KEYS & set(spec):
            raise ValueError(f"no 'train' split to cut validation/test from; splits: {', '.join(data)}")
        return data
    sizes = {
        split_name: spec.get(f"{split_name}_size", 0.05) if split_name in missing else 0
        for split_name in ("validation", "test")
    }
    parts = split_dataset(data["train"], sizes["validation"], sizes["test"], seed=seed)
    result = dict(data)
    result["train"] = parts["train"]
    for split_name in missing:
        result[split_name] = parts[split_name]
    return DatasetDict(result)


def _cap_splits(data: DatasetDict, max_examples: int | dict[str, int]) -> DatasetDict:
    if isinstance(max_examples, dict):
        unknown = [name for name in max_examples if name not in data]
        if unknown:
            raise ValueError(f"max_examples names unknown split(s) {unknown}; splits: {', '.join(data)}")
        caps = max_examples
    else:
        caps = dict.fromkeys(data, max_examples)
    capped = {}
    for split_name, dataset in data.items():
        cap = caps.get(split_name)
        if cap is None:
            capped[split_name] = dataset
            continue
        _check_count(f"max_examples for {split_name!r}", cap)
        capped[split_name] = dataset.select(range(min(cap, len(dataset))))
    return DatasetDict(capped)


def _lowercase(batch: dict) -> dict:
    return {"source": [text.lower() for text in batch["source"]], "target": [text.lower() for text in batch["target"]]}


# --------------------------------------------------------------------------------------------------------------------
# Multi30k
# --------------------------------------------------------------------------------------------------------------------

MULTI30K_SPLITS = {
    "train": "train",
    "validation": "val",
    "test": "test_2016_flickr",
    "test_2017": "test_2017_flickr",
}


def multi30k_files(root: PathLike, source_lang: str = "de", target_lang: str = "en") -> dict:
    """The ``files`` spec for Multi30k task 1 at ``root/task1/raw/{split}.{lang}.gz``.

    Splits: train (29,000 pairs), validation (``val``, 1,014), test (``test_2016_flickr``, 1,000) and
    test_2017 (``test_2017_flickr``, 1,000; left out when a language lacks it, as Czech does).
    """
    raw = Path(root) / "task1" / "raw"
    files = {}
    for split_name, stem in MULTI30K_SPLITS.items():
        source = raw / f"{stem}.{source_lang}.gz"
        target = raw / f"{stem}.{target_lang}.gz"
        if source.is_file() and target.is_file():
            files[split_name] = {"source": str(source), "target": str(target)}
        elif split_name != "test_2017":
            missing = [str(path) for path in (source, target) if not path.is_file()]
            raise FileNotFoundError(f"Multi30k split {split_name!r} is missing: {', '.join(missing)}")
    return files

"""Tests for hf_rnn_attention.data: readers, synthetic tasks, splits and load_data."""

import datetime
import gzip
import json
import random
import re
from pathlib import Path

import pytest
from conftest import SHARED_DATA
from datasets import Dataset, DatasetDict, Features, Translation, Value

from hf_rnn_attention.data import (
    DATE_FORMATS,
    ParallelDataError,
    _to_source_target,
    format_date,
    load_data,
    make_copy_task,
    make_date_task,
    multi30k_files,
    read_jsonl,
    read_parallel_files,
    read_tsv,
    split_dataset,
)

MULTI30K = SHARED_DATA / "multi30k"


def write(path: Path, lines, *, gz: bool = False, ending: str = "\n") -> Path:
    """Write text lines (str) or raw bytes (bytes) to `path`, gzip-compressed when `gz`."""
    if isinstance(lines, bytes):
        data = lines
    else:
        data = "".join(line + ending for line in lines).encode("utf-8")
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def assert_source_target(dataset: Dataset) -> None:
    assert dataset.column_names == ["source", "target"]
    assert dataset.features["source"] == Value("string")
    assert dataset.features["target"] == Value("string")


def assert_error(excinfo, path: Path, line_number: int) -> None:
    message = str(excinfo.value)
    assert path.name in message, message
    assert f"line {line_number}:" in message, message


# ---------------------------------------------------------------------------------------------------------------------
# read_parallel_files
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_read_parallel_files(tmp_path, gz):
    source = write(tmp_path / "train.de", ["Ein Hund  läuft.", "  Zwei Katzen\tschlafen ", "Größe"], gz=gz)
    target = write(tmp_path / "train.en", ["A dog runs.", "Two cats sleep.", "size"], gz=gz, ending="\r\n")
    dataset = read_parallel_files(source, target)
    assert_source_target(dataset)
    assert dataset["source"] == ["Ein Hund  läuft.", "  Zwei Katzen\tschlafen ", "Größe"]
    assert dataset["target"] == ["A dog runs.", "Two cats sleep.", "size"]


def test_read_parallel_files_mixed_gzip_and_plain_without_final_newline(tmp_path):
    source = write(tmp_path / "a.src", ["one", "two"], gz=True)
    target = write(tmp_path / "a.tgt", b"eins\nzwei")
    dataset = read_parallel_files(str(source), str(target))
    assert list(zip(dataset["source"], dataset["target"], strict=True)) == [("one", "eins"), ("two", "zwei")]


def test_unicode_line_separators_stay_inside_a_line(tmp_path):
    source = write(tmp_path / "s.txt", ["a\u2028b", "c\x85d"])
    target = write(tmp_path / "t.txt", ["x", "y"])
    assert read_parallel_files(source, target)["source"] == ["a\u2028b", "c\x85d"]


def test_ragged_files_name_both_files_and_counts(tmp_path):
    source = write(tmp_path / "src.txt", ["a", "b", "c"])
    target = write(tmp_path / "tgt.txt", ["x", "y"], gz=True)
    with pytest.raises(ParallelDataError) as excinfo:
        read_parallel_files(source, target)
    message = str(excinfo.value)
    assert "src.txt" in message and "tgt.txt.gz" in message
    assert "3 lines" in message and "2 lines" in message


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("bad_line", ["", "   ", "\t"])
def test_empty_line_names_file_and_line(tmp_path, gz, bad_line):
    source = write(tmp_path / "src.txt", ["a", "b", "c", "d"], gz=gz)
    target = write(tmp_path / "tgt.txt", ["w", "x", bad_line, "z"], gz=gz)
    with pytest.raises(ParallelDataError) as excinfo:
        read_parallel_files(source, target)
    assert_error(excinfo, target, 3)
    assert "src.txt" not in str(excinfo.value)


def test_empty_line_at_end_of_file(tmp_path):
    source = write(tmp_path / "src.txt", b"a\nb\n\n")
    target = write(tmp_path / "tgt.txt", ["x", "y", "z"])
    with pytest.raises(ParallelDataError) as excinfo:
        read_parallel_files(source, target)
    assert_error(excinfo, source, 3)


@pytest.mark.parametrize("gz", [False, True])
def test_invalid_utf8_names_file_and_line(tmp_path, gz):
    source = write(tmp_path / "src.txt", "first\nsecond\nbad \xe9 latin-1\n".encode("latin-1"), gz=gz)
    target = write(tmp_path / "tgt.txt", ["x", "y", "z"])
    with pytest.raises(ParallelDataError) as excinfo:
        read_parallel_files(source, target)
    assert_error(excinfo, source, 3)
    assert "UTF-8" in str(excinfo.value)


def test_empty_file_is_an_error(tmp_path):
    source = write(tmp_path / "src.txt", b"")
    target = write(tmp_path / "tgt.txt", b"")
    with pytest.raises(ParallelDataError, match="src.txt"):
        read_parallel_files(source, target)


# ---------------------------------------------------------------------------------------------------------------------
# read_tsv
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_read_tsv(tmp_path, gz):
    path = write(tmp_path / "pairs.tsv", ["Hallo Welt\thello world\t7", "Guten  Tag\tgood day\t8"], gz=gz)
    dataset = read_tsv(path)
    assert_source_target(dataset)
    assert dataset["source"] == ["Hallo Welt", "Guten  Tag"]
    assert dataset["target"] == ["hello world", "good day"]
    swapped = read_tsv(path, source_column=2, target_column=0)
    assert swapped["source"] == ["7", "8"]
    assert swapped["target"] == ["Hallo Welt", "Guten  Tag"]


@pytest.mark.parametrize(
    "lines, line_number",
    [
        (["a\tb", "c\td", "only one column"], 3),
        (["a\tb", "\tx"], 2),
        (["a\t  "], 1),
        (["a\tb", "c\td", "e\tf", ""], 4),
    ],
)
def test_tsv_errors_name_file_and_line(tmp_path, lines, line_number):
    path = write(tmp_path / "bad.tsv", lines)
    with pytest.raises(ParallelDataError) as excinfo:
        read_tsv(path)
    assert_error(excinfo, path, line_number)


def test_tsv_too_few_columns_for_chosen_column(tmp_path):
    path = write(tmp_path / "three.tsv", ["a\tb\tc", "d\te"], gz=True)
    with pytest.raises(ParallelDataError) as excinfo:
        read_tsv(path, source_column=0, target_column=2)
    assert_error(excinfo, path, 2)


# ---------------------------------------------------------------------------------------------------------------------
# read_jsonl
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_read_jsonl(tmp_path, gz):
    records = [{"source": "Ein Hund", "target": "A dog", "id": 1}, {"target": "Two", "source": "Zwei"}]
    path = write(tmp_path / "data.jsonl", [json.dumps(record, ensure_ascii=False) for record in records], gz=gz)
    dataset = read_jsonl(path)
    assert_source_target(dataset)
    assert dataset["source"] == ["Ein Hund", "Zwei"]
    assert dataset["target"] == ["A dog", "Two"]


def test_read_jsonl_hub_translation_layout(tmp_path):
    records = [{"translation": {"de": "Ein Hund", "en": "A dog"}}, {"translation": {"en": "Größe", "de": "Größe!"}}]
    path = write(tmp_path / "wmt.jsonl", [json.dumps(record, ensure_ascii=False) for record in records], gz=True)
    dataset = read_jsonl(path, source_key="en", target_key="de")
    assert dataset["source"] == ["A dog", "Größe"]
    assert dataset["target"] == ["Ein Hund", "Größe!"]


@pytest.mark.parametrize(
    "bad_line, fragment",
    [
        ('{"source": "a", "target": ', "invalid JSON"),
        ('{"source": "a"}', "'target'"),
        ('{"source": "a", "target": 3}', "not a string"),
        ('{"source": "a", "target": null}', "not a string"),
        ('{"source": "  ", "target": "b"}', "empty"),
        ('["a", "b"]', "JSON object"),
        ('{"translation": {"de": "a"}}', "'en'"),
        ("", "empty line"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, bad_line, fragment):
    good = json.dumps({"source": "x", "target": "y", "translation": {"de": "x", "en": "y"}})
    path = write(tmp_path / "bad.jsonl", [good, good, bad_line, good])
    keys = ("de", "en") if "translation" in bad_line else ("source", "target")
    with pytest.raises(ParallelDataError) as excinfo:
        read_jsonl(path, *keys)
    assert_error(excinfo, path, 3)
    assert fragment in str(excinfo.value)


# ---------------------------------------------------------------------------------------------------------------------
# Dates
# ---------------------------------------------------------------------------------------------------------------------

MONTH_NAMES = "january february march april may june july august september october november december".split()
WEEKDAY_NAMES = "monday tuesday wednesday thursday friday saturday sunday".split()
KOREAN_DAYS = "월화수목금토일"


def full_year(text: str) -> int:
    year = int(text)
    if len(text) == 2:
        return 1900 + year if year >= 50 else 2000 + year
    return year


def english_ordinal(day: int) -> str:
    if day in (11, 12, 13):
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")


def parse_date(text: str) -> datetime.date:
    """An independent little parser for every way the data module writes a date; checks weekdays and ordinals."""
    weekday = None
    match = re.fullmatch(r"(\d{2}|\d{4})년 (\d{1,2})월 (\d{1,2})일(?: ([월화수목금토일])요일)?", text)
    if match:
        year, month, day = full_year(match[1]), int(match[2]), int(match[3])
        weekday = KOREAN_DAYS.index(match[4]) if match[4] else None
    elif match := re.fullmatch(r"(\d{4})\. (\d{1,2})\. (\d{1,2})\.", text):
        year, month, day = int(match[1]), int(match[2]), int(match[3])
    elif match := re.fullmatch(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})", text):
        year, month, day = int(match[1]), int(match[2]), int(match[3])
    elif match := re.fullmatch(r"(\d{1,2})\.(\d{1,2})\.(\d{4})", text):
        day, month, year = int(match[1]), int(match[2]), int(match[3])
    elif match := re.fullmatch(r"(\d{1,2})/(\d{1,2})/(\d{2}|\d{4})", text):
        first, second, year = int(match[1]), int(match[2]), full_year(match[3])
        # Month first, unless the first number cannot be a month (then the day-first dd/mm/yyyy).
        month, day = (first, second) if first <= 12 else (second, first)
        if first > 12:
            assert len(match[1]) == 2 and len(match[2]) == 2 and len(match[3]) == 4, text
    else:
        words = re.findall(r"[A-Za-z]+|\d+(?:st|nd|rd|th)?", text)
        lowered = [word.lower() for word in words]
        months = [
            next(i + 1 for i, name in enumerate(MONTH_NAMES) if w in (name, name[:3]))
            for w in lowered
            if any(w in (name, name[:3]) for name in MONTH_NAMES)
        ]
        weekdays = [
            next(i for i, name in enumerate(WEEKDAY_NAMES) if w in (name, name[:3]))
            for w in lowered
            if any(w in (name, name[:3]) for name in WEEKDAY_NAMES)
        ]
        numbers = [w for w in lowered if w[0].isdigit()]
        years = [int(w) for w in numbers if re.fullmatch(r"\d{4}", w)]
        days = [w for w in numbers if not re.fullmatch(r"\d{4}", w)]
        assert len(months) == 1 and len(years) == 1 and len(days) == 1 and len(weekdays) <= 1, text
        month, year = months[0], years[0]
        day = int(re.match(r"\d+", days[0])[0])
        suffix = days[0][len(str(day)) :]
        if suffix:
            assert suffix == english_ordinal(day), text
        weekday = weekdays[0] if weekdays else None
    date = datetime.date(year, month, day)
    if weekday is not None:
        assert weekday == date.weekday(), f"{text}: wrong weekday"
    return date


# Every example string from the spec, written for 1994-09-27 (a Tuesday, 화요일).
REQUIRED_1994_09_27 = [
    "september 27, 1994",
    "September 27, 1994",
    "SEPTEMBER 27, 1994",
    "Sep 27, 1994",
    "27 September 1994",
    "27 Sep 1994",
    "Tuesday, September 27, 1994",
    "TUESDAY, SEPTEMBER 27, 1994",
    "Tue, 27 Sep 1994",
    "9/27/94",
    "9/27/1994",
    "09/27/1994",
    "27.09.1994",
    "27/09/1994",
    "1994/09/27",
    "1994.9.27",
    "September 27th, 1994",
    "the 27th of September, 1994",
    "1994년 9월 27일",
    "1994년 9월 27일 화요일",
    "94년 9월 27일",
    "1994. 9. 27.",
]


def test_every_required_format_is_covered():
    written = {format_date(datetime.date(1994, 9, 27), fmt) for fmt in DATE_FORMATS}
    missing = [example for example in REQUIRED_1994_09_27 if example not in written]
    assert not missing
    assert len(set(DATE_FORMATS)) == len(DATE_FORMATS)
    assert "27.9.1994" in written  # day-first with dots, no padding


def test_format_date_round_trips_through_an_independent_parser():
    rng = random.Random(1234)
    start, end = datetime.date(1950, 1, 1).toordinal(), datetime.date(2049, 12, 31).toordinal()
    dates = [datetime.date.fromordinal(rng.randint(start, end)) for _ in range(300)]
    dates += [datetime.date(1950, 1, 1), datetime.date(2049, 12, 31), datetime.date(2000, 2, 29)]
    for date in dates:
        for fmt in DATE_FORMATS:
            text = format_date(date, fmt)
            if fmt == "dd/mm/yyyy" and date.day <= 12:
                continue  # ambiguous by design; make_date_task never uses it for such days
            assert parse_date(text) == date, (fmt, text)


def test_weekdays_and_ordinals_known_values():
    tuesday = datetime.date(1994, 9, 27)
    texts = {format_date(tuesday, fmt) for fmt in DATE_FORMATS}
    assert "1994년 9월 27일 화요일" in texts and "Tuesday, September 27, 1994" in texts
    # 2000-01-01 was a Saturday (토요일); 2024-02-29 a Thursday (목요일).
    for date, english, korean in [
        (datetime.date(2000, 1, 1), "Saturday", "토요일"),
        (datetime.date(2024, 2, 29), "Thursday", "목요일"),
        (datetime.date(1969, 7, 20), "Sunday", "일요일"),
    ]:
        texts = " | ".join(format_date(date, fmt) for fmt in DATE_FORMATS)
        assert f"{english}, " in texts and english.upper() in texts and f"{english[:3]}, " in texts
        assert f" {korean}" in texts
    expected = {1: "1st", 2: "2nd", 3: "3rd", 4: "4th", 11: "11th", 12: "12th", 13: "13th", 21: "21st"}
    expected |= {22: "22nd", 23: "23rd", 24: "24th", 30: "30th", 31: "31st"}
    for day, ordinal in expected.items():
        texts = {format_date(datetime.date(2001, 1, day), fmt) for fmt in DATE_FORMATS}
        assert f"January {ordinal}, 2001" in texts
        assert f"the {ordinal} of January, 2001" in texts


def test_format_date_unknown_format():
    with pytest.raises(ValueError, match="known formats"):
        format_date(datetime.date(2000, 1, 1), "no such format")


def test_make_date_task_deterministic_and_seeded():
    first = make_date_task(300, seed=7)
    assert_source_target(first)
    assert first.to_dict() == make_date_task(300, seed=7).to_dict()
    assert first["source"] != make_date_task(300, seed=8)["source"]
    assert len(first) == 300


def test_make_date_task_targets_are_iso_and_unambiguous():
    dataset = make_date_task(50_000, seed=3)
    targets_by_source = {}
    years = set()
    for source, target in zip(dataset["source"], dataset["target"], strict=True):
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", target)
        assert targets_by_source.setdefault(source, target) == target, f"{source!r} maps to two targets"
        years.add(int(target[:4]))
    assert min(years) == 1950 and max(years) == 2049 and len(years) == 100
    # Parse a sample independently: the source really says the target's date.
    for source, target in list(zip(dataset["source"], dataset["target"], strict=True))[:3000]:
        assert parse_date(source).isoformat() == target, source
    # All formats show up (shapes: a Korean weekday, a two-digit slash year, day-first slashes, ...).
    sources = dataset["source"]
    assert any(re.fullmatch(r"\d{1,2}/\d{1,2}/\d{2}", s) for s in sources)
    assert any(re.fullmatch(r"(1[3-9]|2\d|3[01])/\d{2}/\d{4}", s) for s in sources)
    assert any(s.endswith("요일") for s in sources)


def test_make_date_task_uses_every_format():
    used = set()
    for source in set(make_date_task(3_000, seed=0)["source"]):
        date = parse_date(source)
        used |= {fmt for fmt in DATE_FORMATS if format_date(date, fmt) == source}
    assert used == set(DATE_FORMATS)


# ---------------------------------------------------------------------------------------------------------------------
# Copy task
# ---------------------------------------------------------------------------------------------------------------------


def test_copy_and_reverse_tasks():
    copy = make_copy_task(200, seed=1, min_length=2, max_length=5, vocabulary="abc")
    assert_source_target(copy)
    assert copy["source"] == copy["target"]
    lengths = {len(source.split(" ")) for source in copy["source"]}
    assert lengths == {2, 3, 4, 5}
    assert set(" ".join(copy["source"]).split()) == {"a", "b", "c"}
    reverse = make_copy_task(200, seed=1, reverse=True, min_length=2, max_length=5, vocabulary="abc")
    assert reverse["source"] == copy["source"]
    assert all(t == " ".join(reversed(s.split())) for s, t in zip(reverse["source"], reverse["target"], strict=True))
    assert any(s != t for s, t in zip(reverse["source"], reverse["target"], strict=True))
    assert make_copy_task(50, seed=2)["source"] != make_copy_task(50, seed=3)["source"]
    words = make_copy_task(20, seed=0, vocabulary=["<x>", "yy"])
    assert set(" ".join(words["source"]).split()) <= {"<x>", "yy"}


# ---------------------------------------------------------------------------------------------------------------------
# split_dataset
# ---------------------------------------------------------------------------------------------------------------------


def numbered(n: int) -> Dataset:
    return Dataset.from_dict({"source": [f"s{i}" for i in range(n)], "target": [f"t{i}" for i in range(n)]})


@pytest.mark.parametrize("validation_size, test_size, expected", [(0.1, 0.2, (70, 10, 20)), (5, 7, (88, 5, 7))])
def test_split_sizes_disjoint_and_complete(validation_size, test_size, expected):
    dataset = numbered(100)
    splits = split_dataset(dataset, validation_size, test_size, seed=4)
    assert isinstance(splits, DatasetDict)
    assert tuple(len(splits[name]) for name in ("train", "validation", "test")) == expected
    sources = [set(splits[name]["source"]) for name in ("train", "validation", "test")]
    assert sources[0].isdisjoint(sources[1]) and sources[0].isdisjoint(sources[2]) and sources[1].isdisjoint(sources[2])
    assert sources[0] | sources[1] | sources[2] == set(dataset["source"])
    for name in ("train", "validation", "test"):  # pairs stay together
        assert all(s[1:] == t[1:] for s, t in zip(splits[name]["source"], splits[name]["target"], strict=True))


def test_split_is_seeded():
    dataset = numbered(100)
    first = split_dataset(dataset, 0.1, 0.1, seed=0)
    again = split_dataset(dataset, 0.1, 0.1, seed=0)
    other = split_dataset(dataset, 0.1, 0.1, seed=1)
    assert first["test"]["source"] == again["test"]["source"]
    assert first["validation"]["source"] == again["validation"]["source"]
    assert set(first["test"]["source"]) != set(other["test"]["source"])


def test_split_with_zero_sizes_and_bad_sizes():
    dataset = numbered(20)
    only_test = split_dataset(dataset, 0, 4)
    assert (len(only_test["train"]), len(only_test["validation"]), len(only_test["test"])) == (16, 0, 4)
    assert only_test["validation"].column_names == ["source", "target"]
    nothing_held = split_dataset(dataset, 0, 0.0)
    assert sorted(nothing_held["train"]["source"]) == sorted(dataset["source"])
    for validation_size, test_size in [(1.5, 0.1), (-1, 2), (10, 10), (0.5, 0.5), ("5", 1)]:
        with pytest.raises(ValueError):
            split_dataset(dataset, validation_size, test_size)


# ---------------------------------------------------------------------------------------------------------------------
# load_data
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["date", "copy", "reverse"])
def test_load_data_task(task):
    data = load_data({"task": task, "num_examples": 400, "validation_size": 0.1, "test_size": 20}, seed=5)
    assert set(data) == {"train", "validation", "test"}
    assert (len(data["train"]), len(data["validation"]), len(data["test"])) == (340, 40, 20)
    for split in data.values():
        assert_source_target(split)
    assert (
        data["test"].to_dict()
        == load_data({"task": task, "num_examples": 400, "validation_size": 0.1, "test_size": 20}, seed=5)[
            "test"
        ].to_dict()
    )
    if task == "reverse":
        assert all(
            t == " ".join(reversed(s.split()))
            for s, t in zip(data["train"]["source"], data["train"]["target"], strict=True)
        )
    if task == "date":
        assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", t) for t in data["train"]["target"])


def test_load_data_task_options_cap_and_lowercase():
    data = load_data({"task": "copy", "num_examples": 100, "max_examples": 10, "vocabulary": "AB", "max_length": 4})
    assert [len(data[name]) for name in ("train", "validation", "test")] == [10, 5, 5]
    lowered = load_data({"task": "date", "num_examples": 2000, "lowercase": True})
    assert all(s == s.lower() for s in lowered["train"]["source"])
    assert any(s.startswith("the ") or "september" in s for s in lowered["train"]["source"])
    capped = load_data({"task": "date", "num_examples": 200, "max_examples": {"train": 7}})
    assert [len(capped[name]) for name in ("train", "validation", "test")] == [7, 10, 10]


def test_load_data_files_every_split_form(tmp_path):
    train_src = write(tmp_path / "train.de", ["Hallo", "Welt", "Tag"], gz=True)
    train_tgt = write(tmp_path / "train.en", ["Hello", "World", "Day"], gz=True)
    tsv = write(tmp_path / "valid.tsv", ["x\tEins\tOne"])
    jsonl = write(tmp_path / "test.jsonl", [json.dumps({"translation": {"de": "Zwei", "en": "Two"}})])
    spec = {
        "files": {
            "train": {"source": str(train_src), "target": str(train_tgt)},
            "validation": {"tsv": str(tsv), "source_column": 1, "target_column": 2},
            "test": {"jsonl": str(jsonl), "source_key": "de", "target_key": "en"},
        },
        "lowercase": True,
    }
    data = load_data(spec)
    assert data["train"].to_dict() == {"source": ["hallo", "welt", "tag"], "target": ["hello", "world", "day"]}
    assert data["validation"].to_dict() == {"source": ["eins"], "target": ["one"]}
    assert data["test"].to_dict() == {"source": ["zwei"], "target": ["two"]}


def test_load_data_files_only_train_is_split(tmp_path):
    source = write(tmp_path / "s.txt", [f"quelle {i}" for i in range(40)])
    target = write(tmp_path / "t.txt", [f"target {i}" for i in range(40)])
    spec = {"files": {"train": {"source": source, "target": target}}, "validation_size": 4, "test_size": 0.25}
    data = load_data(spec, seed=2)
    assert [len(data[name]) for name in ("train", "validation", "test")] == [26, 4, 10]
    assert data["test"]["source"] == load_data(spec, seed=2)["test"]["source"]
    for split in data.values():
        assert all(s.split()[1] == t.split()[1] for s, t in zip(split["source"], split["target"], strict=True))
    default = load_data({"files": {"train": {"tsv": write(tmp_path / "p.tsv", [f"a{i}\tb{i}" for i in range(100)])}}})
    assert [len(default[name]) for name in ("train", "validation", "test")] == [90, 5, 5]


def test_load_data_file_errors_propagate(tmp_path):
    source = write(tmp_path / "s.txt", ["a", "b"])
    target = write(tmp_path / "t.txt", ["x", " "])
    with pytest.raises(ParallelDataError) as excinfo:
        load_data({"files": {"train": {"source": source, "target": target}}})
    assert_error(excinfo, target, 2)


@pytest.mark.parametrize(
    "spec, named",
    [
        ({"task": "date", "num_examples": 10, "colour": "red"}, "'colour'"),
        ({"task": "date"}, "'num_examples'"),
        ({"task": "sorting", "num_examples": 10}, "'sorting'"),
        ({"task": "date", "num_examples": 10, "vocabulary": "ab"}, "'vocabulary'"),
        ({"files": {"validation": {"tsv": "x.tsv"}}}, "'train'"),
        ({"files": {"train": {"source": "a.txt"}}}, "'target'"),
        ({"files": {"train": {"tsv": "a.tsv", "source_key": "de"}}}, "'source_key'"),
        ({"files": {"train": {"tsv": "a.tsv"}}, "num_examples": 3}, "'num_examples'"),
        ({"hub": {"config": "de-en"}}, "'name'"),
        ({"hub": {"name": "wmt16", "langs": "de-en"}}, "'langs'"),
        ({"num_examples": 10}, "'task', 'files', 'hub', 'multi30k'"),
        ({"task": "date", "files": {}}, "'task', 'files', 'hub', 'multi30k'"),
        ({"multi30k": {"source_lang": "de"}}, "'root'"),
        ({"multi30k": {"root": "x", "lang": "de"}}, "'lang'"),
        ({"multi30k": {"root": "x"}, "test_size": 0.1}, "'test_size'"),
    ],
)
def test_load_data_bad_spec_names_the_key(spec, named):
    with pytest.raises(ValueError) as excinfo:
        load_data(spec)
    message = str(excinfo.value)
    assert named in message
    if "unknown key" in message or "missing required key" in message:
        assert "allowed keys:" in message


def test_load_data_size_for_a_split_that_exists(tmp_path):
    source = write(tmp_path / "s.txt", ["a", "b"])
    target = write(tmp_path / "t.txt", ["x", "y"])
    pair = {"source": source, "target": target}
    with pytest.raises(ValueError, match="validation_size"):
        load_data({"files": {"train": pair, "validation": pair, "test": pair}, "validation_size": 0.1})


# ---------------------------------------------------------------------------------------------------------------------
# Hub mapping (no network: only the column mapping)
# ---------------------------------------------------------------------------------------------------------------------


def hub_like() -> DatasetDict:
    features = Features({"id": Value("string"), "translation": Translation(languages=["de", "en"])})
    rows = {
        "train": {"id": ["0", "1"], "translation": [{"de": "Hallo", "en": "Hello"}, {"de": "Welt", "en": "World"}]},
        "validation": {"id": ["2"], "translation": [{"de": "Tag", "en": "Day"}]},
    }
    return DatasetDict({name: Dataset.from_dict(data, features=features) for name, data in rows.items()})


def test_to_source_target_translation_column():
    data = _to_source_target(hub_like(), "en", "de", None, None)
    assert data["train"].to_dict() == {"source": ["Hello", "World"], "target": ["Hallo", "Welt"]}
    assert data["validation"].to_dict() == {"source": ["Day"], "target": ["Tag"]}
    assert_source_target(data["train"])


def test_to_source_target_named_columns_and_passthrough():
    plain = DatasetDict({"train": Dataset.from_dict({"q": ["a", "b"], "a": ["1", "2"], "n": [1, 2]})})
    data = _to_source_target(plain, None, None, "a", "q")
    assert data["train"].to_dict() == {"source": ["1", "2"], "target": ["a", "b"]}
    swapped = DatasetDict({"train": Dataset.from_dict({"source": ["s"], "target": ["t"], "x": [0]})})
    assert _to_source_target(swapped, None, None, "target", "source")["train"].to_dict() == {
        "source": ["t"],
        "target": ["s"],
    }
    assert _to_source_target(swapped, None, None, None, None)["train"].to_dict() == {"source": ["s"], "target": ["t"]}


@pytest.mark.parametrize(
    "args, fragment",
    [
        ((None, None, None, None), "available columns: id, translation"),
        (("de", "fr", None, None), "available languages: de, en"),
        ((None, None, "de", "en"), "available columns: id, translation"),
        (("de", None, None, None), "source_lang"),
    ],
)
def test_to_source_target_errors_list_what_is_available(args, fragment):
    with pytest.raises(ValueError) as excinfo:
        _to_source_target(hub_like(), *args)
    assert fragment in str(excinfo.value)


# ---------------------------------------------------------------------------------------------------------------------
# Multi30k (the real files, when this machine has them)
# ---------------------------------------------------------------------------------------------------------------------


def test_multi30k_files_layout(tmp_path):
    raw = tmp_path / "task1" / "raw"
    raw.mkdir(parents=True)
    for stem in ("train", "val", "test_2016_flickr"):
        for lang in ("cs", "en"):
            write(raw / f"{stem}.{lang}", [f"{stem} {lang}"], gz=True)
    files = multi30k_files(tmp_path, source_lang="cs", target_lang="en")
    assert set(files) == {"train", "validation", "test"}  # no test_2017 for Czech
    assert files["validation"]["source"].endswith("val.cs.gz")
    assert load_data({"files": files})["test"].to_dict() == {
        "source": ["test_2016_flickr cs"],
        "target": ["test_2016_flickr en"],
    }
    with pytest.raises(FileNotFoundError, match="train.fr.gz"):
        multi30k_files(tmp_path, source_lang="fr", target_lang="en")


def test_multi30k_real_data():
    if not (MULTI30K / "task1" / "raw").is_dir():
        pytest.skip(f"Multi30k is not on this machine (expected {MULTI30K}/task1/raw/*.gz)")
    files = multi30k_files(MULTI30K)
    assert set(files) == {"train", "validation", "test", "test_2017"}
    data = load_data({"files": files})
    shorthand = load_data({"multi30k": {"root": str(MULTI30K), "source_lang": "de", "target_lang": "en"}})
    assert shorthand["validation"].to_dict() == data["validation"].to_dict()
    assert {name: len(split) for name, split in data.items()} == {
        "train": 29_000,
        "validation": 1_014,
        "test": 1_000,
        "test_2017": 1_000,
    }
    with gzip.open(MULTI30K / "task1" / "raw" / "train.de.gz", "rt", encoding="utf-8") as handle:
        first_de = handle.readline().rstrip("\n")
    with gzip.open(MULTI30K / "task1" / "raw" / "train.en.gz", "rt", encoding="utf-8") as handle:
        first_en = handle.readline().rstrip("\n")
    assert data["train"][0] == {"source": first_de, "target": first_en}
    assert data["train"][0]["target"] == "Two young, White males are outside near many bushes."

"""Behaviour of the joint subword tokenizer (`hf_rnn_attention.tokenization`)."""

import gzip
import json
import os
import random
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers
from conftest import OTHER_PYTHON, OTHER_PYTHON_REASON, SHARED_DATA
from transformers import AutoTokenizer

from hf_rnn_attention.tokenization import (
    SPECIAL_TOKENS,
    main,
    save_tokenizer,
    train_tokenizer,
    train_tokenizer_from_dataset,
)

MULTI30K = SHARED_DATA / "multi30k" / "task1" / "raw"

EN_SUBJECTS = ["A man", "A woman", "Two children", "The old dog", "A young girl", "Three workers", "A boy"]
EN_ADJECTIVES = ["blue", "red", "green", "striped", "yellow", "black"]
EN_CLOTHES = ["shirt", "hat", "jacket", "dress", "coat"]
EN_VERBS = ["is running", "is walking", "are sitting", "is jumping", "are playing", "is singing"]
EN_PLACES = ["in the park", "on the beach", "near a fountain", "down the street", "in front of a store"]
DE_SUBJECTS = ["Ein Mann", "Eine Frau", "Zwei Kinder", "Der alte Hund", "Ein junges Mädchen", "Drei Arbeiter"]
DE_ADJECTIVES = ["blauen", "roten", "grünen", "gestreiften", "gelben", "schwarzen"]
DE_CLOTHES = ["Hemd", "Hut", "Mantel", "Kleid", "Pullover"]
DE_VERBS = ["läuft", "geht spazieren", "sitzt", "springt", "spielt", "singt"]
DE_PLACES = ["im Park", "am Strand", "neben einem Brunnen", "auf der Straße", "vor einem Geschäft"]
KO_SUBJECTS = ["나는", "그는", "그녀는", "우리는", "아이들은"]
KO_PLACES = ["학교에", "집에", "공원에", "시장에", "바다에"]
KO_VERBS = ["간다.", "갔다.", "가고 싶다.", "걸어간다."]


def english(rng: random.Random) -> str:
    sentence = (
        f"{rng.choice(EN_SUBJECTS)}, in a {rng.choice(EN_ADJECTIVES)} {rng.choice(EN_CLOTHES)}, "
        f"{rng.choice(EN_VERBS)} {rng.choice(EN_PLACES)}"
    )
    if rng.random() < 0.3:
        sentence += f" in {rng.randint(1950, 2025)}"
    return sentence + rng.choice([".", "!", "?"])


def german(rng: random.Random) -> str:
    sentence = (
        f"{rng.choice(DE_SUBJECTS)} in einem {rng.choice(DE_ADJECTIVES)} {rng.choice(DE_CLOTHES)} "
        f"{rng.choice(DE_VERBS)} {rng.choice(DE_PLACES)}"
    )
    if rng.random() < 0.3:
        sentence += f" im Jahr {rng.randint(1950, 2025)}"
    return sentence + "."


def korean(rng: random.Random) -> str:
    return f"{rng.choice(KO_SUBJECTS)} {rng.choice(KO_PLACES)} {rng.choice(KO_VERBS)}"


def corpus(seed: int, size: int) -> list[str]:
    rng = random.Random(seed)
    return [[english, german, korean][i % 3](rng) for i in range(size)]


TRAIN = corpus(seed=0, size=450) + ["A man, in a blue shirt, is running.", "Ein Mann läuft.", "나는 학교에 간다."]
# Unseen sentences, made of seen words only.
UNSEEN = [s for s in corpus(seed=1, size=200) if s not in set(TRAIN)][:60] + [
    "Two children, in a striped coat, are sitting near a fountain in 1994.",
    "Der alte Hund in einem roten Hut singt am Strand im Jahr 2001.",
    "그녀는 학교에 갔다. 우리는 바다에 가고 싶다.",
]


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def tokenizer(request):
    return train_tokenizer(TRAIN, vocab_size=300, model=request.param)


@pytest.fixture(scope="module")
def bpe():
    return train_tokenizer(TRAIN, vocab_size=300)


def test_unseen_sentences_really_are_unseen():
    assert len(UNSEEN) > 40 and not set(UNSEEN) & set(TRAIN)


def test_special_tokens_have_ids_0_to_3(tokenizer):
    assert [tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS] == [0, 1, 2, 3]
    ids = (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id)
    assert ids == (0, 1, 2, 3)
    assert tokenizer.backend_tokenizer.get_vocab()["<unk>"] == 3
    assert len(tokenizer) <= 300


def test_eos_appended_and_nothing_else(tokenizer):
    for sentence in TRAIN[:30] + UNSEEN[:10]:
        ids = tokenizer(sentence)["input_ids"]
        assert ids[-1] == 2
        assert not set(ids[:-1]) & {0, 1, 2, 3}, (sentence, ids)
        assert tokenizer(sentence, add_special_tokens=False)["input_ids"] == ids[:-1]


def test_pair_gets_eos_after_each_sequence(tokenizer):
    ids = tokenizer("Ein Mann läuft.", "A man is running.")["input_ids"]
    assert ids.count(2) == 2 and ids[-1] == 2
    first = tokenizer("Ein Mann läuft.")["input_ids"]
    assert ids[: len(first)] == first


@pytest.mark.parametrize("sentences", [TRAIN, UNSEEN], ids=["train", "unseen"])
def test_exact_round_trip(tokenizer, sentences):
    encoded = tokenizer(sentences)["input_ids"]
    decoded = tokenizer.batch_decode(encoded, skip_special_tokens=True)
    mismatches = [(s, d) for s, d in zip(sentences, decoded, strict=True) if s != d]
    assert not mismatches, mismatches[:5]
    assert all(3 not in ids for ids in encoded)  # every character was seen: no <unk>


def test_round_trip_of_spacing_around_punctuation(tokenizer):
    sentences = [
        "A man, in a blue shirt, is running.",
        "Ein Mann läuft.",
        "나는 학교에 간다.",
        "1994, ein Mann läuft!",  # starts with a digit
        ", Ein Mann läuft , in 2001 .",  # starts with punctuation; spaces before punctuation
        "Ein Mann,  in einem Hut läuft.",  # a double space survives too
    ]
    for sentence in sentences:
        pieces = tokenizer.tokenize(sentence)
        assert tokenizer.convert_tokens_to_string(pieces) == sentence
        assert tokenizer.decode(tokenizer(sentence)["input_ids"], skip_special_tokens=True) == sentence
    # Punctuation is split off the word it follows.
    assert tokenizer.tokenize("A man, in a blue shirt, is running.")[-1] == "."
    assert "," in tokenizer.tokenize("A man, in a blue shirt, is running.")


def test_unknown_character_becomes_unk(tokenizer):
    ids = tokenizer("A man ☃ is running.")["input_ids"]
    assert 3 in ids


def test_digits_are_split_individually(bpe):
    assert bpe.tokenize("1994") == ["▁", "1", "9", "9", "4"]
    pieces = bpe.tokenize("A man is running in 1994.")
    start = pieces.index("1")
    assert pieces[start - 1] == "▁" and pieces[start : start + 4] == ["1", "9", "9", "4"]
    assert bpe.decode(bpe("A man is running in 1994.")["input_ids"], skip_special_tokens=True) == (
        "A man is running in 1994."
    )


def test_digits_merge_without_split_digits():
    years = [f"It was {1990 + i % 5} when it happened." for i in range(300)]
    tok = train_tokenizer(years, vocab_size=200, split_digits=False)
    assert any(len(piece.strip("▁")) >= 2 and piece.strip("▁").isdigit() for piece in tok.tokenize("It was 1994"))
    split = train_tokenizer(years, vocab_size=200, split_digits=True)
    assert all(len(piece.strip("▁")) <= 1 for piece in split.tokenize("1994"))


def test_lowercase_option():
    tok = train_tokenizer(TRAIN, vocab_size=300, lowercase=True)
    sentence = "A Man, In A Blue Shirt, Is Running."
    assert tok.decode(tok(sentence)["input_ids"], skip_special_tokens=True) == sentence.lower()


def test_text_target_labels_equal_plain_encoding(tokenizer):
    batch = TRAIN[:8]
    plain = tokenizer(batch)["input_ids"]
    targets = tokenizer(text_target=batch)
    assert targets["input_ids"] == plain
    both = tokenizer(TRAIN[8:16], text_target=batch, padding=False)
    assert both["labels"] == plain
    assert both["input_ids"] == tokenizer(TRAIN[8:16])["input_ids"]
    lengths = {len(ids) for ids in both["labels"]}
    assert len(lengths) > 1  # padding=False: no padding, the lengths differ
    assert all(0 not in ids for ids in both["labels"])


def test_right_padding_with_zero_and_mask(tokenizer):
    batch = ["Ein Mann läuft.", TRAIN[0], "나는 학교에 간다.", UNSEEN[0]]
    out = tokenizer(batch, padding=True, return_tensors="pt")
    assert set(out.keys()) == {"input_ids", "attention_mask"}
    assert out["input_ids"].dtype == torch.long
    for row, sentence in enumerate(batch):
        ids = tokenizer(sentence)["input_ids"]
        n = len(ids)
        assert out["input_ids"][row, :n].tolist() == ids
        assert (out["input_ids"][row, n:] == 0).all()
        assert out["attention_mask"][row].tolist() == [1] * n + [0] * (out["input_ids"].shape[1] - n)
    assert (out["attention_mask"].sum(1) < out["input_ids"].shape[1]).any()  # some row was padded
    assert tokenizer.padding_side == "right"


def test_no_token_type_ids(tokenizer):
    assert "token_type_ids" not in tokenizer("Ein Mann läuft.")
    assert "token_type_ids" not in tokenizer(["Ein Mann läuft.", "A man"], padding=True, return_tensors="pt")
    assert "token_type_ids" not in tokenizer("Ein Mann läuft.", "A man is running.")
    assert list(tokenizer.model_input_names) == ["input_ids", "attention_mask"]


def test_batch_decode_skips_pad_bos_eos(tokenizer):
    batch = [TRAIN[1], TRAIN[2]]
    out = tokenizer(batch, padding=True, return_tensors="pt")
    with_bos = torch.cat([torch.ones(2, 1, dtype=torch.long), out["input_ids"]], dim=1)  # as generate() returns
    assert tokenizer.batch_decode(with_bos, skip_special_tokens=True) == batch
    assert "</s>" in tokenizer.decode(out["input_ids"][0])


def test_save_and_load_in_process(tokenizer, tmp_path):
    save_tokenizer(tokenizer, tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["model_input_names"] == ["input_ids", "attention_mask"]
    assert (tmp_path / "tokenizer.json").is_file()

    loaded = AutoTokenizer.from_pretrained(tmp_path)
    sentences = TRAIN[:50] + UNSEEN
    assert loaded(sentences)["input_ids"] == tokenizer(sentences)["input_ids"]
    assert "token_type_ids" not in loaded(sentences[0])
    assert loaded.padding_side == "right"
    assert [loaded.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS] == [0, 1, 2, 3]
    encoded = loaded(sentences, padding=True, return_tensors="pt")["input_ids"]
    assert loaded.batch_decode(encoded, skip_special_tokens=True) == sentences
    assert loaded(text_target=sentences[:5])["input_ids"] == tokenizer(sentences[:5])["input_ids"]


@pytest.mark.parametrize(
    "python",
    [
        pytest.param(sys.executable, id="this-transformers"),
        pytest.param(
            OTHER_PYTHON,
            id="other-transformers",
            marks=pytest.mark.skipif(not OTHER_PYTHON, reason=OTHER_PYTHON_REASON),
        ),
    ],
)
def test_fresh_process_without_the_package_loads_the_folder(bpe, tmp_path, python):
    folder = tmp_path / "tok"
    save_tokenizer(bpe, folder)
    sentences = TRAIN[:20] + UNSEEN[-3:]
    script = textwrap.dedent(
        """
        import sys
        sys.modules["hf_rnn_attention"] = None  # the package must not be needed
        import json
        import transformers
        from transformers import AutoTokenizer

        folder, sentences = sys.argv[1], json.loads(sys.argv[2])
        tok = AutoTokenizer.from_pretrained(folder)
        enc = tok(sentences)
        print(json.dumps({
            "version": transformers.__version__,
            "keys": sorted(enc.keys()),
            "ids": enc["input_ids"],
            "decoded": tok.batch_decode(enc["input_ids"], skip_special_tokens=True),
            "padded": tok(sentences, padding=True)["input_ids"],
            "labels": tok(text_target=sentences)["input_ids"],
        }))
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    result = subprocess.run(
        [python, "-c", script, str(folder), json.dumps(sentences)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    if python != sys.executable:
        assert out["version"].split(".")[0] != transformers.__version__.split(".")[0], out["version"]
    assert out["keys"] == ["attention_mask", "input_ids"]
    assert out["ids"] == bpe(sentences)["input_ids"]
    assert out["decoded"] == sentences
    assert out["padded"] == bpe(sentences, padding=True)["input_ids"]
    assert out["labels"] == bpe(sentences)["input_ids"]


@pytest.mark.parametrize("model", ["wordpiece", "BPE-dropout", ""])
def test_bad_model_raises(model):
    with pytest.raises(ValueError, match=r"model.*'bpe'.*'unigram'"):
        train_tokenizer(TRAIN[:10], model=model)


@pytest.mark.parametrize("vocab_size", [0, 4, -1])
def test_bad_vocab_size_raises(vocab_size):
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(TRAIN[:10], vocab_size=vocab_size)


def test_model_name_is_case_insensitive():
    tok = train_tokenizer(TRAIN[:30], vocab_size=100, model="Unigram")
    assert type(tok.backend_tokenizer.model).__name__ == "Unigram"


def test_train_from_dataset_uses_both_columns():
    datasets = pytest.importorskip("datasets")
    english_lines = [s for s in TRAIN if s[0].isascii() and not s.startswith(("Ein", "Eine", "Zwei", "Der", "Drei"))]
    korean_lines = [s for s in TRAIN if not s[0].isascii()]
    n = min(len(english_lines), len(korean_lines))
    data = datasets.Dataset.from_dict({"source": english_lines[:n], "target": korean_lines[:n]})
    for dataset in (data, datasets.DatasetDict({"train": data})):
        tok = train_tokenizer_from_dataset(dataset, vocab_size=200, batch_size=16)
        assert tok.decode(tok(korean_lines[0])["input_ids"], skip_special_tokens=True) == korean_lines[0]
        assert tok.decode(tok(english_lines[0])["input_ids"], skip_special_tokens=True) == english_lines[0]
        assert 3 not in tok("우리는 학교에 간다. A man is running.")["input_ids"]
    with pytest.raises(ValueError, match="target"):
        train_tokenizer_from_dataset(data.remove_columns("target"), vocab_size=100)
    with pytest.raises(ValueError, match="train"):
        train_tokenizer_from_dataset(datasets.DatasetDict({"validation": data}), vocab_size=100)


def test_cli_writes_a_loadable_folder(tmp_path, capsys):
    plain = tmp_path / "train.de"
    plain.write_text("\n".join(s for s in TRAIN if s[0].isascii()) + "\n", encoding="utf-8")
    packed = tmp_path / "train.ko.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(s for s in TRAIN if not s[0].isascii()) + "\n")
    output = tmp_path / "tok"
    assert (
        main(["--files", str(plain), str(packed), "--vocab-size", "250", "--model", "unigram", "--output", str(output)])
        == 0
    )
    assert "saved" in capsys.readouterr().out
    config = json.loads((output / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    loaded = AutoTokenizer.from_pretrained(output)
    assert len(loaded) <= 250
    assert type(loaded.backend_tokenizer.model).__name__ == "Unigram"
    encoded = loaded(TRAIN)["input_ids"]
    assert all(ids[-1] == 2 and 3 not in ids for ids in encoded)
    assert loaded.batch_decode(encoded, skip_special_tokens=True) == TRAIN


def test_cli_rejects_a_bad_model(tmp_path):
    with pytest.raises(SystemExit):
        main(["--files", "x.txt", "--model", "wordpiece", "--output", str(tmp_path)])


@pytest.mark.skipif(
    not (MULTI30K / "train.de.gz").is_file() or not (MULTI30K / "train.en.gz").is_file(),
    reason=f"Multi30k training text not found under {MULTI30K}",
)
def test_multi30k_bpe_8000_round_trip():
    lines = []
    for language in ("de", "en"):
        with gzip.open(MULTI30K / f"train.{language}.gz", "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle):
                if number == 5000:
                    break
                lines.append(line.rstrip("\n"))
    tok = train_tokenizer(lines, vocab_size=8000)
    assert len(tok) <= 8000 and tok.vocab_size <= 8000
    sample = random.Random(0).sample(lines, 200)
    decoded = tok.batch_decode(tok(sample)["input_ids"], skip_special_tokens=True)
    mismatches = [(s, d) for s, d in zip(sample, decoded, strict=True) if s != d]
    assert not mismatches, mismatches[:5]


def test_tokenizer_from_file_adds_the_missing_special_tokens_and_keeps_the_pieces(tmp_path):
    """A `tokenizers` JSON trained elsewhere (like the peers' bpe8k.json: BPE with only <unk>) becomes a ready
    tokenizer: its pieces keep their ids, <pad> <s> </s> come after them, </s> ends every sequence."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from hf_rnn_attention.tokenization import tokenizer_from_file

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.train_from_iterator(TRAIN, trainers.BpeTrainer(vocab_size=80, special_tokens=["<unk>"]))
    path = tmp_path / "bpe.json"
    raw.save(str(path))
    tokenizer = tokenizer_from_file(path)
    size = raw.get_vocab_size()
    assert len(tokenizer) == size + 3
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (size, size + 1, size + 2)
    assert tokenizer.unk_token_id == 0
    ids = tokenizer(TRAIN[0])["input_ids"]
    assert ids == raw.encode(TRAIN[0]).ids + [tokenizer.eos_token_id]
    assert "token_type_ids" not in tokenizer(TRAIN[0])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tokenizer_from_file(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a `tokenizers` JSON"):
        tokenizer_from_file(tmp_path / "bad.json")

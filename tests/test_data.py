"""gpt2.data: line-wise tokenization, blocks as run_clm makes them, JSON and CSV, the cache, the errors."""

import csv
import hashlib
import io
import json
import math
import os
from itertools import chain
from pathlib import Path

import numpy as np
import pytest
import torch

import gpt2.files as gpt2_files
from gpt2 import data
from harness import datasets, textfiles
from gpt2.errors import UserError
from gpt2.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
SAME_FILE_WARNING = "warning: the validation file is the training file"


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_dir(str(REPO / "weights" / "gpt2"))


def write(path: Path, content) -> Path:
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def user_error(fn, *args) -> str:
    """Call fn, expect a UserError, return its message (checked to be one line)."""
    with pytest.raises(UserError) as e:
        fn(*args)
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


# --- splitting and tokenizing -------------------------------------------------

def test_split_lines_like_the_datasets_text_loader():
    assert textfiles.split_lines("a\n\nb") == ["a\n", "\n", "b"]
    assert textfiles.split_lines("a\nb\n") == ["a\n", "b\n"]          # no empty last line
    assert textfiles.split_lines("\n\n") == ["\n", "\n"]
    assert textfiles.split_lines("") == []
    # Text-mode reading turns "\r\n" and "\r" into "\n".
    assert textfiles.split_lines("a\r\nb\rc") == ["a\n", "b\n", "c"]
    # Only "\n" splits; str.splitlines would also split on these.
    odd = "x\u2028y\x0cz\x85w\x1ev"
    assert textfiles.split_lines(odd) == [odd]
    assert len(odd.splitlines()) > 1


def test_tokenize_lines_tokenizes_each_line_on_its_own(tok):
    text = "def f():\n\n    return 1\n\n\nend"
    lines = ["def f():\n", "\n", "    return 1\n", "\n", "\n", "end"]
    by_hand = list(chain.from_iterable(tok.encode(line) for line in lines))
    ids = datasets.tokenize_lines(text, tok)
    assert ids.dtype == np.uint16
    assert ids.tolist() == by_hand
    # A blank line is two 198s ("\n", "\n"), never the 628 ("\n\n") that tokenizing the
    # whole text at once gives here: that is the difference line-wise tokenization makes.
    assert 628 in tok.encode(text)
    assert 628 not in ids.tolist()
    assert ids.tolist()[3:5] == [198, 198] and ids.tolist()[10:13] == [198, 198, 198]
    assert datasets.tokenize_lines("a\n\nb", tok).tolist() == [64, 198, 198, 65]


def test_tokenize_lines_in_chunks_gives_the_same_ids(tok, monkeypatch):
    text = "".join(f"line {i}\n" if i % 3 else "\n" for i in range(50)) + "tail"
    whole = datasets.tokenize_lines(text, tok)
    monkeypatch.setattr(data, "ENCODE_CHUNK_LINES", 7)
    assert datasets.tokenize_lines(text, tok).tolist() == whole.tolist()
    assert datasets.tokenize_lines("", tok).size == 0


def run_clm_blocks(path, tok, block_size):
    """What run_clm.py does, rewritten without `datasets`:

    the text loader (open() in text mode, then StringIO(...).readlines(), keeping the
    line breaks), `tokenize_function` (each line on its own), then `group_texts`.
    """
    with open(path, encoding="utf-8") as f:
        lines = io.StringIO(f.read()).readlines()
    examples = {"input_ids": [tok.encode(line) for line in lines]}
    # group_texts, as in run_clm.py:
    concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
    total_length = len(concatenated["input_ids"])
    total_length = (total_length // block_size) * block_size
    result = {k: [t[i:i + block_size] for i in range(0, total_length, block_size)]
              for k, t in concatenated.items()}
    result["labels"] = result["input_ids"].copy()
    return result


# Line ends of all kinds, blank lines, indented code, non-ASCII, a Unicode line
# separator (not a line break for the loader) and a literal <|endoftext|>.
MIXED_TEXT = ("The cat sat.\r\n\r\nOn the mat, café 東京 🙂.\n\n\n"
              "def f(x):\n\n    return x  # done\n\tTab\u2028sep\n"
              "  <|endoftext|> next document\nlast line without newline")


def test_blocks_match_run_clm_group_texts(tok, tmp_path):
    path = write(tmp_path / "t.txt", MIXED_TEXT)
    for block_size in (1, 5, 16):
        expected = run_clm_blocks(path, tok, block_size)
        train, val, info = datasets.build_datasets(str(path), None, 0, block_size, tok, None)
        assert val is None
        assert train.tolist() == expected["input_ids"]
        assert expected["labels"] == expected["input_ids"]  # the model does the shifting
        assert info["train_blocks"] == len(expected["input_ids"])
    assert 50256 in train.ravel().tolist()


def test_make_blocks_drops_the_remainder():
    ids = np.arange(10, dtype=np.uint16)
    blocks = data.make_blocks(ids, 4, "x")
    assert blocks.shape == (2, 4)
    assert blocks.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    batch = data.to_batch(blocks, [1])
    assert batch.dtype == torch.int64 and batch.tolist() == [[4, 5, 6, 7]]


# --- JSON and CSV -----------------------------------------------------------------

def txt_lines(path):
    """The lines the `datasets` text loader gives (text mode, line breaks kept)."""
    with open(path, encoding="utf-8") as f:
        return io.StringIO(f.read()).readlines()


def write_csv(path, header, rows):
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)  # quotes cells holding commas, quotes or line breaks
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_records_holding_the_lines_give_the_txt_ids(tok, tmp_path):
    """A record's text is tokenized as it is, exactly like one line of a .txt file."""
    txt = write(tmp_path / "t.txt", MIXED_TEXT)
    lines = txt_lines(txt)
    jsonl = write(tmp_path / "t.jsonl", "".join(
        json.dumps({"text": line}, ensure_ascii=False) + "\n" for line in lines))  # raw U+2028 too
    json_list = write(tmp_path / "t.json", json.dumps(
        [{"id": i, "text": line} for i, line in enumerate(lines)], indent=2))
    csv_file = write_csv(tmp_path / "t.csv", ["id", "text"], list(enumerate(lines)))
    expected = datasets.load_token_ids(str(txt), tok, None)
    for path in (jsonl, json_list, csv_file):
        assert textfiles.read_texts(str(path)) == lines
        ids = datasets.load_token_ids(str(path), tok, None)
        assert ids.dtype == expected.dtype and ids.tolist() == expected.tolist()
        for block_size in (1, 5, 16):
            train, _, info = datasets.build_datasets(str(path), None, 0, block_size, tok, None)
            assert train.tolist() == run_clm_blocks(txt, tok, block_size)["input_ids"]
            assert info["train_tokens"] == len(expected)


def test_the_text_column_or_else_the_first(tok, tmp_path):
    """As run_clm: the column "text" if there is one, else the first column."""
    later = write(tmp_path / "later.jsonl", '{"id": 1, "body": "a"}\n{"id": 2, "text": "b"}\n')
    assert user_error(textfiles.read_texts, str(later)) == f'{later}: record 1 (line 1) has no "text"'
    first = write(tmp_path / "first.jsonl", '{"title": "A", "body": "x"}\n{"body": "y", "title": "B"}\n')
    assert textfiles.read_texts(str(first)) == ["A", "B"]
    # The first column is the first key to appear in any record, here after an empty one.
    empty_first = write(tmp_path / "e.json", '[{}, {"b": "1", "a": "2"}, {"b": "3"}]')
    assert user_error(textfiles.read_texts, str(empty_first)) == f'{empty_first}: record 1 has no "b"'
    assert textfiles.read_texts(str(write(tmp_path / "f.json", '[{"b": "1", "a": "2"}, {"b": "3"}]'))) == ["1", "3"]
    by_name = write_csv(tmp_path / "named.csv", ["id", "text"], [[1, "a"], [2, "b"]])
    assert textfiles.read_texts(str(by_name)) == ["a", "b"]
    first_cell = write_csv(tmp_path / "first.csv", ["body", "id"], [["a", 1], ["b", 2]])
    assert textfiles.read_texts(str(first_cell)) == ["a", "b"]


def test_csv_cells(tok, tmp_path):
    """Empty cells are empty texts; quoted commas, quotes and line breaks stay; blank lines are skipped."""
    path = write(tmp_path / "t.csv", 'text,label\n,1\n"",2\n\n"a, ""b""\r\nc",3\nd\n')
    assert textfiles.read_texts(str(path)) == ["", "", 'a, "b"\r\nc', "d"]
    assert datasets.load_token_ids(str(path), tok, None).tolist() == tok.encode('a, "b"\r\nc') + tok.encode("d")
    assert textfiles.read_texts(str(write(tmp_path / "bom.csv", b"\xef\xbb\xbftext\nx\n"))) == ["x"]
    # Longer than the csv module's default limit of 131,072 characters per cell.
    assert textfiles.read_texts(str(write(tmp_path / "long.csv", "text\n" + "x" * 200_000))) == ["x" * 200_000]


def test_json_lines_skip_blank_lines_and_accept_crlf(tmp_path):
    path = write(tmp_path / "t.jsonl", '{"text": "a"}\r\n\r\n  \n{"text": "b\\n"}')
    assert textfiles.read_texts(str(path)) == ["a", "b\n"]


def test_no_end_of_text_token_between_texts(tok, tmp_path):
    """Records are chained as they are, like run_clm's group_texts: no 50256 between them."""
    path = write(tmp_path / "t.jsonl", '{"text": "First document."}\n{"text": "Second document."}\n')
    ids = datasets.load_token_ids(str(path), tok, None).tolist()
    assert ids == tok.encode("First document.") + tok.encode("Second document.")
    assert tok.eot_id == 50256 and 50256 not in ids
    # Who wants document ends marks them in the text: the tokenizer turns the string into 50256.
    marked = write(tmp_path / "m.jsonl", '{"text": "First document.<|endoftext|>"}\n')
    assert datasets.load_token_ids(str(marked), tok, None).tolist()[-1] == 50256


BAD_RECORDS = [
    ("a.jsonl", '{"text": "a"}\n[1, 2]\n', "record 2 (line 2) is an array, not an object"),
    ("a.json", '[{"text": "a"}, "b"]', "record 2 is a string, not an object"),
    ("a.jsonl", '{"text": "a"}\n\n{"other": "b"}\n', 'record 2 (line 3) has no "text"'),
    ("a.jsonl", '{"text": null}\n', 'record 1 (line 1): "text" is null, not a string'),
    ("a.jsonl", '{"text": 3}', 'record 1 (line 1): "text" is a number, not a string'),
    ("a.jsonl", '{"text": ["a"]}', 'record 1 (line 1): "text" is an array, not a string'),
    ("a.jsonl", '{"text": true}', 'record 1 (line 1): "text" is a boolean, not a string'),
    ("a.jsonl", '{"text": "a"}\n{"text": "b",}\n',
     "invalid JSON at line 2, column 14: Expecting property name enclosed in double quotes "
     "(expected one object per line, or one list of objects)"),
    ("a.json", '{\n  "text": "a"\n}\n',  # one pretty-printed object: neither form
     "invalid JSON at line 1, column 2: Expecting property name enclosed in double quotes "
     "(expected one object per line, or one list of objects)"),
    ("a.json", '[{"text": "a"},\n {"text": "b"]\n', "invalid JSON at line 2, column 14: Expecting ',' delimiter"),
    ("a.json", "[]", "no records"),
    ("a.jsonl", "\n  \n", "no records"),
    ("a.jsonl", "{}\n{}\n", "the records have no fields"),
    ("a.csv", "text,label\n", "no rows below the header (the first row)"),
    ("a.csv", "text\n\n\n", "no rows below the header (the first row)"),
    ("a.csv", "text,label\nhello, world,1\n",
     "record 1 (line 2) has 3 cells, the header 2; quote a text that holds a comma"),
    ("a.csv", "id,text\n1,a\n2\n", 'record 2 (line 3) has no "text" cell'),
    ("a.csv", 'text\nok\n"unclosed\nmore\n', "invalid CSV in the row starting at line 3: unexpected end of data"),
    ("a.md", "# notes\n", "cannot read a .md file; the files read are .txt, .json, .jsonl and .csv"),
    ("README", "text\n", "cannot read a file without an extension; the files read are .txt, .json, .jsonl and .csv"),
]


@pytest.mark.parametrize("name, content, cause", BAD_RECORDS)
def test_bad_json_and_csv_are_one_line_errors(tok, tmp_path, name, content, cause):
    path = str(write(tmp_path / name, content))
    assert user_error(datasets.load_token_ids, path, tok, None) == f"{path}: {cause}"
    assert user_error(textfiles.read_texts, path) == f"{path}: {cause}"
    # A validation file is checked the same way, under its own name.
    train = str(write(tmp_path / "train.txt", "some words to train on\n" * 4))
    assert user_error(datasets.build_datasets, train, path, 0, 4, tok, None) == f"{path}: {cause}"


def test_the_extension_decides_and_its_case_does_not_matter(tok, tmp_path):
    content = '{"text": "Hello"}\n'
    upper = write(tmp_path / "T.JSONL", content)
    assert datasets.load_token_ids(str(upper), tok, None).tolist() == tok.encode("Hello")
    assert datasets.load_token_ids(str(write(tmp_path / "t.TXT", content)), tok, None).tolist() \
        == tok.encode(content)
    assert textfiles.file_format("x.txt") == "txt" and textfiles.file_format("x.jsonl") == "json"


# --- keep_linebreaks ---------------------------------------------------------------

def test_keep_linebreaks_false_drops_each_lines_newline(tok, tmp_path):
    path = write(tmp_path / "t.txt", "a\r\n\nb\nc")
    ids = datasets.load_token_ids(str(path), tok, None, keep_linebreaks=False)
    # The `datasets` text loader with keep_linebreaks=False: line.rstrip("\n") for each line.
    lines = [line.rstrip("\n") for line in txt_lines(path)]
    assert lines == ["a", "", "b", "c"]
    assert ids.tolist() == list(chain.from_iterable(tok.encode(line) for line in lines))
    # Nothing is left between the lines: "a", "b" and "c" run together.
    assert ids.tolist() == tok.encode("a") + tok.encode("b") + tok.encode("c") == [64, 65, 66]
    assert textfiles.read_texts(str(path), keep_linebreaks=False) == lines
    # The default keeps them.
    assert datasets.load_token_ids(str(path), tok, None).tolist() == [64, 198, 198, 65, 198, 66]


def test_keep_linebreaks_through_build_datasets(tok, tmp_path):
    path = str(write(tmp_path / "t.txt", "one two\nthree four\n" * 4))
    _, _, kept = datasets.build_datasets(path, None, 0, 2, tok, None)
    _, _, dropped = datasets.build_datasets(path, None, 0, 2, tok, None, keep_linebreaks=False)
    assert kept["train_tokens"] - dropped["train_tokens"] == 8   # one "\n" per line
    # run_clm passes keep_linebreaks to the text loader only: JSON and CSV ignore it.
    js = str(write(tmp_path / "t.jsonl", '{"text": "one\\n"}\n'))
    assert datasets.load_token_ids(js, tok, None, keep_linebreaks=False).tolist() == tok.encode("one\n")


def test_the_cache_key_holds_how_the_file_is_read(tok, tmp_path, monkeypatch):
    """The same bytes read as .txt or as JSON, with or without line breaks: different ids, different caches."""
    cache = str(tmp_path / "cache")
    content = '{"text": "Hello\\n"}\n'
    txt, js = str(write(tmp_path / "t.txt", content)), str(write(tmp_path / "t.jsonl", content))
    loads = [(txt, True), (txt, False), (js, True), (js, False)]
    first = [datasets.load_token_ids(p, tok, cache, keep_linebreaks=k).tolist() for p, k in loads]
    assert first[0] == tok.encode(content) and first[1] == tok.encode(content.rstrip("\n"))
    assert first[2] == first[3] == tok.encode("Hello\n")
    # Named <bytes' hash>-<tokenizer>-<how the file is read>-v<format>.npz
    v = f"-v{datasets.CACHE_FORMAT}.npz"
    assert sorted(name.split("-", 2)[2] for name in os.listdir(cache)) == \
        sorted(["json" + v, "txt" + v, "txt-nolinebreaks" + v])
    calls = count_encode_calls(tok, monkeypatch)
    assert [datasets.load_token_ids(p, tok, cache, keep_linebreaks=k).tolist() for p, k in loads] == first
    assert calls == []  # all four from the cache


# --- the cache ------------------------------------------------------------------

def count_encode_calls(tok, monkeypatch):
    calls = []
    real = tok.encode_batch

    def counting(texts):
        calls.append(len(texts))
        return real(texts)

    monkeypatch.setattr(tok, "encode_batch", counting)
    return calls


def test_cache_hit_does_not_tokenize_again(tok, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    path = write(tmp_path / "t.txt", "Hello world\n\nsecond line\n")
    first = datasets.load_token_ids(str(path), tok, str(cache))
    files = os.listdir(cache)
    assert len(files) == 1 and files[0].endswith(f"-txt-v{datasets.CACHE_FORMAT}.npz")

    def no_tokenizing(texts):
        raise AssertionError("tokenized although the cache has these ids")

    monkeypatch.setattr(tok, "encode_batch", no_tokenizing)
    second = datasets.load_token_ids(str(path), tok, str(cache))
    assert second.tolist() == first.tolist()
    assert second.dtype == first.dtype


def test_cache_miss_when_the_file_changes(tok, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    path = write(tmp_path / "t.txt", "Hello world\n")
    calls = count_encode_calls(tok, monkeypatch)
    first = datasets.load_token_ids(str(path), tok, str(cache))
    assert len(calls) == 1
    datasets.load_token_ids(str(path), tok, str(cache))
    assert len(calls) == 1
    write(path, "Goodbye world\n")
    changed = datasets.load_token_ids(str(path), tok, str(cache))
    assert len(calls) == 2
    assert changed.tolist() != first.tolist()
    assert changed.tolist() == tok.encode("Goodbye world\n")
    assert len(os.listdir(cache)) == 2  # no temporary files left behind


def test_demo_corpus_is_cached_too(tok, tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    calls = count_encode_calls(tok, monkeypatch)
    train, val, info = datasets.build_datasets(None, None, 5, 1024, tok, cache)
    n = len(calls)
    assert n > 0 and info["demo"]
    assert info["train_tokens"] > 100_000
    assert len(val) == max(1, (len(train) + len(val)) * 5 // 100)
    again, _, _ = datasets.build_datasets(None, None, 5, 1024, tok, cache)
    assert len(calls) == n
    assert again.tolist() == train.tolist()
    # The demo's fingerprint is that of its UTF-8 text; its validation set is a split.
    assert info["train_sha256"] == hashlib.sha256(datasets.demo_text()[1].encode("utf-8")).hexdigest()
    assert info["validation_sha256"] is None


def test_no_cache_dir_writes_nothing(tok, tmp_path):
    path = write(tmp_path / "t.txt", "Hello world\n")
    datasets.load_token_ids(str(path), tok, None)
    assert os.listdir(tmp_path) == ["t.txt"]


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("GPT2_CACHE_DIR", str(tmp_path))
    assert datasets.default_cache_dir() == str(tmp_path)
    monkeypatch.delenv("GPT2_CACHE_DIR")
    assert Path(datasets.default_cache_dir()) == REPO / ".cache" / "tokens"


# --- a damaged cache ------------------------------------------------------------

CORRUPT = "warning: {}: unreadable or damaged token cache, tokenizing again\n"


def make_cache(tok, tmp_path, text="A few words of text, to be cached.\n" * 40):
    """(the text file, the cache directory, the one cache file, the ids)."""
    cache = tmp_path / "cache"
    path = write(tmp_path / "t.txt", text)
    ids = datasets.load_token_ids(str(path), tok, str(cache))
    [name] = os.listdir(cache)
    return str(path), str(cache), cache / name, ids


def save_npz(path, ids, checksum=None):
    """A well-formed cache file holding `ids`, with their true checksum unless one is given."""
    if checksum is None:
        checksum = hashlib.sha256(np.ascontiguousarray(ids).tobytes()).hexdigest()
    path.write_bytes(npz_bytes(ids=ids, sha256=np.array(checksum)))


def npz_bytes(**arrays) -> bytes:
    f = io.BytesIO()
    np.savez(f, **arrays)
    return f.getvalue()


def npy_bytes(array) -> bytes:
    f = io.BytesIO()
    np.save(f, array)
    return f.getvalue()


def flip_a_byte_of_the_ids(cached, ids):
    content = bytearray(cached.read_bytes())
    at = content.index(ids.tobytes()) + ids.nbytes // 2   # the middle of the stored ids
    content[at] ^= 0x01
    cached.write_bytes(bytes(content))


DAMAGES = {
    "flipped": flip_a_byte_of_the_ids,
    "truncated": lambda cached, ids: cached.write_bytes(cached.read_bytes()[:cached.stat().st_size // 2]),
    "empty": lambda cached, ids: cached.write_bytes(b""),
    # Loadable, with a true checksum, but the ids are past the vocabulary (50,257).
    "out of range": lambda cached, ids: save_npz(cached, np.where(np.arange(len(ids)) == 3, 50257, ids)
                                                 .astype(np.uint16)),
    "65535": lambda cached, ids: save_npz(cached, np.full_like(ids, 65535)),
    # Loadable, in range, but not the ids that were written.
    "bad checksum": lambda cached, ids: save_npz(cached, ids[::-1].copy(), checksum=datasets._ids_sha256(ids)),
    "int64": lambda cached, ids: save_npz(cached, ids.astype(np.int64)),
    "2-d": lambda cached, ids: save_npz(cached, ids[:len(ids) // 2 * 2].reshape(2, -1)),
    "no checksum": lambda cached, ids: cached.write_bytes(npz_bytes(ids=ids)),
    "an .npy": lambda cached, ids: cached.write_bytes(npy_bytes(ids)),   # version 1's layout
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_corrupt_cache_is_tokenized_again(tok, tmp_path, monkeypatch, capsys, damage):
    path, cache, cached, ids = make_cache(tok, tmp_path)
    assert capsys.readouterr().err == ""            # a missing cache is no news
    DAMAGES[damage](cached, ids)
    calls = count_encode_calls(tok, monkeypatch)
    again = datasets.load_token_ids(path, tok, cache)
    assert again.dtype == ids.dtype and again.tolist() == ids.tolist()
    assert len(calls) == 1
    assert capsys.readouterr().err == CORRUPT.format(cached)
    # The cache was written again, whole: the next load is silent and does not tokenize.
    assert datasets.load_token_ids(path, tok, cache).tolist() == ids.tolist()
    assert len(calls) == 1 and capsys.readouterr().err == ""
    assert os.listdir(cache) == [cached.name]


def test_no_flipped_bit_or_cut_gives_wrong_ids(tok, tmp_path):
    """Flip one bit in each byte of a small cache file (one byte at a time), and cut it at
    many lengths: every load either gives the right ids or is refused (None), and never raises."""
    path, cache, cached, ids = make_cache(tok, tmp_path, text="Short.\n")
    good = cached.read_bytes()                        # about 770 bytes
    damaged = [good[:n] for n in range(0, len(good), 7)]
    for i in range(len(good)):
        bit = 1 << (i % 8)                            # a different bit from byte to byte
        damaged.append(good[:i] + bytes([good[i] ^ bit]) + good[i + 1:])
    for content in damaged:
        cached.write_bytes(content)
        loaded = datasets._load_cached(str(cached), tok)
        assert loaded is None or loaded.tolist() == ids.tolist()


# --- fingerprints ---------------------------------------------------------------

def sha256_of(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_info_fingerprints_the_files(tok, tmp_path, monkeypatch):
    train = write(tmp_path / "train.txt", "one two three four five six\n" * 3)
    val = write(tmp_path / "val.jsonl", '{"text": "seven eight nine ten"}\n')
    cache = str(tmp_path / "cache")
    # Count how often gpt2/files.py (open_regular, for textfiles.py) opens each file (a module
    # global shadows the builtin).
    opened = []
    monkeypatch.setattr(gpt2_files, "open", lambda f, *a, **k: opened.append(str(f)) or open(f, *a, **k),
                        raising=False)
    for _ in range(2):                                # a cache miss, then a hit
        opened.clear()
        _, _, info = datasets.build_datasets(str(train), str(val), 0, 2, tok, cache)
        assert info["train_sha256"] == sha256_of(train)
        assert info["validation_sha256"] == sha256_of(val)
        assert opened.count(str(train)) == opened.count(str(val)) == 1   # each file read once
    _, _, no_cache = datasets.build_datasets(str(train), str(val), 0, 2, tok, None)
    assert (no_cache["train_sha256"], no_cache["validation_sha256"]) == (info["train_sha256"],
                                                                         info["validation_sha256"])
    # An edited file has another fingerprint; a held-out split has none of its own.
    write(train, "one two three four five six\n" * 4)
    _, _, edited = datasets.build_datasets(str(train), None, 10, 2, tok, cache)
    assert edited["train_sha256"] == sha256_of(train) != info["train_sha256"]
    assert edited["validation_sha256"] is None


# --- errors ---------------------------------------------------------------------

def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.txt")
    assert user_error(textfiles.read_text, path) == f"{path}: no such file"


def test_empty_file(tmp_path):
    path = str(write(tmp_path / "empty.txt", b""))
    assert user_error(textfiles.read_text, path) == f"{path}: the file is empty"
    bom_only = str(write(tmp_path / "bom.txt", b"\xef\xbb\xbf"))
    assert user_error(textfiles.read_text, bom_only) == f"{bom_only}: the file is empty"


def test_directory(tmp_path):
    msg = user_error(textfiles.read_text, str(tmp_path))
    assert msg.startswith(f"{tmp_path}: ") and "directory" in msg


def test_not_utf8_says_where(tmp_path):
    content = "first\nsecond\n".encode() + "né".encode() + b"\xff rest\n"
    path = str(write(tmp_path / "latin.txt", content))
    msg = user_error(textfiles.read_text, path)
    offset = content.index(b"\xff")
    # "né" is two characters, so the bad byte is in column 3 (though byte 4 of the line).
    assert msg.startswith(f"{path}: not UTF-8 text: byte 0xff at line 3, column 3 "
                          f"(byte offset {offset})")
    # Through load_token_ids too (it reads the bytes itself, for the cache key).
    assert user_error(datasets.load_token_ids, path, None, None) == msg


def test_truncated_utf8_sequence(tmp_path):
    path = str(write(tmp_path / "cut.txt", b"ok\n\xe2\x82"))   # "€" cut short
    msg = user_error(textfiles.read_text, path)
    assert "bytes 0xe2 0x82 at line 2, column 1 (byte offset 3)" in msg


def test_bom_is_dropped(tmp_path):
    path = str(write(tmp_path / "bom.txt", b"\xef\xbb\xbfHello"))
    assert textfiles.read_text(path) == "Hello"


def test_too_short_for_one_block(tok, tmp_path):
    path = str(write(tmp_path / "short.txt", "Hello world, hello.\n"))
    n = len(tok.encode("Hello world, hello.\n"))
    msg = user_error(datasets.build_datasets, path, None, 0, 1024, tok, None)
    assert msg == (f"{path}: {n} tokens, fewer than one block of 1024; "
                   f"use a smaller --block-size or more text")
    # The validation file is checked the same way, under its own name.
    long = str(write(tmp_path / "long.txt", "word " * 50))
    msg = user_error(datasets.build_datasets, long, path, 0, 16, tok, None)
    assert msg.startswith(f"{path}: {n} tokens, fewer than one block of 16")


# --- validation split -----------------------------------------------------------

def test_validation_split_sizes():
    blocks = np.arange(400).reshape(100, 4)
    train, val = data.split_blocks(blocks, 5)
    assert len(train) == 95 and len(val) == 5
    assert val.tolist() == blocks[95:].tolist()      # the last blocks are held out
    train, val = data.split_blocks(blocks, 0)
    assert val is None and len(train) == 100
    assert [len(v) for _, v in (data.split_blocks(blocks, p) for p in (0.5, 1, 9.99, 99.5))] \
        == [1, 1, 9, 99]
    ten = blocks[:10]
    assert len(data.split_blocks(ten, 5)[1]) == 1     # 0.5 block rounds up to 1, not 0
    assert len(data.split_blocks(ten, 99)[0]) == 1    # one block always stays for training
    two = blocks[:2]
    assert [len(x) for x in data.split_blocks(two, 1)] == [1, 1]


@pytest.mark.parametrize("bad", [100, 150, -1, math.nan])
def test_validation_percent_out_of_range(bad):
    msg = user_error(data.split_blocks, np.zeros((10, 4)), bad)
    assert "--validation-split" in msg


def test_one_block_cannot_be_split():
    msg = user_error(data.split_blocks, np.zeros((1, 4)), 5, "t.txt")
    assert msg.startswith("t.txt: 1 block, too few to hold out 5% for validation")


def test_validation_file(tok, tmp_path):
    train_path = str(write(tmp_path / "train.txt", "one two three four five six seven\n"))
    val_path = str(write(tmp_path / "val.txt", "eight nine ten eleven\n"))
    train, val, info = datasets.build_datasets(train_path, val_path, 50, 2, tok, None)
    assert val.tolist() == data.make_blocks(datasets.load_token_ids(val_path, tok, None), 2, "v").tolist()
    assert len(train) == info["train_blocks"] == len(tok.encode("one two three four five six seven\n")) // 2
    assert info["validation_source"] == val_path


# --- the same file twice --------------------------------------------------------

def test_same_file_warns_once(tok, tmp_path, capsys):
    path = write(tmp_path / "t.txt", "some words to train on\n" * 4)
    link = tmp_path / "link.txt"
    link.symlink_to(path)
    for validation in (str(path), str(link), str(tmp_path / "." / "t.txt")):
        train, val, _ = datasets.build_datasets(str(path), validation, 0, 4, tok, None)
        err = capsys.readouterr().err
        assert err.count(SAME_FILE_WARNING) == 1
        assert err == ("warning: the validation file is the training file (the same content): eval_loss will "
                       "measure memorisation, not generalisation (docs/lifecycle.md)\n")
        assert train.tolist() == val.tolist()
    other = write(tmp_path / "other.txt", "some other words to check on\n" * 4)
    datasets.build_datasets(str(path), str(other), 0, 4, tok, None)
    assert SAME_FILE_WARNING not in capsys.readouterr().err


def test_a_copy_of_the_training_file_warns_too(tok, tmp_path, capsys):
    # Another path, another inode, the same bytes: eval_loss still measures memorisation.
    path = write(tmp_path / "t.txt", "some words to train on\n" * 4)
    copy = write(tmp_path / "copy.txt", "some words to train on\n" * 4)
    datasets.build_datasets(str(path), str(copy), 0, 4, tok, None)
    assert capsys.readouterr().err.count(SAME_FILE_WARNING) == 1


# --- shuffling and the demo -----------------------------------------------------

def test_epoch_permutation():
    a = data.epoch_permutation(1000, seed=42, epoch=3)
    assert sorted(a.tolist()) == list(range(1000))
    assert a.tolist() == data.epoch_permutation(1000, seed=42, epoch=3).tolist()
    assert a.tolist() != data.epoch_permutation(1000, seed=42, epoch=4).tolist()
    assert a.tolist() != data.epoch_permutation(1000, seed=7, epoch=3).tolist()


def test_epoch_permutation_seeds_do_not_share_epochs():
    # With seed + epoch, seed 42's second epoch was seed 43's first: two "different" runs
    # saw the same orders, shifted by one epoch. Every (seed, epoch) pair is its own order.
    orders = {(s, e): tuple(data.epoch_permutation(100, seed=s, epoch=e)) for s in (42, 43) for e in (0, 1, 2)}
    assert len(set(orders.values())) == len(orders)
    assert orders[(42, 1)] != orders[(43, 0)]


def test_demo_text():
    name, text = datasets.demo_text()
    assert len(text) > 100_000
    assert "pydoc_data" in name
    assert "assert" in text and "The \"if\" statement" in text
    assert datasets.demo_text() == (name, text)

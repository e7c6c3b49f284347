"""gpt2.data: line-wise tokenization, blocks as run_clm makes them, the cache, the errors."""

import io
import math
import os
from itertools import chain
from pathlib import Path

import numpy as np
import pytest
import torch

from gpt2 import data
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
    assert data.split_lines("a\n\nb") == ["a\n", "\n", "b"]
    assert data.split_lines("a\nb\n") == ["a\n", "b\n"]          # no empty last line
    assert data.split_lines("\n\n") == ["\n", "\n"]
    assert data.split_lines("") == []
    # Text-mode reading turns "\r\n" and "\r" into "\n".
    assert data.split_lines("a\r\nb\rc") == ["a\n", "b\n", "c"]
    # Only "\n" splits; str.splitlines would also split on these.
    odd = "x\u2028y\x0cz\x85w\x1ev"
    assert data.split_lines(odd) == [odd]
    assert len(odd.splitlines()) > 1


def test_tokenize_lines_tokenizes_each_line_on_its_own(tok):
    text = "def f():\n\n    return 1\n\n\nend"
    lines = ["def f():\n", "\n", "    return 1\n", "\n", "\n", "end"]
    by_hand = list(chain.from_iterable(tok.encode(line) for line in lines))
    ids = data.tokenize_lines(text, tok)
    assert ids.dtype == np.uint16
    assert ids.tolist() == by_hand
    # A blank line is two 198s ("\n", "\n"), never the 628 ("\n\n") that tokenizing the
    # whole text at once gives here: that is the difference line-wise tokenization makes.
    assert 628 in tok.encode(text)
    assert 628 not in ids.tolist()
    assert ids.tolist()[3:5] == [198, 198] and ids.tolist()[10:13] == [198, 198, 198]
    assert data.tokenize_lines("a\n\nb", tok).tolist() == [64, 198, 198, 65]


def test_tokenize_lines_in_chunks_gives_the_same_ids(tok, monkeypatch):
    text = "".join(f"line {i}\n" if i % 3 else "\n" for i in range(50)) + "tail"
    whole = data.tokenize_lines(text, tok)
    monkeypatch.setattr(data, "ENCODE_CHUNK_LINES", 7)
    assert data.tokenize_lines(text, tok).tolist() == whole.tolist()
    assert data.tokenize_lines("", tok).size == 0


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


def test_blocks_match_run_clm_group_texts(tok, tmp_path):
    text = ("The cat sat.\r\n\r\nOn the mat, café 東京 🙂.\n\n\n"
            "def f(x):\n\n    return x  # done\n\tTab\u2028sep\n"
            "  <|endoftext|> next document\nlast line without newline")
    path = write(tmp_path / "t.txt", text)
    for block_size in (1, 5, 16):
        expected = run_clm_blocks(path, tok, block_size)
        train, val, info = data.build_datasets(str(path), None, 0, block_size, tok, None)
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
    first = data.load_token_ids(str(path), tok, str(cache))
    files = os.listdir(cache)
    assert len(files) == 1 and files[0].endswith(".npy")

    def no_tokenizing(texts):
        raise AssertionError("tokenized although the cache has these ids")

    monkeypatch.setattr(tok, "encode_batch", no_tokenizing)
    second = data.load_token_ids(str(path), tok, str(cache))
    assert second.tolist() == first.tolist()
    assert second.dtype == first.dtype


def test_cache_miss_when_the_file_changes(tok, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    path = write(tmp_path / "t.txt", "Hello world\n")
    calls = count_encode_calls(tok, monkeypatch)
    first = data.load_token_ids(str(path), tok, str(cache))
    assert len(calls) == 1
    data.load_token_ids(str(path), tok, str(cache))
    assert len(calls) == 1
    write(path, "Goodbye world\n")
    changed = data.load_token_ids(str(path), tok, str(cache))
    assert len(calls) == 2
    assert changed.tolist() != first.tolist()
    assert changed.tolist() == tok.encode("Goodbye world\n")
    assert len(os.listdir(cache)) == 2  # no temporary files left behind


def test_demo_corpus_is_cached_too(tok, tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    calls = count_encode_calls(tok, monkeypatch)
    train, val, info = data.build_datasets(None, None, 5, 1024, tok, cache)
    n = len(calls)
    assert n > 0 and info["demo"]
    assert info["train_tokens"] > 100_000
    assert len(val) == max(1, (len(train) + len(val)) * 5 // 100)
    again, _, _ = data.build_datasets(None, None, 5, 1024, tok, cache)
    assert len(calls) == n
    assert again.tolist() == train.tolist()


def test_no_cache_dir_writes_nothing(tok, tmp_path):
    path = write(tmp_path / "t.txt", "Hello world\n")
    data.load_token_ids(str(path), tok, None)
    assert os.listdir(tmp_path) == ["t.txt"]


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("GPT2_CACHE_DIR", str(tmp_path))
    assert data.default_cache_dir() == str(tmp_path)
    monkeypatch.delenv("GPT2_CACHE_DIR")
    assert Path(data.default_cache_dir()) == REPO / ".cache" / "tokens"


# --- errors ---------------------------------------------------------------------

def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.txt")
    assert user_error(data.read_text, path) == f"{path}: no such file"


def test_empty_file(tmp_path):
    path = str(write(tmp_path / "empty.txt", b""))
    assert user_error(data.read_text, path) == f"{path}: the file is empty"
    bom_only = str(write(tmp_path / "bom.txt", b"\xef\xbb\xbf"))
    assert user_error(data.read_text, bom_only) == f"{bom_only}: the file is empty"


def test_directory(tmp_path):
    msg = user_error(data.read_text, str(tmp_path))
    assert msg.startswith(f"{tmp_path}: ") and "directory" in msg


def test_not_utf8_says_where(tmp_path):
    content = "first\nsecond\n".encode() + "né".encode() + b"\xff rest\n"
    path = str(write(tmp_path / "latin.txt", content))
    msg = user_error(data.read_text, path)
    offset = content.index(b"\xff")
    # "né" is two characters, so the bad byte is in column 3 (though byte 4 of the line).
    assert msg.startswith(f"{path}: not UTF-8 text: byte 0xff at line 3, column 3 "
                          f"(byte offset {offset})")
    # Through load_token_ids too (it reads the bytes itself, for the cache key).
    assert user_error(data.load_token_ids, path, None, None) == msg


def test_truncated_utf8_sequence(tmp_path):
    path = str(write(tmp_path / "cut.txt", b"ok\n\xe2\x82"))   # "€" cut short
    msg = user_error(data.read_text, path)
    assert "bytes 0xe2 0x82 at line 2, column 1 (byte offset 3)" in msg


def test_bom_is_dropped(tmp_path):
    path = str(write(tmp_path / "bom.txt", b"\xef\xbb\xbfHello"))
    assert data.read_text(path) == "Hello"


def test_too_short_for_one_block(tok, tmp_path):
    path = str(write(tmp_path / "short.txt", "Hello world, hello.\n"))
    n = len(tok.encode("Hello world, hello.\n"))
    msg = user_error(data.build_datasets, path, None, 0, 1024, tok, None)
    assert msg == (f"{path}: {n} tokens, fewer than one block of 1024; "
                   f"use a smaller --block-size or more text")
    # The validation file is checked the same way, under its own name.
    long = str(write(tmp_path / "long.txt", "word " * 50))
    msg = user_error(data.build_datasets, long, path, 0, 16, tok, None)
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
    train, val, info = data.build_datasets(train_path, val_path, 50, 2, tok, None)
    assert val.tolist() == data.make_blocks(data.load_token_ids(val_path, tok, None), 2, "v").tolist()
    assert len(train) == info["train_blocks"] == len(tok.encode("one two three four five six seven\n")) // 2
    assert info["validation_source"] == val_path


# --- the same file twice --------------------------------------------------------

def test_same_file_warns_once(tok, tmp_path, capsys):
    path = write(tmp_path / "t.txt", "some words to train on\n" * 4)
    link = tmp_path / "link.txt"
    link.symlink_to(path)
    for validation in (str(path), str(link), str(tmp_path / "." / "t.txt")):
        train, val, _ = data.build_datasets(str(path), validation, 0, 4, tok, None)
        err = capsys.readouterr().err
        assert err.count(SAME_FILE_WARNING) == 1
        assert err == ("warning: the validation file is the training file: eval_loss will "
                       "measure memorisation, not generalisation\n")
        assert train.tolist() == val.tolist()
    other = write(tmp_path / "other.txt", "some words to train on\n" * 4)
    data.build_datasets(str(path), str(other), 0, 4, tok, None)
    assert SAME_FILE_WARNING not in capsys.readouterr().err


# --- shuffling and the demo -----------------------------------------------------

def test_epoch_permutation():
    a = data.epoch_permutation(1000, seed=42, epoch=3)
    assert sorted(a.tolist()) == list(range(1000))
    assert a.tolist() == data.epoch_permutation(1000, seed=42, epoch=3).tolist()
    assert a.tolist() != data.epoch_permutation(1000, seed=42, epoch=4).tolist()
    assert a.tolist() != data.epoch_permutation(1000, seed=7, epoch=3).tolist()


def test_demo_text():
    name, text = data.demo_text()
    assert len(text) > 100_000
    assert "pydoc_data" in name
    assert "assert" in text and "The \"if\" statement" in text
    assert data.demo_text() == (name, text)

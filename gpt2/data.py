r"""From text files to blocks of token ids, the way Hugging Face's run_clm.py does it.

A language model is trained on one long stream of tokens. Getting there takes five
steps, each chosen so that a model fine-tuned here sees exactly the tokens it would
have seen under `run_clm.py`:

1. Read the file as UTF-8. run_clm loads a .txt file with the `datasets` "text"
   loader, which opens it in Python's text mode, so "\r\n" and a lone "\r" both
   become "\n". We do the same (and drop a leading byte-order mark, which is not text).

2. Cut it into texts, one per example. A .txt file gives one text per line, each
   keeping its "\n" (run_clm's default, keep_linebreaks=True; with False every line
   loses its "\n", as the loader's `line.rstrip("\n")` does). A .json/.jsonl or .csv
   file gives one text per record (see "JSON and CSV" below).

3. Tokenize each text on its own. That is not the same as tokenizing the whole file
   at once: GPT-2's pre-tokenizer glues runs of newlines together when whitespace
   follows, so a blank line before indented code ("):\n\n    return") or "\n\n\n"
   gives the single token 628 ("\n\n") on the whole text, but two 198s ("\n", "\n")
   line by line, because a line never holds more than one "\n". A model fine-tuned
   by run_clm has only ever seen the second form, so we produce it too.

4. Concatenate all texts into one stream and cut it into blocks of `block_size`
   tokens. No padding: every position in every block is real text, so every position
   is a real next-token prediction. The remainder that does not fill a last block is
   dropped (run_clm drops one remainder per 1,000 texts, because its `group_texts`
   runs on batches of 1,000; we drop only one, at the very end, so for files under
   1,000 lines or records the blocks are identical).

   No end-of-text token (<|endoftext|>, id 50256) is put between texts: neither
   between the lines of a .txt file nor between the records of a .json or .csv file.
   run_clm does not insert one either; its `group_texts` simply chains the ids. So
   the model learns the data as one continuous stream: where one document ends, the
   next one begins mid-block, and the model is trained to continue the end of one
   document with the start of another, attending across that seam as if they were
   one text. It also never learns, from this data, when a document is over. To mark
   the ends yourself, write the string "<|endoftext|>" into the text: the tokenizer
   turns it into id 50256, as GPT-2's pretraining data did between documents.

5. Labels are the inputs. Block [t0, t1, ..., tn] is both the input and the target;
   the model itself shifts by one and scores its prediction at position i against
   token i+1. So this module only ever hands out one array of ids per block.

JSON and CSV. The extension decides how a file is read, as in run_clm: .txt is
text, .json and .jsonl are JSON, .csv is CSV (anything else is an error). run_clm
loads JSON and CSV with the `datasets` "json" and "csv" loaders, which turn the file
into a table, then tokenizes the column "text" if the table has one, else its first
column, one record at a time. Here Python's own `json` and `csv` modules do the
reading. A JSON file is either JSON lines (one object per line, blank lines skipped)
or one JSON list of objects; a CSV file's first row is the header, and an empty cell
is an empty text. A record's text is tokenized exactly as it is, like one line of a
.txt file: nothing is added or stripped (keep_linebreaks is for .txt files only, as
in run_clm). So records holding a .txt file's lines, "\n" included, give exactly
that file's ids.

Tokenizing a large file takes a while and gives the same answer every time, so the
ids are cached on disk (an .npz file), named by the SHA-256 of the file's bytes, the
tokenizer's files, the way the file is read (its format, keep_linebreaks) and a
format version: edit the text or change any of these and the name changes, so a
stale cache is never read. A cache can still be damaged (a full disk, a bad copy,
a bit flipped), so the ids are stored with their own SHA-256 and checked on every
load, together with their dtype, their shape and the vocabulary's size; a cache that
fails any check is tokenized again, with a warning. `GPT2_CACHE_DIR` moves the cache.
The file's SHA-256 is also handed back (`train_sha256`, `validation_sha256`), so
that a checkpoint can record which exact text it was trained on.

With no training file at all, the demo corpus is the text of the Python language
reference that ships with every CPython (`pydoc_data.topics`): about 465,000
characters, 140,177 GPT-2 tokens on Python 3.11 (136 blocks of 1024).
"""

import csv
import hashlib
import io
import itertools
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .files import atomic_path

# Bump when the way text becomes ids, or the cache's layout, changes, so that old
# caches are not reused. (2: an .npz holding the ids and their SHA-256.)
CACHE_FORMAT = 2
# Lines handed to the Rust tokenizer at once: large enough to keep all cores busy,
# small enough that its per-token Encoding objects do not fill memory on a big file.
ENCODE_CHUNK_LINES = 10_000
# How a file is read, by its extension, as run_clm picks the `datasets` loader.
FORMATS = {".txt": "txt", ".json": "json", ".jsonl": "json", ".csv": "csv"}


# --- reading --------------------------------------------------------------------

def _read_bytes(path) -> bytes:
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory, not a text file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    if not data:
        raise UserError(f"{path}: the file is empty")
    return data


def _decode(path, data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        # Point at the first bad byte the way an editor would: line and column
        # (in characters, counted from 1) plus the byte offset for hex viewers.
        line = data.count(b"\n", 0, e.start) + 1
        line_start = data.rfind(b"\n", 0, e.start) + 1
        # Everything before the first error is valid UTF-8, so this decode succeeds.
        column = len(data[line_start:e.start].decode("utf-8")) + 1
        bad = data[e.start:e.end]
        what = ("byte " if len(bad) == 1 else "bytes ") + " ".join(f"0x{b:02x}" for b in bad)
        raise UserError(
            f"{path}: not UTF-8 text: {what} at line {line}, column {column} "
            f"(byte offset {e.start}); save the file as UTF-8"
        ) from None
    # A UTF-8 byte-order mark (written by some Windows editors) is not part of the text.
    text = text.removeprefix("\ufeff")
    if not text:
        raise UserError(f"{path}: the file is empty")
    return text


def read_text(path) -> str:
    """The file's text, or a one-line UserError: missing, a directory, empty, not UTF-8."""
    return _decode(path, _read_bytes(path))


# --- texts: the lines of a .txt file, the records of a .json or .csv file --------

def split_lines(text: str) -> list[str]:
    r"""Split like the `datasets` text loader: on "\n" only, each line keeping its "\n".

    "\r\n" and "\r" count as "\n" (text-mode reading). An empty line is "\n"; a last
    line without "\n" is kept as it is; a text ending in "\n" adds no empty line.
    `str.splitlines` would be wrong here: it also splits on "\v", "\f", "\x1c"-"\x1e",
    "\x85" and the Unicode line and paragraph separators, which the loader keeps.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    last = lines.pop()  # "" when the text ends with "\n"
    out = [line + "\n" for line in lines]
    if last:
        out.append(last)
    return out


def file_format(path) -> str:
    """How the file is read, "txt", "json" or "csv", by its extension; any other is a UserError."""
    extension = os.path.splitext(str(path))[1].lower()
    if extension not in FORMATS:
        what = f"a {extension} file" if extension else "a file without an extension"
        raise UserError(f"{path}: cannot read {what}; the files read are "
                        f".txt, .json, .jsonl and .csv")
    return FORMATS[extension]


def read_texts(path, *, keep_linebreaks=True) -> list[str]:
    """The texts of the file, one per example (a line or a record), as run_clm's loaders give them.

    Checks the whole file: any problem with it is a one-line UserError.
    """
    fmt = file_format(path)  # before reading: an unknown type is refused at once
    return _texts(path, read_text(path), fmt, keep_linebreaks)


def _texts(source, text: str, fmt: str, keep_linebreaks: bool) -> list[str]:
    """The texts of `text`, the decoded contents of `source` in format `fmt`."""
    if fmt == "json":
        return _json_texts(source, text)
    if fmt == "csv":
        return _csv_texts(source, text)
    lines = split_lines(text)
    if not keep_linebreaks:
        lines = [line.removesuffix("\n") for line in lines]  # an empty line becomes ""
    return lines


# --- JSON and CSV records ---------------------------------------------------------

def _json_records(source, text: str):
    """(the values in a JSON file, the line of each or None): one JSON list, or JSON lines."""
    if text.lstrip().startswith("["):
        try:
            return json.loads(text), None
        except json.JSONDecodeError as e:
            raise UserError(f"{source}: invalid JSON at line {e.lineno}, "
                            f"column {e.colno}: {e.msg}") from None
    records, lines = [], []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise UserError(f"{source}: invalid JSON at line {number}, column {e.colno}: "
                            f"{e.msg} (expected one object per line, or one list "
                            f"of objects)") from None
        lines.append(number)
    return records, lines


def _json_kind(value) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: True is an int in Python
        return "a boolean"
    return {dict: "an object", list: "an array", str: "a string"}.get(type(value), "a number")


def _json_texts(source, text: str) -> list[str]:
    """The text of each record: its "text" if any record has one, else its first field."""
    records, lines = _json_records(source, text)

    def record(i):  # how an error names the record: from 1, with its line when known
        return f"record {i + 1}" + (f" (line {lines[i]})" if lines else "")

    if not records:
        raise UserError(f"{source}: no records")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise UserError(f"{source}: {record(i)} is {_json_kind(r)}, not an object")
    # run_clm's column: "text" if the table has it, else the table's first column
    # (the `datasets` loader orders the columns as the keys first appear).
    if any("text" in r for r in records):
        column = "text"
    else:
        column = next((key for r in records for key in r), None)
        if column is None:
            raise UserError(f"{source}: the records have no fields")
    texts = []
    for i, r in enumerate(records):
        if column not in r:
            raise UserError(f'{source}: {record(i)} has no "{column}"')
        if not isinstance(r[column], str):
            raise UserError(f'{source}: {record(i)}: "{column}" is '
                            f"{_json_kind(r[column])}, not a string")
        texts.append(r[column])
    return texts


def _csv_rows(source, text: str):
    """[(line where the row starts, its cells)] of a CSV text, blank lines skipped."""
    # newline="": a line break inside a quoted cell stays as it is (see the csv docs).
    # strict: an unclosed quote is an error, not a cell that swallows the rest of the file.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    # A document can be longer than csv's default limit of 131,072 characters per cell.
    old_limit = csv.field_size_limit(2**31 - 1)
    rows = []
    try:
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise UserError(f"{source}: invalid CSV in the row starting at line "
                                f"{start}: {e}") from None
            if row:
                rows.append((start, row))
    finally:
        csv.field_size_limit(old_limit)
    return rows


def _csv_texts(source, text: str) -> list[str]:
    """The text of each row: its "text" cell if the header has one, else its first cell."""
    rows = _csv_rows(source, text)
    if len(rows) < 2:
        raise UserError(f"{source}: no rows below the header (the first row)")
    header = rows[0][1]
    column = header.index("text") if "text" in header else 0
    texts = []
    for i, (line, row) in enumerate(rows[1:]):
        record = f"record {i + 1} (line {line})"
        if len(row) > len(header):
            # pandas, under run_clm's CSV loader, refuses it too; mostly an unquoted comma.
            raise UserError(f"{source}: {record} has {len(row)} cells, the header "
                            f"{len(header)}; quote a text that holds a comma")
        if column >= len(row):
            raise UserError(f'{source}: {record} has no "{header[column]}" cell')
        texts.append(row[column])
    return texts


# --- tokenizing -----------------------------------------------------------------

def _id_dtype(tokenizer):
    # GPT-2's 50,257 ids fit in 16 bits: a quarter of the memory and disk of int64.
    return np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32


def tokenize_texts(texts: list[str], tokenizer) -> np.ndarray:
    """Token ids of each text, tokenized on its own, concatenated: shape (total ids,).

    Nothing is put between two texts (no <|endoftext|>): see the module docstring.
    """
    dtype = _id_dtype(tokenizer)
    parts = []
    for i in range(0, len(texts), ENCODE_CHUNK_LINES):
        encoded = tokenizer.encode_batch(texts[i:i + ENCODE_CHUNK_LINES])
        count = sum(len(ids) for ids in encoded)
        parts.append(np.fromiter(itertools.chain.from_iterable(encoded), dtype=dtype, count=count))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def tokenize_lines(text: str, tokenizer) -> np.ndarray:
    """Token ids of `text`, tokenized line by line (see the module docstring), concatenated."""
    return tokenize_texts(split_lines(text), tokenizer)


# --- the token cache ------------------------------------------------------------

def default_cache_dir() -> str:
    """$GPT2_CACHE_DIR, or .cache/tokens in the repository (next to the gpt2 package)."""
    env = os.environ.get("GPT2_CACHE_DIR")
    if env:
        return env
    return str(Path(__file__).resolve().parent.parent / ".cache" / "tokens")


def _reading(fmt: str, keep_linebreaks: bool) -> str:
    """How a file is turned into texts, for the cache's name: the same bytes read as
    .txt or as JSON, with or without line breaks, give different ids."""
    if fmt == "txt" and not keep_linebreaks:
        return "txt-nolinebreaks"
    return fmt  # keep_linebreaks changes nothing for JSON and CSV


def cache_path(sha256: str, tokenizer, cache_dir, reading="txt") -> str:
    """Where the ids of a file are cached: `sha256` is the hex digest of its raw bytes,
    `reading` how it is read (`_reading`), for this tokenizer."""
    name = f"{sha256[:32]}-{tokenizer.fingerprint}-{reading}-v{CACHE_FORMAT}.npz"
    return os.path.join(cache_dir, name)


def _ids_sha256(ids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(ids).tobytes()).hexdigest()


def _load_cached(path, tokenizer):
    """The cached ids, or None when the cache fails any check (then it is rebuilt)."""
    try:
        # Our own file object: np.load, given a name, leaves the file open when it fails.
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as cached:
            ids, checksum = cached["ids"], str(cached["sha256"])
    except Exception:
        # A damaged file fails in many ways inside zipfile and numpy (BadZipFile, a CRC
        # error, ValueError, EOFError, struct.error, KeyError, an .npy instead of an
        # .npz...); every one of them means the same here: do not trust this cache.
        return None
    good = (ids.ndim == 1 and ids.dtype == _id_dtype(tokenizer)
            and checksum == _ids_sha256(ids)
            # An id past the vocabulary would end in an IndexError deep in the model.
            and (ids.size == 0 or int(ids.max()) < tokenizer.vocab_size))
    return ids if good else None


def _save_cached(path, ids) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_path(path) as tmp:
            # Through a file object: given a name, np.savez would append ".npz" to the
            # temporary name and the rename would miss it.
            with open(tmp, "wb") as f:
                np.savez(f, ids=ids, sha256=np.array(_ids_sha256(ids)))
    except OSError as e:
        # A cache is an optimisation; a read-only disk must not stop the run.
        print(f"warning: cannot write the token cache {path} ({e.strerror}); "
              f"set GPT2_CACHE_DIR to a writable directory", file=sys.stderr)


def _cached_ids(content: bytes, get_texts, tokenizer, cache_dir, reading):
    """(ids, SHA-256 of `content`): the ids of `content`, a file's raw bytes, from the
    cache when it holds them, else `tokenize_texts(get_texts())`, then cached."""
    # One hash of the bytes serves both as the cache's name and as the file's fingerprint.
    sha256 = hashlib.sha256(content).hexdigest()
    if cache_dir is None:
        return tokenize_texts(get_texts(), tokenizer), sha256
    path = cache_path(sha256, tokenizer, cache_dir, reading)
    ids = None
    if os.path.exists(path):
        ids = _load_cached(path, tokenizer)
        if ids is None:
            print(f"warning: {path}: corrupt token cache, tokenizing again", file=sys.stderr)
    if ids is None:
        ids = tokenize_texts(get_texts(), tokenizer)
        _save_cached(path, ids)
    return ids, sha256


def _file_ids(path, tokenizer, cache_dir, keep_linebreaks):
    """(ids, SHA-256 of the file's bytes); the file is read once, for both."""
    fmt = file_format(path)  # before reading: an unknown type is refused at once
    data = _read_bytes(path)
    return _cached_ids(data, lambda: _texts(path, _decode(path, data), fmt, keep_linebreaks),
                       tokenizer, cache_dir, _reading(fmt, keep_linebreaks))


def load_token_ids(path, tokenizer, cache_dir, *, keep_linebreaks=True) -> np.ndarray:
    """The file's token ids (1-D, uint16 for GPT-2), from the cache when it has them.

    A .txt, .json/.jsonl or .csv file (see the module docstring). `cache_dir=None`
    turns the cache off. On a cache hit the file is read (to hash it) but not decoded
    or tokenized.
    """
    return _file_ids(path, tokenizer, cache_dir, keep_linebreaks)[0]


# --- blocks ---------------------------------------------------------------------

def make_blocks(ids: np.ndarray, block_size: int, source) -> np.ndarray:
    """Cut the stream into rows of `block_size` ids, shape (n_blocks, block_size).

    The tail that does not fill a whole block is dropped. The rows keep the ids' small
    dtype (a view, no copy); convert a batch with `to_batch` before feeding the model.
    """
    if block_size < 1:
        raise UserError(f"--block-size must be at least 1, got {block_size}")
    n_blocks = len(ids) // block_size
    if n_blocks == 0:
        raise UserError(
            f"{source}: {len(ids)} tokens, fewer than one block of {block_size}; "
            f"use a smaller --block-size or more text"
        )
    return ids[:n_blocks * block_size].reshape(n_blocks, block_size)


def split_blocks(blocks: np.ndarray, validation_percent: float, source="the training text"):
    """Hold out the last `validation_percent` percent of the blocks: (train, validation).

    The count is rounded down, but at least one block is held out whenever the percent
    is above 0 (5% of 10 blocks is 0.5, which would otherwise silently mean no
    validation at all). 0 means no validation: (blocks, None). At least one block
    always stays for training, since the percent must be below 100.
    (run_clm instead holds out the first percent of the *lines*; blocks are simpler,
    and taking the end keeps the training text one contiguous piece.)
    """
    p = validation_percent
    if not 0 <= p < 100:  # also rejects NaN
        raise UserError(f"--validation-split must be at least 0 and below 100, got {p}")
    if p == 0:
        return blocks, None
    n = len(blocks)
    if n < 2:
        raise UserError(
            f"{source}: {n} block, too few to hold out {p}% for validation; use "
            f"--validation-split 0, a validation file, a smaller --block-size or more text"
        )
    n_val = max(1, int(n * p // 100))
    return blocks[:n - n_val], blocks[n - n_val:]


def to_batch(blocks: np.ndarray, indices=None, device=None) -> torch.Tensor:
    """Rows of `blocks` (all, or those at `indices`) as an int64 tensor on `device`."""
    rows = blocks if indices is None else blocks[np.asarray(indices)]
    x = torch.from_numpy(rows.astype(np.int64))
    if device is not None and torch.device(device).type == "cuda":
        # A "non_blocking" copy from ordinary (pageable) memory still makes the CPU
        # wait for the GPU's queue to drain: a sync per batch. From pinned
        # (page-locked) memory it is a true asynchronous copy.
        x = x.pin_memory().to(device, non_blocking=True)
    return x if device is None else x.to(device)


def epoch_permutation(n_blocks: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which to visit the blocks in this epoch.

    It depends only on (seed, epoch), not on any generator state carried along, so a
    run resumed in the middle of an epoch can rebuild the same order and skip the
    batches it already did.
    """
    g = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(n_blocks, generator=g).numpy()


# --- the demo corpus ------------------------------------------------------------

def demo_text() -> tuple[str, str]:
    """(name, text) of the demo corpus: the Python language reference, from pydoc_data.

    `pydoc_data.topics.topics` maps a topic ("assert", "for", "typesseq", ...) to its
    plain-text page; `help("for")` reads it. Sorted by name and joined with a blank
    line, it is real English prose mixed with code, and always at hand.
    """
    try:
        from pydoc_data.topics import topics  # a large module: imported only when the demo is used
    except ImportError:
        raise UserError("no training file given, and this Python lacks pydoc_data "
                        "(the demo corpus); give a training file") from None
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    name = f"<demo: Python {version} language reference (pydoc_data.topics)>"
    # Every page ends with "\n", so joining with "\n" leaves one blank line between pages.
    text = "\n".join(topics[k].rstrip("\n") + "\n" for k in sorted(topics))
    return name, text


# --- putting it together --------------------------------------------------------

def build_datasets(train_file, validation_file, validation_percent, block_size, tokenizer, cache_dir,
                   *, keep_linebreaks=True):
    r"""Training and validation blocks, and a dict describing where they came from.

    - train_file None: the demo corpus (`demo_text`), tokenized and cached like a file.
    - validation_file given: its blocks are the validation set and validation_percent
      is ignored (as in run_clm).
    - otherwise: the last validation_percent percent of the training blocks
      (`split_blocks`); 0 means no validation set (None).
    - keep_linebreaks: run_clm's option, for .txt files and the demo corpus (False:
      each line loses its "\n" before tokenization).
    Returns (train_blocks, validation_blocks or None, info); info["train_sha256"] and
    info["validation_sha256"] (None without a validation file) fingerprint the files.
    """
    if block_size < 1:
        raise UserError(f"--block-size must be at least 1, got {block_size}")
    if not 0 <= validation_percent < 100:
        raise UserError(f"--validation-split must be at least 0 and below 100, "
                        f"got {validation_percent}")

    train_source, train_ids, train_sha256 = _training_ids(train_file, tokenizer, cache_dir, keep_linebreaks)
    blocks = make_blocks(train_ids, block_size, train_source)  # (n_blocks, block_size)

    val_ids = val_sha256 = None
    if validation_file is not None:
        val_source = str(validation_file)
        val_ids, val_sha256 = _file_ids(validation_file, tokenizer, cache_dir, keep_linebreaks)
        val = make_blocks(val_ids, block_size, val_source)
        train = blocks
        if train_file is not None and _same_file(train_file, validation_file):
            print("warning: the validation file is the training file: eval_loss will "
                  "measure memorisation, not generalisation", file=sys.stderr)
    else:
        train, val = split_blocks(blocks, validation_percent, train_source)
        val_source = None if val is None else f"last {validation_percent}% of {train_source}"

    info = {
        "train_source": train_source,
        "demo": train_file is None,
        "block_size": block_size,
        "train_tokens": int(len(train_ids)),
        "dropped_tokens": int(len(train_ids) - blocks.size),
        "train_blocks": int(len(train)),
        "validation_source": val_source,
        "validation_blocks": 0 if val is None else int(len(val)),
        "train_sha256": train_sha256,
        "validation_sha256": val_sha256,
    }
    info["summary"] = _summary(info, len(blocks), validation_percent, val_ids)
    return train, val, info


def _training_ids(train_file, tokenizer, cache_dir, keep_linebreaks):
    """(name, token ids, sha256) of the training text: the file, or the demo corpus."""
    if train_file is not None:
        return (str(train_file), *_file_ids(train_file, tokenizer, cache_dir, keep_linebreaks))
    name, text = demo_text()
    ids, sha256 = _cached_ids(text.encode("utf-8"), lambda: _texts(name, text, "txt", keep_linebreaks),
                              tokenizer, cache_dir, _reading("txt", keep_linebreaks))
    return name, ids, sha256


def _summary(info, n_blocks, validation_percent, val_ids) -> str:
    """One line for the log: tokens, blocks, and where the validation set comes from."""
    summary = (f"{info['train_source']}: {info['train_tokens']:,} tokens -> {n_blocks:,} blocks "
               f"of {info['block_size']} ({info['dropped_tokens']:,} tokens dropped); ")
    n_train, n_val = info["train_blocks"], info["validation_blocks"]
    if info["validation_source"] is None:
        return summary + "no validation set"
    if val_ids is None:
        return summary + (f"training on the first {n_train:,}, validating on the last "
                          f"{n_val:,} ({validation_percent}%)")
    return summary + (f"validation: {info['validation_source']}: {len(val_ids):,} tokens "
                      f"-> {n_val:,} blocks")


def _same_file(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False

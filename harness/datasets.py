"""The datasets of a run: training and validation blocks from files or the demo corpus, cached.

The files are read by textfiles.py and cut into blocks by gpt2/data.py; this module
puts the two together for train.py and evaluate.py.

Tokenizing a large file takes a while and gives the same answer every time, so the
ids are cached on disk (an .npz file), named by the SHA-256 of the file's bytes, the
tokenizer's files, the way the file is read (its format, keep_linebreaks) and a
format version: edit the text or change any of these and the name changes, so a
stale cache is never read. A cache can still be damaged (a full disk, a bad copy,
a bit flipped), so the ids are stored with their own SHA-256 and checked on every
load, together with their dtype, their shape and the vocabulary's size; a cache that
fails any check is tokenized again, with a warning. `GPT2_CACHE_DIR` moves the cache.
The file's SHA-256 is also handed back (`train_sha256`, `validation_sha256`), so
that a checkpoint can record which exact text it was trained on, and so are the
SHA-256 of the blocks themselves (`train_ids_sha256`, `validation_ids_sha256`) and the
tokenizer's fingerprint: the same bytes read another way are other blocks.

With no training file at all, the demo corpus is the text of the Python language
reference that ships with every CPython (`pydoc_data.topics`): about 465,000
characters, 140,177 GPT-2 tokens on Python 3.11 (136 blocks of 1024).
"""

import contextlib
import errno
import hashlib
import os
import sys
from pathlib import Path

import numpy as np

from gpt2.data import id_dtype, make_blocks, split_blocks, tokenize_texts
from gpt2.errors import UserError
from gpt2.files import atomic_path, is_temporary

from .textfiles import _decode, _read_bytes, _texts, file_format, split_lines

# Bump when the way text becomes ids, or the cache's layout, changes, so that old
# caches are not reused. (2: an .npz holding the ids and their SHA-256.)
CACHE_FORMAT = 2


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
    good = (ids.ndim == 1 and ids.dtype == id_dtype(tokenizer)
            and checksum == _ids_sha256(ids)
            # An id past the vocabulary would end in an IndexError deep in the model.
            and (ids.size == 0 or int(ids.max()) < tokenizer.vocab_size))
    return ids if good else None


def _remove_litter(cache_dir) -> None:
    """Remove the temporary files of cache writes whose process is gone (killed mid-write).

    The cache is shared by runs that may be writing right now: only a file whose pid
    (the number after .tmp-) no longer runs on this machine is litter.
    """
    for name in os.listdir(cache_dir):
        if not is_temporary(name):
            continue
        try:
            os.kill(int(name.rsplit("-", 1)[1]), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(cache_dir, name))
        except (OSError, ValueError):
            pass  # alive (another user's: PermissionError), or not ours to judge


def _save_cached(path, ids) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _remove_litter(os.path.dirname(path))
        with atomic_path(path) as tmp:
            # Through a file object: given a name, np.savez would append ".npz" to the
            # temporary name and the rename would miss it.
            with open(tmp, "wb") as f:
                np.savez(f, ids=ids, sha256=np.array(_ids_sha256(ids)))
    except OSError as e:
        # A cache is an optimisation; a read-only or full disk must not stop the run.
        advice = {errno.EFBIG: "the file size limit (ulimit -f) is below its size",
                  errno.ENOSPC: "its disk is full; free some space, or set GPT2_CACHE_DIR (or --cache-dir) elsewhere",
                  errno.EDQUOT: "the disk quota is exceeded; set GPT2_CACHE_DIR (or --cache-dir) elsewhere"}
        print(f"warning: cannot write the token cache {path} ({e.strerror}); " +
              advice.get(e.errno, "set GPT2_CACHE_DIR (or --cache-dir) to a writable directory"), file=sys.stderr)


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
            print(f"warning: {path}: unreadable or damaged token cache, tokenizing again", file=sys.stderr)
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

    train, val, val_source, val_ids, val_sha256 = _held_out(blocks, train_file, train_sha256, train_source,
                                                            validation_file, validation_percent, tokenizer,
                                                            cache_dir, keep_linebreaks)
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
        # What the run reads, not only the bytes it came from: the same file read with another
        # --keep-linebreaks or tokenizer gives other ids (checkpoint.py refuses such a resume,
        # compare.py such a table).
        "train_ids_sha256": _ids_sha256(train),
        "validation_ids_sha256": None if val is None else _ids_sha256(val),
        "tokenizer": tokenizer.fingerprint,
        # The share of the blocks held out: --validation-split 5 of 3 blocks holds out 1, a third.
        "validation_share": None if val is None or validation_file is not None else len(val) / len(blocks),
    }
    info["summary"] = _summary(info, len(blocks), validation_percent, val_ids)
    return train, val, info


def _held_out(blocks, train_file, train_sha256, train_source, validation_file, validation_percent, tokenizer,
              cache_dir, keep_linebreaks):
    """(training blocks, validation blocks or None, where they came from, their ids, their file's sha256):
    the validation file's blocks, else the last validation_percent percent of the training blocks."""
    if validation_file is None:
        train, val = split_blocks(blocks, validation_percent, train_source)
        val_source = None if val is None else f"last {held_out_share(len(val), len(blocks))} of {train_source}"
        return train, val, val_source, None, None
    val_ids, val_sha256 = _file_ids(validation_file, tokenizer, cache_dir, keep_linebreaks)
    val = make_blocks(val_ids, blocks.shape[1], str(validation_file))  # the training blocks' size
    # The same file under another name, or a copy of it: the hashes say so either way.
    if train_file is not None and (val_sha256 == train_sha256 or _same_file(train_file, validation_file)):
        print("warning: the validation file is the training file (the same content): eval_loss will "
              "measure memorisation, not generalisation (docs/lifecycle.md)", file=sys.stderr)
    return blocks, val, str(validation_file), val_ids, val_sha256


def validation_dataset(validation_file, block_size, tokenizer, cache_dir, *, keep_linebreaks=True):
    """(validation blocks, info) of a validation file alone: run_clm's --do_eval without
    --do_train, where reading (and tokenizing) the training text would be wasted time."""
    ids, sha256 = _file_ids(validation_file, tokenizer, cache_dir, keep_linebreaks)
    val = make_blocks(ids, block_size, str(validation_file))
    info = {"train_source": None, "demo": False, "block_size": block_size, "train_tokens": 0, "dropped_tokens": 0,
            "train_blocks": 0, "validation_source": str(validation_file), "validation_blocks": int(len(val)),
            "train_sha256": None, "validation_sha256": sha256, "validation_ids_sha256": _ids_sha256(val),
            "tokenizer": tokenizer.fingerprint}
    info["summary"] = (f"validation: {validation_file}: {len(ids):,} tokens -> {len(val):,} blocks of {block_size} "
                       f"(no training text read: --do_eval alone)")
    return val, info


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
               f"of {info['block_size']} ({info['dropped_tokens']:,} token{'' if info['dropped_tokens'] == 1 else 's'} "
               f"dropped); ")
    n_train, n_val = info["train_blocks"], info["validation_blocks"]
    if info["validation_source"] is None:
        return summary + "no validation set"
    if val_ids is None:
        held = held_out_share(n_val, n_blocks)
        at_least_one = ", at least one" if n_val == 1 and n_blocks * validation_percent < 100 else ""
        rounded = "" if held == f"{validation_percent:g}%" else \
            f", --validation-split {validation_percent:g} in whole blocks{at_least_one}"
        return summary + f"training on the first {n_train:,}, validating on the last {n_val:,} ({held}{rounded})"
    return summary + (f"validation: {info['validation_source']}: {len(val_ids):,} tokens "
                      f"-> {n_val:,} blocks")


def held_out_share(n_val, n_blocks) -> str:
    """'33.3%' for 1 block of 3: the share actually held out, which --validation-split only rounds to."""
    return f"{round(100 * n_val / n_blocks, 1):g}%"


def _same_file(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False

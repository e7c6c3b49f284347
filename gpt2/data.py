r"""From text files to blocks of token ids, the way Hugging Face's run_clm.py does it.

A language model is trained on one long stream of tokens. Getting there takes four
steps, each chosen so that a model fine-tuned here sees exactly the tokens it would
have seen under `run_clm.py`:

1. Read the file as UTF-8. run_clm loads it with the `datasets` "text" loader, which
   opens the file in Python's text mode, so "\r\n" and a lone "\r" both become
   "\n". We do the same (and drop a leading byte-order mark, which is not text).

2. Tokenize line by line. The loader (with keep_linebreaks=True, run_clm's default)
   gives one example per line, each keeping its "\n", and run_clm tokenizes each
   example on its own. That is not the same as tokenizing the whole text at once:
   GPT-2's pre-tokenizer glues runs of newlines together when whitespace follows, so
   a blank line before indented code ("):\n\n    return") or "\n\n\n" gives the
   single token 628 ("\n\n") on the whole text, but two 198s ("\n", "\n") line by
   line, because a line never holds more than one "\n". A model fine-tuned by
   run_clm has only ever seen the second form, so we produce it too.

3. Concatenate all lines into one stream and cut it into blocks of `block_size`
   tokens. No padding: every position in every block is real text, so every
   position is a real next-token prediction. The remainder that does not fill a last
   block is dropped (run_clm drops one remainder per 1,000 lines, because its
   `group_texts` runs on batches of 1,000 lines; we drop only one, at the very end,
   so for files under 1,000 lines the blocks are identical).

4. Labels are the inputs. Block [t0, t1, ..., tn] is both the input and the target;
   the model itself shifts by one and scores its prediction at position i against
   token i+1. So this module only ever hands out one array of ids per block.

Tokenizing a large file takes a while and gives the same answer every time, so the
ids are cached on disk as a .npy file, named by a hash of the file's bytes, the
tokenizer's files and a format version: edit the text or change the tokenizer and the
name changes, so a stale cache is never read. `GPT2_CACHE_DIR` moves the cache.

With no training file at all, the demo corpus is the text of the Python language
reference that ships with every CPython (`pydoc_data.topics`): about 465,000
characters, 140,177 GPT-2 tokens on Python 3.11 (136 blocks of 1024).
"""

import hashlib
import itertools
import os
import sys
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .files import atomic_path

# Bump when the way text becomes ids changes, so that old caches are not reused.
CACHE_FORMAT = 1
# Lines handed to the Rust tokenizer at once: large enough to keep all cores busy,
# small enough that its per-token Encoding objects do not fill memory on a big file.
ENCODE_CHUNK_LINES = 10_000


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


# --- tokenizing -----------------------------------------------------------------

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


def _id_dtype(tokenizer):
    # GPT-2's 50,257 ids fit in 16 bits: a quarter of the memory and disk of int64.
    return np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32


def tokenize_lines(text: str, tokenizer) -> np.ndarray:
    """Token ids of `text`, tokenized line by line (see the module docstring), concatenated."""
    dtype = _id_dtype(tokenizer)
    lines = split_lines(text)
    parts = []
    for i in range(0, len(lines), ENCODE_CHUNK_LINES):
        encoded = tokenizer.encode_batch(lines[i:i + ENCODE_CHUNK_LINES])
        count = sum(len(ids) for ids in encoded)
        parts.append(np.fromiter(itertools.chain.from_iterable(encoded), dtype=dtype, count=count))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


# --- the token cache ------------------------------------------------------------

def default_cache_dir() -> str:
    """$GPT2_CACHE_DIR, or .cache/tokens in the repository (next to the gpt2 package)."""
    env = os.environ.get("GPT2_CACHE_DIR")
    if env:
        return env
    return str(Path(__file__).resolve().parent.parent / ".cache" / "tokens")


def cache_path(content: bytes, tokenizer, cache_dir) -> str:
    """Where the ids of `content` (a file's raw bytes) are cached for this tokenizer."""
    digest = hashlib.sha256(content).hexdigest()[:32]
    return os.path.join(cache_dir, f"{digest}-{tokenizer.fingerprint}-v{CACHE_FORMAT}.npy")


def _load_cached(path):
    try:
        ids = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None  # missing or unreadable: tokenize again and overwrite it
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        return None
    return ids


def _save_cached(path, ids) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_path(path) as tmp:
            # Through a file object: given a name, np.save would append ".npy" to the
            # temporary name and the rename would miss it.
            with open(tmp, "wb") as f:
                np.save(f, ids)
    except OSError as e:
        # A cache is an optimisation; a read-only disk must not stop the run.
        print(f"warning: cannot write the token cache {path} ({e.strerror}); "
              f"set GPT2_CACHE_DIR to a writable directory", file=sys.stderr)


def _cached_ids(content: bytes, get_text, tokenizer, cache_dir) -> np.ndarray:
    if cache_dir is None:
        return tokenize_lines(get_text(), tokenizer)
    path = cache_path(content, tokenizer, cache_dir)
    ids = _load_cached(path) if os.path.exists(path) else None
    if ids is None:
        ids = tokenize_lines(get_text(), tokenizer)
        _save_cached(path, ids)
    return ids


def load_token_ids(path, tokenizer, cache_dir) -> np.ndarray:
    """The file's token ids (1-D, uint16 for GPT-2), from the cache when it has them.

    `cache_dir=None` turns the cache off. On a cache hit the file is read (to hash it)
    but not decoded or tokenized.
    """
    data = _read_bytes(path)
    return _cached_ids(data, lambda: _decode(path, data), tokenizer, cache_dir)


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
        from pydoc_data.topics import topics
    except ImportError:
        raise UserError("no training file given, and this Python lacks pydoc_data "
                        "(the demo corpus); give a training file") from None
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    name = f"<demo: Python {version} language reference (pydoc_data.topics)>"
    # Every page ends with "\n", so joining with "\n" leaves one blank line between pages.
    text = "\n".join(topics[k].rstrip("\n") + "\n" for k in sorted(topics))
    return name, text


# --- putting it together --------------------------------------------------------

def build_datasets(train_file, validation_file, validation_percent, block_size, tokenizer, cache_dir):
    """Training and validation blocks, and a dict describing where they came from.

    - train_file None: the demo corpus (`demo_text`), tokenized and cached like a file.
    - validation_file given: its blocks are the validation set and validation_percent
      is ignored (as in run_clm).
    - otherwise: the last validation_percent percent of the training blocks
      (`split_blocks`); 0 means no validation set (None).
    Returns (train_blocks, validation_blocks or None, info).
    """
    if block_size < 1:
        raise UserError(f"--block-size must be at least 1, got {block_size}")
    if not 0 <= validation_percent < 100:
        raise UserError(f"--validation-split must be at least 0 and below 100, "
                        f"got {validation_percent}")

    if train_file is None:
        train_source, text = demo_text()
        train_ids = _cached_ids(text.encode("utf-8"), lambda: text, tokenizer, cache_dir)
    else:
        train_source = str(train_file)
        train_ids = load_token_ids(train_file, tokenizer, cache_dir)
    blocks = make_blocks(train_ids, block_size, train_source)

    if validation_file is not None:
        val_source = str(validation_file)
        val_ids = load_token_ids(validation_file, tokenizer, cache_dir)
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
    }
    summary = (f"{train_source}: {info['train_tokens']:,} tokens -> {len(blocks):,} blocks "
               f"of {block_size} ({info['dropped_tokens']:,} tokens dropped); ")
    if val is None:
        summary += "no validation set"
    elif validation_file is None:
        summary += (f"training on the first {len(train):,}, validating on the last "
                    f"{len(val):,} ({validation_percent}%)")
    else:
        summary += f"validation: {val_source}: {len(val_ids):,} tokens -> {len(val):,} blocks"
    info["summary"] = summary
    return train, val, info


def _same_file(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False

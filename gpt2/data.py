r"""From token ids to training blocks, the way Hugging Face's run_clm.py does it.

A language model is trained on one long stream of tokens. The files are read and cut
into texts by harness/textfiles.py (one text per line of a .txt file, one per record
of a .json or .csv file, as run_clm reads them). From there, three steps, each chosen
so that a model fine-tuned here sees exactly the tokens it would have seen under
`run_clm.py`:

1. Tokenize each text on its own. That is not the same as tokenizing the whole file
   at once: GPT-2's pre-tokenizer glues runs of newlines together when whitespace
   follows, so a blank line before indented code ("):\n\n    return") or "\n\n\n"
   gives the single token 628 ("\n\n") on the whole text, but two 198s ("\n", "\n")
   line by line, because a line never holds more than one "\n". A model fine-tuned
   by run_clm has only ever seen the second form, so we produce it too.

2. Concatenate all texts into one stream and cut it into blocks of `block_size`
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

3. Labels are the inputs. Block [t0, t1, ..., tn] is both the input and the target;
   the model itself shifts by one and scores its prediction at position i against
   token i+1 (loss.py). So this module only ever hands out one array of ids per block.

An epoch visits the blocks in an order that depends on (seed, epoch) only, so that a
resumed run can rebuild it (`epoch_permutation`).
"""

import itertools
import unicodedata

import numpy as np
import torch

from .errors import UserError

# Lines handed to the Rust tokenizer at once: large enough to keep all cores busy,
# small enough that its per-token Encoding objects do not fill memory on a big file.
ENCODE_CHUNK_LINES = 10_000
ENCODE_CHUNK_CHARS = 4_000_000  # ... and at most this many characters at once
LONG_LINE_CHARS = 100_000       # a longer line is tokenized in pieces (see `pieces`)


# --- tokenizing -----------------------------------------------------------------

def id_dtype(tokenizer):
    # GPT-2's 50,257 ids fit in 16 bits: a quarter of the memory and disk of int64.
    return np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32


def tokenize_texts(texts: list[str], tokenizer) -> np.ndarray:
    """Token ids of each text, tokenized on its own, concatenated: shape (total ids,).

    Nothing is put between two texts (no <|endoftext|>): see the module docstring.
    Texts go to the tokenizer in batches of at most ENCODE_CHUNK_LINES pieces and
    ENCODE_CHUNK_CHARS characters, a long text cut in pieces (`pieces`): memory stays
    bounded whatever the lines' lengths. (Only for GPT-2's kind of tokenizer, whose ids
    the cuts do not change: a tokenizer.json of another kind gets each text whole.)
    """
    dtype = id_dtype(tokenizer)
    parts, batch, chars = [], [], 0

    def flush():
        encoded = tokenizer.encode_batch(batch)
        count = sum(len(ids) for ids in encoded)
        parts.append(np.fromiter(itertools.chain.from_iterable(encoded), dtype=dtype, count=count))
        batch.clear()

    splittable = getattr(tokenizer, "splits_at_spaces", True)
    for text in texts:
        for piece in (pieces(text) if splittable else [text]):
            batch.append(piece)
            chars += len(piece)
            if len(batch) >= ENCODE_CHUNK_LINES or chars >= ENCODE_CHUNK_CHARS:
                flush()
                chars = 0
    if batch:
        flush()
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def pieces(text: str, limit: int | None = None):
    """`text` in consecutive pieces of at most `limit` characters that tokenize as the whole does.

    A 50 MB line handed to the tokenizer at once takes gigabytes (it keeps offsets and
    more for every token). GPT-2 first splits text into words, numbers, punctuation and
    spaces (tokenizer.py), and BPE never merges across two of those pieces. A single
    space between two non-space characters always starts a new word (" word", " 42",
    " ."), so cutting just before it changes nothing: the ids of the pieces, put end to
    end, are the ids of the whole. A text with no such space (minified code, a base64
    blob) is cut where a letter meets a digit or a punctuation mark (or the reverse,
    `_class_change_before`): the pre-tokenizer splits there too ("abc", "123", ";").
    Only a text with neither in `limit` characters (one word of 100,000 letters) is cut
    where the limit falls, which may split one word's tokens.
    """
    limit = limit or LONG_LINE_CHARS
    start = 0
    while len(text) - start > limit:
        lo, hi = start + limit // 2, start + limit
        cut = _space_before(text, lo, hi) or _class_change_before(text, lo, hi) or hi
        yield text[start:cut]
        start = cut
    yield text[start:] if start else text


def _kind(c) -> str:
    """The pre-tokenizer's classes of a non-space character: a letter, a number, or other."""
    return {"L": "L", "N": "N"}.get(unicodedata.category(c)[0], "P")


def _class_change_before(text, lo, hi):
    """The last position in [lo, hi) between two non-space characters of different classes
    (letter / number / other) where GPT-2's pre-tokenizer always splits, or None.

    Not after an apostrophe: "'s", "'t", "'re", "'ve", "'m", "'ll", "'d" are pieces of
    their own, so "x's" splits as "x", "'s", and a cut between "'" and "s" would not.
    """
    for i in range(hi - 1, lo, -1):
        a, b = text[i - 1], text[i]
        if a.isspace() or b.isspace() or a == "'":
            continue
        if _kind(a) != _kind(b):
            return i
    return None


def _space_before(text, lo, hi):
    """The last position in [lo, hi) of a space between two non-space characters, or None."""
    i = text.rfind(" ", lo, hi)
    while i > lo:
        if not text[i - 1].isspace() and not text[i + 1].isspace():
            return i
        i = text.rfind(" ", lo, i)
    return None


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
            f"{source}: {len(ids)} token{'' if len(ids) == 1 else 's'}, fewer than one block of {block_size}; "
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
    batches it already did. The pair is combined by numpy's SeedSequence, which mixes
    its entries: with `seed + epoch` instead, seed 42's second epoch would be seed 43's
    first, and two runs "with different seeds" would share most of their orders.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch]))
    return rng.permutation(n_blocks)

"""GPT-2's tokenizer: byte-level byte-pair encoding (BPE).

GPT-2 never sees characters. Text is first turned into UTF-8 bytes, and each of the
256 possible bytes is mapped to one printable stand-in character: the printable
ASCII and Latin-1 bytes stand for themselves ("A" is "A"), the other 68 (controls,
space, ...) are shifted past them to U+0100 and up. So the space byte 0x20 is written
"Ġ" (U+0120) and the newline 0x0A "Ċ" (U+010A): " the" is the token "Ġthe". Why
bytes and not characters: any string, in any script, emoji and invalid UTF-8
included, is a sequence of bytes, so every text has an encoding and there is no
"unknown" token.

The BPE merges in `merges.txt` then glue frequent pairs together, in the file's order
(the most frequent pair of the training text first), until no rule applies.
`vocab.json` gives each resulting piece its id. A regular expression splits the text
into words, numbers, punctuation and runs of spaces first, so that a merge never
crosses from one word into the next.

The 50,257 ids: 256 single bytes (ids 0-255) + 50,000 merges (merge i makes id 256 + i)
+ 1 special token, `<|endoftext|>` (id 50256), which marks the end of a document.
(Checked on weights/gpt2/: vocab.json has 50,257 entries, the 256 byte characters
have ids 0-255 and the last id is <|endoftext|>'s; `wc -l merges.txt` says 50,001:
a "#version: 0.2" header line and 50,000 merges, the i-th joined giving id 256 + i.)

The algorithm is implemented by Hugging Face's `tokenizers` library (Rust, fast);
this module only wires GPT-2's two files into it.

A model directory brings its own tokenizer, in one of two forms: the two files above,
or `tokenizer.json`, the single file the `tokenizers` library reads whole (vocabulary,
merges, pre-tokenizer, decoder and the *added tokens*, such as a chat model's
`<|user|>`, with their ids). transformers 5 saves only tokenizer.json. Where both
forms are there, tokenizer.json is used (only it holds added tokens), and the two
must agree. A directory with neither uses GPT-2's files, shipped in weights/gpt2/,
unless train.py wrote it (its run_args.json says so: train.py always saves the
tokenizer, so one that is gone went missing); one with half of a tokenizer (vocab.json
without merges.txt) is refused: a model silently read with another vocabulary learns
nonsense.
"""

import hashlib
import os

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from .errors import UserError
from .files import open_regular, parse_json, read_capped, read_json

EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256
FILES = ("vocab.json", "merges.txt")
TOKENIZER_JSON = "tokenizer.json"
# transformers' own description of a tokenizer: not read here, but carried on with it.
EXTRA_FILES = ("tokenizer_config.json", "special_tokens_map.json")
# Files train.py writes into every model directory it saves (OUT, checkpoint-<step>/): such
# a directory always carries its tokenizer too.
RUN_FILES = ("run_args.json", "trainer_state.json")
MAX_TOKENIZER_BYTES = 256 << 20  # a 250,000-token tokenizer.json is 20 MB
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights", "gpt2")


class Tokenizer:
    def __init__(self, vocab_path: str, merges_path: str):
        for p in (vocab_path, merges_path):
            try:  # a regular file of a sane size: the Rust reader would read /dev/zero for ever
                open_regular(p, "tokenizer file", MAX_TOKENIZER_BYTES).close()
            except FileNotFoundError:
                raise UserError(f"{p}: tokenizer file not found") from None
            except OSError as e:
                raise UserError(f"{p}: cannot read it ({e.strerror or e})") from None
        try:
            bpe = models.BPE.from_file(vocab_path, merges_path)
        except Exception as e:  # the Rust side raises plain Exceptions
            raise UserError(f"{vocab_path} / {merges_path}: not GPT-2 tokenizer files ({e})") from None
        tok = _HFTokenizer(bpe)
        # add_prefix_space=False: "Hello" and " Hello" are different tokens, as in GPT-2.
        # use_regex=True: split into words/numbers/punctuation/spaces before BPE.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([EOT_TOKEN])
        self._setup(tok, (vocab_path, merges_path))

    def _setup(self, tok, files):
        self._tok = tok
        # May a long text be cut before a space and tokenized in pieces (data.pieces)? True
        # for GPT-2's byte-level BPE; a tokenizer.json of another kind may join across spaces.
        self.splits_at_spaces = True
        self.fallback = False  # GPT-2's files, taken because the model directory had none (for_checkpoint)
        self.eot_id = tok.token_to_id(EOT_TOKEN)  # None for a tokenizer without it
        # The rows of the embedding matrix its ids need: an added token may have any id.
        self.vocab_size = max(tok.get_vocab(with_added_tokens=True).values(), default=-1) + 1
        # Identifies these exact files, for caches of token ids.
        h = hashlib.sha256()
        for p in files:
            with open_regular(p, "tokenizer file") as f:
                h.update(f.read())
        self.fingerprint = h.hexdigest()[:16]
        self.files = files  # what a model directory written with this tokenizer carries
        self.source = os.path.dirname(files[0])

    @classmethod
    def from_dir(cls, directory: str) -> "Tokenizer":
        return cls(os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt"))

    @classmethod
    def from_json(cls, path: str) -> "Tokenizer":
        """A tokenizer.json, as the tokenizers library (and transformers' fast tokenizer) reads it."""
        try:
            with open_regular(path, "tokenizer.json", MAX_TOKENIZER_BYTES) as f:
                data = read_capped(f, path, MAX_TOKENIZER_BYTES, "tokenizer.json")
        except OSError as e:
            raise UserError(f"{path}: cannot read it ({e.strerror or e})") from None
        spec = parse_json(data, path)  # bounded depth and numbers (files.py)
        if not isinstance(spec, dict):
            raise UserError(f"{path}: not a JSON object, so not a tokenizer.json")
        try:
            tok = _HFTokenizer.from_str(data.decode("utf-8"))
        except Exception as e:  # the Rust side raises plain Exceptions
            reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
            raise UserError(f"{path}: not a tokenizer.json the tokenizers library reads ({reason})") from None
        self = cls.__new__(cls)
        self._setup(tok, (path,))
        self.splits_at_spaces = _gpt2_like(spec)
        return self

    @classmethod
    def for_checkpoint(cls, directory: str, model_vocab_size: int) -> "Tokenizer":
        """The checkpoint's own tokenizer (tokenizer.json, else vocab.json + merges.txt), else
        GPT-2's, shipped in weights/gpt2/ (see the module docstring).

        Every id it can produce must have a row in the model's embedding matrix.
        """
        path = lambda name: os.path.join(directory, name)  # noqa: E731
        there = [f for f in (TOKENIZER_JSON, *FILES) if os.path.lexists(path(f))]
        if TOKENIZER_JSON in there:
            tok = cls.from_json(path(TOKENIZER_JSON))
            if all(f in there for f in FILES):
                _check_agree(path(TOKENIZER_JSON), path(FILES[0]), path(FILES[1]))
        elif len(there) == len(FILES):
            tok = cls.from_dir(directory)
        elif there:
            missing = [f for f in FILES if f not in there]
            raise UserError(f"{directory}: {there[0]} without {missing[0]}: half of a tokenizer; add "
                            f"{missing[0]} (or a tokenizer.json), or remove {there[0]} to use GPT-2's")
        elif any(os.path.exists(path(f)) for f in RUN_FILES):
            # train.py always writes the tokenizer beside the model: without it, files went
            # missing (a half-deleted folder, a partial copy). GPT-2's stock tokenizer would
            # silently lose any added token, and cut the text into other blocks.
            raise UserError(f"{directory}: a model directory written by train.py, but its tokenizer "
                            f"(tokenizer.json, or vocab.json + merges.txt) is missing; copy it back from "
                            f"the run's --out or the model it started from")
        else:
            tok = cls.from_dir(SHIPPED_DIR)
            tok.fallback = True  # the model directory has none of its own
        if tok.vocab_size > model_vocab_size:
            raise UserError(f"{directory}: the tokenizer has ids up to {tok.vocab_size - 1}, "
                            f"the model's vocab_size is only {model_vocab_size}")
        tok.files += tuple(p for p in map(path, EXTRA_FILES) if tok.source == directory and _small_file(p))
        return tok

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many strings at once (in parallel, in Rust)."""
        return [e.ids for e in self._tok.encode_batch(texts)]

    def decode(self, ids) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def describe(self) -> str:
        """One line for the run's header: which files, from where, and any added tokens."""
        added = sum(t.content != EOT_TOKEN for t in self._tok.get_added_tokens_decoder().values())
        names = " + ".join(os.path.basename(f) for f in self.files if os.path.basename(f) not in EXTRA_FILES)
        # "has none" only when it was a fallback: weights/gpt2/ is also gpt2's own model directory.
        return (f"tokenizer: {names} of {self.source}" + (" (GPT-2's: the model directory has none)"
                if self.fallback else "") + (f", {added} added token(s)" if added else ""))

    def save_tokenizer_json(self, path: str) -> None:
        """The single-file tokenizer.json form (what transformers' fast tokenizer loads)."""
        self._tok.save(path)


def _gpt2_like(spec: dict) -> bool:
    """Is this tokenizer.json GPT-2's kind: no normalizer, a ByteLevel pre-tokenizer, and no
    added token holding a space? Then a cut before a space changes no ids (data.pieces)."""
    pre = spec.get("pre_tokenizer")
    added = spec.get("added_tokens") or []
    return (spec.get("normalizer") is None and isinstance(pre, dict) and pre.get("type") == "ByteLevel"
            and all(isinstance(t, dict) and not any(c.isspace() for c in str(t.get("content", ""))) for t in added))


def _small_file(path) -> bool:
    """A regular file (a link to one is fine) of at most 1 MB: one that is safe to copy."""
    try:
        return os.path.isfile(path) and os.path.getsize(path) <= 1 << 20
    except OSError:
        return False


def _check_agree(json_path, vocab_path, merges_path):
    """tokenizer.json and vocab.json + merges.txt beside it must be the same vocabulary and merges."""
    model = read_json(json_path, kind=dict).get("model")
    vocab = read_json(vocab_path, kind=dict)
    if not isinstance(model, dict) or model.get("type") != "BPE":
        raise UserError(f"{json_path}: not a BPE tokenizer, but {vocab_path} and {merges_path} are; "
                        f"remove the ones that do not belong to the model")
    if model.get("vocab") != vocab:
        raise UserError(f"{json_path} and {vocab_path} disagree on the vocabulary; remove the one that "
                        f"does not belong to the model")
    with open_regular(merges_path, "merges.txt", MAX_TOKENIZER_BYTES) as f:
        lines = read_capped(f, merges_path, MAX_TOKENIZER_BYTES, "merges.txt").decode("utf-8", "replace")
    listed = [m for m in lines.splitlines() if m.strip() and not m.startswith("#version")]
    merges = [m if isinstance(m, str) else " ".join(map(str, m)) for m in model.get("merges") or []]
    if merges != listed:
        raise UserError(f"{json_path} and {merges_path} disagree on the merges; remove the one that does "
                        f"not belong to the model")

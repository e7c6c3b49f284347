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
"""

import hashlib
import os

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from .errors import UserError

EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256
FILES = ("vocab.json", "merges.txt")
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights", "gpt2")


class Tokenizer:
    def __init__(self, vocab_path: str, merges_path: str):
        for p in (vocab_path, merges_path):
            if not os.path.isfile(p):
                raise UserError(f"{p}: tokenizer file not found")
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
        self._tok = tok
        self.eot_id = tok.token_to_id(EOT_TOKEN)
        self.vocab_size = tok.get_vocab_size()
        # Identifies these exact files, for caches of token ids.
        h = hashlib.sha256()
        for p in (vocab_path, merges_path):
            with open(p, "rb") as f:
                h.update(f.read())
        self.fingerprint = h.hexdigest()[:16]
        self.files = (vocab_path, merges_path)

    @classmethod
    def from_dir(cls, directory: str) -> "Tokenizer":
        return cls(os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt"))

    @classmethod
    def for_checkpoint(cls, directory: str, model_vocab_size: int) -> "Tokenizer":
        """The checkpoint's own tokenizer files, else GPT-2's, shipped in weights/gpt2/.

        Every id it can produce must have a row in the model's embedding matrix.
        """
        own = all(os.path.isfile(os.path.join(directory, f)) for f in FILES)
        tok = cls.from_dir(directory if own else SHIPPED_DIR)
        if tok.vocab_size > model_vocab_size:
            raise UserError(f"{directory}: the tokenizer has {tok.vocab_size} tokens, "
                            f"the model's vocab_size is only {model_vocab_size}")
        return tok

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many strings at once (in parallel, in Rust)."""
        return [e.ids for e in self._tok.encode_batch(texts)]

    def decode(self, ids) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def save_tokenizer_json(self, path: str) -> None:
        """The single-file tokenizer.json form (what transformers' fast tokenizer loads)."""
        self._tok.save(path)

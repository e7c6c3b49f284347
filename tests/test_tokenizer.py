"""gpt2.tokenizer against the reference: transformers' GPT2TokenizerFast on the same files.

How the reference is built matters. With transformers 5.x, GPT2TokenizerFast(vocab_file=...,
merges_file=...) returns *empty* ids ("Hello world" -> []), and a test comparing against
it would compare nothing. So the reference here is built the way the hub ships GPT-2:
a single tokenizer.json, written by the `tokenizers` library's ByteLevelBPETokenizer from
the same vocab.json and merges.txt, loaded with GPT2TokenizerFast(tokenizer_file=...).
`test_reference_itself_works` checks it gives GPT-2's known ids before anything is
compared with it.

"<|endoftext|>" written literally in the text: the reference maps it to 50256, because
GPT2TokenizerFast registers its eos_token "<|endoftext|>" as a special token, and our
Tokenizer adds it as a special token too. So a training text containing that string
gets a real document separator there, under run_clm and here alike.
"""

from pathlib import Path

import pytest

from gpt2.errors import UserError
from gpt2.tokenizer import EOT_ID, Tokenizer

WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "gpt2"

VARIED = "\n".join([
    "Hello world! It's a test: don't, won't, I'll, we've, they're.",
    "Accents: café, à la carte, über, Straße, naïve, Ångström, e\u0301 (combining).",
    "CJK: 東京は日本の首都です。北京欢迎你。서울특별시.",
    "Emoji: 🙂 👍🏽 🇫🇷 👩‍👩‍👧‍👦 🧑‍💻 ❤️ ✨",
    "Windows line\r\nends\r\n\r\nand a lone\rcarriage return",
    "runs   of    spaces,\ttabs\t\tand  \t mixed  ",
    "",
    "",
    "   leading spaces and a trailing one ",
    "def fib(n: int) -> int:",
    "    if n < 2:",
    "        return n  # base case",
    "",
    "    return fib(n - 1) + fib(n - 2)",
    "const f = (a, b) => { return a ?? b; };  // JS",
    "for (let i = 0; i < 10; i++) { console.log(`i=${i}`); }",
    "Numbers: 3.14159, 1,000,000, 2024-01-01, 0xFF, 1e-9, -42, 007, 12345678901234567890",
    "Unicode spaces:\u00a0nbsp,\u3000ideographic,\u2028line sep, zero\u200bwidth",
    "Special: <|endoftext|>The next document.<|endoftext|>",
    "Control: \x00\x07\x1b[0m and a form\x0cfeed",
    "",
])


@pytest.fixture(scope="module")
def ours():
    return Tokenizer.from_dir(str(WEIGHTS))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    path = tmp_path_factory.mktemp("reference") / "tokenizer.json"
    ByteLevelBPETokenizer(str(WEIGHTS / "vocab.json"), str(WEIGHTS / "merges.txt"),
                          add_prefix_space=False).save(str(path))
    return GPT2TokenizerFast(tokenizer_file=str(path))


def ref_encode(reference, text):
    return reference.encode(text, add_special_tokens=False)


def test_reference_itself_works(reference):
    assert ref_encode(reference, "Hello world") == [15496, 995]
    assert ref_encode(reference, " Hello") == [18435]          # no prefix space added
    assert reference.eos_token_id == EOT_ID


def test_hello_world(ours):
    assert ours.encode("Hello world") == [15496, 995]
    assert ours.encode(" Hello") == [18435]
    assert ours.eot_id == EOT_ID == 50256
    assert ours.vocab_size == 50257


def test_same_ids_as_reference_on_varied_text(ours, reference):
    ids = ours.encode(VARIED)
    assert ids == ref_encode(reference, VARIED)
    assert len(ids) > 300


def test_same_ids_as_reference_line_by_line(ours, reference):
    # Each line with its "\n", on its own and in one batch, as gpt2.data tokenizes.
    lines = [line + "\n" for line in VARIED.split("\n")]
    assert ours.encode_batch(lines) == [ref_encode(reference, line) for line in lines]


def test_endoftext_in_text_is_the_special_token(ours, reference):
    text = "a<|endoftext|>b"
    assert ours.encode(text) == ref_encode(reference, text) == [64, EOT_ID, 65]
    assert ours.encode(VARIED).count(EOT_ID) == 2


def test_round_trip(ours, reference):
    ids = ours.encode(VARIED)
    assert ours.decode(ids) == VARIED == reference.decode(ids)
    for line in VARIED.splitlines(keepends=True):
        assert ours.decode(ours.encode(line)) == line
    assert ours.decode([15496, 995]) == "Hello world"


def test_missing_vocab_file(tmp_path):
    (tmp_path / "merges.txt").write_bytes((WEIGHTS / "merges.txt").read_bytes())
    with pytest.raises(UserError) as e:
        Tokenizer.from_dir(str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path / "vocab.json") in msg and "\n" not in msg


def test_fingerprint_names_the_files(ours, tmp_path):
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((WEIGHTS / name).read_bytes())
    assert Tokenizer.from_dir(str(tmp_path)).fingerprint == ours.fingerprint
    with open(tmp_path / "merges.txt", "a", encoding="utf-8") as f:
        f.write("Ġ t\n")  # one more merge rule: other files, another fingerprint
    assert Tokenizer.from_dir(str(tmp_path)).fingerprint != ours.fingerprint

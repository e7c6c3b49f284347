"""The shape of a GPT-2 model, and how it is written in Hugging Face's config.json.

Every GPT-2 size is the same network with other numbers: how many blocks (n_layer),
how wide the residual stream is (n_embd), how many attention heads share that width
(n_head), how many positions it can see (n_positions) and how many tokens it knows
(vocab_size). `GPT2Config` holds those numbers; `from_json`/`to_json` read and write
them under the names Hugging Face uses, so that a checkpoint written here opens in
`transformers` and a checkpoint from the hub opens here.

A config.json comes from anywhere (the hub, a colleague, a hand edit), and one wrong
number in it is expensive: `n_layer: 100000` asks for terabytes of memory before
anything else is looked at, and `layer_norm_epsilon: -1` trains happily into NaN.
So every config is checked before a model exists: each number's type, its range, an
upper bound that no real GPT-2-like model comes near, and the switches of Hugging
Face's GPT-2 that this model does not implement. A mistake is one line naming the
file and the key. The checks sit at the end of this file ("reading config.json"),
after the numbers themselves.

Where GPT-2 small's 124M parameters sit (C = n_embd = 768; tests/test_config.py
counts them on a GPT2 instance):

    wte         token embedding: 50,257 x 768                             38,597,376
    wpe         position embedding: 1,024 x 768                              786,432
    one block   ln_1 + attn + ln_2 + mlp                                   7,087,872
      attn      c_attn 768 x 2,304, c_proj 768 x 768, biases: 4C^2 + 4C    2,362,368
      mlp       c_fc 768 x 3,072, c_proj 3,072 x 768, biases: 8C^2 + 5C    4,722,432
      ln_1/2    a gain and a bias of 768 each: 4C                              3,072
    12 blocks   12 x 7,087,872                                            85,054,464
    ln_f        the final LayerNorm                                            1,536
    lm_head     tied: the same matrix as wte, counted once                         0
    total                                                                124,439,808

So the blocks hold 68 % (two thirds of each block in its MLP), the token embedding
31 %. Per block, 12 C^2 (+ 13 C of biases and gains): the size of a GPT-2 grows with
n_layer x n_embd^2.
"""

import json
from dataclasses import asdict, dataclass, fields

from .errors import UserError
from .files import open_regular, parse_json, read_capped, write_json


@dataclass
class GPT2Config:
    vocab_size: int = 50257   # tokens the tokenizer knows: rows of the token embedding (and of the LM head)
    n_positions: int = 1024   # the longest sequence the model can read: rows of the position embedding
    n_embd: int = 768         # width of the residual stream, the vector that stands for each token
    n_layer: int = 12         # how many blocks are stacked
    n_head: int = 12          # attention heads per block; each works on n_embd / n_head of the width
    layer_norm_epsilon: float = 1e-5  # added to the variance in LayerNorm, so it never divides by 0
    embd_pdrop: float = 0.1   # dropout on token + position embeddings
    attn_pdrop: float = 0.1   # dropout on attention probabilities
    resid_pdrop: float = 0.1  # dropout on each residual branch before it is added back

    def __post_init__(self):
        check_fields(vars(self))  # types and ranges, see "reading config.json" below

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def with_dropout(self, p: float) -> "GPT2Config":
        """The same shape with every dropout probability set to p."""
        d = asdict(self)
        d.update(embd_pdrop=p, attn_pdrop=p, resid_pdrop=p)
        return GPT2Config(**d)

    # --- Hugging Face config.json (the checks: "reading config.json", below) --------
    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "GPT2Config":
        """The config in a parsed config.json; a one-line UserError naming `where` and
        the key when it is not a GPT-2 this model can be."""
        return cls(**fields_from_hf(d, where))

    @classmethod
    def from_json(cls, path: str) -> "GPT2Config":
        return cls.from_dict(read_json_object(path), where=path)

    def to_hf_dict(self) -> dict:
        """The config.json that transformers.GPT2LMHeadModel.from_pretrained expects."""
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            **asdict(self),
            "n_ctx": self.n_positions,
            "activation_function": "gelu_new",
            "initializer_range": 0.02,
            "bos_token_id": 50256,
            "eos_token_id": 50256,
            "tie_word_embeddings": True,
        }

    def to_json(self, path: str) -> None:
        write_json(path, self.to_hf_dict())


# The released sizes. distilgpt2 is GPT-2 small with 6 blocks instead of 12.
# (PRESETS, the same as GPT2Configs, is made at the end of the file: a GPT2Config is
# checked as it is made, by the checks defined below.)
PRESET_SIZES = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),          # 124M parameters
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 355M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),   # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),      # 1.5B
    "distilgpt2": dict(n_layer=6, n_head=12, n_embd=768),     # 82M
}


# === reading config.json ==============================================================
#
# Everything below turns a config.json that this model cannot be into one line, before
# anything is allocated. The order matters: types first (so that arithmetic on the
# values cannot fail), then ranges, then the sizes together (divisibility, total size).

# The largest value each size may take. Real GPT-2-like checkpoints stay far below
# (GPT-2 XL: 48 blocks of width 1600 with 25 heads and 1024 positions; GPT-3 175B:
# 96 blocks of width 12288; the largest tokenizers: about 256k tokens). The bounds only
# stop a typo or a hostile file from asking for an absurd allocation.
MAX_SIZE = {
    "vocab_size": 2**24,    # 16,777,216 tokens
    "n_positions": 2**20,   # 1,048,576 positions
    "n_embd": 2**16,        # 65,536 wide
    "n_layer": 1024,        # blocks
    "n_head": 2**16,        # and at most n_embd, since n_embd must be a multiple of it
}
# ... and together: the parameters, held in float32 (4 bytes each), must fit in 1 TB.
# GPT-3 175B would take 0.7 TB; 100000 blocks of GPT-2 small would take 2.8 TB.
MAX_PARAMETER_BYTES = 10**12
MAX_CONFIG_BYTES = 1 << 20  # a real config.json is 1 KB; hub.py caps its download the same

PROBABILITIES = ("embd_pdrop", "attn_pdrop", "resid_pdrop")

# Switches of Hugging Face's GPT2Config that change what the network computes, and
# the values this model implements. A config.json asking for anything else would load
# and then silently compute something other than what its weights were trained for.
SUPPORTED = {
    "activation_function": ("gelu_new", "gelu_pytorch_tanh"),  # two names of the tanh GELU (model.py's MLP)
    "scale_attn_weights": (True,),               # attention scores divided by sqrt(head_dim)
    "scale_attn_by_inverse_layer_idx": (False,),  # ... and not also by the block's number
    "add_cross_attention": (False,),             # no encoder to attend to: GPT-2 is decoder-only
    "tie_word_embeddings": (True,),              # the LM head is the token embedding (model.py)
    "model_type": ("gpt2",),                     # other architectures use other names and layers
}


def read_json_object(path: str) -> dict:
    """The JSON object in `path`, or a one-line UserError saying why there is none."""
    try:
        with open_regular(path, "config.json", MAX_CONFIG_BYTES) as f:
            data = read_capped(f, path, MAX_CONFIG_BYTES, "config.json")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except PermissionError:
        raise UserError(f"{path}: permission denied") from None
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror or e})") from None
    # Bad JSON, bad UTF-8, [[[[... nested deep, a number of 5,000 digits: one line (files.py).
    d = parse_json(data, path)
    if not isinstance(d, dict):
        raise UserError(f"{path}: not a JSON object")
    return d


def fields_from_hf(d: dict, where: str) -> dict:
    """The GPT2Config fields of a Hugging Face config dict, all checked."""
    defaults = {f.name: f.default for f in fields(GPT2Config)}
    given = {k: v for k, v in d.items() if k in defaults}  # HF configs carry many other keys
    keys = {k: k for k in given}  # field -> the key it was read from, for the messages
    # Old GPT-2 configs also carry n_ctx (= n_positions); accept it as a fallback.
    if "n_positions" not in d and "n_ctx" in d:
        given["n_positions"], keys["n_positions"] = d["n_ctx"], "n_ctx"
    missing = [k for k in ("n_layer", "n_head", "n_embd") if k not in given]
    if missing:
        raise UserError(f"{where}: not a GPT-2 config (missing {', '.join(missing)})")
    values = {**defaults, **given}
    try:
        check_fields(values, keys)
        check_supported(d, values["n_embd"])
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    # JSON's 0 is as good a probability as 0.0, but the fields are floats.
    return {k: v if k in MAX_SIZE else float(v) for k, v in values.items()}


def check_fields(values: dict, keys: dict | None = None) -> None:
    """Refuse the sizes and probabilities this model cannot be built with: a UserError
    naming the key (`keys` maps a field to the config.json key it was read from)."""
    key = lambda field: (keys or {}).get(field, field)
    for field, most in MAX_SIZE.items():
        v = values[field]
        if type(v) is not int or not 1 <= v <= most:  # type(): to Python, True is an int
            raise UserError(f"{key(field)} must be an integer from 1 to {most:,}, got {show(v)}")
    for field in PROBABILITIES:  # 1 would drop everything
        check_number(key(field), values[field], "a probability in [0, 1)", lambda p: 0 <= p < 1)
    # LayerNorm divides by sqrt(variance + eps): an eps that is 0 in float32, where LayerNorm
    # computes, can divide by 0 (a negative one takes the root of a negative), and a large
    # eps flattens every activation towards 0.
    check_number(key("layer_norm_epsilon"), values["layer_norm_epsilon"],
                 "a number from 1e-38 to below 1 (GPT-2: 1e-05)", lambda eps: 1e-38 <= eps < 1)
    if values["n_embd"] % values["n_head"]:  # also refuses n_head > n_embd
        raise UserError(f"{key('n_embd')} ({values['n_embd']}) must be divisible by {key('n_head')} "
                        f"({values['n_head']}): each head takes an equal slice of the width")
    n = parameter_count(values)
    if 4 * n > MAX_PARAMETER_BYTES:
        sizes = ", ".join(f"{key(f)}={values[f]}" for f in ("vocab_size", "n_positions", "n_embd", "n_layer"))
        raise UserError(f"{sizes} make {n:.3g} parameters, {4 * n / 1e12:.3g} TB in float32; "
                        f"more than the {MAX_PARAMETER_BYTES / 1e12:g} TB allowed")


def check_number(key: str, v, expected: str, in_range) -> None:
    """A JSON number (not a string, not true/false) for which in_range(v) holds.
    The ranges are bounded, so NaN and infinity fail them too (NaN fails every comparison)."""
    if type(v) is bool or not isinstance(v, (int, float)) or not in_range(v):
        raise UserError(f"{key} must be {expected}, got {show(v)}")


def check_supported(d: dict, n_embd: int) -> None:
    """Refuse the Hugging Face switches (SUPPORTED) this model does not implement."""
    for key, supported in SUPPORTED.items():
        # type(): to Python, 1 == True; in config.json they are different things.
        if key in d and not any(type(d[key]) is type(s) and d[key] == s for s in supported):
            wanted = " or ".join(show(s) for s in supported)
            raise UserError(f"{key}: {show(d[key])} is not supported; this model implements only {key}={wanted}")
    # HF's MLP width; null means the 4 * n_embd that model.py's MLP always uses.
    n_inner = d.get("n_inner")
    if n_inner is not None and not (type(n_inner) is int and n_inner == 4 * n_embd):
        raise UserError(f"n_inner: {show(n_inner)} is not supported; this model implements only "
                        f"n_inner=null or 4 * n_embd = {4 * n_embd}")


def parameter_count(values: dict) -> int:
    """How many numbers a GPT-2 of these sizes holds (the LM head is the token embedding)."""
    V, P, C, L = (values[k] for k in ("vocab_size", "n_positions", "n_embd", "n_layer"))
    # Per block: attention qkv (3CC + 3C) and projection (CC + C), MLP (4CC + 4C and
    # 4CC + C), two LayerNorms (4C). Around the blocks: both embeddings and ln_f (2C).
    return V * C + P * C + L * (12 * C * C + 13 * C) + 2 * C


def show(v) -> str:
    """A value as config.json spells it (true, null, "x", NaN), cut short when long."""
    try:
        s = json.dumps(v)
    except ValueError:  # an integer of over 4300 digits: Python refuses to print it
        s = "a number of thousands of digits"
    except TypeError:  # not a JSON value: from_dict was called from code
        s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


# The released sizes as GPT2Configs (PRESET_SIZES, above), made now that the checks exist.
PRESETS = {name: GPT2Config(**sizes) for name, sizes in PRESET_SIZES.items()}

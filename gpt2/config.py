"""The shape of a GPT-2 model, and how it is written in Hugging Face's config.json.

Every GPT-2 size is the same network with other numbers: how many blocks (n_layer),
how wide the residual stream is (n_embd), how many attention heads share that width
(n_head), how many positions it can see (n_positions) and how many tokens it knows
(vocab_size). `GPT2Config` holds those numbers; `from_json`/`to_json` read and write
them under the names Hugging Face uses, so that a checkpoint written here opens in
`transformers` and a checkpoint from the hub opens here.
"""

import json
from dataclasses import asdict, dataclass, fields

from .errors import UserError
from .files import write_json


@dataclass
class GPT2Config:
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    layer_norm_epsilon: float = 1e-5
    embd_pdrop: float = 0.1   # dropout on token + position embeddings
    attn_pdrop: float = 0.1   # dropout on attention probabilities
    resid_pdrop: float = 0.1  # dropout on each residual branch before it is added back

    def __post_init__(self):
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise UserError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def with_dropout(self, p: float) -> "GPT2Config":
        """The same shape with every dropout probability set to p."""
        d = asdict(self)
        d.update(embd_pdrop=p, attn_pdrop=p, resid_pdrop=p)
        return GPT2Config(**d)

    # --- Hugging Face config.json -------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "GPT2Config":
        names = {f.name for f in fields(cls)}
        # Old GPT-2 configs also carry n_ctx (= n_positions); accept it as a fallback.
        if "n_positions" not in d and "n_ctx" in d:
            d = {**d, "n_positions": d["n_ctx"]}
        values = {k: v for k, v in d.items() if k in names}
        missing = [k for k in ("n_layer", "n_head", "n_embd") if k not in values]
        if missing:
            raise UserError(f"{where}: not a GPT-2 config (missing {', '.join(missing)})")
        try:
            return cls(**values)
        except (TypeError, UserError) as e:  # a wrong type, or a value __post_init__ refuses
            raise UserError(f"{where}: {e}") from None

    @classmethod
    def from_json(cls, path: str) -> "GPT2Config":
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            raise UserError(f"{path}: no such file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise UserError(f"{path}: not a JSON object")
        return cls.from_dict(d, where=path)

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
PRESETS = {
    "gpt2": GPT2Config(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": GPT2Config(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": GPT2Config(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": GPT2Config(n_layer=48, n_head=25, n_embd=1600),
    "distilgpt2": GPT2Config(n_layer=6, n_head=12, n_embd=768),
}

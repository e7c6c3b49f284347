"""LoRA: fine-tuning about a million numbers instead of 124 million.

The idea. Fine-tuning changes each weight matrix W (out, in) into W + dW. The LoRA
paper (Hu et al., 2021) observed that dW has a low "intrinsic rank": the change a
task needs lives in a few directions, so dW can be written as the product of two
thin matrices,

    dW = B @ A        A: (r, in)   B: (out, r)   r small (4, 8, 16), against in, out = 768..3072

LoRA freezes W and learns only A and B. A layer that computed x W^T + b now computes

    y = x W^T + b  +  scale * dropout(x) A^T B^T        scale = alpha / r
        (frozen)          (the adapter: in -> r -> out numbers)

(x A^T is the bottleneck: (..., in) -> (..., r); then B^T brings it back to (..., out).)

Initialisation. B starts at zero, so dW = 0 and the adapted model starts as exactly
the pretrained one. A starts random (Kaiming-uniform, nn.Linear's own init, as in
the paper's code and in peft): were both zero, both gradients would be zero
(d/dA involves B, d/dB involves A) and nothing would ever move. With B = 0, B gets a
gradient at the first step and A from the second step on.

scale = alpha / r. Our default alpha = r gives scale 1 (dW = B @ A as it is); peft's
default is lora_alpha = 8 whatever r, the same thing at r = 8. The paper instead keeps
alpha fixed while trying several r, so that a larger r does not call for a new
learning rate: pass alpha (--lora-alpha) to do that. Dropout, if any, is applied to
the adapter's input only; the frozen path sees x unchanged.

What is trained. In this model every projection is an nn.Linear with weight (out, in):
attn.c_attn (C -> 3C: q, k, v), attn.c_proj (C -> C), mlp.c_fc (C -> 4C) and
mlp.c_proj (4C -> C). A target name picks every projection whose path ends with it,
peft's rule: "c_proj" means both the attention and the MLP output projection,
"attn.c_proj" the attention one only. Everything else stays frozen: embeddings, the
LM head (tied to the token embedding), LayerNorms and biases. For GPT-2 124M at r = 8,
each adapted (out, in) matrix adds r * (in + out) numbers, per block:

    c_attn       8 * (768 + 2304) =  24,576
    attn.c_proj  8 * (768 +  768) =  12,288
    mlp.c_fc     8 * (768 + 3072) =  30,720
    mlp.c_proj   8 * (3072 + 768) =  30,720      x 12 blocks = 1,179,648 trainable

against 124,439,808 frozen: 0.95%. (c_attn alone, peft's default for GPT-2: 294,912.)

Why that saves memory. Full fine-tuning in fp32 keeps, per parameter, the weight
(4 bytes), its gradient (4) and AdamW's two running moments (8): 16 bytes x 124.4M
= 2.0 GB. With LoRA the frozen weights keep only their 4 bytes (0.50 GB): they get no
gradient (requires_grad is False) and AdamW, built on the trainable parameters only,
keeps no moments for them; the adapters add 16 bytes x 1.18M = 19 MB. Backward also
skips the d/dW matmul of every frozen matrix, the LM head's (V, C) one included (see
loss.py). What does not shrink: the activations. The gradient must still flow down
through every frozen layer to reach the adapters below it. And the saved adapter is
4.7 MB instead of a 500 MB checkpoint.

Merging. After training, W' = W + scale * B @ A is an ordinary weight matrix of the
same shape: `merged_model` folds the adapters in and returns a plain GPT2, which
weights.save_checkpoint writes like any fine-tuned model (transformers and
evaluate.py open it), with no extra cost at inference.

Sharing only the adapter. `save_adapter` writes the two files of Hugging Face peft
(adapter_model.safetensors + adapter_config.json), which
`peft.PeftModel.from_pretrained(GPT2LMHeadModel..., directory)` loads. A run writes them
into OUT/adapter/ (adapter_dir), not beside the merged model.safetensors: transformers
with peft installed would attach an adapter it finds in OUT to the merged weights, which
hold it already (applied twice). peft's names
are the module paths of transformers' GPT2LMHeadModel behind "base_model.model.",
which are ours (see weights.py), e.g.

    base_model.model.transformer.h.0.attn.c_attn.lora_A.weight    (r, in)
    base_model.model.transformer.h.0.attn.c_attn.lora_B.weight    (out, r)

peft wraps each layer's adapter in two bias-free nn.Linear (hence ".weight"), and
drops its adapter name ("default") from the saved keys. transformers stores GPT-2's
projections as Conv1D, weight (in, out), transposed from ours (weights.py); peft
marks that with fan_in_fan_out=True, which transposes only B @ A when it merges:
lora_A and lora_B have the shapes above either way, so they are saved as they are.
"""

import copy
import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
from safetensors.torch import save_file

from .errors import UserError
from .files import atomic_path, read_json, write_json
from .weights import read_safetensors

# The four projections of a Block, by their path inside it.
PROJECTIONS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
DEFAULT_TARGETS = ("c_attn", "c_proj", "c_fc")  # all four ("c_proj" names two)

# peft's file names and key prefix (peft/utils/constants.py, peft/utils/save_and_load.py).
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
# A run's adapter: OUT/adapter/, beside the merged model in OUT (see the module docstring).
ADAPTER_DIR = "adapter"


def adapter_dir(model_dir: str) -> str:
    """Where a run's model directory (OUT, best/) keeps the adapter alone."""
    return os.path.join(model_dir, ADAPTER_DIR)


def selected(targets) -> tuple:
    """The block paths that target names pick, by peft's rule: the path ends with the name."""
    return tuple(p for p in PROJECTIONS if any(p == t or p.endswith("." + t) for t in targets))


@dataclass
class LoRAConfig:
    rank: int
    alpha: float
    dropout: float
    targets: tuple

    def __post_init__(self):
        if isinstance(self.targets, str):  # "c_attn,c_proj" as typed on a command line
            self.targets = self.targets.split(",")
        self.targets = tuple(dict.fromkeys(t.strip() for t in self.targets if t.strip()))
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise UserError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        if not self.alpha > 0:
            raise UserError(f"LoRA alpha must be positive, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        choices = "choose among c_attn, c_proj, c_fc (or attn.c_proj, mlp.c_proj)"
        unknown = [t for t in self.targets if not selected([t])]
        if unknown:
            raise UserError(f"unknown LoRA target {unknown[0]!r}: {choices}")
        if not self.targets:
            raise UserError(f"no LoRA target given: {choices}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoRALinear(nn.Module):
    """y = base_layer(x) + scale * dropout(x) A^T B^T, with base_layer (an nn.Linear) frozen."""

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        # Kept as a child module: its weight's key is "<path>.base_layer.weight", as in peft.
        self.base_layer = base_layer.requires_grad_(False)
        out_features, in_features = base_layer.weight.shape
        like = dict(device=base_layer.weight.device, dtype=base_layer.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, **like))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, **like))  # (out, r): dW = 0 at first
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear(in, r)'s init: U(+-1/sqrt(in))
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):  # x: (..., in)
        h = self.dropout(x) @ self.lora_A.T  # (..., r): the low-rank bottleneck
        return self.base_layer(x) + self.scale * (h @ self.lora_B.T)  # (..., out)

    def delta_weight(self) -> torch.Tensor:
        """scale * B @ A: (out, r) @ (r, in) -> (out, in), the shape of the frozen weight."""
        return self.scale * (self.lora_B @ self.lora_A)

    def extra_repr(self) -> str:
        return f"rank={self.lora_A.shape[0]}, scale={self.scale:g}"


def _unwrap(model):
    """The GPT2 inside DistributedDataParallel and/or torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def lora_layers(model) -> list:
    """[(module path, LoRALinear)] of the model, in order: "transformer.h.0.attn.c_attn", ..."""
    return [(name, m) for name, m in _unwrap(model).named_modules() if isinstance(m, LoRALinear)]


def add_lora(model, rank: int, alpha: float | None = None, dropout: float = 0.0, targets=DEFAULT_TARGETS):
    """Freeze every parameter of `model`, then wrap its targeted projections in LoRALinear, in place.

    alpha None means alpha = rank (scale 1). targets: names as in peft's target_modules,
    or one comma-separated string. Returns the model, with its settings in `model.lora_config`.
    """
    config = LoRAConfig(rank, rank if alpha is None else alpha, dropout, targets)
    raw = _unwrap(model)
    if lora_layers(raw):
        raise UserError("the model already has LoRA adapters")
    smallest = min(min(getattr(getattr(raw.transformer.h[0], p.split(".")[0]), p.split(".")[1]).weight.shape)
                   for p in selected(config.targets))
    if config.rank > smallest:
        # B @ A of rank r has r x (in + out) parameters: above min(in, out) it is more than the
        # full matrix (in x out), and no more expressive. (--lora 100000: 204.8M on a 3.3M model.)
        raise UserError(f"--lora {config.rank}: above the smallest targeted layer's size ({smallest}); "
                        f"a rank of at most {smallest} (usually 4 to 64) is a low-rank update")
    raw.requires_grad_(False)  # the adapters, created below, are the only trainable parameters
    for block in raw.transformer.h:
        for path in selected(config.targets):
            parent, name = path.split(".")  # "attn.c_attn" -> block.attn, "c_attn"
            module = getattr(block, parent)
            setattr(module, name, LoRALinear(getattr(module, name), config.rank, config.alpha, config.dropout))
    raw.lora_config = config
    return model


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) numbers of parameters; the tied LM head is counted once."""
    params = list(_unwrap(model).parameters())  # each nn.Parameter once, shared ones included
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def merged_model(model):
    """A plain GPT2 whose projections are W + scale * B @ A; `model` itself is left as it is.

    The copy is made on the model's device (for GPT-2 124M, 0.5 GB more while it lives),
    so that training can go on after a checkpoint is saved from it.
    """
    merged = copy.deepcopy(_unwrap(model))  # keeps the LM head tied to wte
    with torch.no_grad():
        for path, layer in lora_layers(merged):
            layer.base_layer.weight += layer.delta_weight()  # (out, in) += (out, in)
            parent, name = path.rsplit(".", 1)
            setattr(merged.get_submodule(parent), name, layer.base_layer)  # the nn.Linear again
    merged.__dict__.pop("lora_config", None)
    return merged.requires_grad_(True)  # an ordinary model: nothing frozen any more


def _config_of(model) -> LoRAConfig:
    config = getattr(_unwrap(model), "lora_config", None)
    if config is None:
        raise ValueError("the model has no LoRA adapters: call add_lora first")
    return config


def _peft_keys(model) -> dict:
    """{peft key: our parameter} for every adapter matrix of the model."""
    keys = {}
    for path, layer in lora_layers(model):
        keys[f"{PEFT_PREFIX}{path}.lora_A.weight"] = layer.lora_A  # (r, in)
        keys[f"{PEFT_PREFIX}{path}.lora_B.weight"] = layer.lora_B  # (out, r)
    return keys


def save_adapter(model, directory: str, base_model: str = "gpt2") -> None:
    """Write the adapters in peft's layout: adapter_model.safetensors + adapter_config.json.

    base_model: the name or directory of the pretrained model they apply to, recorded
    in the config as peft does (peft users load that model, then the adapter).
    """
    config = _config_of(model)
    os.makedirs(directory, exist_ok=True)
    tensors = {k: p.detach().to("cpu").contiguous() for k, p in _peft_keys(model).items()}
    with atomic_path(os.path.join(directory, ADAPTER_WEIGHTS)) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})  # peft writes the same metadata
    write_json(os.path.join(directory, ADAPTER_CONFIG), {
        # The LoraConfig fields that decide the computation; peft fills in the others
        # with its defaults, which are these too (no bias, no rsLoRA, no DoRA).
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",  # PeftModel.from_pretrained then returns a PeftModelForCausalLM
        "base_model_name_or_path": base_model,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": list(config.targets),
        "fan_in_fan_out": True,  # transformers' GPT-2 projections are Conv1D, weight (in, out)
        "bias": "none",
        "use_rslora": False,  # True would mean scale = alpha / sqrt(r)
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
    })


def read_adapter_config(directory: str) -> LoRAConfig:
    """The LoRAConfig of a saved adapter (ours or a peft LoRA for GPT-2), for add_lora(model, **vars(it))."""
    path = os.path.join(directory, ADAPTER_CONFIG)
    d = read_json(path)
    if d is None:
        raise UserError(f"{path}: no such file")
    if not isinstance(d, dict) or d.get("peft_type") != "LORA" or "r" not in d:
        raise UserError(f"{path}: not a LoRA adapter config")
    # peft options that would change what the adapter computes: only their plain values load here.
    plain = {"use_rslora": False, "use_dora": False, "bias": "none", "lora_bias": False,
             "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None}
    for key, value in plain.items():
        if d.get(key) and d[key] != value:
            raise UserError(f"{path}: {key}={d[key]!r} is not supported here (only plain LoRA)")
    targets = d.get("target_modules")
    if not isinstance(targets, list):
        raise UserError(f"{path}: target_modules must be a list of names, got {targets!r}")
    try:
        return LoRAConfig(d["r"], d.get("lora_alpha", 8), d.get("lora_dropout", 0.0), targets)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


def load_adapter(model, directory: str) -> None:
    """Read save_adapter's files into a model that add_lora prepared with the same rank, alpha, targets."""
    mine, saved = _config_of(model), read_adapter_config(directory)
    path = os.path.join(directory, ADAPTER_CONFIG)
    if saved.rank != mine.rank or saved.alpha != mine.alpha:
        raise UserError(f"{path}: adapter of rank {saved.rank}, alpha {saved.alpha:g}; "
                        f"the model has rank {mine.rank}, alpha {mine.alpha:g}")
    if selected(saved.targets) != selected(mine.targets):
        raise UserError(f"{path}: adapter targets {','.join(saved.targets)}; "
                        f"the model's are {','.join(mine.targets)}")
    path = os.path.join(directory, ADAPTER_WEIGHTS)
    tensors, expected = read_safetensors(path), _peft_keys(model)
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        k = (missing or unexpected)[0]
        raise UserError(f"{path}: {len(missing)} adapter tensors missing, {len(unexpected)} unexpected "
                        f"(e.g. {k.removeprefix(PEFT_PREFIX)})")
    for k, p in expected.items():
        if tensors[k].shape != p.shape:
            raise UserError(f"{path}: tensor {k.removeprefix(PEFT_PREFIX)} has shape "
                            f"{tuple(tensors[k].shape)}, the model's is {tuple(p.shape)}")
    with torch.no_grad():
        for k, p in expected.items():
            p.copy_(tensors[k])

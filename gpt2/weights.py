"""Pretrained weights: reading and writing Hugging Face's GPT-2 checkpoint files.

A checkpoint directory holds `config.json` (the shape, see config.py) and
`model.safetensors` (the tensors, by name). safetensors is a plain format: a JSON
header of names, dtypes, shapes and offsets, then raw bytes. Unlike a pickled
`torch.save` file, loading it cannot run code, which matters for files from the web.

Two twists make a GPT-2 checkpoint more than `load_state_dict`:

* Conv1D. OpenAI's original code multiplied x @ W with W stored (in, out); Hugging
  Face kept that as a "Conv1D" module. `nn.Linear` stores (out, in) and computes
  x @ W.T, so the four projection matrices of each block are transposed on the way in
  and back on the way out. Embeddings, LayerNorms and biases are stored as they are.
* Two key layouts exist. The original `openai-community/gpt2` file names tensors
  `wte.weight`, `h.0.attn.c_attn.weight`, ... and also stores each block's causal mask
  as `h.N.attn.bias` (a buffer, not a weight). Files written by recent `transformers`
  prefix everything with `transformer.` and drop the masks. We accept both, and skip
  the mask buffers by their name. The LM head is tied to `wte`, so `lm_head.weight`,
  when present, must be that same matrix.

Files are written as `transformers` writes them, so `GPT2LMHeadModel.from_pretrained`
opens a checkpoint fine-tuned here.
"""

import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import GPT2Config
from .errors import UserError
from .files import atomic_path
from .model import GPT2

# Weights stored (in, out) by HF's Conv1D; nn.Linear wants (out, in).
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers in the original file that are not parameters (the causal mask, a constant).
MASK_BUFFERS = (".attn.bias", ".attn.masked_bias")


def read_safetensors(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path}: not a readable safetensors file ({reason}); truncated download?") from None


def hf_to_ours(tensors: dict, path: str) -> dict:
    """Rename and transpose a HF GPT-2 state dict into this model's state dict."""
    out = {}
    for key, t in tensors.items():
        name = key.removeprefix("transformer.")
        if name.endswith(MASK_BUFFERS):
            continue
        if name == "lm_head.weight":
            continue  # tied to wte: checked against it below
        if name.endswith(CONV1D):
            if t.dim() != 2:
                raise UserError(f"{path}: tensor {key} has shape {tuple(t.shape)}, expected a matrix")
            t = t.t()
        out["transformer." + name] = t.contiguous()
    head = tensors.get("lm_head.weight")
    wte = out.get("transformer.wte.weight")
    if head is not None and wte is not None and not torch.equal(head, wte):
        raise UserError(f"{path}: lm_head.weight differs from wte.weight; GPT-2 ties them and so does this model")
    return out


def load_into(model: GPT2, tensors: dict, path: str, config_path: str = "config.json") -> None:
    """Copy the tensors into the model, with one-line errors for any mismatch."""
    state = hf_to_ours(tensors, path)
    expected = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0].removeprefix('transformer.')})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0].removeprefix('transformer.')})")
        raise UserError(f"{path}: tensors do not match {config_path}: {', '.join(parts)}")
    for k, want in expected.items():
        if state[k].shape != want.shape:
            raise UserError(
                f"{path}: tensor {k.removeprefix('transformer.')} has shape {tuple(state[k].shape)}, "
                f"{config_path} implies {tuple(want.shape)}"
            )
    with torch.no_grad():
        for k, want in expected.items():
            want.copy_(state[k])  # also converts fp16/bf16 files to the model's fp32


def load_checkpoint(directory: str, dropout: float | None = None) -> GPT2:
    """Build a GPT2 from a directory with config.json and model.safetensors."""
    if not os.path.isdir(directory):
        raise UserError(f"{directory}: no such directory")
    config_path = os.path.join(directory, "config.json")
    cfg = GPT2Config.from_json(config_path)
    if dropout is not None:
        cfg = cfg.with_dropout(dropout)
    weights_path = os.path.join(directory, "model.safetensors")
    tensors = read_safetensors(weights_path)
    model = GPT2(cfg)
    load_into(model, tensors, weights_path, config_path)
    return model


def load_pretrained(name_or_path: str, dropout: float | None = None, weights_dir: str | None = None):
    """A model name (gpt2, org/name) or a checkpoint directory -> (model, directory).

    Names are looked up in weights/ and downloaded there when missing (hub.py).
    """
    from .hub import resolve

    directory = resolve(name_or_path, weights_dir)
    return load_checkpoint(directory, dropout), directory


def to_hf(model: GPT2) -> dict:
    """This model's parameters under transformers' names and layout."""
    out = {}
    for k, t in model.state_dict().items():
        if k == "lm_head.weight":
            continue  # tied: transformers re-ties it from wte on load
        if k.endswith(CONV1D):
            t = t.t()
        out[k] = t.detach().to("cpu").contiguous()
    return out


def save_checkpoint(model: GPT2, directory: str) -> None:
    """Write model.safetensors + config.json, each atomically (see files.py)."""
    os.makedirs(directory, exist_ok=True)
    raw = model._orig_mod if hasattr(model, "_orig_mod") else model  # unwrap torch.compile
    with atomic_path(os.path.join(directory, "model.safetensors")) as tmp:
        save_file(to_hf(raw), tmp, metadata={"format": "pt"})
    raw.config.to_json(os.path.join(directory, "config.json"))

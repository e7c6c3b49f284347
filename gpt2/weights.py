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

Checking before loading. A safetensors header states every tensor's name, dtype
and shape ahead of the data, so `read_header` gets them without reading a byte of the
tensors, and `check_tensors` compares them with what config.json implies
(`expected_shapes`). A config that does not match its file, or a tensor of integers,
booleans or complex numbers (which `copy_` would silently cast into the model), is
refused before any tensor is read and before the model is built. The data then gets
one look: NaN or infinity in a weight (the mark of a diverged run) would load
without complaint and train to a NaN loss, so it is refused too.

Large models come in shards: `model-00001-of-00003.safetensors` and so on, with
`model.safetensors.index.json` naming the shard of every tensor ("weight_map").
`weight_files` finds them; the shards are then read one tensor at a time, as one
file is. A `pytorch_model.bin` alone is a pickle: loading one runs whatever code it
holds, so it is never opened, and one line says how to convert it.

Files are written as `transformers` writes them, so `GPT2LMHeadModel.from_pretrained`
opens a checkpoint fine-tuned here. The tied LM head is not written: safetensors
refuses two names for one piece of memory (its loader maps each name to its own
bytes, and a shared tensor saved twice would come back as two independent copies,
quietly untied), so only `transformer.wte.weight` is stored, and transformers (like
`load_checkpoint` here) ties the head to it again when loading.
"""

import json
import os
import re

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .config import GPT2Config
from .errors import UserError
from .files import atomic_path, library_write, read_json
from .model import GPT2

# Weights stored (in, out) by HF's Conv1D; nn.Linear wants (out, in).
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers in the original file that are not parameters (the causal mask, a constant).
MASK_BUFFERS = (".attn.bias", ".attn.masked_bias")
# The dtypes a weight may have in the file, by safetensors' names; the model holds
# float32 and converts on load. Anything else (I32, U8, BOOL, C64, ...) is not a weight.
FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_DTYPE_NAMES = {t: name for name, t in FLOAT_DTYPES.items()}


# --- reading a file ------------------------------------------------------------------

def _check_readable(path: str) -> None:
    if os.path.isdir(path):
        raise UserError(f"{path}: a directory, not a file")
    if not os.path.isfile(path):
        raise UserError(f"{path}: " + ("not a regular file (a device, a FIFO or a socket)"
                                       if os.path.exists(path) else "no such file"))
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise UserError(f"{path}: permission denied") from None


def _unreadable(path: str, e: Exception) -> UserError:
    if isinstance(e, PermissionError):
        return UserError(f"{path}: permission denied")
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    return UserError(f"{path}: not a readable safetensors file ({reason}); truncated download?")


def read_header(path: str) -> dict:
    """name -> (dtype, shape) of every tensor in the file, from its header alone."""
    _check_readable(path)
    try:
        with safe_open(path, "pt") as f:
            return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise _unreadable(path, e) from None


def read_safetensors(path: str) -> dict:
    """Every tensor in the file, by name."""
    _check_readable(path)
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise _unreadable(path, e) from None


def header_of(tensors: dict) -> dict:
    """What read_header would say of a file holding these tensors."""
    name = lambda dtype: _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))
    return {k: (name(t.dtype), tuple(t.shape)) for k, t in tensors.items()}


# --- comparing it with config.json ---------------------------------------------------

def expected_shapes(cfg: GPT2Config) -> dict:
    """name (without `transformer.`) -> shape of every tensor in a GPT-2 file of this
    config, in the file's layout: Conv1D matrices are (in, out). tests/test_model.py
    checks that this is GPT2's own state_dict."""
    V, P, C = cfg.vocab_size, cfg.n_positions, cfg.n_embd
    block = {
        "ln_1.weight": (C,), "ln_1.bias": (C,),
        "attn.c_attn.weight": (C, 3 * C), "attn.c_attn.bias": (3 * C,),  # q, k, v side by side
        "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,),
        "ln_2.weight": (C,), "ln_2.bias": (C,),
        "mlp.c_fc.weight": (C, 4 * C), "mlp.c_fc.bias": (4 * C,),
        "mlp.c_proj.weight": (4 * C, C), "mlp.c_proj.bias": (C,),
    }
    shapes = {"wte.weight": (V, C), "wpe.weight": (P, C)}
    for i in range(cfg.n_layer):
        shapes.update({f"h.{i}.{name}": shape for name, shape in block.items()})
    shapes.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
    return shapes


def _weights_in(header: dict, path: str) -> dict:
    """name (without `transformer.`) -> the file's key, for every tensor that is a weight."""
    found = {}
    for key in header:
        name = key.removeprefix("transformer.")
        if name.endswith(MASK_BUFFERS):
            continue  # never loaded, so any dtype or shape will do
        if name in found:
            raise UserError(f"{path}: holds both {found[name]} and {key}; which one is the weight?")
        found[name] = key
    return found


def check_tensors(header: dict, cfg: GPT2Config, path: str, config_path: str = "config.json") -> None:
    """Refuse a file (its header: name -> (dtype, shape)) that is not the model `cfg` describes."""
    want = expected_shapes(cfg)
    found = _weights_in(header, path)
    missing = sorted(set(want) - set(found))
    unexpected = sorted(set(found) - set(want) - {"lm_head.weight"})  # lm_head: tied, see hf_to_ours
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise UserError(f"{path}: tensors do not match {config_path}: {', '.join(parts)}")
    for name, key in found.items():
        dtype, shape = header[key]
        implied = want["wte.weight" if name == "lm_head.weight" else name]
        if shape != implied:
            raise UserError(f"{path}: tensor {name} has shape {shape}, {config_path} implies {implied}")
        if dtype not in FLOAT_DTYPES:
            raise UserError(f"{path}: tensor {name} has dtype {dtype}; a weight must be floating point "
                            f"({', '.join(FLOAT_DTYPES)})")


# --- loading it ----------------------------------------------------------------------

def _ours(items, path: str):
    """(our name, tensor) for each (file key, tensor): renamed, transposed, checked finite.

    lm_head.weight, when the file has it, comes out under that name: it must equal wte
    (the caller checks, once wte is known). The mask buffers are skipped.
    """
    for key, t in items:
        name = key.removeprefix("transformer.")
        if name.endswith(MASK_BUFFERS):
            continue
        if not _all_finite(t):
            bad = t.numel() - int(torch.isfinite(t).sum())
            raise UserError(f"{path}: tensor {name} holds {bad} NaN or infinite values; "
                            f"a diverged training run?")
        if name == "lm_head.weight":
            yield name, t
            continue
        if name.endswith(CONV1D):
            if t.dim() != 2:
                raise UserError(f"{path}: tensor {key} has shape {tuple(t.shape)}, expected a matrix")
            t = t.t()  # a view: copy_ reads it transposed, no temporary copy
        yield "transformer." + name, t


def _all_finite(t) -> bool:
    """torch.isfinite(t).all(), a million numbers at a time: isfinite makes temporaries 1.7 times
    the tensor's size (350 MB for GPT-2-medium's embedding), a chunk's are a few MB."""
    flat = t.reshape(-1)
    step = 1 << 20
    return all(bool(torch.isfinite(flat[i:i + step]).all()) for i in range(0, flat.numel(), step))


def _check_tied(head, wte, path):
    if head is not None and wte is not None and not (head.shape == wte.shape and torch.equal(head.to(wte), wte)):
        raise UserError(f"{path}: lm_head.weight differs from wte.weight; GPT-2 ties them and so does this model")


def hf_to_ours(tensors: dict, path: str) -> dict:
    """Rename and transpose a HF GPT-2 state dict into this model's state dict."""
    out = dict(_ours(tensors.items(), path))
    _check_tied(out.pop("lm_head.weight", None), out.get("transformer.wte.weight"), path)
    return out


def _copy_into(model: GPT2, pairs, path: str) -> None:
    """Copy (our name, tensor) pairs into the model's parameters, one at a time."""
    state, head = model.state_dict(), None
    with torch.no_grad():
        for name, t in pairs:
            if name == "lm_head.weight":
                head = t
            else:
                state[name].copy_(t)  # also converts fp16/bf16 files to the model's fp32
    _check_tied(head, state["transformer.wte.weight"], path)


# The dtypes a weight may have (check_tensors refuses the others first), as torch's.
_TORCH_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}


def _file_tensors(path: str):
    """(key, tensor) of every weight in the file, read one at a time with plain reads.

    The format is simple enough to read by hand: 8 bytes giving the header's length N,
    N bytes of JSON ({name: {"dtype", "shape", "data_offsets": [begin, end]}}), then
    the raw bytes. Reading each tensor into its own buffer keeps one tensor in memory at
    a time; a memory-mapped file (safetensors' own loader) would count every page it
    touched as this process's memory, the whole file in the end.
    """
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))  # checked by read_header (safetensors) before
        for key, info in header.items():
            if key == "__metadata__" or key.removeprefix("transformer.").endswith(MASK_BUFFERS):
                continue
            begin, end = info["data_offsets"]
            data = bytearray(end - begin)
            f.seek(8 + n + begin)
            if f.readinto(data) != len(data):
                raise UserError(f"{path}: truncated ({key} is cut short); truncated download?")
            yield key, torch.frombuffer(data, dtype=_TORCH_DTYPES[info["dtype"]]).reshape(info["shape"])


def load_into(model: GPT2, tensors: dict, path: str, config_path: str = "config.json") -> None:
    """Copy the tensors into the model, with one-line errors for any mismatch."""
    check_tensors(header_of(tensors), model.config, path, config_path)
    _copy_into(model, _ours(tensors.items(), path), path)


def load_checkpoint(directory: str, dropout: float | None = None, config: GPT2Config | None = None,
                    **options) -> GPT2:
    """Build a GPT2 from a directory with config.json and model.safetensors.

    config: its config.json when the caller has read it already (run.py decides options
    from it); options: the model's memory options (checkpointing, loss_chunk; see model.py).
    """
    if not os.path.isdir(directory):
        raise UserError(f"{directory}: no such directory")
    config_path = os.path.join(directory, "config.json")
    cfg = config if config is not None else GPT2Config.from_json(config_path)
    if dropout is not None:
        cfg = cfg.with_dropout(dropout)
    weights_path, shards = weight_files(directory)
    # Nothing is read or built until the header agrees with the config ...
    check_tensors(_headers(weights_path, shards), cfg, weights_path, config_path)
    # ... nor built until the data is sound (_ours refuses NaN and infinity): a first
    # pass reads the tensors one at a time and keeps none, ...
    tensors = lambda: (kt for shard in shards for kt in _file_tensors(shard))  # noqa: E731
    for _ in _ours(tensors(), weights_path):
        pass
    # ... and the second copies them into the model, one at a time. Memory: the model
    # and one tensor, not the model and the whole file (twice the weights).
    model = GPT2(cfg, **options)
    _copy_into(model, _ours(tensors(), weights_path), weights_path)
    return model


INDEX = "model.safetensors.index.json"
_SHARD = re.compile(r"[\w.-]+\.safetensors")  # a file name of the directory itself: no "/" nor ".."


def weight_files(directory: str) -> tuple[str, list]:
    """(the path that names the weights in messages, the safetensors files holding them).

    model.safetensors, else the shards its index names; a one-line UserError otherwise.
    """
    single, index = os.path.join(directory, "model.safetensors"), os.path.join(directory, INDEX)
    if os.path.lexists(single) or not os.path.lexists(index):
        if not os.path.lexists(single) and os.path.lexists(os.path.join(directory, "pytorch_model.bin")):
            raise UserError(f"{directory}: only pytorch_model.bin, a pickle (loading one can run any code it "
                            f"holds, so it is not opened); convert it once to safetensors: python -c \"from "
                            f"transformers import AutoModelForCausalLM as M; M.from_pretrained('{directory}')"
                            f".save_pretrained('{directory}')\"")
        return single, [single]
    weight_map = read_json(index, kind=dict).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise UserError(f"{index}: no \"weight_map\" of tensor names to shard files")
    bad = [v for v in weight_map.values() if not isinstance(v, str) or not _SHARD.fullmatch(v) or v.startswith(".")]
    if bad:
        raise UserError(f"{index}: {str(bad[0])[:80]!r} is not the name of a .safetensors file in {directory}")
    shards = [os.path.join(directory, name) for name in dict.fromkeys(weight_map.values())]
    return index, shards


def _headers(index: str, shards: list) -> dict:
    """The headers of the shards as one; each tensor in one shard only, the one its index names."""
    if len(shards) == 1 and shards[0] == index:
        return read_header(index)
    merged, where = {}, {}
    for shard in shards:
        for name, spec in read_header(shard).items():
            if name in merged:
                raise UserError(f"{index}: {name} is in both {where[name]} and {os.path.basename(shard)}")
            merged[name], where[name] = spec, os.path.basename(shard)
    named = read_json(index, kind=dict)["weight_map"]
    wrong = [k for k, v in named.items() if where.get(k) != v]
    if wrong:
        raise UserError(f"{index}: {wrong[0]} is not in {named[wrong[0]]}, where the index says it is")
    return merged


def to_hf(model: GPT2, state: dict | None = None) -> dict:
    """This model's parameters (or `state`, its state dict) under transformers' names and layout."""
    out = {}
    for k, t in (model.state_dict() if state is None else state).items():
        if k == "lm_head.weight":
            continue  # tied: transformers re-ties it from wte on load
        if k.endswith(CONV1D):
            t = t.t()
        out[k] = t.detach().to("cpu").contiguous()
    return out


def save_checkpoint(model: GPT2, directory: str, config: GPT2Config | None = None, state: dict | None = None) -> None:
    """Write model.safetensors + config.json, each atomically (see files.py).

    config: the config.json to write, if not the model's own (a run's --dropout is the
    run's, not the model's: harness/run.py passes the checkpoint's config). state: the
    weights to write, if not model.state_dict() (a sharded model's, gathered: sharding.py)."""
    os.makedirs(directory, exist_ok=True)
    raw = model._orig_mod if hasattr(model, "_orig_mod") else model  # unwrap torch.compile
    path = os.path.join(directory, "model.safetensors")
    with atomic_path(path) as tmp, library_write(path):
        save_file(to_hf(raw, state), tmp, metadata={"format": "pt"})
    (config or raw.config).to_json(os.path.join(directory, "config.json"))

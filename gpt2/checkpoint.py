"""resume.pt: everything needed to continue a run exactly where it stopped.

A fine-tuning run can be stopped at any step (Ctrl-C, a killed job, `--save-every`)
and continued with `--resume` so that it ends with exactly the weights an
uninterrupted run would have reached, bit for bit. That takes more than the weights:

    model        the weights
    optimizer    AdamW's two moments per parameter and its step count: without them
                 the first steps after a resume would be those of a fresh optimizer
    scheduler    where the learning-rate schedule stands
    scaler       the fp16 loss scale (grown and shrunk over the run)
    rng          the random-number state of each process: dropout masks are random,
                 and the resumed run must draw the same masks as the uninterrupted one
    step, ...    the loop's counters; the History (loop.py): the losses not yet
                 logged, the log so far, the best evaluation

The data order is not stored: it is a function of (seed, epoch) (data.py,
`epoch_permutation`), so the resumed run rebuilds it and skips the batches done.

What else decides the weights must match too, or the resumed run would quietly be
another run: the learning rate and every other setting that settings.py declares
MATCH or AT_LOAD (an earlier check, `check_settings`, compares the flags' ones before
any model is loaded), the
training text (its sha256: the same text with its lines reversed has the same shape,
not the same blocks; and the sha256 of its blocks and the tokenizer's: the same bytes
read with another --keep-linebreaks or tokenizer are other blocks), the model's shape
and dropout, the LoRA adapters. `load` compares them and refuses a different command in one line that lists the differences.

Three guarantees make the file trustworthy:
* It is written atomically (files.py): a kill during the write leaves the previous
  state, never half of one. (Where the states go, and how many are kept, is the run
  directory's business: harness/hooks.py and harness/checkpoints.py.)
* No state whose weights hold a NaN or an infinity is ever written: a "last good
  checkpoint" must be good (loop.py checks the weights before every save).
* It is loaded with `weights_only=True`, so a tampered file cannot run code when it
  is unpickled, and every part is checked before it is used: a hand-made or damaged
  state is refused in one line, never half applied.
"""

import math
from dataclasses import asdict

import torch

from . import settings
from .errors import UserError
from .files import atomic_path, library_write


def rng_state(device):
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device):
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _lora(t) -> dict | None:
    config = getattr(t.model, "lora_config", None)  # set by lora.add_lora
    return asdict(config) if config is not None else None


def state_dict(t, history, data: dict) -> dict:
    """The resumable state of Trainer `t` and its History; `data` fingerprints the training text.

    Each object gives its own part (Trainer.state_dict, History.state_dict); under
    torchrun every process calls this (a collective: random states and unlogged
    losses differ per process and are gathered by rank).
    """
    return {
        **t.state_dict(), **history.state_dict(t.dist),
        "config": settings.record(t.cfg),
        # What else decides the weights: the data and the model (its dropout included).
        "data_shape": list(t.train_blocks.shape), "data": data,
        "model_config": asdict(t.model.config), "lora": _lora(t),
    }


def check_settings(saved_path, flag_values: dict) -> None:
    """--resume with other settings than the interrupted run: refused before the model and the
    data are loaded. flag_values: the TrainConfig values the command's flags give
    (settings.from_flags); those decided later (AT_LOAD) are compared by `load`."""
    try:  # mmap: only the small config is read from a state of hundreds of MB
        saved = torch.load(saved_path, map_location="cpu", weights_only=True, mmap=True).get("config")
    except Exception:
        return  # not readable here: load says why
    if not isinstance(saved, dict):
        return
    diff = settings.differences(flag_values, saved, settings.must_match(at_load=False))
    if diff:
        raise UserError(f"--resume: this command differs from the interrupted run: {', '.join(diff)}")


def write(state: dict, path: str) -> None:
    """torch.save, atomically: a kill during the write leaves the previous file whole."""
    with atomic_path(path) as tmp, library_write(path):
        torch.save(state, tmp)


def _differences(t, s, data) -> list[str]:
    """What in this command differs from the run saved in state `s`."""
    saved = s["config"]
    diff = settings.differences(settings.record(t.cfg), saved, settings.must_match())
    if s.get("data_shape", list(t.train_blocks.shape)) != list(t.train_blocks.shape):
        diff.append(f"training blocks {list(t.train_blocks.shape)} (saved: {s['data_shape']})")
    saved_data = s.get("data") or {}
    for which in ("train", "validation"):
        theirs, ours = saved_data.get(f"{which}_sha256"), data.get(f"{which}_sha256")
        if theirs and ours and theirs != ours:
            diff.append(f"the {which} text {data.get(which + '_source')} changed since the "
                        f"interrupted run (sha256 {ours[:12]}..., saved: {theirs[:12]}...)")
        # The same bytes, read into other ids (--keep-linebreaks, another tokenizer): other blocks.
        theirs, ours = saved_data.get(f"{which}_ids_sha256"), data.get(f"{which}_ids_sha256")
        if theirs and ours and theirs != ours and not diff:
            diff.append(f"the {which} blocks differ from the interrupted run's though the text is the same "
                        f"(another --keep-linebreaks or tokenizer?)")
    if saved_data.get("tokenizer") and data.get("tokenizer") and saved_data["tokenizer"] != data["tokenizer"]:
        diff.append(f"the tokenizer {data['tokenizer']} (saved: {saved_data['tokenizer']})")
    for k, v in asdict(t.model.config).items():
        if s.get("model_config", {}).get(k, v) != v:
            diff.append(f"model {k} {v!r} (saved: {s['model_config'][k]!r})")
    if s.get("lora") != _lora(t):
        diff.append(f"LoRA {_lora(t)} (saved: {s.get('lora')})")
    # Another number of processes is fine if the micro-batches per step stay the
    # same (2 GPUs x accumulation 2 = 1 GPU x 4): the data order is then the same.
    saved_world = s.get("world_size", 1)
    if saved.get("grad_accum", 0) * saved_world != t.micro_per_step:
        diff.append(f"grad_accum {t.cfg.grad_accum} x {t.dist.world_size} process(es) "
                    f"(saved: {saved.get('grad_accum')!r} x {saved_world})")
    return diff


# What a state must hold, and of which type, before any of it is used.
PARTS = {"model": dict, "optimizer": dict, "scheduler": dict, "scaler": dict, "rng": (list, dict),
         "step": int, "skipped": int, "lr_used": float, "loss_sum": float, "window_loss": (list, float),
         "window_steps": int, "log_history": list, "bad_evals": int, "config": dict}


def _check_parts(s, path, t):
    """A one-line UserError for a state that is not what save() writes (hand-made, damaged, foreign)."""
    if not isinstance(s, dict) or not isinstance(s.get("config"), dict):
        raise UserError(f"{path}: not a training state of train.py")
    for key, kind in PARTS.items():
        value = s.get(key)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise UserError(f"{path}: not a usable training state ({key!r} is missing or has the wrong type)")
    numbers = [s["lr_used"], s["loss_sum"], *([s["window_loss"]] if isinstance(s["window_loss"], float)
                                             else s["window_loss"])]
    if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in numbers):
        raise UserError(f"{path}: not a usable training state (a non-finite or non-numeric loss or rate)")
    if not (0 <= s["skipped"] <= s["step"] and 0 <= s["window_steps"] <= s["step"]):
        raise UserError(f"{path}: not a usable training state (step {s['step']}, skipped {s['skipped']}, "
                        f"window {s['window_steps']})")
    for key, kinds in (("model_config", dict), ("data", (dict, type(None))), ("lora", (dict, type(None))),
                       ("best", (list, tuple, type(None))), ("data_shape", (list, type(None)))):
        if not isinstance(s.get(key), kinds):
            raise UserError(f"{path}: not a usable training state ({key!r} has the wrong type)")
    for name, tensor in s["model"].items():
        if not isinstance(tensor, torch.Tensor) or (tensor.is_floating_point() and not torch.isfinite(tensor).all()):
            raise UserError(f"{path}: tensor {name} is not a finite tensor; this state cannot be resumed")


def _check_optimizer(saved, optimizer, path):
    """AdamW's moments must have their parameters' shapes: fused AdamW does not check (it crashes)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    groups, state = saved.get("param_groups"), saved.get("state")
    if not isinstance(groups, list) or not isinstance(state, dict) or \
            not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups):
        raise UserError(f"{path}: not a usable training state (the optimizer's state is malformed)")
    ids = [i for group in groups for i in group["params"]]
    if len(ids) != len(params):
        raise UserError(f"{path}: the optimizer state holds {len(ids)} parameters, this run has {len(params)}")
    for i, p in zip(ids, params):
        moments = state.get(i, {})
        for key in ("exp_avg", "exp_avg_sq"):
            m = moments.get(key) if isinstance(moments, dict) else None
            if m is not None and (not isinstance(m, torch.Tensor) or m.shape != p.shape):
                raise UserError(f"{path}: the optimizer's {key} of parameter {i} does not have its shape "
                                f"{tuple(p.shape)}; this state cannot be resumed")


def load(t, history, path, data: dict | None = None) -> list[str]:
    """Continue Trainer `t` and its History from the state in `path`, or a one-line UserError
    (nothing half applied). `data` fingerprints this run's text, to compare with the saved one.
    Returns the notes the user must read: a resume that will not be bit-exact."""
    try:
        s = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path}: not a readable training state ({type(e).__name__})") from None
    _check_parts(s, path, t)
    diff = _differences(t, s, data or {})
    if diff:
        raise UserError(f"--resume: this command differs from the interrupted run: {', '.join(diff)}")
    if s["step"] > t.total_steps:  # the same command, and past its end: not a state save() wrote
        raise UserError(f"{path}: not a usable training state (step {s['step']} of a run of {t.total_steps} steps)")
    _check_optimizer(s["optimizer"], t.optimizer, path)  # the same run: now its moments must fit
    try:
        _apply(t, history, s)
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path}: cannot be loaded into this run ({reason[:200]})") from None
    return _inexact(t, s)


def _inexact(t, s) -> list[str]:
    """Another number of processes keeps the data order, but not the dropout masks (each process
    draws its own): the weights then differ from an uninterrupted run's. Said, not hidden."""
    saved_world = s.get("world_size", 1)
    dropout = any(v for k, v in asdict(t.model.config).items() if k.endswith("pdrop")) or \
        bool((_lora(t) or {}).get("dropout"))
    if saved_world == t.dist.world_size or not dropout:
        return []
    return [f"note: the state was saved by {saved_world} process(es), this run has {t.dist.world_size}: the same "
            f"data order and schedule, but other dropout masks, so the weights will not be bit-identical to an "
            f"uninterrupted run's (resume on {saved_world} process(es), or train with --dropout 0, for that)"]


def _apply(t, history, s):
    t.load_state_dict(s)
    history.load_state_dict(s, t.dist)


def apply_progress(t, history, s):
    """Everything of a checked state but the weights and AdamW's moments (a sharded run loads
    those from its shards: harness/sharded.py)."""
    t.load_state_dict(s, weights=False)
    history.load_state_dict(s, t.dist)

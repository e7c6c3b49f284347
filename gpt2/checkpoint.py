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
    step, ...    the loop's counters, the losses not yet logged, the log so far,
                 the best evaluation (control.py)

The data order is not stored: it is a function of (seed, epoch) (data.py,
`epoch_permutation`), so the resumed run rebuilds it and skips the batches done.

What else decides the weights must match too, or the resumed run would quietly be
another run: the learning rate and every other number of the TrainConfig, the
training text (its sha256: the same text with its lines reversed has the same shape,
not the same blocks), the model's shape and dropout, the LoRA adapters. `load`
compares them and refuses a different command in one line that lists the differences.

Three guarantees make the file trustworthy:
* It is written atomically (files.py): a kill during the write leaves the previous
  resume.pt, never half of one. With --save-total-limit N the N-1 states before it
  are kept too, as resume-<step>.pt.
* No state whose weights hold a NaN or an infinity is ever written: a "last good
  checkpoint" must be good. (The loss of step k is computed before update k, so a
  finite loss does not prove finite weights.)
* It is loaded with `weights_only=True`, so a tampered file cannot run code when it
  is unpickled, and every part is checked before it is used: a hand-made or damaged
  state is refused in one line, never half applied.
"""

import math
import os
import re
from dataclasses import asdict

import torch

from .errors import NonFiniteLoss, UserError
from .files import atomic_path, library_write

# The TrainConfig numbers a resumed run must share with the interrupted one.
MUST_MATCH = ("lr", "epochs", "max_steps", "batch_size", "seed", "weight_decay", "lr_scheduler", "warmup_steps",
              "warmup_ratio", "max_grad_norm", "precision")


def rng_state(device):
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device):
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _config(t) -> dict:
    return {k: v for k, v in asdict(t.cfg).items() if k != "progress"}


def _lora(t) -> dict | None:
    config = getattr(t.model, "lora_config", None)  # set by lora.add_lora
    return asdict(config) if config is not None else None


def check_finite_weights(t):
    """Refuse to go on (and to save) with weights that hold a NaN or an infinity."""
    for name, p in t.model.named_parameters():
        if not torch.isfinite(p).all():
            raise NonFiniteLoss(f"the weights became NaN/inf by step {t.step} ({name}; learning rate or weight "
                                f"decay too high?); stopped, {kept(t)}")


def kept(t) -> str:
    """What a run that must stop keeps: the last resume.pt, or nothing."""
    path = os.path.join(t.out, "resume.pt")
    return f"the last good checkpoint, {path}, is kept" if os.path.exists(path) else "nothing was saved"


def state_dict(t, rng_states, window_losses) -> dict:
    """The resumable state of Trainer `t`. rng_states and window_losses: one per process, by rank."""
    c = t.control
    return {
        "model": {k: v.detach().cpu() for k, v in t.model.state_dict().items()},
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict(),
        "scaler": t.scaler.state_dict(),
        "rng": rng_states, "world_size": t.dist.world_size,
        "step": t.step, "skipped": t.skipped, "lr_used": t.lr_used,
        # The unlogged steps' losses, one sum per process: added up in the same order
        # as without the interruption, the log is the same.
        "loss_sum": c.loss_sum, "window_loss": window_losses, "window_steps": c.window_steps,
        "log_history": c.log_history, "best": c.best, "bad_evals": c.bad_evals,
        "config": _config(t),
        # What else decides the weights: the data and the model (its dropout included).
        "data_shape": list(t.train_blocks.shape), "data": t.data_fingerprint,
        "model_config": asdict(t.model.config), "lora": _lora(t),
    }


def bytes_needed(t) -> int:
    """Disk space a run needs in OUT: the final model, resume.pt twice (the new one is written
    beside the old before it replaces it), best/ with --save-best, and some slack."""
    weights = sum(p.numel() * p.element_size() for p in t.model.state_dict().values())
    moments = sum(2 * p.numel() * 4 for p in t.model.parameters() if p.requires_grad)  # AdamW, fp32
    resume = weights + moments
    return weights * (1 + t.cfg.save_best) + 2 * resume + 16 * 2**20


def save(t):
    """Write OUT/resume.pt for Trainer `t`, atomically; keep the states before it as asked.

    Under torchrun rank 0 writes it alone: weights, optimizer and schedule are the
    same on every process. The random-number states and the losses not yet logged
    differ, so they are gathered first, by every process (a collective: every process
    calls save); the barrier then keeps the others from running ahead of a file that
    is not written yet.
    """
    check_finite_weights(t)
    parts = t.dist.all_gather_object((rng_state(t.device), t.control.window_loss.item()))
    if t.dist.is_main:
        os.makedirs(t.out, exist_ok=True)
        path = os.path.join(t.out, "resume.pt")
        if t.cfg.save_total_limit > 1 and t.control.saved_step is not None and os.path.exists(path):
            _keep_previous(path, t.control.saved_step, t.cfg.save_total_limit)
        with atomic_path(path) as tmp, library_write(path):
            torch.save(state_dict(t, [rng for rng, _ in parts], [w for _, w in parts]), tmp)
    t.control.saved_step = t.step
    t.dist.barrier()


def _keep_previous(path, step, limit):
    """Before resume.pt (the state of `step`) is replaced: keep it as resume-<step>.pt, and
    of those only the newest limit - 1."""
    directory = os.path.dirname(path)
    try:
        os.link(path, os.path.join(directory, f"resume-{step}.pt"))  # a second name for the same file:
    except FileExistsError:                                          # replacing resume.pt leaves it whole
        pass
    except OSError:  # a filesystem without hard links: a copy
        with atomic_path(os.path.join(directory, f"resume-{step}.pt")) as tmp, open(path, "rb") as src:
            with open(tmp, "wb") as dst:
                dst.write(src.read())
    steps = sorted(int(m[1]) for name in os.listdir(directory) if (m := re.fullmatch(r"resume-(\d+)\.pt", name)))
    for old in steps[:max(0, len(steps) - (limit - 1))]:
        os.remove(os.path.join(directory, f"resume-{old}.pt"))


def _differences(t, s) -> list[str]:
    """What in this command differs from the run saved in state `s`."""
    mine, saved = _config(t), s["config"]
    diff = [f"{k} {mine[k]!r} (saved: {saved.get(k)!r})" for k in MUST_MATCH if saved.get(k, mine[k]) != mine[k]]
    if s.get("data_shape", list(t.train_blocks.shape)) != list(t.train_blocks.shape):
        diff.append(f"training blocks {list(t.train_blocks.shape)} (saved: {s['data_shape']})")
    data = s.get("data") or {}
    for which in ("train", "validation"):
        theirs, ours = data.get(f"{which}_sha256"), t.data_fingerprint.get(f"{which}_sha256")
        if theirs and ours and theirs != ours:
            diff.append(f"the {which} text {t.data_fingerprint.get(which + '_source')} changed since the "
                        f"interrupted run (sha256 {ours[:12]}..., saved: {theirs[:12]}...)")
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


def load(t, path):
    """Continue Trainer `t` from the state in `path`, or a one-line UserError (nothing half applied)."""
    try:
        s = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path}: not a readable training state ({type(e).__name__})") from None
    _check_parts(s, path, t)
    diff = _differences(t, s)
    if diff:
        raise UserError(f"--resume: this command differs from the interrupted run: {', '.join(diff)}")
    if s["step"] > t.total_steps:  # the same command, and past its end: not a state save() wrote
        raise UserError(f"{path}: not a usable training state (step {s['step']} of a run of {t.total_steps} steps)")
    _check_optimizer(s["optimizer"], t.optimizer, path)  # the same run: now its moments must fit
    try:
        _apply(t, s)
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path}: cannot be loaded into this run ({reason[:200]})") from None


def _apply(t, s):
    t.model.load_state_dict(s["model"])
    t.optimizer.load_state_dict(s["optimizer"])
    t.scheduler.load_state_dict(s["scheduler"])
    t.scaler.load_state_dict(s["scaler"])
    rngs = s["rng"] if isinstance(s["rng"], list) else [s["rng"]]
    if len(rngs) == t.dist.world_size:
        set_rng_state(rngs[t.dist.rank], t.device)
    # else: another number of processes, so other dropout streams anyway; each
    # process keeps the generator seeded by train.py (seed + rank).
    t.step, t.skipped, t.lr_used = s["step"], s["skipped"], s["lr_used"]
    c = t.control
    windows = s["window_loss"] if isinstance(s["window_loss"], list) else [s["window_loss"]]
    if len(windows) == t.dist.world_size:
        c.window_loss.fill_(windows[t.dist.rank])  # each process its own sum, as before
    else:  # the whole sum goes to one process; the all-reduce at the next log adds the rest
        c.window_loss.fill_(sum(windows) if t.dist.is_main else 0.0)
    c.loss_sum, c.window_steps, c.saved_step = s["loss_sum"], s["window_steps"], s["step"]
    c.log_history, c.bad_evals = s["log_history"], s["bad_evals"]
    c.best = tuple(s["best"]) if s.get("best") else None
    c.logger.rewrite(c.log_history)  # log.jsonl: the lines logged after this state are gone

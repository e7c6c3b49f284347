"""The learning-rate schedules: one table, each schedule a function and its parameters.

A schedule says which share of the peak rate `lr` each optimizer step uses. With W
warm-up steps out of N, at step s (counted from 0) the rate is lr x factor(s):

    linear                 s/W while warming up, then straight down to 0 at step N
    cosine                 s/W, then (1 + cos(2 pi x num_cycles x p)) / 2 with
                           p = (s - W) / (N - W): with num_cycles 0.5, half a cosine wave,
                           slow to leave the peak, fast in the middle, slow again near 0
    cosine_with_restarts   s/W, then num_cycles half-waves of the cosine, each starting
                           again from the peak ("hard" restarts)
    cosine_with_min_lr     as cosine, but down to min_lr (or min_lr_rate x lr), not 0
    polynomial             s/W, then from lr down to lr_end as (1 - p)^power
    inverse_sqrt           s/W, then 1 / sqrt((s + timescale - W) / timescale)
    constant_with_warmup   s/W, then 1 for ever
    constant               1 from the first step (this one ignores the warm-up, as the
                           Trainer's does)

A worked example: lr 1e-4, N = 10 steps, W = 2 warm-up steps, linear, whose factor is
(N - s) / (N - W) from step W on (tests/test_run_clm.py checks these numbers):

    step s   0   1      2      3        4       5        6      7        8       9
    factor   0   1/2    1      7/8      6/8     5/8      4/8    3/8      2/8     1/8
    rate     0   5e-05  1e-04  8.75e-05 7.5e-05 6.25e-05 5e-05  3.75e-05 2.5e-05 1.25e-05

With a warm-up, step 0 runs at rate 0: it changes no weight, only AdamW's averages (as
the Trainer's schedule does). The last step runs at lr x 1/8, not 0: the rate 0 would
be step N's, which never runs.

Why a schedule at all: large steps early move the pretrained model towards the new
text, small steps late let it settle; a decaying schedule ends on small steps, a
constant one does not. The warm-up protects the pretrained weights from the first
updates of a fresh optimizer, whose moment estimates rest on a handful of gradients.
--warmup_ratio R means W = ceil(R x N). The rate logged with each step is the one
that step used.

Each function below is one schedule: `factor(step, warmup, total, lr, **parameters)`,
and its keyword-only parameters with their defaults ARE the schedule's parameters
(run_clm's `--lr_scheduler_kwargs '{"num_cycles": 2}'`). `SCHEDULES` maps the names
the Trainer uses to them; `make_schedule` checks the parameters and builds torch's
LambdaLR. The numbers are those of transformers' `get_scheduler`, rate for rate
(tests/test_run_clm.py, through the Trainer). Adding a schedule: docs/extending.md.
"""

import inspect
import math

import torch

from .errors import UserError


def _warming_up(step, warmup):
    return step < warmup


def linear(step, warmup, total, lr):
    if _warming_up(step, warmup):
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def cosine(step, warmup, total, lr, *, num_cycles=0.5):
    if _warming_up(step, warmup):
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * progress)))


def cosine_with_restarts(step, warmup, total, lr, *, num_cycles=1):
    if _warming_up(step, warmup):
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    if progress >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((num_cycles * progress) % 1.0))))


def cosine_with_min_lr(step, warmup, total, lr, *, num_cycles=0.5, min_lr=None, min_lr_rate=None):
    if _warming_up(step, warmup):
        return step / max(1, warmup)
    floor = min_lr / lr if min_lr is not None else min_lr_rate
    progress = (step - warmup) / max(1, total - warmup)
    factor = 0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * progress))
    return max(0.0, factor * (1 - floor) + floor)


def polynomial(step, warmup, total, lr, *, lr_end=1e-7, power=1.0):
    if _warming_up(step, warmup):
        return step / max(1, warmup)
    if step > total:
        return lr_end / lr
    remaining = 1 - (step - warmup) / (total - warmup)
    return ((lr - lr_end) * remaining ** power + lr_end) / lr


def inverse_sqrt(step, warmup, total, lr, *, timescale=None):
    if _warming_up(step, warmup):
        return step / max(1, warmup)
    timescale = timescale or warmup or 10_000  # the Trainer's default
    return 1.0 / math.sqrt((step + timescale - warmup) / timescale)


def constant_with_warmup(step, warmup, total, lr):
    if _warming_up(step, warmup):
        return step / max(1, warmup)
    return 1.0


def constant(step, warmup, total, lr):
    return 1.0


SCHEDULES = {f.__name__: f for f in (linear, cosine, cosine_with_restarts, cosine_with_min_lr, polynomial,
                                      inverse_sqrt, constant_with_warmup, constant)}
# The Trainer's other kinds, and why they are not here.
NOT_HERE = {
    "reduce_lr_on_plateau": "it steps on evaluations, not on optimizer steps",
    "warmup_stable_decay": "not implemented here; cosine_with_min_lr or polynomial come closest",
    "cosine_warmup_with_min_lr": "not implemented here; use cosine_with_min_lr",
    "greedy": "not implemented here",
}


def parameters(kind) -> dict:
    """A schedule's parameters and their defaults: its function's keyword-only arguments."""
    signature = inspect.signature(SCHEDULES[kind])
    return {name: p.default for name, p in signature.parameters.items() if p.kind is p.KEYWORD_ONLY}


def check_name(kind) -> None:
    if kind not in SCHEDULES:
        why = f" ({NOT_HERE[kind]})" if kind in NOT_HERE else ""
        raise UserError(f"unknown learning-rate schedule {kind!r}{why}; the schedules are {', '.join(SCHEDULES)}")


def check(kind, kwargs, lr=None) -> None:
    """A one-line UserError for an unknown schedule or parameter, or a value it cannot use."""
    check_name(kind)
    known = parameters(kind)
    for name, value in (kwargs or {}).items():
        if name not in known:
            takes = ", ".join(known) if known else "no parameters"
            raise UserError(f"--lr_scheduler_kwargs: the {kind} schedule has no parameter {name!r} (it takes {takes})")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            raise UserError(f"--lr_scheduler_kwargs: {name} must be a finite number, got {value!r}")
    kwargs = {**known, **(kwargs or {})}
    if kind == "cosine_with_min_lr" and (kwargs["min_lr"] is None) == (kwargs["min_lr_rate"] is None):
        raise UserError("--lr_scheduler_kwargs: the cosine_with_min_lr schedule needs one of min_lr or min_lr_rate")
    if kind == "polynomial" and lr is not None and not lr > kwargs["lr_end"]:
        raise UserError(f"--lr_scheduler_kwargs: polynomial's lr_end {kwargs['lr_end']:g} must be below the "
                        f"learning rate {lr:g}")
    if kind == "inverse_sqrt" and kwargs["timescale"] is not None and kwargs["timescale"] <= 0:
        raise UserError("--lr_scheduler_kwargs: inverse_sqrt's timescale must be positive")


def make_schedule(kind, optimizer, warmup_steps, total_steps, kwargs=None):
    """torch's LambdaLR: the optimizer's rate at step s is lr x factor(s), the named schedule's."""
    lr = optimizer.defaults["lr"]
    check(kind, kwargs, lr)
    function, kwargs = SCHEDULES[kind], dict(kwargs or {})
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: function(step, warmup_steps, total_steps, lr, **kwargs))

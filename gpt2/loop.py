"""The training loop, and every decision taken between two optimizer steps.

`train` below is the whole run, top to bottom:

    while steps remain:
        one optimizer step                      (trainer.py: the step itself)
        --- between two steps ---
        keep the loss, on the device            (no sync: see "Why on the device")
        NaN check                               every 10 steps, and before a log or a save
        log                                     every --log-every steps
        evaluate                                every --eval-every steps: best model, --patience
        save a resumable state                  every --save-every steps (checkpoint.py)
        stop?                                   early stopping, or a signal (Ctrl-C, SIGTERM)
                                                (on the CPU, a signal during a forward pass
                                                drops that step: see `train`)
    settle: the last losses, the best weights back, the train metrics

It returns one stop reason:

    "completed"       the steps ran out (--epochs / --max-steps)
    "early_stopping"  --patience evaluations in a row without a better score
    "interrupted"     a signal asked the run to stop; a resumable state was saved

A NaN is not a reason but an error (NonFiniteLoss): the run cannot go on. So is a
gradient norm that is NaN/inf on every step (bf16, fp32: clipping then scales every
gradient to 0, and nothing is ever learnt), as fp16's overflows that never stop.

The loop reaches the world outside it (the terminal, the run directory, signals)
only through `Hooks`: print and log a line, save a state, save or load the best
weights, ask whether a stop was requested. The base class prints and saves nothing,
so a notebook or a test trains with `train(trainer, val_blocks, Hooks())`;
train.py passes harness/hooks.py's RunHooks, which write the run directory.

Why on the device: reading a GPU number (`.item()`) makes the CPU wait until the GPU
has finished everything queued, which costs throughput. So the losses are summed
on the device and read once per log line, and the NaN flag once every 10 steps.

Under torchrun (distributed.py; skip this on a first reading) every process must
take the same decision at the same step, or those still going would wait for ever
in the next all-reduce. A signal reaches the processes at slightly different
moments, and a NaN may appear on one process only, so both are put to a vote
(`dist.any`) that all processes take together.
"""

import time

import torch
from tqdm import tqdm

from .checkpoint import rng_state, set_rng_state
from .errors import NonFiniteLoss
from .evaluation import METRICS, is_better

REASONS = ("completed", "early_stopping", "interrupted")
FP16_SKIPS_IN_A_ROW = 25  # the scaler halved 65536 down to 0.002: the model has diverged


class Hooks:
    """How the loop reaches the outside world. This base prints log lines and keeps nothing."""

    def print(self, text: str) -> None:
        tqdm.write(text)  # above a progress bar, if there is one

    def log(self, entry: dict) -> None:
        """A log line: the losses and rates of a step, or an evaluation ("step" included)."""
        self.print(str({k: v for k, v in entry.items() if k != "step"}))

    def save_state(self, trainer, history) -> None:
        """A resumable state (checkpoint.py), e.g. OUT/resume.pt. Called by every process."""

    def save_best(self, trainer) -> None:
        """The weights of the best evaluation so far (every process: under --fsdp they are gathered)."""

    def load_best(self, trainer) -> None:
        """Put the best weights back into trainer.model (every process)."""

    def stop_requested(self) -> bool:
        """Did a signal ask the run to stop (harness/signals.py)?"""
        return False

    def after_step(self, trainer, loss=None) -> None:
        """After each step, for a progress display; `loss`: this step's, a tensor on the device."""


class History:
    """What the run has recorded so far: part of the resumable state (checkpoint.py)."""

    def __init__(self, device):
        self.log = []          # every log line and evaluation, as dicts with their step
        self.loss_sum = 0.0    # sum of the step losses logged so far, for train_loss
        # The step losses since the last log, summed on the device; read at the next log.
        self.window_loss = torch.zeros((), device=device)
        self.window_steps = 0
        self.non_finite = torch.zeros((), dtype=torch.bool, device=device)  # any NaN/inf loss so far
        self.best = None       # (score, step) of the best evaluation
        self.bad_evals = 0     # evaluations in a row without improvement, for --patience
        # Seconds of training before this session (a resumed run), and when this one began:
        # the whole run's time. None: resumed from a state that did not record it.
        self.earlier_seconds, self.session_start = 0.0, time.time()

    def trained_seconds(self) -> float | None:
        """The training time of every session so far (kept in the state)."""
        return None if self.earlier_seconds is None else self.earlier_seconds + time.time() - self.session_start

    def add_loss(self, loss, check_finite: bool) -> None:
        self.window_loss += loss
        self.window_steps += 1
        if check_finite:
            self.non_finite |= ~torch.isfinite(loss)

    def state_dict(self, dist) -> dict:
        """What a resumed run needs of the history. Under torchrun, a collective: the losses
        not yet logged are one sum per process, gathered by rank; added up in the same order
        as without the interruption, the log is the same."""
        return {"loss_sum": self.loss_sum, "window_loss": dist.all_gather_object(self.window_loss.item()),
                "window_steps": self.window_steps, "log_history": self.log, "best": self.best,
                "bad_evals": self.bad_evals, "train_seconds": self.trained_seconds()}

    def load_state_dict(self, s: dict, dist) -> None:
        windows = s["window_loss"] if isinstance(s["window_loss"], list) else [s["window_loss"]]
        if len(windows) == dist.world_size:
            self.window_loss.fill_(windows[dist.rank])  # each process its own sum, as before
        else:  # the whole sum goes to one process; the all-reduce at the next log adds the rest
            self.window_loss.fill_(sum(windows) if dist.is_main else 0.0)
        self.loss_sum, self.window_steps = s["loss_sum"], s["window_steps"]
        self.log, self.bad_evals = s["log_history"], s["bad_evals"]
        self.best = tuple(s["best"]) if s.get("best") else None
        seconds = s.get("train_seconds")  # absent in states written before it was kept
        self.earlier_seconds = float(seconds) if isinstance(seconds, (int, float)) and \
            not isinstance(seconds, bool) else None

    def flush_window(self, dist) -> float:
        """Mean loss of the steps since the last log (over all processes); adds it to loss_sum."""
        total = dist.all_reduce_sum(self.window_loss.clone()).item()  # a sync, once per log
        mean = total / self.window_steps
        self.loss_sum += total
        self.window_loss.zero_()
        self.window_steps = 0
        return mean


def due(strategy, every, trainer) -> bool:
    """Is an evaluation (or a save) due after this step? strategy: no, steps, epoch (None: steps)."""
    if strategy == "epoch":
        return trainer.step % trainer.steps_per_epoch == 0
    return strategy != "no" and every > 0 and trainer.step % every == 0


def train(trainer, val_blocks, hooks: Hooks, history: History | None = None):
    """Optimizer steps until the end, an early stop or a signal: (stop reason, train metrics)."""
    t, cfg = trainer, trainer.cfg
    history = history or History(t.device)
    hooks.print(t.describe())
    start_step, t0, reason = t.step, time.time(), None
    history.session_start = t0
    # On the CPU a step of GPT-2 124M takes tens of seconds, and a scheduler's grace after
    # SIGTERM is about 30: a signal that arrives during a forward pass drops the step
    # (nothing has changed yet) instead of waiting for its backward. The random state from
    # before the step is put back, so the resumed run draws the same dropout masks. Not
    # under torchrun (every process must join each step's all-reduce), nor on a GPU
    # (steps are short there). Signals: skip this on a first reading.
    can_drop = t.device.type == "cpu" and not t.dist.enabled
    while t.step < t.total_steps and reason is None:
        rng = rng_state(t.device) if can_drop else None
        result = t.optimizer_step(t.step_micro_batches(t.step), stop=hooks.stop_requested if can_drop else None)
        if result is None:  # dropped: a signal came during a forward pass
            set_rng_state(rng, t.device)
            reason = "interrupted"
            break
        loss, grad_norm = result  # (the step counter moved on: t.step is the steps done)
        hooks.after_step(t, loss)

        # --- between two steps -------------------------------------------------------
        history.add_loss(loss, check_finite=cfg.precision != "fp16")  # fp16: the scaler's business
        at_log = t.step % cfg.log_every == 0 or (cfg.log_first_step and t.step == 1)
        if at_log or t.step % 10 == 0:
            check_finite(t, history)
        if at_log:
            log(hooks, history, t, {"loss": history.flush_window(t.dist), "grad_norm": grad_norm.item(),
                                    "learning_rate": t.lr_used, "epoch": t.epoch})
        # As the Trainer (transformers 5): evaluating by steps also evaluates the last step,
        # so that the final weights are a candidate for the best model.
        last = cfg.eval_strategy in ("steps", None) and cfg.eval_every > 0 and t.step == t.total_steps
        if val_blocks is not None and (due(cfg.eval_strategy, cfg.eval_every, t) or last):
            reason = evaluate(t, val_blocks, hooks, history)
        if due(cfg.save_strategy, cfg.save_every, t):
            save(t, hooks, history)
        if reason is None and t.dist.any(hooks.stop_requested()):
            reason = "interrupted"

    reason = settle(t, hooks, history, reason or "completed")
    metrics = t.metrics(history.loss_sum, t.step - start_step, time.time() - t0)
    if start_step > 0 and history.earlier_seconds is not None:  # resumed: train_runtime is this session's
        metrics["train_runtime_total"] = history.trained_seconds()
    return reason, metrics


def settle(t, hooks, history, reason) -> str:
    """After the loop: save an interrupted run, or count the last losses and restore the best weights."""
    if reason == "interrupted" and t.step < t.total_steps:
        save(t, hooks, history)  # the unlogged losses go into the state, process by process
        return reason
    if history.window_steps:
        history.flush_window(t.dist)  # steps since the last log (early stopping): count them too
    check_finite(t, history)
    check_finite_weights(t)  # the last update came after the last loss
    if t.cfg.save_best and history.best is not None:
        t.dist.barrier()  # rank 0 wrote the best weights: the others wait for them
        hooks.load_best(t)
        hooks.print(f"restored the best checkpoint ({t.cfg.best_metric} {history.best[0]:.4f} "
                    f"at step {history.best[1]})")
    return "completed" if reason == "interrupted" else reason  # a signal after the last step changes nothing


def log(hooks, history, t, entry):
    history.log.append({**entry, "step": t.step})
    hooks.log(history.log[-1])


def save(t, hooks, history):
    """A resumable state, never one with non-finite weights (a "last good state" must be good)."""
    check_finite(t, history)
    check_finite_weights(t)
    hooks.save_state(t, history)


def evaluate(t, val_blocks, hooks, history):
    """An evaluation during training: log it, keep the best model, count towards --patience."""
    cfg = t.cfg
    m = t.evaluate(val_blocks)
    log(hooks, history, t, {**{name: m[name] for name, metric in METRICS.items() if metric.logged}, "epoch": t.epoch})
    score = m[cfg.best_metric]
    if is_better(score, history.best[0] if history.best else None, cfg.best_metric):
        history.best, history.bad_evals = (score, t.step), 0
        if cfg.save_best:
            check_finite_weights(t)  # a weight the evaluation never reads may still be inf
            hooks.save_best(t)  # every process (--fsdp gathers the weights); rank 0 writes
        return None
    history.bad_evals += 1
    if cfg.patience and history.bad_evals >= cfg.patience:
        hooks.print(f"early stopping at step {t.step}: {cfg.best_metric} has not improved for "
                    f"{history.bad_evals} evaluations (best {history.best[0]:.4f} at step {history.best[1]})")
        return "early_stopping"
    return None


def check_finite(t, history):
    """Raise NonFiniteLoss if any process saw a NaN/inf loss (a vote), or fp16 kept overflowing."""
    non_finite = t.dist.any(bool(history.non_finite))
    # Non-finite gradients on every step so far (or FP16_SKIPS_IN_A_ROW in a row): nothing is learnt.
    bad_grads = int(t.non_finite_grads_in_a_row)
    every_step = bad_grads >= min(FP16_SKIPS_IN_A_ROW, max(t.step, 1))
    if non_finite or t.skipped_in_a_row >= FP16_SKIPS_IN_A_ROW or every_step:
        what = ("the training loss became NaN/inf" if non_finite
                else f"the gradient norm was NaN/inf on {bad_grads} steps in a row" if bad_grads
                else f"fp16 gradients overflowed {FP16_SKIPS_IN_A_ROW} steps in a row")
        raise NonFiniteLoss(f"{what} by step {t.step} (learning rate too high?); stopped")


def check_finite_weights(t):
    """Refuse to go on (and to save) with weights that hold a NaN or an infinity.

    (The loss of step k is computed before update k, so a finite loss does not prove
    finite weights.)
    """
    for name, p in t.model.named_parameters():
        if not torch.isfinite(p).all():
            raise NonFiniteLoss(f"the weights became NaN/inf by step {t.step} ({name}; learning rate or weight "
                                f"decay too high?); stopped")

"""The fine-tuning loop: AdamW, mixed precision, accumulation, clipping, the schedule.

One optimizer step, the heart of it all, is `Trainer.optimizer_step`:

    for each micro-batch of the step:            # gradient accumulation
        with autocast:  loss = model(x, labels=x)           # forward, 16-bit matmuls
        scaler.scale(loss * share_of_tokens).backward()     # grads add up in .grad
    scaler.unscale_(optimizer)                   # back to true gradient values
    clip_grad_norm_(params, max_grad_norm)       # tame rare huge gradients
    scaler.step(optimizer); scaler.update()      # AdamW step, unless fp16 overflowed
                                                 # (precision.scaler_step)
    scheduler.step()                             # the learning-rate schedule
    optimizer.zero_grad()

Why accumulate: a GPU that holds only 2 sequences of 1024 tokens can still train with
a batch of 16 by running 8 micro-batches and adding their gradients before one step.
Each micro-batch's loss (a mean over its own tokens) is weighted by its share of the
step's predicted tokens, so the summed gradient is exactly the gradient of the mean
loss over all tokens of the step: the same update as one big batch. A worked example:
7 blocks, micro-batch 2, accumulation 4 make one step of micro-batches of 2, 2, 2 and
1 blocks, weighted 2/7, 2/7, 2/7 and 1/7 (every block predicts the same T-1 tokens),
not 1/4 each: the lone last block must not count double.

Why clip, and why after `unscale_`: `clip_grad_norm_` treats all the gradients of the
model as one long vector g and computes its L2 norm, |g| = sqrt(sum of every g_i^2)
over every parameter (logged as grad_norm). If |g| > max_grad_norm (1.0), every
gradient is multiplied by max_grad_norm / |g|: the direction stays, the step's size
is capped, and one freak batch cannot throw the weights far. Under fp16 the gradients
in .grad are still multiplied by the scaler's factor S (65,536 or so) until
`unscale_` divides them back: clipped before that, their norm would be S times too
large and every step would be clipped to nothing. So: unscale, then clip.

Why AdamW: Adam keeps, per parameter, running averages of the gradient g and of its
square, m = beta1 m + (1 - beta1) g and v = beta2 v + (1 - beta2) g^2. With the betas
(0.9, 0.999), m averages over roughly the last 1 / (1 - beta1) = 10 steps and v over
the last ~1,000. Both start at 0, so at first they are too small (after one step,
m = 0.1 g). Dividing by 1 - beta^t at step t (from 1: 0.1 for m at t = 1, tending to
1 later) undoes exactly that start, and the step is:

    m_hat = m / (1 - beta1^t)        v_hat = v / (1 - beta2^t)
    w -= lr x m_hat / (sqrt(v_hat) + eps)           eps = 1e-8

m_hat / sqrt(v_hat) is about +-1 for a steady gradient whatever its scale, so every
parameter moves at a similar pace (up to ~lr per step); eps keeps the division finite
where v_hat is ~0. betas and eps are run_clm's defaults (--adam_beta1, --adam_beta2,
--adam_epsilon change them, as the Trainer's flags do).

"W" is decoupled weight decay (Loshchilov & Hutter): each step also shrinks the
weights directly, w -= lr x weight_decay x w, instead of adding weight_decay x w to
the gradient. Mixed into the gradient, the decay would be divided by sqrt(v) like
everything else, so weights with large gradients would hardly decay at all. Which parameters decay (`param_groups`): the matrices (and the
embeddings) only. A LayerNorm gain's natural value is 1 and pulling it towards 0
would shrink the signal it scales; a bias shifts rather than scales, and there are
too few of them to overfit with. (As the Hugging Face Trainer: no decay on biases and
LayerNorm weights.) The tied token embedding / LM head is one parameter: decayed once.

The learning-rate schedule (`--lr_scheduler_type`, as the Trainer's): which share of
lr each step uses, warm-up included. The schedules, with a worked example, are in
schedules.py; the Trainer builds the named one with its parameters.

fp16's skipped steps: when the scaled gradients overflow, the scaler skips the AdamW
step (precision.py). The schedule waits too (no step was taken), but the skipped step
still counts among the N steps of the run: after k skipped steps the run ends with
the schedule k steps short of its end, the last rate slightly above 0.

Several processes (torchrun): `world_size`, `no_sync` and the `rank::world` slices
below split each step's micro-batches between the processes; skip them on a first
reading, distributed.py explains them. With one process they change nothing. `--fsdp`
(and `--offload`) shard the model instead of copying it: sharding.py.

What happens between two steps (logging, the NaN check, evaluation, checkpoints,
signals) is the loop, in loop.py; the resumable state is checkpoint.py.
How fast: the metrics' train_tokens_per_second; what share of the GPU's peak that is
(MFU, and the FLOPs per token it counts) is explained in benchmarks/bench.py's docstring.
"""

import contextlib
import math
import resource
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from . import sharding
from .checkpoint import rng_state, set_rng_state
from .data import epoch_permutation, to_batch
from .distributed import Dist
from .evaluation import evaluate_shared
from .precision import autocast, make_scaler, scaler_step
from .schedules import make_schedule
from .settings import TrainConfig  # noqa: F401  (declared in settings.py; trainer is where it is used)


@dataclass
class MicroBatch:
    indices: np.ndarray  # which blocks (rows of train_blocks)
    weight: float        # its share of the step's predicted tokens (the module docstring's 2/7 example)


def param_groups(model, weight_decay):
    """Decay 2-D weight matrices (and embeddings); never biases or LayerNorm gains (see the module docstring).

    Frozen parameters (LoRA) are left out: AdamW keeps no moments for them.
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass(frozen=True)
class StepCounts:
    """How a run's blocks become optimizer steps: the one place this arithmetic is done.

    Micro-batches are chunks of batch_size blocks of the epoch's permutation; an
    optimizer step takes grad_accum of them on every process. A short last step
    (fewer micro-batches) still counts as a step, as in the Trainer.
    """
    micro_per_epoch: int   # micro-batches in one epoch
    micro_per_step: int    # micro-batches per optimizer step, all processes together
    steps_per_epoch: int
    total_steps: int       # --max-steps, else epochs x steps_per_epoch
    warmup_steps: int      # --warmup-steps, else ceil(--warmup-ratio x total_steps), as the Trainer


def step_counts(n_blocks, cfg: TrainConfig, world_size=1) -> StepCounts:
    micro_per_epoch = math.ceil(n_blocks / cfg.batch_size)
    micro_per_step = cfg.grad_accum * world_size
    steps_per_epoch = math.ceil(micro_per_epoch / micro_per_step)
    total = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)
    warmup = cfg.warmup_steps or math.ceil(cfg.warmup_ratio * total)
    return StepCounts(micro_per_epoch, micro_per_step, steps_per_epoch, total, warmup)


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class Trainer:
    """The model, its optimizer, schedule and scaler, the data order, and where the run stands."""

    def __init__(self, model, train_blocks, cfg: TrainConfig, device, dist: Dist | None = None):
        dist = dist or Dist()
        # (--offload: the weights stay in host memory; sharding moves each unit through the GPU.)
        self.model = model if cfg.offload else model.to(device)
        # (N, T), kept in the ids' small dtype (uint16 for GPT-2: a quarter of int64);
        # each micro-batch is converted on its own by to_batch.
        self.train_blocks = np.asarray(train_blocks)
        self.cfg, self.device, self.dist = cfg, device, dist

        # Model as the steps see it: maybe compiled, maybe wrapped for several processes.
        self.step_model = torch.compile(model) if cfg.compile else model
        if cfg.fsdp:  # sharding.py: each process keeps 1/N of the weights, gradients and moments
            self.step_model = sharding.shard(model, device, cfg.precision, cfg.offload)
        elif dist.enabled:  # distributed.py: gradients averaged over the processes in backward
            self.step_model = DDP(self.step_model, device_ids=[device] if device.type == "cuda" else None)

        self.n_train = len(self.train_blocks)
        counts = step_counts(self.n_train, cfg, dist.world_size)
        self.micro_per_epoch, self.micro_per_step = counts.micro_per_epoch, counts.micro_per_step
        self.steps_per_epoch, self.total_steps = counts.steps_per_epoch, counts.total_steps
        self.warmup_steps = counts.warmup_steps
        # Predicted tokens (T-1 per block: loss.py) of a full step; a short last step has fewer.
        self.tokens_per_step = self.micro_per_step * cfg.batch_size * (self.train_blocks.shape[1] - 1)

        self.optimizer = torch.optim.AdamW(
            param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=cfg.adam_epsilon,
            # One kernel for all parameters instead of several passes per tensor; on the CPU
            # too (torch >= 2.4): 1.9x the default loop for GPT-2 124M (benchmarks/lesson_numbers.py adamw).
            fused=device.type in ("cuda", "cpu"),
        )
        self.scheduler = make_schedule(cfg.lr_scheduler, self.optimizer, self.warmup_steps, self.total_steps,
                                       cfg.lr_scheduler_kwargs)
        self.scaler = make_scaler(device, cfg.precision)

        self.step = 0             # optimizer steps taken (or skipped by the fp16 scaler); only
                                  # optimizer_step and load_state_dict change it
        self.skipped = 0          # steps the scaler skipped because gradients overflowed
        self.skipped_in_a_row = 0
        # Steps in a row whose gradient norm was inf/NaN (bf16, fp32: no scaler to skip them; the
        # clipping then scales every gradient to 0 or NaN). On the device: read with the NaN check.
        self.non_finite_grads_in_a_row = torch.zeros((), dtype=torch.long, device=device)
        self.lr_used = cfg.lr     # the rate of the last step, for the log
        self._perm = (None, None)  # (epoch, its permutation of the blocks)

    @property
    def epoch(self) -> float:
        return round(self.step / self.steps_per_epoch, 2)

    # --- data order ----------------------------------------------------------------
    def step_micro_batches(self, step) -> list[MicroBatch]:
        """The micro-batches this process runs at `step`, each weighted by its share of the
        step's predicted tokens (all micro-batches of all processes)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if self._perm[0] != epoch:  # a new epoch: a new order, a function of (seed, epoch)
            self._perm = (epoch, epoch_permutation(self.n_train, self.cfg.seed, epoch))
        perm = self._perm[1]
        bs = self.cfg.batch_size
        first = k * self.micro_per_step
        chunks = [perm[i * bs:(i + 1) * bs] for i in range(first, min(first + self.micro_per_step, self.micro_per_epoch))]
        predicted = self.train_blocks.shape[1] - 1  # T-1 predictions per block
        step_tokens = sum(len(c) for c in chunks) * predicted
        # Round-robin: process r takes chunks r, r + world, ... so that N processes x
        # accumulation A see the same samples as 1 process x accumulation N*A.
        mine = [MicroBatch(c, len(c) * predicted / step_tokens) for c in chunks[self.dist.rank::self.dist.world_size]]
        if not mine:  # a short last step can leave a process without data (distributed.py):
            mine = [MicroBatch(perm[:1], 0.0)]  # it still joins the gradient all-reduce, with zero weight
        return mine

    def predicted_tokens(self, first, last) -> int:
        """The tokens predicted (T-1 per block) by steps first .. last-1, all processes: a short
        last step of an epoch counts its own blocks, not a full step's."""
        per_step = self.micro_per_step * self.cfg.batch_size
        blocks = sum(min(per_step, self.n_train - (s % self.steps_per_epoch) * per_step) for s in range(first, last))
        return blocks * (self.train_blocks.shape[1] - 1)

    # --- one optimizer step: accumulation, scaler, clipping, AdamW, schedule ---------
    def optimizer_step(self, micro_batches: list[MicroBatch], stop=None):
        """One optimizer step over these micro-batches; (the step's mean loss, grad norm), on the device.

        `stop`, if given, is asked after each forward pass: if it says yes, the step is
        dropped before any weight has changed, and None is returned (loop.py: a signal need
        not wait for a long backward on the CPU).
        """
        model, cfg = self.step_model, self.cfg
        model.train()
        step_loss = torch.zeros((), device=self.device)
        for i, mb in enumerate(micro_batches):
            x = to_batch(self.train_blocks, mb.indices, self.device)  # (b, T)
            # (torchrun, skip on a first reading: DDP averages gradients over the processes; multiply
            # back by world_size so that the sum over all micro-batches of all processes is
            # the mean over the step's tokens. And all-reduce once per step, at its end.)
            sync = i == len(micro_batches) - 1
            with (self._accumulating(model) if not sync else contextlib.nullcontext()):
                with autocast(self.device, cfg.precision):
                    # The mean cross-entropy of this micro-batch. (Not `_, loss = ...`: a
                    # name holding the (b, T, vocab) logits would keep them alive through
                    # backward, hundreds of MB that autograd itself does not need.)
                    loss = model(x, labels=x)[1]
                if stop is not None and stop():
                    self.optimizer.zero_grad(set_to_none=True)  # this step's partial gradients
                    return None
                self.scaler.scale(loss * mb.weight * self.dist.world_size).backward()
            step_loss += loss.detach() * mb.weight  # stays on the device: no sync here

        self.scaler.unscale_(self.optimizer)  # grads / scale: now the true gradients
        # The L2 norm of all gradients as one vector, before clipping (logged as grad_norm).
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        grad_norm = sharding.global_norm(grad_norm)  # (--fsdp: a norm across the shards, sharding.py)
        if cfg.precision != "fp16":  # fp16's overflows are the scaler's (skipped steps, below)
            bad = self.non_finite_grads_in_a_row
            self.non_finite_grads_in_a_row = torch.where(torch.isfinite(grad_norm), torch.zeros_like(bad), bad + 1)
        self.lr_used = self.scheduler.get_last_lr()[0]  # logged: the rate this step used
        if scaler_step(self.scaler, self.optimizer):  # AdamW, unless fp16's gradients overflowed
            self.scheduler.step()
            self.skipped_in_a_row = 0
        else:  # no step was taken, so the schedule waits too
            self.skipped += 1
            self.skipped_in_a_row += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return step_loss, grad_norm.detach()

    def _accumulating(self, model):
        """Around the backward of a micro-step before the last: gradients add up, nothing is sent."""
        if sharding.is_sharded(model):  # (with offload the shards' gradients add up in host memory instead)
            return contextlib.nullcontext() if self.cfg.offload else sharding.gradient_sync_off(model)
        return model.no_sync() if self.dist.enabled else contextlib.nullcontext()

    # --- what the loop reports -------------------------------------------------------
    def describe(self) -> str:
        cfg, world = self.cfg, self.dist.world_size
        batch, blocks = self.micro_per_step * cfg.batch_size, len(self.train_blocks)
        product = f"{cfg.batch_size} micro-batch x {cfg.grad_accum} accumulation x {world} process(es)"
        # More than the data holds: each step sees every block once, no more.
        effective = f"{batch} = {product}" if batch <= blocks else f"{blocks} (all the blocks; {product} = {batch})"
        return (f"training {self.total_steps} steps ({self.total_steps / self.steps_per_epoch:.2f} epochs of "
                f"{self.steps_per_epoch} steps), effective batch {effective}, {cfg.precision}, on {self.device}"
                + (f"; {sharding.describe(cfg, world)}" if cfg.fsdp else ""))

    def metrics(self, loss_sum, steps_run, runtime) -> dict:
        """The Trainer's train metrics block: train_loss over all steps, speeds of this session."""
        samples = self.n_train
        metrics = {
            "epoch": self.epoch,
            "train_loss": loss_sum / max(1, self.step),
            "train_runtime": runtime,
            "train_samples": samples,
            "train_samples_per_second": round(steps_run / self.steps_per_epoch * samples / runtime, 3),
            "train_steps_per_second": round(steps_run / runtime, 3),
            "train_tokens_per_second": round(self.predicted_tokens(self.step - steps_run, self.step) / runtime),
            "train_peak_memory_mb": peak_memory_mb(self.device),
        }
        if self.skipped:
            metrics["train_skipped_steps"] = self.skipped
        return metrics

    # --- the resumable state (checkpoint.py) -------------------------------------------
    def state_dict(self) -> dict:
        """What a resumed run needs of the Trainer. Under torchrun, a collective: every
        process's random state is gathered (dropout masks differ per process)."""
        rngs = self.dist.all_gather_object(rng_state(self.device))
        return {"model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rngs, "world_size": self.dist.world_size,
                "step": self.step, "skipped": self.skipped, "lr_used": self.lr_used}

    def load_state_dict(self, s: dict, weights=True) -> None:
        """weights=False: all but the weights and AdamW's moments (a sharded run reads those from
        its own shards: harness/sharded.py)."""
        if weights:
            self.model.load_state_dict(s["model"])
            self.optimizer.load_state_dict(s["optimizer"])
        self.scheduler.load_state_dict(s["scheduler"])
        self.scaler.load_state_dict(s["scaler"])
        rngs = s["rng"] if isinstance(s["rng"], list) else [s["rng"]]
        if len(rngs) == self.dist.world_size:
            set_rng_state(rngs[self.dist.rank], self.device)
        # else: another number of processes, so other dropout streams anyway; each
        # process keeps the generator seeded by train.py (seed + rank).
        self.step, self.skipped, self.lr_used = s["step"], s["skipped"], s["lr_used"]

    def evaluate(self, val_blocks, stop=None):
        with sharding.gathered_root(self.model):  # --fsdp: evaluation.py calls hidden_states, lm_head
            return evaluate_shared(self.model, val_blocks, self.cfg.eval_batch_size, self.device,
                                   self.cfg.eval_precision or self.cfg.precision, self.dist, stop=stop)

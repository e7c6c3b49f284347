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
where v_hat is ~0. betas and eps are run_clm's defaults, fixed here: to change them,
edit the torch.optim.AdamW call in `Trainer.__init__`.

"W" is decoupled weight decay (Loshchilov & Hutter): each step also shrinks the
weights directly, w -= lr x weight_decay x w, instead of adding weight_decay x w to
the gradient. Mixed into the gradient, the decay would be divided by sqrt(v) like
everything else, so weights with large gradients would hardly decay at all. Which parameters decay (`param_groups`): the matrices (and the
embeddings) only. A LayerNorm gain's natural value is 1 and pulling it towards 0
would shrink the signal it scales; a bias shifts rather than scales, and there are
too few of them to overfit with. (As the Hugging Face Trainer: no decay on biases and
LayerNorm weights.) The tied token embedding / LM head is one parameter: decayed once.

The learning-rate schedule (`--lr_scheduler_type`, as the Trainer's). With W warm-up
steps out of N, at step s the rate is lr x factor(s):

    linear                 s/W while warming up, then straight down to 0 at step N
    cosine                 s/W, then (1 + cos(pi x p)) / 2 with p = (s - W) / (N - W):
                           slow to leave the peak, fast in the middle, slow again near 0
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

Large steps early move the pretrained model towards the new text, small steps late
let it settle; a decaying schedule ends on small steps, a constant one does not. The
warm-up protects the pretrained weights from the first updates of a fresh optimizer,
whose moment estimates rest on a handful of gradients. --warmup_ratio R means
W = ceil(R x N). The rate logged with each step is the one that step used.

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
from .data import epoch_permutation, to_batch
from .distributed import Dist
from .evaluation import evaluate
from .precision import autocast, make_scaler, scaler_step


@dataclass
class TrainConfig:
    lr: float = 5e-5
    epochs: float = 3.0
    max_steps: int = 0            # > 0 overrides epochs
    batch_size: int = 2           # micro-batch: sequences per forward pass, per process
    grad_accum: int = 1           # micro-batches per optimizer step
    weight_decay: float = 0.0
    lr_scheduler: str = "linear"  # linear, cosine, constant, constant_with_warmup
    warmup_steps: int = 0
    warmup_ratio: float = 0.0     # used when warmup_steps is 0
    max_grad_norm: float = 1.0
    seed: int = 42
    log_every: int = 500
    log_first_step: bool = False
    eval_strategy: str | None = None  # no, steps (every eval_every), epoch; None: steps if eval_every
    eval_every: int = 0
    eval_batch_size: int = 8
    save_strategy: str | None = None  # no, steps (every save_every), epoch; None: steps if save_every
    save_every: int = 0
    save_total_limit: int = 1     # resumable states kept
    save_best: bool = False
    best_metric: str = "eval_loss"  # or eval_accuracy (the higher the better)
    patience: int = 0
    precision: str = "fp32"       # what the training steps use
    eval_precision: str | None = None  # what evaluations use; None: as training (run.py decides)
    compile: bool = False
    progress: bool = True
    fsdp: bool = False            # shard weights, gradients and moments over the processes (sharding.py)
    offload: bool = False         # with fsdp: keep them in host memory (sharding.py)


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


def schedule(kind, optimizer, warmup_steps, total_steps):
    """The learning-rate schedule: lr x factor(step) (see the module docstring; to add one: docs/extending.md)."""

    def factor(step):
        if kind == "constant":
            return 1.0
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        if kind == "constant_with_warmup":
            return 1.0
        if kind == "cosine":
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))  # linear

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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

        # Micro-batches are chunks of batch_size blocks of the epoch's permutation; an
        # optimizer step takes grad_accum of them on every process.
        self.n_train = len(self.train_blocks)
        self.micro_per_epoch = math.ceil(self.n_train / cfg.batch_size)
        self.micro_per_step = cfg.grad_accum * dist.world_size
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / self.micro_per_step)
        self.total_steps = cfg.max_steps or math.ceil(cfg.epochs * self.steps_per_epoch)
        self.tokens_per_step = self.micro_per_step * cfg.batch_size * self.train_blocks.shape[1]

        self.optimizer = torch.optim.AdamW(
            param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8,
            # One kernel for all parameters instead of several passes per tensor; on the CPU
            # too (torch >= 2.4), where it is ~8x faster than the default for GPT-2 124M.
            fused=device.type in ("cuda", "cpu"),
        )
        self.warmup_steps = cfg.warmup_steps or math.ceil(cfg.warmup_ratio * self.total_steps)
        self.scheduler = schedule(cfg.lr_scheduler, self.optimizer, self.warmup_steps, self.total_steps)
        self.scaler = make_scaler(device, cfg.precision)

        self.step = 0             # optimizer steps taken (or skipped by the fp16 scaler)
        self.skipped = 0          # steps the scaler skipped because gradients overflowed
        self.skipped_in_a_row = 0
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
            # (torchrun, distributed.py: DDP averages gradients over the processes; multiply
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
        self.lr_used = self.scheduler.get_last_lr()[0]  # logged: the rate this step used
        if scaler_step(self.scaler, self.optimizer):  # AdamW, unless fp16's gradients overflowed
            self.scheduler.step()
            self.skipped_in_a_row = 0
        else:  # no step was taken, so the schedule waits too
            self.skipped += 1
            self.skipped_in_a_row += 1
        self.optimizer.zero_grad(set_to_none=True)
        return step_loss, grad_norm.detach()

    def _accumulating(self, model):
        """Around the backward of a micro-step before the last: gradients add up, nothing is sent."""
        if sharding.is_sharded(model):  # (with offload the shards' gradients add up in host memory instead)
            return contextlib.nullcontext() if self.cfg.offload else sharding.gradient_sync_off(model)
        return model.no_sync() if self.dist.enabled else contextlib.nullcontext()

    # --- what the loop reports -------------------------------------------------------
    def describe(self) -> str:
        cfg, world = self.cfg, self.dist.world_size
        return (f"training {self.total_steps} steps ({self.total_steps / self.steps_per_epoch:.2f} epochs of "
                f"{self.steps_per_epoch} steps), effective batch {self.micro_per_step * cfg.batch_size} = "
                f"{cfg.batch_size} micro-batch x {cfg.grad_accum} accumulation x {world} process(es), "
                f"{cfg.precision}, on {self.device}" + (f"; {sharding.describe(cfg, world)}" if cfg.fsdp else ""))

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
            "train_tokens_per_second": round(steps_run * self.tokens_per_step / runtime),
            "train_peak_memory_mb": peak_memory_mb(self.device),
        }
        if self.skipped:
            metrics["train_skipped_steps"] = self.skipped
        return metrics

    def evaluate(self, val_blocks, stop=None):
        # Each process evaluates its own share of the blocks; the sums are added up.
        shard = val_blocks[self.dist.rank::self.dist.world_size]
        with sharding.gathered_root(self.model):  # --fsdp: evaluation.py calls hidden_states, lm_head
            return evaluate(self.model, shard, self.cfg.eval_batch_size, self.device,
                            self.cfg.eval_precision or self.cfg.precision,
                            reduce=self.dist.all_reduce_sum, stop=stop)

"""The fine-tuning loop: AdamW, mixed precision, accumulation, linear decay, checkpoints.

One optimizer step, the heart of it all, is `Trainer.optimizer_step`:

    for each micro-batch of the step:            # gradient accumulation
        with autocast:  loss = model(x, labels=x)           # forward, 16-bit matmuls
        scaler.scale(loss * share_of_tokens).backward()     # grads add up in .grad
    scaler.unscale_(optimizer)                   # back to true gradient values
    clip_grad_norm_(params, max_grad_norm)       # tame rare huge gradients
    scaler.step(optimizer); scaler.update()      # AdamW step, unless fp16 overflowed
    scheduler.step()                             # linear learning-rate decay
    optimizer.zero_grad()

Why accumulate: a GPU that holds only 2 sequences of 1024 tokens can still train with
a batch of 16 by running 8 micro-batches and adding their gradients before one step.
Each micro-batch's loss is weighted by its share of the step's tokens, so the summed
gradient is exactly the gradient of the mean loss over all tokens of the step: the
same update as one big batch.

Why AdamW: Adam keeps, per parameter, running averages of the gradient and of its
square, and steps by their ratio, so every parameter moves at a similar pace whatever
its gradient's scale. "W" is decoupled weight decay: the decay shrinks the weights
directly instead of being mixed into the gradient (and only 2-D weight matrices decay,
never biases or LayerNorm gains).

Why a linear decay: large steps early move the pretrained model towards the new text,
small steps late let it settle. With warm-up, the rate first rises from 0, which
protects pretrained weights from the noisy first updates of a fresh optimizer.

Checkpoints: `resume.pt` holds everything needed to continue exactly (weights,
optimizer moments, scheduler, scaler, random-number states, step); the data order is a
function of (seed, epoch) and is rebuilt, not stored. Every file is written atomically
(files.py), so a kill at any moment leaves the previous checkpoint intact.
"""

import contextlib
import math
import os
import resource
import signal
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

from .data import epoch_permutation, to_batch
from .distributed import Dist
from .errors import UserError
from .evaluation import evaluate
from .files import atomic_path
from .precision import autocast, make_scaler
from .report import log_line


@dataclass
class TrainConfig:
    lr: float = 5e-5
    epochs: float = 3.0
    max_steps: int = 0            # > 0 overrides epochs
    batch_size: int = 2           # micro-batch: sequences per forward pass, per process
    grad_accum: int = 1           # micro-batches per optimizer step
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    seed: int = 42
    log_every: int = 500
    eval_every: int = 0
    eval_batch_size: int = 8
    save_every: int = 0
    save_best: bool = False
    patience: int = 0
    precision: str = "fp32"
    compile: bool = False
    progress: bool = True


def param_groups(model, weight_decay):
    """Decay 2-D weight matrices (and embeddings); never biases or LayerNorm gains."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def linear_schedule(optimizer, warmup_steps, total_steps):
    """lr x (step / warmup) while warming up, then down in a straight line to 0 at the end."""

    def factor(step):
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def rng_state(device):
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device):
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class NonFiniteLoss(UserError):
    pass


class Trainer:
    def __init__(self, model, train_blocks, val_blocks, cfg: TrainConfig, device, out_dir,
                 dist: Dist | None = None, on_save=None, print_fn=tqdm.write):
        dist = dist or Dist()
        self.model = model.to(device)
        # (N, T), kept in the ids' small dtype (uint16 for GPT-2: a quarter of int64);
        # each micro-batch is converted on its own by to_batch.
        self.train_blocks = np.asarray(train_blocks)
        self.val_blocks = val_blocks
        self.cfg, self.device, self.out, self.dist = cfg, device, out_dir, dist
        self.on_save = on_save or (lambda directory: None)  # writes tokenizer files etc.
        self.print = print_fn if dist.is_main else (lambda *a, **k: None)

        # Model as the steps see it: maybe compiled, maybe wrapped for several processes.
        self.step_model = torch.compile(model) if cfg.compile else model
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.step_model = DDP(self.step_model, device_ids=[device] if device.type == "cuda" else None)

        # Micro-batches are chunks of batch_size blocks of the epoch's permutation; an
        # optimizer step takes grad_accum of them on every process.
        self.n_train = len(self.train_blocks)
        self.micro_per_epoch = math.ceil(self.n_train / cfg.batch_size)
        self.micro_per_step = cfg.grad_accum * dist.world_size
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / self.micro_per_step)
        self.total_steps = cfg.max_steps or math.ceil(cfg.epochs * self.steps_per_epoch)

        self.optimizer = torch.optim.AdamW(
            param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8,
            # One kernel for all parameters instead of several passes per tensor; on the CPU
            # too (torch >= 2.4), where it is ~8x faster than the default for GPT-2 124M.
            fused=device.type in ("cuda", "cpu"),
        )
        self.scheduler = linear_schedule(self.optimizer, cfg.warmup_steps, self.total_steps)
        self.scaler = make_scaler(device, cfg.precision)

        self.step = 0             # optimizer steps taken (or skipped by the fp16 scaler)
        self.skipped = 0          # steps the scaler skipped because gradients overflowed
        self.skipped_in_a_row = 0
        self.loss_sum = 0.0       # sum of step losses, for the final train_loss
        self.log_history = []
        self.best = None          # (eval_loss, step)
        self.bad_evals = 0        # evaluations without improvement, for --patience
        self.stop_requested = False  # Ctrl-C, or early stopping
        self._stopped_early = False  # early stopping (--patience)
        self.lr_used = cfg.lr
        # Sum of the step losses since the last log, kept on the device: reading a GPU
        # number forces the CPU to wait for the GPU, so it is read only when logging.
        self.window_loss = torch.zeros((), device=device)
        self.window_steps = 0
        self._perm = (None, None)  # (epoch, its permutation of the blocks)

    # --- data order ----------------------------------------------------------------
    def step_micro_batches(self, step):
        """Index tensors of the micro-batches this process runs at `step`, and the
        number of predicted tokens in the whole step (all micro-batches, all processes)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if self._perm[0] != epoch:  # a new epoch: a new order, a function of (seed, epoch)
            self._perm = (epoch, epoch_permutation(self.n_train, self.cfg.seed, epoch))
        perm = self._perm[1]
        bs = self.cfg.batch_size
        first = k * self.micro_per_step
        chunks = [perm[i * bs:(i + 1) * bs] for i in range(first, min(first + self.micro_per_step, self.micro_per_epoch))]
        tokens = sum(len(c) for c in chunks) * (self.train_blocks.shape[1] - 1)
        # Round-robin: process r takes chunks r, r + world, ... so that N processes x
        # accumulation A see the same samples as 1 process x accumulation N*A.
        return chunks[self.dist.rank::self.dist.world_size], tokens

    # --- one optimizer step: accumulation, scaler, clipping, AdamW, schedule ---------
    def optimizer_step(self, micro_batches, step_tokens):
        model, cfg = self.step_model, self.cfg
        model.train()
        if not micro_batches:  # a short last step can leave a process without data:
            micro_batches = [None]  # it still joins the gradient all-reduce, with zero weight
        step_loss = torch.zeros((), device=self.device)
        for i, idx in enumerate(micro_batches):
            x = to_batch(self.train_blocks, idx if idx is not None else [0], self.device)  # (b, T)
            share = x.numel() - x.shape[0] if idx is not None else 0  # predicted tokens: T-1 per block
            weight = share / step_tokens
            # DDP averages gradients over processes; multiply back so that the sum over
            # all micro-batches of all processes is the mean over the step's tokens.
            sync = i == len(micro_batches) - 1  # all-reduce gradients once per step, at the end
            with (model.no_sync() if self.dist.enabled and not sync else contextlib.nullcontext()):
                with autocast(self.device, cfg.precision):
                    _, loss = model(x, labels=x)  # mean cross-entropy of this micro-batch
                self.scaler.scale(loss * weight * self.dist.world_size).backward()
            step_loss += loss.detach() * weight  # stays on the device: no sync here

        self.scaler.unscale_(self.optimizer)  # grads / scale: now the true gradients
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        scale_before = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.lr_used = self.scheduler.get_last_lr()[0]  # logged: the rate this step used
        self.scaler.step(self.optimizer)  # skipped if the fp16 gradients held inf/NaN
        self.scaler.update()
        if scale_before is not None and self.scaler.get_scale() < scale_before:
            self.skipped += 1  # overflow: no step was taken, so the schedule waits too
            self.skipped_in_a_row += 1
        else:
            self.scheduler.step()
            self.skipped_in_a_row = 0
        self.optimizer.zero_grad(set_to_none=True)
        return step_loss

    # --- the loop ------------------------------------------------------------------
    def train(self):
        cfg = self.cfg
        tokens_per_step = self.micro_per_step * cfg.batch_size * self.train_blocks.shape[1]
        self.print(f"training {self.total_steps} steps ({self.total_steps / self.steps_per_epoch:.2f} epochs of "
                   f"{self.steps_per_epoch} steps), effective batch {self.micro_per_step * cfg.batch_size} = "
                   f"{cfg.batch_size} micro-batch x {cfg.grad_accum} accumulation x {self.dist.world_size} process(es), "
                   f"{cfg.precision}, on {self.device}")
        # Every process catches Ctrl-C (torchrun passes it on to each of them).
        old_handler = signal.signal(signal.SIGINT, self._on_sigint)
        # disable=None: no bar when the output is not a terminal (a log file, CI).
        bar = tqdm(total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=None if cfg.progress and self.dist.is_main else True)
        bar_loss = "loss -"
        bad = torch.zeros((), dtype=torch.bool, device=self.device)  # any non-finite loss so far
        t0, t_bar, start_step = time.time(), time.time(), self.step
        stop = False
        try:
            while self.step < self.total_steps and not stop:
                batches, tokens = self.step_micro_batches(self.step)
                loss = self.optimizer_step(batches, tokens)
                self.step += 1
                self.window_loss += loss
                self.window_steps += 1
                if cfg.precision != "fp16":
                    bad |= ~torch.isfinite(loss)  # fp16 overflow is the scaler's business
                bar.update(1)

                at_log = self.step % cfg.log_every == 0 or self.step == self.total_steps
                if at_log or self.step % 10 == 0:  # one host-device sync every 10 steps at most
                    self._check_finite(bad)
                if at_log:
                    mean = self._flush_window()
                    self._log({"loss": mean, "learning_rate": self.lr_used,
                               "epoch": round(self.step / self.steps_per_epoch, 2)})
                    bar_loss = f"loss {mean:.4f}"
                if time.time() - t_bar > 1.0:  # the bar's numbers, once a second
                    done = (self.step - start_step) * tokens_per_step
                    bar.set_postfix_str(f"{bar_loss}, {done / (time.time() - t0):,.0f} tok/s", refresh=False)
                    t_bar = time.time()
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.val_blocks is not None:
                    self._eval_during_training()
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self._check_finite(bad)
                    self.save_state()
                # Under torchrun, Ctrl-C reaches the processes at slightly different
                # moments; they must all stop after the same step, or those still going
                # would wait for ever in the next step's all-reduce. So the loop obeys
                # this vote (on the CPU: no GPU sync, microseconds), never the flag itself.
                stop = self.dist.any(self.stop_requested)
        finally:
            bar.close()
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
        # `stop` (the vote), not self.stop_requested: under torchrun a Ctrl-C may have
        # reached one process only, and _flush_window is a collective all must call.
        if self.window_steps and (not stop or self._stopped_early):
            self._flush_window()  # early stopping between two logs: count those steps too
        self._check_finite(bad)
        runtime = time.time() - t0
        if stop and self.step < self.total_steps and not self._stopped_early:
            self.save_state()
            self.print(f"interrupted at step {self.step}: resumable state saved in {self.out}; "
                       f"run the same command with --resume to continue")
            return None
        if cfg.save_best and self.best is not None:
            self._restore_best()
        steps_run = self.step - start_step
        samples = self.n_train
        metrics = {
            "epoch": round(self.step / self.steps_per_epoch, 2),
            "train_loss": self.loss_sum / max(1, self.step),
            "train_runtime": runtime,
            "train_samples": samples,
            "train_samples_per_second": round(steps_run / self.steps_per_epoch * samples / runtime, 3),
            "train_steps_per_second": round(steps_run / runtime, 3),
            "train_tokens_per_second": round(steps_run * tokens_per_step / runtime),
            "train_peak_memory_mb": peak_memory_mb(self.device),
        }
        if self.skipped:
            metrics["train_skipped_steps"] = self.skipped
        return metrics

    def _flush_window(self):
        """Mean loss of the steps since the last log (over all processes); adds it to loss_sum."""
        total = self.dist.all_reduce_sum(self.window_loss.clone()).item()  # a sync, once per log
        mean = total / self.window_steps
        self.loss_sum += total
        self.window_loss.zero_()
        self.window_steps = 0
        return mean

    def _check_finite(self, bad):
        # A vote: one process's NaN reaches the others' weights only through the next
        # all-reduce, and all must raise at the same step (see distributed.py).
        # fp16 has no NaN check (the scaler skips overflowing steps), but a scale halved
        # 25 times in a row (65536 -> 0.002) means the model itself has diverged.
        non_finite = self.dist.any(bool(bad))  # the vote, so that every process names the same cause
        if non_finite or self.skipped_in_a_row >= 25:
            what = "the training loss became NaN/inf" if non_finite else "fp16 gradients overflowed 25 steps in a row"
            kept = (f"the last good checkpoint, {self.out}/resume.pt, is kept"
                    if os.path.exists(os.path.join(self.out, "resume.pt")) else "nothing was saved")
            raise NonFiniteLoss(f"{what} by step {self.step} (learning rate too high?); stopped, {kept}")

    def _on_sigint(self, signum, frame):
        # First Ctrl-C: finish the current step, save a resumable state, exit.
        # A second one interrupts at once.
        self.stop_requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if self.dist.is_main:
            print("\nCtrl-C: saving a resumable state after this step (press again to abort)", file=sys.stderr)

    def _log(self, entry):
        entry_with_step = {**entry, "step": self.step}
        self.log_history.append(entry_with_step)
        self.print(log_line(entry))  # tqdm.write: printed above the progress bar

    # --- evaluation during training, best checkpoint, early stopping -----------------
    def evaluate(self):
        # Each process evaluates its own share of the blocks; the sums are added up.
        shard = self.val_blocks[self.dist.rank::self.dist.world_size]
        return evaluate(self.model, shard, self.cfg.eval_batch_size, self.device, self.cfg.precision,
                        reduce=self.dist.all_reduce_sum)

    def _eval_during_training(self):
        m = self.evaluate()
        self._log({"eval_loss": m["eval_loss"], "eval_accuracy": m["eval_accuracy"],
                   "epoch": round(self.step / self.steps_per_epoch, 2)})
        if self.best is None or m["eval_loss"] < self.best[0]:
            self.best, self.bad_evals = (m["eval_loss"], self.step), 0
            if self.cfg.save_best and self.dist.is_main:
                self._save_model(os.path.join(self.out, "best"))
        else:
            self.bad_evals += 1
            if self.cfg.patience and self.bad_evals >= self.cfg.patience:
                self.print(f"early stopping at step {self.step}: eval_loss has not improved for "
                           f"{self.bad_evals} evaluations (best {self.best[0]:.4f} at step {self.best[1]})")
                self.stop_requested = self._stopped_early = True

    def _restore_best(self):
        from .weights import load_into, read_safetensors

        path = os.path.join(self.out, "best", "model.safetensors")
        self.dist.barrier()
        load_into(self.model, read_safetensors(path), path)
        self.print(f"restored the best checkpoint (eval_loss {self.best[0]:.4f} at step {self.best[1]})")

    def _save_model(self, directory):
        from .weights import save_checkpoint

        save_checkpoint(self.model, directory)
        self.on_save(directory)

    # --- resumable state -----------------------------------------------------------
    def state_dict(self, rng_states=None, window_losses=None):
        # Under torchrun only rank 0 calls this (from save_state): so nothing in here may
        # be a collective; save_state gathers the parts that differ between processes.
        return {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            # One random-number state per process, by rank: each draws its own dropout masks.
            "rng": rng_states or [rng_state(self.device)], "world_size": self.dist.world_size,
            "step": self.step, "skipped": self.skipped, "loss_sum": self.loss_sum, "lr_used": self.lr_used,
            # The unlogged steps' losses, one sum per process (a sync, at save time only):
            # added up in the same order as without the interruption, the log is the same.
            "window_loss": window_losses or [self.window_loss.item()],
            "window_steps": self.window_steps,
            "log_history": self.log_history, "best": self.best, "bad_evals": self.bad_evals,
            "config": {k: v for k, v in asdict(self.cfg).items() if k != "progress"},
            # What else decides the weights: the data's shape and the model's (its dropout included).
            "data_shape": list(self.train_blocks.shape), "model_config": asdict(self.model.config),
        }

    def save_state(self):
        """resume.pt, atomically: a kill during the write leaves the previous one.

        Under torchrun rank 0 writes it alone: weights, optimizer and schedule are the
        same on every process. The random-number states and the losses not yet
        logged differ, so they are gathered first, by every process; the barrier then
        keeps the others from running ahead of a file that is not written yet.
        """
        parts = self.dist.all_gather_object((rng_state(self.device), self.window_loss.item()))
        if self.dist.is_main:
            os.makedirs(self.out, exist_ok=True)
            with atomic_path(os.path.join(self.out, "resume.pt")) as tmp:
                torch.save(self.state_dict([rng for rng, _ in parts], [w for _, w in parts]), tmp)
        self.dist.barrier()

    def load_state(self, path):
        try:
            s = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"{path}: not a readable training state ({type(e).__name__})") from None
        if not isinstance(s, dict) or not isinstance(s.get("config"), dict):
            raise UserError(f"{path}: not a training state of train.py")
        mine = {k: v for k, v in asdict(self.cfg).items() if k != "progress"}
        diff = [f"{k} {mine[k]!r} (saved: {s['config'].get(k)!r})" for k in ("lr", "epochs", "max_steps", "batch_size",
                "seed", "weight_decay", "warmup_steps", "max_grad_norm", "precision") if s["config"].get(k) != mine[k]]
        # Another text or block size, another model shape or dropout: not the same run either.
        # (States written before these were saved lack them: nothing to compare.)
        if s.get("data_shape", list(self.train_blocks.shape)) != list(self.train_blocks.shape):
            diff.append(f"training blocks {list(self.train_blocks.shape)} (saved: {s['data_shape']})")
        for k, v in asdict(self.model.config).items():
            if s.get("model_config", {}).get(k, v) != v:
                diff.append(f"model {k} {v!r} (saved: {s['model_config'][k]!r})")
        # Another number of processes is fine if the micro-batches per step stay the
        # same (2 GPUs x accumulation 2 = 1 GPU x 4): the data order is then the same.
        saved_world = s.get("world_size", 1)
        if s["config"].get("grad_accum", 0) * saved_world != self.micro_per_step:
            diff.append(f"grad_accum {self.cfg.grad_accum} x {self.dist.world_size} process(es) "
                        f"(saved: {s['config'].get('grad_accum')!r} x {saved_world})")
        if diff:
            raise UserError(f"--resume: this command differs from the interrupted run: {', '.join(diff)}")
        self.model.load_state_dict(s["model"])
        self.optimizer.load_state_dict(s["optimizer"])
        self.scheduler.load_state_dict(s["scheduler"])
        self.scaler.load_state_dict(s["scaler"])
        rngs = s["rng"] if isinstance(s["rng"], list) else [s["rng"]]
        if len(rngs) == self.dist.world_size:
            set_rng_state(rngs[self.dist.rank], self.device)
        # else: another number of processes, so other dropout streams anyway; each
        # process keeps the generator seeded by train.py (seed + rank).
        self.step, self.skipped, self.loss_sum, self.lr_used = s["step"], s["skipped"], s["loss_sum"], s["lr_used"]
        windows = s["window_loss"] if isinstance(s["window_loss"], list) else [s["window_loss"]]
        if len(windows) == self.dist.world_size:
            self.window_loss.fill_(windows[self.dist.rank])  # each process its own sum, as before
        else:  # the whole sum goes to one process; the all-reduce at the next log adds the rest
            self.window_loss.fill_(sum(windows) if self.dist.is_main else 0.0)
        self.window_steps = s["window_steps"]
        self.log_history, self.best, self.bad_evals = s["log_history"], s["best"], s["bad_evals"]
        self.best = tuple(self.best) if self.best else None

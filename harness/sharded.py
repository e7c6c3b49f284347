"""A sharded run's files (--fsdp, --offload): its flags, its resumable state, its model folders.

gpt2/sharding.py shards the model; this module is what changes around it for train.py.

The model folders (the final model, checkpoint-<step>/, best/) are the same ordinary
Hugging Face folders as without sharding: every process sends its shards to rank 0
(`gather_weights`, a collective), which writes one model.safetensors, the tied LM head
once. transformers and evaluate.py open them without torchrun.

The resumable state is written by every process, in parallel, through PyTorch's
distributed checkpoint (torch.distributed.checkpoint, DCP): each process writes its own
shards of the weights and of AdamW's moments into one folder, and rank 0 a `.metadata`
file that says which piece of which tensor is where. Nothing is gathered, so a state
the size of 16 bytes a parameter never has to fit in one process; and DCP can read
the pieces back on another number of processes (it re-cuts them), so a run may resume
on another number of processes when its effective batch stays the same.

    OUT/resume.pt          the small part, as without sharding (checkpoint.py): the step,
                           the schedule, every process's random state, the history, the
                           config; its "shards" names the folder below
    OUT/shards-<step>/     the DCP folder: weights and AdamW's moments

Atomically, as resume.pt alone is: the shards go to shards-<step>.tmp first, renamed
when every process has written its part; resume.pt is replaced (atomically) only
then; the previous shards folder is removed only after that. A kill at any moment
leaves the previous resume.pt and the folder it names whole. A checkpoint-<step>/
folder holds both too (hard links: no extra disk), so --resume-from-checkpoint reads it.

DCP's files are read by the torch version that wrote them: a state from another
version is refused in one line, as is a missing or truncated shard.
"""

import os
import shutil

import torch

from gpt2 import checkpoint, sharding
from gpt2.errors import UserError
from gpt2.weights import hf_to_ours, read_safetensors

from . import checkpoints
from .hooks import RESUME, RunHooks, link_or_copy

SHARDS = "shards-{step}"
WORLD = ("WORLD_SIZE", "1")


def check_flags(args, n_lrs: int = 1) -> None:
    """--fsdp / --offload combinations that cannot work: one line each, before anything is loaded."""
    if not (args.fsdp or args.offload):
        return
    flag = "--fsdp" if args.fsdp else "--offload"
    world = int(os.environ.get(*WORLD))
    if args.fsdp and not args.offload and world == 1:
        raise UserError("--fsdp shards the model over torchrun's processes, and this is one process: start it with "
                        "torchrun --nproc_per_node=N (N >= 2), or add --offload to train on one process with the "
                        "weights, gradients and moments in host memory")
    refused = [(args.lora, "--lora (LoRA's few trained weights need no sharding: train without " + flag + ")"),
               (args.compile, "--compile"),
               (args.find_lr, "--find-lr (run the range test without " + flag + ")"),
               (args.batch_size == "auto", "--batch-size auto (it tries the whole model on one GPU: "
                                           "take a micro-batch from --plan)"),
               (args.precision == "fp16", "--fp16 (the loss scaler across shards is not built: use --bf16 or fp32)"),
               (n_lrs > 1, "a sweep of learning rates (run one --lr at a time)")]
    for bad, what in refused:
        if bad:
            raise UserError(f"{flag} does not work with {what}")


def check_state_kind(args) -> None:
    """--resume of a state written with --fsdp (or --offload) needs it again, and one written without, not."""
    path = (os.path.join(args.resume_from, RESUME) if os.path.isdir(args.resume_from) else args.resume_from) \
        if args.resume_from else os.path.join(args.out, RESUME) if args.resume else None
    try:  # mmap: the small part only
        s = torch.load(path, map_location="cpu", weights_only=True, mmap=True) if path else None
    except Exception:
        return  # unreadable: the loading says why
    if not isinstance(s, dict):
        return
    if "shards" in s and not (args.fsdp or args.offload):
        raise UserError(f"--resume: {path} was written by a sharded run (--fsdp or --offload): resume it with "
                        f"--fsdp (or --offload), as it was trained")
    if "shards" not in s and (args.fsdp or args.offload):
        raise UserError(f"--resume: {path} was written by a run without --fsdp or --offload: resume it without them")


def gather_weights(model):
    """The whole weights on rank 0 if `model` is sharded (a collective: every process calls it), else None."""
    return sharding.full_state_dict(model) if sharding.is_sharded(model) else None


def _shard_folders(out):
    return [n for n in os.listdir(out) if n.startswith("shards-")] if os.path.isdir(out) else []


def write_shards(trainer, out) -> str:
    """The weights and AdamW's moments of every process into OUT/shards-<step>/ (DCP), atomically; its name."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    name = SHARDS.format(step=trainer.step)
    final = os.path.join(out, name)
    tmp = final + ".tmp"
    if trainer.dist.is_main:
        os.makedirs(out, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # a save killed before
    trainer.dist.barrier()
    model_state, optim_state = get_state_dict(trainer.model, trainer.optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp)  # every process its shards
    trainer.dist.barrier()
    if trainer.dist.is_main:
        _commit(tmp, final)
    return name


def _commit(tmp, final):
    """Every process has written its shards into tmp: now under its final name."""
    if os.path.isdir(final):  # the same step saved before (a run resumed from an older state)
        shutil.rmtree(final)
    os.replace(tmp, final)


class ShardedRunHooks(RunHooks):
    """RunHooks for --fsdp: the state through DCP; the model gathered on rank 0 for its folders."""

    def save_model(self, directory, weights=None):
        """Every process: the weights gathered (a collective), unless given; rank 0 writes."""
        super().save_model(directory, gather_weights(self.run.model) if weights is None else weights)

    def save_state(self, trainer, history):
        state = checkpoint.state_dict(trainer, history, self.data)  # every process: random states gathered
        state["model"], state["optimizer"] = {}, {}  # the tensors are in the shards folder
        state["shards"] = write_shards(trainer, self.out)
        state["torch"] = str(torch.__version__)  # DCP files are read by the torch that wrote them
        # A periodic save, not the one a signal asked for. Voted: a signal may have reached one
        # process only, and the gathering below is a collective all must join, or none.
        periodic = not self.dist.any(self.interrupt.requested)
        weights = gather_weights(trainer.model) if periodic else None  # for checkpoint-<step>/: every process
        if self.dist.is_main:
            path = os.path.join(self.out, RESUME)
            checkpoint.write(state, path)
            if periodic:
                self.save_checkpoint_folder(trainer, history, path, state["shards"], weights)
            self._remove_old_shards(keep=state["shards"])
        self.dist.barrier()

    def save_checkpoint_folder(self, trainer, history, state_path, shards=None, weights=None):
        def save_state(path):  # resume.pt and its shards folder, as second names (hard links)
            link_or_copy(state_path, path)
            _link_tree(os.path.join(self.out, shards), os.path.join(os.path.dirname(path), shards))

        trainer_state = {"global_step": trainer.step, "epoch": trainer.epoch, "max_steps": trainer.total_steps,
                         "log_history": history.log}
        checkpoints.write(self.out, trainer.step, lambda d: self.save_model(d, weights), save_state,
                          self.run_args, trainer_state)
        checkpoints.rotate(self.out, trainer.cfg.save_total_limit)

    def load_best(self, trainer):
        path = os.path.join(self.out, "best", "model.safetensors")
        sharding.load_full_state_dict(trainer.model, hf_to_ours(read_safetensors(path), path))

    def _remove_old_shards(self, keep=None):
        """Shards folders that no resume.pt names any longer (and temporary ones)."""
        for name in _shard_folders(self.out):
            if name != keep:
                shutil.rmtree(os.path.join(self.out, name), ignore_errors=True)

    def close(self):
        super().close()
        if self.dist.is_main and not os.path.exists(os.path.join(self.out, RESUME)):
            self._remove_old_shards()  # the run completed: the final model supersedes its state


def _link_tree(source, target):
    os.makedirs(target, exist_ok=True)
    for name in os.listdir(source):
        link_or_copy(os.path.join(source, name), os.path.join(target, name))


def load(t, history, path, data: dict | None = None):
    """checkpoint.load for a sharded run: the small state checked as there, then the shards (DCP)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    try:
        s = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path}: not a readable training state ({type(e).__name__})") from None
    if isinstance(s, dict) and "shards" not in s:
        raise UserError(f"--resume: {path} was written by a run without --fsdp or --offload: resume it without them")
    checkpoint._check_parts(s, path, t)
    diff = checkpoint._differences(t, s, data or {})
    if diff:
        raise UserError(f"--resume: this command differs from the interrupted run: {', '.join(diff)}")
    if s["step"] > t.total_steps:
        raise UserError(f"{path}: not a usable training state (step {s['step']} of a run of {t.total_steps} steps)")
    if s.get("torch") != str(torch.__version__):
        raise UserError(f"{path}: its shards were written by torch {s.get('torch')}, this is torch "
                        f"{torch.__version__}; resume with the torch that wrote them")
    shards = os.path.join(os.path.dirname(path), str(s["shards"]))
    if not os.path.isfile(os.path.join(shards, ".metadata")):
        raise UserError(f"{shards}: missing (or incomplete), and resume.pt needs it; this state cannot be resumed")
    model_state, optim_state = get_state_dict(t.model, t.optimizer)  # the shapes to read into
    state = {"model": model_state, "optim": optim_state}
    try:
        dcp.load(state, checkpoint_id=shards)
        failed = None
    except CheckpointException as e:  # a missing or truncated shard file, on some process (not an Exception)
        first = next(iter(e.failures.values()), e)
        failed = (str(first).strip().splitlines() or [type(first).__name__])[0][:200]
    except Exception as e:
        failed = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    # Every process must agree: one that failed alone would leave the others waiting.
    if t.dist.any(failed is not None):
        reason = [f for f in t.dist.all_gather_object(failed) if f][0]
        raise UserError(f"{shards}: a shard is missing or damaged ({reason}); this state cannot be resumed")
    set_state_dict(t.model, t.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    checkpoint.apply_progress(t, history, s)
    return checkpoint._inexact(t, s)  # the notes of a resume that will not be bit-exact

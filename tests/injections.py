"""Faults injected into train.py when a test runs it in a child process.

tests/injected_train.py installs every injection below, then runs train.py as
`python train.py` would. Each one is inert until its environment variable is set,
so one script serves every test that needs a Ctrl-C, a SIGKILL or a probe at an exact
moment of a run (torchrun passes the environment on to its workers):

    KILL_AT=s           SIGKILL right after the resumable state of step s is written
    KILL_IN_STEP=s      SIGKILL inside step s: its gradients are there, its update is not
    CTRL_C_AT=s         Ctrl-C (SIGINT) during optimizer step s
    CTRL_C_EVAL=n       Ctrl-C as the n-th evaluation starts (during training or the final one)
    KILL_EVAL=n         SIGKILL at that moment
    KILL_IN_ROTATION=f  SIGKILL while --save-total-limit removes a checkpoint folder, its file f gone
    CTRL_C_SAVE=k       k Ctrl-C while the final model.safetensors is written (complete, not renamed)
    KILL_IN_WEIGHTS=1   SIGKILL at that same moment
    FULL_WEIGHTS=1      the disk fills while model.safetensors is written (safetensors' own error)
    CTRL_C_STATE_AT=s   Ctrl-C twice while the state of step s is written (not yet renamed)
    KILL_STATE_AT=s     SIGKILL at that moment
    KILL_IN_SHARDS=s    (--fsdp) SIGKILL when the shards of step s are written, not yet renamed
    FULL_STATE_AT=s     the disk fills while that state is written (torch's own error)
    CTRL_C_SETUP=1      Ctrl-C while the data is loaded, before the run has begun
    KILL_AT_JSON=name   SIGKILL when the final save is about to write that JSON file
    SLEEP_MARKER=path   during step 2, create that file and sleep (a run that holds its --out)
    STEP_MARKER=path    during step 2, create that file and wait 1 s (a signal from outside lands then)
    SIGNAL_AT_EVAL=n    send this process signal SIG (a number) as the n-th evaluation starts
    EVAL_FAILS=1        every evaluation runs out of memory (as at --eval-batch-size 8 after 2)
    SIGNAL_IN_FORWARD=s send this process signal SIG during the forward pass of step s
    PROBE_SHARDS=dir    (torchrun --fsdp) each rank writes shardsN.json: the weight and moment bytes it holds
    PROBE_OUT=dir       (torchrun) each rank writes rankN.json: its all-reduces and random seed
    RANK1_FAIL_AT=s     (torchrun) rank 1 raises a UserError at step s
    RANK1_CTRL_C_AT=s   (torchrun) Ctrl-C to rank 1 alone at step s
    RANK1_KILL_AT=s     (torchrun) SIGKILL to rank 1 alone at step s
"""

import json
import os
import signal
import time

import torch

from gpt2 import evaluation, loop, weights
from gpt2.errors import UserError
from gpt2.trainer import Trainer
from harness import checkpoints, run, sharded
from harness.hooks import RunHooks
from harness.outdir import RunDir


def env(name, default=-1) -> int:
    return int(os.environ.get(name, default))


def ctrl_c(times=1):
    """As many Ctrl-C as asked, each handled before the next."""
    for _ in range(times):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)


def kill():
    os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind


class RotationKiller:
    """harness/checkpoints.py's shutil, whose rmtree of a whole checkpoint folder (--save-total-limit),
    with KILL_IN_ROTATION=name set, removes that file of it and then SIGKILLs the process."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def rmtree(self, path, *a, **k):
        victim = os.path.join(path, os.environ.get("KILL_IN_ROTATION", ""))
        if os.environ.get("KILL_IN_ROTATION") and os.path.isfile(victim):
            os.remove(victim)
            kill()
        return self._real.rmtree(path, *a, **k)


def after(cls, name, action):
    """Replace cls.name by a version that runs `action(self, *args)` after the original."""
    original = getattr(cls, name)

    def patched(self, *a, **k):
        result = original(self, *a, **k)
        action(self, *a)
        return result

    setattr(cls, name, patched)


def before(owner, name, action):
    """Replace owner.name by a version that runs `action(*args)` before the original."""
    original = getattr(owner, name)

    def patched(*a, **k):
        action(*a)
        return original(*a, **k)

    setattr(owner, name, patched)


def install_run_faults():
    """The single-process faults: signals and kills at exact moments of a run."""
    after(RunHooks, "save_state", lambda hooks, t, history: env("KILL_AT") == t.step and kill())
    after(sharded.ShardedRunHooks, "save_state", lambda hooks, t, history: env("KILL_AT") == t.step and kill())
    # --fsdp: SIGKILL when every process has written its shards of step s, before they are renamed
    before(sharded, "_commit", lambda tmp, final: final.endswith(f"-{env('KILL_IN_SHARDS')}") and kill())
    after(Trainer, "optimizer_step", lambda t, *a: t.step == env("CTRL_C_AT") and ctrl_c())  # t.step: steps done

    def die_before_the_update(t, *a):
        if t.step + 1 == env("KILL_IN_STEP"):  # clipping comes after backward, before AdamW
            torch.nn.utils.clip_grad_norm_ = lambda *args, **kwargs: kill()
    before(Trainer, "optimizer_step", die_before_the_update)

    evaluations = [0]

    def at_each_evaluation(*a):
        evaluations[0] += 1
        if evaluations[0] == env("CTRL_C_EVAL"):
            ctrl_c()
        if evaluations[0] == env("KILL_EVAL"):
            kill()
        if evaluations[0] == env("SIGNAL_AT_EVAL"):
            os.kill(os.getpid(), int(os.environ["SIG"]))
            time.sleep(0.05)
        if os.environ.get("EVAL_FAILS"):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1073741824 bytes")
    before(evaluation, "eval_sums", at_each_evaluation)

    def while_saving_weights(tensors, path, *a):
        if os.sep + "best" + os.sep not in str(path):
            if env("KILL_IN_WEIGHTS") == 1:
                kill()
            ctrl_c(max(0, env("CTRL_C_SAVE", 0)))
    after_function(weights, "save_file", while_saving_weights)

    def disk_full_for_weights(*a):
        if env("FULL_WEIGHTS") == 1:
            from safetensors import SafetensorError
            raise SafetensorError("I/O error: No space left on device (os error 28)")
    before(weights, "save_file", disk_full_for_weights)

    def while_saving_state(obj, f, *a):
        if isinstance(obj, dict) and ".tmp-" in str(f) and obj.get("step") == env("FULL_STATE_AT"):
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 704 vs 598")  # torch's
        if isinstance(obj, dict) and ".tmp-" in str(f):
            if obj.get("step") == env("KILL_STATE_AT"):
                kill()
            if obj.get("step") == env("CTRL_C_STATE_AT"):
                ctrl_c(2)
    after_function(torch, "save", while_saving_state)

    before(run, "load_data", lambda *a: env("CTRL_C_SETUP") == 1 and ctrl_c())
    before(RunDir, "write_json", lambda out, name, obj: name == os.environ.get("KILL_AT_JSON") and kill())
    checkpoints.shutil = RotationKiller(checkpoints.shutil)

    def hold_the_directory(t, *a):
        if t.step == 2 and os.environ.get("SLEEP_MARKER"):
            open(os.environ["SLEEP_MARKER"], "w").close()
            time.sleep(120)
    after(Trainer, "optimizer_step", hold_the_directory)

    def wait_for_a_signal(t, *a):
        if t.step == 2 and os.environ.get("STEP_MARKER"):
            open(os.environ["STEP_MARKER"], "w").close()
            time.sleep(1.0)
    after(Trainer, "optimizer_step", wait_for_a_signal)

    def signal_in_forward(t, *a):
        fired = []

        def hook(module, inputs):
            if t.step + 1 == env("SIGNAL_IN_FORWARD") and not fired:
                fired.append(True)
                os.kill(os.getpid(), int(os.environ["SIG"]))
        t.model.transformer.h[0].register_forward_pre_hook(hook)  # in the middle of the forward pass
    after(Trainer, "__init__", signal_in_forward)


def after_function(module, name, action):
    """Replace module.name (a function) by a version that runs `action(*args)` after it."""
    original = getattr(module, name)

    def patched(*a, **k):
        result = original(*a, **k)
        action(*a)
        return result

    setattr(module, name, patched)


def install_torchrun_probes():
    """Under torchrun: count each rank's gradient all-reduces; fail or Ctrl-C rank 1 alone."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    rank = int(os.environ.get("RANK", 0))

    def rank1_faults(t, *a):
        if rank == 1 and t.step == env("RANK1_FAIL_AT"):
            raise UserError("rank 1 cannot go on")
        if rank == 1 and t.step == env("RANK1_KILL_AT"):
            kill()  # SIGKILL: rank 0 finds its peer gone in the next collective
        if rank == 1 and t.step == env("RANK1_CTRL_C_AT"):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, as torchrun passes it on, to rank 1 only
    before(Trainer, "optimizer_step", rank1_faults)
    if not os.environ.get("PROBE_OUT"):
        return

    def count_all_reduces(t, *a):
        forwards, calls = [0], []
        t.step_model.register_forward_pre_hook(lambda m, i: forwards.__setitem__(0, forwards[0] + 1))

        def hook(state, bucket):
            calls.append(forwards[0])
            return default_hooks.allreduce_hook(state, bucket)
        t.step_model.register_comm_hook(None, hook)
        t._probe = {"forwards": forwards, "calls": calls, "step_ends": []}
    after(Trainer, "__init__", count_all_reduces)
    after(Trainer, "optimizer_step", lambda t, *a: t._probe["step_ends"].append(t._probe["forwards"][0]))

    def report(t, *a):
        with open(os.path.join(os.environ["PROBE_OUT"], f"rank{rank}.json"), "w") as f:
            json.dump({"calls": t._probe["calls"], "step_ends": t._probe["step_ends"],
                       "seed": torch.initial_seed()}, f)
    after_function(loop, "train", lambda t, *a: report(t))


def install_shard_probe():
    """PROBE_SHARDS=dir: each rank writes shardsN.json, the bytes of weights and moments it holds (--fsdp)."""
    if not os.environ.get("PROBE_SHARDS"):
        return
    from torch.distributed.tensor import DTensor

    def local(t):
        t = t.to_local() if isinstance(t, DTensor) else t
        return t.numel() * t.element_size()

    def whole(t):
        return t.numel() * t.element_size()

    def report(t, *a):
        moments = [m for s in t.optimizer.state.values() for k, m in s.items() if k in ("exp_avg", "exp_avg_sq")]
        rank = int(os.environ.get("RANK", 0))
        with open(os.path.join(os.environ["PROBE_SHARDS"], f"shards{rank}.json"), "w") as f:
            json.dump({"weights": sum(local(p) for p in t.model.parameters()),
                       "weights_whole": sum(whole(p) for p in t.model.parameters()),
                       "moments": sum(local(m) for m in moments), "moments_whole": sum(whole(m) for m in moments)}, f)
    after_function(loop, "train", lambda t, *a: report(t))


def install():
    install_shard_probe()
    install_run_faults()
    install_torchrun_probes()

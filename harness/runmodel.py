"""The model of a run directory, whatever its run's status: finished, stopped, or still going.

A finished run leaves its model in OUT/model.safetensors. A run stopped before its end
(Ctrl-C, SIGTERM, a kill, a NaN) or still training has none yet, but it has something
as good: OUT/resume.pt, the resumable state it saved last (at the stop, and every
--save-every steps). That state holds the weights of its step next to AdamW's moments,
so the stopped run can be evaluated, sampled and plotted as it is, at no extra disk
cost: no second copy of the weights is written at the stop.

    finished run, done        OUT/model.safetensors
    checkpoint-<step>/        its model.safetensors (the weights of that step)
    interrupted, stopped,     OUT/resume.pt: the weights of the step it saved, read with
    failed, running           mmap, so AdamW's moments (two thirds of the file) stay on disk
    any other model folder    its model.safetensors (gpt2, a downloaded model, ...)

Every command that needs the model of a directory goes through `locate` (cheap: which
file, which step, before any work) and `load` (the GPT2 itself). `Found.at` says which
step the user is looking at ("step 120 of 600, interrupted"); evaluate.py prints it
with every result of a run that is not finished.
"""

import os
from dataclasses import dataclass

import torch

from gpt2.config import GPT2Config
from gpt2.errors import UserError
from gpt2.files import read_json
from gpt2.lora import add_lora, merged_model
from gpt2.model import GPT2
from gpt2.weights import load_checkpoint, weight_files

from .hub import resolve
from .outdir import run_status

STATE = "resume.pt"
UNFINISHED = ("running", "saving", "stopped", "failed", "interrupted")
LORA_KEYS = ("rank", "alpha", "dropout", "targets")  # lora.LoRAConfig, as checkpoint.py keeps it


@dataclass
class Found:
    """Where the weights of one MODEL argument are, and which step of which run they are."""
    name: str                # as the user gave it
    directory: str
    state: str | None        # the resume.pt the weights come from; None: model.safetensors
    status: str | None       # the run's: "finished", "interrupted", ...; None: not a run of train.py
    step: int | None         # the optimizer step of these weights, where known
    total: int | None        # the run's planned steps, where known
    n_positions: int         # the model's context, for the block size

    def at(self) -> str | None:
        """"step 120 of 600, interrupted" (None for a model that is not a run's)."""
        if self.step is None:
            return self.status
        of = f" of {self.total}" if self.total else ""
        return f"step {self.step}{of}" + (f", {self.status}" if self.status else "")

    def tokenizer_dir(self) -> str:
        """Where the tokenizer is: the model directory's own files; for weights read from a state (a
        stopped run saved no model directory yet, and files in OUT may be an older run's), those of
        the model the run started from, as train.py read them."""
        if self.state is None:
            return self.directory
        run_args = read_json(os.path.join(self.directory, "run_args.json"), {}, kind=dict)
        if isinstance(run_args.get("model"), str):
            try:  # the same lookup train.py made (a local folder, or weights/)
                return resolve(run_args["model"], run_args.get("weights_dir"))
            except UserError:
                pass
        return self.directory  # Tokenizer.for_checkpoint then falls back to GPT-2's


def locate(name: str, directory: str) -> Found:
    """Which weights `evaluate.py NAME` means, checked before any work; a one-line UserError if none."""
    status = run_status(directory)
    state_word = status.get("status")
    weights, _ = weight_files(directory)  # model.safetensors, or the shards of its index
    has_weights = os.path.isfile(weights)
    state = os.path.join(directory, STATE)
    if state_word in UNFINISHED or (not has_weights and os.path.isfile(state)):
        if os.path.isfile(state):
            return _from_state(name, directory, state, state_word or "unfinished")
        raise UserError(no_model_reason(name, status, has_weights))
    if not has_weights:
        raise UserError(no_model_reason(name, status, has_weights))
    config = GPT2Config.from_json(os.path.join(directory, "config.json"))
    step, total, word = _finished_step(directory)
    return Found(name, directory, None, word, step, total, config.n_positions)


def load(found: Found) -> GPT2:
    """The GPT2 of `found` (eval mode is the caller's business)."""
    if found.state is None:
        return load_checkpoint(found.directory)
    s = _read_state(found.state)
    model = GPT2(GPT2Config.from_dict(s["model_config"], where=found.state))
    if s.get("lora"):  # the state holds the frozen weights and the adapters: merged, as train.py saves
        add_lora(model, **{k: s["lora"][k] for k in LORA_KEYS})
    try:
        model.load_state_dict(s["model"])
    except (RuntimeError, KeyError, TypeError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"{found.state}: its weights do not fit its model ({reason})") from None
    return merged_model(model) if s.get("lora") else model


def no_model_reason(name, status, has_weights) -> str:
    """Why a directory has no model to load, and what to do about it, in one line."""
    word = status.get("status")
    reason = f": {status['reason']}" if status.get("reason") else ""
    why = f" (status.json: {word}{reason})" if word else ""
    if word is None:
        return f"{name}: no model.safetensors in this directory, so no model to load"
    if word == "running":
        return (f"{name}: its run is still going and has saved no state yet{why}; Ctrl-C saves one (--resume "
                f"continues), and --save-every N saves one every N steps")
    if has_weights:
        return (f"{name}: its run is not finished and left no resumable state{why}; its model.safetensors may "
                f"not be the run's")
    return (f"{name}: its run stopped before it saved any state{why}, so there is no model to load; --save-every N "
            f"saves one every N steps")


def _read_state(path) -> dict:
    """resume.pt, memory-mapped: only the tensors used (the weights) are read from disk."""
    try:
        s = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise UserError(f"{path}: not a readable training state ({type(e).__name__})") from None
    if not (isinstance(s, dict) and isinstance(s.get("model"), dict) and isinstance(s.get("model_config"), dict)
            and isinstance(s.get("step"), int) and isinstance(s.get("lora"), (dict, type(None)))
            and all(k in (s["lora"] or LORA_KEYS) for k in LORA_KEYS)):
        raise UserError(f"{path}: not a training state of train.py (no weights, model config or step)")
    return s


def _from_state(name, directory, path, word) -> Found:
    s = _read_state(path)
    config = GPT2Config.from_dict(s["model_config"], where=path)
    total = read_json(os.path.join(directory, "run_args.json"), {}, kind=dict).get("total_steps")
    return Found(name, directory, path, word, s["step"], total if isinstance(total, int) else None,
                 config.n_positions)


def _finished_step(directory) -> tuple:
    """(step, planned steps, "finished") of a finished run or a checkpoint folder; Nones for a plain model."""
    trainer_state = read_json(os.path.join(directory, "trainer_state.json"), {}, kind=dict)
    if isinstance(trainer_state.get("global_step"), int):  # a checkpoint-<step>/ folder of a run
        total = trainer_state.get("max_steps")
        return trainer_state["global_step"], total if isinstance(total, int) else None, "a checkpoint"
    history = read_json(os.path.join(directory, "log_history.json"), [], kind=list)
    steps = [e["step"] for e in history if isinstance(e, dict) and isinstance(e.get("step"), int)]
    run_args = read_json(os.path.join(directory, "run_args.json"), {}, kind=dict)
    total = run_args.get("total_steps") if isinstance(run_args.get("total_steps"), int) else None
    if not steps and total is None:
        return None, None, None  # not a run of train.py: nothing to say
    if run_args.get("save_best"):  # the weights of the best evaluation, not of the last step
        return None, total, "finished, the best evaluation's weights (--save-best)"
    # Every planned step ran, unless --patience stopped the run early: then at its last log line.
    step = steps[-1] if (run_args.get("patience") and steps) or total is None else total
    return step, total, "finished"

"""checkpoint-<step>/ folders, as run_clm's Trainer leaves them (--save-every / --save_steps).

A run_clm user expects `--save_steps 50` to leave, every 50 steps, a folder that is a
model in its own right:

    OUT/checkpoint-50/
        model.safetensors, config.json   the weights of step 50, Hugging Face's layout:
        vocab.json, merges.txt           evaluate.py and transformers open the folder as a model
        run_args.json                    the run's flags, so evaluate.py knows its validation text
        trainer_state.json               step, epoch, log history so far (as the Trainer writes it)
        resume.pt                        the resumable state beside it (--resume-from-checkpoint)

and `--save_total_limit N` to keep the newest N of them. This module lays out those
folders; the loop decides when to save (gpt2/loop.py), harness/hooks.py writes the
folder, and gpt2/checkpoint.py says what the state holds.

A folder is written whole or not at all: everything goes into checkpoint-<step>.tmp-<pid>
first, which is renamed when complete (a rename is atomic); a folder is removed
(--save-total-limit) the other way round: renamed to a temporary name, then deleted.
A kill mid-save or mid-removal leaves only a temporary folder, which the next run
removes (outdir.RunDir.claim); so every checkpoint-<step>/ that exists is complete.
(OUT/resume.pt, which --resume reads, is written at every save too: the same state as
the newest folder's, under a second name.)
"""

import os
import re
import shutil

from gpt2.files import write_json

PATTERN = re.compile(r"checkpoint-(\d+)")
STATE = "resume.pt"


def folder(out, step) -> str:
    return os.path.join(out, f"checkpoint-{step}")


def checkpoints(out) -> list[tuple[int, str]]:
    """[(step, folder)] of OUT's complete checkpoint folders, oldest first."""
    if not os.path.isdir(out):
        return []
    found = [(int(m[1]), os.path.join(out, name)) for name in os.listdir(out) if (m := PATTERN.fullmatch(name))]
    return sorted((step, path) for step, path in found if os.path.isdir(path))


def write(out, step, save_model, save_state, run_args, trainer_state) -> str:
    """OUT/checkpoint-<step>/, written whole (see the module docstring); its path.

    save_model(directory) writes the model files (weights, config, tokenizer);
    save_state(path) the resumable state. A folder of that step already there (a run
    resumed from an older state, passing the same step again) is replaced.
    """
    final = folder(out, step)
    tmp = f"{final}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        save_model(tmp)
        write_json(os.path.join(tmp, "run_args.json"), run_args)
        write_json(os.path.join(tmp, "trainer_state.json"), trainer_state)
        save_state(os.path.join(tmp, STATE))
        if os.path.isdir(final):
            remove(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def rotate(out, limit, keep=()) -> list[str]:
    """Remove all but the newest `limit` checkpoint folders (never those in `keep`); the removed.

    --save_total_limit, as the Trainer counts it: folders, each a model and its state.
    """
    folders = [path for _, path in checkpoints(out)]
    protected = {os.path.abspath(k) for k in keep}
    removed = [path for path in folders[:max(0, len(folders) - limit)] if os.path.abspath(path) not in protected]
    for path in removed:
        remove(path)
    return removed


def remove(path):
    """Remove a checkpoint folder, never leaving half of it under its name: it is first
    renamed to a temporary name (atomic), then deleted. A kill in the middle leaves a
    <name>.tmp-<pid> folder, which the next run removes, never a checkpoint-<step>/ that
    lacks its weights or its tokenizer."""
    doomed = f"{path}.removed.tmp-{os.getpid()}"  # not write()'s name: that one may hold the new folder
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    shutil.rmtree(doomed)

"""Shared test helpers: tiny random checkpoints written by transformers itself."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = ROOT / "weights" / "gpt2"

TINY = dict(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=4)


def hf_model(seed=0, **shape):
    """A random transformers.GPT2LMHeadModel of the given shape, dropout 0, eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(**shape, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    cfg._attn_implementation = "eager"  # the reference: plain matmul-softmax attention
    model = GPT2LMHeadModel(cfg)
    # transformers initialises biases and LayerNorms to 0/1; randomise them too so that
    # a mistake in loading any tensor shows up in the logits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.normal_(0, 0.1).add_(1.0 if "weight" in name else 0.0)
    return model.eval()


def save_hf(model, directory, with_tokenizer=True):
    model.save_pretrained(directory)
    if with_tokenizer:
        for f in ("vocab.json", "merges.txt"):
            shutil.copy(TOKENIZER_DIR / f, os.path.join(directory, f))
    return str(directory)


def write_text(path, n_lines=300, seed=0):
    """Short lines of a 14-word vocabulary, with a blank line every 7th (~2,000 tokens for 300 lines)."""
    rng = np.random.default_rng(seed)
    words = "the model reads text and learns which token comes next in every line".split()
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n_lines):
            f.write(" ".join(rng.choice(words, size=rng.integers(0, 12))) + ("\n" if i % 7 else "\n\n"))
    return str(path)


def make_unreadable(path):
    """chmod 0, or skip the test where this user reads any file anyway (root)."""
    os.chmod(path, 0)
    try:
        open(path, "rb").close()
    except PermissionError:
        return
    pytest.skip("this user reads any file (root)")


def deny_open(monkeypatch, path):
    """open(path) raises PermissionError, as for another user's file (the tests may run as root,
    whom file permissions do not stop)."""
    import builtins

    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        if os.fspath(file) == os.fspath(path):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)


@pytest.fixture(autouse=True, scope="session")
def temp_folder_inside_basetemp(tmp_path_factory):
    """The system temp folder, for the tests and their subprocesses, is a folder of pytest's own.

    What a library writes there (transformers' Trainer, torch's compile cache, tempfile
    in our code) is then removed with pytest's folders (pytest.ini: kept only for failed
    tests), instead of piling up in /tmp run after run.
    """
    folder = str(tmp_path_factory.mktemp("system-temp"))
    patch = pytest.MonkeyPatch()
    patch.setenv("TMPDIR", folder)  # subprocesses (train.py, torchrun)
    patch.setattr(tempfile, "tempdir", folder)  # this process
    yield folder
    patch.undo()


@pytest.fixture
def tiny_ckpt(tmp_path):
    """A directory with a tiny random GPT-2 saved by transformers, plus tokenizer files."""
    return save_hf(hf_model(**TINY), tmp_path / "tiny")


# --- the loop in this process -------------------------------------------------------

def train_loop(model, blocks, cfg, val_blocks=None, out_dir=None):
    """Trainer + gpt2.loop.train as train.py runs them: (trainer, history, reason, metrics).

    Without out_dir, the base Hooks, silenced (nothing is written); with it, the run
    directory's hooks, so that --save-every and --save-best write resume.pt and best/.
    """
    from dataclasses import replace
    from types import SimpleNamespace

    from gpt2 import loop
    from gpt2.trainer import Trainer
    from harness.hooks import RunHooks
    from harness.report import Logger

    t = Trainer(model, blocks, cfg, torch.device("cpu"))
    quiet = lambda *a, **k: None  # noqa: E731
    if out_dir is None:
        hooks = loop.Hooks()
        hooks.print = quiet
    else:
        run = SimpleNamespace(model=model, dist=t.dist, data_info={}, cfg=replace(cfg, progress=False),
                              tokenizer=SimpleNamespace(files=[]))
        hooks = RunHooks(str(out_dir), run, Logger(print_fn=quiet), SimpleNamespace(requested=False), base_model=None)
        hooks.print = quiet
    history = loop.History(t.device)
    reason, metrics = loop.train(t, val_blocks, hooks, history)
    return t, history, reason, metrics


# --- train.py in a subprocess, with faults injected ---------------------------------

# train.py with tests/injections.py's faults installed, each switched on by its
# environment variable (KILL_AT, CTRL_C_AT, ...): run it with run_python.
INJECTED_TRAIN = ROOT / "tests" / "injected_train.py"


def run_python(script, *args, env=None, timeout=300):
    """Run a Python script (train.py, or INJECTED_TRAIN) with 1 thread; the CompletedProcess."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)

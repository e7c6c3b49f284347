"""train.py under torchrun: 2 CPU processes (gloo) against 1 process, through the real CLI.

What is checked:
* 2 processes x accumulation 1 end with the weights of 1 process x accumulation 2
  (same data order, dropout 0), over two epochs whose last step leaves rank 1 with no
  micro-batch (it joins the all-reduce with a zero-weight one); evaluation (sharded,
  an odd number of blocks, then summed) gives the same numbers; rank 0 alone prints.
* Gradients are all-reduced once per optimizer step, after its last micro-batch
  (counted by a DDP communication hook).
* A run killed after a checkpoint, or stopped by a Ctrl-C that reached one process
  only, and resumed under torchrun ends bit-exact with an uninterrupted one, dropout
  included: each process seeds its own dropout stream, and its random state is saved
  and restored.
* An error on one rank ends the whole run quickly with that rank's message.
"""

import json
import math
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import INJECTED_TRAIN, ROOT


def write_words(path, n_lines, seed):
    rng = np.random.default_rng(seed)
    words = "the model reads text and learns which token comes next in every line".split()
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n_lines):
            f.write(" ".join(rng.choice(words, size=30)) + "\n")
    return str(path)


@pytest.fixture
def data(tmp_path):
    # 10 training blocks of 32 tokens, 5 validation blocks
    return {"train": write_words(tmp_path / "train.txt", 11, 0), "val": write_words(tmp_path / "val.txt", 6, 1)}


def run(cmd, check=True, timeout=120, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    with subprocess.Popen([*map(str, cmd)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=ROOT, env=env) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # SIGTERM, not SIGKILL: torchrun then stops its workers (each in its own
            # session, out of reach of a kill of torchrun alone) before it exits.
            proc.terminate()
            out, err = proc.communicate(timeout=60)
            pytest.fail(f"timed out (a hang?):\n{out}\n{err}")
    p = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def torchrun(script, *args, **kw):
    # --standalone: a local rendezvous on a free port, so tests can run side by side.
    return run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                script, "--no-progress", *args], **kw)


def common(tiny_ckpt, data, tmp_path):
    return ["--model", tiny_ckpt, "--train-file", data["train"], "--validation-file", data["val"],
            "--block-size", 32, "--batch-size", 2, "--lr", "1e-2", "--cache-dir", tmp_path / "cache"]


def same_weights(a, b, tol=0.0):
    a, b = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a) <= tol


def test_two_processes_train_like_one_with_accumulation(tiny_ckpt, data, tmp_path):
    args = [*common(tiny_ckpt, data, tmp_path), "--epochs", 2, "--dropout", 0, "--log-every", 2,
            "--eval-every", 3, "--save-best"]
    one = run([sys.executable, "train.py", "--no-progress", *args, "--grad-accum", 2, "--out", tmp_path / "one"])
    two = torchrun("train.py", *args, "--grad-accum", 1, "--out", tmp_path / "two")

    # The case this test is about: an odd number of micro-batches per epoch, so the last
    # step of each epoch has one micro-batch, for rank 0; rank 1 runs a zero-weight one.
    n_train, n_val = map(int, re.search(r"-> (\d+) blocks of 32.*-> (\d+) blocks", one.stdout).groups())
    assert math.ceil(n_train / 2) % 2 == 1 and n_val % 2 == 1, (n_train, n_val)

    assert "effective batch 4 = 2 micro-batch x 1 accumulation x 2 process(es)" in two.stdout
    for block in ("***** train metrics *****", "***** eval metrics *****", "saved to"):
        assert two.stdout.count(block) == 1, two.stdout  # rank 0 alone prints
    assert same_weights(tmp_path / "one", tmp_path / "two", tol=1e-5)

    e1, e2 = (json.load(open(tmp_path / d / "eval_results.json")) for d in ("one", "two"))
    assert e2["eval_loss"] == pytest.approx(e1["eval_loss"], abs=1e-6)
    assert e2["eval_accuracy"] == e1["eval_accuracy"] > 0
    assert e2["eval_samples"] == e1["eval_samples"] == n_val
    h1, h2 = (json.load(open(tmp_path / d / "log_history.json")) for d in ("one", "two"))
    assert [sorted(e) for e in h1] == [sorted(e) for e in h2]  # same logs and evaluations, same steps
    for a, b in zip(h1, h2):
        for k in ("loss", "eval_loss"):
            if k in a:
                assert b[k] == pytest.approx(a[k], abs=1e-5), (a, b)
    assert json.load(open(tmp_path / "two" / "run_args.json"))["world_size"] == 2
    assert "restored the best checkpoint" in two.stdout


def test_resume_under_torchrun_is_bit_exact_with_dropout(tiny_ckpt, data, tmp_path):
    probe = INJECTED_TRAIN  # tests/injections.py: PROBE_OUT, KILL_AT, RANK1_CTRL_C_AT, RANK1_FAIL_AT
    args = [*common(tiny_ckpt, data, tmp_path), "--max-steps", 6, "--grad-accum", 3, "--dropout", 0.1,
            "--save-every", 2, "--log-every", 1]
    probe_env = {"PROBE_OUT": str(tmp_path)}  # torchrun passes the environment on to the workers
    torchrun(probe, *args, "--out", tmp_path / "straight", env=probe_env)
    # Gradients were all-reduced in every step, after its last forward pass, never
    # after another one (no_sync). 10 blocks, 6 micro-batches of 2 per step: every step
    # is an epoch of 5 micro-batches, 3 on rank 0 and 2 on rank 1.
    seeds = []
    for rank, per_step in ((0, 3), (1, 2)):
        probe_out = json.load(open(tmp_path / f"rank{rank}.json"))
        assert probe_out["step_ends"] == [per_step * s for s in range(1, 7)]
        assert sorted(set(probe_out["calls"])) == probe_out["step_ends"], probe_out
        seeds.append(probe_out["seed"])
    assert seeds[0] != seeds[1]  # each process draws its own dropout masks
    straight_history = json.load(open(tmp_path / "straight" / "log_history.json"))

    # Killed right after the checkpoint of step 4; or Ctrl-C reaching rank 1 alone
    # during step 3: both processes must agree to stop after that step (rank 0 would
    # otherwise wait for ever in step 4's all-reduce) and save a state.
    for stop, stop_env, at in (("killed", {"KILL_AT": "4"}, 4), ("ctrl-c", {"RANK1_CTRL_C_AT": "2"}, 3)):
        out = tmp_path / stop
        p = torchrun(probe, *args, "--out", out, env={**probe_env, **stop_env}, check=False)
        assert p.returncode != 0
        if stop == "ctrl-c":
            assert p.stdout.count(f"interrupted at step {at}") == 1, p.stdout + p.stderr
        assert not (out / "model.safetensors").exists()
        state = torch.load(out / "resume.pt", weights_only=True)
        assert state["step"] == at and state["world_size"] == 2
        # one random state per process, and they differ: each draws its own dropout masks
        assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0]["cpu"], state["rng"][1]["cpu"])

        p = torchrun(probe, *args, "--out", out, "--resume", env=probe_env)
        assert p.stdout.count(f"resuming at step {at} of 6") == 1
        assert same_weights(tmp_path / "straight", out), stop
        assert json.load(open(out / "log_history.json")) == straight_history, stop


def test_ctrl_c_on_one_rank_between_two_logs(tiny_ckpt, data, tmp_path):
    """Ctrl-C reaching rank 1 alone while steps are not logged yet: rank 0 must not add
    up those losses in a collective that rank 1, saving its state, never joins (it ended
    in a crash, with no state saved). The resumed run matches an uninterrupted one."""
    probe = INJECTED_TRAIN  # tests/injections.py: PROBE_OUT, KILL_AT, RANK1_CTRL_C_AT, RANK1_FAIL_AT
    args = [*common(tiny_ckpt, data, tmp_path), "--max-steps", 4, "--dropout", 0.1, "--log-every", 4]
    torchrun(probe, *args, "--out", tmp_path / "straight")
    out = tmp_path / "ctrl-c"
    p = torchrun(probe, *args, "--out", out, env={"RANK1_CTRL_C_AT": "1"}, check=False)
    assert p.stdout.count("interrupted at step 2") == 1, p.stdout + p.stderr
    assert torch.load(out / "resume.pt", weights_only=True)["window_steps"] == 2
    torchrun(probe, *args, "--out", out, "--resume")
    assert same_weights(tmp_path / "straight", out)
    assert json.load(open(out / "log_history.json")) == json.load(open(tmp_path / "straight" / "log_history.json"))


def test_an_error_on_one_rank_ends_the_run(tiny_ckpt, data, tmp_path):
    probe = INJECTED_TRAIN  # tests/injections.py: PROBE_OUT, KILL_AT, RANK1_CTRL_C_AT, RANK1_FAIL_AT
    t0 = time.time()
    p = torchrun(probe, *common(tiny_ckpt, data, tmp_path), "--max-steps", 6, "--out", tmp_path / "o",
                 env={"RANK1_FAIL_AT": "2"}, check=False, timeout=60)
    # rank 0 waits in the all-reduce for rank 1, which has exited: torchrun stops it at
    # once, long before the process group's 10-minute timeout.
    assert p.returncode != 0 and time.time() - t0 < 30
    assert "error: rank 1 cannot go on" in p.stderr
    assert not (tmp_path / "o" / "model.safetensors").exists()

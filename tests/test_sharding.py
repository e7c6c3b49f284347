"""train.py --fsdp under torchrun: 2 sharded CPU processes (gloo) against 1 plain process, through the real CLI.

What is checked:
* 2 sharded processes x accumulation 2 end with the weights, logged losses and
  evaluations of 1 process x accumulation 4 (dropout 0, clipping active, weight
  decay, the chunked loss); the saved model is one ordinary Hugging Face file that
  transformers opens, the tied head stored once; each process held half the weights.
* --offload on one process (FSDP over a group of one) trains bit for bit as without.
* A sharded run killed after a save, or stopped by a Ctrl-C on one rank, resumes
  through its DCP shards bit-exact (dropout on); its checkpoint-<step>/ folder is a
  model that evaluate.py opens without torchrun.
* 4 sharded processes (marked many_processes) and two "nodes" of one process each
  (torchrun's c10d rendezvous on localhost) train as one process does.
* A SIGTERM to torchrun (a scheduler's) stops a sharded run with a saved state.
* Bad input, one line each: --fsdp on one process, impossible combinations, a
  missing or truncated shard, a state from another torch version, a batch that does
  not divide.
"""

import json
import os
import sys

import pytest
import torch

from conftest import INJECTED_TRAIN
from test_distributed import common, data, run, same_weights  # noqa: F401  (data: a fixture)


def torchrun(script, *args, nproc=2, **kw):
    return run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                script, "--no-progress", *args], **kw)


def losses(path):
    return [{k: v for k, v in e.items() if k in ("loss", "eval_loss", "grad_norm", "step")}
            for e in json.load(open(path / "log_history.json"))]


def assert_same_history(a, b, tol=1e-5):
    """The same log lines; losses within tol. grad_norm within 2e-4 relative unless tol is 0: torch's fp32
    norm of the 1.6M-number wte gradient is itself 6e-5 (relative) off the exact one on this CPU, and two
    shards' norms (each half as long) round differently from one tensor's."""
    ha, hb = losses(a), losses(b)
    assert [sorted(e) for e in ha] == [sorted(e) for e in hb]
    for x, y in zip(ha, hb):
        for k in x:
            close = pytest.approx(x[k], rel=2e-4) if k == "grad_norm" and tol else pytest.approx(x[k], abs=tol)
            assert y[k] == close, (x, y)


def test_two_sharded_processes_train_like_one_with_accumulation(tiny_ckpt, data, tmp_path):
    # 20 steps; clipping (--max-grad-norm 0.5) and weight decay act on the whole, unsharded gradient
    args = [*common(tiny_ckpt, data, tmp_path), "--max-steps", 20, "--dropout", 0, "--log-every", 1,
            "--eval-every", 10, "--save-best", "--max-grad-norm", 0.5, "--weight-decay", 0.1, "--loss-chunk", 16,
            "--precision", "fp32"]  # bf16: FSDP gathers the weights in bf16, autocast does not (sharding.py)
    one = run([sys.executable, "train.py", "--no-progress", *args, "--grad-accum", 4, "--out", tmp_path / "one"])
    two = torchrun(INJECTED_TRAIN, *args, "--fsdp", "full_shard", "--grad-accum", 2, "--out", tmp_path / "two",
                   env={"PROBE_SHARDS": str(tmp_path)})
    assert "effective batch 8 = 2 micro-batch x 2 accumulation x 2 process(es)" in two.stdout
    assert two.stdout.count("***** eval metrics *****") == 1
    assert two.stdout.count("restored the best checkpoint") == 1  # best/ gathered, then loaded into the shards
    # Weights within 2e-5 (measured: 1.03e-5 at most, a c_attn bias, after 20 steps at lr 1e-3).
    # The clipping factor 0.5 / |g| comes from norms that round differently (see assert_same_history:
    # 6e-5 relative), and AdamW turns that into a small share of each step where |g| is tiny.
    assert same_weights(tmp_path / "one", tmp_path / "two", tol=2e-5)
    assert_same_history(tmp_path / "one", tmp_path / "two")
    e1, e2 = (json.load(open(tmp_path / d / "eval_results.json")) for d in ("one", "two"))
    assert e2["eval_loss"] == pytest.approx(e1["eval_loss"], abs=1e-5)
    assert e2["eval_accuracy"] == e1["eval_accuracy"]

    # An ordinary Hugging Face folder: one file, the tied head once, and transformers reads it.
    from safetensors import safe_open
    from transformers import GPT2LMHeadModel
    with safe_open(str(tmp_path / "two" / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys() and "transformer.wte.weight" in f.keys()
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "two")
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
    assert not [n for n in os.listdir(tmp_path / "two") if n.startswith("shards-")]

    # Each process held half of every weight, and of AdamW's moments (PROBE_SHARDS, injections.py)
    held = [json.load(open(tmp_path / f"shards{r}.json")) for r in (0, 1)]
    for part in ("weights", "moments"):
        whole = held[0][f"{part}_whole"]
        assert sum(h[part] for h in held) == whole and max(h[part] for h in held) <= whole / 2 + 4 * 64 * 32


def test_offload_on_one_process_trains_as_without(tiny_ckpt, data, tmp_path):
    args = [*common(tiny_ckpt, data, tmp_path), "--max-steps", 4, "--dropout", 0, "--log-every", 1,
            "--grad-accum", 2, "--precision", "fp32"]
    run([sys.executable, "train.py", "--no-progress", *args, "--out", tmp_path / "plain"])
    run([sys.executable, "train.py", "--no-progress", *args, "--offload", "--out", tmp_path / "offload"])
    assert same_weights(tmp_path / "plain", tmp_path / "offload", tol=0.0)
    assert_same_history(tmp_path / "plain", tmp_path / "offload", tol=0.0)


@pytest.mark.precision  # bf16 (weights gathered in bf16) or fp32, as auto picks: bit-exact either way
def test_sharded_resume_is_bit_exact_with_dropout(tiny_ckpt, data, tmp_path):
    args = [*common(tiny_ckpt, data, tmp_path), "--max-steps", 6, "--grad-accum", 2, "--dropout", 0.1,
            "--save-every", 2, "--log-every", 1, "--fsdp"]
    torchrun(INJECTED_TRAIN, *args, "--out", tmp_path / "straight")
    straight = json.load(open(tmp_path / "straight" / "log_history.json"))

    # Killed right after the state of step 4; or Ctrl-C reaching rank 1 alone during step 3.
    for stop, stop_env, at in (("killed", {"KILL_AT": "4"}, 4), ("ctrl-c", {"RANK1_CTRL_C_AT": "2"}, 3)):
        out = tmp_path / stop
        p = torchrun(INJECTED_TRAIN, *args, "--out", out, env=stop_env, check=False)
        assert p.returncode != 0 and not (out / "model.safetensors").exists()
        state = torch.load(out / "resume.pt", weights_only=True)
        assert state["step"] == at and state["model"] == {} and len(state["rng"]) == 2
        assert sorted(n for n in os.listdir(out) if n.startswith("shards-")) == [f"shards-{at}"]
        p = torchrun(INJECTED_TRAIN, *args, "--out", out, "--resume")
        assert p.stdout.count(f"resuming at step {at} of 6") == 1
        assert same_weights(tmp_path / "straight", out), stop
        assert json.load(open(out / "log_history.json")) == straight, stop
        assert not [n for n in os.listdir(out) if n.startswith("shards-")]  # the run is complete

    # checkpoint-<step>/ is a model of its own: evaluate.py opens it without torchrun
    folder = tmp_path / "straight" / "checkpoint-6"
    assert (folder / "shards-6" / ".metadata").exists()
    p = run([sys.executable, "evaluate.py", folder, "--validation-file", data["val"], "--block-size", 32,
             "--json", tmp_path / "e.json"])
    assert "eval_loss" in p.stdout


def test_sharded_flags_refused_in_one_line(tmp_path):
    for flags, says in ((["--fsdp"], "start it with torchrun --nproc_per_node=N"),
                        (["--fsdp", "hybrid_shard"], "hybrid_shard is not built here"),
                        (["--offload", "--lora", "8"], "--offload does not work with --lora"),
                        (["--offload", "--fp16"], "--offload does not work with --fp16"),
                        (["--offload", "--lr", "1e-3,1e-4"], "a sweep of learning rates")):
        p = run([sys.executable, "train.py", *flags, "--out", tmp_path / "o"], check=False)
        assert p.returncode != 0 and says in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert not (tmp_path / "o").exists()


def test_bad_sharded_states_are_refused_in_one_line(tiny_ckpt, data, tmp_path):
    """A sharded state (--offload: FSDP on one process, the same DCP files) killed after its step-2 save."""
    args = [*common(tiny_ckpt, data, tmp_path), "--max-steps", 4, "--grad-accum", 2, "--dropout", 0,
            "--save-every", 2, "--log-every", 1, "--precision", "fp32"]
    run([sys.executable, "train.py", "--no-progress", *args, "--offload", "--out", tmp_path / "straight"])
    out = tmp_path / "o"
    p = run([sys.executable, INJECTED_TRAIN, "--no-progress", *args, "--offload", "--out", out],
            env={"KILL_AT": "2"}, check=False)
    assert p.returncode != 0 and (out / "shards-2" / ".metadata").exists()
    state = torch.load(out / "resume.pt", weights_only=True)

    def refused(*flags, says, resume=("--resume",)):
        p = run([sys.executable, "train.py", "--no-progress", *args, *flags, "--out", out, *resume], check=False)
        assert p.returncode != 0 and says in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert torch.load(out / "resume.pt", weights_only=True)["step"] == 2  # nothing overwritten

    refused(says="written by a sharded run")  # without --offload
    refused("--offload", "--grad-accum", 3, says="grad_accum 3 x 1 process(es) (saved: 2 x 1)")
    torch.save({**state, "torch": "2.0.0"}, out / "resume.pt")
    refused("--offload", says="written by torch 2.0.0")
    torch.save(state, out / "resume.pt")
    shard = next(f for f in (out / "shards-2").iterdir() if f.suffix == ".distcp")
    whole = shard.read_bytes()
    shard.write_bytes(whole[:len(whole) // 2])  # truncated
    refused("--offload", says="a shard is missing or damaged")
    shard.unlink()
    refused("--offload", says="a shard is missing or damaged")
    shard.write_bytes(whole)

    # Killed while the shards of step 4 are written (every process done, not yet renamed): the state of
    # step 2 is whole, and the resumed run ends bit for bit as the uninterrupted one.
    killed = tmp_path / "k"
    p = run([sys.executable, INJECTED_TRAIN, "--no-progress", *args, "--offload", "--out", killed],
            env={"KILL_IN_SHARDS": "4"}, check=False)
    assert p.returncode != 0 and (killed / "shards-4.tmp").is_dir()
    assert torch.load(killed / "resume.pt", weights_only=True)["step"] == 2
    run([sys.executable, "train.py", "--no-progress", *args, "--offload", "--out", killed, "--resume"])
    assert same_weights(tmp_path / "straight", killed)
    assert not [n for n in os.listdir(killed) if n.startswith("shards-")]

    # The same state resumed on 2 sharded processes x accumulation 1: DCP re-cuts the shards
    torchrun("train.py", *args[:args.index("--grad-accum")], *args[args.index("--grad-accum") + 2:],
             "--grad-accum", 1, "--fsdp", "--out", out, "--resume")
    assert same_weights(tmp_path / "straight", out, tol=1e-5)


@pytest.mark.many_processes
def test_four_sharded_processes_train_like_one(tiny_ckpt, data, tmp_path):
    args = [*common(tiny_ckpt, data, tmp_path), "--max-steps", 20, "--dropout", 0, "--log-every", 1,
            "--max-grad-norm", 0.5, "--precision", "fp32"]
    run([sys.executable, "train.py", "--no-progress", *args, "--grad-accum", 4, "--out", tmp_path / "one"])
    torchrun("train.py", *args, "--fsdp", "--grad-accum", 1, "--out", tmp_path / "four", nproc=4, timeout=300)
    assert same_weights(tmp_path / "one", tmp_path / "four", tol=1e-5)
    assert_same_history(tmp_path / "one", tmp_path / "four")


@pytest.mark.many_processes  # two torchrun agents and their workers
def test_two_nodes_on_one_machine(tiny_ckpt, data, tmp_path):
    """torchrun's rendezvous across machines, as two "nodes" of one process each on localhost (and
    --checkpointing: each sharded block recomputed in backward, gathered again for it)."""
    import socket
    import subprocess

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    args = [*common(tiny_ckpt, data, tmp_path), "--max-steps", 6, "--dropout", 0, "--log-every", 1,
            "--precision", "fp32", "--no-progress"]
    run([sys.executable, "train.py", *args, "--grad-accum", 2, "--out", tmp_path / "one"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(r),
                               "--nproc_per_node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                               f"localhost:{port}", "train.py", *map(str, args), "--fsdp", "--checkpointing", "--out",
                               str(tmp_path / "nodes")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))
             for r in (0, 1)]
    try:
        outs = [n.communicate(timeout=300)[0] for n in nodes]
    finally:
        for n in nodes:  # a hang: SIGTERM, which torchrun passes on to its worker
            if n.poll() is None:
                n.terminate()
                n.communicate(timeout=60)
    assert all(n.returncode == 0 for n in nodes), outs
    assert "1 accumulation x 2 process(es)" in outs[0]
    assert same_weights(tmp_path / "one", tmp_path / "nodes", tol=1e-5)
    assert_same_history(tmp_path / "one", tmp_path / "nodes")


def test_sigterm_to_torchrun_saves_a_sharded_state(tiny_ckpt, data, tmp_path):
    """A scheduler's SIGTERM to torchrun (preemption, the end of a time limit): torchrun passes it on to its
    workers, which finish their step, save a sharded state and stop (docs/distributed.md)."""
    import signal
    import subprocess
    import time

    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
           "--no-progress", *map(str, common(tiny_ckpt, data, tmp_path)), "--max-steps", "100000", "--log-every", "1",
           "--fsdp", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        deadline = time.time() + 120
        while not ((out / "log.jsonl").exists() and (out / "log.jsonl").read_text().count("\n") >= 2):
            assert time.time() < deadline and proc.poll() is None, "no step logged"
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    status = json.load(open(out / "status.json"))
    assert status["status"] == "interrupted" and status["signal"] == "SIGTERM", output
    state = torch.load(out / "resume.pt", weights_only=True)
    assert state["step"] == status["step"] and (out / state["shards"] / ".metadata").exists()

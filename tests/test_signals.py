"""Stop signals other than Ctrl-C: SIGTERM, SIGHUP and SIGUSR1 keep what was earned.

`timeout`, `kill`, `docker stop`, Kubernetes and SLURM end a job with SIGTERM, a closed
SSH session with SIGHUP, and SLURM warns with SIGUSR1 before its time limit. Each must
mean what the first Ctrl-C means (harness/signals.py): the step finishes, resume.pt is
saved, one line says so, and the exit status is 128 + the signal's number; --resume then
finishes the run exactly as an uninterrupted one. During the final evaluation the model
is saved already: the run is "done" without it, and evaluate.py accepts the directory.

The signal is sent from outside, by this test, to a train.py process of its own (forked by
test_faults.py's helper, which has imported torch once; the closed terminal is a real
interpreter on a pseudo-terminal): an injected fault (tests/injections.py) makes step 2 leave a
marker file and wait, so that the signal lands in the middle of a step.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import INJECTED_TRAIN, ROOT
from test_faults import (base_args, cache, evaluate, ok, procs, run_status, state_step, temporaries,  # noqa: F401
                         text, tiny, train)

@pytest.fixture
def script():
    """train.py with tests/injections.py's faults: STEP_MARKER, SIGNAL_AT_EVAL + SIG, EVAL_FAILS."""
    return INJECTED_TRAIN


def signal_exit(p, sig, name):
    """Exit 128 + sig, the announcement naming the signal, no traceback."""
    assert p.returncode == 128 + sig, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    lines = [line for line in p.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(name), p.stderr


def send_during_step_2(procs, script, args, marker, sig):
    """Start train.py (a forked child of the test's helper: its own process), and send it `sig`
    from here, from outside, while it is in step 2; the job, to wait for."""
    job = procs.start(script, *args, env={"STEP_MARKER": str(marker)})
    deadline = time.time() + 120
    while not marker.exists():
        assert time.time() < deadline, job.stderr.read_text()
        time.sleep(0.05)
    os.kill(job.pid, sig)
    return job


def test_sigterm_from_outside_keeps_a_resumable_state_and_resume_is_exact(procs, script, tiny, text, cache,
                                                                           tmp_path):
    """SIGTERM (as `timeout` or `docker stop` sends it) to a real train.py during step 2: exit 143,
    resume.pt of step 2, status "interrupted"; --resume ends with the weights of a straight run."""
    out, marker = tmp_path / "out", tmp_path / "at-step-2"
    args = base_args(tiny, text, cache, out, 5)
    p = procs.wait(send_during_step_2(procs, script, args, marker, signal.SIGTERM))
    signal_exit(p, signal.SIGTERM, "SIGTERM")
    assert "--resume" in p.stdout
    assert state_step(out / "resume.pt") == 2
    assert run_status(out)["status"] == "interrupted"
    assert not (out / "model.safetensors").exists() and temporaries(out) == []
    # One thread each, as the interrupted run: the same arithmetic, so the same bits.
    p = ok(procs.run(ROOT / "train.py", *args, "--resume"))
    assert "resuming at step 2 of 5" in p.stdout
    ok(procs.run(ROOT / "train.py", *base_args(tiny, text, cache, tmp_path / "straight", 5)))
    a, b = load_file(str(out / "model.safetensors")), load_file(str(tmp_path / "straight" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (out / "resume.pt").exists() and not (out / "status.json").exists()


def test_sigterm_during_a_forward_pass_drops_the_step_and_resume_is_exact(procs, script, tiny, text, cache,
                                                                          tmp_path):
    """On the CPU a signal does not wait for the step's backward: SIGTERM during the forward pass of
    step 3 drops that step, resume.pt holds step 2 (and the random state from before step 3), and
    --resume ends with the weights of a straight run, bit for bit."""
    out = tmp_path / "out"
    args = [*base_args(tiny, text, cache, out, 5), "--dropout", "0.1"]  # dropout: the random state matters
    p = procs.run(script, *args, env={"SIGNAL_IN_FORWARD": "3", "SIG": str(int(signal.SIGTERM))})
    signal_exit(p, signal.SIGTERM, "SIGTERM")
    assert "interrupted at step 2" in p.stdout and state_step(out / "resume.pt") == 2
    ok(procs.run(ROOT / "train.py", *args, "--resume"))
    ok(procs.run(ROOT / "train.py", *[*base_args(tiny, text, cache, tmp_path / "straight", 5), "--dropout", "0.1"]))
    a, b = load_file(str(out / "model.safetensors")), load_file(str(tmp_path / "straight" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("sig,name", [(signal.SIGHUP, "SIGHUP"), (signal.SIGUSR1, "SIGUSR1")])
def test_sighup_and_sigusr1_mean_the_same(procs, script, tiny, text, cache, tmp_path, sig, name):
    """A closed SSH session (SIGHUP), SLURM's warning (SIGUSR1): resume.pt, exit 128 + the signal."""
    out, marker = tmp_path / "out", tmp_path / "at-step-2"
    p = procs.wait(send_during_step_2(procs, script, base_args(tiny, text, cache, out, 5), marker, sig))
    signal_exit(p, sig, name)
    assert state_step(out / "resume.pt") == 2
    status = run_status(out)
    assert status["status"] == "interrupted" and status["signal"] == name


def test_sigterm_during_the_final_evaluation_keeps_a_usable_model(capsys, procs, script, tiny, text, cache,
                                                                  tmp_path):
    """SIGTERM as the final evaluation starts: the model is saved, status "done" with a note,
    resume.pt gone, exit 143; evaluate.py measures the directory."""
    out = tmp_path / "out"
    p = procs.run(script, *base_args(tiny, text, cache, out, 3),
                  env={"SIGNAL_AT_EVAL": "1", "SIG": str(int(signal.SIGTERM))})
    signal_exit(p, signal.SIGTERM, "SIGTERM")
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "done" and "SIGTERM" in status["note"], status
    assert not (out / "resume.pt").exists() and (out / "model.safetensors").is_file()
    ok(evaluate(capsys, out, "--cache-dir", cache))


def test_final_evaluation_out_of_memory_keeps_a_usable_model(capsys, procs, script, tiny, text, cache, tmp_path):
    """Out of memory in the final evaluation (batch 8, training's 2): one line, exit 1, the run is
    "done" without eval results (not "failed"), and evaluate.py accepts it."""
    out = tmp_path / "out"
    p = procs.run(script, *base_args(tiny, text, cache, out, 3), env={"EVAL_FAILS": "1"})
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "final evaluation failed" in lines[0] and str(out) in lines[0], p.stderr
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "done" and "allocate memory" in status["note"], status
    assert (out / "all_results.json").is_file() and not (out / "eval_results.json").exists()
    ok(evaluate(capsys, out, "--cache-dir", cache))


def test_a_closed_terminal_keeps_a_resumable_state(script, tiny, text, cache, tmp_path):
    """A real hangup: train.py runs on a pseudo-terminal, as in an SSH session, and the terminal
    is closed during step 2. The kernel sends SIGHUP, and every later write to the terminal
    would fail (EIO): the run still saves resume.pt of step 2, records "interrupted", exits 129."""
    import fcntl
    import pty
    import termios

    out, marker = tmp_path / "out", tmp_path / "at-step-2"
    master, slave = pty.openpty()

    def own_terminal():  # a new session whose controlling terminal is the pty, as sshd sets up
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "STEP_MARKER": str(marker)}
    proc = subprocess.Popen([sys.executable, str(script), *base_args(tiny, text, cache, out, 5)], cwd=ROOT,
                            env=env, stdin=slave, stdout=slave, stderr=slave, preexec_fn=own_terminal)
    os.close(slave)
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert proc.poll() is None and time.time() < deadline, "the run never reached step 2"
            try:  # keep the terminal's buffer drained, as a terminal would
                os.read(master, 65536) if select_ready(master) else time.sleep(0.05)
            except OSError:
                time.sleep(0.05)
    finally:
        os.close(master)  # the SSH session ends: SIGHUP to the session
    assert proc.wait(timeout=120) == 128 + signal.SIGHUP
    assert state_step(out / "resume.pt") == 2
    status = run_status(out)
    assert status["status"] == "interrupted" and status["signal"] == "SIGHUP", status


def select_ready(fd) -> bool:
    import select
    return bool(select.select([fd], [], [], 0.05)[0])


def test_one_ctrl_c_before_the_run_is_not_called_twice(capsys):
    """A Ctrl-C while the model loads (no handler yet) is one Ctrl-C; a second signal says which."""
    from gpt2.errors import run_cli

    def main(argv):
        raise KeyboardInterrupt

    assert run_cli(main) == 130
    err = capsys.readouterr().err.strip()
    assert err == "interrupted (Ctrl-C): stopped at once", err

    def twice(argv):
        raise KeyboardInterrupt("SIGTERM twice")

    run_cli(twice)
    assert "SIGTERM twice" in capsys.readouterr().err

"""Faults a run must survive, or end in one line: never a traceback, never a lost run.

What is checked, against the real command lines (train.py, evaluate.py) on a tiny
model: Ctrl-C at every stage of a run keeps a resumable state or the trained model;
no state or model with a non-finite weight is ever written; a read-only or full disk
is refused before training or fails in one line with the previous state whole; a
second run on the same --out is refused; a directory never passes for a finished run
it is not; bad config.json / model.safetensors / resume.pt files, edited data, broken
downloads and odd command-line values are one line each; files are never left half
written and get the user's umask.

Three ways of running train.py are used, to keep the file fast (about 2 minutes on 2 cores):
* in this process (`cli`: run_cli(train.main, argv), as `python train.py` does, with
  the output captured), for every fault that needs no signal, kill, limit or other user;
* in a child process forked from a helper that has imported torch once (`Zygote`,
  `procs.run`): `python script args...` without the 5 s of interpreter start-up, for
  Ctrl-C, SIGKILL, a file-size limit (RLIMIT_FSIZE, set in the child) and a process that
  file permissions stop; the script is train.py, or train.py with faults injected
  (tests/injections.py, each switched on by an environment variable);
* a real interpreter (conftest.run_python, `run_proc`) for one Ctrl-C run, as a check
  that the forked children behave as real ones, and for arguments that are raw bytes.

A one-line error is: exit status as documented (2 for bad input, 1 for the machine's
OSError, 130 for Ctrl-C), exactly one line on stderr, no "Traceback".
"""

import json
import os
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import evaluate as evaluate_cli
import train as train_cli
from conftest import INJECTED_TRAIN, ROOT, TINY, hf_model, run_python, save_hf, write_text
from harness.compare import comparison_rows
from gpt2.errors import run_cli
from gpt2.model import GPT2
from harness.outdir import run_status
from gpt2.trainer import Trainer
from gpt2.weights import load_checkpoint


# --- helpers ---------------------------------------------------------------------------

def reverse_lines(path):
    """The same lines in the opposite order: the same number of tokens, other blocks."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(reversed(lines))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random GPT-2 checkpoint with tokenizer files (read only by the tests)."""
    return save_hf(hf_model(**TINY), tmp_path_factory.mktemp("faults") / "tiny")


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    return write_text(tmp_path_factory.mktemp("faults") / "train.txt")


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny, text):
    """A token cache shared by the runs that do not test the cache itself."""
    return str(tmp_path_factory.mktemp("faults") / "cache")


def base_args(tiny, text, cache, out, steps=4, *extra):
    return ["--model", tiny, "--train-file", text, "--block-size", "32", "--max-steps", str(steps),
            "--lr", "1e-3", "--no-progress", "--cache-dir", cache, "--out", str(out), *map(str, extra)]


def cli(capsys, main, *args):
    """Run a CLI's main in this process as its __main__ does (run_cli); stdout, stderr, status."""
    capsys.readouterr()
    try:
        rc = run_cli(main, [str(a) for a in args])
    except SystemExit as e:  # argparse's errors (Parser.error)
        rc = e.code
    except BaseException:  # a crash: keep its traceback in stderr, where the asserts look
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode="crash", stdout=out, stderr=err + traceback.format_exc())
    out, err = capsys.readouterr()
    return SimpleNamespace(returncode=rc, stdout=out, stderr=err)


def train(capsys, *args):
    return cli(capsys, train_cli.main, *args)


def evaluate(capsys, *args):
    return cli(capsys, evaluate_cli.main, *args)


def one_line_error(p, code=2, *words):
    """The one line of a failed command; asserts the status, one line, no traceback."""
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert p.returncode == code, f"status {p.returncode}, expected {code}: {p.stderr}"
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("error:"), p.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def trained(stdout) -> bool:
    """Did the run get as far as its first step? (Trainer.describe: "training N steps (...")"""
    return re.search(r"^training \d+ steps", stdout, re.M) is not None


def ok(p):
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    return p


def run_proc(args, env=None, timeout=300):
    """A Python subprocess (args after the interpreter; str or bytes), 1 thread, captured output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    p = subprocess.run([sys.executable, *[a if isinstance(a, bytes) else str(a) for a in args]],
                       capture_output=True, cwd=ROOT, env=env, timeout=timeout)
    return SimpleNamespace(returncode=p.returncode, stdout=p.stdout.decode("utf-8", "replace"),
                           stderr=p.stderr.decode("utf-8", "replace"))


# A "subprocess" that costs no interpreter start-up: one helper process imports torch and the
# package once (and never computes, so no thread pool exists), then forks a child per run. The
# child is a fresh process for every purpose here: its own pid (Ctrl-C and SIGKILL reach it
# alone), environment, stdout/stderr files, resource limits and capabilities, and it runs the
# script as `python script args...` would (runpy, __main__), its exit status or signal reported.
ZYGOTE = r"""
import ctypes, json, os, resource, runpy, signal, sys, traceback
root = sys.argv[1]
sys.path.insert(0, root)
import numpy, torch, safetensors.torch, tokenizers, tqdm  # noqa: E401,F401  (the slow imports, once)
import torch._dynamo  # noqa: F401  (imported by the first AdamW: 2 s)
import train, evaluate  # noqa: E401,F401

replies = os.fdopen(os.dup(1), "w")
devnull = os.open(os.devnull, os.O_WRONLY)
os.dup2(devnull, 1)


def drop_dac_capabilities():
    # Root without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH / CAP_FOWNER: file modes apply to it.
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(0x20080522, 0), (Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    keep = ~((1 << 1) | (1 << 2) | (1 << 3)) & 0xFFFFFFFF
    data[0].effective &= keep
    data[0].permitted &= keep
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def child(req):
    os.environ.clear()
    os.environ.update(req["env"])
    for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a new interpreter
    os.chdir(req["cwd"])
    torch.set_num_threads(1)
    if req.get("fsize") is not None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (req["fsize"], req["fsize"]))  # SIGXFSZ is ignored
    if req.get("unprivileged") and os.geteuid() == 0:
        drop_dac_capabilities()
    sys.argv = [req["script"], *req["args"]]
    code = 0
    try:
        runpy.run_path(req["script"], run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


replies.write("ready\n")
replies.flush()
for line in sys.stdin:
    req = json.loads(line)
    if req["op"] == "wait":
        _, status = os.waitpid(req["pid"], 0)
        replies.write(json.dumps({"code": os.waitstatus_to_exitcode(status)}) + "\n")
        replies.flush()
        continue
    pid = os.fork()
    if pid == 0:
        try:
            replies.close()
            child(req)
        finally:
            os._exit(1)
    replies.write(json.dumps({"pid": pid}) + "\n")
    replies.flush()
"""


class Zygote:
    def __init__(self, directory):
        self.dir = Path(directory)
        script = self.dir / "zygote.py"
        script.write_text(ZYGOTE)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.log = open(self.dir / "zygote.err", "wb")
        self.proc = subprocess.Popen([sys.executable, str(script), str(ROOT)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, env=env, text=True, bufsize=1)
        assert self._reply(timeout=120) == "ready", (self.dir / "zygote.err").read_text()
        self.count = 0

    def _reply(self, timeout):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        assert line, f"the zygote died: {(self.dir / 'zygote.err').read_text()}"
        return line.strip()

    def start(self, script, *args, env=None, fsize=None, unprivileged=False):
        """Start `python script args...` (forked); a job to wait for."""
        self.count += 1
        out, err = self.dir / f"{self.count}.out", self.dir / f"{self.count}.err"
        req = {"op": "start", "script": str(script), "args": [str(a) for a in args], "cwd": str(ROOT),
               "env": {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, "stdout": str(out),
               "stderr": str(err), "fsize": fsize, "unprivileged": unprivileged}
        self.proc.stdin.write(json.dumps(req) + "\n")
        pid = json.loads(self._reply(timeout=60))["pid"]
        return SimpleNamespace(pid=pid, stdout=out, stderr=err)

    def wait(self, job, timeout=300):
        """The finished job: returncode (negative: killed by that signal), stdout, stderr."""
        self.proc.stdin.write(json.dumps({"op": "wait", "pid": job.pid}) + "\n")
        reply = self._reply(timeout)
        if reply is None:  # hung: kill it, and fail
            os.kill(job.pid, signal.SIGKILL)
            self._reply(timeout=60)
            raise AssertionError(f"{job.stdout}: still running after {timeout} s; killed")
        return SimpleNamespace(returncode=json.loads(reply)["code"],
                               stdout=job.stdout.read_text(errors="replace"),
                               stderr=job.stderr.read_text(errors="replace"))

    def run(self, script, *args, timeout=300, **options):
        return self.wait(self.start(script, *args, **options), timeout)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.proc.stdout.close()
        self.log.close()


@pytest.fixture(scope="module")
def procs(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("zygote"))
    yield z
    z.close()


def temporaries(root) -> list[str]:
    return [str(p) for p in Path(root).rglob("*") if ".tmp-" in p.name]


def state_step(path) -> int:
    """The step of a resume.pt, which must load whole and hold finite weights."""
    s = torch.load(path, map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in s["model"].values() if v.is_floating_point())
    return s["step"]


def assert_finite_model(directory):
    tensors = load_file(os.path.join(directory, "model.safetensors"))
    for k, v in tensors.items():
        assert torch.isfinite(v).all(), f"{directory}/model.safetensors: {k} is not finite"
    load_checkpoint(str(directory))


def interrupt_at(step):
    """Trainer.optimizer_step that sends this process a Ctrl-C (SIGINT) during step `step`."""
    original = Trainer.optimizer_step

    def patched(self, *a, **k):
        result = original(self, *a, **k)
        if self.step == step:  # the steps done, this one included
            os.kill(os.getpid(), signal.SIGINT)
        return result

    return patched


def interrupted_run(capsys, args, at):
    """Run train.py in this process, stopped as by Ctrl-C at step `at`: resume.pt of that step."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "optimizer_step", interrupt_at(at))
        p = train(capsys, *args)
    assert p.returncode == 130, p.stderr
    return p


@pytest.fixture
def patched():
    """train.py with the faults of tests/injections.py, each switched on by its variable."""
    return INJECTED_TRAIN


def ctrl_c_exit(p, lines=1):
    """Exit 130 after Ctrl-C: the announcement (and, after a second Ctrl-C, its line), no traceback."""
    assert p.returncode == 130, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    got = [line for line in p.stderr.strip().splitlines() if line.strip()]
    assert len(got) == lines, p.stderr
    return got



# === 1. Ctrl-C at any moment keeps what was earned, exit 130 ===========================

def test_ctrl_c_during_training_keeps_a_resumable_state(capsys, patched, tiny, text, cache, tmp_path):
    """Ctrl-C in step 3 (after the periodic save of step 2): resume.pt of step 3; --resume finishes."""
    out = tmp_path / "out"
    args = base_args(tiny, text, cache, out, 6, "--save-every", 2)
    p = run_python(patched, *args, env={"CTRL_C_AT": "3"})
    ctrl_c_exit(p)
    assert "--resume" in p.stdout
    assert state_step(out / "resume.pt") == 3
    assert not (out / "model.safetensors").exists()
    assert run_status(out)["status"] == "interrupted"
    assert comparison_rows([str(out)])[0]["status"] == "interrupted at step 3 of 6"  # its state's step
    p = ok(train(capsys, *args, "--resume"))
    assert "resuming at step 3 of 6" in p.stdout
    assert_finite_model(out)
    assert not (out / "resume.pt").exists() and temporaries(out) == []
    assert comparison_rows([str(out)])[0]["status"] == "done"


def test_ctrl_c_during_an_evaluation_in_training(capsys, procs, patched, tiny, text, cache, tmp_path):
    """Ctrl-C as the evaluation of step 2 starts (--eval-every 2 --save-best): that evaluation ends,
    best/ is whole, resume.pt of step 2 is written, exit 130; --resume finishes the run."""
    out = tmp_path / "out"
    args = base_args(tiny, text, cache, out, 6, "--eval-every", 2, "--save-best")
    p = procs.run(patched, *args, env={"CTRL_C_EVAL": "1"})
    ctrl_c_exit(p)
    assert state_step(out / "resume.pt") == 2
    state = torch.load(out / "resume.pt", weights_only=True)
    assert [e["step"] for e in state["log_history"] if "eval_loss" in e] == [2]  # the evaluation ended
    assert_finite_model(out / "best")
    assert not (out / "model.safetensors").exists() and temporaries(out) == []
    p = ok(train(capsys, *args, "--resume"))
    assert "resuming at step 2 of 6" in p.stdout
    assert_finite_model(out)


@pytest.mark.parametrize("case", ["plain", "after-save-best"])
def test_ctrl_c_during_the_final_evaluation_keeps_the_trained_model(procs, patched, tiny, text, cache, tmp_path, case):
    """The model is saved before the final evaluation: Ctrl-C there leaves a finished run, without
    eval results, status done with a note, exit 130."""
    out = tmp_path / "out"
    extra, n = ([], "1") if case == "plain" else (["--eval-every", 2, "--save-best"], "3")  # evals at 2, 4, final
    p = procs.run(patched, *base_args(tiny, text, cache, out, 4, *extra), env={"CTRL_C_EVAL": n})
    ctrl_c_exit(p)
    assert_finite_model(out)
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "done" and status.get("note"), status
    assert (out / "train_results.json").is_file() and not (out / "eval_results.json").exists()
    assert not (out / "resume.pt").exists() and temporaries(out) == []
    assert comparison_rows([str(out)])[0]["status"].startswith("done")


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_during_the_final_save_never_cuts_the_model(procs, patched, tiny, text, cache, tmp_path, presses):
    """Ctrl-C (once, or twice) while model.safetensors is being written: the save completes
    (Interrupt.deferred): it holds exactly the weights of an uninterrupted run, exit 130; the
    status is not left at "saving"."""
    out = tmp_path / "out"
    p = procs.run(patched, *base_args(tiny, text, cache, out, 3), env={"CTRL_C_SAVE": str(presses)})
    lines = ctrl_c_exit(p, lines=presses)
    assert_finite_model(out)
    ok(procs.run(ROOT / "train.py", *base_args(tiny, text, cache, tmp_path / "straight", 3)))
    a, b = load_file(str(out / "model.safetensors")), load_file(str(tmp_path / "straight" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (out / "train_results.json").is_file() and (out / "run_args.json").is_file()
    assert temporaries(out) == []
    status = run_status(out)
    if presses == 1:
        assert status["status"] == "done" and status.get("note"), status
    else:
        assert "twice" in lines[-1]
        assert status["status"] in ("done", "interrupted"), status
    assert comparison_rows([str(out)])[0]["status"] not in ("saving", "stopped")


def test_two_ctrl_c_during_a_periodic_save_keep_the_previous_state(capsys, procs, patched, tiny, text, cache, tmp_path):
    """Ctrl-C twice while resume.pt of step 4 is written: stop at once, but resume.pt of step 2
    stays whole (no half-written state, no temporary file) and --resume continues from it."""
    out = tmp_path / "out"
    args = base_args(tiny, text, cache, out, 6, "--save-every", 2)
    p = procs.run(patched, *args, env={"CTRL_C_STATE_AT": "4"})
    lines = ctrl_c_exit(p, lines=2)
    assert "twice" in lines[-1]
    assert state_step(out / "resume.pt") == 2
    assert temporaries(out) == []
    assert not (out / "model.safetensors").exists()
    p = ok(train(capsys, *args, "--resume"))
    assert "resuming at step 2 of 6" in p.stdout


def test_ctrl_c_while_loading_leaves_nothing(procs, patched, tiny, text, cache, tmp_path):
    """Ctrl-C before the run has begun (reading the data): one line, exit 130, no --out made."""
    out = tmp_path / "out"
    p = procs.run(patched, *base_args(tiny, text, cache, out, 2), env={"CTRL_C_SETUP": "1"})
    ctrl_c_exit(p)
    assert not out.exists()


# === 2. No state with non-finite weights is ever written ================================

@pytest.mark.parametrize("lr,wd", [("0.5", "2"), ("1e-3,0.5", "2"), ("0.01", "1000")])
def test_weight_decay_that_flips_the_weights_is_refused(capsys, tiny, text, cache, tmp_path, lr, wd):
    """lr x weight_decay >= 1 multiplies the weights by <= 0 each step: refused before any work
    (for every rate of a sweep)."""
    out = tmp_path / "out"
    args = base_args(tiny, text, cache, out, 2)
    args[args.index("--lr") + 1] = lr
    p = train(capsys, *args, "--weight-decay", wd)
    one_line_error(p, 2, "--weight-decay")
    assert not out.exists()


def poison_at(step, name, row=None):
    """Trainer.optimizer_step that puts an inf into parameter `name` (one row of it) after step `step`."""
    original = Trainer.optimizer_step

    def patched(self, *a, **k):
        result = original(self, *a, **k)
        if self.step == step:  # the steps done, this one included
            with torch.no_grad():
                p = dict(self.model.named_parameters())[name]
                if row is None:
                    p.view(-1)[0] = float("inf")
                else:
                    p[row] = float("inf")
        return result

    return patched


@pytest.mark.parametrize("case", ["inf-in-a-weight", "lr-1e30", "inf-in-an-unused-row-with-save-best",
                                  "inf-at-the-last-step"])
def test_non_finite_weights_are_never_written(capsys, tiny, text, cache, tmp_path, monkeypatch, case):
    """Weights that hold inf/NaN end the run in one line; resume.pt (the last good one), best/
    and model.safetensors never hold them. An inf in a row of the position embedding beyond
    --block-size leaves the loss finite: only a check of the weights themselves sees it."""
    out = tmp_path / "out"
    if case == "inf-in-a-weight":
        monkeypatch.setattr(Trainer, "optimizer_step", poison_at(3, "transformer.h.0.attn.c_attn.weight"))
        args = base_args(tiny, text, cache, out, 6, "--save-every", 2)
    elif case == "lr-1e30":
        args = base_args(tiny, text, cache, out, 6, "--save-every", 1)
        args[args.index("--lr") + 1] = "1e30"
    elif case == "inf-in-an-unused-row-with-save-best":
        monkeypatch.setattr(Trainer, "optimizer_step", poison_at(3, "transformer.wpe.weight", row=40))
        args = base_args(tiny, text, cache, out, 6, "--save-every", 2, "--eval-every", 1, "--save-best")
    else:
        monkeypatch.setattr(Trainer, "optimizer_step", poison_at(4, "transformer.wpe.weight", row=40))
        args = base_args(tiny, text, cache, out, 4)
    p = train(capsys, *args)
    one_line_error(p, 2, "NaN")
    assert not (out / "model.safetensors").exists()
    if case in ("inf-in-a-weight", "inf-in-an-unused-row-with-save-best"):
        assert state_step(out / "resume.pt") == 2  # the last good state stays
    elif (out / "resume.pt").exists():
        state_step(out / "resume.pt")  # finite
    if (out / "best").exists():
        assert_finite_model(out / "best")
    assert run_status(out)["status"] == "failed"


# === 3. A read-only --out, a full disk ==================================================

@pytest.fixture
def read_only_dir(tmp_path, procs):
    """A directory (mode 0555) that a run started with `unprivileged=True` cannot write into.

    We run as root here, and chmod does not stop root: the child gives up the capabilities
    that override file permissions (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER), which
    is what an ordinary user lacks. (setuid(nobody) would not do: the interpreter lives under
    /root, which nobody may read.) Skipped only where even that cannot be had."""
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    probe = tmp_path / "probe.py"
    probe.write_text("import sys\nopen(sys.argv[1], 'w')\n")
    p = procs.run(probe, d / "x", unprivileged=True, timeout=60)
    if p.returncode == 0 or "PermissionError" not in p.stderr:
        pytest.skip(f"cannot run a process that file permissions stop: {p.stderr[-300:]}")
    yield d
    d.chmod(0o755)


@pytest.mark.parametrize("case", ["existing-empty-dir", "new-dir-under-read-only-parent", "resume-in-read-only-dir"])
def test_read_only_out_is_refused_before_training(procs, tiny, text, cache, tmp_path, read_only_dir, case):
    extra = []
    if case == "existing-empty-dir":
        out = read_only_dir
    elif case == "new-dir-under-read-only-parent":
        out = read_only_dir / "new" / "deeper"
    else:
        out = read_only_dir
        read_only_dir.chmod(0o755)
        (out / "resume.pt").write_bytes(b"precious state")
        read_only_dir.chmod(0o555)
        extra = ["--resume"]
    p = procs.run(ROOT / "train.py", *base_args(tiny, text, cache, out, 2), *extra, unprivileged=True)
    line = one_line_error(p, 2, str(out))
    assert "cannot" in line
    assert not trained(p.stdout)  # refused before the first step
    if case == "resume-in-read-only-dir":
        assert (out / "resume.pt").read_bytes() == b"precious state"
        assert sorted(os.listdir(out)) == ["resume.pt"]
    elif case == "existing-empty-dir":
        assert os.listdir(out) == []
    else:
        assert not (read_only_dir / "new").exists()


def little_room(free_mb):
    usage = shutil.disk_usage(ROOT)
    return lambda path: usage._replace(free=free_mb * 2**20)


@pytest.mark.parametrize("case", ["new-out", "overwrite", "resume"])
def test_disk_without_room_is_refused_before_training(capsys, tiny, text, cache, tmp_path, case):
    """Too little free space for the model and resume.pt: one line before the first step, nothing
    of an earlier run removed; the refused run leaves no lock behind (a rerun with room works)."""
    out = tmp_path / "out"
    args = base_args(tiny, text, cache, out, 4, "--save-every", 3)
    extra, precious = [], {}
    if case == "overwrite":
        out.mkdir()
        precious = {"resume.pt": b"old state", "eval_results.json": b'{"eval_loss": 1.0}',
                    "model.safetensors": b"old weights"}
        extra = ["--overwrite"]
    elif case == "resume":
        interrupted_run(capsys, args, at=2)
        precious = {"resume.pt": (out / "resume.pt").read_bytes()}
        extra = ["--resume"]
    for name, data in precious.items():
        (out / name).write_bytes(data)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(shutil, "disk_usage", little_room(1))
        p = train(capsys, *args, *extra)
    one_line_error(p, 2, "MB free")
    assert not trained(p.stdout)
    for name, data in precious.items():
        assert (out / name).is_file(), f"{name} was removed by a run that was then refused"
        assert (out / name).read_bytes() == data, f"{name} was changed by a run that was refused"
    assert run_status(out).get("status") != "running"
    if case != "overwrite":
        ok(train(capsys, *args, *extra))  # with room: the same command runs (no stale lock, nothing in the way)
        assert_finite_model(out)


@pytest.mark.parametrize("case", ["resume.pt", "model.safetensors"])
def test_disk_full_during_a_save(capsys, procs, patched, tiny, text, cache, tmp_path, case):
    """A disk that fills while resume.pt or model.safetensors is written (the libraries' own errors:
    torch's RuntimeError, safetensors' SafetensorError): one line naming the file, exit != 0, the
    previous resume.pt whole and resumable, no file half-written under its final name, no
    temporary file left."""
    out = tmp_path / "out"
    args = base_args(tiny, text, cache, out, 4, "--save-every", 3)
    # resume.pt of step 2 (the next save, step 3, must fail) / of step 3 (the final save must fail)
    at, env = (2, {"FULL_STATE_AT": "3"}) if case == "resume.pt" else (3, {"FULL_WEIGHTS": "1"})
    interrupted_run(capsys, args, at=at)
    p = procs.run(patched, *args, "--resume", env=env)
    assert p.returncode not in (0, 130) and p.returncode > 0, p.stderr
    one_line_error(p, p.returncode, case)
    assert state_step(out / "resume.pt") == at
    assert not (out / "model.safetensors").exists()
    assert temporaries(out) == []
    assert run_status(out)["status"] == "failed"
    p = ok(train(capsys, *args, "--resume"))  # with room again: the run goes on from the kept state
    assert f"resuming at step {at} of 4" in p.stdout
    assert_finite_model(out)


def test_file_size_limit_below_resume_pt_is_refused_before_training(capsys, procs, tiny, text, cache, tmp_path):
    """`ulimit -f` below the size of resume.pt (19 MB here) would lose the run at its first save,
    like a full disk: refused before the first step, in one line; the interrupted state stays."""
    out = tmp_path / "out"
    args = base_args(tiny, text, cache, out, 4)
    interrupted_run(capsys, args, at=2)
    p = procs.run(ROOT / "train.py", *args, "--resume", fsize=10 * 2**20)
    one_line_error(p, 2, "ulimit -f")
    assert not trained(p.stdout)
    assert state_step(out / "resume.pt") == 2 and run_status(out)["status"] == "interrupted"


# === 4. Two runs on one --out ===========================================================

def test_second_run_on_a_busy_out_is_refused_and_a_dead_lock_taken_over(capsys, procs, patched, tiny, text, cache,
                                                                       tmp_path):
    out = tmp_path / "out"
    marker = tmp_path / "in-step-2"
    args = base_args(tiny, text, cache, out, 4)
    first = procs.start(patched, *args, env={"SLEEP_MARKER": str(marker)})
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert time.monotonic() < deadline, f"the first run never reached step 2: {first.stderr.read_text()}"
            time.sleep(0.1)
        before = {n: (out / n).read_bytes() for n in os.listdir(out) if n != ".lock"}
        assert json.loads(before["status.json"])["status"] == "running"
        # --overwrite must not wipe a running run; --resume must not take its directory either
        one_line_error(train(capsys, *args, "--overwrite"), 2, "another run")
        one_line_error(train(capsys, *args, "--resume"), 2)
        one_line_error(train(capsys, *args), 2)
        after = {n: (out / n).read_bytes() for n in os.listdir(out) if n != ".lock"}
        assert after == before, "a refused run changed the running run's files"
        assert comparison_rows([str(out)])[0]["status"] == "running"
    finally:
        os.kill(first.pid, signal.SIGKILL)  # no cleanup of any kind: the lock is left to the kernel
        assert procs.wait(first, timeout=60).returncode == -signal.SIGKILL
    assert run_status(out)["status"] == "stopped"
    assert comparison_rows([str(out)])[0]["status"].startswith("stopped")
    assert (out / ".lock").exists()  # left by the dead run ...
    ok(train(capsys, *args, "--overwrite"))  # ... and taken over
    assert_finite_model(out)
    assert comparison_rows([str(out)])[0]["status"] == "done"
    assert not (out / ".lock").exists()


# === 5. A directory never describes another run =========================================

@pytest.mark.parametrize("kill", ["after-the-weights", "inside-the-weights"])
def test_kill_during_an_overwrite_save_is_not_a_finished_run(capsys, procs, patched, tiny, text, cache, tmp_path, kill):
    """A finished run is overwritten, and the new run is killed during its final save: the old
    eval results are gone, status.json says "saving" (the table: stopped), evaluate.py does not
    present the directory as a finished run; the next --overwrite run is done."""
    out = tmp_path / "out"
    ok(train(capsys, *base_args(tiny, text, cache, out, 2)))
    assert (out / "eval_results.json").is_file()
    env = {"KILL_AT_JSON": "run_args.json"} if kill == "after-the-weights" else {"KILL_IN_WEIGHTS": "1"}
    args = base_args(tiny, text, cache, out, 3, "--overwrite", "--validation-split", 0)
    p = procs.run(patched, *args, env=env)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert json.loads((out / "status.json").read_text())["status"] == "saving"
    assert run_status(out)["status"] == "stopped"
    row = comparison_rows([str(out)])[0]
    assert row["status"] != "done" and row["eval_loss"] is None, row
    for old in ("eval_results.json", "all_results.json", "log_history.json", "train_results.json"):
        assert not (out / old).exists(), f"the old run's {old} sits beside the new run's files"
    # evaluate.py must not measure it as if it were a finished run, silently
    p = evaluate(capsys, out, "--validation-file", text, "--block-size", 32)
    lines = p.stderr.strip().splitlines()
    refused = p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr
    warned = p.returncode == 0 and any(("saving" in l or "stopped" in l or "killed" in l) for l in lines)
    assert refused or warned, f"evaluate.py measured an unfinished run without a word: {p.returncode} {p.stderr}"
    ok(train(capsys, *args))
    assert comparison_rows([str(out)])[0]["status"] == "done"
    assert temporaries(out) == []


def test_overwrite_removes_the_old_results_before_the_new_run(capsys, tiny, text, cache, tmp_path, monkeypatch):
    """--overwrite: the old run's results, states, best/ and runs/ are gone by the first step of the new
    run (status "running"), the user's own files stay, and the finished run shows as done."""
    out = tmp_path / "out"
    out.mkdir()
    old = {"eval_results.json": '{"eval_loss": 1.0}', "all_results.json": '{"eval_loss": 1.0}',
           "train_results.json": '{"train_loss": 9.0}', "log_history.json": "[]", "log.jsonl": "{}\n",
           "status.json": '{"status": "failed", "reason": "old"}', "run_args.json": '{"lr": 1}',
           "resume.pt": "old state", "resume-4.pt": "older state"}
    for name, content in old.items():
        (out / name).write_text(content)
    (out / "best").mkdir()
    (out / "best" / "model.safetensors").write_text("old")
    (out / "runs" / "old-session").mkdir(parents=True)  # TensorBoard's: event files only
    (out / "runs" / "old-session" / "events.out.tfevents.1.host").write_text("old")
    (out / "notes.txt").write_text("mine")
    seen = {}
    original = Trainer.optimizer_step

    def looking(self, *a, **k):
        if not seen:
            seen["files"] = sorted(os.listdir(out))
            seen["status"] = json.loads((out / "status.json").read_text())["status"]
            seen["run_args"] = json.loads((out / "run_args.json").read_text())
        return original(self, *a, **k)

    monkeypatch.setattr(Trainer, "optimizer_step", looking)
    ok(train(capsys, *base_args(tiny, text, cache, out, 2, "--overwrite", "--validation-split", 0)))
    gone = (set(old) - {"status.json", "log.jsonl", "run_args.json"}) | {"best", "runs"}
    assert not gone & set(seen["files"]), seen["files"]
    assert seen["run_args"] != {"lr": 1}  # run_args.json is the new run's from its start (issue 29)
    assert seen["status"] == "running"
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "eval_results.json").exists() and not (out / "best").exists()
    row = comparison_rows([str(out)])[0]
    assert row["status"] == "done" and row["eval_loss"] is None, row


# === 6. config.json is validated end to end =============================================

@pytest.mark.parametrize("change", [{"n_head": 5}, {"n_layer": 0},
                                    {"n_embd": 65536, "n_head": 64, "n_layer": 1024},
                                    {"vocab_size": "50257"}, {"activation_function": "relu"}],
                         ids=["n_head-does-not-divide", "no-layers", "petabytes", "size-as-string",
                              "other-activation"])
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_bad_config_json_is_one_line_before_any_allocation(capsys, tiny, text, cache, tmp_path, monkeypatch,
                                                           change, command):
    model = tmp_path / "model"
    shutil.copytree(tiny, model)
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, **change}))

    def no_model(*a, **k):
        raise AssertionError("a model was built from a bad config.json")

    monkeypatch.setattr(GPT2, "__init__", no_model)
    if command == "train":
        p = train(capsys, *base_args(str(model), text, cache, tmp_path / "out", 1))
        assert not (tmp_path / "out").exists()
    else:
        p = evaluate(capsys, model, "--validation-file", text)
    one_line_error(p, 2, "config.json", next(iter(change)))


# === 7. Weights are validated end to end ================================================

@pytest.mark.parametrize("case", ["int32", "nan", "inf", "bool", "truncated"])
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_bad_weights_are_one_line_naming_the_tensor(capsys, tiny, text, cache, tmp_path, case, command):
    model = tmp_path / "model"
    shutil.copytree(tiny, model)
    path = model / "model.safetensors"
    tensors = load_file(str(path))
    name = {"int32": "transformer.wpe.weight", "nan": "transformer.h.1.mlp.c_fc.weight",
            "inf": "transformer.ln_f.bias", "bool": "transformer.h.0.ln_1.weight", "truncated": None}[case]
    if case == "int32":
        tensors[name] = tensors[name].to(torch.int32)
    elif case == "bool":
        tensors[name] = tensors[name] > 0
    elif case in ("nan", "inf"):
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[3] = float(case)
    if case == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    else:
        save_file(tensors, str(path), metadata={"format": "pt"})
    if command == "train":
        p = train(capsys, *base_args(str(model), text, cache, tmp_path / "out", 1))
        assert not (tmp_path / "out").exists()
    else:
        p = evaluate(capsys, model, "--validation-file", text)
    line = one_line_error(p, 2, "model.safetensors")
    if name:
        assert name.removeprefix("transformer.") in line, line


# === 8. --resume and evaluate.py compare the data =======================================

@pytest.mark.parametrize("edited", ["train", "validation"])
def test_resume_refuses_edited_data_with_the_same_shape(capsys, tiny, cache, tmp_path, edited):
    """The same lines in another order: the same token count, the same block shape, other
    blocks. --resume refuses it in one line naming the file; resume.pt stays."""
    train_file = write_text(tmp_path / "train.txt")
    val_file = write_text(tmp_path / "val.txt", n_lines=80, seed=1)
    out = tmp_path / "out"
    args = base_args(tiny, train_file, cache, out, 4, "--validation-file", val_file)
    interrupted_run(capsys, args, at=2)
    state = (out / "resume.pt").read_bytes()
    reverse_lines(train_file if edited == "train" else val_file)
    p = train(capsys, *args, "--resume")
    one_line_error(p, 2, train_file if edited == "train" else val_file, "changed")
    assert (out / "resume.pt").read_bytes() == state


@pytest.mark.parametrize("edited", ["train", "validation"])
def test_evaluate_notices_edited_data_of_a_run(capsys, tiny, cache, tmp_path, edited):
    """evaluate.py OUT measures the text recorded in run_args.json. If that file was edited since
    training (sha256 in run_args.json "data"), it must refuse or warn, not silently measure
    other blocks (the held-out split of another text is partly training text)."""
    train_file = write_text(tmp_path / "train.txt")
    val_file = write_text(tmp_path / "val.txt", n_lines=80, seed=1)
    out = tmp_path / "out"
    extra = ["--validation-file", val_file] if edited == "validation" else []
    ok(train(capsys, *base_args(tiny, train_file, cache, out, 1, *extra)))
    ok(evaluate(capsys, out))  # untouched: fine
    edited_file = train_file if edited == "train" else val_file
    reverse_lines(edited_file)
    p = evaluate(capsys, out)
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    refused = p.returncode == 2 and len(lines) == 1 and edited_file in lines[0]
    warned = p.returncode == 0 and any(l.startswith("warning") and edited_file in l for l in lines)
    assert refused or warned, f"evaluate.py measured an edited {edited} file silently: {p.stderr}"


# === 9. Downloads =======================================================================

class Server:
    """A local "hub" that answers every path with one fixed (status, content type, body)."""

    def __init__(self, status, content_type, body, files=None):
        files = files or {}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                code, ctype, data = files.get(name, (status, content_type, body))
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


HTML = b"<!DOCTYPE html>\n<html><body>Please sign in</body></html>\n"


@pytest.mark.parametrize("case", ["html", "html-as-binary", "404", "bad-json", "config-ok-weights-html"])
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_bad_downloads_are_one_line_and_keep_nothing(capsys, text, cache, tmp_path, monkeypatch, case, command):
    files = {}
    answer = {"html": (200, "text/html", HTML), "html-as-binary": (200, "application/octet-stream", HTML),
              "404": (404, "text/plain", b"no"), "bad-json": (200, "application/json", b'{"n_layer": 2,'),
              "config-ok-weights-html": (200, "text/html", HTML)}[case]
    if case == "config-ok-weights-html":
        files["config.json"] = (200, "application/json", json.dumps({**TINY, "n_layer": 1}).encode())
    server = Server(*answer, files=files)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    weights = tmp_path / "w"
    try:
        if command == "train":
            p = train(capsys, *base_args("org/tiny", text, cache, tmp_path / "out", 1), "--weights-dir", weights)
            assert not (tmp_path / "out").exists()
        else:
            p = evaluate(capsys, "org/tiny", "--weights-dir", weights, "--validation-file", text)
    finally:
        server.close()
    errors = [l for l in p.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "org/tiny" in errors[0], p.stderr  # the error itself is right ...
    extra = [l for l in p.stderr.strip().splitlines() if l not in errors]
    assert not extra, f"... but stderr holds {len(extra)} more line(s) (a download progress bar): {extra[:2]}"
    one_line_error(p, 2, "org/tiny")
    kept = sorted(str(f.relative_to(weights)) for f in weights.rglob("*") if f.is_file()) if weights.exists() else []
    assert kept == (["org/tiny/config.json"] if case == "config-ok-weights-html" else []), kept


# === 10. Small inputs ===================================================================

@pytest.mark.parametrize("value", ["", "garbage", "http://[::1", "ftp://mirror.example/", "http://example.com:99999",
                                   "http://example.com/hub?x=1", "http://exa mple.com"])
def test_hf_endpoint_values(capsys, tiny, text, cache, tmp_path, monkeypatch, value):
    """HF_ENDPOINT empty: the default hub (a local model needs none); unusable: one line at start."""
    monkeypatch.setenv("HF_ENDPOINT", value)
    out = tmp_path / "out"
    p = train(capsys, *base_args(tiny, text, cache, out, 1))
    if value == "":
        ok(p)
        return
    one_line_error(p, 2, "HF_ENDPOINT")
    assert not out.exists()
    if value == "garbage":  # evaluate.py, when it would have to download
        one_line_error(evaluate(capsys, "org/tiny", "--weights-dir", tmp_path / "w", "--validation-file", text),
                       2, "HF_ENDPOINT")
        assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("seed", ["18446744073709551615", "-1", "4294967296", "1.5", "0x10"])
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_bad_seed_is_refused_at_parse_time(capsys, tiny, text, cache, tmp_path, command, seed):
    if command == "train":
        p = train(capsys, *base_args(tiny, text, cache, tmp_path / "out", 1), "--seed", seed)
        assert not (tmp_path / "out").exists()
    else:
        p = evaluate(capsys, tiny, "--prompt", "hi", "--seed", seed)
    one_line_error(p, 2, "--seed")
    assert p.stdout == ""  # nothing was loaded


@pytest.mark.parametrize("prompt", [[b"--prompt", b"caf\xe9"], [b"--prompt=\xff\xfe", b"--max-new-tokens", b"2"]],
                         ids=["latin1", "bom-bytes"])
def test_prompt_that_is_not_utf8_is_one_line(tiny, prompt):
    p = run_proc([ROOT / "evaluate.py", tiny, *prompt], timeout=120)
    one_line_error(p, 2, "UTF-8")


def _cache_file(cache_dir):
    files = list(Path(cache_dir).glob("*.npz"))
    assert len(files) == 1, files
    return files[0]


@pytest.mark.parametrize("damage", ["truncated", "random-bytes", "ids-past-the-vocabulary", "a-directory"])
def test_corrupt_token_cache_is_rebuilt(capsys, tiny, text, tmp_path, damage):
    cache_dir = tmp_path / "cache"
    first = ok(train(capsys, *base_args(tiny, text, cache_dir, tmp_path / "a", 2, "--validation-split", 0)))
    path = _cache_file(cache_dir)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "random-bytes":
        path.write_bytes(os.urandom(path.stat().st_size))
    elif damage == "ids-past-the-vocabulary":
        import hashlib

        with np.load(path) as z:
            ids = z["ids"].copy()
        ids[5] = 60000
        with open(path, "wb") as f:
            np.savez(f, ids=ids, sha256=np.array(hashlib.sha256(ids.tobytes()).hexdigest()))
    else:
        path.unlink()
        path.mkdir()
    second = ok(train(capsys, *base_args(tiny, text, cache_dir, tmp_path / "b", 2, "--validation-split", 0)))
    assert "damaged token cache" in second.stderr and "Traceback" not in second.stderr
    a = json.loads((tmp_path / "a" / "train_results.json").read_text())
    b = json.loads((tmp_path / "b" / "train_results.json").read_text())
    assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)  # the same tokens again
    assert first.returncode == 0


@pytest.fixture(scope="module")
def resumable(tmp_path_factory, tiny, text, cache):
    """An interrupted run (resume.pt of step 2 of 4) and its command, made once for the module."""
    out = tmp_path_factory.mktemp("faults") / "resumable"
    args = base_args(tiny, text, cache, out, 4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "optimizer_step", interrupt_at(2))
        assert run_cli(train_cli.main, args) == 130
    return out, args


def _bad_state(state, case):
    if case == "no-optimizer":
        del state["optimizer"]
    elif case == "negative-step":
        state["step"] = -5
    elif case == "step-beyond-the-run":
        state["step"] = 999
    elif case == "string-for-a-tensor":
        state["model"]["transformer.wte.weight"] = "not a tensor"
    elif case == "not-a-dict":
        state = [1, 2, 3]
    elif case == "model-config-a-list":
        state["model_config"] = [1, 2]
    elif case == "data-a-string":
        state["data"] = "train.txt"
    elif case == "moments-of-the-wrong-shape":
        for s in state["optimizer"]["state"].values():
            s["exp_avg"] = torch.zeros(3)
    elif case == "nan-loss-sum":
        state["loss_sum"] = float("nan")
    return state


@pytest.mark.parametrize("case", ["no-optimizer", "negative-step", "step-beyond-the-run", "string-for-a-tensor",
                                  "not-a-dict", "model-config-a-list", "data-a-string",
                                  "moments-of-the-wrong-shape", "nan-loss-sum", "truncated", "pickled-code"])
def test_hand_made_resume_states_are_one_line(capsys, procs, resumable, tmp_path, case):
    src, args = resumable
    out = tmp_path / "out"
    shutil.copytree(src, out)
    args = [str(out) if a == str(src) else a for a in args]
    path = out / "resume.pt"
    if case == "truncated":
        path.write_bytes(path.read_bytes()[:4096])
    elif case == "pickled-code":
        torch.save({"step": 1, "config": {}, "payload": SimpleNamespace(x=1)}, path)
    else:
        torch.save(_bad_state(torch.load(path, weights_only=True), case), path)
    before = path.read_bytes()
    if case == "moments-of-the-wrong-shape":  # fused AdamW reads past such moments: a crash, so not in here
        p = procs.run(ROOT / "train.py", *args, "--resume")
    else:
        p = train(capsys, *args, "--resume")
    one_line_error(p, 2, "resume.pt")
    assert path.read_bytes() == before  # refused, not overwritten
    assert not (out / "model.safetensors").exists()


# === 11. Litter and permissions =========================================================

def test_litter_of_a_killed_save_is_removed_by_the_next_run(capsys, procs, patched, tiny, text, cache, tmp_path,
                                                            monkeypatch):
    """SIGKILL while resume.pt of step 4 is written leaves resume.pt.tmp-<pid> (and resume.pt of
    step 2). The next run in that directory removes every temporary file before its first step,
    also in best/, and writes none into the model it saves."""
    out = tmp_path / "out"
    args = base_args(tiny, text, cache, out, 6, "--save-every", 2)
    p = procs.run(patched, *args, env={"KILL_STATE_AT": "4"})
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert [Path(t).name.split(".tmp-")[0] for t in temporaries(out)] == ["resume.pt"]
    (out / "best").mkdir()
    (out / "best" / "model.safetensors.tmp-99999").write_bytes(b"half")
    (out / "vocab.json.tmp-12345").write_bytes(b"half")
    seen = []
    original = Trainer.optimizer_step

    def looking(self, *a, **k):
        seen.append(temporaries(out))
        return original(self, *a, **k)

    monkeypatch.setattr(Trainer, "optimizer_step", looking)
    p = ok(train(capsys, *args, "--resume"))
    assert "resuming at step 2 of 6" in p.stdout
    assert seen[0] == [], seen[0]
    assert temporaries(out) == []
    assert_finite_model(out)


def test_a_directory_of_litter_is_empty_and_litter_is_never_copied(capsys, tiny, text, cache, tmp_path):
    """--out holding only temporary files (and a lock file) is an empty --out; temporary files
    beside the --model are not copied into the new checkpoint."""
    model = tmp_path / "model"
    shutil.copytree(tiny, model)
    (model / "vocab.json.tmp-4242").write_bytes(b"half")
    (model / "model.safetensors.tmp-4243").write_bytes(b"half")
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors.tmp-777").write_bytes(b"half")
    (out / ".lock").write_text("pid 1 on nowhere")
    ok(train(capsys, *base_args(str(model), text, cache, out, 1)))
    assert temporaries(out) == []
    assert_finite_model(out)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002], ids=["022", "077", "002"])
def test_files_get_the_users_umask(capsys, tiny, text, tmp_path, umask):
    out = tmp_path / "out"
    cache_dir = tmp_path / "cache"
    args = base_args(tiny, text, cache_dir, out, 3, "--save-every", 1, "--eval-every", 1, "--save-best")
    old = os.umask(umask)
    try:
        interrupted_run(capsys, args, at=2)
        assert (out / "resume.pt").is_file() and (out / "best" / "model.safetensors").is_file()
        modes_interrupted = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode)
                             for p in tmp_path.rglob("*") if p.is_relative_to(out) or p.is_relative_to(cache_dir)}
        ok(train(capsys, *args, "--resume"))
        modes_done = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode)
                      for p in tmp_path.rglob("*") if p.is_relative_to(out) or p.is_relative_to(cache_dir)}
    finally:
        os.umask(old)
    assert "out/model.safetensors" in modes_done and "out/config.json" in modes_done
    for name, mode in {**modes_interrupted, **modes_done}.items():
        path = tmp_path / name
        if not path.exists():
            continue
        want = (0o777 if path.is_dir() else 0o666) & ~umask
        assert mode == want, f"{name}: {oct(mode)}, expected {oct(want)} under umask {oct(umask)}"

"""Finding the learning rate: the range test (--find-lr) and the sweep (--lr a,b,c)."""

import csv
import hashlib
import json
import math
import os
import re

import numpy as np
import pytest

from conftest import TINY, hf_model, save_hf
from harness import lr_finder, sweep as sweep_module
from harness.compare import comparison_rows
from gpt2.errors import UserError
from harness.report import format_lr
from harness.sweep import run_dirs

import train


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(checkpoint dir, text file): a tiny random GPT-2 and ~2,500 tokens of English and code."""
    from pydoc_data.topics import topics

    root = tmp_path_factory.mktemp("lr")
    ckpt = save_hf(hf_model(**TINY), root / "tiny")
    text = root / "text.txt"
    text.write_text("\n".join(topics[k] for k in sorted(topics))[:9000], encoding="utf-8")
    return ckpt, str(text)


def common(tiny, tmp_path):
    ckpt, text = tiny
    return ["--model", ckpt, "--train-file", text, "--block-size", "32", "--cache-dir", str(tmp_path / "cache"),
            "--no-progress", "--seed", "0"]


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# --- the suggestion, on curves whose answer is known ---------------------------------

def synthetic_curve(n=200):
    """Flat at 3, falls to 1.5 around 1e-4 (a logistic in log10 lr), blows up past 1e-2."""
    lrs = np.geomspace(1e-7, 1.0, n)
    x = np.log10(lrs)
    loss = 3.0 - 1.5 / (1 + np.exp(-3 * (x + 4)))
    loss += np.where(x > -2, 20 * (x + 2) ** 2, 0.0)
    return lrs, loss


def test_suggest_on_a_synthetic_curve():
    lrs, loss = synthetic_curve()
    s = lr_finder.suggest(lrs, loss)
    # The logistic falls fastest at its midpoint, 1e-4 (one grid step of tolerance).
    assert 1e-4 / 1.2 < s["steepest"] < 1e-4 * 1.2
    # The lowest point is just before the blow-up, 1e-2 or a little below.
    i_min = int(np.argmin(loss))
    assert s["minimum_10"] == pytest.approx(lrs[i_min] / 10)
    assert 1e-3 * 0.3 < s["minimum_10"] <= 1e-3 * 1.01


def test_suggest_ignores_the_blow_up_and_a_curve_that_never_falls():
    lrs, loss = synthetic_curve()
    # The blow-up after the minimum is far steeper (upwards) than the fall: still the fall.
    assert lr_finder.suggest(lrs, loss)["steepest"] < 1e-3
    rising = lr_finder.suggest(lrs, np.linspace(3.0, 9.0, len(lrs)))
    assert rising["steepest"] is None  # no falling stretch: no steepest descent to offer
    assert rising["minimum_10"] == pytest.approx(1e-8)
    assert lr_finder.suggest([1e-3, 1e-2], [2.0, 1.0]) == {"steepest": None, "minimum_10": None}


def test_smoothing_is_bias_corrected():
    # A constant loss must smooth to itself from the first step on: without the
    # correction the average would start near 0 (0.02 x the first loss).
    assert lr_finder.smooth([5.0] * 10) == pytest.approx([5.0] * 10)
    s = lr_finder.smooth([1.0, 3.0])
    assert s[1] == pytest.approx((0.98 * 0.02 * 1.0 + 0.02 * 3.0) / (1 - 0.98**2))


def test_geometric_schedule_goes_from_lr_min_to_lr_max():
    f = lr_finder.geometric_factor(1e-7, 10.0, 9)
    lrs = [10.0 * f(k) for k in range(9)]
    assert lrs[0] == pytest.approx(1e-7) and lrs[-1] == pytest.approx(10.0)
    assert np.allclose(np.diff(np.log10(lrs)), 1.0)  # one power of ten per step


def test_without_matplotlib_only_the_csv_is_written(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    result = lr_finder.RangeTest(lrs=[1e-5, 1e-4, 1e-3], losses=[3.0, 2.5, 4.0], smoothed=[3.0, 2.8, 3.1])
    paths = lr_finder.write_results(str(tmp_path / "out"), result, {"steepest": 1e-5, "minimum_10": 1e-5})
    assert paths == [str(tmp_path / "out" / "lr_find.csv")]
    assert os.listdir(tmp_path / "out") == ["lr_find.csv"]


# --- the range test, end to end --------------------------------------------------------

def test_find_lr_suggests_a_rate_and_leaves_the_weights_alone(tiny, tmp_path, capsys):
    ckpt, _ = tiny
    weights = os.path.join(ckpt, "model.safetensors")
    before = sha256(weights), sorted(os.listdir(ckpt))
    out = tmp_path / "find"
    steps = 40
    rc = train.main(common(tiny, tmp_path) + ["--find-lr", "--find-lr-steps", str(steps), "--lr-max", "1e3",
                                              "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out

    # The checkpoint on disk is untouched, and no checkpoint was written anywhere in --out.
    assert (sha256(weights), sorted(os.listdir(ckpt))) == before
    written = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs)
    assert "lr_find.csv" in written
    assert set(written) <= {"lr_find.csv", "lr_find.png"}

    with open(out / "lr_find.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    lrs = [float(r["lr"]) for r in rows]
    smoothed = [float(r["smoothed_loss"]) for r in rows]
    assert lrs[0] == pytest.approx(1e-7)
    assert all(b > a for a, b in zip(lrs, lrs[1:]))  # rising
    # Rates up to 1e3 diverge on this model: the test must stop before its last step.
    assert 5 < len(rows) < steps
    stop_line = printed.split("stopped after")[1].splitlines()[0]
    assert "4x its minimum" in stop_line or "the loss became" in stop_line
    diverged_at = lrs[-1]  # the last rate recorded: the smoothed loss blew up there (or the next went NaN)

    suggested = float(re.search(r"suggested learning rate: (\S+)", printed).group(1))
    assert 1e-7 <= suggested < diverged_at
    s = lr_finder.suggest(lrs, smoothed)
    assert s["steepest"] == pytest.approx(suggested, rel=0.05)  # printed with two digits
    assert s["minimum_10"] < diverged_at


def test_find_lr_checks_its_range(tiny, tmp_path):
    with pytest.raises(UserError, match="--lr-min"):
        train.main(common(tiny, tmp_path) + ["--find-lr", "--lr-min", "1e-2", "--lr-max", "1e-3",
                                             "--out", str(tmp_path / "x")])


# --- the sweep ---------------------------------------------------------------------------

def test_format_lr_and_run_dirs():
    assert [format_lr(v) for v in (1e-3, 5e-5, 2.5e-4, 3e-4, 0.001, 1.0, 1e3, 6e-05)] == \
        ["1e-3", "5e-5", "2.5e-4", "3e-4", "1e-3", "1e0", "1e3", "6e-5"]
    assert run_dirs("runs", [1e-3, 5e-5]) == [(1e-3, os.path.join("runs", "lr-1e-3")),
                                             (5e-5, os.path.join("runs", "lr-5e-5"))]
    with pytest.raises(UserError, match="same learning rate"):
        run_dirs("runs", [1e-3, 0.001])


def sweep_args(tiny, tmp_path, lrs):
    return common(tiny, tmp_path) + ["--lr", lrs, "--max-steps", "3", "--log-every", "1", "--validation-split", "10",
                                     "--out", str(tmp_path / "runs")]


def test_sweep_of_two_rates(tiny, tmp_path, capsys):
    assert train.main(sweep_args(tiny, tmp_path, "1e-3,1e-4")) == 0
    printed = capsys.readouterr().out
    dirs = [tmp_path / "runs" / "lr-1e-3", tmp_path / "runs" / "lr-1e-4"]
    for d in dirs:
        assert (d / "model.safetensors").is_file() and (d / "all_results.json").is_file()
        assert not (d / "status.json").exists()
    rows = comparison_rows([str(d) for d in dirs])
    assert [(r["run"], r["lr"], r["status"]) for r in rows] == [("lr-1e-3", 1e-3, "done"), ("lr-1e-4", 1e-4, "done")]
    table = printed[printed.index("train_loss"):].splitlines()
    assert len([line for line in table if line.startswith("lr-")]) == 2
    # Both started from the same weights, same data order: only the rate differs, so
    # the first logged loss (before any update counts) is identical.
    first = [json.loads((d / "log_history.json").read_text())[0]["loss"] for d in dirs]
    assert first[0] == pytest.approx(first[1])


def test_a_diverging_rate_is_marked_failed_and_the_others_go_on(tiny, tmp_path, capsys):
    # On this model AdamW at lr 1e30 gives a NaN loss within 3 steps in fp32 (at 1e3 the
    # loss only reaches ~1e7: huge, but a number).
    assert train.main(sweep_args(tiny, tmp_path, "1e30,1e-4")) == 0
    printed = capsys.readouterr()
    bad, good = tmp_path / "runs" / "lr-1e30", tmp_path / "runs" / "lr-1e-4"
    status = json.loads((bad / "status.json").read_text())
    assert status["status"] == "failed" and "NaN" in status["reason"]
    assert not (bad / "model.safetensors").exists()
    assert (good / "model.safetensors").is_file()
    rows = comparison_rows([str(bad), str(good)])
    assert rows[0]["status"].startswith("failed") and rows[1]["status"] == "done"
    assert re.search(r"^lr-1e30 .*failed", printed.out, re.M)
    assert "error: lr 1e30" in printed.err


def sweep(plan, train_one):
    """What train.py does with a Sweep, with `train_one(lr, directory)` in place of a training run."""
    import argparse

    lrs = [lr for lr, _ in plan]
    runs = sweep_module.Sweep(argparse.Namespace(out=os.path.dirname(plan[0][1]), lr=lrs, overwrite=True,
                                                 resume=False, train_file=None, validation_file=None,
                                                 model="gpt2", keep_linebreaks=True))
    for lr, run_args in runs:
        try:
            status = train_one(lr, run_args.out)
        except UserError as e:
            status = e
        if not runs.record(lr, status):
            break
    return runs.finish()


def test_sweep_exit_status_and_stale_status(tmp_path, capsys):
    """Exit 1 when every run failed; a rerun that succeeds clears the old verdict."""
    plan = run_dirs(str(tmp_path), [1e-3, 1e-4])

    def fail(lr, directory):
        raise UserError("the training loss became NaN/inf")

    assert sweep(plan, fail) == 1
    assert all(os.path.exists(os.path.join(d, "status.json")) for _, d in plan)

    def succeed(lr, directory):
        with open(os.path.join(directory, "train_results.json"), "w") as f:
            json.dump({"train_loss": 1.0}, f)
        return 0

    assert sweep(plan, succeed) == 0
    assert [r["status"] for r in comparison_rows([d for _, d in plan])] == ["done", "done"]
    def nan_loss(lr, directory):  # what an fp16 run that diverged leaves: it "completes"
        with open(os.path.join(directory, "train_results.json"), "w") as f:
            json.dump({"train_loss": math.nan}, f)
        return 0

    assert sweep(plan[:1], nan_loss) == 1
    assert comparison_rows([plan[0][1]])[0]["status"].startswith("failed: the training loss is NaN")
    assert sweep(plan, lambda lr, d: 130) == 130  # Ctrl-C stops the sweep
    assert "not started: --lr 1e-4" in capsys.readouterr().out


def test_sweep_checks_its_shared_inputs_once(tiny, tmp_path):
    """A missing training file fails every rate alike: one error, exit 2, nothing written
    (it was one failed run per rate, each with a status.json, and exit status 1)."""
    args = sweep_args(tiny, tmp_path, "1e-3,1e-4")
    for flag, bad in (("--train-file", tmp_path / "missing.txt"), ("--model", tmp_path / "no-model")):
        with pytest.raises(UserError, match="missing.txt|no-model"):
            train.main(args + [flag, str(bad)])
        assert not (tmp_path / "runs").exists()


def test_sweep_checks_every_run_dir_before_the_first_run(tiny, tmp_path):
    taken = tmp_path / "runs" / "lr-1e-4"
    taken.mkdir(parents=True)
    (taken / "model.safetensors").write_bytes(b"a checkpoint")
    with pytest.raises(UserError, match="lr-1e-4"):
        train.main(sweep_args(tiny, tmp_path, "1e-3,1e-4"))
    assert not (tmp_path / "runs" / "lr-1e-3").exists()  # refused before anything ran
    with pytest.raises(UserError, match="resume one run at a time"):
        train.main(sweep_args(tiny, tmp_path, "1e-3,1e-4") + ["--resume"])

"""A stopped run is still a model (issue 29): evaluate, sample and plot a run that did not finish,
and the messages of the first hour that must tell the truth.

Each test runs a tiny random GPT-2 (conftest.py) for a few steps at most.
"""

import importlib.util
import json
import re
import signal

import pytest
import torch

from conftest import INJECTED_TRAIN, ROOT, TINY, hf_model, run_python, save_hf, write_text

_spec = importlib.util.spec_from_file_location("evaluate_cli", ROOT / "evaluate.py")
evaluate_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(evaluate_cli)


@pytest.fixture
def setting(tmp_path):
    """(tiny model, training text, cache folder, the common flags of a run)."""
    tiny = save_hf(hf_model(**TINY), tmp_path / "tiny")
    text = write_text(tmp_path / "t.txt", 200)
    cache = str(tmp_path / "cache")
    common = ["--model", tiny, "--train-file", text, "--block-size", "32", "--lr", "1e-3", "--cache-dir", cache,
              "--precision", "fp32", "--lr-scheduler-type", "constant", "--log-every", "2", "--no-progress"]
    return tiny, text, cache, common


def eval_block(stdout) -> dict:
    """The '***** eval metrics *****' block as {key: text}."""
    return dict(re.findall(r"^  (\w+)\s+=\s+(\S+)$", stdout, flags=re.M))


@pytest.mark.parametrize("how", ["ctrl-c", "sigkill", "ctrl-c-lora"])
def test_a_stopped_run_is_evaluated_sampled_and_plotted_at_its_saved_step(setting, tmp_path, capsys, how, monkeypatch):
    """Stopped mid-way (Ctrl-C: interrupted; SIGKILL after the save of step 4: stopped), the run is
    measured on its held-out text with the weights of its saved step: exactly the metrics of a run
    that ended at that step (constant learning rate: the same weights), and every output names the step."""
    tiny, text, cache, common = setting
    out = tmp_path / "stopped"
    ctrl_c = how.startswith("ctrl-c")
    env = {"CTRL_C_AT": "3"} if ctrl_c else {"KILL_AT": "4"}
    # With LoRA the state holds the frozen weights and the adapters: merged, as train.py saves them.
    extra = ["--lora", "4"] if how == "ctrl-c-lora" else [] if ctrl_c else ["--save-every", "2"]
    p = run_python(INJECTED_TRAIN, *common, *extra, "--max-steps", "8", "--out", out, env=env)
    assert p.returncode == (130 if ctrl_c else -signal.SIGKILL), p.stderr
    step = torch.load(out / "resume.pt", weights_only=True)["step"]
    assert step == (3 if ctrl_c else 4)
    word = "interrupted" if ctrl_c else "stopped"
    assert not (out / "model.safetensors").exists()

    # The reference: a run that ended at that step (trained as the stopped one: one thread), evaluated
    # as a finished run.
    reference = tmp_path / "reference"
    p = run_python(ROOT / "train.py", *common, *extra, "--max-steps", step, "--out", reference)
    assert p.returncode == 0, p.stderr
    assert evaluate_cli.main([str(reference), "--cache-dir", cache, "--json", str(tmp_path / "expected.json")]) == 0
    expected = json.loads((tmp_path / "expected.json").read_text())
    capsys.readouterr()

    assert evaluate_cli.main([str(out), "--cache-dir", cache, "--json", str(tmp_path / "measured.json")]) == 0
    captured = capsys.readouterr()
    measured = json.loads((tmp_path / "measured.json").read_text())
    for key in ("eval_loss", "perplexity", "eval_accuracy", "eval_samples"):
        assert measured[key] == expected[key], key  # exactly: the same weights, the same blocks
    assert f"step {step} of 8, {word}" in captured.out and f"step {step} of 8, {word}" in captured.err

    # A sample: the same text as from the reference model, and the step named.
    prompt = ["--prompt", "the model", "--max-new-tokens", "6", "--seed", "3"]
    assert evaluate_cli.main([str(reference), *prompt]) == 0
    expected_text = capsys.readouterr().out.splitlines()[1]
    assert evaluate_cli.main([str(out), *prompt]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"at step {step} of 8, {word}" in lines[0] and lines[1] == expected_text

    # A plot of its log so far, with no evaluation at all; the legend says how far it got.
    pytest.importorskip("matplotlib")
    import matplotlib.figure

    monkeypatch.setattr(evaluate_cli, "evaluate", lambda *a, **k: pytest.fail("--plot alone evaluated the model"))
    legends = []
    real_savefig = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: (
        legends.extend(t.get_text() for t in fig.axes[0].get_legend().get_texts()), real_savefig(fig, *a, **k))[1])
    assert evaluate_cli.main([str(out), "--plot", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert word in legends[0] and "logged to step" in legends[0], legends


def test_a_run_that_saved_nothing_says_what_to_do(setting, tmp_path):
    from gpt2.errors import UserError
    from harness.outdir import RunDir

    *_, common = setting
    out = tmp_path / "nothing"
    p = run_python(INJECTED_TRAIN, *common, "--max-steps", "8", "--out", out, env={"KILL_IN_STEP": "3"})
    assert p.returncode == -signal.SIGKILL
    with pytest.raises(UserError, match=r"stopped before it saved any state .*--save-every N"):
        evaluate_cli.main([str(out)])
    # Still running (the lock is held) and no state yet: how to get one.
    (out / "status.json").write_text(json.dumps({"status": "running"}))
    held = RunDir(str(out)).claim(add=True)
    try:
        with pytest.raises(UserError, match=r"still going and has saved no state yet .*; Ctrl-C saves one"):
            evaluate_cli.main([str(out)])
    finally:
        held.release()


# --- the progress line: this step's loss ------------------------------------------------------

def test_the_progress_line_shows_the_steps_own_loss(setting, tmp_path, capsys):
    """Logged every 3 steps, the line at step 8 shows step 8's loss (from a run that logs every step),
    not step 6's logged mean, which would stay put and make the run look stuck."""
    import train

    *_, common = setting
    common = [c for c in common if c != "--no-progress"]
    logged = tmp_path / "every-step"
    assert train.main(common + ["--max-steps", "8", "--log-every", "1", "--out", str(logged)]) == 0
    losses = {e["step"]: e["loss"] for e in map(json.loads, (logged / "log.jsonl").read_text().splitlines())}
    capsys.readouterr()
    assert train.main(common + ["--max-steps", "8", "--log-every", "3", "--out", str(tmp_path / "every-3")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("step 8/8")]
    assert lines and f"step loss {losses[8]:.4f}" in lines[0], (lines, losses)
    assert f"step loss {losses[6]:.4f}" not in lines[0] or round(losses[6], 4) == round(losses[8], 4)
    assert "elapsed " in lines[0] and "(steps 2-8)" in lines[0]  # what the elapsed time covers


def test_progress_line_names_what_it_shows():
    from harness.report import progress_line

    line = progress_line(45, 195, torch.tensor(3.21414), 118, 771, 2570, timed_from=1)
    assert line == "step 45/195 (23%)  step loss 3.2141  118 tok/s  elapsed 0:12:51 (steps 2-45)  remaining 0:42:50"


# --- the held-out share of a small text ---------------------------------------------------------

def test_a_small_texts_held_out_share_is_reported_as_it_is(tmp_path):
    """--validation-split 5 of 3 blocks holds out 1: a third of the text, said so in the header and the table."""
    from gpt2.tokenizer import Tokenizer
    from harness.compare import validation_text
    from harness.datasets import build_datasets

    text = tmp_path / "my.txt"
    text.write_text("the model reads text and learns which token comes next\n" * 9)  # about 100 tokens
    tok = Tokenizer.for_checkpoint(str(ROOT / "weights" / "gpt2"), 50257)
    train, val, info = build_datasets(str(text), None, 5, 32, tok, None)
    assert (len(train), len(val)) == (2, 1)
    assert "validating on the last 1 (33.3%, --validation-split 5 in whole blocks, at least one)" in info["summary"]
    assert info["validation_source"] == f"last 33.3% of {text}"
    args = {"train_file": str(text), "validation_split": 5, "data": {k: v for k, v in info.items() if k != "summary"}}
    assert validation_text(json.loads(json.dumps(args))) == "last 33.3% of my.txt"  # through run_args.json


# --- the README's own commands -------------------------------------------------------------------

def readme_commands(section) -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    part = text.split(f"## {section}")[1].split("\n## ")[0]
    return [line.split("#")[0].strip() for line in part.splitlines() if line.startswith("python train.py")]


def test_the_readmes_own_text_example_does_not_write_to_the_main_commands_folder():
    """The main command writes ckpt/ (the default --out); the README's other runs must not, or the
    second command is refused right after the first."""
    from harness.cli import train_parser

    main_out = train_parser().parse_args([]).out
    for command in readme_commands("Your own text"):
        args = train_parser().parse_args(command.split()[2:])
        if not args.plan:  # --plan writes nothing
            assert args.out.rstrip("/") != main_out, command


# --- the plot's title ------------------------------------------------------------------------------

def test_the_plot_title_promises_dashed_eval_curves_only_when_drawn(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.figure

    from harness.compare import plot_curves

    drawn = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: drawn.append(
        (fig.axes[0].get_title(), [line.get_linestyle() for line in fig.axes[0].get_lines()])))
    run = tmp_path / "run"
    run.mkdir()
    (run / "log_history.json").write_text(json.dumps([{"loss": 3.0, "epoch": 0.5, "step": 2},
                                                      {"loss": 2.5, "epoch": 1.0, "step": 4}]))
    plot_curves([str(run)], str(tmp_path / "a.png"))
    assert drawn[-1] == ("training loss (solid)", ["-"])
    # The final evaluation (eval_results.json) is a point on the eval curve.
    (run / "eval_results.json").write_text(json.dumps({"eval_loss": 2.7, "epoch": 1.0}))
    plot_curves([str(run)], str(tmp_path / "b.png"))
    assert drawn[-1] == ("training loss (solid) and eval_loss (dashed)", ["-", "--"])


# --- messages that must tell the truth ----------------------------------------------------------

def test_the_tokenizer_line_says_has_none_only_when_it_has_none(tiny_ckpt, tmp_path):
    import shutil

    from gpt2.tokenizer import SHIPPED_DIR, Tokenizer

    assert "has none" not in Tokenizer.for_checkpoint(SHIPPED_DIR, 50257).describe()  # gpt2's own folder
    assert "has none" not in Tokenizer.for_checkpoint(tiny_ckpt, 50257).describe()
    bare = tmp_path / "bare"
    shutil.copytree(tiny_ckpt, bare)
    for name in ("vocab.json", "merges.txt"):
        (bare / name).unlink()
    assert "(GPT-2's: the model directory has none)" in Tokenizer.for_checkpoint(str(bare), 50257).describe()


def test_ctrl_c_does_not_promise_to_finish_a_step_it_may_drop(capsys):
    from harness.signals import Interrupt

    with Interrupt() as interrupt:
        signal.raise_signal(signal.SIGINT)
    assert interrupt.requested
    said = capsys.readouterr().err
    assert "stopping after this step" not in said and "or dropping it, if its forward pass is still running" in said


def test_mixed_block_sizes_are_said_before_any_evaluation(tiny_ckpt, tmp_path, monkeypatch, capsys):
    text = write_text(tmp_path / "v.txt", 60)
    runs = []
    for name, block in (("a", 16), ("b", 32)):
        run = tmp_path / name
        save_hf(hf_model(**TINY), run)
        (run / "run_args.json").write_text(json.dumps({"block_size": block}))
        runs.append(str(run))
    order = []
    real = evaluate_cli.evaluate
    monkeypatch.setattr(evaluate_cli, "evaluate", lambda *a, **k: (order.append("evaluation"), real(*a, **k))[1])
    monkeypatch.setattr(evaluate_cli.sys, "stderr", type("E", (), {
        "write": lambda self, s: order.append("warning") if "different sizes" in s else None,
        "flush": lambda self: None, "isatty": lambda self: False})())
    assert evaluate_cli.main(runs + ["--validation-file", text, "--cache-dir", str(tmp_path / "cache")]) == 0
    assert order[0] == "warning" and order.count("evaluation") == 2, order


@pytest.mark.precision  # what auto picks: bf16 on a CPU with native bf16, else fp32
def test_fp16_on_a_cpu_says_it_was_not_honoured():
    from gpt2.precision import eval_note, eval_precision, resolve_precision

    precision, why = resolve_precision("fp16", torch.device("cpu"))
    assert why.startswith("--fp16 needs a CUDA GPU, so what auto picks: ")
    # Evaluations run in fp32 either way; the note says so only where training does not.
    expected = "" if precision == "fp32" else "; evaluations in fp32 (what auto picks is for training only)"
    assert eval_note(precision, eval_precision("fp16", precision)) == expected

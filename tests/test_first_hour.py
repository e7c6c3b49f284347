"""What a new user meets in the first hour (issue 22): sampling, quiet runs, the table of runs.

Each test runs a tiny random GPT-2 (conftest.py) for a few steps at most.
"""

import importlib.util
import os
import tempfile
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from gpt2.sampling import next_token, top_k_filter, top_p_filter
from gpt2.weights import load_checkpoint

_spec = importlib.util.spec_from_file_location("evaluate_cli", ROOT / "evaluate.py")
evaluate_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(evaluate_cli)


# --- sampling --------------------------------------------------------------------------

def kept(logits):
    return (logits[0] > float("-inf")).nonzero().flatten().tolist()


def test_top_p_keeps_exactly_the_nucleus():
    # Probabilities 0.5, 0.3, 0.15, 0.05, shuffled in the vocabulary: ids 2, 0, 3, 1 by rank.
    logits = torch.tensor([[0.3, 0.05, 0.5, 0.15]]).log()
    assert kept(top_p_filter(logits, 0.4)) == [2]           # 0.5 alone reaches 0.4
    assert kept(top_p_filter(logits, 0.75)) == [0, 2]       # 0.5 + 0.3
    assert sorted(kept(top_p_filter(logits, 0.9))) == [0, 2, 3]
    assert kept(top_p_filter(logits, 0.99)) == [0, 1, 2, 3]
    kept_logits = top_p_filter(logits, 0.75)
    assert torch.equal(kept_logits[0, [0, 2]], logits[0, [0, 2]])  # the kept scores are unchanged


def test_top_p_and_top_k_match_transformers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(4, 1000, generator=torch.Generator().manual_seed(0)) * 3
    for p in (0.1, 0.5, 0.9):
        theirs = TopPLogitsWarper(top_p=p)(None, logits.clone())
        assert torch.equal(top_p_filter(logits, p).isinf(), theirs.isinf()), p
    assert torch.equal(top_k_filter(logits, 7).isinf(), TopKLogitsWarper(top_k=7)(None, logits.clone()).isinf())


def test_a_tiny_nucleus_is_greedy():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    assert torch.equal(next_token(logits, 1.0, top_p=1e-6, generator=g), logits.argmax(-1, keepdim=True))


def test_generate_samples_in_eval_mode_and_restores_the_mode(tiny_ckpt):
    model = load_checkpoint(tiny_ckpt, dropout=0.5)
    prompt = torch.randint(0, 50257, (2, 5), generator=torch.Generator().manual_seed(0))
    expected = load_checkpoint(tiny_ckpt).eval().generate(prompt, 6, temperature=0)  # no dropout at all
    model.train()
    assert torch.equal(model.generate(prompt, 6, temperature=0), expected)  # dropout 0.5 did not act
    assert model.training  # the training loop's model is left as it was
    model.eval()
    model.generate(prompt, 2, temperature=0)
    assert not model.training


def test_generate_warns_when_the_prompt_is_cut(tiny_ckpt):
    model = load_checkpoint(tiny_ckpt).eval()  # 64 positions
    prompt = torch.randint(0, 50257, (1, 70), generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match="only the prompt's last 54 tokens"):
        out = model.generate(prompt, 10, temperature=0)
    assert torch.equal(out[:, :54], prompt[:, -54:])


def samples(stdout):
    """The sampled texts evaluate.py printed, by their ----- headers."""
    texts, current = [], None
    for line in stdout.splitlines():
        if line.startswith("----- sample"):
            current = []
            texts.append(current)
        elif current is not None:
            current.append(line)
    return ["\n".join(t) for t in texts]


def test_cli_num_samples_top_p_and_a_cut_prompt(tiny_ckpt, capsys):
    argv = [tiny_ckpt, "--prompt", "The model reads", "--max-new-tokens", "8", "--device", "cpu"]
    assert evaluate_cli.main(argv + ["--num-samples", "3"]) == 0
    out = capsys.readouterr().out
    assert "sample 3 of 3" in out and "top-p 1" in out
    three = samples(out)
    assert len(three) == 3 and len(set(three)) == 3 and all(t.startswith("The model reads") for t in three)
    assert evaluate_cli.main(argv + ["--top-p", "1e-9"]) == 0  # the nucleus is the most likely token
    nucleus = samples(capsys.readouterr().out)
    assert evaluate_cli.main(argv + ["--temperature", "0"]) == 0
    assert nucleus == samples(capsys.readouterr().out)
    assert evaluate_cli.main([tiny_ckpt, "--prompt", "word " * 80, "--max-new-tokens", "8"]) == 0
    assert "only its last 56 fit" in capsys.readouterr().err


# --- the test suite itself --------------------------------------------------------------

def test_the_system_temp_folder_is_inside_pytests(tmp_path_factory):
    """What tests and libraries write to the temp folder goes with pytest's folders (conftest.py)."""
    assert Path(tempfile.gettempdir()).is_relative_to(tmp_path_factory.getbasetemp())


# --- --do_eval alone ---------------------------------------------------------------------

def test_do_eval_alone_reads_only_the_validation_file(tiny_ckpt, tmp_path, monkeypatch, capsys):
    import json

    import train
    from conftest import write_text
    from harness import datasets

    def no_training_text(*a, **k):
        raise AssertionError("--do_eval alone read the training text")

    monkeypatch.setattr(datasets, "demo_text", no_training_text)  # no --train-file: the demo corpus
    monkeypatch.setattr(datasets, "build_datasets", no_training_text)
    val = write_text(tmp_path / "val.txt", 40, seed=1)
    out = tmp_path / "out"
    assert train.main(["--do_eval", "--model", tiny_ckpt, "--validation-file", val, "--block-size", "32",
                       "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--precision", "fp32"]) == 0
    captured = capsys.readouterr()
    assert "no training text read" in captured.out
    results = json.loads((out / "eval_results.json").read_text())
    assert results["eval_samples"] > 0 and results["eval_loss"] > 0


# --- which field of a JSON record, or CSV column, is trained on ---------------------------

def test_a_record_without_text_warns_once_naming_the_field(tmp_path, capsys):
    from harness.textfiles import read_texts

    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"id": "a", "body": "x"}\n{"id": "b", "body": "y"}\n', encoding="utf-8")
    assert read_texts(jsonl) == ["a", "b"]
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and 'the field "id"' in err
    csv = tmp_path / "d.csv"
    csv.write_text("label,body\nspam,hello\n", encoding="utf-8")
    assert read_texts(csv) == ["spam"]
    assert 'the column "label"' in capsys.readouterr().err
    jsonl.write_text('{"id": "a", "text": "x"}\n', encoding="utf-8")
    assert read_texts(jsonl) == ["x"] and capsys.readouterr().err == ""  # "text" is the documented choice


# --- evaluate.py --plot on a run that logged nothing ----------------------------------------

def test_plot_says_why_a_run_has_no_curve(tmp_path):
    import json

    pytest.importorskip("matplotlib")
    from gpt2.errors import UserError
    from harness.compare import plot_curves

    run = tmp_path / "quiet"
    run.mkdir()
    (run / "run_args.json").write_text(json.dumps({"log_every": 500, "total_steps": 195}))
    (run / "log_history.json").write_text("[]")
    with pytest.raises(UserError, match="logged the loss every 500 steps and ran 195; train with --log-every 3"):
        plot_curves([str(run)], str(tmp_path / "c.png"))
    # A run still going has no log_history.json yet: its log.jsonl so far is drawn.
    (run / "log_history.json").unlink()
    (run / "log.jsonl").write_text('{"loss": 3.0, "epoch": 0.1, "step": 2}\n{"loss": 2.5, "epoch": 0.2, "step": 4}\n')
    plot_curves([str(run)], str(tmp_path / "c.png"))
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


# --- a run shows itself: the header, the loss logged whatever the run's length -------------

@pytest.mark.parametrize("n_blocks,micro,accum,world,epochs,max_steps,steps",
                         [(130, 2, 1, 1, 3.0, 0, 195), (7, 2, 2, 1, 1.0, 0, 2), (7, 2, 1, 2, 2.5, 0, 5),
                          (50, 1, 3, 1, 3.0, 4, 4)])
def test_planned_steps_are_the_trainers(n_blocks, micro, accum, world, epochs, max_steps, steps, monkeypatch):
    """The one step arithmetic (trainer.step_counts) that the header, --log-every auto and the
    Trainer all use: ceil(epochs x ceil(ceil(blocks / micro) / (accum x processes))), or --max-steps."""
    import numpy as np

    from gpt2 import trainer as trainer_module
    from gpt2.distributed import Dist
    from gpt2.model import GPT2
    from gpt2.config import GPT2Config
    from gpt2.trainer import TrainConfig, Trainer, step_counts

    dist = Dist(world_size=world)
    monkeypatch.setattr(trainer_module, "DDP", lambda model, **kw: model)  # no process group here
    model = GPT2(GPT2Config(vocab_size=16, n_positions=8, n_embd=8, n_layer=1, n_head=2))
    cfg = TrainConfig(epochs=epochs, max_steps=max_steps, batch_size=micro, grad_accum=accum, progress=False)
    trainer = Trainer(model, np.zeros((n_blocks, 8), dtype=np.uint16), cfg, torch.device("cpu"), dist)
    assert step_counts(n_blocks, cfg, world).total_steps == trainer.total_steps == steps


def test_auto_log_every():
    from harness.run import auto_log_every

    assert [auto_log_every("auto", n) for n in (0, 10, 195, 1000)] == [1, 1, 3, 20]
    assert auto_log_every(500, 195) == 500  # an explicit --log-every / --logging_steps wins


def test_a_short_run_logs_its_loss_and_says_what_runs(tiny_ckpt, tmp_path, capsys):
    import json

    import train
    from conftest import write_text

    out = tmp_path / "short"
    text = write_text(tmp_path / "t.txt", 120)
    assert train.main(["--model", tiny_ckpt, "--train-file", text, "--block-size", "32", "--max-steps", "6",
                       "--lr", "1e-3", "--lr-scheduler-type", "cosine", "--out", str(out) + "/",
                       "--cache-dir", str(tmp_path / "cache"), "--precision", "fp32", "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    for said in (f"model: {tiny_ckpt}", "learning rate 1e-3, cosine schedule, 0 warm-up steps",
                 "loss logged every 1 steps (auto", f"output: {out}/", f"saved to {out}/\n"):
        assert said in stdout, said
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in logged if "loss" in e] == [1, 2, 3, 4, 5, 6]
    assert json.loads((out / "run_args.json").read_text())["log_every"] == 1


def test_progress_lines_at_a_steady_pace():
    from harness.report import ProgressLines, time_estimate

    now = [0.0]
    printed = []
    lines = ProgressLines(total_steps=10, tokens_per_step=2048, every=30, print_fn=printed.append,
                          clock=lambda: now[0])
    for step in range(1, 11):
        now[0] = 20.0 * step  # 20 s a step
        lines.update(step, loss=3.0 - step / 10)
    # After step 1 (alive, and how fast), then every 30 s at the earliest (steps 3, 5, 7, 9), and the last.
    assert [line.split("/")[0] for line in printed] == ["step 1", "step 3", "step 5", "step 7", "step 9", "step 10"]
    assert printed[0] == "step 1/10 (10%)  step loss 2.9000  102 tok/s  elapsed 0:00:20 (step 1)  remaining 0:03:00"
    assert printed[-1].endswith("elapsed 0:03:20 (steps 1-10)  remaining 0:00:00")
    # A resumed run: the pace counts this session's steps only.
    now[0] = 0.0
    resumed = ProgressLines(total_steps=10, tokens_per_step=100, start_step=8, print_fn=printed.append,
                            clock=lambda: now[0])
    now[0] = 5.0
    assert resumed.update(9, loss=None) == "step 9/10 (90%)  20 tok/s  elapsed 0:00:05 (step 9)  remaining 0:00:05"
    assert time_estimate(3, 51.0, 195) == ("estimated training time: about 0:55:15 for 195 steps "
                                           "(17 s a step, measured on the first 3)")


# --- the table of runs: which text, the whole train time, comparable or not ----------------

def table_run(root, name, args, results):
    import json

    d = root / name
    d.mkdir()
    (d / "run_args.json").write_text(json.dumps({"model": "gpt2", "lr": 1e-4, "block_size": 1024, **args}))
    (d / "all_results.json").write_text(json.dumps({"train_loss": 2.5, "train_runtime": 100.0, **results}))
    return str(d)


def test_the_table_names_the_validation_text_and_flags_rows_not_comparable(tmp_path):
    from harness.compare import comparison_rows, format_table

    on_file = table_run(tmp_path, "a", {"validation_file": "/data/val.txt", "data": {"validation_sha256": "1" * 64}},
                        {"eval_loss": 2.0})
    same = table_run(tmp_path, "b", {"validation_file": "/other/val.txt", "data": {"validation_sha256": "1" * 64}},
                     {"eval_loss": 2.1})
    held_out = table_run(tmp_path, "c", {"train_file": "/data/train.txt", "validation_split": 5.0},
                         {"eval_loss": 1.5})
    rows = comparison_rows([on_file, same, held_out])
    assert [r["validation"] for r in rows] == ["val.txt", "val.txt", "last 5% of train.txt"]
    md = format_table(rows, markdown=True)
    assert "| validation text |" in md.splitlines()[0] and "| last 5% of train.txt |" in md
    assert "not comparable" in md and "val.txt, last 5% of train.txt" in md
    assert "not comparable" not in format_table(comparison_rows([on_file, same]))  # the same bytes
    bigger_blocks = table_run(tmp_path, "d", {"validation_file": "/data/val.txt", "block_size": 512,
                                              "data": {"validation_sha256": "1" * 64}}, {"eval_loss": 2.0})
    assert "not comparable" in format_table(comparison_rows([on_file, bigger_blocks]))
    # evaluate.py --validation-file: every row measured on that file, now comparable.
    fresh = {d: {"eval_loss": 2.0} for d in (on_file, held_out)}
    rows = comparison_rows([on_file, held_out], fresh, "/tmp/test.txt")
    assert [r["validation"] for r in rows] == ["test.txt", "test.txt"]
    assert "not comparable" not in format_table(rows)


def test_the_table_shows_a_resumed_runs_whole_train_time(tmp_path):
    from harness.compare import comparison_rows, format_table

    whole = table_run(tmp_path, "whole", {"resume": True}, {"train_runtime": 100.0, "train_runtime_total": 300.0})
    partial = table_run(tmp_path, "partial", {"resume": True}, {"train_runtime": 100.0})
    text = format_table(comparison_rows([whole, partial]))
    lines = text.splitlines()
    assert "0:05:00.00" in lines[2] and ">=0:01:40.00" in lines[3]
    assert "earlier sessions' time was not recorded" in lines[-1]


# --- a refused --resume costs no loading -----------------------------------------------------

def test_a_refused_resume_loads_nothing(tmp_path, monkeypatch):
    import train
    from gpt2.errors import UserError
    from gpt2.trainer import TrainConfig
    from dataclasses import asdict

    out = tmp_path / "run"
    out.mkdir()
    config = {**asdict(TrainConfig(lr=1e-3, max_steps=40)), "progress": None}
    torch.save({"config": config, "step": 4}, out / "resume.pt")

    def no_loading(*a, **k):
        raise AssertionError("the model and the data were loaded for a resume that is refused")

    monkeypatch.setattr(train, "setup", no_loading)
    with pytest.raises(UserError, match=r"differs from the interrupted run: lr 0.0001 \(saved: 0.001\)"):
        train.main(["--resume", "--out", str(out), "--lr", "1e-4", "--max-steps", "40"])
    with pytest.raises(AssertionError, match="were loaded"):  # the same settings: on to loading
        train.main(["--resume", "--out", str(out), "--lr", "1e-3", "--max-steps", "40"])


# For each setting a resume must keep (gpt2/settings.py, MATCH): a command-line value other than
# TrainConfig's default. A new MATCH setting needs its line here (test_every_match_setting_...).
OTHER_VALUES = {"lr": "1e-4", "epochs": "2", "max_steps": "41", "weight_decay": "0.01", "lr_scheduler": "cosine",
                "lr_scheduler_kwargs": '{"num_cycles": 1}', "warmup_steps": "3", "warmup_ratio": "0.1",
                "max_grad_norm": "0.5", "adam_beta1": "0.8", "adam_beta2": "0.95", "adam_epsilon": "1e-6",
                "seed": "7"}


def test_every_match_setting_has_another_value_to_try():
    from gpt2 import settings

    assert set(OTHER_VALUES) == set(settings.must_match(at_load=False))


@pytest.mark.parametrize("name", sorted(OTHER_VALUES))
def test_resume_refuses_each_changed_setting_before_loading(name, tmp_path, monkeypatch, capsys):
    """Every MATCH setting, changed on --resume: one line naming it, before any loading; resume.pt stays."""
    import train
    from gpt2 import settings
    from gpt2.errors import run_cli
    from gpt2.trainer import TrainConfig

    out = tmp_path / "run"
    out.mkdir()
    saved = TrainConfig(lr=1e-3, max_steps=40, lr_scheduler="cosine" if name == "lr_scheduler_kwargs" else "linear")
    torch.save({"config": settings.record(saved), "step": 4}, out / "resume.pt")
    before = (out / "resume.pt").read_bytes()
    monkeypatch.setattr(train, "setup", lambda *a, **k: pytest.fail("loaded for a refused resume"))
    flag = next(f for f in settings.declared() if f.name == name).metadata["flags"][0]
    base = {"--lr": "1e-3", "--max-steps": "40", "--lr-scheduler-type": saved.lr_scheduler}
    argv = [x for k, v in {**base, flag: OTHER_VALUES[name]}.items() for x in (k, v)]
    assert run_cli(train.main, ["--resume", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "differs from the interrupted run" in err[0] and f"{name} " in err[0], err
    assert (out / "resume.pt").read_bytes() == before


# --- checkpoint-<step>/ folders (harness/checkpoints.py; the loop writes them) ---------------

def test_checkpoint_folders_are_models_with_their_state_beside(tiny_ckpt, tmp_path, capsys):
    import json
    import shutil

    from conftest import write_text
    from gpt2.weights import save_checkpoint
    from harness import checkpoints

    model = load_checkpoint(tiny_ckpt)
    val = write_text(tmp_path / "val.txt", 40, seed=1)

    def save_model(directory):
        save_checkpoint(model, directory)
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(Path(tiny_ckpt, name), directory)

    out = tmp_path / "out"
    out.mkdir()
    args = {"model": tiny_ckpt, "validation_file": val, "block_size": 32}
    for step in (2, 4, 6):
        checkpoints.write(str(out), step, save_model, lambda path: torch.save({"step": step}, path), args,
                          {"global_step": step, "log_history": []})
    assert [s for s, _ in checkpoints.checkpoints(str(out))] == [2, 4, 6]
    assert checkpoints.rotate(str(out), 2) == [str(out / "checkpoint-2")]
    assert checkpoints.rotate(str(out), 1, keep=[str(out / "checkpoint-4")]) == []  # the best stays
    # A save killed half-way leaves a temporary folder, never a checkpoint-<step>/ that is not whole.
    with pytest.raises(RuntimeError):
        checkpoints.write(str(out), 8, save_model, lambda path: (_ for _ in ()).throw(RuntimeError("disk full")),
                          args, {})
    assert [s for s, _ in checkpoints.checkpoints(str(out))] == [4, 6] and sorted(os.listdir(out)) == \
        ["checkpoint-4", "checkpoint-6"]
    # evaluate.py measures a checkpoint folder on the run's validation text, transformers opens it.
    assert evaluate_cli.main([str(out / "checkpoint-6"), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "***** eval metrics *****" in capsys.readouterr().out
    from transformers import GPT2LMHeadModel

    theirs = GPT2LMHeadModel.from_pretrained(out / "checkpoint-6").eval()
    ids = torch.randint(0, 50257, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(theirs(ids).logits, model.eval()(ids)[0], atol=1e-5)
    assert json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())["global_step"] == 6


def test_overwrite_removes_the_old_runs_checkpoint_folders_and_claim_their_half_saves(tmp_path):
    from harness.outdir import RunDir

    out = tmp_path / "out"
    for name in ("checkpoint-3", "checkpoint-5.tmp-123"):
        (out / name).mkdir(parents=True)
        (out / name / "model.safetensors").write_bytes(b"x")
    (out / "notes.txt").write_text("mine")
    run = RunDir(str(out)).claim(overwrite=True)
    run.release()
    assert sorted(os.listdir(out)) == ["notes.txt"]  # not train.py's: left alone


# --- the loop's side: progress lines, the estimate, checkpoint folders from --save-every -----

def test_a_run_into_a_file_shows_progress_lines_and_an_estimate(tiny_ckpt, tmp_path, capsys):
    import train
    from conftest import write_text

    out = tmp_path / "run"
    text = write_text(tmp_path / "t.txt", 120)
    assert train.main(["--model", tiny_ckpt, "--train-file", text, "--block-size", "32", "--max-steps", "8",
                       "--save-every", "4", "--save-total-limit", "1", "--out", str(out),
                       "--cache-dir", str(tmp_path / "cache"), "--precision", "fp32"]) == 0
    captured = capsys.readouterr()  # not a terminal: no bar, plain lines
    assert "step 1/8" not in captured.err  # the first step warms up: timed from its end
    assert "step 2/8 (25%)" in captured.err and "step 8/8 (100%)  step loss " in captured.err
    assert "remaining 0:00:00" in captured.err
    assert "estimated training time: about " in captured.out and "for 8 steps" in captured.out
    # --save-every 4: checkpoint-4/ then checkpoint-8/, the older one rotated away; the run's
    # resume.pt is superseded by the final model, the folder keeps its state.
    assert sorted(f for f in os.listdir(out) if f.startswith(("checkpoint", "resume"))) == ["checkpoint-8"]
    assert torch.load(out / "checkpoint-8" / "resume.pt", weights_only=True)["step"] == 8
    assert evaluate_cli.main([str(out / "checkpoint-8"), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "***** eval metrics *****" in capsys.readouterr().out


def test_resume_from_a_checkpoint_folder_of_the_run_continues_it(tmp_path):
    import argparse

    import train
    from gpt2.errors import UserError
    from harness import outdir

    out, other = tmp_path / "run", tmp_path / "other"
    for d in (out, other):
        (d / "checkpoint-6").mkdir(parents=True)
        torch.save({"step": 6}, d / "checkpoint-6" / "resume.pt")
        (d / "model.safetensors").write_bytes(b"x")
    args = argparse.Namespace(resume=False, resume_from=str(out / "checkpoint-6"), out=str(out))
    state = train.resume_state(args)
    assert state == str(out / "checkpoint-6" / "resume.pt")
    outdir.check(str(out), overwrite=False, state=state)  # its own run: allowed into a non-empty --out
    with pytest.raises(UserError, match="not empty"):  # another run's folder: not into this --out
        outdir.check(str(out), overwrite=False, state=str(other / "checkpoint-6" / "resume.pt"))


def test_a_resumed_runs_train_time_counts_every_session(tiny_ckpt, tmp_path, capsys):
    import json

    import train
    from conftest import write_text
    from harness.compare import comparison_rows, format_table

    text = write_text(tmp_path / "t.txt", 120)
    common = ["--model", tiny_ckpt, "--train-file", text, "--block-size", "32", "--max-steps", "6", "--save-every", "3",
              "--save-total-limit", "2", "--cache-dir", str(tmp_path / "cache"), "--precision", "fp32", "--no-progress"]
    first, second = tmp_path / "first", tmp_path / "second"
    assert train.main(common + ["--out", str(first)]) == 0
    earlier = torch.load(first / "checkpoint-3" / "resume.pt", weights_only=True)["train_seconds"]
    assert earlier > 0
    assert train.main(common + ["--out", str(second), "--resume-from-checkpoint", str(first / "checkpoint-3")]) == 0
    results = json.loads((second / "train_results.json").read_text())
    assert results["train_runtime_total"] == pytest.approx(earlier + results["train_runtime"], abs=0.5)
    assert "train_runtime_total" not in json.loads((first / "train_results.json").read_text())  # one session
    row = comparison_rows([str(second)])[0]
    assert row["train_runtime"] == results["train_runtime_total"] and not row["last_session_only"]
    assert ">=" not in format_table([row])


@pytest.mark.parametrize("name,says", [("missing.txt", "no such file"), ("empty.txt", "the file is empty"),
                                       ("notes.pdf", "cannot read a .pdf file")])
def test_a_wrong_training_file_is_said_before_any_download(name, says, tmp_path, monkeypatch, capsys):
    """--train-file and --validation-file are checked before the model is resolved (a 548 MB download)."""
    import train
    from gpt2.errors import run_cli
    from harness import run

    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "notes.pdf").write_text("x")
    monkeypatch.setattr(run, "resolve", lambda *a, **k: pytest.fail("the model was resolved first"))
    for flag in ("--train-file", "--validation-file"):
        assert run_cli(train.main, [flag, str(tmp_path / name), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
        assert not (tmp_path / "o").exists()

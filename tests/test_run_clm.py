"""run_clm.py's flags mean in train.py what they mean in transformers' Trainer.

Each mapped flag is checked against a reference: transformers itself where it has
one (get_scheduler, TrainingArguments, a real Trainer run whose logs, evaluations and
saves are recorded), else our own building blocks (gpt2.evaluation.evaluate on the
blocks a cap should select, gpt2.data.read_texts for --keep_linebreaks, evaluate.py
for --do_eval). Tiny models, local files, --block_size 32 and a few steps: most runs
go through `train.main([...])` in this process; a subprocess only where the test is
about the process (exit status and stderr, or a SIGKILL).
"""

import csv
import json
import math
import os
import shlex
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import evaluate as evaluate_cli
import train
from conftest import (INJECTED_TRAIN, ROOT, TINY, hf_model, run_python, save_hf, train_loop,
                      write_text)
from gpt2 import loop
from harness.hooks import RunHooks
from harness.cli import REFUSED, train_parser
from gpt2.data import make_blocks, tokenize_texts
from harness.datasets import build_datasets
from harness.textfiles import read_texts
from gpt2.errors import run_cli
from gpt2.evaluation import evaluate
from gpt2.tokenizer import Tokenizer
from gpt2.trainer import TrainConfig, Trainer
from gpt2.weights import load_checkpoint

CPU = torch.device("cpu")
NOTEBOOK = Path("/work/shared/seed/000_751c71f7b1f4a230.txt")


# --- shared material: one tiny checkpoint, two small texts, one token cache ------------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """ckpt: a tiny random GPT-2 (dropout 0) saved by transformers; train/val: texts; cache: token cache."""
    d = tmp_path_factory.mktemp("run_clm")
    return dict(ckpt=save_hf(hf_model(**TINY), d / "tiny"), train=write_text(d / "train.txt", 300, seed=0),
                val=write_text(d / "val.txt", 40, seed=1), cache=str(d / "cache"))


def args_for(files, out, *extra, val=True):
    """A run_clm command line (run_clm spellings) on the shared material, into `out`."""
    argv = ["--model_name_or_path", files["ckpt"], "--train_file", files["train"], "--block_size", 32,
            "--output_dir", out, "--cache-dir", files["cache"], "--disable_tqdm", "--learning_rate", "1e-3",
            "--precision", "fp32"]  # fp32 on every CPU (auto is bf16 on some): the comparisons below are exact
    if val:
        argv += ["--validation_file", files["val"]]
    return [str(a) for a in (*argv, *extra)]


def run(files, out, *extra, val=True):
    """train.main in this process; asserts it succeeded; OUT as a Path."""
    assert train.main(args_for(files, out, *extra, val=val)) == 0
    return Path(out)


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def losses(history):
    return [e for e in history if "loss" in e]


def evals(history):
    return [e for e in history if "eval_loss" in e]


def tokenizer_of(files):
    return Tokenizer.for_checkpoint(files["ckpt"], TINY["vocab_size"])


def all_blocks(files, keep_linebreaks=True):
    """(training blocks, validation blocks) of the shared texts, uncapped."""
    train_blocks, val_blocks, _ = build_datasets(files["train"], files["val"], 5.0, 32, tokenizer_of(files),
                                                 files["cache"], keep_linebreaks=keep_linebreaks)
    return train_blocks, val_blocks


def eval_loss_of(model_dir, blocks):
    return evaluate(load_checkpoint(str(model_dir)), blocks, 8, CPU, "fp32")["eval_loss"]


@pytest.fixture
def seen_blocks(monkeypatch):
    """The (training, validation) blocks each run of train.py trains and evaluates on, in order."""
    seen = []
    real_train = loop.train

    def recording(trainer, val_blocks, *a, **kw):
        seen.append((np.array(trainer.train_blocks), None if val_blocks is None else np.array(val_blocks)))
        return real_train(trainer, val_blocks, *a, **kw)

    monkeypatch.setattr(loop, "train", recording)
    return seen


@pytest.fixture
def saved_steps(monkeypatch):
    """The step of every resumable state written (RunHooks.save_state calls), and the resume*.pt
    files and checkpoint-<step>/ folders after it."""
    saves = []
    save = RunHooks.save_state

    def recording_save(self, t, history):
        save(self, t, history)
        saves.append((t.step, sorted(f for f in os.listdir(self.out)
                                     if (f.startswith("resume") and f.endswith(".pt")) or f.startswith("checkpoint-"))))

    monkeypatch.setattr(RunHooks, "save_state", recording_save)
    return saves


# --- the reference: a real transformers Trainer, its logs, evaluations and saves recorded --

def trainer_events(tmp_path, n_train=6, **training_args):
    """{"log": steps, "eval": steps, "save": steps} of transformers' Trainer with these TrainingArguments.

    Nothing is measured or written (evaluate and _save_checkpoint only record the
    step), so that the Trainer's own decisions of when to log, evaluate and save are
    all that is kept. Micro-batch 2 over n_train examples: n_train / 2 steps per epoch.
    """
    from transformers import Trainer as HFTrainer, TrainerCallback, TrainingArguments

    events = {"log": [], "eval": [], "save": []}

    class Recorder(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if "loss" in (logs or {}):
                events["log"].append(state.global_step)

    class RecordingTrainer(HFTrainer):
        def evaluate(self, *a, **kw):  # what Trainer.evaluate does, but measuring nothing
            events["eval"].append(self.state.global_step)
            metrics = {"eval_loss": 1.0}
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

        def _save_checkpoint(self, *a, **kw):
            events["save"].append(self.state.global_step)

    rng = np.random.default_rng(0)
    data = [{"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(ids)}
            for ids in rng.integers(0, 100, size=(n_train, 16))]
    model = hf_model(vocab_size=100, n_positions=16, n_embd=8, n_layer=1, n_head=2).train()
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), per_device_train_batch_size=2, report_to=[],
                             use_cpu=True, disable_tqdm=True, **training_args)
    RecordingTrainer(model=model, args=args, train_dataset=data, eval_dataset=data[:2],
                     callbacks=[Recorder()]).train()
    return events


def our_events(files, out, saves, *flags):
    """The same for train.py: 6 training blocks, micro-batch 2 (3 steps an epoch), 2 epochs."""
    out = run(files, out, "--max_train_samples", 6, "--per_device_train_batch_size", 2, "--num_train_epochs", 2,
              *flags)
    history = read_json(out / "log_history.json")
    return {"log": [e["step"] for e in losses(history)], "eval": [e["step"] for e in evals(history)],
            "save": [step for step, _ in saves]}


# --- 1. learning-rate schedules ---------------------------------------------------------

def reference_lrs(kind, lr, warmup_steps, total, kwargs=None):
    """The rate transformers' scheduler gives each of the `total` steps (the rate the step uses)."""
    from transformers import get_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = get_scheduler(kind, opt, num_warmup_steps=warmup_steps, num_training_steps=total,
                          scheduler_specific_kwargs=kwargs)
    rates = []
    for _ in range(total):
        rates.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return rates


def trainer_lrs(trainer):
    """The rate our Trainer's schedule gives each step: the LambdaLR's own factor x lr."""
    return [trainer.scheduler.lr_lambdas[0](s) * trainer.cfg.lr for s in range(trainer.total_steps)]


def hf_warmup_steps(ratio, total):
    """The warm-up transformers' TrainingArguments derives from a ratio (5.x: warmup_steps < 1 is a ratio)."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    kw = {"warmup_ratio": ratio} if "warmup_ratio" in fields else {"warmup_steps": ratio}
    return TrainingArguments(output_dir="/nonexistent", report_to=[], use_cpu=True, **kw).get_warmup_steps(total)


# (warm-up flag, value, total steps): 0.25 x 10 = 2.5 -> 3; 0.1 x 30 = 3.0000000000000004 -> 4 in floats
WARMUPS = [("--warmup_steps", 3, 10), ("--warmup_ratio", 0.25, 10), ("--warmup_ratio", 0.1, 30)]


# Every schedule of gpt2/schedules.py, with its default parameters and with others (run_clm's
# --lr_scheduler_kwargs), against transformers' get_scheduler.
SCHEDULE_CASES = [("linear", {}), ("cosine", {}), ("cosine", {"num_cycles": 1.5}), ("cosine_with_restarts", {}),
                  ("cosine_with_restarts", {"num_cycles": 2}), ("cosine_with_min_lr", {"min_lr_rate": 0.1}),
                  ("cosine_with_min_lr", {"min_lr": 1e-5, "num_cycles": 1}), ("polynomial", {}),
                  ("polynomial", {"lr_end": 1e-5, "power": 2.0}), ("inverse_sqrt", {}),
                  ("inverse_sqrt", {"timescale": 5}), ("constant_with_warmup", {}), ("constant", {})]


def test_every_schedule_is_tested():
    from gpt2.schedules import SCHEDULES

    assert {kind for kind, _ in SCHEDULE_CASES} == set(SCHEDULES)


@pytest.mark.parametrize("warmup", WARMUPS, ids=lambda w: f"{w[0][2:]}={w[1]}-of-{w[2]}")
@pytest.mark.parametrize("kind,kwargs", SCHEDULE_CASES, ids=lambda c: str(c).replace(" ", ""))
def test_schedule_matches_get_scheduler_step_by_step(kind, kwargs, warmup, files):
    """The flags -> TrainConfig -> Trainer -> its schedule, rate by rate, against get_scheduler (warm-up included)."""
    flag, value, total = warmup
    args = train_parser().parse_args(["--lr_scheduler_type", kind, "--lr_scheduler_kwargs", json.dumps(kwargs),
                                      flag, str(value), "--max_steps", str(total)])
    cfg = TrainConfig(lr=3e-4, max_steps=total, lr_scheduler=args.lr_scheduler,
                      lr_scheduler_kwargs=args.lr_scheduler_kwargs, warmup_steps=args.warmup_steps,
                      warmup_ratio=args.warmup_ratio, progress=False)
    t = Trainer(load_checkpoint(files["ckpt"]), np.zeros((4, 32), np.uint16), cfg, CPU)
    expected_warmup = value if flag == "--warmup_steps" else hf_warmup_steps(value, total)
    if flag == "--warmup_ratio":
        assert expected_warmup == math.ceil(value * total)
    assert t.warmup_steps == expected_warmup
    assert trainer_lrs(t) == pytest.approx(reference_lrs(kind, 3e-4, expected_warmup, total, kwargs), rel=1e-12,
                                           abs=1e-18)


@pytest.mark.parametrize("config,message", [
    (dict(lr_scheduler="cosin"), "unknown learning-rate schedule 'cosin'"),
    (dict(lr_scheduler="reduce_lr_on_plateau"), "steps on evaluations"),
    (dict(lr_scheduler="cosine", lr_scheduler_kwargs={"cycles": 2}), "no parameter 'cycles'"),
    (dict(lr_scheduler="linear", lr_scheduler_kwargs={"num_cycles": 2}), "takes no parameters"),
    (dict(lr_scheduler="cosine", lr_scheduler_kwargs={"num_cycles": "2"}), "finite number"),
    (dict(lr_scheduler="cosine_with_min_lr"), "one of min_lr or min_lr_rate"),
    (dict(lr_scheduler="polynomial", lr=1e-8), "lr_end"),
    (dict(adam_beta1=1.0), "betas"),
])
def test_a_config_that_cannot_train_is_refused_in_one_line(config, message):
    """A notebook's TrainConfig is checked as the flags are: an unknown schedule never trains a linear one."""
    from gpt2.errors import UserError

    with pytest.raises(UserError, match=message):
        TrainConfig(**config)


@pytest.mark.parametrize("argv,message", [
    (["--lr_scheduler_type", "cosin"], "unknown learning-rate schedule 'cosin'"),
    (["--lr_scheduler_type", "reduce_lr_on_plateau"], "steps on evaluations"),
    (["--lr_scheduler_kwargs", "{num_cycles: 2}"], "not JSON"),
    (["--lr_scheduler_kwargs", "[2]"], "JSON object"),
    (["--lr_scheduler_type", "cosine", "--lr_scheduler_kwargs", '{"num_cycle": 2}'], "no parameter 'num_cycle'"),
    (["--adam_beta2", "1"], "must be in [0, 1)"),
    (["--adam_epsilon", "0"], "must be a positive number"),
])
def test_schedule_and_adam_flags_refused_in_one_line(argv, message, capsys):
    try:
        code = run_cli(train.main, ["--max_steps", "1", *argv])  # refused by check_train_flags
    except SystemExit as e:  # refused by the parser
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and message in err[0], err


def test_adam_flags_are_the_trainers(files):
    """--adam_beta1/2 and --adam_epsilon reach torch's AdamW as the Trainer's TrainingArguments pass them."""
    args = train_parser().parse_args(["--adam_beta1", "0.8", "--adam_beta2", "0.95", "--adam_epsilon", "1e-6"])
    cfg = TrainConfig(adam_beta1=args.adam_beta1, adam_beta2=args.adam_beta2, adam_epsilon=args.adam_epsilon)
    t = Trainer(load_checkpoint(files["ckpt"]), np.zeros((4, 32), np.uint16), cfg, CPU)
    group = t.optimizer.param_groups[0]
    assert group["betas"] == (0.8, 0.95) and group["eps"] == 1e-6


def test_docstring_schedule_example(files):
    """gpt2/schedules.py's worked example (lr 1e-4, 10 steps, 2 warm-up, linear) is what the Trainer uses."""
    from fractions import Fraction

    from gpt2 import schedules

    rows = {}
    for line in schedules.__doc__.splitlines():
        words = line.split()
        if words[:1] in (["factor"], ["rate"]) and len(words) == 11:
            rows[words[0]] = words[1:]
    assert set(rows) == {"factor", "rate"}, "the example's table is gone from schedules.py's docstring"
    cfg = TrainConfig(lr=1e-4, max_steps=10, warmup_steps=2, lr_scheduler="linear")
    rates = trainer_lrs(Trainer(load_checkpoint(files["ckpt"]), np.zeros((4, 32), np.uint16), cfg, CPU))
    assert rates == pytest.approx([float(r) for r in rows["rate"]], rel=1e-12, abs=0)
    assert [r / 1e-4 for r in rates] == pytest.approx([float(Fraction(f)) for f in rows["factor"]], rel=1e-12, abs=0)
    assert rates == pytest.approx(reference_lrs("linear", 1e-4, 2, 10), rel=1e-12, abs=0)

@pytest.mark.parametrize("kind,flag,value,kwargs", [
    ("linear", "--warmup_ratio", 0.3, {}), ("cosine", "--warmup_ratio", 0.25, {}),
    ("cosine_with_restarts", "--warmup_steps", 1, {"num_cycles": 2}), ("constant_with_warmup", "--warmup_steps", 3, {}),
    ("constant", "--warmup_steps", 3, {})])
def test_logged_learning_rates_match_get_scheduler(kind, flag, value, kwargs, files, tmp_path):
    """End to end: the learning_rate of every log line (--logging_steps 1) is transformers' rate for that step."""
    total = 7
    out = run(files, tmp_path / "o", "--lr_scheduler_type", kind, "--lr_scheduler_kwargs", json.dumps(kwargs), flag,
              value, "--max_steps", total, "--logging_steps", 1, val=False)
    logged = losses(read_json(out / "log_history.json"))
    assert [e["step"] for e in logged] == list(range(1, total + 1))
    warmup = value if flag == "--warmup_steps" else hf_warmup_steps(value, total)
    reference = reference_lrs(kind, 1e-3, warmup, total, kwargs)
    assert [e["learning_rate"] for e in logged] == pytest.approx(reference, rel=1e-12, abs=0)
    if kind != "constant":
        assert reference[0] == 0.0 and max(reference) == pytest.approx(1e-3)  # a warm-up took place


# --- 2. --max_train_samples / --max_eval_samples ---------------------------------------------

def test_max_samples_take_the_first_blocks(files, tmp_path, seen_blocks):
    train_blocks, val_blocks = all_blocks(files)
    assert len(train_blocks) > 10 and len(val_blocks) > 4
    out = run(files, tmp_path / "o", "--max_train_samples", 10, "--max_eval_samples", 4, "--max_steps", 2)
    (trained_on, evaluated_on), = seen_blocks
    assert np.array_equal(trained_on, train_blocks[:10])
    assert np.array_equal(evaluated_on, val_blocks[:4])
    results = read_json(out / "all_results.json")
    assert results["train_samples"] == 10 and results["eval_samples"] == 4
    assert read_json(out / "train_results.json")["train_samples"] == 10
    ev = read_json(out / "eval_results.json")
    assert ev["eval_samples"] == 4
    # The final eval_loss is the trained model's on the first 4 validation blocks, and only those.
    assert ev["eval_loss"] == pytest.approx(eval_loss_of(out, val_blocks[:4]), rel=1e-12)
    assert ev["eval_loss"] != pytest.approx(eval_loss_of(out, val_blocks[-4:]), rel=1e-6)


def test_max_samples_above_the_data_keep_it_all(files, tmp_path):
    """As run_clm: min(N, number of blocks)."""
    train_blocks, val_blocks = all_blocks(files)
    out = run(files, tmp_path / "o", "--max_train_samples", 100000, "--max_eval_samples", 100000, "--max_steps", 1)
    results = read_json(out / "all_results.json")
    assert results["train_samples"] == len(train_blocks) and results["eval_samples"] == len(val_blocks)


# --- 3. --do_train / --do_eval ----------------------------------------------------------------

@pytest.mark.precision
def test_do_eval_alone_evaluates_only_as_evaluate_py(files, tmp_path, capsys):
    out = tmp_path / "eval_only"
    weights = Path(files["ckpt"], "model.safetensors").read_bytes()
    assert train.main(args_for(files, out, "--do_eval")) == 0
    stdout = capsys.readouterr().out
    assert "***** eval metrics *****" in stdout and "***** train metrics *****" not in stdout
    assert not (out / "model.safetensors").exists() and not (out / "config.json").exists()
    for name in ("train_results.json", "log_history.json", "resume.pt"):
        assert not (out / name).exists(), name
    assert Path(files["ckpt"], "model.safetensors").read_bytes() == weights  # the model is not trained
    ours, everything = read_json(out / "eval_results.json"), read_json(out / "all_results.json")

    reference = tmp_path / "evaluate.json"
    assert evaluate_cli.main([files["ckpt"], "--validation-file", files["val"], "--block-size", "32",
                              "--cache-dir", files["cache"], "--json", str(reference), "--precision", "fp32"]) == 0
    ref = read_json(reference)
    for results in (ours, everything):
        assert results["eval_loss"] == pytest.approx(ref["eval_loss"], abs=1e-6)
        assert results["eval_accuracy"] == ref["eval_accuracy"]
        assert results["eval_samples"] == ref["eval_samples"]
        assert results["perplexity"] == pytest.approx(ref["perplexity"], rel=1e-6)


@pytest.mark.parametrize("native", ["1", "0"], ids=["bf16-cpu", "fp32-cpu"])
def test_auto_trains_as_the_cpu_allows_and_evaluates_in_fp32(native, files, tmp_path, capsys, monkeypatch):
    """Issue #19: --precision auto's bf16 is for training; the evaluations during training and at
    its end give what evaluate.py measures on the saved model, on any CPU. --bf16 evaluates in bf16."""
    monkeypatch.setenv("GPT2_CPU_BF16", native)
    out = run(files, tmp_path / "o", "--precision", "auto", "--max_steps", 2, "--eval_steps", 2,
              "--eval_strategy", "steps")
    header = capsys.readouterr().out
    assert f"precision {'bf16' if native == '1' else 'fp32'}: auto" in header
    assert ("evaluations in fp32" in header) == (native == "1")
    reference = tmp_path / "evaluate.json"
    assert evaluate_cli.main([str(out), "--validation-file", files["val"], "--block-size", "32",
                              "--cache-dir", files["cache"], "--json", str(reference)]) == 0
    ref = read_json(reference)
    during = [e for e in read_json(out / "log_history.json") if "eval_loss" in e]
    for results in (read_json(out / "eval_results.json"), during[-1]):
        assert results["eval_loss"] == pytest.approx(ref["eval_loss"], abs=1e-6)
        assert results["eval_accuracy"] == ref["eval_accuracy"]
    named = tmp_path / "named.json"  # a precision the user names is used for the evaluation too
    assert evaluate_cli.main([str(out), "--validation-file", files["val"], "--block-size", "32", "--bf16",
                              "--cache-dir", files["cache"], "--json", str(named)]) == 0
    assert "cpu bf16" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--do_train"], ["--do_train", "--do_eval"], []], ids=["train", "both", "neither"])
def test_do_train_and_do_eval(flags, files, tmp_path, capsys):
    """--do_train alone: no evaluation at all (not even the ones asked for during training);
    --do_train --do_eval, or neither: train, evaluate during training as asked, then at the end."""
    out = run(files, tmp_path / "o", *flags, "--max_steps", 4, "--logging_steps", 1,
              "--eval_strategy", "steps", "--eval_steps", 2)
    stdout = capsys.readouterr().out
    history = read_json(out / "log_history.json")
    assert (out / "model.safetensors").is_file() and (out / "train_results.json").is_file()
    assert "***** train metrics *****" in stdout
    assert [e["step"] for e in losses(history)] == [1, 2, 3, 4]
    if flags == ["--do_train"]:
        assert evals(history) == []
        assert not (out / "eval_results.json").exists()
        assert "eval_loss" not in read_json(out / "all_results.json")
        assert "***** eval metrics *****" not in stdout and "eval_loss" not in stdout
    else:
        assert [e["step"] for e in evals(history)] == [2, 4]
        ev = read_json(out / "eval_results.json")
        assert "***** eval metrics *****" in stdout
        assert ev["eval_loss"] == pytest.approx(eval_loss_of(out, all_blocks(files)[1]), rel=1e-12)
        assert read_json(out / "all_results.json")["eval_loss"] == ev["eval_loss"]


# --- 4. evaluation and save strategies, --save_total_limit, --resume_from_checkpoint ----------

EVENT_CASES = {
    # id: (train.py flags, the same as TrainingArguments)
    "eval-steps-2": (["--eval_strategy", "steps", "--eval_steps", 2, "--logging_steps", 1],
                     dict(eval_strategy="steps", eval_steps=2, logging_steps=1, save_strategy="no")),
    "eval-steps-by-logging-save-epoch": (["--eval_strategy", "steps", "--logging_steps", 3, "--save_strategy", "epoch"],
                                         dict(eval_strategy="steps", logging_steps=3, save_strategy="epoch")),
    "evaluation_strategy-epoch-save-steps-2": (["--evaluation_strategy", "epoch", "--logging_steps", 2,
                                                "--save_strategy", "steps", "--save_steps", 2,
                                                "--save_total_limit", 10],
                                               dict(eval_strategy="epoch", logging_steps=2, save_strategy="steps",
                                                    save_steps=2, save_total_limit=10)),
    "eval-no-logging-first-step": (["--eval_strategy", "no", "--eval_steps", 2, "--logging_steps", 3,
                                    "--logging_first_step"],
                                   dict(eval_strategy="no", eval_steps=2, logging_steps=3, logging_first_step=True,
                                        save_strategy="no")),
    "eval-and-save-steps-3": (["--eval_strategy", "steps", "--eval_steps", 3, "--save_strategy", "steps",
                               "--save_steps", 3, "--logging_steps", 3],
                              dict(eval_strategy="steps", eval_steps=3, save_strategy="steps", save_steps=3,
                                   logging_steps=3)),
}


@pytest.mark.parametrize("case", list(EVENT_CASES))
def test_log_eval_and_save_steps_match_the_trainer(case, files, tmp_path, saved_steps):
    """6 examples, micro-batch 2, 2 epochs = 6 steps: the steps at which the Trainer logs,
    evaluates and saves, and the steps at which train.py does (log_history, RunHooks.save_state)."""
    flags, hf_args = EVENT_CASES[case]
    ref = trainer_events(tmp_path, num_train_epochs=2, **hf_args)
    ours = our_events(files, tmp_path / "o", saved_steps, *flags)
    assert ours["log"] == ref["log"]
    assert ours["eval"] == ref["eval"]
    assert ours["save"] == ref["save"]
    if "logging_first_step" in flags:
        assert ours["log"] == [1, 3, 6]


NOT_DIVIDING = {  # a run of 6 steps; id: (what is compared, train.py flags, the same as TrainingArguments)
    # The Trainer (transformers 5) evaluates at step 4 and once more at the end of training
    # (step 6), so that the last model is a candidate for --load_best_model_at_end too.
    "eval_steps-4": ("eval", ["--eval_strategy", "steps", "--eval_steps", 4, "--logging_steps", 2],
                     dict(eval_strategy="steps", eval_steps=4, logging_steps=2, save_strategy="no")),
    # The Trainer logs at step 4 only: the notebook's 3 epochs of 1348 steps show 8 lines, not 9.
    "logging_steps-4": ("log", ["--logging_steps", 4], dict(logging_steps=4, save_strategy="no")),
}


@pytest.mark.parametrize("case", list(NOT_DIVIDING))
def test_steps_that_do_not_divide_the_run_as_the_trainer(case, files, tmp_path, saved_steps):
    what, flags, hf_args = NOT_DIVIDING[case]
    ref = trainer_events(tmp_path, num_train_epochs=2, **hf_args)
    ours = our_events(files, tmp_path / "o", saved_steps, *flags)
    assert ours[what] == ref[what]


def test_save_total_limit_keeps_the_last_checkpoint_folders_and_resume_from_one(files, tmp_path, saved_steps, capsys):
    out = run(files, tmp_path / "o", "--max_steps", 5, "--save_strategy", "steps", "--save_steps", 1,
              "--save_total_limit", 3, "--logging_steps", 1, "--eval_strategy", "steps", "--eval_steps", 2)
    assert [step for step, _ in saved_steps] == [1, 2, 3, 4, 5]
    for step, present in saved_steps:  # after the save of `step`: resume.pt and the newest 3 folders
        assert present == sorted(["resume.pt"] + [f"checkpoint-{s}" for s in range(max(1, step - 2), step + 1)]), step
    # The finished run: resume.pt is superseded by the model; the 3 folders stay, each whole.
    assert sorted(f for f in os.listdir(out) if f.startswith(("resume", "checkpoint-"))) == \
        ["checkpoint-3", "checkpoint-4", "checkpoint-5"]
    for step in (3, 4, 5):
        folder = out / f"checkpoint-{step}"
        assert torch.load(folder / "resume.pt", weights_only=True)["step"] == step
        assert {"model.safetensors", "config.json", "vocab.json", "run_args.json"} <= set(os.listdir(folder))
        assert read_json(folder / "trainer_state.json")["global_step"] == step
    final, last = load_file(str(out / "model.safetensors")), load_file(str(out / "checkpoint-5" / "model.safetensors"))
    assert all(torch.equal(final[k], last[k]) for k in final)  # the last folder holds the final weights

    capsys.readouterr()
    more = run(files, tmp_path / "more", "--max_steps", 5, "--save_strategy", "steps", "--save_steps", 1,
               "--save_total_limit", 3, "--logging_steps", 1, "--eval_strategy", "steps", "--eval_steps", 2,
               "--resume_from_checkpoint", out / "checkpoint-3")
    assert "resuming at step 3 of 5" in capsys.readouterr().out
    assert [step for step, _ in saved_steps[5:]] == [4, 5]  # steps 1-3 were not run again
    a, b = load_file(str(out / "model.safetensors")), load_file(str(more / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_json(more / "log_history.json") == read_json(out / "log_history.json")


# --- 5. --load_best_model_at_end, --metric_for_best_model --------------------------------------

@pytest.mark.parametrize("metric,key,better", [("eval_loss", "eval_loss", min), ("accuracy", "eval_accuracy", max)])
def test_load_best_model_at_end(metric, key, better, files, tmp_path):
    out = run(files, tmp_path / "o", "--learning_rate", "3e-1", "--max_steps", 6, "--logging_steps", 1,
              "--eval_strategy", "steps", "--eval_steps", 1, "--load_best_model_at_end",
              "--metric_for_best_model", metric)
    scores = [(e[key], e["step"]) for e in evals(read_json(out / "log_history.json"))]
    assert len(scores) == 6
    best_score = better(s for s, _ in scores)
    best_step = next(step for s, step in scores if s == best_score)  # the first of equals: strictly better only
    # The run must prove something: the best evaluation is not the last one, and its score is unique enough.
    assert best_step != 6, scores
    best, final = load_file(str(out / "best" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.equal(best[k], final[k]) for k in best)
    # ... and those weights are the best evaluation's: measured again, they score what it scored.
    val_blocks = all_blocks(files)[1]
    again = evaluate(load_checkpoint(str(out)), val_blocks, 8, CPU, "fp32")
    assert again[key] == pytest.approx(best_score, rel=1e-9)
    assert read_json(out / "eval_results.json")[key] == pytest.approx(best_score, rel=1e-9)


# --- 6. small flags -------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,progress", [([], True), (["--disable_tqdm"], False), (["--disable_tqdm", "True"], False),
                                           (["--disable_tqdm", "false"], True), (["--no-progress"], False)])
def test_disable_tqdm(argv, progress):
    assert train_parser().parse_args(argv).progress is progress


@pytest.mark.parametrize("argv,device", [([], "auto"), (["--use_cpu"], "cpu"), (["--use_cpu", "True"], "cpu"),
                                         (["--use_cpu", "False"], "auto"), (["--device", "cpu"], "cpu")])
def test_use_cpu_flag(argv, device):
    assert train_parser().parse_args(argv).device == device


def test_use_cpu_and_disable_tqdm_true_run(files, tmp_path, capsys):
    out = run(files, tmp_path / "o", "--use_cpu", "--disable_tqdm", "True", "--max_steps", 1, val=False)
    captured = capsys.readouterr()
    assert "on cpu" in captured.out
    assert read_json(out / "run_args.json")["device"] == "cpu"
    assert "step/s" not in captured.err and "it/s" not in captured.err  # no progress bar


def test_keep_linebreaks_false_drops_the_newlines(files, tmp_path, seen_blocks):
    tok = tokenizer_of(files)
    kept = run(files, tmp_path / "kept", "--keep_linebreaks", "True", "--max_steps", 1)
    dropped = run(files, tmp_path / "dropped", "--keep_linebreaks", "False", "--max_steps", 1)
    with_newlines = tokenize_texts(read_texts(files["train"], keep_linebreaks=True), tok)
    without = tokenize_texts(read_texts(files["train"], keep_linebreaks=False), tok)
    assert len(without) < len(with_newlines)
    assert read_json(kept / "run_args.json")["data"]["train_tokens"] == len(with_newlines)
    assert read_json(dropped / "run_args.json")["data"]["train_tokens"] == len(without)
    assert 198 not in without and 198 in with_newlines  # "\n"
    (kept_train, kept_val), (dropped_train, dropped_val) = seen_blocks
    assert np.array_equal(kept_train, make_blocks(with_newlines, 32, "t"))
    assert np.array_equal(dropped_train, make_blocks(without, 32, "t"))
    # The validation file is read the same way (run_clm passes keep_linebreaks to both).
    val_without = tokenize_texts(read_texts(files["val"], keep_linebreaks=False), tok)
    assert np.array_equal(dropped_val, make_blocks(val_without, 32, "v"))
    assert len(dropped_val) < len(kept_val) or not np.array_equal(dropped_val, kept_val[:len(dropped_val)])


def test_gradient_checkpointing_gives_the_same_losses(files, tmp_path):
    common = ["--max_steps", 4, "--logging_steps", 1, "--dropout", 0, "--eval_strategy", "steps", "--eval_steps", 2]
    plain = read_json(run(files, tmp_path / "plain", *common) / "log_history.json")
    ckpt = read_json(run(files, tmp_path / "ckpt", *common, "--gradient_checkpointing") / "log_history.json")
    assert read_json(tmp_path / "ckpt" / "run_args.json")["checkpointing"] is True
    assert len(losses(plain)) == 4 and len(evals(plain)) == 2
    for a, b in zip(plain, ckpt, strict=True):
        assert a.keys() == b.keys() and a["step"] == b["step"]
        for k in ("loss", "grad_norm", "eval_loss", "eval_accuracy"):
            if k in a:
                assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-7), (k, a["step"])


# --- 7. --report_to ---------------------------------------------------------------------------------

def test_report_to_tensorboard_writes_the_logged_scalars(files, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = run(files, tmp_path / "o", "--report_to", "tensorboard", "--max_steps", 4, "--logging_steps", 2,
              "--eval_strategy", "steps", "--eval_steps", 2)
    history = read_json(out / "log_history.json")
    sessions = [p for p in (out / "runs").iterdir() if p.is_dir()]
    assert len(sessions) == 1 and list(sessions[0].glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(sessions[0]))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/grad_norm", "train/learning_rate", "train/epoch", "eval/loss",
            "eval/accuracy"} <= scalars

    def series(tag):
        return [(e.step, e.value) for e in acc.Scalars(tag)]

    for tag, key, entries in (("train/loss", "loss", losses(history)), ("train/grad_norm", "grad_norm", losses(history)),
                              ("train/learning_rate", "learning_rate", losses(history)),
                              ("eval/loss", "eval_loss", evals(history)),
                              ("eval/accuracy", "eval_accuracy", evals(history))):
        got = series(tag)
        assert [s for s, _ in got] == [e["step"] for e in entries] == ([2, 4]), tag
        assert [v for _, v in got] == pytest.approx([e[key] for e in entries], rel=1e-6), tag  # float32 in the file


@pytest.mark.parametrize("to,writes_events", [("none", False), ("all", True)])
def test_report_to_none_and_all(to, writes_events, files, tmp_path):
    if writes_events:
        pytest.importorskip("tensorboard")
    out = run(files, tmp_path / "o", "--report_to", to, "--max_steps", 1, "--logging_steps", 1, val=False)
    assert (out / "model.safetensors").is_file()
    assert (out / "runs").is_dir() == writes_events


def test_report_to_wandb_is_refused_in_one_line(files, tmp_path, capsys):
    assert run_cli(train.main, args_for(files, tmp_path / "o", "--report_to", "wandb")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "wandb" in err[0] and "tensorboard" in err[0]
    assert not (tmp_path / "o").exists()


def test_report_to_tensorboard_without_the_package(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    assert run_cli(train.main, args_for(files, tmp_path / "o", "--report_to", "tensorboard")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install tensorboard" in err[0], err
    assert not (tmp_path / "o").exists()  # refused before anything was loaded or written


# --- 8. the refused run_clm options ------------------------------------------------------------------

REFUSED_CASES = {  # the option, its value, and what the line must point to instead
    "--dataset_name": (["wikitext"], "--train-file"),
    "--streaming": ([], "--train-file"),
    "--push_to_hub": ([], "hf upload"),
    "--tokenizer_name": (["gpt2"], "vocab.json"),
    "--config_name": (["x"], "config.json"),
    "--config_overrides": (["n_embd=10"], "config.json"),
    "--cache_dir": (["/tmp"], "--weights-dir"),
    "--trust_remote_code": ([], "gpt2/model.py"),
    "--token": (["abc"], "--model DIR"),
    "--dtype": (["float16"], "--precision"),
    "--optim": (["adamw_torch"], "AdamW"),
    "--preprocessing_num_workers": (["4"], "tokenizers"),
    "--do_predict": ([], "evaluate.py"),
    "--log_level": (["info"], "stderr"),
}


def test_every_refused_option_is_tested():
    assert {options[0] for options in REFUSED} <= set(REFUSED_CASES)


@pytest.mark.parametrize("option", list(REFUSED_CASES))
def test_refused_option_in_one_line(option, capsys):
    values, hint = REFUSED_CASES[option]
    with pytest.raises(SystemExit) as e:
        train_parser().parse_args(["--learning_rate", "1e-3", option, *values, "--do_train"])
    assert e.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), captured.err
    assert option in lines[0] and "is not a train.py option" in lines[0]
    assert hint in lines[0], lines[0]
    assert captured.out == ""


@pytest.mark.parametrize("argv", [["--dataset_name", "wikitext", "--dataset_config_name", "wikitext-2-raw-v1"],
                                  ["--push_to_hub", "--hub_model_id", "me/model"]], ids=["dataset_name", "push_to_hub"])
def test_refused_option_from_the_shell(argv, tmp_path):
    p = run_python(ROOT / "train.py", "--model_name_or_path", "gpt2", "--do_train", *argv, "--output_dir",
                   tmp_path / "o")
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: " + argv[0]), p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "o").exists()


# --- 9. JSON lines and CSV give what the .txt gives -------------------------------------------------

def as_jsonl(txt, path):
    with open(path, "w", encoding="utf-8") as f:
        for line in read_texts(txt):
            f.write(json.dumps({"text": line}) + "\n")
    return str(path)


def as_csv(txt, path):
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text"])
        writer.writerows([line] for line in read_texts(txt))
    return str(path)


@pytest.mark.parametrize("convert", [as_jsonl, as_csv], ids=["jsonl", "csv"])
def test_json_and_csv_train_as_the_txt(convert, files, tmp_path):
    ext = ".jsonl" if convert is as_jsonl else ".csv"
    records = dict(files, train=convert(files["train"], tmp_path / f"train{ext}"),
                   val=convert(files["val"], tmp_path / f"val{ext}"))
    assert all("\n" in t for t in read_texts(records["train"])[:5])  # the records hold the line breaks
    common = ["--max_steps", 4, "--logging_steps", 1, "--eval_strategy", "steps", "--eval_steps", 2, "--seed", 7]
    txt = run(files, tmp_path / "txt", *common)
    other = run(records, tmp_path / ext[1:], *common)
    assert read_json(other / "log_history.json") == read_json(txt / "log_history.json")
    assert len(evals(read_json(txt / "log_history.json"))) == 2
    assert read_json(other / "train_results.json")["train_loss"] == read_json(txt / "train_results.json")["train_loss"]
    assert read_json(other / "eval_results.json")["eval_loss"] == read_json(txt / "eval_results.json")["eval_loss"]
    a, b = read_json(txt / "run_args.json")["data"], read_json(other / "run_args.json")["data"]
    assert (a["train_tokens"], a["train_blocks"], a["validation_blocks"]) == \
        (b["train_tokens"], b["train_blocks"], b["validation_blocks"])


# --- 10. grad_norm: transformers' number, at every step -----------------------------------------------

def test_grad_norm_matches_transformers_trainer(tmp_path, monkeypatch):
    """The setup of test_train.test_matches_transformers_trainer: the logged grad_norm is the Trainer's,
    the total norm before clipping, at every step (one epoch of it: 12 steps)."""
    from transformers import Trainer as HFTrainer, TrainerCallback, TrainingArguments
    from gpt2 import trainer as trainer_module

    small = dict(TINY, n_positions=32)
    blocks = np.random.default_rng(0).integers(0, 50257, size=(48, 32)).astype(np.uint16)
    hf = hf_model(**small).train()
    ours = load_checkpoint(save_hf(hf, tmp_path / "init", with_tokenizer=False))

    norms = []

    class Recorder(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if "loss" in logs:
                norms.append(logs["grad_norm"])

    class SequentialTrainer(HFTrainer):
        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    def example(b):
        ids = torch.from_numpy(b.astype(np.int64))
        labels = ids.clone()
        labels[0] = -100  # the reference then divides by the T-1 predictions, as we do (see test_train)
        return {"input_ids": ids, "labels": labels}

    args = TrainingArguments(
        output_dir=str(tmp_path / "hf"), per_device_train_batch_size=2, gradient_accumulation_steps=2,
        learning_rate=1e-3, num_train_epochs=1, max_grad_norm=0.5, logging_steps=1, save_strategy="no",
        report_to=[], use_cpu=True, seed=0, optim="adamw_torch", dataloader_drop_last=False, disable_tqdm=True,
    )
    SequentialTrainer(model=hf, args=args, train_dataset=[example(b) for b in blocks], callbacks=[Recorder()]).train()

    monkeypatch.setattr(trainer_module, "epoch_permutation", lambda n, seed, epoch: np.arange(n))
    cfg = TrainConfig(lr=1e-3, epochs=1, batch_size=2, grad_accum=2, max_grad_norm=0.5, log_every=1, progress=False)
    _, history, _, _ = train_loop(ours, blocks, cfg)
    logged = history.log
    assert len(logged) == len(norms) == 12
    assert all("grad_norm" in e for e in logged)
    assert [e["grad_norm"] for e in logged] == pytest.approx(norms, rel=1e-4)
    assert max(norms) > 0.5, "clipping never kicked in: the norm would be the same before and after"


def test_every_log_line_has_grad_norm(files, tmp_path, capsys):
    out = run(files, tmp_path / "o", "--max_steps", 4, "--logging_steps", 2, "--eval_strategy", "steps",
              "--eval_steps", 2)
    history = read_json(out / "log_history.json")
    assert [e["step"] for e in losses(history)] == [2, 4]
    assert all(e["grad_norm"] > 0 and math.isfinite(e["grad_norm"]) for e in losses(history))
    assert all("grad_norm" not in e for e in evals(history))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("{'loss'")]
    assert len(lines) == 2 and all("'grad_norm': " in ln for ln in lines)


# --- 11. a killed run keeps its log lines ---------------------------------------------------------------

def test_killed_run_keeps_its_log_and_the_resumed_log_has_no_duplicates(files, tmp_path):
    out = tmp_path / "o"
    common = args_for(files, out, "--max_steps", 8, "--logging_steps", 1, "--save_steps", 3, "--save_total_limit", 2,
                      "--eval_strategy", "steps", "--eval_steps", 4)
    p = run_python(INJECTED_TRAIN, *common, env={"KILL_AT": "6"})
    assert p.returncode == -signal.SIGKILL, p.stderr
    lines = (out / "log.jsonl").read_text(encoding="utf-8").splitlines()
    logged = [json.loads(line) for line in lines]  # every line a whole JSON object
    assert all(isinstance(e, dict) for e in logged)
    assert [e["step"] for e in losses(logged)] == [1, 2, 3, 4, 5, 6]
    assert [e["step"] for e in evals(logged)] == [4]
    state = torch.load(out / "resume.pt", weights_only=True)
    assert state["step"] == 6 and state["log_history"] == logged  # as it happened, nothing lost
    assert torch.load(out / "checkpoint-3" / "resume.pt", weights_only=True)["step"] == 3

    # Resumed from step 3: the lines of steps 4-6 are logged again by the resumed run, once.
    assert train.main(common + ["--resume_from_checkpoint", str(out / "checkpoint-3")]) == 0
    final = [json.loads(line) for line in (out / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert final == read_json(out / "log_history.json")
    assert [e["step"] for e in losses(final)] == list(range(1, 9))
    assert [e["step"] for e in evals(final)] == [4, 8]
    assert final[:3] == logged[:3]


# --- 12. the notebook's commands, with train.py in place of run_clm.py ---------------------------------

NOTEBOOK_COMMANDS = [  # versions 3.4 and 3.5: the second fine-tunes the first's output, as the notebook does
    'python run_clm.py --model_type gpt2 --model_name_or_path gpt2 --train_file "TestData.txt" --do_train '
    '--validation_file "TestData.txt" --do_eval --per_device_train_batch_size 2 --save_steps -1 '
    '--num_train_epochs 3 --fp16 --output_dir="finetuned_model_v3.4" --learning_rate 1e-4',
    'python run_clm.py --model_type gpt2 --model_name_or_path "finetuned_model_v3.4" --train_file "TestData.txt" '
    '--do_train --validation_file "TestData.txt" --do_eval --per_device_train_batch_size 2 --save_steps -1 '
    '--num_train_epochs 3 --fp16 --output_dir="finetuned_model_v3.5" --learning_rate 1e-6',
]


def test_notebook_commands_run_unchanged(files, tmp_path, monkeypatch, capsys):
    if NOTEBOOK.is_file():  # the commands are the notebook's, word for word
        text = NOTEBOOK.read_text(encoding="utf-8")
        assert all(command in text for command in NOTEBOOK_COMMANDS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPT2_CACHE_DIR", files["cache"])
    Path("TestData.txt").write_text(Path(files["val"]).read_text(encoding="utf-8"), encoding="utf-8")  # 9 blocks
    for command in NOTEBOOK_COMMANDS:
        argv = shlex.split(command)
        assert argv[:2] == ["python", "run_clm.py"]
        argv = argv[2:]
        i = argv.index("--model_name_or_path") + 1
        if argv[i] == "gpt2":
            argv[i] = files["ckpt"]  # the tiny checkpoint in place of the download
        assert train.main(argv + ["--block_size", "32", "--max_steps", "2"]) == 0
    stdout = capsys.readouterr().out
    assert stdout.count("***** train metrics *****") == 2 and stdout.count("***** eval metrics *****") == 2
    for name in ("finetuned_model_v3.4", "finetuned_model_v3.5"):
        assert (tmp_path / name / "model.safetensors").is_file(), name
        ev = read_json(tmp_path / name / "eval_results.json")
        assert {"epoch", "eval_accuracy", "eval_loss", "eval_runtime", "eval_samples", "eval_samples_per_second",
                "eval_steps_per_second", "perplexity"} <= set(ev)
        tr = read_json(tmp_path / name / "train_results.json")
        assert {"epoch", "train_loss", "train_runtime", "train_samples", "train_samples_per_second",
                "train_steps_per_second"} <= set(tr)
    v35 = read_json(tmp_path / "finetuned_model_v3.5" / "run_args.json")
    assert v35["model"] == str(tmp_path / "finetuned_model_v3.4") and v35["lr"] == 1e-6

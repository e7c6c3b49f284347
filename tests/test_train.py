"""The training loop against a reference: transformers' Trainer, big batches, an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import (INJECTED_TRAIN, ROOT, TINY, hf_model, run_python, save_hf,
                      train_loop,
                      write_text)
from gpt2 import checkpoint
from gpt2 import trainer as trainer_module
from gpt2.errors import NonFiniteLoss
from gpt2 import loop
from gpt2.loop import History
from gpt2.trainer import TrainConfig, Trainer
from gpt2.weights import load_checkpoint

SMALL = dict(TINY, n_positions=32)


def random_blocks(n, T=32, seed=0):
    return np.random.default_rng(seed).integers(0, 50257, size=(n, T)).astype(np.uint16)


def train_ours(model, blocks, **cfg):
    """(trainer, history) after training with these TrainConfig numbers (a log line per step)."""
    cfg = TrainConfig(**{"progress": False, "log_every": 1, **cfg})
    t, history, _, _ = train_loop(model, blocks, cfg)
    return t, history


def test_matches_transformers_trainer(tmp_path, monkeypatch):
    """Same init, same data order, fp32, accumulation 2, clipping at 0.5: same losses and lrs."""
    from transformers import Trainer as HFTrainer, TrainerCallback, TrainingArguments

    blocks = random_blocks(48)
    hf = hf_model(**SMALL).train()
    ours = load_checkpoint(save_hf(hf, tmp_path / "init", with_tokenizer=False))

    # The reference: Trainer with a sequential sampler, per-step losses and lrs recorded.
    micro_losses, lrs, norms = [], [], []

    class Recorder(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if "learning_rate" in logs:
                lrs.append(logs["learning_rate"])
                norms.append(logs.get("grad_norm"))

    class SequentialTrainer(HFTrainer):
        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)

        def compute_loss(self, model, inputs, *args, **kwargs):
            loss = super().compute_loss(model, inputs, *args, **kwargs)
            micro_losses.append(loss.item() if not isinstance(loss, tuple) else loss[0].item())
            return loss

    def example(b):
        ids = torch.from_numpy(b.astype(np.int64))
        labels = ids.clone()
        # Position 0 is never a target (the model shifts), but transformers 5.x counts
        # it when it divides the summed loss by the number of labelled tokens; masking
        # it makes the reference divide by the T-1 predicted tokens, as we do.
        labels[0] = -100
        return {"input_ids": ids, "labels": labels}

    data = [example(b) for b in blocks]
    args = TrainingArguments(
        output_dir=str(tmp_path / "hf"), per_device_train_batch_size=2, gradient_accumulation_steps=2,
        learning_rate=1e-3, num_train_epochs=2, max_grad_norm=0.5, logging_steps=1, save_strategy="no",
        report_to=[], use_cpu=True, seed=0, optim="adamw_torch", dataloader_drop_last=False,
    )
    SequentialTrainer(model=hf, args=args, train_dataset=data, callbacks=[Recorder()]).train()

    monkeypatch.setattr(trainer_module, "epoch_permutation", lambda n, seed, epoch: np.arange(n))
    _, history = train_ours(ours, blocks, lr=1e-3, epochs=2, batch_size=2, grad_accum=2, max_grad_norm=0.5)
    our_losses = [e["loss"] for e in history.log]
    our_lrs = [e["learning_rate"] for e in history.log]

    # transformers divides each micro-batch's summed loss by the step's token count
    # (num_items_in_batch), so the step loss is the sum of its micro-batch losses.
    ref_steps = np.add.reduceat(micro_losses, range(0, len(micro_losses), 2))
    assert len(our_losses) == len(ref_steps) == 24 >= 20
    assert max(abs(a - b) for a, b in zip(our_losses, ref_steps)) <= 1e-5
    assert max(n for n in norms if n is not None) > 0.5, "clipping never kicked in: the test proves less"
    assert our_lrs == pytest.approx(lrs, rel=1e-12, abs=0)


def test_accumulation_equals_big_batch(tiny_ckpt):
    blocks = random_blocks(32)
    small, small_history = train_ours(load_checkpoint(tiny_ckpt), blocks, lr=1e-3, max_steps=3, batch_size=2,
                                      grad_accum=4)
    big, big_history = train_ours(load_checkpoint(tiny_ckpt), blocks, lr=1e-3, max_steps=3, batch_size=8,
                                  grad_accum=1)
    # The two sum the same gradients in another order (fp32 rounding, ~1e-7 relative). AdamW
    # divides each by sqrt(v) + eps: where a gradient is near eps (1e-8) that turns rounding
    # into a visible share of the step (lr = 1e-3). Over seeds 0-5 and 42 the largest weight
    # difference after 3 steps was 2e-7 to 5e-6, so 1e-5 (1 % of one step) bounds it.
    for (k, a), b in zip(small.model.state_dict().items(), big.model.state_dict().values()):
        assert (a - b).abs().max().item() <= 1e-5, k
    assert [e["loss"] for e in small_history.log] == pytest.approx([e["loss"] for e in big_history.log], abs=1e-5)


def test_short_last_micro_batch_is_weighted_by_tokens(tiny_ckpt):
    """gpt2/trainer.py's worked accumulation example (7 blocks, micro-batch 2 x accumulation 4): the mean over 7 blocks."""
    blocks = random_blocks(7)
    grads = {}

    def run(**cfg):
        model = load_checkpoint(tiny_ckpt)
        for name, p in model.named_parameters():  # the step's gradient, once accumulated, before AdamW
            p.register_post_accumulate_grad_hook(lambda p, name=name: grads.__setitem__(name, p.grad.clone()))
        train_ours(model, blocks, lr=1e-3, max_steps=1, **cfg)
        return model, dict(grads)

    (a, grads_a), (b, grads_b) = run(batch_size=2, grad_accum=4), run(batch_size=7, grad_accum=1)
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        scale = grads_b[name].abs().max().item()
        assert (grads_a[name] - grads_b[name]).abs().max().item() <= 1e-5 * scale, name
        # Adam's first step moves each weight by lr x g / (|g| + eps): where |g| is near
        # eps (1e-8) that ratio turns rounding noise into a fraction of the learning
        # rate, so the weights are compared where the gradient is well above it.
        clear = grads_a[name].abs() > 1e-6
        assert (x - y)[clear].abs().max().item() <= 1e-6, name


def test_tokens_per_second_counts_predicted_tokens_and_short_steps(tiny_ckpt):
    """7 blocks of T = 32, micro-batch 2 x accumulation 2: steps of 4 and 3 blocks, each block
    31 predictions. Two epochs: 2 x 7 x 31 tokens (not 4 steps x 4 x 32)."""
    t, _ = train_ours(load_checkpoint(tiny_ckpt), random_blocks(7), lr=1e-3, epochs=2, batch_size=2, grad_accum=2)
    assert t.step == 4 and t.tokens_per_step == 4 * 31
    assert t.predicted_tokens(0, 4) == 2 * 7 * 31
    assert t.predicted_tokens(1, 2) == 3 * 31  # the short last step of an epoch
    metrics = t.metrics(loss_sum=0.0, steps_run=4, runtime=2.0)
    assert metrics["train_tokens_per_second"] == round(2 * 7 * 31 / 2.0)


# --- the CLI, end to end --------------------------------------------------------

def run_train(*args, check=True, env=None):
    p = run_python(ROOT / "train.py", "--no-progress", *args, env=env)
    if check:
        assert p.returncode == 0, p.stderr
    return p


@pytest.fixture
def text_file(tmp_path):
    return write_text(tmp_path / "train.txt")


def test_cli_end_to_end(tiny_ckpt, text_file, tmp_path):
    out = tmp_path / "out"
    p = run_train("--model", tiny_ckpt, "--train-file", text_file, "--block-size", 32, "--epochs", 1,
                  "--lr", "1e-3", "--log-every", 5, "--out", out, "--cache-dir", tmp_path / "cache")
    for f in ("model.safetensors", "config.json", "vocab.json", "merges.txt", "run_args.json",
              "train_results.json", "eval_results.json", "all_results.json", "log_history.json"):
        assert (out / f).is_file(), f
    assert not (out / "resume.pt").exists()
    train = json.load(open(out / "train_results.json"))
    assert {"epoch", "train_loss", "train_runtime", "train_samples", "train_samples_per_second",
            "train_steps_per_second"} <= set(train)
    ev = json.load(open(out / "eval_results.json"))
    assert {"eval_accuracy", "eval_loss", "eval_runtime", "eval_samples", "eval_samples_per_second",
            "eval_steps_per_second", "perplexity"} <= set(ev)
    assert ev["perplexity"] == pytest.approx(np.exp(ev["eval_loss"]))
    assert "***** train metrics *****" in p.stdout and "***** eval metrics *****" in p.stdout
    assert "{'loss': " in p.stdout and "'learning_rate': " in p.stdout
    args = json.load(open(out / "run_args.json"))
    assert args["lr"] == 1e-3 and args["block_size"] == 32 and args["effective_batch"] == 2
    # the checkpoint opens in transformers
    from transformers import GPT2LMHeadModel

    GPT2LMHeadModel.from_pretrained(str(out))
    # continuing from it (the notebook's v3.5) into another directory works too
    run_train("--model", out, "--train-file", text_file, "--block-size", 32, "--max-steps", 2,
              "--lr", "1e-6", "--out", tmp_path / "more", "--cache-dir", tmp_path / "cache")


def test_notebook_command_runs(tiny_ckpt, text_file, tmp_path):
    """The notebook's run_clm.py command line, with train.py in its place."""
    out = tmp_path / "finetuned_model_v3.0"
    p = run_train("--model_type", "gpt2", "--model_name_or_path", tiny_ckpt, "--train_file", text_file, "--do_train",
                  "--validation_file", text_file, "--do_eval", "--per_device_train_batch_size", 2,
                  "--save_steps", -1, "--num_train_epochs", 1, "--fp16", f"--output_dir={out}",
                  "--learning_rate", "1e-3", "--block_size", 32, "--cache-dir", tmp_path / "cache")
    assert "validation file is the training file" in p.stderr
    assert "--fp16 needs a CUDA GPU" in p.stderr
    assert (out / "model.safetensors").is_file()


def test_resume_after_kill_is_bit_exact(tiny_ckpt, text_file, tmp_path):
    common = ["--model", tiny_ckpt, "--train-file", text_file, "--block-size", 32, "--max-steps", 12,
              "--grad-accum", 2, "--lr", "1e-3", "--dropout", 0.1, "--save-every", 4, "--no-progress",
              "--cache-dir", tmp_path / "cache"]
    run_train(*common, "--out", tmp_path / "straight")

    p = run_python(INJECTED_TRAIN, *common, "--out", tmp_path / "killed", env={"KILL_AT": "8"})
    assert p.returncode == -signal.SIGKILL
    assert (tmp_path / "killed" / "resume.pt").is_file()
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    # without --resume the directory is protected
    p = run_train(*common, "--out", tmp_path / "killed", check=False)
    assert p.returncode == 2 and "--resume" in p.stderr
    p = run_train(*common, "--out", tmp_path / "killed", "--resume")
    assert "resuming at step 8" in p.stdout
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    la = json.load(open(tmp_path / "straight" / "log_history.json"))
    lb = json.load(open(tmp_path / "killed" / "log_history.json"))
    assert la == lb


# SIGKILL in the middle of optimizer step KILL_IN_STEP (after forward and backward, before AdamW),
# or right after resume.pt of step KILL_AFTER_SAVE_AT is written: what a kill at a random moment meets.
def test_resume_with_bf16_after_kills_at_random_moments_is_bit_exact(tiny_ckpt, text_file, tmp_path):
    """Issue #19: bf16 on a CPU with native bf16 (auto, forced: GPT2_CPU_BF16=1), a run killed five
    times at random moments after its first resume.pt, and resumed each time, ends with the weights
    and the log (every step's loss and grad_norm) of the uninterrupted run, bit for bit.

    With the plain loss (--loss-chunk 0): the CPU's default chunked LM-head loss in bf16 on AMX
    computes, in about 1 process in 70, the same step 1e-6 (relative) away from the others,
    resumed or not (docs/run-directory.md); this test would then fail by chance, not by resume."""
    import random

    total, every = 24, 2
    common = ["--model", tiny_ckpt, "--train-file", text_file, "--block-size", 32, "--max-steps", total,
              "--lr", "1e-3", "--dropout", 0.1, "--save-every", every, "--log-every", 1, "--no-progress",
              "--loss-chunk", 0, "--cache-dir", tmp_path / "cache"]
    env = {"GPT2_CPU_BF16": "1", "OMP_NUM_THREADS": "2"}  # auto: bf16, with two threads as on a small machine
    p = run_train(*common, "--out", tmp_path / "straight", env=env)
    assert "precision bf16: auto" in p.stdout
    rng, done = random.Random(19), 0
    args = [*common, "--out", tmp_path / "killed"]
    kills = []
    for i in range(5):  # each kill somewhere after the state this run (re)started from
        moment = rng.choice(["KILL_IN_STEP", "KILL_AT"])  # tests/injections.py
        start = max(done, every)  # within the 4 steps after the state it starts from (the first: step 2)
        step = rng.choice([s for s in range(start + 1, start + 5) if moment == "KILL_IN_STEP" or s % every == 0])
        kills.append((moment, step))
        p = run_python(INJECTED_TRAIN, *args, *(["--resume"] if i else []), env={**env, moment: str(step)})
        assert p.returncode == -signal.SIGKILL, p.stderr
        done = torch.load(tmp_path / "killed" / "resume.pt", weights_only=True)["step"]
    p = run_train(*args, "--resume", env=env)
    assert f"resuming at step {done}" in p.stdout, kills
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a), kills
    la = json.load(open(tmp_path / "straight" / "log_history.json"))
    lb = json.load(open(tmp_path / "killed" / "log_history.json"))
    assert la == lb, kills


def test_resume_refuses_a_different_command(tiny_ckpt, text_file, tmp_path):
    common = ["--model", tiny_ckpt, "--train-file", text_file, "--block-size", 32, "--max-steps", 4,
              "--save-every", 2, "--no-progress", "--cache-dir", tmp_path / "cache", "--out", tmp_path / "o"]
    run_python(INJECTED_TRAIN, *common, "--lr", "1e-3", env={"KILL_AT": "2"})
    def files():  # the run's files (checkpoint-2/'s too); the killed run's .lock is taken over and removed
        out = tmp_path / "o"
        return {str(f.relative_to(out)): f.read_bytes() for f in out.rglob("*") if f.is_file() and f.name != ".lock"}

    before = files()
    p = run_train(*common, "--lr", "1e-4", "--resume", check=False)
    assert p.returncode == 2 and "lr" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    # refused before the run began: every file as it was, status.json included
    assert files() == before and "status.json" in before
    p = run_train(*common, "--lr", "1e-4", "--max-steps", 1, "--resume", check=False)  # a run ending before step 2
    assert p.returncode == 2 and "max_steps" in p.stderr and "not a usable" not in p.stderr


def test_resume_refuses_what_else_changes_the_weights(tiny_ckpt, tmp_path):
    """Not only the flags of TrainConfig: clipping, the data's shape and the model's dropout
    decide the weights too, so a resume with other values would not be exact."""
    from gpt2.errors import UserError

    def trainer(blocks, dropout=None, **cfg):
        cfg = TrainConfig(**{"lr": 1e-3, "max_steps": 4, "progress": False, **cfg})
        return Trainer(load_checkpoint(tiny_ckpt, dropout=dropout), blocks, cfg, torch.device("cpu"))

    def load(t, path):
        checkpoint.load(t, History(t.device), path)

    first = trainer(random_blocks(8))
    state = str(tmp_path / "resume.pt")
    checkpoint.write(checkpoint.state_dict(first, History(first.device), {}), state)
    load(trainer(random_blocks(8)), state)  # the same command resumes
    for other, what in ((trainer(random_blocks(8), max_grad_norm=0.5), "max_grad_norm"),
                        (trainer(random_blocks(9)), "training blocks"),
                        (trainer(random_blocks(8, T=16)), "training blocks"),
                        (trainer(random_blocks(8), dropout=0.3), "attn_pdrop")):
        with pytest.raises(UserError, match=what):
            load(other, state)
    torch.save({"something": "else"}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a training state"):
        load(trainer(random_blocks(8)), str(tmp_path / "other.pt"))


def test_training_blocks_keep_their_small_dtype(tiny_ckpt):
    """The whole training set is not copied to int64 (4x the memory of GPT-2's uint16 ids)."""
    t, _ = train_ours(load_checkpoint(tiny_ckpt), random_blocks(8), max_steps=1)
    assert t.train_blocks.dtype == np.uint16


def test_non_finite_vote_names_the_same_cause_on_every_process(tiny_ckpt):
    """Under torchrun a NaN on another process is this process's stop too, and its reason."""
    t = Trainer(load_checkpoint(tiny_ckpt), random_blocks(4), TrainConfig(progress=False), torch.device("cpu"))
    t.dist = SimpleNamespace(any=lambda flag: True)  # another process voted "NaN"
    with pytest.raises(NonFiniteLoss, match="NaN"):
        loop.check_finite(t, History(t.device))


def test_overwrite_leaves_no_stale_eval_results(tiny_ckpt, text_file, tmp_path):
    """A run without validation written over one with it: the table must not show the old eval_loss."""
    import train

    out = tmp_path / "out"
    common = ["--model", tiny_ckpt, "--train-file", text_file, "--block-size", "32", "--max-steps", "1",
              "--no-progress", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    assert train.main(common) == 0
    assert (out / "eval_results.json").is_file()
    assert train.main(common + ["--overwrite", "--validation-split", "0"]) == 0
    assert not (out / "eval_results.json").exists()
    from harness.compare import comparison_rows

    assert comparison_rows([str(out)])[0]["eval_loss"] is None


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tiny_ckpt, text_file, tmp_path, monkeypatch):
    blocks = random_blocks(16)
    model = load_checkpoint(tiny_ckpt)
    calls = {"n": 0}
    forward = model.forward

    def poisoned(ids, labels=None):
        logits, loss = forward(ids, labels)
        calls["n"] += 1
        return logits, loss * float("nan") if calls["n"] > 6 else loss

    monkeypatch.setattr(model, "forward", poisoned)
    cfg = TrainConfig(lr=1e-3, max_steps=20, batch_size=2, save_every=3, progress=False, log_every=100)
    with pytest.raises(NonFiniteLoss) as e:
        train_loop(model, blocks, cfg, out_dir=tmp_path / "o")
    assert "NaN" in str(e.value)
    state = torch.load(tmp_path / "o" / "resume.pt", weights_only=True)
    assert state["step"] == 6  # 3 and 6 were saved with finite losses; nothing after
    assert all(torch.isfinite(v).all() for v in state["model"].values())


# --- bad input: one line, exit 2, nothing overwritten ---------------------------

@pytest.mark.parametrize("case", ["missing", "empty", "short", "not-utf8", "block-too-big", "lr0", "lr-neg",
                                  "epochs0", "batch0", "lr-text", "lr-empty", "block1", "weight-decay-neg",
                                  "device", "model-file", "out-under-file", "sweep-out-under-file"])
def test_bad_input(case, tiny_ckpt, text_file, tmp_path):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"precious")
    train = text_file
    extra = []
    if case == "missing":
        train = tmp_path / "nope.txt"
    elif case == "empty":
        train = tmp_path / "empty.txt"
        train.write_text("")
    elif case == "short":
        train = tmp_path / "short.txt"
        train.write_text("just a few tokens\n")
    elif case == "not-utf8":
        train = tmp_path / "latin1.txt"
        train.write_bytes("ligne un\nca coûte 5€\n".encode("cp1252"))
    elif case == "block-too-big":
        extra = ["--block-size", 100]
    elif case == "lr0":
        extra = ["--lr", "0"]
    elif case == "lr-neg":
        extra = ["--lr=-1e-4"]
    elif case == "lr-text":
        extra = ["--lr", "fast"]
    elif case == "epochs0":
        extra = ["--epochs", "0"]
    elif case == "batch0":
        extra = ["--batch-size", "0"]
    elif case == "lr-empty":
        extra = ["--lr", "1e-3,,"]  # was a single run at 1e-3, silently
    elif case == "block1":
        extra = ["--block-size", 1]  # was a ZeroDivisionError in the first step
    elif case == "weight-decay-neg":
        extra = ["--weight-decay=-0.1"]  # was accepted (and NaN too)
    elif case == "device":
        extra = ["--device", "gpu"]  # was a RuntimeError traceback from torch.device
    elif case == "model-file":
        extra = ["--model", os.path.join(tiny_ckpt, "config.json")]  # was a download attempt of a hub id
    elif case in ("out-under-file", "sweep-out-under-file"):
        # was a NotADirectoryError traceback when saving, after the whole training
        (tmp_path / "afile").write_text("precious")
        extra = ["--out", tmp_path / "afile" / "sub"] + (["--lr", "1e-3,1e-4"] if case.startswith("sweep") else [])
    args = ["--model", tiny_ckpt, "--train-file", train, "--out", tmp_path / "new", "--cache-dir", tmp_path / "c"]
    if "--block-size" not in extra:
        args += ["--block-size", 32]
    p = run_train(*args, *extra, check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "new").exists() or not os.listdir(tmp_path / "new")
    assert (out / "model.safetensors").read_bytes() == b"precious"
    if case.endswith("out-under-file"):
        assert (tmp_path / "afile").read_text() == "precious"
    msg = lines[0]
    expect = {"missing": "no such file", "empty": "empty", "short": "fewer than one block of 32",
              "not-utf8": "line 2", "block-too-big": "64", "lr0": "positive", "lr-neg": "positive",
              "epochs0": "positive", "batch0": "positive", "lr-text": "not a number", "lr-empty": "empty value",
              "block1": "at least 2", "weight-decay-neg": "--weight-decay", "device": "--device gpu",
              "model-file": "is a file", "out-under-file": "not a directory",
              "sweep-out-under-file": "not a directory"}[case]
    assert expect in msg, msg


def test_refuses_non_empty_out(tiny_ckpt, text_file, tmp_path):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"precious")
    p = run_train("--model", tiny_ckpt, "--train-file", text_file, "--block-size", 32, "--out", out, check=False)
    assert p.returncode == 2 and "not empty" in p.stderr and "--overwrite" in p.stderr
    assert (out / "model.safetensors").read_bytes() == b"precious"


def test_ctrl_c_saves_a_resumable_state(tiny_ckpt, text_file, tmp_path):
    common = ["--model", tiny_ckpt, "--train-file", text_file, "--block-size", 32, "--max-steps", 8,
              "--lr", "1e-3", "--dropout", 0.1, "--no-progress", "--cache-dir", tmp_path / "cache"]
    run_train(*common, "--out", tmp_path / "straight")
    p = run_python(INJECTED_TRAIN, *common, "--out", tmp_path / "int", env={"CTRL_C_AT": "3"})
    assert p.returncode == 130, p.stderr
    assert "--resume" in p.stdout and not (tmp_path / "int" / "model.safetensors").exists()
    assert torch.load(tmp_path / "int" / "resume.pt", weights_only=True)["step"] == 3
    run_train(*common, "--out", tmp_path / "int", "--resume")
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "int" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_keeps_the_best_model(tiny_ckpt, tmp_path, monkeypatch):
    """Evaluations every 2 steps score 3.0, 2.0, 2.5, 2.6: with patience 2 the run stops
    at step 8 and ends with the weights of step 4, the best."""
    scores = iter([3.0, 2.0, 2.5, 2.6, 2.7, 2.8])
    snapshots = {}

    def fake_evaluate(self, val_blocks, stop=None):
        snapshots[self.step] = {k: v.clone() for k, v in self.model.state_dict().items()}
        return {"eval_loss": next(scores), "eval_accuracy": 0.0}

    monkeypatch.setattr(Trainer, "evaluate", fake_evaluate)
    cfg = TrainConfig(lr=1e-3, max_steps=20, batch_size=2, eval_every=2, save_best=True, patience=2,
                      progress=False, log_every=100)
    t, history, _, metrics = train_loop(load_checkpoint(tiny_ckpt), random_blocks(16), cfg, random_blocks(2),
                                        out_dir=tmp_path / "o")
    assert t.step == 8 and history.best == (2.0, 4)
    assert (tmp_path / "o" / "best" / "model.safetensors").is_file()
    for k, v in t.model.state_dict().items():
        assert torch.equal(v, snapshots[4][k]), k
    assert metrics["train_loss"] > 0
    assert [e["eval_loss"] for e in history.log if "eval_loss" in e] == [3.0, 2.0, 2.5, 2.6]


def test_options_that_need_evaluations(tiny_ckpt, text_file, tmp_path):
    p = run_train("--model", tiny_ckpt, "--train-file", text_file, "--block-size", 32, "--save-best",
                  "--out", tmp_path / "o", check=False)
    assert p.returncode == 2 and "--eval-every" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_model_smaller_than_the_tokenizer(tmp_path, text_file):
    path = save_hf(hf_model(**dict(TINY, vocab_size=1000)), tmp_path / "small_vocab")
    p = run_train("--model", path, "--train-file", text_file, "--block-size", 32, "--out", tmp_path / "o",
                  check=False)
    assert p.returncode == 2 and "vocab_size is only 1000" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1

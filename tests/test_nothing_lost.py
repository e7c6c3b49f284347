"""Nothing lost, nothing silently wrong (issue 28): the screen, kills, rotation, what a resume reads.

Each test is a case that once failed: a failing stdout that cost the run, a SIGKILL in
the final evaluation or in --save-total-limit's rotation that left a directory nothing
could use, a resume or a table of runs that did not notice other token ids, an old
model left looking like a new run's, a gradient that was never finite, samples past
the tokenizer, a long line cut where Hugging Face does not cut, tracebacks. The last
test is the harness that kills a run at random moments (rotation and the final
evaluation included) and checks what every kill leaves.

The helpers and the tiny model are tests/test_faults.py's (a run forked from a helper
process that imported torch once, `procs`; train.py with faults injected, `patched`).
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import INJECTED_TRAIN, ROOT, TOKENIZER_DIR, hf_model, save_hf, write_text
from harness.compare import comparison_rows, not_comparable
from harness.outdir import run_status
from test_faults import (assert_finite_model, base_args, cache, evaluate, interrupted_run, ok,  # noqa: F401
                         one_line_error, patched, procs, run_proc, temporaries, text, tiny, train)

MODEL_FILES = ("model.safetensors", "config.json", "vocab.json", "merges.txt")
CHECKPOINT_FILES = MODEL_FILES + ("run_args.json", "trainer_state.json", "resume.pt")


def complete_checkpoints(out) -> list[int]:
    """The steps of OUT's checkpoint-<step>/ folders, each asserted complete (every file, loadable)."""
    steps = []
    for folder in sorted(Path(out).glob("checkpoint-*")):
        if ".tmp-" in folder.name:
            continue
        missing = [f for f in CHECKPOINT_FILES if not (folder / f).is_file()]
        assert not missing, f"{folder} under its final name lacks {missing}"
        assert_finite_model(folder)
        steps.append(int(folder.name.split("-")[1]))
    return steps


# === data lost =========================================================================

@pytest.mark.parametrize("stdout", ["broken-pipe", "full-disk"])
def test_a_failing_stdout_never_costs_the_run(tiny, text, cache, tmp_path, stdout):
    """`train.py | head -3` (EPIPE) and stdout on a full disk (/dev/full: ENOSPC): the run trains
    on without the screen, saves its model, exit 0; one warning on stderr says so."""
    out = tmp_path / "out"
    args = [sys.executable, ROOT / "train.py", *base_args(tiny, text, cache, out, 150, "--log-every", 1)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if stdout == "broken-pipe":
        p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
        p.stdout.close()  # the reader is gone, as `head` after its lines
        err = p.stderr.read().decode()
        code = p.wait(timeout=300)
    else:
        with open("/dev/full", "w") as full:
            q = subprocess.run(args, stdout=full, stderr=subprocess.PIPE, env=env, cwd=ROOT, timeout=300)
        code, err = q.returncode, q.stderr.decode()
    assert code == 0, err
    assert "Traceback" not in err and "stdout failed" in err, err
    assert_finite_model(out)
    assert run_status(out) == {} and not (out / "resume.pt").exists()
    assert len((out / "log.jsonl").read_text().splitlines()) >= 150  # the log was kept whole


def test_sigkill_during_the_final_evaluation_leaves_a_finished_model(capsys, procs, patched, tiny, text, cache,
                                                                     tmp_path):
    """The model and its results are written before the final evaluation: a SIGKILL there leaves
    a run that is done (with a note), whose model evaluate.py measures (it used to say "saving",
    with resume.pt already gone: neither evaluate.py nor --resume would take it)."""
    out = tmp_path / "out"
    p = procs.run(patched, *base_args(tiny, text, cache, out, 3), env={"KILL_EVAL": "1"})
    assert p.returncode == -signal.SIGKILL, p.stderr
    status = run_status(out)
    assert status["status"] == "done" and "did not finish" in status["note"], status
    assert not (out / "resume.pt").exists()
    assert_finite_model(out)
    ok(evaluate(capsys, out))


# === silently wrong ====================================================================

@pytest.mark.parametrize("victim", ["vocab.json", "model.safetensors"])
def test_a_kill_during_rotation_never_leaves_half_a_checkpoint(capsys, procs, patched, tiny, text, cache, tmp_path,
                                                               victim):
    """SIGKILL while --save-total-limit removes checkpoint-1/, one file of it already gone: no folder
    under a checkpoint-<step> name lacks a file (it is renamed away before it is deleted); the
    next run removes the leftover, and --resume ends the run."""
    out = tmp_path / "out"
    args = base_args(tiny, text, cache, out, 4, "--save-every", 1, "--save-total-limit", 1)
    p = procs.run(patched, *args, env={"KILL_IN_ROTATION": victim})
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert complete_checkpoints(out) == [2]
    p = ok(train(capsys, *args, "--resume"))
    assert "resuming at step 2" in p.stdout
    assert complete_checkpoints(out) == [4] and temporaries(out) == []


def test_a_model_directory_of_train_py_without_its_tokenizer_is_refused(capsys, tiny, text, cache, tmp_path):
    """A checkpoint folder that lost its tokenizer is refused in one line by evaluate.py and
    --model, never read with GPT-2's stock tokenizer (added tokens lost, other blocks)."""
    out = tmp_path / "out"
    ok(train(capsys, *base_args(tiny, text, cache, out, 2, "--save-every", 2)))
    folder = out / "checkpoint-2"
    for name in ("vocab.json", "merges.txt"):
        (folder / name).unlink()
    one_line_error(evaluate(capsys, folder), 2, "tokenizer", "missing")
    one_line_error(train(capsys, *base_args(folder, text, cache, tmp_path / "next", 1)), 2, "tokenizer")


def truncated_merges_model(tiny, directory) -> str:
    """The tiny model with another tokenizer: the same vocabulary, a tenth of the merges."""
    shutil.copytree(tiny, directory)
    lines = (Path(tiny) / "merges.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    (Path(directory) / "merges.txt").write_text("".join(lines[:5001]), encoding="utf-8")
    return str(directory)


@pytest.mark.parametrize("change", ["keep-linebreaks", "tokenizer"])
def test_resume_refuses_the_same_text_read_into_other_ids(capsys, tiny, text, cache, tmp_path, change):
    """The same bytes with another --keep-linebreaks, or through another tokenizer, are other
    blocks: --resume refuses in one line (the state records the ids' sha256 and the tokenizer)."""
    out = tmp_path / "out"
    # --max-train-samples: both readings have as many blocks (the same shape), other ids in them.
    same_shape = ["--validation-split", 0, "--max-train-samples", 20]
    args = base_args(tiny, text, cache, out, 4, *same_shape)
    interrupted_run(capsys, args, at=2)
    if change == "keep-linebreaks":
        other = [*args, "--keep-linebreaks", "false"]
    else:
        other = base_args(truncated_merges_model(tiny, tmp_path / "other"), text, cache, out, 4, *same_shape)
    line = one_line_error(train(capsys, *other, "--resume"), 2, "--resume")
    assert ("blocks" in line or "tokenizer" in line), line
    assert (out / "resume.pt").is_file()


def test_overwriting_a_finished_run_then_stopping_leaves_no_old_model(capsys, tiny, text, cache, tmp_path):
    """--overwrite of a finished run, interrupted: the old run's model is gone (not left to pass for
    the new run's), and train.py --model refuses the unfinished run by its status.json."""
    out = tmp_path / "out"
    ok(train(capsys, *base_args(tiny, text, cache, out, 2)))
    assert (out / "model.safetensors").exists()
    interrupted_run(capsys, base_args(tiny, text, cache, out, 4, "--overwrite"), at=2)
    assert run_status(out)["status"] == "interrupted"
    assert not (out / "model.safetensors").exists() and not (out / "config.json").exists()
    one_line_error(train(capsys, *base_args(out, text, cache, tmp_path / "next", 1)), 2, "not finished",
                   "interrupted")


def test_overwrite_keeps_the_model_it_starts_from(capsys, tiny, text, cache, tmp_path):
    """--model OUT --out OUT --overwrite: the model it was read from is only replaced by the new one."""
    out = tmp_path / "out"
    ok(train(capsys, *base_args(tiny, text, cache, out, 1)))
    ok(train(capsys, *base_args(out, text, cache, out, 1, "--overwrite")))
    assert_finite_model(out)


def test_a_table_of_runs_read_with_other_line_breaks_is_not_comparable(capsys, tiny, text, cache, tmp_path):
    """Two runs on the same file, one with --keep-linebreaks false: other validation blocks of the
    same text, so the table says "not comparable"."""
    for name, flag in (("a", "true"), ("b", "false")):
        ok(train(capsys, *base_args(tiny, text, cache, tmp_path / name, 1, "--keep-linebreaks", flag)))
    rows = comparison_rows([str(tmp_path / "a"), str(tmp_path / "b")])
    assert not_comparable(rows) is not None and "tokenizations" in not_comparable(rows)
    p = ok(evaluate(capsys, tmp_path / "a", tmp_path / "b"))
    assert "not comparable" in p.stdout
    ok(train(capsys, *base_args(tiny, text, cache, tmp_path / "c", 1)))  # the same reading as "a": comparable
    assert not_comparable(comparison_rows([str(tmp_path / "a"), str(tmp_path / "c")])) is None


def test_resuming_a_state_of_two_processes_on_one_says_it_is_not_exact(capsys, tiny, text, cache, tmp_path):
    """A state saved by 2 processes x accumulation 1, resumed by 1 process x accumulation 2: the data
    order is the same, the dropout masks are not, so the run says in one line that its weights
    will not be bit-identical (the docs promise exact weights only for the same process count)."""
    out = tmp_path / "out"
    args = base_args(tiny, text, cache, out, 4, "--dropout", 0.1, "--batch-size", 2)
    interrupted_run(capsys, [*args, "--grad-accum", 2], at=2)
    state = torch.load(out / "resume.pt", weights_only=True)
    # As 2 processes would have saved it: one random state and loss window per process.
    state.update(world_size=2, rng=state["rng"] * 2, window_loss=[state["window_loss"][0], 0.0],
                 config={**state["config"], "grad_accum": 1})
    torch.save(state, out / "resume.pt")
    p = ok(train(capsys, *args, "--grad-accum", 2, "--resume"))
    assert "saved by 2 process(es), this run has 1" in p.stdout and "not be bit-identical" in p.stdout


def test_a_gradient_that_is_never_finite_stops_the_run(capsys, tiny, text, cache, tmp_path):
    """--lora-alpha 1e30: the gradient norm is inf on every step, no adapter ever moves. The run
    stops as on a NaN loss (one line, exit 2), not "done" with exit 0."""
    out = tmp_path / "out"
    p = train(capsys, *base_args(tiny, text, cache, out, 3, "--lora", 4, "--lora-alpha", "1e30"))
    one_line_error(p, 2, "gradient norm was NaN/inf")
    assert not (out / "model.safetensors").exists()


def test_sampling_never_draws_an_id_past_the_tokenizer():
    """A model with a padded vocabulary (50,304 rows, tokenizer 50,257): with vocab_size the draws stay
    below it, even where the padded rows have the highest scores; greedy too."""
    from gpt2.config import GPT2Config
    from gpt2.model import GPT2

    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=50304, n_positions=32, n_embd=16, n_layer=1, n_head=2)).eval()
    with torch.no_grad():
        model.transformer.wte.weight[50257:] *= 1000  # the padded rows would win every draw
    x = torch.zeros((4, 2), dtype=torch.long)
    for temperature in (1.0, 0.0):
        ids = model.generate(x, 10, temperature=temperature, vocab_size=50257,
                             generator=torch.Generator().manual_seed(0))
        assert int(ids.max()) < 50257
    assert int(model.generate(x, 10, temperature=0.0).max()) >= 50257  # without it: the padded rows


@pytest.mark.parametrize("settings", [dict(temperature=1e-40), dict(top_p=1e-300, top_k=0),
                                      dict(temperature=1e-40, top_p=1e-300)])
def test_extreme_sampling_settings_are_their_greedy_limit(settings):
    """A temperature of 1e-40 and a top-p of 1e-300 are the greedy limit: the most likely token,
    not a crash of torch.multinomial on NaN probabilities."""
    from gpt2.sampling import next_token

    logits = torch.randn(8, 50257) * 5
    assert torch.equal(next_token(logits, **settings).squeeze(1), logits.argmax(-1))


@pytest.mark.parametrize("settings", [dict(temperature=-0.7), dict(temperature=float("nan")),
                                      dict(temperature=float("inf")), dict(top_p=0.0), dict(top_p=1.5),
                                      dict(top_k=-3)])
def test_the_python_api_refuses_settings_that_describe_no_draw(settings):
    """model.generate with a negative temperature (or a top-p outside (0, 1], a negative top-k) is
    a ValueError before any work, not a silent draw from flipped scores."""
    from gpt2.config import GPT2Config
    from gpt2.model import GPT2

    model = GPT2(GPT2Config(vocab_size=64, n_positions=16, n_embd=8, n_layer=1, n_head=2))
    with pytest.raises(ValueError):
        model.generate(torch.zeros((1, 2), dtype=torch.long), 3, **settings)


@pytest.mark.parametrize("flags", [["--temperature", "1e-40"], ["--top-p", "1e-300", "--top-k", "0"]])
def test_sampling_flags_at_their_limits_print_the_greedy_sample(capsys, tiny, flags):
    """The parser accepts them, so the sample must come: the greedy one."""
    greedy = ok(evaluate(capsys, tiny, "--prompt", "the model", "--max-new-tokens", 5, "--temperature", 0))
    p = ok(evaluate(capsys, tiny, "--prompt", "the model", "--max-new-tokens", 5, *flags))
    assert p.stdout.splitlines()[1:] == greedy.stdout.splitlines()[1:]


def test_a_long_line_without_spaces_is_cut_where_hugging_face_splits():
    """Lines over 100,000 characters with no space (minified code, base64): the pieces give exactly
    the ids of the whole line, as Hugging Face's tokenizer reads it in one piece. (One line of
    250,000 characters once gave 15,637 ids against 15,629.)"""
    from gpt2.data import LONG_LINE_CHARS, pieces, tokenize_texts
    from gpt2.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(str(TOKENIZER_DIR))
    rng = random.Random(28)
    letters = "abcdefghijklmnopqrstuvwxyzé日本"

    def word():  # a long run of letters: a hard cut inside it splits BPE's merges
        return "".join(rng.choice(letters) for _ in range(rng.randint(20, 3000)))

    for _ in range(3):
        line = "".join(word() + rng.choice("0123456789٣;.,'\"_-+=(){}") for _ in range(200))[:250_000]
        assert " " not in line and len(line) == 250_000
        assert len(list(pieces(line))) > 2 and max(map(len, pieces(line))) <= LONG_LINE_CHARS
        assert tokenize_texts([line], tok).tolist() == tok.encode(line)


# === tracebacks ========================================================================

@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_lone_surrogate_in_a_json_record_is_one_line(capsys, tiny, cache, tmp_path, command):
    """"\\ud800" alone is valid JSON but no character: one line naming the record, not a TypeError
    from the tokenizer."""
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "fine text here"}\n{"text": "half a pair \\ud800 here"}\n', encoding="utf-8")
    if command == "train":
        p = train(capsys, *base_args(tiny, data, cache, tmp_path / "out", 1, "--block-size", 2))
    else:
        p = evaluate(capsys, tiny, "--validation-file", data, "--block-size", 2)
    one_line_error(p, 2, "record 2", "lone surrogate")


@pytest.mark.parametrize("env", [{"PYTHONIOENCODING": "ascii"}, {"LC_ALL": "C", "PYTHONUTF8": "0"}],
                         ids=["ascii-stdout", "c-locale"])
def test_non_ascii_prompts_under_an_ascii_terminal(tiny, env):
    """A prompt (and output) in another script under PYTHONIOENCODING=ascii or LC_ALL=C: escapes on
    the screen, not a UnicodeEncodeError; the UTF-8 prompt is not called "not UTF-8 text"."""
    p = run_proc([ROOT / "evaluate.py", tiny, "--prompt", "naïve café 日本", "--max-new-tokens", 3,
                  "--temperature", 0], env=env)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert "sample from" in p.stdout


def test_a_lost_process_is_one_line():
    """A collective that fails because another process of the run died is one line of ours
    (status.json's reason too), not gloo's text."""
    import torch.distributed as dist

    from gpt2.distributed import lost_a_process

    gloo = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer "
                        "[127.0.0.1]:26011")
    assert lost_a_process(gloo) is None  # no process group: not a lost process
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        line = lost_a_process(gloo)
        assert line.startswith("another process of this torchrun run stopped") and "\n" not in line
        assert lost_a_process(RuntimeError("shape mismatch")) is None  # a bug keeps its traceback
    finally:
        dist.destroy_process_group()


def torchrun(*args, env=None):
    return run_proc(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args],
                    env=env, timeout=300)


def test_under_torchrun_a_user_error_is_said_once_and_a_killed_rank_is_no_traceback(tiny, text, cache, tmp_path):
    """A bad flag under torchrun: one "error:" line for the run, not one per process. SIGKILL of
    rank 1: the run stops, and neither stderr nor status.json holds gloo's traceback."""
    p = torchrun(ROOT / "train.py", *base_args(tiny, text, cache, tmp_path / "a", 4, "--lr", "1e-3,,1e-4"))
    said = [line for line in p.stderr.splitlines() if line.startswith("error:") and "--lr" in line]
    assert p.returncode != 0 and len(said) == 1, p.stderr
    out = tmp_path / "b"
    p = torchrun(INJECTED_TRAIN, *base_args(tiny, text, cache, out, 6), env={"RANK1_KILL_AT": "2"})
    assert p.returncode != 0
    assert "pair.cc" not in p.stderr and "gloo" not in p.stderr.lower(), p.stderr
    assert "pair.cc" not in json.dumps(run_status(out))
    assert not (out / "model.safetensors").exists()


# === the harness: kills at random moments ==============================================

def test_kills_at_random_moments_leave_every_checkpoint_whole_and_the_run_exact(procs, patched, tiny, text, cache,
                                                                               tmp_path):
    """A run with a save and a rotation every step (--save-every 1 --save-total-limit 1) and a final
    evaluation, killed (SIGKILL) again and again: at random moments in time, and at the moments
    that once lost something (inside a rotation, inside the final evaluation). After every kill:
    every checkpoint-<step>/ is complete; the directory is either resumable (resume.pt) or a
    finished run that evaluate.py accepts. Continued with --resume each time, the run ends with
    exactly the weights of an uninterrupted one."""
    steps = 30
    args = base_args(tiny, text, cache, tmp_path / "killed", steps, "--save-every", 1, "--save-total-limit", 1,
                     "--dropout", 0.1, "--precision", "fp32", "--log-every", 1)
    straight = tmp_path / "straight"
    ok(procs.run(ROOT / "train.py", *base_args(tiny, text, cache, straight, steps, "--save-every", 1,
                                                "--save-total-limit", 1, "--dropout", 0.1, "--precision",
                                                "fp32", "--log-every", 1)))
    out = tmp_path / "killed"
    rng = random.Random(28)
    # Injected moments first (they must meet a running rotation or evaluation), then random times.
    moments = [{"KILL_IN_ROTATION": "vocab.json"}, {"KILL_IN_ROTATION": "model.safetensors"}] + \
              [{"after": rng.uniform(0.3, 1.5)} for _ in range(4)] + [{"KILL_EVAL": "1"}]
    log, finished = [], False
    for moment in moments:
        again = ["--resume"] if (out / "resume.pt").exists() else ["--overwrite"] if out.exists() else []
        job = procs.start(patched, *args, *again, env={k: v for k, v in moment.items() if k != "after"})
        if "after" in moment:
            time.sleep(moment["after"])
            os.kill(job.pid, signal.SIGKILL)  # (a run that already ended is a zombie: no harm)
        log.append((moment, procs.wait(job).returncode))
        saved = complete_checkpoints(out)  # every checkpoint-<step>/ whole, whenever the kill came
        status = run_status(out).get("status")
        finished = (out / "model.safetensors").exists() and status in (None, "done")
        if finished:  # a finished run: its model whole, whatever the final evaluation became
            assert_finite_model(out)
            break
        # else resumable from its last save, or killed before its first one
        assert (out / "resume.pt").exists() or not saved, (log, status)
    if not finished:
        again = ["--resume"] if (out / "resume.pt").exists() else ["--overwrite"]
        ok(procs.run(ROOT / "train.py", *args, *again))
    ok(procs.run(ROOT / "evaluate.py", out))
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a), log
    assert temporaries(out) == [], log


# === unclear and cosmetic ==============================================================

def test_plot_of_a_finished_run_draws_without_evaluating(capsys, tiny, text, cache, tmp_path, monkeypatch):
    """evaluate.py RUN --plot draws the saved curves; it used to re-run the whole evaluation first."""
    pytest.importorskip("matplotlib")
    import evaluate as evaluate_cli

    out = tmp_path / "out"
    ok(train(capsys, *base_args(tiny, text, cache, out, 2, "--log-every", 1)))
    monkeypatch.setattr(evaluate_cli, "evaluate", lambda *a, **k: pytest.fail("an evaluation was run"))
    ok(evaluate(capsys, out, "--plot", tmp_path / "curves.png"))
    assert (tmp_path / "curves.png").stat().st_size > 0


@pytest.mark.parametrize("flags, words", [(["--lr-min", "1e-300", "--lr-max", "1e300"], ["--lr-min", "powers of ten"]),
                                          (["--find-lr-steps", 1], ["--find-lr-steps 1", "at least 5"])])
def test_range_test_values_that_give_no_curve_are_refused_with_their_reason(capsys, tiny, text, cache, tmp_path,
                                                                            flags, words):
    """--lr-min 1e-300 --lr-max 1e300 once ran at lr 0.0 and suggested --lr 0e0 (which train.py refuses);
    --find-lr-steps 1 was refused as if the data were too short."""
    p = train(capsys, *base_args(tiny, text, cache, tmp_path / "lr", 1), "--find-lr", *flags)
    one_line_error(p, 2, *words)


def test_a_lora_adapter_names_its_local_base_by_an_absolute_path(capsys, tiny, text, cache, tmp_path, monkeypatch):
    """--model ./relative/dir: adapter_config.json's base_model_name_or_path is absolute, so that
    peft's AutoPeftModelForCausalLM opens OUT/adapter from any directory."""
    monkeypatch.chdir(Path(tiny).parent)
    out = tmp_path / "out"
    ok(train(capsys, *base_args(os.path.join(".", Path(tiny).name), text, cache, out, 1, "--lora", 2)))
    base = json.loads((out / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert os.path.isabs(base) and os.path.samefile(base, tiny), base


def test_warmup_over_the_whole_run_is_accepted(capsys, tiny, text, cache, tmp_path):
    """--warmup-ratio 1.0, as run_clm accepts it: every step warms up (rates 0, 1/3, 2/3 of --lr)."""
    p = ok(train(capsys, *base_args(tiny, text, cache, tmp_path / "out", 3, "--warmup-ratio", 1.0, "--log-every", 1)))
    assert "3 warm-up steps" in p.stdout
    rates = [e["learning_rate"] for e in json.loads((tmp_path / "out" / "log_history.json").read_text())
             if "learning_rate" in e]
    assert rates == pytest.approx([0.0, 1e-3 / 3, 2e-3 / 3])


def test_messages_say_what_is_true(capsys, tiny, text, cache, tmp_path):
    """The cosmetic cases: an effective batch larger than the data, a precision asked for, one
    token, a resumed run's total runtime, a file name that is not UTF-8, a negative --lr, an
    evaluation's --fp16 on a CPU, the advice after running out of memory in evaluate.py."""
    import evaluate as evaluate_cli
    from gpt2.data import make_blocks
    from gpt2.errors import UserError, run_cli
    from harness.report import metrics_block

    p = ok(train(capsys, *base_args(tiny, text, cache, tmp_path / "a", 1, "--batch-size", 1000, "--precision", "fp32")))
    assert re.search(r"effective batch (\d+) \(all the blocks; 1000 micro-batch", p.stdout), p.stdout
    assert "precision fp32: as asked (--fp32)" in p.stdout
    with pytest.raises(UserError, match=r": 1 token, fewer"):
        make_blocks(np.zeros(1, dtype=np.uint16), 4, "x.txt")
    assert "1:02:03" in metrics_block("train", {"train_runtime_total": 3723.0})
    one_line_error(train(capsys, *base_args(tiny, os.fsdecode(b"/no/such/x\xff.txt"), cache, tmp_path / "b", 1)), 2,
                   "x\\xff.txt")
    one_line_error(train(capsys, *base_args(tiny, text, cache, tmp_path / "c", 1), "--lr", "-1e-4"), 2,
                   "must be a positive number")
    p = ok(evaluate(capsys, tiny, "--validation-file", text, "--block-size", 32, "--fp16"))
    assert "evaluating in" in p.stderr and "training" not in p.stderr, p.stderr

    def out_of_memory(argv):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    assert run_cli(out_of_memory, memory_advice=evaluate_cli.MEMORY_ADVICE) == 1
    err = capsys.readouterr().err
    assert "--num-samples" in err and "--grad-accum" not in err, err

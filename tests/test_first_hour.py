"""What a new user meets in the first hour (issue 22): sampling, quiet runs, the table of runs.

Each test runs a tiny random GPT-2 (conftest.py) for a few steps at most.
"""

import importlib.util
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

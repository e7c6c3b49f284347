"""The course: the README's ten-minute path points at the right code, the docs name files that
exist, and the classic first experiments work (a random model's loss at step 0 is ln(V), a
small model learns one batch by heart, train.py --from-scratch trains one)."""

import json
import math
import re

import numpy as np
import pytest
import torch

from conftest import ROOT, run_python, write_text
from gpt2.config import GPT2Config
from gpt2.model import GPT2
from gpt2.scratch import initial_loss, new_model
from gpt2.trainer import param_groups

README = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.fixture
def one_thread():
    """Small models in this process, on one thread: on a loaded machine two OpenMP threads that
    wait for each other made a 60-step loop 60x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
LN_V = math.log(50257)


# --- the ten-minute path --------------------------------------------------------------

def path_rows():
    """(file, [(first, last), ...], anchors) of each row of the README's reading path."""
    section = (README.split("### The ten-minute path", 1) + [""])[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| *\d+ *\| *`([\w/.]+)` *\| *([\d, -]+?) *\|(.*)\|\s*$", section, re.M)
    return [(f, [tuple(map(int, r.split("-"))) for r in ranges.split(", ")], re.findall(r"`([A-Za-z_][\w.]*)`", what))
            for f, ranges, what in rows]


def test_the_path_lists_about_700_lines():
    rows = path_rows()
    assert len(rows) >= 8
    total = sum(b - a + 1 for _, ranges, _ in rows for a, b in ranges)
    assert 600 <= total <= 800, f"the ten-minute path is {total} lines"
    assert f"{total} lines" in README, f"the README states the path's length: {total} lines"


@pytest.mark.parametrize("row", path_rows(), ids=lambda r: f"{r[0]}:{r[1][0][0]}")
def test_each_range_holds_what_the_readme_says(row):
    """Each row's ranges hold every name it quotes (a def, a class, or at least the word), and
    each range starts at the beginning of something: edit the code above a range and this
    says which row to move."""
    path, ranges, anchors = row
    lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
    for first, last in ranges:
        assert 1 <= first <= last <= len(lines), f"{path} has {len(lines)} lines"
        head = lines[first - 1].strip()
        assert first == 1 or head.startswith(("def ", "class ", "@", "#", '"""')), \
            f"{path}:{first} starts mid-way: {head}"
        assert last == len(lines) or not lines[last].startswith((" ", "\t")) or not lines[last].strip() \
            or lines[last].strip().startswith(("#", "@", "def ")), f"{path}:{last} ends mid-way"
    text = "\n".join("\n".join(lines[a - 1:b]) for a, b in ranges)
    assert anchors, f"{path} {ranges}: the row names nothing to find there"
    for anchor in anchors:
        name = anchor.split(".")[-1]
        assert re.search(rf"\b(def|class) {name}\b", text) or re.search(rf"\b{re.escape(name)}\b", text), \
            f"{path} {ranges}: no {anchor} there"


def test_the_path_ranges_do_not_overlap():
    by_file = {}
    for path, ranges, _ in path_rows():
        by_file.setdefault(path, []).extend(ranges)
    for path, ranges in by_file.items():
        ranges.sort()
        assert all(b1 < a2 for (_, b1), (a2, _) in zip(ranges, ranges[1:])), path


# --- every file a doc names exists -------------------------------------------------------

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_files_named_in_the_docs_exist(doc):
    text = doc.read_text(encoding="utf-8")
    named = set(re.findall(r"\b((?:gpt2|harness|benchmarks|docs|tests)/[\w/.-]+\.(?:py|md|sh))\b", text))
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"{doc.name} names files that do not exist: {missing}"


def test_files_named_in_the_code_exist():
    for path in [*ROOT.glob("gpt2/*.py"), *ROOT.glob("harness/*.py"), *ROOT.glob("benchmarks/*.py"),
                 ROOT / "train.py", ROOT / "evaluate.py"]:
        text = path.read_text(encoding="utf-8")
        named = set(re.findall(r"\b((?:gpt2|harness|benchmarks|docs)/[\w/.-]+\.(?:py|md|sh))\b", text))
        missing = sorted(p for p in named if not (ROOT / p).exists())
        assert not missing, f"{path.name} names files that do not exist: {missing}"


# --- initialisation and the first sanity checks ------------------------------------------

def test_init_matches_transformers_gpt2(one_thread):
    """Our random init against transformers' GPT-2 of the same shape: the same std, parameter
    by parameter (0.02; 0.02 / sqrt(2 n_layer) for the c_proj weights; LayerNorm 1 and 0)."""
    from transformers import GPT2Config as HFConfig, GPT2LMHeadModel
    shape = dict(n_layer=4, n_head=4, n_embd=128, n_positions=128)
    torch.manual_seed(0)
    hf = dict(GPT2LMHeadModel(HFConfig(**shape)).named_parameters())
    ours = dict(new_model(GPT2Config(**shape), seed=0).named_parameters())
    assert set(ours) - {"lm_head.weight"} <= set(hf)
    for name, p in ours.items():
        if name == "lm_head.weight":
            continue
        a, b = p.detach().float(), hf[name].detach().float()
        assert a.mean().item() == pytest.approx(b.mean().item(), abs=3e-3), name
        assert a.std().item() == pytest.approx(b.std().item(), rel=0.05, abs=1e-6), name
    assert ours["transformer.h.0.mlp.c_proj.weight"].std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.05)


def test_step0_loss_is_about_ln_vocab(one_thread):
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 50257, size=(4, 64))
    model = new_model(GPT2Config(n_positions=64, n_embd=64, n_layer=2, n_head=2), seed=0)
    assert initial_loss(model, blocks) == pytest.approx(LN_V, abs=0.1)


def test_a_small_model_overfits_one_batch(one_thread):
    """The second sanity check (gpt2/scratch.py): one batch, learnt by heart. (A vocabulary of
    1,000 keeps it fast; the step-0 loss is then ln(1,000).)"""
    model = new_model(GPT2Config(vocab_size=1000, n_positions=16, n_embd=32, n_layer=2, n_head=2).with_dropout(0.0),
                      seed=0)
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 1000, size=(2, 16)))
    optimizer = torch.optim.AdamW(param_groups(model, 0.0), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = model(x, labels=x)[1]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(1000), abs=0.1)
    assert losses[-1] < 0.5, losses[-5:]


# --- train.py --from-scratch ---------------------------------------------------------------

def test_from_scratch_trains_a_random_model(tmp_path):
    text = write_text(tmp_path / "t.txt", n_lines=600)
    out = tmp_path / "scratch"
    result = run_python(ROOT / "train.py", "--from-scratch", "--n-layer", 2, "--n-head", 2, "--n-embd", 32,
                        "--block-size", 32, "--train-file", text, "--max-steps", 24, "--lr", "3e-3",
                        "--validation-split", 0, "--log-every", 1, "--no-progress", "--out", out,
                        "--cache-dir", tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    step0 = re.search(r"step 0: loss ([\d.]+) before any update; .* ln\(50,257\) = 10.82", result.stdout)
    assert step0, result.stdout
    assert float(step0.group(1)) == pytest.approx(LN_V, abs=0.1)
    losses = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert len(losses) == 24 and losses[-1] < losses[0] - 1.0, losses
    config = json.loads((out / "config.json").read_text())
    assert (config["n_layer"], config["n_head"], config["n_embd"], config["n_positions"]) == (2, 2, 32, 32)
    assert json.loads((out / "run_args.json").read_text())["model"] == "random init (2 layers x 32, seed 42)"


@pytest.mark.parametrize("flags, message", [
    (["--n-layer", "2"], "--n-layer shapes a new model: add --from-scratch"),
    (["--from-scratch", "--n-embd", "30", "--n-head", "4"], "--n-embd 30 must be a multiple of --n-head 4"),
    (["--from-scratch", "--lora", "4"], "--from-scratch trains every weight"),
    (["--from-scratch", "--model", "distilgpt2"], "--from-scratch builds a new model: leave --model out"),
])
def test_from_scratch_bad_flags(flags, message):
    from gpt2.errors import UserError
    from harness.cli import check_train_flags, train_parser
    with pytest.raises(UserError, match=re.escape(message)):
        check_train_flags(train_parser().parse_args(flags))


def test_dropout_of_a_run_is_not_written_into_its_config(tiny_ckpt, tmp_path):
    """--dropout is the run's (run_args.json), not the model's: the next --model OUT starts from
    the checkpoint's own dropout (docs/lifecycle.md)."""
    text = write_text(tmp_path / "t.txt")
    out = tmp_path / "run"
    base = json.loads(open(f"{tiny_ckpt}/config.json", encoding="utf-8").read())
    result = run_python(ROOT / "train.py", "--model", tiny_ckpt, "--train-file", text, "--block-size", 32,
                        "--max-steps", 1, "--dropout", 0.3, "--validation-split", 0, "--no-progress",
                        "--out", out, "--cache-dir", tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    saved = json.loads((out / "config.json").read_text())
    assert [saved[k] for k in ("embd_pdrop", "attn_pdrop", "resid_pdrop")] == \
        [base[k] for k in ("embd_pdrop", "attn_pdrop", "resid_pdrop")] != [0.3] * 3
    assert json.loads((out / "run_args.json").read_text())["dropout"] == 0.3


def test_plan_of_a_from_scratch_run_counts_its_own_shape(capsys):
    """--plan with --from-scratch plans the new model, not GPT-2 (whose config.json it would read)."""
    import train
    assert train.main(["--from-scratch", "--n-layer", "2", "--n-embd", "64", "--n-head", "2", "--plan",
                       "--device", "cpu"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    n = GPT2(GPT2Config(n_positions=128, n_layer=2, n_embd=64, n_head=2)).parameters()
    assert first.startswith(f"memory plan: random init (2 layers x 64, seed 42), "
                            f"{sum(p.numel() for p in n) / 1e6:.1f}M parameters"), first

"""Files that try to hurt: what a shared directory, a hand-edited file or a new library can hold.

Each test plays one trick against the real command lines (train.py, evaluate.py, in this
process as test_faults.py does) or against the one function that stops it, on a tiny
model, and asserts the documented answer: one line on stderr (no "Traceback"), a non-zero
exit, and nothing of the user's changed or lost.

    tokenizers    a model directory's own tokenizer.json, with an added token, is used and
                  carried on; half a tokenizer, or two that disagree, is one line
    links         no symbolic link in --out is followed: the lock, the atomic writes
    --overwrite   removes only what this tool wrote; a user's sweeps in runs/ stay
    text files    /dev/zero, a FIFO, a directory named like a file, a file above the cap;
                  a very long line is tokenized in pieces that give the same ids
    JSON          nested deep, 5,000-digit numbers, a status.json that is a string, a
                  run_args.json with a string block size, JSON lines that are arrays
    outputs       evaluate.py --json /dev/stdout is refused before any evaluation
"""

import json
import os
import shutil

import pytest

from conftest import TINY, TOKENIZER_DIR, hf_model, save_hf, write_text
from gpt2 import data
from gpt2.files import write_json
from gpt2.tokenizer import SHIPPED_DIR, Tokenizer
from harness.outdir import run_status
from test_faults import base_args, cache, evaluate, ok, one_line_error, text, tiny, train  # noqa: F401


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny, text, cache):
    """A finished 2-step run (read only: tests copy it)."""
    import train as train_cli
    from gpt2.errors import run_cli

    out = tmp_path_factory.mktemp("hostile") / "finished"
    assert run_cli(train_cli.main, base_args(tiny, text, cache, out, 2)) == 0
    return out


def copy_of(src, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(src, out)
    return out


# === tokenizers =========================================================================

@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """A tiny model saved by transformers 5 with its tokenizer: tokenizer.json only, and an added
    token <|user|> (id 50257, so the model has 50,258 rows)."""
    from transformers import GPT2TokenizerFast

    directory = save_hf(hf_model(**{**TINY, "vocab_size": 50258}), tmp_path_factory.mktemp("chat") / "m",
                        with_tokenizer=False)
    tok = GPT2TokenizerFast.from_pretrained(str(TOKENIZER_DIR))
    tok.add_tokens(["<|user|>"])
    tok.save_pretrained(directory)
    assert not os.path.exists(os.path.join(directory, "vocab.json"))
    return directory


def test_tokenizer_json_alone_is_used_with_its_added_tokens_and_carried_on(capsys, chat_model, cache, tmp_path):
    from transformers import GPT2TokenizerFast

    corpus = tmp_path / "chat.txt"
    corpus.write_text("<|user|> the model reads text and learns\n" * 200)
    out = tmp_path / "out"
    p = ok(train(capsys, *base_args(chat_model, corpus, cache, out, 2)))
    assert "tokenizer: tokenizer.json of" in p.stdout and "1 added token" in p.stdout
    assert "(GPT-2's" not in p.stdout
    assert (out / "tokenizer.json").is_file() and not (out / "vocab.json").exists()
    want = GPT2TokenizerFast.from_pretrained(chat_model)("<|user|> hello")["input_ids"]
    assert want[0] == 50257
    assert Tokenizer.for_checkpoint(str(out), 50258).encode("<|user|> hello") == want
    assert GPT2TokenizerFast.from_pretrained(str(out))("<|user|> hello")["input_ids"] == want
    # The text was tokenized with the added token: 50257 is among the training ids.
    from harness.datasets import load_token_ids
    ids = load_token_ids(str(corpus), Tokenizer.for_checkpoint(chat_model, 50258), None)
    assert ids[0] == 50257


def _tokenizer_case(directory, case):
    vocab, merges = TOKENIZER_DIR / "vocab.json", TOKENIZER_DIR / "merges.txt"
    path = os.path.join(directory, "tokenizer.json")
    if case == "vocab-without-merges":
        shutil.copy(vocab, directory)
        return "vocab.json without merges.txt"
    if case == "merges-without-vocab":
        shutil.copy(merges, directory)
        return "merges.txt without vocab.json"
    if case == "empty-tokenizer-json":
        open(path, "w").close()
        return "tokenizer.json"
    if case == "not-a-tokenizer":
        write_json(path, {"model": {"type": "Nothing"}})
        return "not a tokenizer.json"
    if case == "tokenizer-json-is-a-directory":
        os.mkdir(path)
        return "directory"
    if case == "tokenizer-json-is-a-fifo":
        os.mkfifo(path)
        return "not a regular file"
    # disagree: the shipped files beside a tokenizer.json whose vocabulary was edited
    Tokenizer.from_dir(SHIPPED_DIR).save_tokenizer_json(path)
    d = json.loads(open(path).read())
    d["model"]["vocab"]["hello"], d["model"]["vocab"]["Hello"] = d["model"]["vocab"]["Hello"], d["model"]["vocab"]["hello"]
    write_json(path, d)
    shutil.copy(vocab, directory)
    shutil.copy(merges, directory)
    return "disagree on the vocabulary"


@pytest.mark.parametrize("case", ["vocab-without-merges", "merges-without-vocab", "empty-tokenizer-json",
                                  "not-a-tokenizer", "tokenizer-json-is-a-directory", "tokenizer-json-is-a-fifo",
                                  "disagree"])
def test_incomplete_or_disagreeing_tokenizer_is_one_line(capsys, text, cache, tmp_path, case):
    model = save_hf(hf_model(**TINY), tmp_path / "m", with_tokenizer=False)
    words = _tokenizer_case(model, case)
    one_line_error(train(capsys, *base_args(model, text, cache, tmp_path / "out", 1)), 2, words)
    assert not (tmp_path / "out").exists()


# === links in --out ======================================================================

@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_a_planted_lock_file_is_never_followed(capsys, tiny, text, cache, tmp_path, kind):
    """OUT/.lock a link to the user's file: refused in one line, the file untouched."""
    victim = tmp_path / "precious.txt"
    victim.write_text("the user's work")
    out = tmp_path / "out"
    out.mkdir()
    (os.symlink if kind == "symlink" else os.link)(victim, out / ".lock")
    one_line_error(train(capsys, *base_args(tiny, text, cache, out, 1)), 2, ".lock")
    assert victim.read_text() == "the user's work"


def test_atomic_writes_never_write_through_a_link(tmp_path):
    """A link planted at the temporary name, or at the final name: the target stays as it was."""
    victim = tmp_path / "precious.txt"
    victim.write_text("the user's work")
    target = tmp_path / "status.json"
    os.symlink(victim, f"{target}.tmp-{os.getpid()}")
    write_json(str(target), {"status": "running"})
    os.remove(target)
    os.symlink(victim, target)
    write_json(str(target), {"status": "running"})
    assert victim.read_text() == "the user's work"
    assert not os.path.islink(target) and json.loads(target.read_text()) == {"status": "running"}


def test_names_the_run_writes_that_are_directories_are_refused_first(capsys, tiny, text, cache, tmp_path):
    out = tmp_path / "out"
    (out / "all_results.json").mkdir(parents=True)
    one_line_error(train(capsys, *base_args(tiny, text, cache, out, 1, "--overwrite")), 2, "all_results.json")
    assert (out / "all_results.json").is_dir()


def test_overwrite_keeps_what_this_tool_did_not_write(capsys, tiny, text, cache, tmp_path):
    """--out . in a project folder: --overwrite must not take the user's earlier sweeps in runs/,
    nor their own files in best/; TensorBoard's event files and best/'s model files go."""
    out = tmp_path / "project"
    sweep = out / "runs" / "lr-1e-3"
    sweep.mkdir(parents=True)
    (sweep / "model.safetensors").write_text("an earlier sweep")
    (out / "runs" / "May01_host").mkdir()
    (out / "runs" / "May01_host" / "events.out.tfevents.1.host").write_text("old curve")
    (out / "best").mkdir()
    (out / "best" / "model.safetensors").write_text("old best")
    (out / "best" / "notes.md").write_text("mine")
    p = ok(train(capsys, *base_args(tiny, text, cache, out, 1, "--overwrite")))
    assert "kept" in p.stderr and "notes.md" in p.stderr
    assert (sweep / "model.safetensors").read_text() == "an earlier sweep"
    assert (out / "best" / "notes.md").read_text() == "mine"
    assert not (out / "best" / "model.safetensors").exists() and not (out / "runs" / "May01_host").exists()


# === training files ======================================================================

@pytest.mark.parametrize("case", ["dev-zero", "dev-urandom", "fifo", "directory", "over-the-cap"])
def test_training_files_must_be_regular_and_bounded(capsys, monkeypatch, tiny, cache, tmp_path, case):
    path = tmp_path / "train.txt"
    if case.startswith("dev-"):
        os.symlink(f"/dev/{case[4:]}", path)
        words = "not a regular file"
    elif case == "fifo":
        os.mkfifo(path)
        words = "not a regular file"
    elif case == "directory":
        path.mkdir()
        words = "directory"
    else:
        write_text(path, 300)
        monkeypatch.setenv("GPT2_MAX_TEXT_MB", "0.001")
        words = "GPT2_MAX_TEXT_MB"
    one_line_error(train(capsys, *base_args(tiny, path, cache, tmp_path / "out", 1)), 2, words)


def test_a_very_long_line_is_tokenized_in_pieces_with_the_same_ids(monkeypatch):
    """Pieces are cut before a space between two non-spaces: the ids are those of the whole line."""
    tok = Tokenizer.from_dir(SHIPPED_DIR)
    line = "".join(f"word{i}, 3.14  's!! é日本\t{i} " for i in range(3000))  # ~ 100,000 characters
    monkeypatch.setattr(data, "LONG_LINE_CHARS", 1000)
    pieces = list(data.pieces(line))
    assert len(pieces) > 50 and max(map(len, pieces)) <= 1000 and "".join(pieces) == line
    assert data.tokenize_texts([line, line], tok).tolist() == tok.encode(line) * 2


def test_a_tokenizer_of_another_kind_gets_long_lines_whole(tmp_path, monkeypatch):
    """A tokenizer.json with a normalizer (not GPT-2's kind) may join across a space: never cut."""
    path = str(tmp_path / "tokenizer.json")
    Tokenizer.from_dir(SHIPPED_DIR).save_tokenizer_json(path)
    assert Tokenizer.from_json(path).splits_at_spaces
    spec = json.loads(open(path).read())
    spec["normalizer"] = {"type": "Lowercase"}
    write_json(path, spec)
    tok = Tokenizer.from_json(path)
    assert not tok.splits_at_spaces
    monkeypatch.setattr(data, "LONG_LINE_CHARS", 10)
    line = "Some Words " * 30
    assert data.tokenize_texts([line], tok).tolist() == tok.encode(line)


@pytest.mark.parametrize("content,words", [
    ('{"text": "a"}\n' + "[" * 100_000 + "]" * 100_000 + "\n", "nested"),
    ('{"text": "a", "n": 1' + "0" * 5000 + "}\n", "characters"),
    ("[1, 2]\n[3, 4]\n", "record 1 (line 1) is an array, not an object"),
], ids=["deep", "5000-digits", "lines-are-arrays"])
def test_hostile_json_training_files_are_one_line(capsys, tiny, cache, tmp_path, content, words):
    path = tmp_path / "train.jsonl"
    path.write_text(content)
    one_line_error(train(capsys, *base_args(tiny, path, cache, tmp_path / "out", 1)), 2, words)


# === JSON files of a run directory ======================================================

@pytest.mark.parametrize("name,content,words", [
    ("status.json", '"done"', "not a JSON object"),
    ("status.json", "[1]", "not a JSON object"),
    ("status.json", "[" * 100_000, "nested"),
    ("run_args.json", '{"block_size": "32"}', "block_size"),
    ("run_args.json", '{"block_size": 1' + "0" * 5000 + "}", "characters"),
    ("train_results.json", '{"epoch": ' + "[" * 2000 + "]" * 2000 + "}", "nested"),
], ids=["status-string", "status-list", "status-deep", "block-size-string", "block-size-5000-digits",
        "results-deep"])
def test_hostile_json_in_a_run_directory_is_one_line(capsys, finished, cache, tmp_path, name, content, words):
    out = copy_of(finished, tmp_path)
    (out / name).write_text(content)
    one_line_error(evaluate(capsys, out, "--cache-dir", cache), 2, name, words)


def test_unreadable_all_results_json_loses_no_new_metrics(capsys, finished, tiny, text, cache, tmp_path):
    """train.py --do-eval alone merges its metrics into all_results.json: one that is nested past
    the limit is replaced (a warning says so), the new metrics are written."""
    out = copy_of(finished, tmp_path)
    (out / "all_results.json").write_text("[" * 100_000 + "]" * 100_000)
    p = ok(train(capsys, "--model", tiny, "--train-file", text, "--block-size", 32, "--do-eval",
                 "--no-progress", "--cache-dir", cache, "--out", out))
    assert "warning" in p.stderr
    assert "eval_loss" in json.loads((out / "all_results.json").read_text())
    assert "eval_loss" in json.loads((out / "eval_results.json").read_text())


# === output files of evaluate.py ========================================================

@pytest.mark.parametrize("case", ["dev-stdout", "link-to-a-file", "fifo"])
def test_evaluate_json_output_is_checked_before_the_evaluation(capsys, finished, cache, tmp_path, case):
    target = tmp_path / "out.json"
    if case == "dev-stdout":
        target = "/dev/stdout"
    elif case == "link-to-a-file":
        (tmp_path / "mine.json").write_text("{}")
        os.symlink(tmp_path / "mine.json", target)
    else:
        os.mkfifo(target)
    p = evaluate(capsys, finished, "--cache-dir", cache, "--json", target)
    one_line_error(p, 2, "--json")
    assert "eval_loss" not in p.stdout  # refused before any evaluation
    if case == "link-to-a-file":
        assert (tmp_path / "mine.json").read_text() == "{}"


def test_status_json_of_a_run_is_read_with_the_same_bounds(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    (out / "status.json").write_text('{"status": "done", "n": 1' + "0" * 200 + "}")
    from gpt2.errors import UserError
    with pytest.raises(UserError, match="characters"):
        run_status(out)


# === weights in other layouts ===========================================================

@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """The tiny model saved by transformers in 3 shards with model.safetensors.index.json."""
    model = hf_model(**TINY)
    directory = tmp_path_factory.mktemp("sharded") / "m"
    model.save_pretrained(directory, max_shard_size="100KB")
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(TOKENIZER_DIR / f, directory / f)
    assert not (directory / "model.safetensors").exists()
    return model, directory


def test_sharded_safetensors_load_tensor_by_tensor(sharded):
    import torch
    from gpt2.weights import load_checkpoint

    hf, directory = sharded
    assert len(list(directory.glob("model-*-of-*.safetensors"))) > 1
    x = torch.randint(0, TINY["vocab_size"], (1, 12))
    assert torch.allclose(load_checkpoint(str(directory))(x)[0], hf(x).logits, atol=1e-5)


def test_sharded_model_trains_and_evaluates(capsys, sharded, text, cache, tmp_path):
    _, directory = sharded
    ok(evaluate(capsys, directory, "--validation-file", text, "--block-size", 32, "--cache-dir", cache))
    ok(train(capsys, *base_args(directory, text, cache, tmp_path / "out", 1)))


@pytest.mark.parametrize("case", ["shard-outside", "missing-shard", "wrong-shard", "no-weight-map"])
def test_bad_shard_index_is_one_line(capsys, sharded, text, cache, tmp_path, case):
    _, src = sharded
    directory = copy_of(src, tmp_path)
    index = directory / "model.safetensors.index.json"
    d = json.loads(index.read_text())
    first = next(iter(d["weight_map"]))
    if case == "shard-outside":
        d["weight_map"][first] = "../../etc/passwd.safetensors"
    elif case == "missing-shard":
        os.remove(directory / d["weight_map"][first])
    elif case == "wrong-shard":
        shards = sorted(set(d["weight_map"].values()))
        d["weight_map"][first] = next(s for s in shards if s != d["weight_map"][first])
    else:
        del d["weight_map"]
    index.write_text(json.dumps(d))
    one_line_error(train(capsys, *base_args(directory, text, cache, tmp_path / "out", 1)), 2)


def test_pytorch_model_bin_is_never_unpickled(capsys, text, cache, tmp_path, monkeypatch):
    """A directory with pytorch_model.bin only: one line on converting it; torch.load is never called."""
    import torch

    directory = save_hf(hf_model(**TINY), tmp_path / "m")
    os.remove(directory + "/model.safetensors")
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"a pickle that must not be opened")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    for p in (train(capsys, *base_args(directory, text, cache, tmp_path / "out", 1)),
              evaluate(capsys, directory, "--validation-file", text, "--cache-dir", cache)):
        one_line_error(p, 2, "pytorch_model.bin", "save_pretrained")


# === flags and limits checked before the run ============================================

@pytest.mark.parametrize("extra,words", [
    (["--fp16", "--bf16"], "pick one"),
    (["--epochs", "1e307"], "epochs"),
    (["--device", "mps"], "--device mps"),
    (["--device", "xla"], "--device xla"),
    (["--lora", "100000"], "--lora 100000"),
], ids=["fp16-and-bf16", "epochs-1e307", "mps-without-mps", "unsupported-device", "lora-rank-above-layers"])
def test_impossible_flags_are_one_line_before_training(capsys, tiny, text, cache, tmp_path, extra, words):
    import torch
    if "mps" in extra and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    p = train(capsys, *base_args(tiny, text, cache, tmp_path / "out", 1), *extra)
    one_line_error(p, 2, words)
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_compile_without_a_compiler_is_refused_before_loading(capsys, tiny, text, cache, tmp_path, monkeypatch):
    import shutil as shutil_module
    monkeypatch.setattr(shutil_module, "which", lambda *a, **k: None)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.delenv("CC", raising=False)
    p = train(capsys, *base_args(tiny, text, cache, tmp_path / "out", 1, "--compile"))
    one_line_error(p, 2, "--compile", "compiler")


def test_out_of_cpu_memory_in_training_is_one_line_and_keeps_the_last_state(capsys, tiny, text, cache, tmp_path,
                                                                            monkeypatch):
    """The CPU allocator fails at step 3 (torch raises a RuntimeError): one line, exit 1, status
    "failed" with the reason, resume.pt of step 2 whole."""
    from gpt2.trainer import Trainer
    original = Trainer.optimizer_step

    def step(self, *a, **k):
        if self.step == 2:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
                               "memory: you tried to allocate 98304000 bytes. Error code 12")
        return original(self, *a, **k)

    monkeypatch.setattr(Trainer, "optimizer_step", step)
    out = tmp_path / "out"
    one_line_error(train(capsys, *base_args(tiny, text, cache, out, 4, "--save-every", 2)), 1, "out of memory")
    status = run_status(out)
    assert status["status"] == "failed" and "allocate" in status["reason"], status
    from test_faults import state_step
    assert state_step(out / "resume.pt") == 2


# === the table, the token cache ==========================================================

def test_a_newline_in_a_run_name_keeps_each_row_on_one_line():
    from harness.compare import format_table
    rows = [{"run": "evil\nname|x", "status": "done"}, {"run": "plain", "status": "done"}]
    for markdown in (False, True):
        table = format_table(rows, markdown=markdown)
        assert len(table.splitlines()) == 4, table
        assert "evil\\nname" in table


def test_the_litter_of_a_killed_cache_write_is_removed(tmp_path):
    from harness.datasets import load_token_ids
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    dead = 2**22 + 12345  # above the default pid_max (4,194,304): no process has it
    litter = cache_dir / f"abc-v2.npz.tmp-{dead}"
    litter.write_bytes(b"half a cache file")
    alive = cache_dir / f"def-v2.npz.tmp-{os.getpid()}"  # a write in progress: left alone
    alive.write_bytes(b"being written")
    path = write_text(tmp_path / "t.txt", 20)
    load_token_ids(path, Tokenizer.from_dir(SHIPPED_DIR), str(cache_dir))
    assert not litter.exists() and alive.exists()


def test_a_cache_over_the_file_size_limit_names_the_limit(capsys, tmp_path, monkeypatch):
    import errno
    import numpy as np
    from harness.datasets import load_token_ids

    def too_large(*a, **k):
        raise OSError(errno.EFBIG, "File too large")

    monkeypatch.setattr(np, "savez", too_large)
    ids = load_token_ids(write_text(tmp_path / "t.txt", 20), Tokenizer.from_dir(SHIPPED_DIR), str(tmp_path / "c"))
    assert len(ids) > 0
    err = capsys.readouterr().err
    assert "ulimit -f" in err and "GPT2_CACHE_DIR" not in err


@pytest.mark.parametrize("endpoint", ["http://me:s3cr%40t@127.0.0.1:9/", "http://me:s3cr%40t@127.0.0.1:9/?x=1"],
                         ids=["unreachable", "bad-endpoint"])
def test_a_password_in_hf_endpoint_is_never_shown(capsys, text, cache, tmp_path, monkeypatch, endpoint):
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    p = train(capsys, "--model", "someone/model", "--weights-dir", tmp_path / "w", "--train-file", text,
              "--cache-dir", cache, "--out", tmp_path / "out")
    line = one_line_error(p, 2)
    assert "s3cr" not in line and "***" in line, line

"""The memory plan (harness/plan.py) against what PyTorch really allocates and keeps, on the CPU."""

import ctypes
import json
import os
from dataclasses import asdict, replace

import pytest
import torch

from benchmarks import plan_tables
from harness import memory, plan
from gpt2.config import PRESETS, GPT2Config
from gpt2.errors import UserError, run_cli
from gpt2.lora import add_lora
from gpt2.model import GPT2
from gpt2.precision import autocast
from gpt2.trainer import param_groups
from conftest import ROOT, TINY, hf_model, save_hf

# Two shapes with a small vocabulary (the LM head is not what these tests look at), micro-batch 2.
SMALL = (GPT2Config(vocab_size=1000, n_positions=128, n_embd=64, n_layer=2, n_head=2), 64)
MEDIUM = (GPT2Config(vocab_size=3000, n_positions=256, n_embd=128, n_layer=4, n_head=4), 128)


def build(cfg, s: memory.Settings):
    torch.manual_seed(0)
    model = GPT2(cfg, checkpointing=s.checkpointing, loss_chunk=s.loss_chunk,
                 attention_recompute=s.attention_recompute)
    if s.lora_rank:
        add_lora(model, s.lora_rank, dropout=s.lora_dropout, targets=s.lora_targets)
    return model.train()


def saved_by_autograd(model, s: memory.Settings) -> int:
    """Bytes of the tensors one training forward saves for backward, each storage once, parameters left out."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()  # views (q, k, v of one matmul output) share one storage
        if storage.data_ptr() not in params:
            storages.setdefault(storage.data_ptr(), storage.nbytes())
        return t

    ids = torch.randint(0, model.config.vocab_size, (s.micro_batch, s.block_size))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with autocast(torch.device("cpu"), s.precision):
            model(ids, labels=ids)
    return sum(storages.values())


# --- weights, gradients, AdamW: exact ------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PRESETS))
def test_parameter_count_is_exact_for_every_size(name):
    cfg = PRESETS[name]
    with torch.device("meta"):  # shapes only: no memory
        model = GPT2(cfg)
    params = list(model.parameters())  # the tied LM head is wte: listed once
    counted = memory.count_parameters(cfg)
    assert counted.total == counted.trainable == sum(p.numel() for p in params)
    assert counted.trainable_tensors == len(params)
    assert memory.state_bytes(cfg, memory.Settings())["weights"] == 4 * sum(p.numel() for p in params)

    with torch.device("meta"):
        add_lora(model, 8, targets=("c_attn", "mlp.c_proj"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    counted = memory.count_parameters(cfg, 8, ("c_attn", "mlp.c_proj"))
    assert counted.trainable == counted.lora == sum(p.numel() for p in trainable)
    assert counted.total == sum(p.numel() for p in model.parameters())
    assert counted.trainable_tensors == len(trainable)


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_gradients_and_adamw_state_are_exact(lora_rank):
    cfg, T = SMALL
    s = memory.Settings(micro_batch=2, block_size=T, lora_rank=lora_rank)
    model = build(cfg, s)
    optimizer = torch.optim.AdamW(param_groups(model, 0.0), lr=1e-3, fused=True)  # as trainer.py
    ids = torch.randint(0, cfg.vocab_size, (2, T))
    model(ids, labels=ids)[1].backward()
    grads = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)
    optimizer.step()
    state = sum(t.nbytes for st in optimizer.state.values() for t in st.values() if torch.is_tensor(t))
    want = memory.state_bytes(cfg, s)
    assert grads == want["gradients"]
    assert state == want["optimizer"]


# --- activations: what forward keeps for backward ---------------------------------------------

@pytest.mark.parametrize("shape", [SMALL, MEDIUM], ids=["2x64", "4x128"])
@pytest.mark.parametrize("dropout", [0.1, 0.0])
@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("loss_chunk", [0, 48])
def test_saved_activations_match_autograd(shape, dropout, checkpointing, loss_chunk):
    cfg, T = shape
    cfg = cfg.with_dropout(dropout)  # 0.1: the CPU's math attention path, 0: its fused kernel
    s = memory.Settings(micro_batch=2, block_size=T, checkpointing=checkpointing, loss_chunk=loss_chunk)
    assert memory.saved_bytes(cfg, s) == pytest.approx(saved_by_autograd(build(cfg, s), s), rel=0.05)


@pytest.mark.parametrize("options", [
    dict(precision="bf16"), dict(precision="bf16", loss_chunk=48), dict(precision="bf16", checkpointing=True),
    dict(attention_recompute=True), dict(attention_recompute=True, precision="bf16"),
    dict(lora_rank=4), dict(lora_rank=4, precision="bf16"), dict(lora_rank=4, loss_chunk=48, checkpointing=True),
    dict(lora_rank=4, lora_dropout=0.1), dict(lora_rank=4, lora_dropout=0.1, precision="bf16"),
    dict(lora_rank=4, lora_targets=("c_attn", "mlp.c_proj")),
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("dropout", [0.1, 0.0])
def test_saved_activations_match_autograd_with_options(options, dropout):
    cfg, T = MEDIUM
    cfg = cfg.with_dropout(dropout)
    s = memory.Settings(micro_batch=2, block_size=T, **options)
    assert memory.saved_bytes(cfg, s) == pytest.approx(saved_by_autograd(build(cfg, s), s), rel=0.05)


def test_attention_matrix_only_on_the_cpu_math_path():
    cfg = PRESETS["gpt2"]
    s = memory.Settings(micro_batch=1, block_size=1024)
    math = memory.activation_bytes(cfg, s)["one block"]
    fused = memory.activation_bytes(cfg.with_dropout(0.0), s)["one block"]
    cuda = memory.activation_bytes(cfg, memory.Settings(micro_batch=1, block_size=1024, device="cuda"))["one block"]
    # two fp32 (1, 12, 1024, 1024) tensors and a bool one, against a log-sum-exp of 4 bytes per head and token
    assert math - fused == (2 * 4 + 1) * 12 * 1024 * 1024 - 12 * 1024 * 4 + 2 * 768 * 1024  # + two bool masks
    assert cuda - fused == 2 * 768 * 1024  # CUDA: fused attention too, and two bool dropout masks


# --- the peak of live tensors, and what the CPU process holds besides ---------------------------

def has_mallinfo2() -> bool:
    try:
        ctypes.CDLL("libc.so.6").mallinfo2
        return True
    except (OSError, AttributeError):  # not glibc, or glibc < 2.33
        return False


@pytest.mark.skipif(not has_mallinfo2(), reason="counts glibc malloc's bytes in use")
@pytest.mark.parametrize("options", [dict(), dict(loss_chunk=48, attention_recompute=True),
                                     dict(checkpointing=True), dict(lora_rank=4, loss_chunk=48)],
                         ids=["plain", "chunk+recompute", "ckpt", "lora+chunk"])
def test_peak_of_live_tensors_in_a_step(options):
    """The largest bytes in use during a real training step (op by op), against the plan's peak.

    GPT-2's vocabulary with a narrow model: the LM head, the loss and wte's gradients decide the
    peak, e.g. at the embeddings: wte's gradient from the head, the embedding's, and their sum.
    """
    from benchmarks.plan_check import live_peak

    cfg = GPT2Config(vocab_size=50257, n_positions=128, n_embd=64, n_layer=2, n_head=2)
    s = memory.Settings(micro_batch=2, block_size=64, **options)
    moments = memory.moments(cfg, s)
    del moments["loading the weights"]  # before the step: its own test below
    state = memory.state_bytes(cfg, s)
    in_a_step = max(sum(m.values()) - m["baseline"] - m["malloc_kept"] for m in moments.values())
    assert in_a_step - state["weights"] - state["optimizer"] == pytest.approx(live_peak(cfg, s), rel=0.02)


def test_cpu_parts_besides_the_tensors():
    cfg = PRESETS["gpt2-medium"]
    s = memory.Settings(micro_batch=1, block_size=256, loss_chunk=1024, attention_recompute=True)
    load = memory.plan(cfg, s).moments["loading the weights"]
    weights = 4 * memory.count_parameters(cfg).total
    # the model, and the file's tensors read one at a time: wte, the largest, twice in flight
    assert sum(load.values()) == memory.CPU_BASELINE_BYTES + weights + 2 * 4 * cfg.vocab_size * cfg.n_embd
    # attention's T x T tensors, kept by malloc: four per block on the math path, when under 32 MB
    TT = 16 * 256 * 256 * 4
    assert memory.malloc_kept_bytes(cfg, s) == 24 * 4 * TT
    assert memory.malloc_kept_bytes(cfg.with_dropout(0.0), s) == 0  # the fused kernel
    assert memory.malloc_kept_bytes(cfg, replace(s, micro_batch=8)) == 0  # 32 MB each: mmap()ed, given back
    assert memory.malloc_kept_bytes(cfg, replace(s, device="cuda")) == 0
    assert "loading the weights" not in memory.plan(cfg, replace(s, device="cuda")).moments


# --- the plan: peak, largest micro-batch, table, JSON -------------------------------------

def test_peak_is_the_largest_moment_and_its_parts_add_up():
    p = memory.plan(PRESETS["gpt2"], memory.Settings(micro_batch=4, block_size=512, device="cuda", precision="bf16"))
    totals = {k: sum(v.values()) for k, v in p.moments.items()}
    assert p.peak_bytes == max(totals.values()) == totals[p.peak_at] == sum(p.parts.values())
    assert set(p.parts) == set(memory.PARTS)


def test_options_lower_the_peak():
    cfg = PRESETS["gpt2"]
    s = memory.Settings(micro_batch=8, block_size=1024, device="cuda", precision="bf16")
    peaks = {(r["checkpointing"], r["loss_chunk"], r["lora_rank"]): r["peak_mb"]
             for r in plan.combinations(cfg, s, lora=True)}
    assert len(peaks) == 8
    assert peaks[(True, 1024, 0)] < peaks[(False, 1024, 0)] < peaks[(False, 0, 0)]
    assert peaks[(True, 1024, 0)] < peaks[(True, 0, 0)] < peaks[(False, 0, 0)]
    assert peaks[(False, 0, 8)] < peaks[(False, 0, 0)]  # no gradients, no AdamW state for the frozen model


@pytest.mark.parametrize("settings", [
    memory.Settings(block_size=1024, device="cuda", precision="bf16"),
    memory.Settings(block_size=512, checkpointing=True, loss_chunk=1024),
    memory.Settings(block_size=256, device="cuda", lora_rank=8, loss_chunk=256),
], ids=["cuda-plain", "cpu-ckpt-chunk", "cuda-lora"])
def test_largest_micro_batch_is_monotonic_and_consistent(settings):
    cfg = PRESETS["gpt2"]
    previous = 0
    for gb in (0.5, 1, 2, 4, 8, 16, 32, 64):
        room = int(gb * memory.GB)
        b = plan.largest_micro_batch(room, cfg, settings)
        assert b >= previous
        previous = b
        if b:
            assert memory.plan(cfg, replace(settings, micro_batch=b)).peak_bytes <= room
        assert memory.plan(cfg, replace(settings, micro_batch=b + 1)).peak_bytes > room
    assert previous > 1


def test_plan_json_has_peak_mb():
    cfg, s = PRESETS["gpt2-medium"], memory.Settings(micro_batch=1, block_size=256)
    out = plan.plan_json(cfg, s, memory_bytes=8 * memory.GB, lora=True)
    assert json.loads(json.dumps(out)) == out
    assert out["peak_mb"] == round(memory.plan(cfg, s).peak_mb, 1)
    assert out["fits"] == (out["peak_mb"] <= 8 * 1024)
    assert out["largest_micro_batch"] == plan.largest_micro_batch(8 * memory.GB, cfg, s)
    assert len(out["combinations"]) == 8 and sum(r["chosen"] for r in out["combinations"]) == 1
    assert plan.plan_json(cfg, s)["largest_micro_batch"] is None


def test_format_plan():
    text = plan.format_plan(PRESETS["gpt2"], memory.Settings(micro_batch=2, block_size=1024), 8 * memory.GB,
                            name="gpt2")
    assert "memory plan: gpt2, 124.4M parameters" in text
    assert "<- peak" in text and "<- chosen" in text
    assert "chunked loss 1024 + checkpointing" in text
    assert "largest micro-batch in 8,192 MB" in text


def test_settings_are_checked():
    with pytest.raises(UserError):
        memory.Settings(precision="fp8")
    with pytest.raises(UserError):
        memory.Settings(lora_rank=4, lora_targets="wte")
    with pytest.raises(UserError):
        memory.plan(PRESETS["gpt2"], memory.Settings(block_size=2048))
    assert memory.Settings(lora_targets="c_attn, mlp.c_proj").lora_targets == ("c_attn", "mlp.c_proj")


def test_the_tables_of_docs_plan_md_are_computed_by_the_module():
    text = (ROOT / "docs" / "plan.md").read_text(encoding="utf-8")
    for table in plan_tables.docstring_tables():
        assert table in text


# --- train.py --plan: the flags, read as train.py reads them -----------------------------------

def run_plan(argv, capsys):
    """train.py --plan in this process: (exit status, what it printed)."""
    import train

    status = train.main(["--plan", "--device", "cpu", "--precision", "fp32", *argv])
    return status, capsys.readouterr().out


def cpu_settings(**options):
    """The Settings train.py trains with on the CPU: its defaults, the chunked loss and attention_recompute."""
    from harness import run

    recompute = run.pick_attention_recompute(None, torch.device("cpu"), options.get("checkpointing", False),
                                             options.get("block_size", memory.Settings.block_size),
                                             lora=bool(options.get("lora_rank")))[0]
    return memory.Settings(device="cpu", loss_chunk=run.DEFAULT_LOSS_CHUNK, attention_recompute=recompute, **options)


def test_plan_of_a_model_directory_reads_config_json_only(tmp_path, capsys):
    directory = save_hf(hf_model(**TINY), tmp_path / "tiny")
    os.remove(os.path.join(directory, "model.safetensors"))  # no weight is needed, nor read
    out_json = tmp_path / "plan.json"
    status, out = run_plan(["--model", directory, "--block-size", "32", "--batch-size", "3",
                            "--memory", "2GB", "--json", str(out_json)], capsys)
    assert status == 0
    cfg = GPT2Config.from_json(os.path.join(directory, "config.json"))
    s = cpu_settings(micro_batch=3, block_size=32)
    counted = memory.count_parameters(cfg)
    assert f"parameters: {counted.trainable:,} trainable of {counted.total:,}" in out
    assert "memory plan:" in out and "<- peak" in out and "memory to fit: 1,907 MB (--memory)" in out
    written = json.loads(out_json.read_text())
    assert written["peak_mb"] == round(memory.plan(cfg, s).peak_mb, 1)
    assert written["settings"] == {**asdict(s), "lora_targets": list(s.lora_targets)}
    assert written["largest_micro_batch"] == plan.largest_micro_batch(2 * 10**9, cfg, s)
    # the table of options: at block 32 train.py recomputes attention with LoRA alone, and
    # never where whole blocks are recomputed
    assert all(row["attention_recompute"] == (row["lora_rank"] > 0 and not row["checkpointing"])
               for row in written["combinations"])


def test_plan_follows_train_py_defaults():
    from harness import run
    from harness.cli import train_parser

    cfg, cpu, cuda = PRESETS["gpt2"], torch.device("cpu"), torch.device("cuda")  # cuda: a name, nothing runs
    args = train_parser().parse_args(["--plan", "--precision", "fp32"])
    s, notes = plan.settings_for(args, cfg, cpu)
    assert (s.loss_chunk, s.attention_recompute) == (run.pick_loss_chunk(None, cpu)[0],
                                                     run.pick_attention_recompute(None, cpu, False, 1024)[0])
    assert s.attention_recompute  # block 1024 on the CPU: the T x T tensors are recomputed
    assert (s.micro_batch, s.block_size, s.precision) == (2, 1024, "fp32")
    assert notes[-1] == "parameters: 124,439,808 trainable of 124,439,808"
    short = ["--precision", "fp32", "--block-size", "256"]
    s, _ = plan.settings_for(train_parser().parse_args(short), cfg, cpu)
    assert not s.attention_recompute  # block 256: kept (small, and recomputing costs speed)
    s, _ = plan.settings_for(train_parser().parse_args(short + ["--lora", "8"]), cfg, cpu)
    assert s.attention_recompute  # ... except with --lora, where memory comes first
    s, _ = plan.settings_for(train_parser().parse_args(["--precision", "fp32", "--checkpointing"]), cfg, cpu)
    assert s.checkpointing and not s.attention_recompute  # whole blocks are recomputed anyway
    s, _ = plan.settings_for(train_parser().parse_args(["--bf16", "--lora", "4", "--batch-size", "auto",
                                                        "--effective-batch", "8"]), cfg, cuda)
    assert (s.device, s.precision, s.loss_chunk, s.attention_recompute) == ("cuda", "bf16", 0, False)
    assert (s.lora_rank, s.micro_batch, s.grad_accum) == (4, 2, 4)


def test_plan_of_a_preset_downloads_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: a download would fail
    weights = tmp_path / "weights"
    weights.mkdir()
    status, out = run_plan(["--model", "gpt2-medium", "--weights-dir", str(weights), "--block-size", "256",
                            "--batch-size", "1"], capsys)
    assert status == 0
    assert "memory plan: gpt2-medium, 354.8M parameters" in out
    assert "parameters: 354,823,168 trainable of 354,823,168" in out
    assert list(weights.iterdir()) == []  # no folder made, no file fetched
    # a downloaded config.json is the model's own: it wins over the preset's shape
    (weights / "gpt2").mkdir()
    GPT2Config(n_layer=3, n_head=4, n_embd=128).to_json(str(weights / "gpt2" / "config.json"))
    status, out = run_plan(["--model", "gpt2", "--weights-dir", str(weights)], capsys)
    assert status == 0 and f"{memory.count_parameters(GPT2Config(n_layer=3, n_head=4, n_embd=128)).total:,}" in out


def test_memory_changes_the_largest_micro_batch(tmp_path, capsys):
    largest = {}
    for room in ("8GB", "16GB"):
        status, out = run_plan(["--model", "gpt2", "--batch-size", "auto", "--block-size", "512",
                                "--memory", room, "--json", str(tmp_path / f"{room}.json")], capsys)
        assert status == 0
        largest[room] = json.loads((tmp_path / f"{room}.json").read_text())["largest_micro_batch"]
        assert f"the largest that fits in {int(room[:-2]) * 10**9 / memory.MB:,.0f} MB is {largest[room]}" in out
    s = cpu_settings(micro_batch=2, block_size=512)
    assert largest["8GB"] == plan.largest_micro_batch(8 * 10**9, PRESETS["gpt2"], s)
    assert 0 < largest["8GB"] < largest["16GB"]


def test_plan_of_a_hub_id_not_on_disk_is_one_line(tmp_path, capsys, monkeypatch):
    import train

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    weights = tmp_path / "weights"
    weights.mkdir()
    status = run_cli(train.main, ["--plan", "--model", "some-org/some-model", "--weights-dir", str(weights)])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert "not downloaded" in err and "pass its directory" in err
    assert list(weights.iterdir()) == []


def test_fits_table_cells_are_the_plans_answers():
    table = plan_tables.fits_table(models=("gpt2", "gpt2-xl"), memory_gb=(8, 24))
    assert "bf16" in table and "block size 1024" in table and "not measured" in table
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| gpt2")]
    assert len(rows) == 2 * len(plan_tables.FITS_OPTIONS)
    for row in rows:
        name, label, cells = row[0].strip("| "), row[1], [int(c.strip(" |")) for c in row[2:]]
        flags = dict(plan_tables.FITS_OPTIONS)[label]
        s = memory.Settings(block_size=1024, precision="bf16", device="cuda", checkpointing="--checkpointing" in flags,
                          lora_rank=8 if "--lora" in flags else 0)
        assert cells == [plan.largest_micro_batch(gb * 10**9, PRESETS[name], s) for gb in (8, 24)]
        assert cells[0] <= cells[1]


def test_plan_for_a_gpu_this_machine_does_not_have(tmp_path, capsys):
    """--plan --device cuda plans for a GPU even where there is none; its memory must then be given."""
    import train
    from gpt2.errors import UserError

    directory = save_hf(hf_model(**TINY), tmp_path / "tiny")
    argv = ["--plan", "--model", directory, "--block-size", "32", "--device", "cuda"]
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match="--memory"):
        train.main(argv)
    assert train.main(argv + ["--memory", "8GB", "--json", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out
    assert "bf16 on cuda" in out and "torch.cuda.max_memory_allocated" in out
    cfg = GPT2Config.from_json(os.path.join(directory, "config.json"))
    s = memory.Settings(micro_batch=2, block_size=32, precision="bf16", device="cuda")
    assert json.loads((tmp_path / "p.json").read_text())["peak_mb"] == round(memory.plan(cfg, s).peak_mb, 1)

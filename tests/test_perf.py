"""The memory and speed options change how a step runs, never what it computes.

Chunked loss and activation checkpointing must give the plain path's loss and
gradients; --batch-size auto must keep the effective batch; --compile must train.
Speed and memory themselves are measured by benchmarks/bench.py, never here.
"""

import json
import shutil

import numpy as np
import pytest
import torch

from gpt2.config import GPT2Config
from gpt2.model import GPT2
from harness.batch import choose_batch, find_micro_batch, make_probe, split_batch
from gpt2.distributed import Dist
from gpt2.loss import chunked_lm_loss, next_token_targets

SHAPE = dict(vocab_size=101, n_positions=32, n_embd=24, n_layer=2, n_head=3)


def tiny_model(dropout=0.0, seed=0, **options):
    torch.manual_seed(seed)
    return GPT2(GPT2Config(**SHAPE).with_dropout(dropout), **options).train()


def ids_and_labels(B=3, T=29, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, SHAPE["vocab_size"], (B, T), generator=g)
    labels = ids.clone()
    labels[0, 3:11] = -100  # e.g. padding or a prompt that is not scored
    labels[2, -1] = -100
    return ids, labels


def loss_and_grads(model, ids, labels, seed=5):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same dropout masks for every variant
    _, loss = model(ids, labels=labels)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_same(a, b, tol=1e-5):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert abs(loss_a.item() - loss_b.item()) <= tol
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        diff = (grads_a[name] - grads_b[name]).abs().max().item()
        assert diff <= tol, f"{name}: gradients differ by {diff}"


# --- chunked loss --------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [1, 7, 28, 1000])  # 7 does not divide 3 x 28 positions; 1000 > all
def test_chunked_loss_matches_plain_path(chunk):
    model = tiny_model()
    ids, labels = ids_and_labels()
    plain = loss_and_grads(model, ids, labels)
    model.loss_chunk = chunk
    chunked = loss_and_grads(model, ids, labels)
    assert_same(plain, chunked)
    # The LM head is the embedding matrix: its gradient holds both uses.
    assert model.lm_head.weight is model.transformer.wte.weight


def test_chunked_loss_function_matches_cross_entropy_with_a_scaled_backward():
    torch.manual_seed(0)
    h = torch.randn(2, 13, 8, requires_grad=True)
    w = torch.randn(50, 8, requires_grad=True)
    labels = torch.randint(0, 50, (2, 13))
    labels[1, :4] = -100
    logits = h @ w.T
    want = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
    (3.5 * want).backward()  # a scale on the loss (accumulation weight, GradScaler) reaches the gradients
    want_gh, want_gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    got = chunked_lm_loss(h, w, next_token_targets(labels), chunk=5)
    (3.5 * got).backward()
    assert abs(got.item() - want.item()) <= 1e-5
    assert torch.allclose(h.grad, want_gh, atol=1e-5) and torch.allclose(w.grad, want_gw, atol=1e-5)


def test_chunked_loss_without_grad_is_the_same_loss():
    model = tiny_model()
    ids, labels = ids_and_labels()
    with torch.no_grad():
        _, plain = model(ids, labels=labels)
        model.loss_chunk = 5
        _, chunked = model(ids, labels=labels)
    assert abs(plain.item() - chunked.item()) <= 1e-5


@pytest.mark.parametrize("chunk", [6, 1000])  # several chunks; one (its d/d W widened in backward)
def test_chunked_loss_under_autocast(chunk):
    """bf16 autocast (the CPU has it; CUDA fp16/bf16 take the same path): matmuls in
    bf16, loss in fp32, gradients in the parameters' dtype, close to the plain path."""
    model = tiny_model()
    ids, labels = ids_and_labels()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = loss_and_grads(model, ids, labels)
        model.loss_chunk = chunk
        chunked = loss_and_grads(model, ids, labels)
    assert chunked[0].dtype == torch.float32
    assert all(g.dtype == torch.float32 for g in chunked[1].values())
    assert abs(plain[0].item() - chunked[0].item()) <= 2e-2
    wte = "transformer.wte.weight"
    rel = (plain[1][wte] - chunked[1][wte]).norm() / plain[1][wte].norm()
    assert rel <= 3e-2


def test_widening_and_scaling_in_one_pass_is_widening_then_scaling():
    """What the one-chunk d/d W relies on (loss.py): a 16-bit tensor times a 1-element fp32
    tensor is computed and returned in fp32, bit for bit as .float() then * scale."""
    torch.manual_seed(0)
    grad = torch.randn(50, 7).bfloat16()
    scale = torch.tensor(0.37) / 11
    one_pass = grad * scale.reshape(1)
    assert one_pass.dtype == torch.float32
    assert torch.equal(one_pass, grad.float().mul_(scale))


# --- activation checkpointing ----------------------------------------------------------

@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_checkpointing_matches_plain_path(dropout):
    """With dropout too: the recomputation replays the same random masks."""
    model = tiny_model(dropout)
    ids, labels = ids_and_labels()
    plain = loss_and_grads(model, ids, labels)
    model.checkpointing = True
    assert_same(plain, loss_and_grads(model, ids, labels))
    model.loss_chunk = 7  # both options together
    assert_same(plain, loss_and_grads(model, ids, labels))


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_attention_recompute_matches_plain_path(dropout):
    """Attention's T x T part rebuilt in backward (attention.py): the same loss and gradients
    to rounding (it draws the same dropout mask as the plain path)."""
    ids, labels = ids_and_labels()
    plain = loss_and_grads(tiny_model(dropout), ids, labels)
    assert_same(plain, loss_and_grads(tiny_model(dropout, attention_recompute=True), ids, labels), tol=1e-5)


@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_keep_mask_attention_is_the_math_path_with_its_dropout_mask(p, dtype):
    """The same random state: the same dropped entries as the plain path (dropout_attention,
    PyTorch's math path written out with dropout.keep_mask), so outputs and gradients agree
    to rounding; both are softmax(q k^T / sqrt(hd), causal) * mask / (1 - p) @ v with the mask
    the seed gives; in fp32 (as the math path computes under autocast), with gradients in the
    inputs' dtype; and backward keeps q, k, v and a bool mask."""
    from gpt2.attention import dropout_attention, keep_mask_attention
    from gpt2.dropout import keep_mask

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 19, 8, dtype=dtype, requires_grad=True) for _ in range(3))
    dy = torch.randn(2, 3, 19, 8)

    def run(attend):
        torch.manual_seed(7)
        y = attend(q, k, v)
        return (y.float(), *torch.autograd.grad(y, (q, k, v), dy.to(y.dtype)))

    def by_hand(q, k, v):  # in float64, with the mask drawn from the same state
        q, k, v = (t.double() for t in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) / 8 ** 0.5
        scores = scores.masked_fill(torch.ones(19, 19, dtype=torch.bool).triu(1), float("-inf"))
        return (torch.softmax(scores, -1) * keep_mask((2, 3, 19, 19), p, "cpu") / (1 - p)) @ v

    ref = run(by_hand)
    plain = run(lambda *t: dropout_attention(*t, p))
    got = run(lambda *t: keep_mask_attention(*t, p))
    assert got[0].dtype == plain[0].dtype == torch.float32 and all(g.dtype == dtype for g in got[1:])
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # bf16: the gradients' final rounding
    for a, b, c in zip(ref, plain, got):
        assert (a.float() - b.float()).abs().max().item() <= tol
        assert (b.float() - c.float()).abs().max().item() <= tol
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        keep_mask_attention(q, k, v, p)
    assert sorted(str(t.dtype) for t in kept) == ["torch.bool"] + ["torch.float32"] * 3


def test_dropout_attention_without_dropping_is_pytorchs_attention():
    """p = 0 keeps every entry: what is left is F.scaled_dot_product_attention, causal."""
    import torch.nn.functional as F

    from gpt2.attention import dropout_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 19, 8) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(dropout_attention(q, k, v, 0.0), ref, atol=1e-6)


# --- --batch-size auto -----------------------------------------------------------------

@pytest.mark.parametrize("native", [True, False], ids=["native-bf16", "no-bf16"])
def test_precision_auto_on_the_cpu_is_bf16_only_where_it_is_native(monkeypatch, capsys, native):
    """--precision auto: bf16 on a CPU with AVX512-BF16/AMX, else fp32; --bf16 is allowed on any CPU."""
    from gpt2 import precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    chosen, why = precision.resolve_precision("auto", cpu)
    assert chosen == ("bf16" if native else "fp32") and why.startswith("auto: ")
    assert precision.resolve_precision("bf16", cpu)[0] == "bf16"
    assert ("emulated" in capsys.readouterr().err) == (not native)  # one line where it is slow
    assert precision.resolve_precision("fp16", cpu)[0] == chosen  # no fp16 on the CPU: auto's choice
    assert precision.resolve_precision("fp32", cpu)[0] == "fp32"


@pytest.mark.parametrize("native", [True, False], ids=["native-bf16", "no-bf16"])
def test_evaluations_under_auto_run_in_fp32_a_named_precision_is_kept(monkeypatch, native):
    """Issue #19: what auto picks is for training; the metrics do not depend on the instruction set."""
    from gpt2 import precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    for requested, expected in (("auto", "fp32"), ("fp32", "fp32"), ("bf16", "bf16"), ("fp16", "fp32")):
        assert precision.eval_precision(requested, precision.resolve_precision(requested, cpu)[0]) == expected


@pytest.mark.parametrize("forced", ["0", "1"])
def test_gpt2_cpu_bf16_forces_the_detection(monkeypatch, forced):
    from gpt2 import precision

    monkeypatch.setenv("GPT2_CPU_BF16", forced)
    assert precision.cpu_has_native_bf16() is (forced == "1")
    assert precision.resolve_precision("auto", torch.device("cpu"))[0] == ("bf16" if forced == "1" else "fp32")


def test_bf16_training_on_the_cpu_keeps_the_loss_in_fp32():
    """Under CPU autocast the matmuls run in bf16, the loss (log-softmax) in fp32."""
    from gpt2.precision import autocast

    model = tiny_model(0.0).train()
    ids, labels = ids_and_labels()
    with autocast(torch.device("cpu"), "bf16"):
        logits, loss = model(ids, labels=labels)
    assert loss.dtype == torch.float32
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten())
    assert abs(loss.item() - ref.item()) < 1e-5


def fake_gpu(capacity):
    """A try_step that runs out of memory above `capacity` sequences, recording what it tried."""
    tried = []

    def try_step(b):
        tried.append(b)
        if b > capacity:
            raise torch.OutOfMemoryError(f"CUDA out of memory trying {b}")

    return try_step, tried


@pytest.mark.parametrize("capacity", [1, 2, 5, 13, 64, 500])
def test_find_micro_batch_finds_the_largest_that_fits(capacity):
    try_step, tried = fake_gpu(capacity)
    assert find_micro_batch(try_step, start=1, limit=64) == min(capacity, 64)
    assert max(tried) <= 64 and len(tried) <= 2 * 7  # doubling then bisection: a few tries


def test_find_micro_batch_reports_when_nothing_fits():
    try_step, _ = fake_gpu(0)
    with pytest.raises(MemoryError):
        find_micro_batch(try_step, start=1, limit=8)


def test_find_micro_batch_lets_other_errors_through():
    def broken(b):
        raise RuntimeError("not a memory problem")

    with pytest.raises(RuntimeError):
        find_micro_batch(broken)


@pytest.mark.parametrize("effective, fits, want", [(24, 10, (8, 3)), (32, 13, (8, 4)), (7, 4, (1, 7)),
                                                   (16, 64, (16, 1)), (6, 1, (1, 6))])
def test_split_batch_keeps_the_effective_batch(effective, fits, want):
    micro, accum = split_batch(effective, fits)
    assert (micro, accum) == want and micro * accum == effective


def test_probe_runs_a_real_step_and_leaves_no_gradients():
    model = tiny_model().eval()
    make_probe(model, block_size=16, device=torch.device("cpu"), precision="fp32")(3)
    assert all(p.grad is None for p in model.parameters())
    assert not model.training  # its mode is restored


def choose(argv, capacity=None, world=1):
    """The (micro-batch, accumulation) train.py chooses for these flags; capacity simulates a GPU
    that holds that many sequences (None: the CPU, nothing to probe)."""
    from harness.cli import train_parser

    args = train_parser().parse_args(argv)
    try_step = fake_gpu(capacity)[0] if capacity is not None else None
    micro, accum, _ = choose_batch(args.batch_size, args.grad_accum, args.effective_batch, Dist(world_size=world),
                                   try_step)
    return micro, accum


def test_batch_size_auto_on_a_gpu_keeps_the_effective_batch():
    # Room for 5: 24 = 4 x 6 (the largest micro-batch that fits and divides 24).
    assert choose(["--batch-size", "auto", "--effective-batch", "24"], 5) == (4, 6)
    # Room for plenty: one forward pass per step.
    assert choose(["--batch-size", "auto", "--effective-batch", "24"], 99) == (24, 1)
    # Without --effective-batch: what the command trains with micro-batch 2, 2 x --grad-accum.
    assert choose(["--batch-size", "auto", "--grad-accum", "8"], 7) == (4, 4)
    from gpt2.errors import UserError

    with pytest.raises(UserError, match="not even one sequence"):
        choose(["--batch-size", "auto"], 0)


def test_batch_size_auto_on_the_cpu_uses_the_default_micro_batch():
    assert choose(["--batch-size", "auto", "--effective-batch", "16"]) == (2, 8)
    assert choose(["--batch-size", "auto", "--effective-batch", "5"]) == (1, 5)
    assert choose(["--batch-size", "auto"]) == (2, 1)


def test_effective_batch_with_a_fixed_micro_batch_sets_the_accumulation():
    from gpt2.errors import UserError

    assert choose(["--batch-size", "4", "--effective-batch", "32"]) == (4, 8)
    assert choose(["--batch-size", "3"]) == (3, 1)  # neither flag: nothing changes
    with pytest.raises(UserError, match="multiple"):
        choose(["--batch-size", "3", "--effective-batch", "32"])
    with pytest.raises(UserError, match="grad-accum"):
        choose(["--batch-size", "2", "--grad-accum", "2", "--effective-batch", "32"])


def test_batch_size_flag_accepts_auto_and_numbers_only():
    from harness.cli import train_parser

    p = train_parser()
    assert p.parse_args(["--batch-size", "auto"]).batch_size == "auto"
    assert p.parse_args(["--per_device_train_batch_size", "4"]).batch_size == 4
    with pytest.raises(SystemExit):
        p.parse_args(["--batch-size", "big"])


def test_train_py_with_batch_size_auto(tmp_path, tiny_ckpt):
    """End to end on the CPU: the chosen split is what trains and what run_args.json records."""
    import train

    text = tmp_path / "train.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    out = tmp_path / "out"
    rc = train.main(["--model", tiny_ckpt, "--train-file", str(text), "--block-size", "16", "--batch-size", "auto",
                     "--effective-batch", "6", "--max-steps", "2", "--no-progress", "--out", str(out),
                     "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--loss-chunk", "5",
                     "--checkpointing"])
    assert rc == 0
    run_args = json.loads((out / "run_args.json").read_text())
    assert (run_args["batch_size"], run_args["grad_accum"], run_args["effective_batch"]) == (2, 3, 6)


# --- --compile -------------------------------------------------------------------------

def test_compile_trains_a_tiny_model():
    """Two steps with torch.compile give the eager losses (skipped without a C compiler)."""
    from conftest import train_loop
    from gpt2.trainer import TrainConfig

    if not hasattr(torch, "compile") or not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("torch.compile needs a C compiler on the CPU")
    blocks = np.random.default_rng(0).integers(0, SHAPE["vocab_size"], size=(8, 16))
    losses = {}
    for compiled in (False, True):
        cfg = TrainConfig(batch_size=4, max_steps=2, lr=1e-3, compile=compiled, progress=False, log_every=1)
        try:
            _, history, _, _ = train_loop(tiny_model(), blocks, cfg)
        except Exception as e:  # inductor's errors have no common base class
            if compiled and "compiler" in str(e).lower():
                pytest.skip(f"torch.compile does not work here: {str(e).splitlines()[0]}")
            raise
        losses[compiled] = [e["loss"] for e in history.log if "loss" in e]
    assert len(losses[True]) == 2
    assert np.allclose(losses[True], losses[False], atol=1e-4)

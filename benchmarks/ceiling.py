"""Benchmark: a training step against this machine's own matmul speed, in one run.

    python benchmarks/ceiling.py                                   # GPT-2 124M, block 256, micro-batch 2
    python benchmarks/ceiling.py --precision bf16 --rounds 3 --json out.json

"Faster than the Trainer" is a relative goal; the absolute one is the matrix
products. A GPT-2 step is mostly matmuls of a few fixed shapes, so the fastest the
step could go on this machine is the time those matmuls take alone, at the speed the
machine multiplies matrices of exactly those shapes. This script measures both in
one process, interleaved round by round (a shared machine slows both alike), and
prints the step's share of that ceiling:

    ceiling (FLOP/s)  = FLOPs of the step's matmuls / their time, each shape timed alone
    step (FLOP/s)     = tokens/s x FLOPs per token (bench.py's 6N + 12 L H Q T)
    share of ceiling  = step / ceiling   (per round, the median over the rounds)

The step's matmuls, for M = micro-batch x block positions and each nn.Linear of a
block, (in, out) = (C, 3C), (C, C), (C, 4C), (4C, C), weighted n_layer times, and the
LM head (C, V) once; three products each (2 x M x in x out FLOPs apiece):

    forward      Y = X W^T        (M, in) x (in, out)
    backward     dX = dY W        (M, out) x (out, in)
                 dW = dY^T X      (out, M) x (M, in)

in the precision's dtype (fp32, or bf16 as autocast runs them), with the same
transposed views autograd hands the kernels. Attention's two T x T products are in
the step's FLOPs but not in the ceiling's shapes (as in the MFU convention): at
block 256 they are 4 % of the FLOPs (12 L C T = 28 M of 0.77 G per token).

Then a profile (torch.profiler) of --profile-steps more steps splits the step's time
into matmuls, attention, dropout, casts, optimizer, loss and other. Each operator's
own time (without its children) goes to one category, by where it ran: inside a
dropout (aten::dropout, gpt2.dropout's functions, attention's masks included), inside
attention (scaled_dot_product_attention, gpt2.attention's functions), inside the
chunked LM-head loss,
inside the optimizer part of the step (clipping, AdamW, zero_grad), and in backward
by the forward operator that made the autograd node (its sequence number): the
backward of a dropout is dropout, the backward of a cast is a cast. (The script
labels gpt2's dropout and attention functions with torch.profiler's record_function,
from outside; the model code knows nothing of it.) Matmuls are
aten::mm/addmm (the linear layers and the LM head); attention's bmm count as
attention. Casts are the dtype conversions (aten::_to_copy, and aten::copy_ outside a
clone). The profiler adds its own overhead per operator, so the shares are of the
profiled step, which is a few percent slower than the timed one.

The machine is named at the top: CPU model, cores, torch's threads, and whether it
multiplies bf16 natively (AVX512-BF16, AMX). On CUDA it times the same shapes on the
GPU (the breakdown is of CPU-side operator time there, so it is printed but means
less). Random weights of the real shape (no download); the step is bench.py's "ours"
with train.py's defaults (--ours-opts default): fused AdamW, clipping, dropout 0.1.
"""

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402
from torch.autograd import profiler as autograd_profiler  # noqa: E402

import bench  # noqa: E402  (its model builder, FLOPs per token and CPU name)

CATEGORIES = ("matmuls", "attention", "dropout", "casts", "optimizer", "loss", "other")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--precision", default="fp32,bf16", help="comma-separated: fp32, bf16, fp16 (default: fp32,bf16)")
    p.add_argument("--bernoulli", action="store_true",
                   help="also each precision with PyTorch's bernoulli_ dropout masks (variant '/bernoulli')")
    p.add_argument("--model-config", default="gpt2", choices=bench.PRESET_NAMES)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--ours-opts", default="default", help="as bench.py's --ours-opts (default: default)")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--rounds", type=int, default=3, help="ceiling + steps, this many times per precision")
    p.add_argument("--steps", type=int, default=2, help="timed steps per round (default: 2)")
    p.add_argument("--reps", type=int, default=2, help="timings of each matmul shape per round (the fastest kept)")
    p.add_argument("--profile-steps", type=int, default=2, help="profiled steps per precision, 0: no breakdown")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", dest="json_out")
    return p.parse_args(argv)


# --- the machine ---------------------------------------------------------------------

def machine(device):
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    info = {"cpu": bench.cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    return info


# --- the ceiling: the step's matmul shapes, each alone -------------------------------

def matmul_shapes(cfg, M):
    """[(name, in, out, weight)]: the linear layers of one block (n_layer times) and the LM head (once)."""
    C = cfg.n_embd
    return [("attn.c_attn", C, 3 * C, cfg.n_layer), ("attn.c_proj", C, C, cfg.n_layer),
            ("mlp.c_fc", C, 4 * C, cfg.n_layer), ("mlp.c_proj", 4 * C, C, cfg.n_layer),
            ("lm_head", C, cfg.vocab_size, 1)]


def time_shape(M, n_in, n_out, dtype, device, reps, bias):
    """Seconds of (forward, dX, dW) for one (M, in) x (in, out) linear layer: the fastest of reps."""
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(M, n_in, dtype=dtype, device=device, generator=g)
    w = torch.randn(n_out, n_in, dtype=dtype, device=device, generator=g)
    b = torch.randn(n_out, dtype=dtype, device=device, generator=g) if bias else None
    dy = torch.randn(M, n_out, dtype=dtype, device=device, generator=g)
    products = [lambda: torch.nn.functional.linear(x, w, b),  # Y = X W^T (+ b): addmm
                lambda: dy @ w,                                # dX = dY W
                lambda: dy.t() @ x]                            # dW = dY^T X
    best = []
    for f in products:
        f()  # warm: oneDNN picks and caches its kernel for the shape
        times = []
        for _ in range(reps):
            sync(device)
            t0 = time.perf_counter()
            f()
            sync(device)
            times.append(time.perf_counter() - t0)
        best.append(min(times))
    return best


def measure_ceiling(cfg, M, dtype, device, reps):
    """{'flops', 'seconds', 'per_shape'}: the step's matmuls, weighted, at the speed of each shape alone."""
    flops = seconds = 0.0
    per_shape = {}
    for name, n_in, n_out, weight in matmul_shapes(cfg, M):
        t = time_shape(M, n_in, n_out, dtype, device, reps, bias=name != "lm_head")
        f = 3 * 2 * M * n_in * n_out
        per_shape[name] = {"gflops_per_s": f / sum(t) / 1e9, "seconds": [round(s, 5) for s in t]}
        flops += weight * f
        seconds += weight * sum(t)
    return {"flops": flops, "seconds": seconds, "per_shape": per_shape}


def time_weight_casts(model, dtype, device, reps):
    """Seconds to cast every weight matrix to `dtype` once (what autocast does in each forward)."""
    mats = [p for p in model.parameters() if p.dim() == 2]
    times = []
    for _ in range(reps + 1):  # the first one warms the allocator
        sync(device)
        t0 = time.perf_counter()
        copies = [m.detach().to(dtype) for m in mats]
        sync(device)
        times.append(time.perf_counter() - t0)
        del copies
    return min(times[1:])


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the step ------------------------------------------------------------------------

def make_model(args, device):
    """(model, optimizer, opts): bench.py's 'ours' side, shared by every variant (its weights
    drift with the steps, which does not change the step's speed)."""
    opts = bench.parse_opts(args.ours_opts)
    if opts["default"]:
        opts = bench.default_opts(opts, device, args.block_size)
    bargs = argparse.Namespace(model_config=args.model_config, dropout=args.dropout, seed=args.seed)
    model, loss_fn = bench.build("ours", bargs, device, opts)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.0, fused=device.type in ("cuda", "cpu"))
    model.train()
    return model, loss_fn, opt, opts


def bernoulli_mask(shape, p, device):
    """PyTorch's own draw (bernoulli_, as nn.Dropout and the math path): the variant '/bernoulli'."""
    return torch.empty(shape, device=device).bernoulli_(1 - p).bool()


def labelled(fn, label):
    """fn, its operators grouped under `label` in the profile (record_function: about a microsecond a call)."""
    def wrapped(*args, **kwargs):
        with autograd_profiler.record_function(label):
            return fn(*args, **kwargs)
    return wrapped


@contextlib.contextmanager
def masks_drawn_by(draw):
    """gpt2.dropout's keep_mask swapped for `draw` (None: kept), in both modules that call it, and
    dropout's operators labelled 'dropout' for the breakdown (the model code knows nothing of this)."""
    import gpt2.attention
    import gpt2.model

    try:
        import gpt2.dropout
    except ImportError:  # the code before issue 30 (a before/after run): nothing to swap or label
        if draw is not None:
            raise SystemExit("--bernoulli needs gpt2/dropout.py")
        yield
        return
    saved = (gpt2.dropout.keep_mask, gpt2.attention.keep_mask, gpt2.dropout.dropout,
             gpt2.model.dropout_attention, gpt2.model.keep_mask_attention)
    mask = labelled(draw or gpt2.dropout.keep_mask, "dropout")
    gpt2.dropout.keep_mask = gpt2.attention.keep_mask = mask
    gpt2.dropout.dropout = labelled(gpt2.dropout.dropout, "dropout")
    gpt2.model.dropout_attention = labelled(gpt2.model.dropout_attention, "attention")
    gpt2.model.keep_mask_attention = labelled(gpt2.model.keep_mask_attention, "attention")
    try:
        yield
    finally:
        (gpt2.dropout.keep_mask, gpt2.attention.keep_mask, gpt2.dropout.dropout,
         gpt2.model.dropout_attention, gpt2.model.keep_mask_attention) = saved


def make_step(model, loss_fn, opt, device, variant):
    """step(x) -> loss: one optimizer step of `variant` ('bf16', 'fp32', 'bf16/bernoulli', ...)."""
    from gpt2.precision import autocast, make_scaler

    precision, _, masks = variant.partition("/")
    scaler = make_scaler(device, precision)
    draw = bernoulli_mask if masks == "bernoulli" else None

    def step(x):
        with masks_drawn_by(draw):
            with autocast(device, precision):
                loss = loss_fn(x)
            scaler.scale(loss).backward()
        with autograd_profiler.record_function("optimizer"):  # clipping, AdamW, zero_grad: one category
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def time_steps(step, batches, device):
    times = []
    for x in batches:
        sync(device)
        t0 = time.perf_counter()
        step(x)
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


# --- the breakdown -------------------------------------------------------------------

ATTENTION = ("aten::scaled_dot_product_attention", "KeepMaskAttention", "attention")
DROPOUT = ("aten::dropout", "aten::native_dropout", "aten::feature_dropout", "dropout")
LOSS = ("_LMHeadLoss", "loss", "aten::cross_entropy_loss")
MATMUL = ("aten::mm", "aten::addmm")
ATTENTION_MATMUL = ("aten::bmm", "aten::baddbmm")
CASTS = ("aten::_to_copy",)


def categorize(events):
    """{category: seconds of own time}, {op name: seconds} for 'other', from the profiler's events."""
    def ancestors(e):
        """The event's own name, then its parents' up to the root."""
        names = [e.name]
        p = e.cpu_parent
        while p is not None:
            names.append(p.name)
            p = p.cpu_parent
        return names

    def context(e, names):
        """The category a forward-side event belongs to by where it ran (None: by its own name)."""
        if "optimizer" in names:
            return "optimizer"
        if any(n in DROPOUT for n in names) or e.name == "aten::bernoulli_":
            return "dropout"  # attention's mask included
        if any(n.startswith(ATTENTION) for n in names):
            return "attention"
        if any(n.startswith(LOSS) for n in names):
            return "loss"
        return None

    # Forward operators that made autograd nodes: sequence number -> category, so that
    # their backward is counted with them.
    forward_of = {}
    for e in events:
        seq = getattr(e, "sequence_nr", -1)
        if seq is None or seq < 0 or e.name.startswith("autograd::"):
            continue
        names = ancestors(e)
        cat = context(e, names)
        if cat is None and (e.name in CASTS or e.name == "aten::to"):
            cat = "casts"
        if cat is not None and seq not in forward_of:
            forward_of[seq] = cat

    totals = dict.fromkeys(CATEGORIES, 0.0)
    other = {}
    for e in events:
        own = e.self_cpu_time_total / 1e6
        if own <= 0:
            continue
        names = ancestors(e)
        cat = context(e, names)
        if cat is None:  # in backward: the category of the forward operator that made the node
            p = e
            while p is not None and cat is None:
                if p.name.startswith("autograd::engine::evaluate_function"):
                    seq = getattr(p, "sequence_nr", -1)
                    cat = forward_of.get(seq)
                    if cat is None and "ToCopyBackward" in p.name:
                        cat = "casts"
                    break
                p = p.cpu_parent
        if cat in (None, "attention", "loss", "optimizer") and e.name in MATMUL and cat != "optimizer":
            cat = "matmuls"  # the linear layers and the LM head (in the loss) are the ceiling's shapes
        elif cat is None and e.name in ATTENTION_MATMUL:
            cat = "attention"
        elif cat is None and (e.name in CASTS or (e.name == "aten::copy_" and "aten::clone" not in names
                                                  and "aten::contiguous" not in names)):
            cat = "casts"
        if cat is None:
            cat = "other"
            other[e.name] = other.get(e.name, 0.0) + own
        totals[cat] += own
    return totals, other


def profile_steps(step, batches):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for x in batches:
            step(x)
        wall = time.perf_counter() - t0
    totals, other = categorize(prof.events())
    return totals, other, wall / len(batches)


# --- the run -------------------------------------------------------------------------

def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    variants = [p.strip() for p in args.precision.split(",") if p.strip()]
    if args.bernoulli:
        variants += [f"{v}/bernoulli" for v in variants]
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    cfg = bench.shape_of(args.model_config)
    B, T = args.batch_size, args.block_size
    M = B * T
    info = machine(device)

    model, loss_fn, opt, opts = make_model(args, device)
    n_params = sum(p.numel() for p in model.parameters())
    steps = {v: make_step(model, loss_fn, opt, device, v) for v in variants}
    flops_per_token = 6 * (n_params - cfg.n_positions * cfg.n_embd) + 12 * cfg.n_layer * cfg.n_embd * T
    gen = torch.Generator().manual_seed(args.seed + 1)

    def batch():
        return torch.randint(0, cfg.vocab_size, (B, T), generator=gen).to(device)

    rounds = {v: [] for v in variants}
    for v in variants:  # warm-up: AdamW's state, oneDNN's kernels
        steps[v](batch())
    for r in range(args.rounds):
        for v in variants:
            ceiling = measure_ceiling(cfg, M, dtypes[v.split("/")[0]], device, args.reps)
            times = time_steps(steps[v], [batch() for _ in range(args.steps)], device)
            ceil_fps = ceiling["flops"] / ceiling["seconds"]
            step_fps = flops_per_token * M / statistics.median(times)
            dtype = dtypes[v.split("/")[0]]
            cast_s = time_weight_casts(model, dtype, device, args.reps) if dtype != torch.float32 else 0.0
            rounds[v].append({"ceiling_gflops_per_s": ceil_fps / 1e9, "ceiling_matmul_s": ceiling["seconds"],
                              "step_times_s": times, "step_gflops_per_s": step_fps / 1e9,
                              "share": step_fps / ceil_fps, "per_shape": ceiling["per_shape"],
                              "weight_casts_s": cast_s, "load": os.getloadavg()[0]})
            print(f"round {r + 1} {v}: ceiling {ceil_fps / 1e9:.0f} GFLOP/s, step {step_fps / 1e9:.0f} "
                  f"GFLOP/s ({M / statistics.median(times):.0f} tokens/s), {100 * step_fps / ceil_fps:.1f} % "
                  f"(load {os.getloadavg()[0]:.2f})", flush=True)

    breakdown = {}
    if args.profile_steps > 0:
        for v in variants:
            totals, other, per_step = profile_steps(steps[v], [batch() for _ in range(args.profile_steps)])
            breakdown[v] = {"seconds_per_step": {k: v / args.profile_steps for k, v in totals.items()},
                                    "profiled_step_s": per_step,
                                    "other_top": dict(sorted(((k, v / args.profile_steps) for k, v in other.items()),
                                                             key=lambda kv: -kv[1])[:8])}

    text = report(args, info, cfg, M, flops_per_token, rounds, breakdown, opts)
    print(text)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"config": vars(args), "machine": info, "flops_per_token": flops_per_token,
                       "opts": opts,
                       "rounds": rounds, "breakdown": breakdown, "table": text}, f, indent=1)
    return 0


def report(args, info, cfg, M, flops_per_token, rounds, breakdown, opts):
    native = "AVX512-BF16" if info["avx512_bf16"] else ""
    native += (" + AMX" if native else "AMX") if info["amx_bf16"] else ""
    where = info.get("gpu") or (f"{info['cpu']}, {info['cores']} cores, {info['threads']} threads, "
                                f"native bf16: {native or 'no'}")
    lines = [f"GPT-2 {args.model_config}, block {args.block_size}, micro-batch {args.batch_size}, on {where}; "
             f"torch {info['torch']}; load at start {info.get('load_average', ('?',))[0]}",
             f"ours: {bench.opts_label(opts)}; {flops_per_token / 1e9:.3f} GFLOP "
             f"per token; {args.rounds} round(s) of (ceiling, {args.steps} step(s)) per precision", ""]
    head = f"{'':34}" + "".join(f" {p:>14}" for p in rounds)
    lines.append(head)

    def row(name, fn, spec):
        lines.append(f"{name:34}" + "".join(f" {format(fn(rs), spec):>14}" for rs in rounds.values()))

    med = statistics.median
    row("matmul ceiling (GFLOP/s, median)", lambda rs: med(r["ceiling_gflops_per_s"] for r in rs), ".0f")
    for name, *_ in matmul_shapes(cfg, M):
        row(f"  {name} (GFLOP/s)", lambda rs, n=name: med(r["per_shape"][n]["gflops_per_s"] for r in rs), ".0f")
    row("step (GFLOP/s, median)", lambda rs: med(r["step_gflops_per_s"] for r in rs), ".0f")
    row("step (tokens/s, median)", lambda rs: med(M / med(r["step_times_s"]) for r in rs), ".1f")
    row("share of the ceiling (%, median)", lambda rs: 100 * med(r["share"] for r in rs), ".1f")
    row("  rounds: min", lambda rs: 100 * min(r["share"] for r in rs), ".1f")
    row("  rounds: max", lambda rs: 100 * max(r["share"] for r in rs), ".1f")
    row("matmuls at the ceiling (s/step)", lambda rs: med(r["ceiling_matmul_s"] for r in rs), ".3f")
    row("step (s, median)", lambda rs: med(t for r in rs for t in r["step_times_s"]), ".3f")
    row("every weight matrix cast once (s)", lambda rs: med(r["weight_casts_s"] for r in rs), ".3f")
    row("load average (1 min, min-max)", lambda rs: f"{min(r['load'] for r in rs):.1f}-"
                                                     f"{max(r['load'] for r in rs):.1f}", "")
    if breakdown:
        lines += ["", f"where a profiled step's time goes (torch.profiler, {args.profile_steps} step(s); "
                      f"% of the operators' own time)"]
        lines.append(f"{'':34}" + "".join(f" {p:>14}" for p in breakdown))
        for cat in CATEGORIES:
            lines.append(f"{'  ' + cat:34}" + "".join(
                f" {100 * b['seconds_per_step'][cat] / sum(b['seconds_per_step'].values()):>13.1f}%"
                for b in breakdown.values()))
        lines.append(f"{'  all operators (s/step)':34}" + "".join(
            f" {sum(b['seconds_per_step'].values()):>14.3f}" for b in breakdown.values()))
        lines.append(f"{'  profiled step, wall (s)':34}" + "".join(
            f" {b['profiled_step_s']:>14.3f}" for b in breakdown.values()))
        for p, b in breakdown.items():
            lines.append(f"other, {p}: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in b["other_top"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

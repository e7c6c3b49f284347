"""Benchmark: a training step (and evaluation) of this project vs transformers' GPT2LMHeadModel.

    python benchmarks/bench.py --device cpu --block-size 256 --steps 3 --warmup 1 --ours-opts chunk=1024
    python benchmarks/bench.py --device cuda --precision fp16 --block-size 1024 --ours-batch-size 8 \
        --ours-opts chunk=1024,checkpointing

Not a test: it measures, it asserts nothing. Both sides train the same thing: the same
GPT-2 shape with random weights (no download), the same random token batches, the
same torch AdamW (fused, as the Trainer's default "adamw_torch_fused"; lr 5e-5, no weight decay), gradient clipping at 1.0,
the same autocast + GradScaler (gpt2/precision.py), dropout 0.1 everywhere, as
run_clm.py with the Trainer would. transformers runs with its defaults (its SDPA
attention); ours runs with the options of --ours-opts:

    chunk[=N]       the chunked LM-head loss, N positions at a time (default 1024)
    checkpointing   activation checkpointing per block
    compile         torch.compile

Each side runs in its own process, one after the other, so that its peak memory is
its own: on CUDA torch.cuda.max_memory_allocated, on the CPU the process's peak
resident set (getrusage ru_maxrss), read after the training steps (before the
evaluation). The CPU peak includes what the process holds before training (Python,
torch, transformers for the HF side, the weights); the table shows that part too.

Throughput: --warmup untimed steps (they allocate the optimizer state, compile, warm
the caches), then --steps timed ones; tokens/s = micro-batch x block size / the median
step time (evaluation: samples per batch / the median batch time). With --rounds R
both sides run R times, alternating, and each keeps its best round: on a shared
machine the best round is the one least disturbed by other processes.

Evaluation: samples/s of gpt2.evaluation.evaluate (ours) against what run_clm's
Trainer.evaluate does per batch (a forward with labels: the loss and the logits, then
argmax over the logits as its preprocess_logits_for_metrics does), summed on the
device and read once at the end.

MFU, on CUDA (model FLOPs utilisation: the FLOPs the model needs, over the peak the
GPU could do in that time). FLOPs per token, as in PaLM (appendix B) and nanoGPT:

    6 N + 12 L H Q T

6N: forward (2 per multiply-add) + backward (twice the forward) through the weight
matrices; N = every parameter except the position embeddings (nanoGPT's convention).
The token embedding counts once: as a lookup it costs nothing, but it is also the LM
head, a (C x V) matmul for every position. Biases and LayerNorms count too (noise).
12 L H Q T: attention's two T x T matmuls (scores and weighted sum), forward and
backward, L layers, H heads of width Q, T positions; causality is not discounted.
Activation checkpointing's recomputation is not counted: it is work the model does
not need (that would be the "hardware" FLOPs utilisation, HFU). The peak is
--peak-tflops (default 989: an H100 SXM's dense bf16/fp16 tensor-core peak; an H200
is the same chip; use 495 for TF32 fp32, 312 for an A100's bf16).
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PRESET_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2", "tiny")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 (default: auto)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                   help="auto: fp32 on the CPU, bf16 on GPUs that have it, else fp16")
    p.add_argument("--batch-size", type=int, default=2, help="micro-batch of both sides (default: 2)")
    p.add_argument("--ours-batch-size", default=None,
                   help="micro-batch of ours only: a number, or auto (the largest that fits, CUDA only)")
    p.add_argument("--auto-limit", type=int, default=64,
                   help="--ours-batch-size auto tries up to this many sequences (default: 64; MFU is flat beyond)")
    p.add_argument("--block-size", type=int, default=256, help="sequence length (default: 256)")
    p.add_argument("--steps", type=int, default=3, help="timed training steps (default: 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default: 1)")
    p.add_argument("--rounds", type=int, default=1, help="run each side this many times, keep its best")
    p.add_argument("--model-config", default="gpt2", choices=PRESET_NAMES,
                   help="GPT-2 shape, random weights (tiny: 2 layers of 64, to try the script)")
    p.add_argument("--dropout", type=float, default=0.1, help="every dropout probability (default: 0.1, GPT-2's)")
    p.add_argument("--ours-opts", default="", help="comma-separated: chunk[=N], checkpointing, compile")
    p.add_argument("--side", default="both", choices=("ours", "hf", "both"))
    p.add_argument("--eval-batches", type=int, default=2, help="evaluation batches timed, 0: no evaluation")
    p.add_argument("--eval-batch-size", type=int, default=8, help="(default: 8, as train.py)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's peak for MFU (default: 989)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", dest="json_out", help="also write the results to this JSON file")
    p.add_argument("--worker", choices=("ours", "hf"), help=argparse.SUPPRESS)  # one side, in a subprocess
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.opts = parse_opts(args.ours_opts)
    return args


def parse_opts(text):
    opts = {"chunk": 0, "checkpointing": False, "compile": False}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, value = item.partition("=")
        if name == "chunk":
            opts["chunk"] = int(value) if value else 1024
        elif name in ("checkpointing", "ckpt"):
            opts["checkpointing"] = True
        elif name == "compile":
            opts["compile"] = True
        else:
            raise SystemExit(f"--ours-opts: unknown option {item!r} (chunk[=N], checkpointing, compile)")
    return opts


def opts_label(opts):
    parts = ([f"chunk={opts['chunk']}"] if opts["chunk"] else []) + \
        [k for k in ("checkpointing", "compile") if opts[k]]
    return ", ".join(parts) or "plain"


# --- one side, in its own process -----------------------------------------------------

def shape_of(name):
    from gpt2.config import PRESETS, GPT2Config

    if name == "tiny":
        return GPT2Config(n_layer=2, n_head=2, n_embd=64)
    return PRESETS[name]


def build(side, args, device):
    """(model, loss_fn(x) -> loss, eval_sums_fn) for one side, weights random."""
    import torch

    cfg = shape_of(args.model_config).with_dropout(args.dropout)
    torch.manual_seed(args.seed)
    if side == "ours":
        from gpt2.model import GPT2

        model = GPT2(cfg, checkpointing=args.opts["checkpointing"], loss_chunk=args.opts["chunk"]).to(device)
        step_model = torch.compile(model) if args.opts["compile"] else model

        def loss_fn(x):
            return step_model(x, labels=x)[1]
    else:
        import transformers
        from transformers import GPT2Config as HFConfig, GPT2LMHeadModel

        transformers.logging.set_verbosity_error()  # no notes about unused config fields

        hf_cfg = HFConfig(vocab_size=cfg.vocab_size, n_positions=cfg.n_positions, n_embd=cfg.n_embd,
                          n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=cfg.resid_pdrop,
                          embd_pdrop=cfg.embd_pdrop, attn_pdrop=cfg.attn_pdrop)
        model = GPT2LMHeadModel(hf_cfg).to(device)

        def loss_fn(x):
            return model(input_ids=x, labels=x).loss
    return model, loss_fn


def current_rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def hf_eval(model, blocks, batch_size, device, precision):
    """What Trainer.evaluate does per batch for run_clm: loss + logits, argmax; one sync at the end."""
    import torch

    from gpt2.precision import autocast

    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    with torch.no_grad():
        for s in range(0, len(blocks), batch_size):
            x = torch.from_numpy(blocks[s:s + batch_size]).to(device)
            with autocast(device, precision):
                out = model(input_ids=x, labels=x)
            preds = out.logits.argmax(dim=-1)  # run_clm's preprocess_logits_for_metrics
            loss_sum += out.loss.double() * len(x)
            correct += (preds[:, :-1] == x[:, 1:]).sum()
    return float(loss_sum), int(correct)


def run_worker(side, args):
    import numpy as np
    import torch

    from gpt2.precision import autocast, make_scaler, pick_device, resolve_precision

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    precision, _ = resolve_precision(args.precision, device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # as train.py
        torch.backends.cudnn.allow_tf32 = True

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    model, loss_fn = build(side, args, device)
    cfg = shape_of(args.model_config)
    T = args.block_size
    result = {"side": side, "precision": precision, "device": str(device), "block_size": T,
              "params": sum(p.numel() for p in model.parameters())}
    if side == "ours":
        result["opts"] = opts_label(args.opts)
    else:
        import transformers

        result["attn_implementation"] = model.config._attn_implementation
        result["transformers"] = transformers.__version__

    B = args.batch_size
    if side == "ours" and args.ours_batch_size:
        if args.ours_batch_size == "auto":
            from gpt2.batch import find_micro_batch, make_probe

            if not cuda:
                raise SystemExit("--ours-batch-size auto needs a CUDA device")
            reserve = result["params"] * 4 * 2  # AdamW's two moments, allocated at the first step
            B = find_micro_batch(make_probe(model, T, device, precision, reserve), start=1, limit=args.auto_limit)
            result["auto_batch"] = True
        else:
            B = int(args.ours_batch_size)
    result["batch_size"] = B

    # Fused AdamW, CPU included: the Trainer's default since torch 2.8 ("adamw_torch_fused"),
    # and the one gpt2/trainer.py uses.
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.0, fused=device.type in ("cuda", "cpu"))
    scaler = make_scaler(device, precision)
    gen = torch.Generator().manual_seed(args.seed + 1)
    batches = [torch.randint(0, cfg.vocab_size, (B, T), generator=gen) for _ in range(args.warmup + args.steps)]

    def train_step(x):
        x = x.to(device, non_blocking=True)
        with autocast(device, precision):
            loss = loss_fn(x)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    model.train()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        result["rss_before_train_mb"] = current_rss_mb()
    times, losses = [], []
    try:
        for i, x in enumerate(batches):
            sync()
            t0 = time.perf_counter()
            losses.append(train_step(x))
            sync()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
    except torch.OutOfMemoryError:
        result["error"] = f"out of memory at micro-batch {B}"
        return result
    result["step_times_s"] = times
    # The median step: one step slowed down by another process does not move it.
    result["train_tokens_per_s"] = B * T / statistics.median(times)
    result["train_loss_last"] = float(losses[-1])
    result["peak_train_mb"] = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else peak_rss_mb()
    n_flop_params = result["params"] - cfg.n_positions * cfg.n_embd  # all but the position embeddings
    result["flops_per_token"] = 6 * n_flop_params + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * T
    if cuda:
        result["mfu"] = result["train_tokens_per_s"] * result["flops_per_token"] / (args.peak_tflops * 1e12)
        result["gpu"] = torch.cuda.get_device_name(device)

    if args.eval_batches > 0:
        del opt, batches  # evaluation does not need them
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        eb = args.eval_batch_size
        blocks = np.random.default_rng(args.seed + 2).integers(0, cfg.vocab_size, size=(eb * (args.eval_batches + 1), T))
        if side == "ours":
            from gpt2.evaluation import evaluate

            def run_eval(b):
                evaluate(model, b, eb, device, precision)
        else:
            def run_eval(b):
                hf_eval(model, b, eb, device, precision)
        try:
            run_eval(blocks[:eb])  # warm-up batch, untimed
            eval_times = []
            for s in range(eb, len(blocks), eb):  # one batch at a time, for the median
                sync()
                t0 = time.perf_counter()
                run_eval(blocks[s:s + eb])
                sync()
                eval_times.append(time.perf_counter() - t0)
            result["eval_samples_per_s"] = eb / statistics.median(eval_times)
            if cuda:
                result["peak_eval_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        except torch.OutOfMemoryError:
            result["eval_error"] = f"out of memory at eval batch {eb}"
    return result


# --- the parent: run the sides, print the table ---------------------------------------

def run_side(side, argv):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    try:
        cmd = [sys.executable, os.path.abspath(__file__), *argv, "--worker", side, "--result-file", path]
        proc = subprocess.run(cmd)
        if proc.returncode != 0:
            return {"side": side, "error": f"the {side} process failed (exit {proc.returncode})"}
        with open(path) as f:
            return json.load(f)
    finally:
        os.unlink(path)


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def table(args, results):
    ours, hf = results.get("ours", {}), results.get("hf", {})
    any_r = ours or hf
    cuda = any_r.get("device", "").startswith("cuda")
    mem = "peak GPU memory allocated (MB)" if cuda else "peak resident memory (MB)"
    rows = [
        ("micro-batch", ours.get("batch_size"), hf.get("batch_size"), "d", False),
        ("train tokens/s", ours.get("train_tokens_per_s"), hf.get("train_tokens_per_s"), ",.0f", True),
        ("step time, median (s)", statistics.median(ours["step_times_s"]) if ours.get("step_times_s") else None,
         statistics.median(hf["step_times_s"]) if hf.get("step_times_s") else None, ".3f", False),
        (mem, ours.get("peak_train_mb"), hf.get("peak_train_mb"), ",.0f", True),
    ]
    if not cuda:
        rows.append(("  of which before training (MB)", ours.get("rss_before_train_mb"),
                     hf.get("rss_before_train_mb"), ",.0f", False))
    rows.append(("eval samples/s", ours.get("eval_samples_per_s"), hf.get("eval_samples_per_s"), ",.2f", True))
    if cuda:
        rows.append(("peak eval memory (MB)", ours.get("peak_eval_mb"), hf.get("peak_eval_mb"), ",.0f", True))
        rows.append(("MFU (%)", 100 * ours["mfu"] if "mfu" in ours else None,
                     100 * hf["mfu"] if "mfu" in hf else None, ".1f", True))
    rows.append(("train loss (last step)", ours.get("train_loss_last"), hf.get("train_loss_last"), ".4f", False))

    where = any_r.get("gpu") or f"{platform.processor() or platform.machine()} cpu, {os.cpu_count()} cores"
    lines = [f"GPT-2 {args.model_config} ({fmt(any_r.get('params'), ',')} params, random weights), "
             f"block {args.block_size}, {any_r.get('precision')}, {any_r.get('device')} ({where}), "
             f"{args.steps} timed step(s) after {args.warmup} warm-up, best of {args.rounds} round(s)",
             f"ours: {ours.get('opts', opts_label(args.opts))}"
             + (f"; transformers {hf['transformers']} ({hf['attn_implementation']} attention)" if "transformers" in hf
                else "")]
    w = 34
    lines.append(f"{'':{w}} {'ours':>14} {'transformers':>14} {'ours / hf':>10}")
    for name, a, b, spec, show_ratio in rows:
        r = ratio(a, b) if show_ratio else None
        lines.append(f"{name:{w}} {fmt(a, spec):>14} {fmt(b, spec):>14} {fmt(r, '.2f') + 'x' if r else '':>10}")
    for side, r in (("ours", ours), ("hf", hf)):
        for key in ("error", "eval_error"):
            if key in r:
                lines.append(f"{side}: {r[key]}")
    if cuda:
        fpt = any_r.get("flops_per_token")
        lines.append(f"MFU = tokens/s x (6N + 12 L H Q T) / peak; {fmt(fpt, ',')} FLOPs per token "
                     f"(N = all parameters but the position embeddings), peak {args.peak_tflops:g} TFLOP/s")
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        result = run_worker(args.worker, args)
        with open(args.result_file, "w") as f:
            json.dump(result, f)
        return 0
    sides = ["ours", "hf"] if args.side == "both" else [args.side]
    best = {}
    for _ in range(args.rounds):
        for side in sides:
            r = run_side(side, argv)
            if side not in best or r.get("train_tokens_per_s", 0) > best[side].get("train_tokens_per_s", 0):
                best[side] = r
    text = table(args, best)
    print(text)
    if args.json_out:
        import torch

        summary = {
            "config": {k: v for k, v in vars(args).items() if k not in ("worker", "result_file", "json_out")},
            "torch": torch.__version__, "python": platform.python_version(),
            "ours": best.get("ours"), "hf": best.get("hf"),
            "ratios": {
                "train_tokens_per_s": ratio(best.get("ours", {}).get("train_tokens_per_s"),
                                            best.get("hf", {}).get("train_tokens_per_s")),
                "peak_train_mb": ratio(best.get("ours", {}).get("peak_train_mb"),
                                       best.get("hf", {}).get("peak_train_mb")),
                "eval_samples_per_s": ratio(best.get("ours", {}).get("eval_samples_per_s"),
                                            best.get("hf", {}).get("eval_samples_per_s")),
            },
            "table": text,
        }
        with open(args.json_out, "w") as f:
            json.dump(summary, f, indent=1)
    return 0 if all("error" not in r for r in best.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

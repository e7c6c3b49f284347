"""Mixed precision: which number format the matmuls use, and the gradient scaler.

A GPU multiplies 16-bit floats several times faster than 32-bit ones, and 16-bit
activations take half the memory. `torch.amp.autocast` runs the matmuls in 16 bits
and keeps the weights and the optimizer state in fp32. Which operations run in 16
bits, listed for a forward and backward on the CPU in bf16 by
`python benchmarks/lesson_numbers.py autocast`:

    16 bits   every nn.Linear's matmul (c_attn, c_proj, c_fc, the LM head), and what
              works on their 16-bit outputs: the tanh GELU, the dropout masks
    fp32      the embeddings, every LayerNorm (autocast casts its input up), the
              residual stream (a 16-bit branch added to the fp32 stream gives fp32),
              the log-softmax and the loss (loss.py casts the logits up), the
              gradients of the weights, AdamW
    attention autocast hands scaled_dot_product_attention 16-bit q, k, v. On the CPU
              its math path (training, with dropout) computes the scores, the softmax
              and the product with v in fp32 (measured). On CUDA the flash and
              memory-efficient kernels keep the softmax's running max and sum in fp32
              but multiply 16-bit probabilities by v (FlashAttention's design; not
              measured here: no GPU on this project's machine)

A float is a sign, an exponent (the range) and a mantissa (the precision); two
16-bit formats split the bits differently:

    format  sign exponent mantissa  largest   smallest normal  decimal digits
    fp32    1    8        23        3.4e38    1.2e-38          ~7.2
    bf16    1    8        7         3.4e38    1.2e-38          ~2.4
    fp16    1    5        10        65,504    6.1e-5           ~3.3

(Decimal digits: log10 of 2^(mantissa + 1), the leading 1 being implicit; the
numbers are torch.finfo's.) Below the smallest normal, fp16 still has subnormals,
with fewer bits, down to 2^-24 = 6e-8; below about half of that, a value rounds to 0.

* bf16 has fp32's exponent, so fp32's range: values never overflow or underflow where
  fp32 would not, and it needs nothing else. Ampere GPUs and newer.
* fp16 has more mantissa but a tiny range: small gradients round to zero, a large
  value overflows to inf. The `GradScaler` multiplies the loss by a factor S before
  backward, so gradients are S times larger and stay representable, then divides them
  by S before the optimizer step. S starts at 2^16 = 65,536. If any gradient overflowed
  to inf/NaN, the step is skipped and S is halved; after 2,000 steps in a row without
  an overflow, S is doubled (PyTorch's defaults, which `make_scaler` keeps: init_scale
  2**16, backoff_factor 0.5, growth_factor 2, growth_interval 2000). So S hovers near
  the largest factor that does not overflow. That is how run_clm's `--fp16` works.

On the CPU, bf16 pays only where the processor multiplies bf16 natively (the
AVX512-BF16 or AMX instructions of recent Xeons): there a training step runs about
twice as fast as in fp32. Elsewhere the bf16 numbers are converted back and forth
around fp32 arithmetic, which is slower than plain fp32. So `--precision auto` picks
bf16 on a CPU that has those instructions and fp32 on one that does not, and says
why in the run's header. That choice is for speed, so it applies to training only:
under auto, evaluations run in fp32 (eval_precision), and the metrics do not depend on
the instruction set. fp16 needs a GPU (and its GradScaler); asked for on a CPU,
it falls back to what auto picks.

TF32: on Ampere and newer GPUs, fp32 matmuls can run on the tensor cores with a
10-bit mantissa (TensorFloat-32), several times faster, with precision enough for
training. PyTorch leaves that off by default; `use_tf32` turns it on. It is a
global switch, so run.py calls it once, in plain sight.
"""

import contextlib
import os
import sys

import torch

from .errors import UserError

CHOICES = ("auto", "fp32", "fp16", "bf16")


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    try:
        device = torch.device(name)
    except RuntimeError:  # a typo: "gpu", "cuda0", ...
        raise UserError(f"--device {name}: not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: Apple's MPS is not available on this machine; use cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {name}: not supported here; use auto, cpu, cuda or cuda:N")
    return device


def cpu_has_native_bf16() -> bool:
    """Does this CPU multiply bf16 natively (AVX512-BF16 or AMX), as PyTorch's own kernels check?

    The environment variable GPT2_CPU_BF16 overrides the detection: 1 says yes, 0 says
    no (the tests use it to take both branches on any machine; see .ci/run).
    """
    forced = os.environ.get("GPT2_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(check is not None for check in checks):
        return any(check() for check in checks)
    try:  # an older torch: read the flags the kernel reports
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(requested: str, device: torch.device, task: str = "training") -> tuple[str, str]:
    """(the precision to use, why): what --precision means on this device (for `task`, in warnings)."""
    if device.type == "cuda":
        if requested != "auto":
            return requested, f"as asked (--{requested})"
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: this GPU has bf16"
        return "fp16", "auto: this GPU has no bf16, so fp16 with a GradScaler"
    if device.type != "cpu":
        if requested in ("fp16", "bf16"):
            print(f"warning: --{requested} is for CUDA GPUs and CPUs; {task} in fp32 on the {device.type}",
                  file=sys.stderr)
        return "fp32", f"the {device.type} device"
    native = cpu_has_native_bf16()
    auto = ("bf16", "auto: this CPU multiplies bf16 natively (AVX512-BF16/AMX)") if native else \
        ("fp32", "auto: this CPU has no native bf16 (AVX512-BF16/AMX), so fp32 is faster")
    if requested == "fp16":
        # Said as what it is: --fp16 was not honoured; what auto picks is used in its place.
        print(f"warning: --fp16 needs a CUDA GPU; {task} in {auto[0]} on the cpu", file=sys.stderr)
        return auto[0], f"--fp16 needs a CUDA GPU, so what auto picks: {auto[1].removeprefix('auto: ')}"
    if requested == "bf16":
        if not native:
            print("warning: --bf16 on a CPU without native bf16 (AVX512-BF16/AMX): it is emulated, "
                  "likely slower than fp32", file=sys.stderr)
        return "bf16", "as asked (--bf16)"
    if requested == "fp32":
        return "fp32", "as asked (--fp32)"
    return auto


def eval_precision(requested: str, precision: str) -> str:
    """The precision evaluations run in, given --precision and what training resolved it to.

    What auto picks is for speed and applies to training only: under auto, evaluations
    run in fp32, so that the metrics do not depend on the machine's instruction set. A
    precision the user named is used for evaluation too (as the HF Trainer does), where
    this device honours it (--fp16 on a CPU falls back to auto: fp32 then).
    """
    return precision if requested == precision else "fp32"


def eval_note(precision: str, evals: str) -> str:
    """What the run's header (and --plan) adds to the precision line when evaluations differ."""
    return f"; evaluations in {evals} (what auto picks is for training only)" if evals != precision else ""


def use_tf32(device: torch.device) -> None:
    """Let fp32 matmuls use TF32 tensor cores on CUDA (see the module docstring)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device, precision: str):
    """The context in which forward passes run: 16-bit matmuls, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.amp.autocast(device_type=device.type, dtype=dtype)


def make_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A GradScaler that is active for fp16 only (for fp32/bf16 its calls pass through)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def scaler_step(scaler: torch.amp.GradScaler, optimizer) -> bool:
    """The optimizer step through the scaler; False if fp16's gradients overflowed and it was skipped.

    `scaler.step` skips the step when the unscaled gradients hold an inf or a NaN, and
    `update` then halves the scale. The scaler says nothing else, so a shrunk scale is
    the sign that the step was skipped (for fp32/bf16 the scaler is off: never skipped).
    """
    if not scaler.is_enabled():
        optimizer.step()
        return True
    scale_before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() >= scale_before

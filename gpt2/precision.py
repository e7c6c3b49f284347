"""Mixed precision: which number format the matmuls use, and the gradient scaler.

A GPU multiplies 16-bit floats several times faster than 32-bit ones, and 16-bit
activations take half the memory. `torch.amp.autocast` runs the matmuls in 16 bits
while keeping the weights, the optimizer state and precision-sensitive operations
(LayerNorm, softmax, the loss) in fp32. Two 16-bit formats exist:

* bf16 has fp32's exponent range with fewer mantissa bits: values never overflow or
  underflow where fp32 would not, so it needs nothing else. Ampere GPUs and newer.
* fp16 has more mantissa but a tiny range: gradients below ~6e-8 round to zero. The
  `GradScaler` multiplies the loss by a large factor S before backward, so gradients
  are S times larger and stay representable, then divides them by S before the
  optimizer step. If any gradient overflowed to inf/NaN, the step is skipped and S is
  halved; after 2000 good steps S is doubled again. That is how run_clm's `--fp16` works.

On the CPU this project trains in fp32 (16-bit matmuls are not faster there).
"""

import contextlib
import sys

import torch

CHOICES = ("auto", "fp32", "fp16", "bf16")


def pick_device(name: str = "auto") -> torch.device:
    from .errors import UserError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:  # a typo: "gpu", "cuda0", ...
        raise UserError(f"--device {name}: not a device name; use auto, cpu, cuda or cuda:N") from None


def resolve_precision(requested: str, device: torch.device) -> str:
    """The precision to use: auto picks bf16 > fp16 on CUDA, fp32 on the CPU."""
    if device.type != "cuda":
        if requested in ("fp16", "bf16"):
            print(f"warning: --{requested} needs a CUDA GPU; training in fp32 on the {device.type}", file=sys.stderr)
        return "fp32"
    if requested == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return requested


def autocast(device: torch.device, precision: str):
    """The context in which forward passes run: 16-bit matmuls, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.amp.autocast(device_type=device.type, dtype=dtype)


def make_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A GradScaler that is active for fp16 only (for fp32/bf16 its calls pass through)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")

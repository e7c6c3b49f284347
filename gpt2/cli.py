"""Command-line options shared by train.py and evaluate.py, defined once.

Each option also accepts its `run_clm.py` spelling (`--learning_rate` for `--lr`, ...)
so that the commands of an existing lab notebook keep working with `train.py` in
place of `run_clm.py`. Values are checked here, at parse time, so a mistake ends in
one line that names the flag, before any model is loaded.
"""

import argparse
import sys

from .precision import CHOICES as PRECISIONS


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (argparse prints the whole usage first)."""

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def positive_int(text: str) -> int:
    v = _integer(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def non_negative_int(text: str) -> int:
    v = _integer(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {v}")
    return v


def _finite_number(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return v


def positive_float(text: str) -> float:
    v = _finite_number(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return v


def non_negative_float(text: str) -> float:
    v = _finite_number(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be zero or a positive number, got {text}")
    return v


def block_size(text: str) -> int:
    """Tokens per block: at least 2, since a block of T tokens makes T-1 predictions."""
    v = _integer(text)
    if v < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2 (a block of T tokens makes T-1 "
                                         f"next-token predictions), got {v}")
    return v


def positive_int_or_auto(text: str):
    """A positive integer, or "auto" (train.py's --batch-size: find the largest that fits)."""
    return "auto" if text.strip().lower() == "auto" else positive_int(text)


def probability(text: str) -> float:
    v = _finite_number(text)
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return v


def add_model_args(p, default_model="gpt2"):
    g = p.add_argument_group("model")
    g.add_argument("--model", "--model_name_or_path", dest="model", default=default_model,
                   help="a checkpoint directory, a preset (gpt2, gpt2-medium, gpt2-large, gpt2-xl, "
                        "distilgpt2) or a hub id org/name, downloaded into --weights-dir (default: %(default)s)")
    g.add_argument("--weights-dir", default=None, help="where downloaded models live (default: weights/)")
    g.add_argument("--model_type", help=argparse.SUPPRESS)  # run_clm: always gpt2 here


def add_data_args(p):
    """The data options both CLIs share; returns the group so train.py can add its own."""
    g = p.add_argument_group("data")
    g.add_argument("--validation-file", "--validation_file", dest="validation_file",
                   help="text file to evaluate on")
    g.add_argument("--block-size", "--block_size", dest="block_size", type=block_size,
                   help="tokens per training example (default: min(1024, n_positions))")
    g.add_argument("--cache-dir", default=None, help="where token ids are cached (default: .cache/tokens)")
    return g


def add_runtime_args(p, batch_size_default, batch_alias, allow_auto=False):
    """--device, --precision, --batch-size; allow_auto: --batch-size may be "auto" (train.py)."""
    g = p.add_argument_group("hardware")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default: auto)")
    g.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto = bf16 on GPUs that have it, else fp16 on CUDA, fp32 on the CPU")
    g.add_argument("--fp16", dest="precision", action="store_const", const="fp16", help="= --precision fp16")
    g.add_argument("--bf16", dest="precision", action="store_const", const="bf16", help="= --precision bf16")
    help_text = "sequences per forward pass, the micro-batch (default: %(default)s)"
    if allow_auto:
        help_text += ("; auto: the largest that fits in GPU memory, found by trying, with the accumulation "
                      "adjusted so that the effective batch stays --effective-batch (see gpt2/perf.py)")
    g.add_argument("--batch-size", batch_alias, dest="batch_size", default=batch_size_default,
                   type=positive_int_or_auto if allow_auto else positive_int, help=help_text)

"""Printing metrics the way run_clm.py (the Hugging Face Trainer) prints them.

Users compare runs by eye against their notebooks, so the blocks look exactly like
the Trainer's `log_metrics`: a `***** train metrics *****` header, keys sorted and
aligned, floats rounded to 4 decimals, runtimes as h:mm:ss.xx.
"""

import datetime


def format_runtime(seconds: float) -> str:
    """3:21.77 as the Trainer writes it: 201.77 s -> '0:03:21.77'."""
    # Round to whole hundredths first, so that 1.999 s becomes 2.00, not 1.00.
    whole, hundredths = divmod(round(seconds * 100), 100)
    return f"{datetime.timedelta(seconds=whole)}.{hundredths:02d}"


def format_value(key: str, value):
    if key.endswith("_runtime"):
        return format_runtime(value)
    if key.endswith("_mem_mb") or key.endswith("_memory_mb"):
        return round(value)
    if isinstance(value, float):
        return round(value, 4)
    return value


def metrics_block(split: str, metrics: dict) -> str:
    shown = {k: format_value(k, v) for k, v in metrics.items()}
    kw = max(len(k) for k in shown)
    vw = max(len(str(v)) for v in shown.values())
    lines = [f"***** {split} metrics *****"]
    lines += [f"  {k: <{kw}} = {str(shown[k]):>{vw}}" for k in sorted(shown)]
    return "\n".join(lines)


def log_line(entry: dict) -> str:
    """{'loss': 2.5111, 'learning_rate': 8.77e-05, 'epoch': 0.37}, as the Trainer logs."""
    return str({k: (round(v, 4) if k in ("loss", "eval_loss", "grad_norm") else v) for k, v in entry.items()})

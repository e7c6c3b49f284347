"""Comparing finished runs side by side, from the files train.py leaves behind.

A lab notebook compares runs by a handful of numbers: the learning rate and epochs
that were tried, and the train_loss, eval_loss, perplexity and eval_accuracy they
gave. train.py writes all of them in its output directory, so a table of runs needs
no model and no GPU, only these JSON files:

    run_args.json      what was asked: model, lr, epochs, effective_batch, precision, ...
    train_results.json train_loss, train_runtime, epoch, ...
    eval_results.json  eval_loss, eval_accuracy, perplexity, ...
    all_results.json   both of the above in one dict
    log_history.json   [{'loss', 'learning_rate', 'epoch', 'step'}, {'eval_loss', ...}, ...]
    status.json        "done", or why not: "running", "failed" with the reason, ... (outdir.py)

Any of them may be missing (a run stopped early, a run without validation): the
table then shows '-' rather than refusing. `plot_curves` draws the training loss of
each run against the epoch (and eval_loss where it was measured), which shows what the
final numbers hide: a learning rate that diverges, or a run still improving.
"""

import json
import os

from gpt2.errors import UserError
from gpt2.evaluation import METRICS
from gpt2.files import atomic_path, read_json
from .outdir import RESULT_FILES, run_status
from .report import format_lr, format_runtime

JSON_FILES = tuple(f for f in RESULT_FILES if f.endswith(".json"))

# (row key, column title) in the order the table shows them.
COLUMNS = [
    ("run", "run"),
    ("started_from", "started from"),
    ("lr", "lr"),
    ("epochs", "epochs"),
    ("effective_batch", "eff. batch"),
    ("precision", "precision"),
    ("validation", "validation text"),
    ("train_loss", "train_loss"),
    *[(name, name) for name in METRICS],  # the eval metrics, as gpt2/evaluation.py lists them
    ("train_runtime", "train time"),
    ("status", "status"),
]
NUMERIC = {"lr", "epochs", "effective_batch", "train_loss", *METRICS, "train_runtime"}


def is_run_dir(path) -> bool:
    """True for a directory that holds at least one of the files train.py writes."""
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in JSON_FILES)


def read_run(directory) -> dict:
    """Every JSON file of a run directory, by name ({} / [] for the missing ones)."""
    if not os.path.isdir(directory):
        raise UserError(f"{directory}: no such directory")
    if not is_run_dir(directory):
        raise UserError(f"{directory}: not a run directory of train.py (none of {', '.join(JSON_FILES)})")
    run = {}
    for name in JSON_FILES:
        default = [] if name == "log_history.json" else {}
        data = read_json(os.path.join(directory, name), default)
        if not isinstance(data, type(default)):
            raise UserError(f"{os.path.join(directory, name)}: expected a JSON {type(default).__name__}")
        run[name.removesuffix(".json")] = data
    return run


def _run_names(dirs) -> list[str]:
    """Each run's directory name; the path as given when two runs share a name."""
    names = [os.path.basename(os.path.normpath(d)) for d in dirs]
    return [n if names.count(n) == 1 else os.path.normpath(d) for n, d in zip(names, dirs)]


def _status(directory, run) -> str:
    status = run_status(directory)
    state = status.get("status")
    if state == "interrupted" and isinstance(status.get("step"), int):  # the step its resume.pt holds
        total = run["run_args"].get("total_steps")
        return f"interrupted at step {status['step']}" + (f" of {total}" if isinstance(total, int) else "")
    if state in ("failed", "stopped"):
        return f"{state}: {status.get('reason') or 'no reason given'}"
    if state and state not in ("done", "finished", "ok", "completed"):
        return str(state)
    if not (run["train_results"] or run["all_results"] or run["eval_results"]):
        return "no results"  # still training, or stopped before the end
    return f"done ({status['note']})" if status.get("note") else "done"


def validation_text(args, fresh_source=None) -> str | None:
    """The validation text of a row, short: a file's name, or 'last 5% of train.txt'."""
    if fresh_source:
        return os.path.basename(fresh_source)
    if args.get("validation_file"):
        return os.path.basename(args["validation_file"])
    percent = args.get("validation_split")
    if not args or not percent:
        return None
    train = os.path.basename(args["train_file"]) if args.get("train_file") else "the demo corpus"
    share = (args.get("data") or {}).get("validation_share")  # held out in whole blocks: 1 of 3 is 33.3%
    held = f"{round(100 * share, 1):g}%" if isinstance(share, float) and 0 < share < 1 else f"{percent:g}%"
    return f"last {held} of {train}"


def _eval_setting(args):
    """What a saved eval_loss depends on besides the model: the text (its bytes, and how they were
    read into ids) and the block size."""
    data = args.get("data") or {}
    text = data.get("validation_sha256") or (validation_text(args), data.get("train_sha256"))
    # The same bytes read into other ids (--keep-linebreaks, another tokenizer) are other blocks:
    # the blocks' own sha256 where the run recorded it, else what decides them.
    reading = data.get("validation_ids_sha256") or (args.get("keep_linebreaks", True), data.get("tokenizer"))
    return text, reading, args.get("block_size"), args.get("max_eval_samples")


def comparison_rows(dirs, fresh_eval=None, fresh_source=None) -> list[dict]:
    """One dict per run directory, with the keys of COLUMNS (None where unknown).

    `fresh_eval` maps a directory to eval metrics just measured (evaluate.py with
    --validation-file `fresh_source`); they replace the saved ones, so that all runs are
    compared on the same text. A directory in it need not be a run directory (a base model).
    Each row also says what its eval numbers were measured on ("eval_setting"): rows
    measured on different texts or block sizes are not comparable (`not_comparable`).
    """
    fresh_eval = fresh_eval or {}
    rows = []
    for d, name in zip(dirs, _run_names(dirs)):
        if d in fresh_eval and not is_run_dir(d):
            run = {k.removesuffix(".json"): ([] if k == "log_history.json" else {}) for k in JSON_FILES}
            status = "base model"
        else:
            run = read_run(d)
            status = _status(d, run)
        args = run["run_args"]
        # all_results.json merges the other two; a run may have only some of them.
        results = {**run["all_results"], **run["train_results"], **run["eval_results"]}
        if d in fresh_eval:
            results = {k: v for k, v in results.items() if not (k.startswith("eval_") or k in METRICS)}
            results.update(fresh_eval[d])
        rows.append({
            "run": name,
            "started_from": args.get("model"),
            "lr": args.get("lr"),
            # The epochs actually done (train_results), else those asked for.
            "epochs": results.get("epoch", args.get("epochs")),
            "effective_batch": args.get("effective_batch"),
            "precision": args.get("precision"),
            "validation": validation_text(args, fresh_source if d in fresh_eval else None),
            # Rows measured just now were all measured by one command, on one text.
            # (Each run's file is read as it read its own: --keep-linebreaks, from its run_args.json.)
            "eval_setting": ("measured now", fresh_source, args.get("keep_linebreaks", True)) if d in fresh_eval
            else _eval_setting(args),
            "train_loss": results.get("train_loss"),
            **{name: results.get(name) for name in METRICS},
            # A resumed run's train_runtime is its last session's; the whole run's, where recorded.
            "train_runtime": results.get("train_runtime_total", results.get("train_runtime")),
            "last_session_only": _resumed(args) and "train_runtime_total" not in results
                                 and results.get("train_runtime") is not None,
            "status": status,
        })
    return rows


def _resumed(args) -> bool:
    return bool(args.get("resume") or args.get("resume_from"))


def not_comparable(rows) -> str | None:
    """A sentence when the rows' eval numbers were measured on different texts or block sizes, else None."""
    measured = [r for r in rows if r.get("eval_loss") is not None]
    settings = {repr(r["eval_setting"]) for r in measured}
    if len(settings) < 2:
        return None
    texts = list(dict.fromkeys(str(r["validation"]) for r in measured))  # in the rows' order, once each
    return (f"not comparable: {', '.join(METRICS)} were measured on different validation "
            f"texts, tokenizations or block sizes ({', '.join(texts)}); python evaluate.py RUNS "
            f"--validation-file FILE measures them all on one")


def format_cell(key, value) -> str:
    if value is None:
        return "-"
    if key == "lr" and isinstance(value, (int, float)):
        return format_lr(float(value))  # the spelling of the sweep's run directories
    if key == "train_runtime" and isinstance(value, (int, float)):
        return format_runtime(value)
    if key == "epochs" and isinstance(value, (int, float)):
        return str(round(float(value), 2))
    if isinstance(value, float):
        return str(round(value, 4))  # as the Trainer prints metrics
    return str(value)


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _cells(row) -> list[str]:
    cells = [format_cell(key, row.get(key)) for key, _ in COLUMNS]
    if row.get("last_session_only"):  # ">=": earlier sessions are missing from the time
        cells[[key for key, _ in COLUMNS].index("train_runtime")] = ">=" + format_cell("train_runtime",
                                                                                      row["train_runtime"])
    return cells


def _notes(rows) -> list[str]:
    notes = [not_comparable(rows)] if not_comparable(rows) else []
    if any(r.get("last_session_only") for r in rows):
        notes.append(">= train time: a resumed run whose earlier sessions' time was not recorded (its last session's)")
    return notes


def format_table(rows, markdown: bool = False) -> str:
    """The rows as an aligned plain-text table, or a GitHub markdown table; notes below it."""
    titles = [title for _, title in COLUMNS]
    # A newline (or any control character) in a cell, e.g. in a run's name, would break the
    # row in two: shown as its escape, \n, as repr() writes it.
    cells = [[_printable(c) for c in _cells(row)] for row in rows]
    notes = _notes(rows)
    if markdown:
        # '|' inside a cell (a failure reason) would start a new column.
        cells = [[c.replace("|", "\\|") for c in line] for line in cells]
        align = ["---:" if key in NUMERIC else "---" for key, _ in COLUMNS]
        lines = [titles, align] + cells
        table = "\n".join("| " + " | ".join(line) + " |" for line in lines)
        return "\n\n".join([table] + [f"*{note}*" for note in notes])
    widths = [max(len(line[i]) for line in [titles] + cells) for i in range(len(titles))]

    def fmt(line):
        parts = [c.rjust(w) if key in NUMERIC else c.ljust(w) for c, w, (key, _) in zip(line, widths, COLUMNS)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(titles), rule] + [fmt(line) for line in cells] + [f"note: {note}" for note in notes])


def log_entries(directory) -> list:
    """The run's log: log_history.json, else (a run still going, or stopped) log.jsonl so far."""
    history = read_run(directory)["log_history"]
    if history or not os.path.isfile(os.path.join(directory, "log.jsonl")):
        return history
    with open(os.path.join(directory, "log.jsonl"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a last line cut by a kill: the curve up to it
    return entries


def no_curve_reason(directory, name) -> str:
    """Why a run has no loss curve, in words a user can act on."""
    args = read_run(directory)["run_args"]
    every, steps = args.get("log_every"), args.get("total_steps")
    if isinstance(every, int) and isinstance(steps, int) and every > steps:
        return (f"{name} logged the loss every {every} steps and ran {steps}; train with --log-every "
                f"{max(1, steps // 50)} (or leave the default, auto) to draw its curve")
    return f"{name} has no loss in its log"


def loss_curves(directory) -> tuple[list, list]:
    """([(epoch, loss)...] of training logs, [(epoch, eval_loss)...] of eval logs, and the
    final evaluation's: a run that evaluated only at its end has one eval_loss point)."""
    history = log_entries(directory)
    train, evals = [], []
    final = read_run(directory)["eval_results"]
    logged = {e.get("epoch") for e in history if isinstance(e, dict) and "eval_loss" in e}
    if isinstance(final.get("eval_loss"), (int, float)) and isinstance(final.get("epoch"), (int, float)) \
            and final["epoch"] not in logged:  # an evaluation at the last step is logged already
        history = history + [{"eval_loss": final["eval_loss"], "epoch": final["epoch"]}]
    for entry in history:
        if not isinstance(entry, dict):
            continue
        x = entry.get("epoch", entry.get("step"))
        if x is None:
            continue
        if "loss" in entry:
            train.append((x, entry["loss"]))
        if "eval_loss" in entry:
            evals.append((x, entry["eval_loss"]))
    return train, evals


def label(directory, name) -> str:
    """A curve's name: the run's, and for a run not finished, how far it got ("interrupted at step 3 of 8")."""
    word = run_status(directory).get("status")
    if word in (None, "done"):
        return name
    steps = [e["step"] for e in log_entries(directory) if isinstance(e, dict) and isinstance(e.get("step"), int)]
    logged = f"; logged to step {steps[-1]}" if steps else ""
    return f"{name} ({_status(directory, read_run(directory))}{logged})"


def plot_curves(dirs, path) -> None:
    """One PNG: the training loss of every run against the epoch, eval_loss dashed."""
    try:
        import matplotlib  # an optional extra, imported only to draw
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")  # draw into a file; no window, no display needed
    import matplotlib.pyplot as plt

    curves = [(label(d, name), *loss_curves(d)) for d, name in zip(dirs, _run_names(dirs))]
    if not any(train or evals for _, train, evals in curves):
        reasons = "; ".join(no_curve_reason(d, name) for d, name in zip(dirs, _run_names(dirs)))
        raise UserError(f"nothing to plot: {reasons}")
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for i, (name, train, evals) in enumerate(curves):
        color = f"C{i % 10}"  # the same colour for a run's two curves
        if train:  # a few points (a run stopped early) get markers: a single one has no line to show
            ax.plot(*zip(*train), color=color, marker="." if len(train) < 30 else None, label=f"{name} loss")
        if evals:
            ax.plot(*zip(*evals), color=color, linestyle="--", marker="o", label=f"{name} eval_loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy (nats)")
    drawn = any(evals for _, _, evals in curves)  # the title names only what is drawn
    ax.set_title("training loss (solid)" + (" and eval_loss (dashed)" if drawn else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        plt.close(fig)
        raise UserError(f"--plot {path}: no such directory {directory}")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)

"""Measure a fine-tuned model, compare runs, and read what a model writes.

    python evaluate.py ckpt/                           # eval metrics, as run_clm prints them
    python evaluate.py gpt2 --validation-file val.txt  # the base model, before fine-tuning
    python evaluate.py runs/lr-1e-3 runs/lr-5e-5       # a table of finished runs
    python evaluate.py runs/* --plot curves.png        # ... and their loss curves
    python evaluate.py ckpt/ --prompt "def main("      # a sample continuation

A run stopped before its end (Ctrl-C, a kill) or still training is measured, sampled
and plotted too: its weights are those of the last state it saved (harness/runmodel.py),
and every result says which step that is ("step 120 of 600, interrupted").

The numbers come from gpt2/evaluation.py, the same code train.py runs at the end of
training, so re-measuring a checkpoint on the same text gives what training printed.
`main` reads what was asked, then does it: one function per kind of request.
"""

import os
import sys
from types import SimpleNamespace

import torch

from gpt2.errors import UserError, run_cli
from gpt2.evaluation import evaluate
from gpt2.files import read_json, write_json
from gpt2.precision import autocast, eval_precision, pick_device, resolve_precision
from gpt2.tokenizer import Tokenizer
from harness import runmodel
from harness.cli import evaluate_parser
from harness.compare import comparison_rows, format_table, is_run_dir, plot_curves
from harness.evaldata import check_model_arg, run_args_of, validation_blocks
from harness.hub import resolve
from harness.report import metrics_block
from harness import streams
from harness.run import pick_block_size


# What frees memory here (run_cli's default advice is training's).
MEMORY_ADVICE = "a smaller --batch-size, --block-size, --num-samples or --max-new-tokens needs less"


def main(argv=None):
    args = evaluate_parser().parse_args(argv)
    check_arguments(args)  # everything cheap, before hours of evaluation
    asked = what_is_asked(args)
    measured = evaluate_models(args, asked) if asked.metrics or asked.sample else {}
    if asked.table:
        print_table(args, measured)
    elif asked.metrics and args.json:
        write_json(args.json, measured[args.models[0]])
    if args.plot:
        plot_curves(args.models, args.plot)
        print(f"loss curves written to {args.plot}", file=sys.stderr)
    return 0


def what_is_asked(args):
    """Which of metrics, a table of runs and samples the flags ask for (see --help)."""
    several = len(args.models) > 1
    # --plot alone draws the saved logs: no evaluation of the model (minutes on a CPU) to draw them.
    numbers = (args.prompt is None and not args.plot) or bool(args.validation_file) or bool(args.json)
    return SimpleNamespace(metrics=numbers and (not several or bool(args.validation_file)),
                           table=numbers and several, sample=args.prompt is not None)


def check_arguments(args):
    for path, flag in ((args.json, "--json"), (args.plot, "--plot")):
        if path:
            check_output_file(path, flag)
    if args.plot:
        try:
            import matplotlib  # noqa: F401  (only checking that the optional extra is there)
        except ImportError:
            raise UserError("--plot needs matplotlib: pip install matplotlib") from None
        for name in args.models:
            if not is_run_dir(name):
                raise UserError(f"--plot: {name} is not a run directory of train.py, so it has no loss curve")
    if args.validation_file and not os.path.isfile(args.validation_file):
        what = "not a regular file" if os.path.exists(args.validation_file) else "no such file"
        raise UserError(f"--validation-file {args.validation_file}: {what}")


def check_output_file(path, flag):
    """An output file, before the evaluation: it is written by a rename (files.py), so it must
    be a new name or a regular file, in a directory this user can write to. (/dev/stdout
    is a link: renaming over it would replace the link, as root in /dev itself.)"""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UserError(f"{flag} {path}: is a directory; give a file name")
    if not os.path.isdir(folder):
        raise UserError(f"{flag} {path}: the directory {folder} does not exist")
    if os.path.islink(path) or (os.path.lexists(path) and not os.path.isfile(path)):
        raise UserError(f"{flag} {path}: a link or a special file; give the name of a regular file "
                        f"(it is written whole, then renamed into place)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: cannot write in {folder}")


def block_size_of(args, found) -> int:
    """The block size a model is measured with: --block-size, else its run's, else its context."""
    return pick_block_size(args.block_size or run_args_of(found.directory).get("block_size"), found.n_positions)


def measure(args, found, model, tokenizer, device, precision):
    """The eval metrics of one model (`found`: runmodel.locate's answer)."""
    name, directory = found.name, found.directory
    run_args = run_args_of(directory)
    # A fine-tuned run's block in run_clm also shows the epochs it was trained for (read first:
    # a file that cannot be read is said before the evaluation, not after it). A stopped run
    # has no results yet: its weights are those of the step `found.at()` names.
    results = {}
    if found.state is None:
        for f in ("all_results.json", "train_results.json"):
            results.update(read_json(os.path.join(directory, f), {}, kind=dict))
    block_size = block_size_of(args, found)
    blocks, source = validation_blocks(args, name, directory, run_args, block_size, tokenizer)
    print(f"evaluating {name}{looking_at(found)} on {source}: {len(blocks):,} blocks of {block_size} tokens, "
          f"batch {args.batch_size}, {device.type} {precision}", file=sys.stderr)
    metrics = evaluate(model, blocks, args.batch_size, device, precision, progress=sys.stderr.isatty())
    if isinstance(results.get("epoch"), (int, float)):
        metrics = {"epoch": results["epoch"], **metrics}
    return metrics


def looking_at(found) -> str:
    """' (step 120 of 600, interrupted: the weights saved in ckpt/resume.pt)'; '' for a model not of a run."""
    at = found.at()
    if at is None:
        return ""
    return f" ({at}" + (f": the weights saved in {found.state})" if found.state else ")")


# --- sampling ------------------------------------------------------------------------

def sample(model, tokenizer, prompt, max_new_tokens, temperature, top_k, seed, device, precision,
           top_p=1.0, num_samples=1) -> list[str]:
    """The prompt and its sampled continuations, as texts. The same seed gives the same texts."""
    n_positions = model.config.n_positions
    if max_new_tokens >= n_positions:
        raise UserError(f"--max-new-tokens {max_new_tokens} must be below the model's context "
                        f"of {n_positions} positions")
    ids = tokenizer.encode(prompt)
    start = [] if ids else [tokenizer.eot_id]  # an empty prompt: "a new document begins"
    room = n_positions - max_new_tokens
    if len(ids) > room:  # said here in the CLI's words; generate() would only warn
        print(f"warning: the prompt is {len(ids):,} tokens; with --max-new-tokens {max_new_tokens} only its last "
              f"{room:,} fit in the model's context of {n_positions}: the samples continue that end",
              file=sys.stderr)
        ids = ids[-room:]
    x = torch.tensor([start + ids] * num_samples, dtype=torch.long, device=device)  # (num_samples, T)
    # A generator of our own, seeded: the samples depend on the seed only, not on
    # whatever else drew random numbers before.
    generator = torch.Generator(device=device).manual_seed(seed)
    with autocast(device, precision):
        out = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k or None, top_p=top_p,
                             generator=generator, vocab_size=tokenizer.vocab_size)  # (num_samples, T + max_new_tokens)
    return [tokenizer.decode(row[len(start):].tolist()) for row in out]


# --- the requests --------------------------------------------------------------------

def evaluate_models(args, asked) -> dict:
    """Load each MODEL in turn: print its eval metrics and/or a sample. {name: metrics}."""
    for name in args.models:
        check_model_arg(name)
    directories = {name: resolve(name, args.weights_dir) for name in args.models}  # downloads first
    # Which weights each name means (a finished model, or a stopped run's state), before any work.
    found = {name: runmodel.locate(name, directories[name]) for name in args.models}
    if asked.metrics:
        block_sizes = {block_size_of(args, f) for f in found.values()}
        if len(block_sizes) > 1:  # said now, not after hours of evaluating
            print(f"warning: the models will be measured on blocks of different sizes ({sorted(block_sizes)}, "
                  f"from their runs): their eval_loss is not comparable; pass --block-size", file=sys.stderr)
    device = pick_device(args.device)
    precision = eval_precision(args.precision, resolve_precision(args.precision, device, "evaluating")[0])  # auto: fp32
    measured = {}
    for name in args.models:
        model = runmodel.load(found[name]).to(device).eval()
        tokenizer = Tokenizer.for_checkpoint(found[name].tokenizer_dir(), model.config.vocab_size)
        at = found[name].at()  # which step of which run: "step 120 of 600, interrupted"
        if asked.metrics:
            measured[name] = measure(args, found[name], model, tokenizer, device, precision)
            if len(args.models) > 1 or found[name].state:  # a stopped run: its step, before its numbers
                print(f"== {name}" + (f" ({at})" if at else "") + " ==")
            print(metrics_block("eval", measured[name]))
        if asked.sample:
            texts = sample(model, tokenizer, args.prompt, args.max_new_tokens, args.temperature, args.top_k,
                           args.seed, device, precision, top_p=args.top_p, num_samples=args.num_samples)
            for i, text in enumerate(texts, 1):
                number = f" {i} of {len(texts)}" if len(texts) > 1 else ""
                print(f"----- sample{number} from {name}" + (f" at {at}" if at else "") + f" (seed {args.seed}, "
                      f"temperature {args.temperature}, top-k {args.top_k or 'off'}, top-p {args.top_p:g}) -----")
                print(text)
        del model  # free its memory before the next one
    return measured


def print_table(args, measured):
    """The table of runs: saved results, or the numbers just measured on --validation-file."""
    rows = comparison_rows(args.models, measured if args.validation_file else None, args.validation_file)
    print(format_table(rows, markdown=args.markdown))
    if args.json:
        write_json(args.json, rows)


if __name__ == "__main__":
    streams.guard()  # a character the terminal cannot spell is escaped, never a traceback
    sys.exit(run_cli(main, memory_advice=MEMORY_ADVICE))

"""Measure a fine-tuned model, compare runs, and read what a model writes.

    python evaluate.py ckpt/                           # eval metrics, as run_clm prints them
    python evaluate.py gpt2 --validation-file val.txt  # the base model, before fine-tuning
    python evaluate.py runs/lr-1e-3 runs/lr-5e-5       # a table of finished runs
    python evaluate.py runs/* --plot curves.png        # ... and their loss curves
    python evaluate.py ckpt/ --prompt "def main("      # a sample continuation

The numbers come from gpt2/evaluation.py, the same code train.py runs at the end of
training, so re-measuring a checkpoint on the same text gives what training printed.
`main` reads what was asked, then does it: one function per kind of request.
"""

import hashlib
import json
import os
import sys
from types import SimpleNamespace

import torch

from harness.cli import evaluate_parser
from harness.compare import comparison_rows, format_table, is_run_dir, plot_curves
from gpt2.data import make_blocks
from harness.datasets import build_datasets, default_cache_dir, load_token_ids
from gpt2.errors import UserError, run_cli
from gpt2.evaluation import evaluate
from gpt2.files import read_json, write_json
from harness.hub import ALIASES, is_hub_id, resolve
from harness.outdir import run_status
from gpt2.precision import autocast, eval_precision, pick_device, resolve_precision
from harness.report import metrics_block
from harness.run import pick_block_size
from gpt2.tokenizer import Tokenizer
from gpt2.weights import load_checkpoint, weight_files


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
    numbers = args.prompt is None or bool(args.validation_file) or bool(args.json)
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


# --- finding the model and its validation text ---------------------------------------

def check_model_arg(name: str) -> None:
    """Fail before any work on a MODEL that cannot be loaded (the cheap checks only)."""
    if name in ALIASES:
        return  # a model name, even where a folder of that name exists (./gpt2 is the package)
    if not os.path.isdir(os.path.expanduser(name)):
        if is_hub_id(name) and not os.path.exists(os.path.expanduser(name)):
            return  # a hub id: found in weights/ or downloaded when loaded
        resolve(name)  # a file, or neither a directory nor a name: raises resolve's one-line error
    else:
        status = run_status(os.path.expanduser(name))
        state = status.get("status")
        reason = f": {status['reason']}" if status.get("reason") else ""
        why = f" (status.json: {state}{reason})" if state else ""
        directory = os.path.expanduser(name)
        weights, _ = weight_files(directory)  # model.safetensors, or the shards of its index
        if not os.path.isfile(weights):
            raise UserError(f"{name}: no model.safetensors in this directory, so no model to load{why}")
        if state in ("running", "saving", "stopped", "failed"):
            # Its files may not belong together: new weights beside an old run's, or the reverse.
            raise UserError(f"{name}: its run is not finished{why}; its model.safetensors may not be the run's")


# The values of run_args.json this command reads, and the types they must have.
RUN_ARGS_TYPES = {"block_size": int, "keep_linebreaks": bool, "validation_split": (int, float),
                  "max_eval_samples": int, "train_file": str, "validation_file": str, "data": dict}


def run_args_of(directory) -> dict:
    """run_args.json of a run directory ({} if none), its values checked: a hand-edited one is one line."""
    path = os.path.join(directory, "run_args.json")
    args = read_json(path, {}, kind=dict)
    for key, kind in RUN_ARGS_TYPES.items():
        value = args.get(key)
        if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            raise UserError(f"{path}: {key} is {json.dumps(value)[:40]}, not a {getattr(kind, '__name__', 'number')}")
    return args


def validation_blocks(args, name, directory, run_args, block_size, tokenizer):
    """(blocks (N, block_size), where they come from): see `python evaluate.py --help`."""
    cache_dir = args.cache_dir or default_cache_dir()
    keep_linebreaks = run_args.get("keep_linebreaks", True)
    if args.validation_file:
        path = args.validation_file
    elif not run_args:
        raise UserError(f"{name}: no run_args.json records which text it was trained on; pass --validation-file")
    elif run_args.get("validation_file"):
        path = _recorded(directory, run_args["validation_file"], "validation file")
        _unchanged(path, (run_args.get("data") or {}).get("validation_sha256"), name)
    else:
        return held_out_blocks(name, directory, run_args, block_size, tokenizer, cache_dir)
    blocks = make_blocks(load_token_ids(path, tokenizer, cache_dir, keep_linebreaks=keep_linebreaks), block_size, path)
    if not args.validation_file and run_args.get("max_eval_samples"):
        blocks = blocks[:run_args["max_eval_samples"]]  # what training evaluated
    return blocks, path


def held_out_blocks(name, directory, run_args, block_size, tokenizer, cache_dir):
    """The last validation_split percent of the run's training blocks, as train.py held them out."""
    percent = run_args.get("validation_split") or 0
    if percent <= 0:
        raise UserError(f"{name}: its run held out no validation data (validation_split 0); pass --validation-file")
    train_file = run_args.get("train_file")
    if train_file:
        _recorded(directory, train_file, "training file")
    if run_args.get("block_size") and run_args["block_size"] != block_size:
        print(f"warning: blocks of {block_size} tokens, not the run's {run_args['block_size']}: the held-out "
              f"blocks are not exactly those of training, and may overlap the training text", file=sys.stderr)
    # The same function and arguments as train.py: the same split, the same blocks.
    _, val, info = build_datasets(train_file, None, percent, block_size, tokenizer, cache_dir,
                                  keep_linebreaks=run_args.get("keep_linebreaks", True))
    recorded = (run_args.get("data") or {}).get("train_sha256")
    if recorded and recorded != info["train_sha256"]:
        raise UserError(f"{info['train_source']} changed since {name} was trained on it: its last {percent}% "
                        f"are not the blocks held out then (and may be text it trained on); pass --validation-file")
    if run_args.get("max_eval_samples"):
        val = val[:run_args["max_eval_samples"]]
    return val, info["validation_source"]


def _unchanged(path, recorded_sha256, name):
    """The recorded validation file must still be the text the run was measured on."""
    if recorded_sha256:
        with open(path, "rb") as f:
            now = hashlib.sha256(f.read()).hexdigest()
        if now != recorded_sha256:
            raise UserError(f"{path} changed since {name} was evaluated on it; to measure the model on it as it "
                            f"is now, pass --validation-file {path}")


def _recorded(directory, path, what):
    """A file named in the run's run_args.json, which must still be there."""
    if not os.path.isfile(path):
        raise UserError(f"{os.path.join(directory, 'run_args.json')} names the {what} {path}, which is not found "
                        f"from here; pass --validation-file")
    return path


def measure(args, name, model, directory, tokenizer, device, precision):
    """(eval metrics, block size) of one model."""
    run_args = run_args_of(directory)
    # A fine-tuned run's block in run_clm also shows the epochs it was trained for (read first:
    # a file that cannot be read is said before the evaluation, not after it).
    results = {}
    for f in ("all_results.json", "train_results.json"):
        results.update(read_json(os.path.join(directory, f), {}, kind=dict))
    block_size = pick_block_size(args.block_size or run_args.get("block_size"), model.config.n_positions)
    blocks, source = validation_blocks(args, name, directory, run_args, block_size, tokenizer)
    print(f"evaluating {name} on {source}: {len(blocks):,} blocks of {block_size} tokens, "
          f"batch {args.batch_size}, {device.type} {precision}", file=sys.stderr)
    metrics = evaluate(model, blocks, args.batch_size, device, precision, progress=sys.stderr.isatty())
    if isinstance(results.get("epoch"), (int, float)):
        metrics = {"epoch": results["epoch"], **metrics}
    return metrics, block_size


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
                             generator=generator)  # (num_samples, T + max_new_tokens)
    return [tokenizer.decode(row[len(start):].tolist()) for row in out]


# --- the requests --------------------------------------------------------------------

def evaluate_models(args, asked) -> dict:
    """Load each MODEL in turn: print its eval metrics and/or a sample. {name: metrics}."""
    for name in args.models:
        check_model_arg(name)
    directories = {name: resolve(name, args.weights_dir) for name in args.models}  # downloads first
    device = pick_device(args.device)
    precision = eval_precision(args.precision, resolve_precision(args.precision, device)[0])  # auto: fp32
    measured, block_sizes = {}, set()
    for name in args.models:
        model = load_checkpoint(directories[name]).to(device).eval()
        tokenizer = Tokenizer.for_checkpoint(directories[name], model.config.vocab_size)
        if asked.metrics:
            measured[name], block_size = measure(args, name, model, directories[name], tokenizer, device, precision)
            block_sizes.add(block_size)
            if len(args.models) > 1:
                print(f"== {name} ==")
            print(metrics_block("eval", measured[name]))
        if asked.sample:
            texts = sample(model, tokenizer, args.prompt, args.max_new_tokens, args.temperature, args.top_k,
                           args.seed, device, precision, top_p=args.top_p, num_samples=args.num_samples)
            for i, text in enumerate(texts, 1):
                number = f" {i} of {len(texts)}" if len(texts) > 1 else ""
                print(f"----- sample{number} from {name} (seed {args.seed}, temperature {args.temperature}, "
                      f"top-k {args.top_k or 'off'}, top-p {args.top_p:g}) -----")
                print(text)
        del model  # free its memory before the next one
    if len(block_sizes) > 1:
        print(f"warning: the models were measured on blocks of different sizes ({sorted(block_sizes)}, "
              f"from their runs): their eval_loss is not comparable; pass --block-size", file=sys.stderr)
    return measured


def print_table(args, measured):
    """The table of runs: saved results, or the numbers just measured on --validation-file."""
    rows = comparison_rows(args.models, measured if args.validation_file else None, args.validation_file)
    print(format_table(rows, markdown=args.markdown))
    if args.json:
        write_json(args.json, rows)


if __name__ == "__main__":
    sys.exit(run_cli(main))

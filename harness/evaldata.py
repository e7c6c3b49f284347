"""Which model evaluate.py measures, and on which text: a run's recorded validation data.

A run directory of train.py records in run_args.json how its data was made (the files,
the block size, the held-out percent, keep_linebreaks) and the sha256 of each text.
Re-measuring it on the same blocks gives what training printed; a text edited since,
or moved away, is said in one line rather than measured silently on something else.
"""

import hashlib
import json
import os
import sys

from gpt2.data import make_blocks
from gpt2.errors import UserError
from gpt2.files import read_json

from .datasets import build_datasets, default_cache_dir, load_token_ids
from .hub import ALIASES, is_hub_id, resolve
from .runmodel import locate


def check_model_arg(name: str) -> None:
    """Fail before any work on a MODEL that cannot be loaded (the cheap checks only)."""
    if name in ALIASES:
        return  # a model name, even where a folder of that name exists (./gpt2 is the package)
    if not os.path.isdir(os.path.expanduser(name)):
        if is_hub_id(name) and not os.path.exists(os.path.expanduser(name)):
            return  # a hub id: found in weights/ or downloaded when loaded
        resolve(name)  # a file, or neither a directory nor a name: raises resolve's one-line error
    else:
        locate(name, os.path.expanduser(name))  # a stopped run's state, or a model.safetensors (runmodel.py)


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

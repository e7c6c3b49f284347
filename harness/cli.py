"""Command-line options of train.py and evaluate.py, defined once.

Each option also accepts its `run_clm.py` spelling (`--learning_rate` for `--lr`, ...)
so that the commands of an existing lab notebook keep working with `train.py` in
place of `run_clm.py`. run_clm's yes/no options take a value too, as Hugging Face's
argument parser allows (`--fp16`, `--fp16 True`, `--keep_linebreaks False`). The
run_clm options that mean nothing here (`--dataset_name`, `--push_to_hub`, ...) are
refused with one line that says what to do instead.

Values are checked here, at parse time, so a mistake ends in one line that names the
flag, before any model is loaded.
"""

import argparse
import os
import sys

from gpt2 import schedules, settings
from gpt2.distributed import is_first_rank_or_alone
from gpt2.errors import UserError
from . import hub, outdir, sharded, scratch
from .report import summary_writer_class
from .textfiles import check_file
from gpt2.precision import CHOICES as PRECISIONS


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (argparse prints the whole usage first)."""

    def error(self, message):
        if is_first_rank_or_alone():  # under torchrun: once per run, not once per process
            print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)

    def parse_known_args(self, args=None, namespace=None):
        """`--lr -1e-4`: argparse takes "-1e-4" for an option (only -1 and -.5 look like numbers to
        it) and says "expected one argument"; passed as --lr=-1e-4, the flag's own check says why."""
        args = list(sys.argv[1:] if args is None else args)
        for i in range(len(args) - 1, 0, -1):
            flag, value = args[i - 1], args[i]
            if flag.startswith("--") and "=" not in flag and value.startswith("-") and _is_number(value):
                args[i - 1:i + 1] = [f"{flag}={value}"]
        return super().parse_known_args(args, namespace)


def _is_number(text: str) -> bool:
    try:
        float(text.split(",")[0])  # --lr -1e-4,1e-3 too
        return True
    except ValueError:
        return False


def argtype(check):
    """A check of gpt2/settings.py (ValueError with a message) as an argparse type (its one-line error)."""
    def parse(text):
        try:
            return check(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = check.__name__
    return parse


positive_int = argtype(settings.positive_int)
non_negative_int = argtype(settings.non_negative_int)
positive_float = argtype(settings.positive_float)
non_negative_float = argtype(settings.non_negative_float)
probability = argtype(settings.probability)
positive_int_or_auto = argtype(settings.positive_int_or_auto)
seed = argtype(settings.seed)


@argtype
def block_size(text: str) -> int:
    """Tokens per block: at least 2, since a block of T tokens makes T-1 predictions."""
    v = settings.integer(text)
    if v < 2:
        raise ValueError(f"must be at least 2 (a block of T tokens makes T-1 next-token predictions), got {v}")
    return v


def utf8_text(text: str) -> str:
    """Text from the command line that is valid UTF-8 (Python keeps undecodable bytes as surrogates)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError as e:
        error = e
    try:  # under an ASCII locale (LC_ALL=C, PYTHONUTF8=0) valid UTF-8 arrives as surrogates too
        return os.fsencode(text).decode("utf-8")
    except (UnicodeError, ValueError):
        bad = text[error.start].encode("utf-8", "surrogateescape")
        raise argparse.ArgumentTypeError(f"not UTF-8 text: byte 0x{bad[0]:02x} at character {error.start + 1}") \
            from None


def memory_size(text: str) -> int:
    """8GB, 8G, 7.5GiB, 8000MB, 512M -> bytes (GB = 10^9 bytes, GiB = 2^30)."""
    units = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6, "mib": 2**20,
             "g": 1e9, "gb": 1e9, "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40}
    number = text.strip().lower().rstrip("bikmgt")
    unit = text.strip().lower()[len(number):]
    try:
        v = float(number) * units[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a memory size such as 8GB, 512MB or 7.5GiB") from None
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive size, got {text}")
    return int(v)


def boolean(text: str) -> bool:
    """run_clm's yes/no values: true/false, yes/no, 1/0 (any case)."""
    value = text.strip().lower()
    if value in ("true", "yes", "y", "1"):
        return True
    if value in ("false", "no", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


class Switch(argparse.Action):
    """A yes/no flag that also takes a value: `--x`, `--x true`, `--x False`.

    on: what `dest` gets when the switch is on (True by default; `--fp16` sets the
    precision to "fp16" instead). `invert`: the yes/no is stored negated
    (--disable_tqdm sets progress=False).
    """

    _BARE = object()  # what argparse passes when the flag comes without a value

    def __init__(self, option_strings, dest, const=True, invert=False, default=None, **kw):
        super().__init__(option_strings, dest, nargs="?", const=self._BARE, default=default, metavar="BOOL", **kw)
        self.on, self.invert = const, invert

    def __call__(self, parser, namespace, value, option_string=None):
        try:
            on = True if value is self._BARE else boolean(value)
        except argparse.ArgumentTypeError as e:
            parser.error(f"argument {option_string}: {e}")
        if self.on is True:
            setattr(namespace, self.dest, on != self.invert)
        elif on:
            # Two switches of one setting (--fp16 --bf16): run_clm refuses them, so do we.
            chosen = parser.__dict__.setdefault("_switched", {})
            other = chosen.setdefault(self.dest, (option_string, self.on))
            if other[1] != self.on:
                parser.error(f"argument {option_string}: not with {other[0]}; pick one")
            setattr(namespace, self.dest, self.on)


class Refuse(argparse.Action):
    """A run_clm option train.py does not take (no meaning here, or a setting fixed here): one line, what to do instead."""

    def __init__(self, option_strings, dest, hint="", **kw):
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kw)
        self.hint = hint

    def __call__(self, parser, namespace, value, option_string=None):
        parser.error(f"{option_string} is not a train.py option: {self.hint}")


def unit_interval(text: str) -> float:
    """A fraction in (0, 1]: --top-p (1 keeps every token)."""
    try:
        v = settings.finite_number(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, got {text}")
    return v


def add_model_args(p, default_model="gpt2"):
    g = p.add_argument_group("model")
    g.add_argument("--model", "--model_name_or_path", dest="model", default=default_model,
                   help="a checkpoint directory, a preset (gpt2, gpt2-medium, gpt2-large, gpt2-xl, "
                        "distilgpt2) or a hub id org/name, downloaded into --weights-dir (default: %(default)s)")
    g.add_argument("--weights-dir", default=None, help="where downloaded models live (default: weights/)")
    g.add_argument("--model_type", help=argparse.SUPPRESS)  # run_clm: always gpt2 here
    return g


def add_data_args(p, block_help="tokens per training example (default: min(1024, n_positions))"):
    """The data options both CLIs share; returns the group so train.py can add its own."""
    g = p.add_argument_group("data")
    g.add_argument("--validation-file", "--validation_file", dest="validation_file",
                   help="text file to evaluate on")
    g.add_argument("--block-size", "--block_size", dest="block_size", type=block_size, help=block_help)
    g.add_argument("--cache-dir", default=None, help="where token ids are cached (default: .cache/tokens)")
    return g


def add_runtime_args(p):
    """--device, --precision (both scripts); returns the group."""
    g = p.add_argument_group("hardware")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default: auto)")
    g.add_argument("--use-cpu", "--use_cpu", dest="device", action=Switch, const="cpu", help="= --device cpu")
    g.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto = bf16 on GPUs and CPUs that have it (AVX512-BF16/AMX), else fp16 on CUDA, "
                        "fp32 on the CPU")
    g.add_argument("--fp16", dest="precision", action=Switch, const="fp16", help="= --precision fp16")
    g.add_argument("--bf16", dest="precision", action=Switch, const="bf16", help="= --precision bf16")
    return g


def add_settings(groups: dict):
    """train.py's flags for the settings of gpt2/settings.py, from their declarations.

    groups: {group name: argparse group}; each declared setting goes into its own.
    The flag's value lands in args.<the setting's name>.
    """
    for f in settings.declared():
        meta = f.metadata
        if not meta["flags"]:
            continue  # decided by harness/run.py
        g = groups[meta["group"]]
        if meta["switch"]:
            g.add_argument(*meta["flags"], dest=f.name, action=Switch, invert=meta["invert"],
                           default=meta["flag_default"], help=meta["help"] or None)
        else:
            g.add_argument(*meta["flags"], dest=f.name, type=argtype(meta["check"]) if meta["check"] else None,
                           default=meta["flag_default"], choices=meta["choices"], metavar=meta["metavar"],
                           help=meta["help"] or None)


# --- train.py -------------------------------------------------------------------------

# run_clm options train.py does not take, and what to do instead. Most have no meaning
# here; --optim sets what is fixed here (torch's fused AdamW: gpt2/trainer.py).
REFUSED = {
    ("--dataset_name", "--dataset_config_name"): "download the text and pass --train-file (.txt, .json, .jsonl, .csv)",
    ("--streaming",): "the text is tokenized once and cached; pass --train-file",
    ("--preprocessing_num_workers",): "tokenization already uses every core (the tokenizers library)",
    ("--tokenizer_name",): "the tokenizer is the model directory's vocab.json/merges.txt (else GPT-2's)",
    ("--config_name",): "the shape comes from the model directory's config.json",
    ("--config_overrides",): "edit config.json in a copy of the model directory (for dropout: --dropout)",
    ("--cache_dir",): "downloads go to --weights-dir; --cache-dir (with a dash) is the token cache",
    ("--trust_remote_code",): "no remote code ever runs: the model is gpt2/model.py",
    ("--token", "--use_auth_token"): "download a private model yourself and pass --model DIR",
    ("--dtype", "--torch_dtype"): "the weights train in fp32 under autocast: use --precision",
    ("--optim",): "the optimizer is torch's fused AdamW (gpt2/trainer.py)",
    ("--push_to_hub", "--hub_model_id", "--hub_token"): "--out is in the Hugging Face layout: upload it with "
                                                         "`hf upload NAME OUT/` (pip install huggingface_hub)",
    ("--do_predict",): "there is no test split: python evaluate.py OUT/ --validation-file test.txt",
    ("--log_level",): "warnings and errors always go to stderr, metrics to stdout",
}


def train_parser():
    """train.py's flags; run_clm.py's spellings are aliases. The training settings' flags come
    from their declarations in gpt2/settings.py (add_settings); the rest are written here."""
    p = Parser(prog="train.py", description="Fine-tune GPT-2 on a text file (a readable run_clm.py).")
    add_model_args(p)
    _add_train_data_args(add_data_args(p))
    add_runtime_args(p)
    groups = {name: p.add_argument_group(name) for name in ("optimisation", settings.OUTPUT, settings.EVALUATION)}
    lora = p.add_argument_group("LoRA: train small adapters, freeze the model (see gpt2/lora.py)")
    lr_finder = p.add_argument_group("finding the learning rate (the range test, see harness/lr_finder.py)")
    groups[settings.SPEED] = p.add_argument_group(settings.SPEED)
    add_settings(groups)
    _add_optimisation_args(groups["optimisation"])
    _add_lora_args(lora)
    scratch.add_args(p)  # --from-scratch and the new model's shape (harness/scratch.py)
    _add_output_args(groups[settings.OUTPUT])
    _add_evaluation_args(groups[settings.EVALUATION])
    _add_lr_finder_args(lr_finder)
    _add_memory_args(groups[settings.SPEED])
    add_sharding_args(p)
    for options, hint in REFUSED.items():
        p.add_argument(*options, action=Refuse, hint=hint)
    return p


def _add_train_data_args(g):
    g.add_argument("--train-file", "--train_file", dest="train_file",
                   help="the text to train on: .txt (one example per line), .json/.jsonl (records, the "
                        "'text' field or else the first), .csv (the 'text' column or else the first) "
                        "(default: the Python language reference, a demo corpus)")
    g.add_argument("--validation-split", "--validation_split_percentage", dest="validation_split",
                   type=float, default=5.0,
                   help="without --validation-file, hold out this percent of the blocks (default: %(default)s)")
    g.add_argument("--keep-linebreaks", "--keep_linebreaks", dest="keep_linebreaks", action=Switch, default=True,
                   help=".txt lines keep their newline (default: true, as run_clm)")
    g.add_argument("--max-train-samples", "--max_train_samples", dest="max_train_samples", type=positive_int,
                   help="train on the first N blocks only")
    g.add_argument("--max-eval-samples", "--max_eval_samples", dest="max_eval_samples", type=positive_int,
                   help="evaluate on the first N validation blocks only")
    g.add_argument("--overwrite_cache", action=Switch, default=False, help=argparse.SUPPRESS)  # the cache follows the file


def _add_optimisation_args(g):
    g.add_argument("--effective-batch", type=positive_int,
                   help="sequences per optimizer step, all processes together; sets the accumulation "
                        "(= N / (micro-batch x processes)). With --batch-size auto it defaults to what the "
                        "command would train with a micro-batch of 2: 2 x --grad-accum x processes")
    g.add_argument("--dropout", type=probability, help="override the checkpoint's dropout probabilities")


def _add_lora_args(g):
    g.add_argument("--lora", type=non_negative_int, default=0, metavar="R",
                   help="train rank-R adapters on the projections instead of the whole model (0: off)")
    g.add_argument("--lora-alpha", type=positive_float,
                   help="the adapters' scale is alpha / R (default: alpha = R, a scale of 1)")
    g.add_argument("--lora-dropout", type=probability, default=0.0, help="dropout on the adapters' input")
    g.add_argument("--lora-targets", default="c_attn,c_proj,c_fc",
                   help="which projections get adapters (default: %(default)s)")


def _add_output_args(g):
    g.add_argument("--out", "--output_dir", dest="out", default="ckpt", help="output directory (default: %(default)s/)")
    g.add_argument("--overwrite", "--overwrite_output_dir", dest="overwrite", action=Switch, default=False,
                   help="allow writing into a non-empty --out: the old run's results are removed first")
    g.add_argument("--resume", action="store_true",
                   help="continue the run saved in --out (its resume.pt: the newest state)")
    g.add_argument("--resume-from-checkpoint", "--resume_from_checkpoint", dest="resume_from", metavar="PATH",
                   help="continue from this resumable state (a resume.pt file, or a directory holding one, "
                        "such as OUT/checkpoint-50); into --out")
    g.add_argument("--report-to", "--report_to", dest="report_to", nargs="+", default=["none"], metavar="TO",
                   help="none, tensorboard (event files in OUT/runs/; needs `pip install tensorboard`) or all")


def _add_evaluation_args(g):
    g.add_argument("--do-train", "--do_train", dest="do_train", action=Switch, default=False,
                   help="without --do-eval: train only, no evaluation")
    g.add_argument("--do-eval", "--do_eval", dest="do_eval", action=Switch, default=False,
                   help="without --do-train: evaluate only (eval_results.json in --out), no training")


def _add_lr_finder_args(g):
    g.add_argument("--find-lr", action="store_true",
                   help="instead of training: take up to --find-lr-steps steps with the learning rate rising "
                        "from --lr-min to --lr-max, print the suggested rate, write OUT/lr_find.csv (and .png); "
                        "no checkpoint is written, the model's files are not changed")
    g.add_argument("--find-lr-steps", type=positive_int, default=100,
                   help="optimizer steps of the range test, at most one epoch of data (default: %(default)s)")
    g.add_argument("--lr-min", type=positive_float, default=1e-7, help="first rate tried (default: %(default)s)")
    g.add_argument("--lr-max", type=positive_float, default=1.0, help="last rate tried (default: %(default)s)")


def _add_memory_args(g):
    g.add_argument("--checkpointing", "--gradient-checkpointing", "--gradient_checkpointing", dest="checkpointing",
                   action=Switch, default=False, help="recompute activations in backward (less memory)")
    g.add_argument("--attention-recompute", dest="attention_recompute", action=Switch, default=None,
                   help="recompute attention's T x T part in backward instead of keeping it (default: on the "
                        "CPU at blocks of 512 and more, or with --lora; that is where PyTorch keeps three T x T "
                        "tensors per block, with attention dropout)")
    g.add_argument("--loss-chunk", type=non_negative_int, default=None,
                   help="compute the LM head + loss this many positions at a time: the (batch x block x "
                        "50257) logits never exist at once (0: off; default: 1024 on the CPU, off on GPUs)")
    g.add_argument("--plan", action="store_true",
                   help="instead of training: predict the peak memory, part by part, and the largest "
                        "micro-batch that fits, from config.json alone (see harness/plan.py)")
    g.add_argument("--memory", type=memory_size, help="with --plan: the memory to fit, e.g. 8GB (default: the device's)")
    g.add_argument("--json", metavar="PATH", help="with --plan: also write the numbers to this JSON file")


def check_train_flags(args):
    """Combinations of train.py's flags that cannot work, refused before anything is loaded."""
    hub.check_endpoint()
    for path in (args.train_file, args.validation_file):
        if path is not None:
            check_file(path)  # a wrong path is said before GPT-2 is downloaded, not after
    scratch.check(args)
    sharded.check_flags(args, len(args.lr))  # --fsdp / --offload: what they need, what they cannot do
    sharded.check_state_kind(args)
    for lr in args.lr:
        if lr * args.weight_decay >= 1:
            raise UserError(f"--weight-decay {args.weight_decay:g} with --lr {lr:g}: each step would multiply the "
                            f"weights by 1 - lr x weight_decay <= 0; use a weight decay below {1 / lr:g}")
        schedules.check(args.lr_scheduler, args.lr_scheduler_kwargs, lr)  # polynomial's lr_end < lr, ...
    evaluating = args.eval_strategy in ("steps", "epoch") or (args.eval_strategy is None and args.eval_every)
    if (args.save_best or args.patience) and not evaluating:
        raise UserError("--save-best and --patience act on evaluations during training: add --eval-every N")
    model_dir = os.path.expanduser(args.model)
    continuing = (args.resume or args.resume_from) and outdir.continues(os.path.join(model_dir, "resume.pt"), args.out)
    if os.path.isdir(model_dir) and args.model not in hub.ALIASES and not continuing:
        outdir.check_finished(model_dir)  # (--model OUT --out OUT --resume: the base of the run being resumed)
    if args.resume and args.resume_from:
        raise UserError("--resume continues --out; --resume-from-checkpoint continues a given state: pick one")
    if args.resume_from and not os.path.isfile(outdir.state_file(args.resume_from)):
        raise UserError(f"--resume-from-checkpoint {args.resume_from}: no resumable state there")
    bad = [to for to in args.report_to if to not in ("none", "tensorboard", "all")]
    if bad:
        raise UserError(f"--report-to {' '.join(bad)}: only tensorboard is built in (or none)")
    if wants_tensorboard(args):
        summary_writer_class()  # a one-line error now if the package is missing, not after training


def wants_tensorboard(args) -> bool:
    return any(to in ("tensorboard", "all") for to in args.report_to)


FSDP_WORDS = {"full_shard": "", "auto_wrap": "", "offload": "offload"}  # TrainingArguments' --fsdp words taken


class Sharding(argparse.Action):
    """--fsdp, or TrainingArguments' spelling: --fsdp "full_shard [auto_wrap] [offload]".

    Every block is its own unit here (auto_wrap changes nothing); "offload" = --offload.
    The other strategies (shard_grad_op, hybrid_shard, no_shard) are not built: one line.
    """

    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs="?", const="full_shard", default=False, **kw)

    def __call__(self, parser, namespace, value, option_string=None):
        words = str(value).replace(",", " ").split()
        if words and words[0].lower() in ("false", "no", "0"):
            setattr(namespace, self.dest, False)
            return
        unknown = [w for w in words if w not in FSDP_WORDS and w.lower() not in ("true", "yes", "1")]
        if unknown:
            parser.error(f"argument {option_string}: {' '.join(unknown)} is not built here; --fsdp shards "
                         f"fully (full_shard, each block a unit), with 'offload' for --offload")
        setattr(namespace, self.dest, True)
        if "offload" in words:
            namespace.offload = True


def add_sharding_args(p):
    """--fsdp and --offload: sharded training (gpt2/sharding.py, docs/distributed.md)."""
    g = p.add_argument_group("sharded training (FSDP, see gpt2/sharding.py)")
    g.add_argument("--fsdp", dest="fsdp", action=Sharding, metavar="full_shard",
                   help="under torchrun: each process keeps 1/N of the weights, gradients and AdamW's moments "
                        "instead of a whole copy (PyTorch's FSDP2); TrainingArguments' --fsdp full_shard too")
    g.add_argument("--offload", dest="offload", action=Switch, default=False,
                   help="with or without --fsdp, one process too: the weights, gradients and AdamW's moments "
                        "in host memory, each block's weights on the GPU only while it computes (slower)")
    g.add_argument("--processes", type=positive_int,
                   help="with --plan: per-GPU memory under DDP, FSDP and offload for N processes "
                        "(default: torchrun's, else 1; see harness/shardplan.py)")
    return g


# --- evaluate.py ----------------------------------------------------------------------

EVALUATE_EPILOG = """\
what is done:
  one MODEL        its eval metrics (the '***** eval metrics *****' block of run_clm).
  several MODELs   a table of the runs, from the results train.py saved in each
                   directory (no model is loaded). With --validation-file, each model
                   is measured on that file first and the table shows those numbers;
                   a base model (gpt2, ...) may then be one of them.
  --prompt TEXT    a sampled continuation from each MODEL, and only that, unless
                   --validation-file or --json asks for the metrics as well.
  --plot PATH      the loss curves of the given run directories, in one PNG, from
                   their logs: alone, it measures nothing (and, with several, prints
                   the table).
A run stopped before its end (Ctrl-C, a kill) or still going: its weights are those
of its last saved state (OUT/resume.pt), and every result names that step.

validation text, when --validation-file is not given: the one recorded in the
checkpoint's run_args.json (its validation file, else the same last
--validation-split percent of the training blocks that training held out, the demo
corpus if it trained on that). A base model records nothing: pass --validation-file.
"""


def evaluate_parser():
    """evaluate.py's flags."""
    p = Parser(prog="evaluate.py", description="Measure GPT-2 checkpoints, compare runs, sample text.",
               epilog=EVALUATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="a checkpoint or run directory (train.py --out), or a model name train.py accepts "
                        "(gpt2, gpt2-medium, org/name)")
    p.add_argument("--weights-dir", default=None, help="where downloaded models live (default: weights/)")
    add_data_args(p, block_help="tokens per evaluated block (default: the run's block size, else "
                                "min(1024, n_positions))")
    add_runtime_args(p).add_argument("--batch-size", "--per_device_eval_batch_size", dest="batch_size", default=8,
                                     type=positive_int, help="sequences per forward pass (default: %(default)s)")

    g = p.add_argument_group("output")
    g.add_argument("--json", metavar="PATH",
                   help="also write the metrics (several MODELs: the table's rows) to this JSON file")
    g.add_argument("--markdown", action="store_true", help="the table of runs as a GitHub markdown table")
    g.add_argument("--plot", metavar="PATH", help="draw the runs' loss curves into this PNG (needs matplotlib)")

    g = p.add_argument_group("sampling")
    g.add_argument("--prompt", type=utf8_text, help="text to continue ('' starts from <|endoftext|>)")
    g.add_argument("--max-new-tokens", type=positive_int, default=50, help="tokens to sample (default: %(default)s)")
    g.add_argument("--temperature", type=non_negative_float, default=1.0,
                   help="below 1: safer, above 1: wilder; 0: always the most likely token (default: %(default)s)")
    g.add_argument("--top-k", type=non_negative_int, default=50,
                   help="sample among the k most likely tokens only; 0: all (default: %(default)s)")
    g.add_argument("--top-p", type=unit_interval, default=1.0,
                   help="nucleus sampling: among the fewest most likely tokens that hold this much of the "
                        "probability, e.g. 0.9; 1: all (default: %(default)s; see gpt2/sampling.py)")
    g.add_argument("--num-samples", type=positive_int, default=1,
                   help="continuations of the prompt to sample, each its own draw (default: %(default)s)")
    g.add_argument("--seed", type=seed, default=42, help="the same seed gives the same samples (default: %(default)s)")
    return p

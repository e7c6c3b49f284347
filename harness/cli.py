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
import sys

from gpt2.precision import CHOICES as PRECISIONS


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


def best_metric(text: str) -> str:
    """--metric_for_best_model: run_clm's names (loss, perplexity, accuracy, ...) to the metric compared."""
    if text not in BEST_METRICS:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(sorted(BEST_METRICS))})")
    return BEST_METRICS[text]


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


MAX_EPOCHS = 1_000_000  # more is a typo (1e307 would overflow the count of steps)


def epochs(text: str) -> float:
    v = positive_float(text)
    if v > MAX_EPOCHS:
        raise argparse.ArgumentTypeError(f"at most {MAX_EPOCHS:,} epochs, got {text}")
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


def seed(text: str) -> int:
    """A random seed: 0 .. 2**32 - 1, so that seed + epoch and seed + rank stay valid seeds."""
    v = _integer(text)
    if not 0 <= v < 2**32:
        raise argparse.ArgumentTypeError(f"must be between 0 and {2**32 - 1}, got {v}")
    return v


def utf8_text(text: str) -> str:
    """Text from the command line that is valid UTF-8 (Python keeps undecodable bytes as surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start].encode("utf-8", "surrogateescape")
        raise argparse.ArgumentTypeError(f"not UTF-8 text: byte 0x{bad[0]:02x} at character {e.start + 1}") from None
    return text


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


def probability(text: str) -> float:
    v = _finite_number(text)
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return v


def unit_interval(text: str) -> float:
    """A fraction in (0, 1]: --top-p (1 keeps every token)."""
    v = _finite_number(text)
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


def add_runtime_args(p, batch_size_default, batch_alias, allow_auto=False):
    """--device, --precision, --batch-size; allow_auto: --batch-size may be "auto" (train.py)."""
    g = p.add_argument_group("hardware")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default: auto)")
    g.add_argument("--use-cpu", "--use_cpu", dest="device", action=Switch, const="cpu", help="= --device cpu")
    g.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto = bf16 on GPUs and CPUs that have it (AVX512-BF16/AMX), else fp16 on CUDA, "
                        "fp32 on the CPU")
    g.add_argument("--fp16", dest="precision", action=Switch, const="fp16", help="= --precision fp16")
    g.add_argument("--bf16", dest="precision", action=Switch, const="bf16", help="= --precision bf16")
    help_text = "sequences per forward pass, the micro-batch (default: %(default)s)"
    if allow_auto:
        help_text += ("; auto: the largest that fits in GPU memory, found by trying, with the accumulation "
                      "adjusted so that the effective batch stays --effective-batch (see harness/batch.py)")
    g.add_argument("--batch-size", batch_alias, dest="batch_size", default=batch_size_default,
                   type=positive_int_or_auto if allow_auto else positive_int, help=help_text)
    return g


# --- train.py -------------------------------------------------------------------------

SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup")
STRATEGIES = ("no", "steps", "epoch")
BEST_METRICS = {"eval_loss": "eval_loss", "loss": "eval_loss", "perplexity": "eval_loss",
                "eval_accuracy": "eval_accuracy", "accuracy": "eval_accuracy"}
# run_clm options train.py does not take, and what to do instead. Most have no meaning
# here; some set what is fixed here (--optim, AdamW's betas and eps: gpt2/trainer.py).
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
    ("--adam_beta1", "--adam_beta2", "--adam_epsilon"): "AdamW's betas and eps are fixed at run_clm's defaults "
                                                        "(0.9, 0.999, 1e-8); to change them, edit the "
                                                        "torch.optim.AdamW call in gpt2/trainer.py (Trainer.__init__)",
    ("--push_to_hub", "--hub_model_id", "--hub_token"): "--out is in the Hugging Face layout: upload it with "
                                                         "`hf upload NAME OUT/` (pip install huggingface_hub)",
    ("--do_predict",): "there is no test split: python evaluate.py OUT/ --validation-file test.txt",
    ("--log_level",): "warnings and errors always go to stderr, metrics to stdout",
}


def train_parser():
    """train.py's flags; run_clm.py's spellings are aliases."""
    p = Parser(prog="train.py", description="Fine-tune GPT-2 on a text file (a readable run_clm.py).")
    add_model_args(p)
    _add_train_data_args(add_data_args(p))
    add_runtime_args(p, batch_size_default=2, batch_alias="--per_device_train_batch_size", allow_auto=True)
    _add_optimisation_args(p.add_argument_group("optimisation"))
    _add_lora_args(p.add_argument_group("LoRA: train small adapters, freeze the model (see gpt2/lora.py)"))
    _add_output_args(p.add_argument_group("output, logging and checkpoints"))
    _add_evaluation_args(p.add_argument_group("evaluation during training"))
    _add_lr_finder_args(p.add_argument_group("finding the learning rate (the range test, see harness/lr_finder.py)"))
    _add_memory_args(p.add_argument_group("memory and speed"))
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
    g.add_argument("--lr", "--learning_rate", dest="lr", default="5e-5",
                   help="peak learning rate (default: %(default)s, as run_clm); a comma-separated list "
                        "(1e-3,1e-4,5e-5) sweeps: one run per value in OUT/lr-<value>/, each from the same "
                        "pretrained weights, then a table comparing them. A run that fails (NaN loss, ...) "
                        "is marked failed and the others go on; exit status 0 if at least one run "
                        "completed, 1 if all failed")
    g.add_argument("--epochs", "--num_train_epochs", dest="epochs", type=epochs, default=3.0)
    g.add_argument("--max-steps", "--max_steps", dest="max_steps", type=int, default=0,
                   help="stop after this many optimizer steps; overrides --epochs (<= 0: off)")
    g.add_argument("--grad-accum", "--gradient_accumulation_steps", dest="grad_accum", type=positive_int, default=1,
                   help="micro-batches per optimizer step (default: %(default)s)")
    g.add_argument("--effective-batch", type=positive_int,
                   help="sequences per optimizer step, all processes together; sets the accumulation "
                        "(= N / (micro-batch x processes)). With --batch-size auto it defaults to what the "
                        "command would train with a micro-batch of 2: 2 x --grad-accum x processes")
    g.add_argument("--weight-decay", "--weight_decay", dest="weight_decay", type=non_negative_float, default=0.0)
    g.add_argument("--lr-scheduler-type", "--lr_scheduler_type", dest="lr_scheduler", choices=SCHEDULES,
                   default="linear", help="the learning-rate schedule (see gpt2/trainer.py; default: %(default)s)")
    g.add_argument("--warmup-steps", "--warmup_steps", dest="warmup_steps", type=non_negative_int, default=0)
    g.add_argument("--warmup-ratio", "--warmup_ratio", dest="warmup_ratio", type=probability, default=0.0,
                   help="warm up over this fraction of the steps (--warmup-steps, if given, wins)")
    g.add_argument("--max-grad-norm", "--max_grad_norm", dest="max_grad_norm", type=positive_float, default=1.0)
    g.add_argument("--dropout", type=probability, help="override the checkpoint's dropout probabilities")
    g.add_argument("--seed", type=seed, default=42)


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
    g.add_argument("--save-every", "--save_steps", dest="save_every", type=int, default=0,
                   help="every N steps, write OUT/checkpoint-<step>/ as run_clm does: a model (evaluate.py "
                        "and transformers open it) with its resumable state beside it (<= 0: only a state "
                        "on Ctrl-C)")
    g.add_argument("--save-strategy", "--save_strategy", dest="save_strategy", choices=STRATEGIES,
                   help="when to write a resumable state: no, steps (every --save-every, default 500), epoch")
    g.add_argument("--save-total-limit", "--save_total_limit", dest="save_total_limit", type=positive_int,
                   default=1, help="keep the newest N checkpoint-<step>/ folders (default: 1; run_clm keeps all, "
                                   "each folder is a model and a state: about 2 GB for GPT-2 124M)")
    g.add_argument("--log-every", "--logging_steps", dest="log_every", type=positive_int_or_auto, default="auto",
                   help="log the loss every N optimizer steps (default: auto = total steps // 50, at least 1: "
                        "a loss curve of about 50 points whatever the run's length; run_clm's default is 500)")
    g.add_argument("--logging-first-step", "--logging_first_step", dest="log_first_step", action=Switch,
                   default=False, help="also log the first step")
    g.add_argument("--report-to", "--report_to", dest="report_to", nargs="+", default=["none"], metavar="TO",
                   help="none, tensorboard (event files in OUT/runs/; needs `pip install tensorboard`) or all")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (on a terminal) and no progress lines (in a file or pipe)")
    g.add_argument("--disable-tqdm", "--disable_tqdm", dest="progress", action=Switch, invert=True, default=True,
                   help="= --no-progress")


def _add_evaluation_args(g):
    g.add_argument("--do-train", "--do_train", dest="do_train", action=Switch, default=False,
                   help="without --do-eval: train only, no evaluation")
    g.add_argument("--do-eval", "--do_eval", dest="do_eval", action=Switch, default=False,
                   help="without --do-train: evaluate only (eval_results.json in --out), no training")
    g.add_argument("--eval-strategy", "--eval_strategy", "--evaluation_strategy", dest="eval_strategy",
                   choices=STRATEGIES, help="when to evaluate during training: no, steps (every --eval-every, "
                                            "default --log-every), epoch (default: steps if --eval-every)")
    g.add_argument("--eval-every", "--eval_steps", dest="eval_every", type=non_negative_int, default=0,
                   help="evaluate every N optimizer steps (default: only at the end)")
    g.add_argument("--eval-batch-size", "--per_device_eval_batch_size", dest="eval_batch_size",
                   type=positive_int, default=8)
    g.add_argument("--save-best", "--load-best-model-at-end", "--load_best_model_at_end", dest="save_best",
                   action=Switch, default=False,
                   help="with evaluations during training: keep the best model in OUT/best/ and end with it")
    g.add_argument("--metric-for-best-model", "--metric_for_best_model", dest="best_metric",
                   type=best_metric, default="eval_loss",
                   help="what 'best' means (default: eval_loss; eval_accuracy: the higher the better)")
    g.add_argument("--patience", type=non_negative_int, default=0,
                   help="with evaluations during training: stop after N evaluations without improvement")


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
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--plan", action="store_true",
                   help="instead of training: predict the peak memory, part by part, and the largest "
                        "micro-batch that fits, from config.json alone (see harness/plan.py)")
    g.add_argument("--memory", type=memory_size, help="with --plan: the memory to fit, e.g. 8GB (default: the device's)")
    g.add_argument("--json", metavar="PATH", help="with --plan: also write the numbers to this JSON file")


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
  --plot PATH      the loss curves of the given run directories, in one PNG.

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
    add_runtime_args(p, batch_size_default=8, batch_alias="--per_device_eval_batch_size")

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

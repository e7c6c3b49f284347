"""The training settings, each declared once: `TrainConfig`.

Every number that decides how a run trains (the learning rate, the schedule, AdamW's
betas, when to log and evaluate, ...) is one field of `TrainConfig` below, and the
field carries everything else there is to know about it:

    its default        what a notebook gets with TrainConfig()
    its flags          --lr and run_clm's --learning_rate: harness/cli.py builds the
                       command line from these declarations, nothing else
    how it is checked  the function that turns the flag's text into a value, or says
                       in one line why not (a negative rate, a beta of 1, ...)
    its help text      what `train.py --help` says
    on --resume        MATCH: a resumed run must use the same value, or it would quietly
                       become another run (checked before the model is loaded, from
                       the flags, and again by checkpoint.load); AT_LOAD: the same,
                       but the value is decided once the model is loaded (precision
                       "auto", batch size "auto"), so only checkpoint.load compares it;
                       FREE: may change (how often to log, the eval batch size)

So a new setting is one field here plus the code that uses it: the flag, the run's
record (run_args.json, resume.pt) and the resume check follow from the declaration
(docs/extending.md, "Add a setting"). Some fields have no flag: harness/run.py
decides them (the precision that --precision auto resolves to, ...).

The checks raise ValueError with a message; harness/cli.py shows it as argparse's
one-line error, and TrainConfig's own check (`__post_init__`) turns the ones a
notebook can get wrong into a UserError.
"""

import json
import math
from dataclasses import MISSING, dataclass, field, fields

from . import schedules
from .errors import UserError
from .evaluation import metric_for

MATCH, AT_LOAD, FREE = "match", "at load", "free"


# --- the checks: text -> value, or a ValueError that says why ---------------------------

def integer(text) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise ValueError(f"{text!r} is not an integer") from None


def positive_int(text) -> int:
    v = integer(text)
    if v <= 0:
        raise ValueError(f"must be a positive integer, got {v}")
    return v


def non_negative_int(text) -> int:
    v = integer(text)
    if v < 0:
        raise ValueError(f"must be zero or more, got {v}")
    return v


def steps_or_off(text) -> int:
    """--max-steps: a number of steps; 0 or less: off (run_clm's -1)."""
    return max(0, integer(text))


def finite_number(text) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{text!r} is not a number") from None
    if not math.isfinite(v):
        raise ValueError(f"must be a finite number, got {text}")
    return v


def positive_float(text) -> float:
    v = finite_number(text)
    if v <= 0:
        raise ValueError(f"must be a positive number, got {text}")
    return v


def non_negative_float(text) -> float:
    v = finite_number(text)
    if v < 0:
        raise ValueError(f"must be zero or a positive number, got {text}")
    return v


def probability(text) -> float:
    """A fraction in [0, 1): a dropout rate, a warm-up ratio, an AdamW beta."""
    v = finite_number(text)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"must be in [0, 1), got {text}")
    return v


def fraction(text) -> float:
    """A fraction in [0, 1]: --warmup-ratio (1: warm up over the whole run, as run_clm allows)."""
    v = finite_number(text)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"must be in [0, 1], got {text}")
    return v


MAX_EPOCHS = 1_000_000  # more is a typo (1e307 would overflow the count of steps)


def epochs(text) -> float:
    v = positive_float(text)
    if v > MAX_EPOCHS:
        raise ValueError(f"at most {MAX_EPOCHS:,} epochs, got {text}")
    return v


def seed(text) -> int:
    """A random seed: 0 .. 2**32 - 1, so that seed + rank (dropout, train.py) stays a valid seed."""
    v = integer(text)
    if not 0 <= v < 2**32:
        raise ValueError(f"must be between 0 and {2**32 - 1}, got {v}")
    return v


def positive_int_or_auto(text):
    """A positive integer, or "auto" (decided by harness/run.py)."""
    return "auto" if str(text).strip().lower() == "auto" else positive_int(text)


def learning_rates(text) -> list:
    """--lr: one learning rate, or a comma-separated list of them (a sweep, harness/sweep.py)."""
    parts = str(text).split(",")
    if any(not v.strip() for v in parts):  # "1e-3,,1e-4" or "1e-3,": a value is missing
        raise ValueError("an empty value in the comma-separated list")
    try:
        lrs = [float(v) for v in parts]
    except ValueError:
        raise ValueError("not a number or a comma-separated list of numbers") from None
    if any(not (v > 0 and v != float("inf")) for v in lrs):
        raise ValueError("the learning rate must be a positive number")
    return lrs


def json_object(text) -> dict:
    """--lr_scheduler_kwargs '{"num_cycles": 2}': a JSON object."""
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(value, dict):
        raise ValueError('must be a JSON object such as \'{"num_cycles": 2}\'')
    return value


def schedule_name(text) -> str:
    """--lr_scheduler_type: a schedule of schedules.py (run_clm's others are refused with the reason)."""
    try:
        schedules.check_name(text)
    except UserError as e:
        raise ValueError(str(e)) from None
    return text


def metric_name(text) -> str:
    """--metric_for_best_model: a metric of evaluation.METRICS, with or without run_clm's "eval_"."""
    return metric_for(text)


# --- the declarations --------------------------------------------------------------------

def setting(default, *flags, check=None, help="", resume=FREE, group="optimisation", flag_default=None,
            switch=False, invert=False, choices=None, metavar=None):
    """A TrainConfig field and what the command line and --resume need to know about it (see the docstring).

    flag_default: the flag's default when it differs from the field's (--batch-size auto,
    decided later). switch: a yes/no flag that also takes a value (--save-best, --save-best
    false); invert: the flag turns the setting off (--no-progress). No flags: decided by
    harness/run.py.
    """
    meta = {"flags": flags, "check": check, "help": help, "resume": resume, "group": group, "switch": switch,
            "invert": invert, "flag_default": default if flag_default is None else flag_default,
            "choices": choices, "metavar": metavar}
    if isinstance(default, dict):  # a mutable default: each TrainConfig gets its own
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


def default_of(f):
    """A declared field's default value."""
    return f.default_factory() if f.default is MISSING else f.default


OUTPUT, EVALUATION, SPEED = "output, logging and checkpoints", "evaluation during training", "memory and speed"
STRATEGIES = ("no", "steps", "epoch")


@dataclass
class TrainConfig:
    # --- optimisation ---
    lr: float = setting(
        5e-5, "--lr", "--learning_rate", check=learning_rates, resume=MATCH, flag_default="5e-5",
        help="peak learning rate (default: %(default)s, as run_clm); a comma-separated list (1e-3,1e-4,5e-5) "
             "sweeps: one run per value in OUT/lr-<value>/, each from the same pretrained weights, then a table "
             "comparing them. A run that fails (NaN loss, ...) is marked failed and the others go on; exit "
             "status 0 if at least one run completed, 1 if all failed")
    epochs: float = setting(3.0, "--epochs", "--num_train_epochs", check=epochs, resume=MATCH)
    max_steps: int = setting(0, "--max-steps", "--max_steps", check=steps_or_off, resume=MATCH,
                             help="stop after this many optimizer steps; overrides --epochs (<= 0: off)")
    batch_size: int = setting(
        2, "--batch-size", "--per_device_train_batch_size", check=positive_int_or_auto, resume=AT_LOAD,
        help="sequences per forward pass, the micro-batch (default: %(default)s); auto: the largest that fits in "
             "GPU memory, found by trying, with the accumulation adjusted so that the effective batch stays "
             "--effective-batch (see harness/batch.py)")
    # Not compared on its own by --resume: 2 processes x 2 = 1 process x 4 reads the same
    # data; checkpoint.load compares micro-batches per step (grad_accum x processes).
    grad_accum: int = setting(1, "--grad-accum", "--gradient_accumulation_steps", check=positive_int,
                              help="micro-batches per optimizer step (default: %(default)s)")
    weight_decay: float = setting(0.0, "--weight-decay", "--weight_decay", check=non_negative_float, resume=MATCH)
    lr_scheduler: str = setting(
        "linear", "--lr-scheduler-type", "--lr_scheduler_type", check=schedule_name, resume=MATCH,
        help=f"the learning-rate schedule: {', '.join(schedules.SCHEDULES)} (see gpt2/schedules.py; "
             f"default: %(default)s)")
    lr_scheduler_kwargs: dict = setting(
        {}, "--lr-scheduler-kwargs", "--lr_scheduler_kwargs", check=json_object, resume=MATCH, metavar="JSON",
        help='the schedule\'s parameters as JSON, e.g. \'{"num_cycles": 2}\' (gpt2/schedules.py lists them)')
    warmup_steps: int = setting(0, "--warmup-steps", "--warmup_steps", check=non_negative_int, resume=MATCH)
    warmup_ratio: float = setting(0.0, "--warmup-ratio", "--warmup_ratio", check=fraction, resume=MATCH,
                                  help="warm up over this fraction of the steps (--warmup-steps, if given, wins)")
    max_grad_norm: float = setting(1.0, "--max-grad-norm", "--max_grad_norm", check=positive_float, resume=MATCH)
    adam_beta1: float = setting(0.9, "--adam-beta1", "--adam_beta1", check=probability, resume=MATCH,
                                help="AdamW's beta1, the gradient average's memory (default: %(default)s)")
    adam_beta2: float = setting(0.999, "--adam-beta2", "--adam_beta2", check=probability, resume=MATCH,
                                help="AdamW's beta2, the squared gradient average's memory (default: %(default)s)")
    adam_epsilon: float = setting(1e-8, "--adam-epsilon", "--adam_epsilon", check=positive_float, resume=MATCH,
                                  help="AdamW's eps, added to sqrt(v) (default: %(default)s)")
    seed: int = setting(42, "--seed", check=seed, resume=MATCH)

    # --- output, logging and checkpoints ---
    log_every: int = setting(
        500, "--log-every", "--logging_steps", check=positive_int_or_auto, flag_default="auto", group=OUTPUT,
        help="log the loss every N optimizer steps (default: auto = total steps // 50, at least 1: a loss curve "
             "of about 50 points whatever the run's length; run_clm's default is 500)")
    log_first_step: bool = setting(False, "--logging-first-step", "--logging_first_step", switch=True,
                                   group=OUTPUT, help="also log the first step")
    save_strategy: str | None = setting(
        None, "--save-strategy", "--save_strategy", choices=STRATEGIES, group=OUTPUT,
        help="when to write a resumable state: no, steps (every --save-every, default 500), epoch")
    save_every: int = setting(
        0, "--save-every", "--save_steps", check=integer, group=OUTPUT,
        help="every N steps, write OUT/checkpoint-<step>/ as run_clm does: a model (evaluate.py and transformers "
             "open it) with its resumable state beside it (<= 0: only a state on Ctrl-C)")
    save_total_limit: int = setting(
        1, "--save-total-limit", "--save_total_limit", check=positive_int, group=OUTPUT,
        help="keep the newest N checkpoint-<step>/ folders (default: 1; run_clm keeps all, each folder is a model "
             "and a state: about 2 GB for GPT-2 124M)")
    progress: bool = setting(True, "--no-progress", "--disable-tqdm", "--disable_tqdm", switch=True, invert=True,
                             group=OUTPUT,
                             help="no progress bar (on a terminal) and no progress lines (in a file or pipe)")

    # --- evaluation during training ---
    eval_strategy: str | None = setting(
        None, "--eval-strategy", "--eval_strategy", "--evaluation_strategy", choices=STRATEGIES, group=EVALUATION,
        help="when to evaluate during training: no, steps (every --eval-every, default --log-every), epoch "
             "(default: steps if --eval-every)")
    eval_every: int = setting(0, "--eval-every", "--eval_steps", check=non_negative_int, group=EVALUATION,
                              help="evaluate every N optimizer steps (default: only at the end)")
    eval_batch_size: int = setting(8, "--eval-batch-size", "--per_device_eval_batch_size", check=positive_int,
                                   group=EVALUATION)
    save_best: bool = setting(
        False, "--save-best", "--load-best-model-at-end", "--load_best_model_at_end", switch=True, group=EVALUATION,
        help="with evaluations during training: keep the best model in OUT/best/ and end with it")
    best_metric: str = setting(
        "eval_loss", "--metric-for-best-model", "--metric_for_best_model", check=metric_name, group=EVALUATION,
        help="what 'best' means: a metric of gpt2/evaluation.py, with or without its eval_ (default: eval_loss; "
             "eval_accuracy: the higher the better)")
    patience: int = setting(0, "--patience", check=non_negative_int, group=EVALUATION,
                            help="with evaluations during training: stop after N evaluations without improvement")

    # --- memory and speed ---
    compile: bool = setting(False, "--compile", switch=True, group=SPEED, help="torch.compile the model")

    # --- decided by harness/run.py, no flag of their own ---
    precision: str = setting("fp32", resume=AT_LOAD)  # what the training steps use (--precision auto resolved)
    eval_precision: str | None = setting(None)  # what evaluations use; None: as training
    # --fsdp / --offload (harness/cli.py's sharding flags): a resumed run may change them,
    # harness/sharded.py checks that the state can be read that way.
    fsdp: bool = setting(False)     # shard weights, gradients and moments over the processes (sharding.py)
    offload: bool = setting(False)  # keep them in host memory (sharding.py)

    def __post_init__(self):
        """What a notebook can get wrong and the command line cannot: one line, before any step."""
        schedules.check(self.lr_scheduler, self.lr_scheduler_kwargs, self.lr)
        if not 0 <= self.adam_beta1 < 1 or not 0 <= self.adam_beta2 < 1:
            raise UserError(f"AdamW's betas must be in [0, 1), got ({self.adam_beta1}, {self.adam_beta2})")


def declared() -> list:
    """The dataclass fields of TrainConfig, with their declarations (field.metadata)."""
    return list(fields(TrainConfig))


def must_match(at_load=True) -> tuple:
    """The settings a resumed run must share with the interrupted one (at_load: those decided later too)."""
    kinds = (MATCH, AT_LOAD) if at_load else (MATCH,)
    return tuple(f.name for f in declared() if f.metadata["resume"] in kinds)


def from_flags(args, **decided) -> dict:
    """The TrainConfig values the flags give, then those decided by harness/run.py on top.

    `args` is the parsed command line (harness/cli.py builds one attribute per declared
    flag, under the field's name).
    """
    values = {f.name: getattr(args, f.name) for f in declared() if f.metadata["flags"] and hasattr(args, f.name)}
    return {**values, **decided}


def record(cfg: TrainConfig) -> dict:
    """What a run's files keep of its settings (resume.pt, run_args.json): all but the display ones."""
    return {f.name: getattr(cfg, f.name) for f in declared() if f.name != "progress"}


def differences(mine: dict, saved: dict, names) -> list:
    """"lr 0.0001 (saved: 0.001)" for each setting of `names` that differs; a setting the saved
    run did not record (an older version) is taken as its default."""
    defaults = {f.name: default_of(f) for f in declared()}
    return [f"{k} {mine[k]!r} (saved: {saved.get(k, defaults[k])!r})"
            for k in names if k in mine and saved.get(k, defaults[k]) != mine[k]]

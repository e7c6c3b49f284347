"""train.py --from-scratch: a small GPT-2 initialised at random, from the flags (gpt2/scratch.py explains).

    python train.py --from-scratch --lr 1e-3 --max-steps 200 --out scratch/          # 4 layers x 128
    python train.py --from-scratch --n-layer 6 --n-embd 384 --n-head 6 --train-file my.txt ...

The model's shape is model config, not a training setting: these flags build a
GPT2Config (gpt2/config.py) and are written into the run's config.json, as a
pretrained model's shape is read from its own. The context (n_positions) is the
block size, 128 unless --block-size says otherwise. The tokenizer is GPT-2's
(weights/gpt2/, shipped), so the vocabulary is its 50,257 tokens.
"""

import os

from gpt2.config import GPT2Config
from gpt2.errors import UserError
from gpt2.scratch import initial_loss, new_model, step0_line
from gpt2.tokenizer import SHIPPED_DIR

SHAPE = dict(n_layer=4, n_head=4, n_embd=128)  # minutes on a CPU: the LM head over 50,257 tokens dominates
BLOCK_SIZE = 128


def add_args(p):
    g = p.add_argument_group("training from scratch (gpt2/scratch.py)")
    g.add_argument("--from-scratch", action="store_true",
                   help="train a new GPT-2 initialised at random instead of fine-tuning --model")
    for name, default, what in (("n-layer", SHAPE["n_layer"], "blocks"), ("n-head", SHAPE["n_head"], "attention heads"),
                                ("n-embd", SHAPE["n_embd"], "width of the residual stream")):
        g.add_argument(f"--{name}", type=int, default=None, metavar="N",
                       help=f"with --from-scratch: {what} (default: {default})")


def check(args) -> None:
    """One-line errors for the from-scratch flags, before anything is loaded."""
    shape = {k: getattr(args, k, None) for k in SHAPE}
    if not getattr(args, "from_scratch", False):
        given = [k for k, v in shape.items() if v is not None]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} shapes a new model: add --from-scratch "
                            f"(a pretrained model's shape is its config.json's)")
        return
    if args.model != "gpt2":
        raise UserError("--from-scratch builds a new model: leave --model out")
    if args.lora:
        raise UserError("--from-scratch trains every weight: LoRA adapters on a random model learn nothing useful")
    config(args)  # its checks: positive sizes, n_embd divisible by n_head, ...


def config(args) -> GPT2Config:
    shape = {k: v if v is not None else SHAPE[k] for k in SHAPE for v in [getattr(args, k)]}
    if any(v < 1 for v in shape.values()):
        raise UserError("--n-layer, --n-head and --n-embd must be positive")
    if shape["n_embd"] % shape["n_head"]:
        raise UserError(f"--n-embd {shape['n_embd']} must be a multiple of --n-head {shape['n_head']} "
                        f"(each head takes n_embd / n_head of the width)")
    return GPT2Config(n_positions=args.block_size or BLOCK_SIZE, **shape)


def build(args, **options):
    """(the random model, where its tokenizer lives, a line for the header)."""
    cfg = config(args)
    if args.dropout is not None:
        cfg = cfg.with_dropout(args.dropout)
    model = new_model(cfg, args.seed, **options)
    n = sum(p.numel() for p in model.parameters())
    note = (f"model: a new GPT-2 of {cfg.n_layer} layers x {cfg.n_embd} wide, {cfg.n_head} heads, context "
            f"{cfg.n_positions}: {n:,} parameters, initialised at random (seed {args.seed})")
    return model, os.fspath(SHIPPED_DIR), note


def name(args) -> str:
    """What run_args.json (and the table of runs' "started from") says instead of a model's name."""
    cfg = config(args)
    return f"random init ({cfg.n_layer} layers x {cfg.n_embd}, seed {args.seed})"


def step0_note(model, train_blocks, batch_size) -> str:
    """The loss before any update, on the first blocks, beside ln(V) (gpt2/scratch.py)."""
    return step0_line(initial_loss(model, train_blocks[:max(2, batch_size)]), model.config.vocab_size)

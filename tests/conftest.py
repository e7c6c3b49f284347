"""Shared test helpers: tiny random checkpoints written by transformers itself."""

import os
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = ROOT / "weights" / "gpt2"

TINY = dict(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=4)


def hf_model(seed=0, **shape):
    """A random transformers.GPT2LMHeadModel of the given shape, dropout 0, eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(**shape, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    cfg._attn_implementation = "eager"  # the reference: plain matmul-softmax attention
    model = GPT2LMHeadModel(cfg)
    # transformers initialises biases and LayerNorms to 0/1; randomise them too so that
    # a mistake in loading any tensor shows up in the logits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.normal_(0, 0.1).add_(1.0 if "weight" in name else 0.0)
    return model.eval()


def save_hf(model, directory, with_tokenizer=True):
    model.save_pretrained(directory)
    if with_tokenizer:
        for f in ("vocab.json", "merges.txt"):
            shutil.copy(TOKENIZER_DIR / f, os.path.join(directory, f))
    return str(directory)


@pytest.fixture
def tiny_ckpt(tmp_path):
    """A directory with a tiny random GPT-2 saved by transformers, plus tokenizer files."""
    return save_hf(hf_model(**TINY), tmp_path / "tiny")

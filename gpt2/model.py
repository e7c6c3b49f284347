"""GPT-2, the network, in one file.

GPT-2 reads a sequence of token ids and, at every position t, predicts the token at
t+1. It is a stack of identical blocks over a "residual stream" of width n_embd:

    ids -> token embedding + position embedding -> dropout
        -> n_layer x Block:  x = x + Attention(LayerNorm(x))
                             x = x + MLP(LayerNorm(x))
        -> final LayerNorm -> LM head (the token embedding matrix, reused) -> logits

Pre-LN, and why `ln_f` exists. The original Transformer normalised *after* each
addition ("post-LN": x = LayerNorm(x + sublayer(x))), so every gradient on its way
down passed through n_layer LayerNorms, and deep stacks needed a careful warm-up to
train at all. GPT-2 moved the LayerNorm to the *input* of each sub-layer ("pre-LN"):
each sub-layer still sees a normalised input, but the residual stream x itself is
only ever added to, so the gradient flows straight down the chain of additions. The
price: the stream is never normalised, and its scale grows with depth. Hence one last
LayerNorm, `ln_f`, after the final block: the LM head then scores a normalised vector,
whatever the depth.

Attention is causal: position t may only look at positions <= t, otherwise
predicting t+1 would be cheating (the mask is drawn in CausalSelfAttention).

The loss (the shift by one position, T-1 predictions per block) is in loss.py, the
next module to read. Three options change how much memory a training step takes,
never what it computes; skip them on a first reading:

* `checkpointing`: keep only each block's input, and recompute the block's inside
  during backward (a second forward pass through every block: +30 % time for GPT-2
  124M at 1 x 256 in fp32 on this project's CPU, `python benchmarks/lesson_numbers.py
  checkpointing`).
* `attention_recompute`: the same for attention's T x T part only (attention.py: on
  the CPU it keeps just the dropout mask; train.py's default at long CPU blocks).
* `loss_chunk`: the LM head and the loss a chunk of positions at a time (loss.py).

Module and parameter names follow Hugging Face's `GPT2LMHeadModel` (transformer.wte,
transformer.h.0.attn.c_attn, ...), so loading the released weights is a matter of
matching names; see weights.py for the one twist (Conv1D weights are transposed).
"""

import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .attention import dropout_attention, keep_mask_attention
from .config import GPT2Config
from .dropout import Dropout
from .loss import chunked_lm_loss, cross_entropy, next_token_targets
from .sampling import check_settings, next_token


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.n_head = cfg.n_head
        # One matrix computes queries, keys and values together: one big matmul is
        # faster than three small ones, and it is how the GPT-2 checkpoint stores them.
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.attn_pdrop = cfg.attn_pdrop
        self.resid_dropout = Dropout(cfg.resid_pdrop)  # nn.Dropout, cheaper masks on the CPU (dropout.py)
        self.recompute = False  # GPT2's attention_recompute option

    def forward(self, x, kv_cache=None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        # Split the width into heads: each head attends on its own C/n_head slice.
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hd)
        past = 0
        if kv_cache is not None:
            # Generation (skip on a first reading): keys/values of earlier tokens are kept, so each new token
            # costs one row of attention instead of recomputing the whole prefix.
            past = len(kv_cache)
            k, v = kv_cache.update(k, v)  # (B, nh, past + T, hd)
        # softmax(q k^T / sqrt(hd)) v, by PyTorch's fused kernel (flash / memory-efficient
        # attention on CUDA: the T x T matrix is never stored). Why / sqrt(hd) (the kernel's
        # default scale): q.k sums hd products; with independent zero-mean, unit-variance
        # entries its variance is hd (std 8 for hd = 64). Unscaled, the softmax saturates to
        # one-hot and its gradient vanishes; / sqrt(hd) brings the scores back to variance 1.
        # The causal mask lets query t see keys 0..t only. For T = 4 (x: may look, .: -inf):
        #
        #                keys:  a  b  c  d
        #      query a          x  .  .  .
        #      query b          x  x  .  .
        #      query c          x  x  x  .
        #      query d          x  x  x  x
        attention = dict(attn_mask=self._cache_mask(past, T, x.device), is_causal=past == 0,
                         dropout_p=self.attn_pdrop if self.training else 0.0)
        cpu_dropout = q.device.type == "cpu" and past == 0 and self.training and self.attn_pdrop > 0
        if self.recompute and self.training and self.attn_pdrop > 0 and torch.is_grad_enabled():  # see the top
            if cpu_dropout:
                y = keep_mask_attention(q, k, v, self.attn_pdrop)  # attention.py: only the mask is kept
            else:
                y = checkpoint(F.scaled_dot_product_attention, q, k, v, use_reentrant=False, **attention)
        elif cpu_dropout:  # the CPU has no fused kernel with dropout: its math, with cheaper masks (attention.py)
            y = dropout_attention(q, k, v, self.attn_pdrop)
        else:
            y = F.scaled_dot_product_attention(q, k, v, **attention)  # (B, nh, T, hd)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))

    @staticmethod
    def _cache_mask(past, T, device):
        """With `past` tokens in the cache, query t (at position past + t) sees keys 0..past + t.

        None without a cache (is_causal draws the mask above), or for a single new
        token (it may see everything). Several new tokens after a cache, past = 2, T = 3:

                      keys:  0  1  2  3  4
            query 0 (pos 2)  x  x  x  .  .
            query 1 (pos 3)  x  x  x  x  .
            query 2 (pos 4)  x  x  x  x  x
        """
        if past == 0 or T == 1:
            return None
        return torch.ones(T, past + T, dtype=torch.bool, device=device).tril(diagonal=past)  # (T, past + T)


class MLP(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.dropout = Dropout(cfg.resid_pdrop)

    def forward(self, x):
        # GELU in the tanh approximation GPT-2 was trained with ("gelu_new" in HF):
        #     0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        # The exact GELU, x Phi(x) (erf), differs by up to 4.7e-4 per activation (at |x| = 2.7):
        # enough to move the released model's logits (tests/test_model.py::test_mlp_gelu_is_tanh).
        h = F.gelu(self.c_fc(x), approximate="tanh")  # (B, T, 4C)
        return self.dropout(self.c_proj(h))  # (B, T, C)


class Block(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg)

    def forward(self, x, kv_cache=None):
        x = x + self.attn(self.ln_1(x), kv_cache)
        x = x + self.mlp(self.ln_2(x))
        return x


class KVCache:
    """Keys and values of the tokens seen so far, for one block."""

    def __init__(self):
        self.k = self.v = None

    def update(self, k, v):
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v

    def __len__(self):
        return 0 if self.k is None else self.k.shape[2]


class GPT2(nn.Module):
    def __init__(self, cfg: GPT2Config, checkpointing: bool = False, loss_chunk: int = 0,
                 attention_recompute: bool = False):
        super().__init__()
        self.config = cfg
        # Memory options (see the module docstring); the plain path ignores them.
        self.checkpointing = checkpointing  # recompute each block's activations in backward
        self.loss_chunk = loss_chunk        # > 0: the LM head + loss this many positions at a time
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),   # token id -> vector
            wpe=nn.Embedding(cfg.n_positions, cfg.n_embd),  # position -> vector
            drop=Dropout(cfg.embd_pdrop),
            h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
            ln_f=nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon),
        ))
        # The output layer scores each vocabulary entry by its dot product with the
        # final hidden state. GPT-2 reuses the input embedding matrix for it ("tied"
        # weights): a token's vector is both what the model reads for it and what it
        # compares against to predict it, and it saves 38M of 124M parameters (config.py: the table).
        # It is one nn.Parameter with two uses: its gradient is the sum of both
        # uses' gradients, and AdamW (which lists each parameter once) updates it once.
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False, device="meta")  # no memory: replaced
        self.lm_head.weight = self.transformer.wte.weight
        for block in self.transformer.h:
            block.attn.recompute = attention_recompute
        # GPT-2's random init (what a model trained from scratch starts from, scratch.py;
        # a checkpoint's weights then replace it). Every matrix N(0, 0.02^2): small enough
        # that the first logits are nearly equal (step-0 loss ~ ln(vocab)), large enough
        # for distinct gradients. The stream x gets 2 additions per block (attention,
        # MLP); added up, 2 x n_layer independent terms would grow its variance 2 x n_layer
        # times, so the two projections that write them (c_proj) get std 0.02 / sqrt(2 x
        # n_layer): the sum ends at the scale of one term. (As transformers' GPT-2.)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def hidden_states(self, input_ids, kv_caches=None):
        """The final hidden state of every position: (B, T) ids -> (B, T, C)."""
        B, T = input_ids.shape
        past = len(kv_caches[0]) if kv_caches else 0
        if past + T > self.config.n_positions:
            raise ValueError(f"sequence of {past + T} tokens is longer than n_positions={self.config.n_positions}")
        pos = torch.arange(past, past + T, device=input_ids.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(input_ids) + self.transformer.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            if self.checkpointing and self.training and not kv_caches:  # a cache must see every block
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x, kv_caches[i] if kv_caches else None)
        return self.transformer.ln_f(x)

    def forward(self, input_ids, labels=None):
        """Logits (B, T, vocab) and, given labels, the mean next-token cross-entropy.

        labels are the input ids themselves (or with -100 where nothing is scored):
        loss.py shifts them, so that the logits at position t are scored against the
        token at t+1. With `loss_chunk` set and labels given, the logits are never
        built: (None, loss).
        """
        x = self.hidden_states(input_ids)  # (B, T, C)
        if labels is None:
            return self.lm_head(x), None
        targets = next_token_targets(labels)  # (B, T): labels[:, t+1], the last one ignored
        if self.loss_chunk:  # option: the (B, T, vocab) logits never exist at once
            return None, chunked_lm_loss(x, self.lm_head.weight, targets, self.loss_chunk)
        logits = self.lm_head(x)  # (B, T, vocab)
        return logits, cross_entropy(logits, targets)

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None,
                 vocab_size=None):
        """Continue (B, T) ids by sampling max_new_tokens tokens, with a KV cache.

        How each token is picked (temperature, top_k, top_p) is sampling.py's; vocab_size
        (the tokenizer's) keeps the draws to ids it can decode (a padded embedding has more
        rows). Settings that describe no draw (a negative temperature) are a ValueError. The model
        samples in eval mode (no dropout), and is left in the mode it was in. A prompt
        that leaves no room for the new tokens keeps only its end, with a warning.
        """
        check_settings(temperature, top_k, top_p)  # before any work
        room = self.config.n_positions - max_new_tokens
        if room < 1:
            raise ValueError(f"max_new_tokens must be below n_positions={self.config.n_positions}")
        if input_ids.shape[1] > room:
            warnings.warn(f"the prompt's {input_ids.shape[1]} tokens and {max_new_tokens} new ones exceed the "
                          f"context of {self.config.n_positions}: only the prompt's last {room} tokens are read",
                          stacklevel=2)
        ids = input_ids[:, -room:]
        was_training = self.training
        self.eval()  # dropout would add noise to every step's scores
        try:
            caches = [KVCache() for _ in self.transformer.h]
            x = ids  # the first step feeds the whole prompt, later steps one token
            for _ in range(max_new_tokens):
                logits = self.lm_head(self.hidden_states(x, caches)[:, -1])  # (B, vocab)
                x = next_token(logits, temperature, top_k, top_p, generator, vocab_size)  # (B, 1)
                ids = torch.cat([ids, x], dim=1)
        finally:
            self.train(was_training)
        return ids

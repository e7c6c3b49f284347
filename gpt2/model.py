"""GPT-2, the network, in one file.

GPT-2 reads a sequence of token ids and, at every position t, predicts the token at
t+1. It is a stack of identical blocks over a "residual stream" of width n_embd:

    ids -> token embedding + position embedding -> dropout
        -> n_layer x Block:  x = x + Attention(LayerNorm(x))
                             x = x + MLP(LayerNorm(x))
        -> final LayerNorm -> LM head (the token embedding matrix, reused) -> logits

The LayerNorm comes *before* each sub-layer ("pre-LN"), so the residual stream itself
is never normalised: gradients flow straight through the additions, which is what lets
deep stacks train. Attention is causal: position t may only look at positions <= t,
otherwise predicting t+1 would be cheating.

Module and parameter names follow Hugging Face's `GPT2LMHeadModel` (transformer.wte,
transformer.h.0.attn.c_attn, ...), so loading the released weights is a matter of
matching names; see weights.py for the one twist (Conv1D weights are transposed).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .config import GPT2Config


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.n_head = cfg.n_head
        # One matrix computes queries, keys and values together: one big matmul is
        # faster than three small ones, and it is how the GPT-2 checkpoint stores them.
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.attn_pdrop = cfg.attn_pdrop
        self.resid_dropout = nn.Dropout(cfg.resid_pdrop)

    def forward(self, x, kv_cache=None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        # Split the width into heads: each head attends on its own C/n_head slice.
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hd)
        if kv_cache is not None:
            # Generation: keys/values of earlier tokens are kept, so each new token
            # costs one row of attention instead of recomputing the whole prefix.
            k, v = kv_cache.update(k, v)  # (B, nh, T_past + T, hd)
        # softmax(q k^T / sqrt(hd)) v with the causal mask, by PyTorch's fused kernel
        # (flash / memory-efficient attention on CUDA: the T x T matrix is never stored).
        # A single new token with a cache may see everything before it: no mask needed.
        causal = k.shape[2] == T
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=causal, dropout_p=self.attn_pdrop if self.training else 0.0
        )  # (B, nh, T, hd)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.resid_pdrop)

    def forward(self, x):
        # GPT-2 was trained with the tanh approximation of GELU ("gelu_new" in HF);
        # the exact erf GELU would change every logit slightly.
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
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),   # token id -> vector
            wpe=nn.Embedding(cfg.n_positions, cfg.n_embd),  # position -> vector
            drop=nn.Dropout(cfg.embd_pdrop),
            h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
            ln_f=nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon),
        ))
        # The output layer scores each vocabulary entry by its dot product with the
        # final hidden state. GPT-2 reuses the input embedding matrix for it ("tied"
        # weights): one matrix, two uses, 38M fewer parameters in the 124M model.
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight
        # Options for memory (see perf.py); the plain path below ignores them.
        self.checkpointing = False  # recompute each block's activations in backward
        self.loss_chunk = 0         # >0: compute head + loss this many positions at a time
        self.apply(self._init_weights)
        # GPT-2's init: projections that write into the residual stream are scaled
        # down by sqrt(2 * n_layer), so the stream's variance does not grow with depth.
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

        With `loss_chunk` set and labels given, the logits are never built: (None, loss).

        labels are the input ids themselves: the shift happens here, so that the
        logits at position t are scored against the token at t+1. Positions labelled
        -100 are ignored (the convention of PyTorch and Hugging Face).
        """
        x = self.hidden_states(input_ids)
        if labels is not None and self.loss_chunk:
            from .perf import chunked_lm_loss  # option: logits never all in memory
            return None, chunked_lm_loss(x, self.lm_head.weight, labels, self.loss_chunk)
        logits = self.lm_head(x)  # (B, T, vocab)
        if labels is None:
            return logits, None
        # The loss is computed in fp32 even under autocast: log-softmax over 50257
        # entries in fp16 loses precision.
        loss = F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(),  # predictions at 0..T-2  (B*(T-1), vocab)
            labels[:, 1:].flatten(),               # the tokens at 1..T-1   (B*(T-1),)
        )
        return logits, loss

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens, temperature=1.0, top_k=None, generator=None):
        """Continue (B, T) ids by sampling max_new_tokens tokens, with a KV cache.

        temperature 0 means greedy (always the most likely token); top_k keeps only
        the k most likely tokens before sampling.
        """
        room = self.config.n_positions - max_new_tokens
        if room < 1:
            raise ValueError(f"max_new_tokens must be below n_positions={self.config.n_positions}")
        ids = input_ids[:, -room:]  # keep the end of a prompt that would not fit
        caches = [KVCache() for _ in self.transformer.h]
        x = ids  # the first step feeds the whole prompt, later steps one token
        for _ in range(max_new_tokens):
            logits = self.lm_head(self.hidden_states(x, caches)[:, -1])  # (B, vocab)
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
            else:
                logits = logits.float() / temperature
                if top_k:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
            ids = torch.cat([ids, nxt], dim=1)
            x = nxt
        return ids

"""Picking the next token from the model's scores: temperature, top-k, top-p.

At each step of generation the model gives one score (logit) per vocabulary entry;
softmax turns them into probabilities, and the next token is drawn from them. Drawn
as they are, the 50,257 probabilities have a long tail of unlikely tokens that
together are drawn often enough to derail a text. Three knobs reshape the draw:

* temperature T: the logits are divided by T before the softmax. T < 1 sharpens the
  distribution (safer, more repetitive), T > 1 flattens it (wilder); T = 0 is the
  limit, greedy decoding: always the most likely token.
* top-k: keep the k most likely tokens, whatever their probabilities.
* top-p ("nucleus sampling", Holtzman et al. 2019): keep the smallest set of most
  likely tokens whose probabilities add up to at least p. Where the model is sure,
  that is one or two tokens; where many continuations are plausible, many. For
  probabilities 0.5, 0.3, 0.15, 0.05 and p = 0.75: 0.5 alone is short of 0.75,
  0.5 + 0.3 reaches it, so the nucleus is the first two tokens.

Tokens left out get a logit of -inf, a probability of 0. Both filters may be used
together (top-k first, then top-p on what is left), as in Hugging Face's `generate`.
"""

import math

import torch
import torch.nn.functional as F


def top_k_filter(logits, k):
    """(B, vocab) logits with all but the k highest of each row set to -inf."""
    kth = torch.topk(logits, min(k, logits.shape[-1])).values[:, -1:]  # (B, 1): the k-th highest
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits, p):
    """(B, vocab) logits with the tokens outside each row's nucleus (see above) set to -inf."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = F.softmax(sorted_logits, dim=-1)
    # A token is in the nucleus when the tokens ranked above it hold less than p: the
    # token that reaches p is kept, and the most likely token always is.
    mass_before = probs.cumsum(dim=-1) - probs
    outside = mass_before >= p
    outside[:, 0] = False  # even for a p that rounds to 0 in float32 (1e-300): the top token stays
    sorted_logits = sorted_logits.masked_fill(outside, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)  # back in vocabulary order


def check_settings(temperature=1.0, top_k=None, top_p=None):
    """A ValueError for settings that cannot describe a draw (the CLI checks them as it parses)."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")
    if top_k is not None and not (isinstance(top_k, int) and top_k >= 0):
        raise ValueError(f"top_k must be an integer >= 0 (0 or None: off), got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1] (1: off), got {top_p!r}")


def next_token(logits, temperature=1.0, top_k=None, top_p=None, generator=None, vocab_size=None):
    """(B, 1) ids drawn from (B, vocab) logits; temperature 0: the most likely token.

    vocab_size: only ids below it are drawn. A model's embedding matrix may have more rows
    than its tokenizer has ids (padded to 50,304 = 393 x 128 for faster matrix products):
    the extra rows are no token, and an id drawn there could not be decoded.
    """
    check_settings(temperature, top_k, top_p)
    if vocab_size is not None and vocab_size < logits.shape[-1]:
        logits = logits[:, :vocab_size]  # (B, vocab_size): the ids the tokenizer knows
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    # The highest logit first brought to 0: the scores are then <= 0, so dividing by a tiny
    # temperature (1e-40) gives 0 and -inf (the greedy limit), never inf - inf = NaN.
    logits = logits.float()
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    if top_k:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)

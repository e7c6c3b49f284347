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
    sorted_logits = sorted_logits.masked_fill(mass_before >= p, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)  # back in vocabulary order


def next_token(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """(B, 1) ids drawn from (B, vocab) logits; temperature 0: the most likely token."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)

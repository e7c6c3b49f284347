"""dropout.py: masks from 32-bit words keep each entry with probability 1 - p, are seeded
and resumable, and the module is nn.Dropout's: x * mask / (1 - p) in training, x in eval."""

import pytest
import torch

from gpt2.dropout import WORD_BITS, Dropout, dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_probability(p):
    """The kept fraction of 4M entries is 1 - p within 5 standard deviations, and the
    threshold's own rounding is below 2^-32."""
    torch.manual_seed(0)
    n = 1 << 22
    kept = keep_mask((n,), p, "cpu").double().mean().item()
    assert abs(kept - (1 - p)) <= 5 * ((p * (1 - p)) / n) ** 0.5
    assert abs(round((1 - p) * 2**WORD_BITS) / 2**WORD_BITS - (1 - p)) <= 2.0**-32


def test_words_are_uniform_over_31_bits():
    """What the threshold assumes: random_() on int32 draws from [0, 2^31), both halves alike."""
    torch.manual_seed(1)
    words = torch.empty(1 << 20, dtype=torch.int32).random_()
    assert words.min().item() >= 0
    assert abs((words >= 2**30).double().mean().item() - 0.5) < 5 * 0.5 / 2**10


def test_same_seed_same_masks_and_resume_from_the_random_state():
    torch.manual_seed(3)
    first = keep_mask((7, 50), 0.1, "cpu")
    state = torch.get_rng_state()  # what a checkpoint saves (checkpoint.py)
    second = keep_mask((7, 50), 0.1, "cpu")
    torch.manual_seed(3)
    assert torch.equal(keep_mask((7, 50), 0.1, "cpu"), first)  # the same seed: the same masks
    torch.set_rng_state(state)
    assert torch.equal(keep_mask((7, 50), 0.1, "cpu"), second)  # resumed: the next mask exactly
    assert not torch.equal(first, second)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_is_x_times_mask_over_keep_rate_and_its_gradient(dtype):
    x = torch.randn(4, 9, 16).to(dtype).requires_grad_()
    torch.manual_seed(5)
    y = dropout(x, 0.25, training=True)
    torch.manual_seed(5)
    mask = keep_mask(x.shape, 0.25, "cpu")
    assert y.dtype == dtype
    assert torch.equal(y, torch.where(mask, x.detach(), 0.0).mul_(1 / 0.75))
    (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert torch.equal(dx, torch.where(mask, torch.ones_like(x), 0.0).mul_(1 / 0.75))


def test_module_in_eval_mode_and_at_zero_is_the_identity():
    x = torch.randn(3, 5)
    module = Dropout(0.5).eval()
    assert module(x) is x
    assert Dropout(0.0).train()(x) is x
    assert "p=0.5" in repr(module)
    with pytest.raises(ValueError):
        Dropout(1.0)


def test_p_zero_keeps_everything():
    """round(1 x 2^31) does not fit an int32: compared as one it would wrap and drop everything."""
    assert keep_mask((1000,), 0.0, "cpu").all()
    assert keep_mask((1000,), 1e-12, "cpu").all()

"""The proof that gpt2/model.py is GPT-2: same logits and loss as transformers."""

import json
import os
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TINY, deny_open, hf_model, make_unreadable, save_hf
from gpt2.errors import UserError
from gpt2.model import GPT2, MLP
from gpt2.config import GPT2Config
from gpt2.weights import expected_shapes, load_checkpoint, load_into, read_safetensors, save_checkpoint, to_hf

CONFIGS = [
    TINY,
    dict(vocab_size=1000, n_positions=32, n_embd=48, n_layer=3, n_head=3, layer_norm_epsilon=1e-6),
    dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12),  # GPT-2 124M
]


def reference(model, ids):
    with torch.no_grad():
        out = model(ids, labels=ids)
    return out.logits, out.loss


@pytest.mark.parametrize("shape", CONFIGS, ids=["tiny", "odd", "124M"])
def test_logits_and_loss_match_transformers(tmp_path, shape):
    hf = hf_model(**shape)
    path = save_hf(hf, tmp_path / "ckpt", with_tokenizer=False)
    ours = load_checkpoint(path).eval()
    ids = torch.randint(0, shape["vocab_size"], (2, 16 if shape["n_layer"] == 12 else 24), generator=torch.Generator().manual_seed(1))
    want_logits, want_loss = reference(hf, ids)
    with torch.no_grad():
        logits, loss = ours(ids, labels=ids)
    assert (logits - want_logits).abs().max().item() <= 1e-5
    assert abs(loss.item() - want_loss.item()) <= 1e-5



@pytest.mark.parametrize("shape", CONFIGS[:2], ids=["tiny", "odd"])
def test_mlp_gelu_is_tanh(shape):
    """The MLP's GELU is transformers' gelu_new (the tanh approximation), not the exact erf GELU.

    The parity test above catches an erf GELU only at the 124M shape: in the tiny random
    models the pre-activations stay near 0, where the two GELUs agree far below its 1e-5.
    Here every weight is N(0, 1), so the pre-activations spread with a std of about 6
    (the two GELUs differ by up to 4.7e-4 near |x| = 2.7), compared in float64.
    Checked: with model.py's GELU swapped for F.gelu(x) (erf), both cases fail by ~7e-3.
    """
    from transformers.activations import NewGELUActivation

    torch.manual_seed(0)
    mlp = MLP(GPT2Config(**shape)).double().eval()
    with torch.no_grad():
        for p in mlp.parameters():
            p.normal_(0, 1)
    x = torch.randn(4, 8, shape["n_embd"], dtype=torch.float64)
    with torch.no_grad():
        pre = mlp.c_fc(x)
        want = mlp.c_proj(NewGELUActivation()(pre))
        erf = mlp.c_proj(torch.nn.functional.gelu(pre))
        got = mlp(x)
    assert ((pre.abs() > 1) & (pre.abs() < 4)).sum() > 100  # where tanh and erf GELU differ most
    assert (erf - want).abs().max().item() > 1e-3  # the wrong GELU would be caught by far
    assert (got - want).abs().max().item() <= 1e-10

@pytest.mark.parametrize("mask_dtype", [torch.float32, torch.bool])
def test_original_openai_layout_with_mask_buffers(tmp_path, mask_dtype):
    """The openai-community/gpt2 file: no `transformer.` prefix, h.N.attn.bias masks, no lm_head.
    The masks are skipped, whatever their dtype."""
    hf = hf_model(**TINY)
    n = TINY["n_positions"]
    tensors = {k.removeprefix("transformer."): v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    for i in range(TINY["n_layer"]):
        tensors[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n).to(mask_dtype)
        tensors[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    d = tmp_path / "orig"
    d.mkdir()
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    hf.config.to_json_file(str(d / "config.json"))
    ours = load_checkpoint(str(d)).eval()
    ids = torch.randint(0, 50257, (2, 20))
    with torch.no_grad():
        assert (ours(ids)[0] - reference(hf, ids)[0]).abs().max().item() <= 1e-5


def test_save_then_transformers_from_pretrained(tmp_path):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(3)
    ours = GPT2(GPT2Config(**TINY)).eval()
    save_checkpoint(ours, str(tmp_path / "out"))
    hf = GPT2LMHeadModel.from_pretrained(str(tmp_path / "out")).eval()
    ids = torch.randint(0, 50257, (3, 30))
    with torch.no_grad():
        a, _ = ours(ids)
        b = hf(ids).logits
    assert torch.equal(hf.lm_head.weight, hf.transformer.wte.weight)
    assert (a - b).abs().max().item() <= 1e-5
    # and back: the weights survive the round trip bit for bit
    again = load_checkpoint(str(tmp_path / "out"))
    for (k, v), (k2, v2) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


def test_generate_with_cache_matches_full_recompute(tiny_ckpt):
    model = load_checkpoint(tiny_ckpt).eval()
    prompt = torch.randint(0, 50257, (2, 5))
    out = model.generate(prompt, max_new_tokens=8, temperature=0)
    # greedy without a cache: feed the whole sequence every step
    ids = prompt
    for _ in range(8):
        ids = torch.cat([ids, model(ids)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ids)
    g = lambda: torch.Generator().manual_seed(7)
    a = model.generate(prompt, 6, temperature=0.8, top_k=20, generator=g())
    b = model.generate(prompt, 6, temperature=0.8, top_k=20, generator=g())
    assert torch.equal(a, b)


# --- bad checkpoints: one line naming the file and the problem ----------------------

def one_line(excinfo):
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_missing_directory(tmp_path):
    with pytest.raises(UserError) as e:
        load_checkpoint(str(tmp_path / "nope"))
    assert "no such directory" in one_line(e)


def test_truncated_and_foreign_files(tiny_ckpt):
    path = os.path.join(tiny_ckpt, "model.safetensors")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(UserError) as e:
        load_checkpoint(tiny_ckpt)
    assert "model.safetensors" in one_line(e) and "safetensors" in one_line(e)
    open(path, "wb").write(b"PK\x03\x04 this is a zip, not safetensors")
    with pytest.raises(UserError) as e:
        load_checkpoint(tiny_ckpt)
    assert "model.safetensors" in one_line(e)


def test_wrong_shape_tensor(tiny_ckpt):
    path = os.path.join(tiny_ckpt, "model.safetensors")
    t = load_file(path)
    t["transformer.h.1.mlp.c_fc.bias"] = torch.zeros(7)
    save_file(t, path)
    with pytest.raises(UserError) as e:
        load_checkpoint(tiny_ckpt)
    msg = one_line(e)
    assert "h.1.mlp.c_fc.bias" in msg and "(7,)" in msg and "(128,)" in msg


def test_config_that_does_not_match_weights(tiny_ckpt):
    cfg_path = os.path.join(tiny_ckpt, "config.json")
    cfg = json.load(open(cfg_path))
    cfg["n_layer"] = 3
    json.dump(cfg, open(cfg_path, "w"))
    with pytest.raises(UserError) as e:
        load_checkpoint(tiny_ckpt)
    msg = one_line(e)
    assert "config.json" in msg and "h.2" in msg
    cfg["n_layer"], cfg["n_embd"] = 2, 64
    json.dump(cfg, open(cfg_path, "w"))
    with pytest.raises(UserError) as e:
        load_checkpoint(tiny_ckpt)
    assert "shape" in one_line(e)


def test_broken_config_json(tiny_ckpt):
    open(os.path.join(tiny_ckpt, "config.json"), "w").write("{not json")
    with pytest.raises(UserError) as e:
        load_checkpoint(tiny_ckpt)
    assert "config.json" in one_line(e) and "JSON" in one_line(e)


def test_config_with_a_zero_or_missing_size(tiny_ckpt):
    cfg_path = os.path.join(tiny_ckpt, "config.json")
    cfg = json.load(open(cfg_path))
    cfg["n_head"] = 0  # used to end in ZeroDivisionError (n_embd % n_head)
    json.dump(cfg, open(cfg_path, "w"))
    with pytest.raises(UserError) as e:
        load_checkpoint(tiny_ckpt)
    assert "config.json" in one_line(e) and "n_head" in one_line(e)


def test_kv_cache_in_training_mode_with_checkpointing(tiny_ckpt):
    """--checkpointing must not bypass the KV cache (generate() in training mode): a
    cache that missed the prompt would restart the positions at 0 and forget the prompt."""
    from gpt2.model import KVCache

    model = load_checkpoint(tiny_ckpt, dropout=0.0)
    model.checkpointing = True
    model.train()  # dropout 0: training mode changes nothing else
    ids = torch.randint(0, 50257, (2, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = model.hidden_states(ids)[:, -1]
        caches = [KVCache() for _ in model.transformer.h]
        model.hidden_states(ids[:, :5], caches)  # the prompt fills the caches ...
        got = model.hidden_states(ids[:, 5:], caches)[:, -1]  # ... and the next token reads them
    assert all(len(c) == 6 for c in caches)
    assert (got - want).abs().max().item() <= 1e-5


# --- bad tensors: refused from the header, or before the model is built --------------

@pytest.fixture
def no_model(monkeypatch):
    """Any attempt to build a GPT2 fails the test: the file must be refused before."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("a GPT2 was built for a checkpoint that should have been refused")
    monkeypatch.setattr(GPT2, "__init__", refuse)


def replace_tensor(directory, name, make):
    """Rewrite model.safetensors with tensor `name` replaced by make(old)."""
    path = os.path.join(directory, "model.safetensors")
    t = load_file(path)
    t[name] = make(t[name])
    save_file(t, path)
    return path


def test_expected_shapes_are_the_models_own():
    """weights.expected_shapes (what a header is compared with) is GPT2's state_dict in HF's layout."""
    cfg = GPT2Config(**CONFIGS[1])
    ours = {k.removeprefix("transformer."): tuple(t.shape) for k, t in to_hf(GPT2(cfg)).items()}
    assert expected_shapes(cfg) == ours


def test_mismatch_is_found_in_the_header(tiny_ckpt, no_model, monkeypatch):
    """A config that does not match its file: refused before the model is built or the data read."""
    import gpt2.weights

    monkeypatch.setattr(gpt2.weights, "load_file", lambda *a, **k: pytest.fail("the tensors were read"))
    cfg_path = os.path.join(tiny_ckpt, "config.json")
    cfg = json.load(open(cfg_path))
    for change, words in [(dict(n_layer=3), "12 missing (e.g. h.2."), (dict(n_layer=1), "unexpected"),
                          (dict(n_embd=64), "(192,)"), (dict(vocab_size=50000), "(50000, 32)"),
                          (dict(n_positions=128), "(128, 32)")]:
        json.dump({**cfg, **change}, open(cfg_path, "w"))
        with pytest.raises(UserError) as e:
            load_checkpoint(tiny_ckpt)
        assert "config.json" in one_line(e) and words in one_line(e), change


NOT_FLOAT = [(torch.int32, "I32"), (torch.int64, "I64"), (torch.int8, "I8"), (torch.uint8, "U8"),
             (torch.bool, "BOOL"), (torch.complex64, "C64"), (torch.float8_e4m3fn, "F8_E4M3")]


@pytest.mark.parametrize("dtype, name", NOT_FLOAT, ids=[n for _, n in NOT_FLOAT])
def test_non_float_tensors_are_refused(tiny_ckpt, no_model, dtype, name):
    """copy_ would cast them silently (an int32 file once evaluated to eval_loss 674691, exit 0)."""
    path = replace_tensor(tiny_ckpt, "transformer.h.0.ln_1.weight", lambda t: t.to(dtype))
    with pytest.raises(UserError) as e:
        load_checkpoint(tiny_ckpt)
    msg = one_line(e)
    assert "model.safetensors" in msg and "h.0.ln_1.weight" in msg and name in msg
    # The trainer's path (load_into on tensors in memory) refuses them too.
    model = SimpleNamespace(config=GPT2Config(**TINY))  # the check reads only the config
    with pytest.raises(UserError) as e:
        load_into(model, read_safetensors(path), path)
    assert "h.0.ln_1.weight" in one_line(e) and str(dtype).removeprefix("torch.") in one_line(e)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_nan_and_inf_are_refused(tiny_ckpt, no_model, bad, dtype):
    def poison(t):
        t = t.to(dtype).clone()
        t[3, 5] = bad
        return t

    path = replace_tensor(tiny_ckpt, "transformer.h.1.attn.c_attn.weight", poison)
    with pytest.raises(UserError) as e:
        load_checkpoint(tiny_ckpt)
    msg = one_line(e)
    assert "model.safetensors" in msg and "h.1.attn.c_attn.weight" in msg and "NaN or infinite" in msg


def test_nan_refused_by_load_into(tiny_ckpt):
    path = replace_tensor(tiny_ckpt, "transformer.ln_f.bias", lambda t: torch.full_like(t, float("nan")))
    with pytest.raises(UserError) as e:
        load_into(GPT2(GPT2Config(**TINY)), read_safetensors(path), path)
    assert "ln_f.bias" in one_line(e) and "32 NaN" in one_line(e)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_load(tiny_ckpt, dtype):
    path = os.path.join(tiny_ckpt, "model.safetensors")
    tensors = {k: t.to(dtype) for k, t in load_file(path).items()}
    save_file(tensors, path)
    model = load_checkpoint(tiny_ckpt)
    got = model.transformer.wte.weight
    assert got.dtype == torch.float32 and torch.equal(got, tensors["transformer.wte.weight"].float())


def test_the_same_tensor_under_both_layouts(tiny_ckpt, no_model):
    path = os.path.join(tiny_ckpt, "model.safetensors")
    t = load_file(path)
    t["wte.weight"] = t["transformer.wte.weight"].clone()
    save_file(t, path)
    with pytest.raises(UserError) as e:
        load_checkpoint(tiny_ckpt)
    assert "wte.weight" in one_line(e) and "both" in one_line(e)


def test_weights_file_is_a_directory(tiny_ckpt, no_model):
    path = os.path.join(tiny_ckpt, "model.safetensors")
    os.remove(path)
    os.mkdir(path)
    with pytest.raises(UserError) as e:
        load_checkpoint(tiny_ckpt)
    assert "model.safetensors" in one_line(e) and "directory" in one_line(e)


def test_weights_permission_denied(tiny_ckpt, no_model, monkeypatch):
    path = os.path.join(tiny_ckpt, "model.safetensors")
    deny_open(monkeypatch, path)  # simulated: the tests may run as root
    with pytest.raises(UserError) as e:
        load_checkpoint(tiny_ckpt)
    assert "model.safetensors" in one_line(e) and "permission denied" in one_line(e)


def test_weights_permission_denied_for_real(tiny_ckpt, no_model):
    path = os.path.join(tiny_ckpt, "model.safetensors")
    make_unreadable(path)
    with pytest.raises(UserError) as e:
        load_checkpoint(tiny_ckpt)
    assert "permission denied" in one_line(e)


@pytest.mark.parametrize("chunks", [(5, 3, 4), (1, 7, 4), (6, 6)])
def test_chunked_prefill_with_a_kv_cache_matches_the_full_forward(tiny_ckpt, chunks):
    """Several new tokens fed after a non-empty cache get the offset causal mask: token t of a
    chunk sees the cache and the chunk up to itself, never its own future."""
    from gpt2.model import KVCache

    model = load_checkpoint(tiny_ckpt).eval()
    ids = torch.randint(0, 50257, (2, sum(chunks)), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = model.hidden_states(ids)  # (2, T, C), the ordinary causal forward
        caches = [KVCache() for _ in model.transformer.h]
        got, start = [], 0
        for n in chunks:
            got.append(model.hidden_states(ids[:, start:start + n], caches))
            start += n
    assert (torch.cat(got, dim=1) - want).abs().max().item() <= 1e-5

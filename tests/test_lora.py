"""LoRA (gpt2/lora.py): what it trains, what it leaves alone, and that others can read what it writes."""

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TINY, hf_model, save_hf, train_loop, write_text
from gpt2.config import GPT2Config
from gpt2.errors import UserError
from gpt2.evaluation import evaluate
from gpt2.lora import (LoRALinear, add_lora, load_adapter, lora_layers, merged_model, read_adapter_config,
                       save_adapter, trainable_parameters)
from gpt2.model import GPT2
from gpt2.trainer import TrainConfig
from gpt2.weights import load_checkpoint, save_checkpoint

ALL = ("c_attn", "c_proj", "c_fc")
IDS = torch.randint(0, 50257, (2, 24), generator=torch.Generator().manual_seed(1))


def base_checkpoint(tmp_path):
    """A tiny random GPT-2 written by transformers: the "pretrained" model."""
    return save_hf(hf_model(**TINY), tmp_path / "base", with_tokenizer=False)


def adapted(base, rank=4, alpha=8, dropout=0.0, targets=ALL, seed=0):
    """The base model with LoRA, B randomised as if trained (B = 0 would hide every mistake)."""
    model = load_checkpoint(base)
    torch.manual_seed(seed)  # A's random init: the same A for the same seed
    add_lora(model, rank, alpha, dropout, targets)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.05)
    return model.eval()


def logits(model, ids=IDS):
    with torch.no_grad():
        out = model(ids)
    return out[0] if isinstance(out, tuple) else out.logits


def one_line(excinfo):
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


# --- the adapter at rest: nothing changes until it is trained -----------------------

def test_untrained_adapter_leaves_logits_unchanged(tmp_path):
    base = base_checkpoint(tmp_path)
    plain = load_checkpoint(base).eval()
    model = add_lora(load_checkpoint(base), rank=8, dropout=0.1).eval()
    assert torch.equal(logits(model), logits(plain))  # B = 0: bit for bit
    for _, layer in lora_layers(model):  # A: nn.Linear(in, r)'s init, U(-1/sqrt(in), 1/sqrt(in)); B: zeros
        r, fan_in = layer.lora_A.shape
        assert r == 8 and layer.lora_B.shape == (layer.base_layer.out_features, 8) and not layer.lora_B.any()
        assert 0 < layer.lora_A.abs().max().item() <= fan_in ** -0.5 and layer.lora_A.std() > 0.4 * fan_in ** -0.5


@pytest.mark.parametrize("targets, paths", [
    (ALL, {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}),  # "c_proj" names two
    (("c_attn",), {"attn.c_attn"}),
    ("attn.c_proj,c_fc", {"attn.c_proj", "mlp.c_fc"}),
])
def test_targets_freeze_everything_else(targets, paths):
    torch.manual_seed(0)
    model = add_lora(GPT2(GPT2Config(**TINY)), rank=2, targets=targets)
    wrapped = {name.split(".", 3)[3] for name, _ in lora_layers(model)}  # "transformer.h.0.attn.c_attn" -> "attn.c_attn"
    assert wrapped == paths and len(lora_layers(model)) == len(paths) * TINY["n_layer"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    keys = set(model.state_dict())
    for name, _ in lora_layers(model):  # the frozen layer keeps its place, one level down
        assert {f"{name}.base_layer.weight", f"{name}.base_layer.bias", f"{name}.lora_A", f"{name}.lora_B"} <= keys
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied


def test_parameter_counts_of_gpt2_124m():
    """The numbers in lora.py's docstring, on the meta device (shapes only, no memory)."""
    with torch.device("meta"):
        full = GPT2(GPT2Config())
        assert trainable_parameters(full) == (124_439_808, 124_439_808)
        model = add_lora(GPT2(GPT2Config()), rank=8, targets=ALL)
        attn_only = add_lora(GPT2(GPT2Config()), rank=8, targets="c_attn")
    assert trainable_parameters(model) == (1_179_648, 124_439_808 + 1_179_648)
    assert trainable_parameters(attn_only)[0] == 294_912


# --- training moves the adapters and nothing else -----------------------------------

def test_training_changes_only_the_adapters(tmp_path):
    model = add_lora(load_checkpoint(base_checkpoint(tmp_path)), rank=4, alpha=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    blocks = np.random.default_rng(0).integers(0, 50257, size=(8, 16)).astype(np.uint16)
    cfg = TrainConfig(lr=1e-2, max_steps=3, batch_size=2, weight_decay=0.1, progress=False, log_every=100)
    t, _, _, _ = train_loop(model, blocks, cfg)
    for k, v in model.state_dict().items():
        if k.endswith(("lora_A", "lora_B")):
            # B moves at step 1; A by weight decay, then by its gradient (zero while B = 0)
            assert not torch.equal(v, before[k]), k
        else:
            assert torch.equal(v, before[k]), k  # frozen: bit for bit
    # AdamW keeps moments for the adapters only: the frozen weights cost no optimizer memory.
    adapters = {id(p) for _, layer in lora_layers(model) for p in (layer.lora_A, layer.lora_B)}
    assert {id(p) for p in t.optimizer.state} == adapters
    assert {id(p) for g in t.optimizer.param_groups for p in g["params"]} == adapters
    assert all(p.grad is None for n, p in model.named_parameters() if not n.endswith(("lora_A", "lora_B")))


def test_dropout_only_in_training_mode(tmp_path):
    base = base_checkpoint(tmp_path)
    model = adapted(base, dropout=0.5)  # the model's own dropouts are 0: only LoRA's is left
    reference = adapted(base, dropout=0.0)  # the same A and B (same seeds), no dropout
    assert torch.equal(logits(model), logits(reference))  # eval mode: no dropout
    model.train()
    torch.manual_seed(0)
    a, b = logits(model), logits(model)
    assert not torch.allclose(a, logits(reference), atol=1e-4) and not torch.allclose(a, b, atol=1e-4)


# --- merging: an ordinary GPT-2 again ------------------------------------------------

def test_merged_weights_are_w_plus_scale_b_a(tmp_path):
    model = adapted(base_checkpoint(tmp_path), rank=4, alpha=16)
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    merged = merged_model(model)
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert set(merged.state_dict()) == set(GPT2(GPT2Config(**TINY)).state_dict())
    assert merged.lm_head.weight is merged.transformer.wte.weight
    for path, layer in lora_layers(model):
        assert layer.scale == 4.0
        want = layer.base_layer.weight + 4.0 * layer.lora_B @ layer.lora_A  # (out, in)
        got = merged.get_submodule(path)
        assert type(got) is torch.nn.Linear
        assert (got.weight - want).abs().max().item() <= 1e-6, path
        assert torch.equal(got.bias, layer.base_layer.bias)
    assert (logits(merged) - logits(model)).abs().max().item() <= 1e-5
    # the training model is untouched: still LoRA, same tensors, still frozen
    assert len(lora_layers(model)) == 8 and not model.transformer.wte.weight.requires_grad
    for k, v in model.state_dict().items():
        assert torch.equal(v, state_before[k]), k


def test_merged_checkpoint_opens_in_transformers_and_here(tmp_path):
    from transformers import GPT2LMHeadModel

    model = adapted(base_checkpoint(tmp_path))
    out = str(tmp_path / "merged")
    save_checkpoint(merged_model(model), out)
    want = logits(model)
    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    assert (logits(hf) - want).abs().max().item() <= 1e-5
    assert (logits(load_checkpoint(out).eval()) - want).abs().max().item() <= 1e-5
    # eval loss: ours (evaluation.py, on the unmerged model) against transformers' on the merged file
    blocks = np.random.default_rng(3).integers(0, 50257, size=(4, 20)).astype(np.uint16)
    ours = evaluate(model, blocks, batch_size=2, device=torch.device("cpu"), precision="fp32")["eval_loss"]
    ids = torch.from_numpy(blocks.astype(np.int64))
    labels = ids.clone()
    labels[:, 0] = -100  # transformers 5.x would count position 0 in the mean (see test_train.py)
    with torch.no_grad():
        theirs = hf(ids, labels=labels).loss.item()
    assert abs(ours - theirs) <= 2e-4


# --- the adapter files: ours, then peft's --------------------------------------------

def test_adapter_round_trip(tmp_path):
    base = base_checkpoint(tmp_path)
    model = adapted(base, rank=4, alpha=8, targets="c_attn,mlp.c_proj")
    save_adapter(model, str(tmp_path / "adapter"), base_model=base)
    assert sorted(os.listdir(tmp_path / "adapter")) == ["adapter_config.json", "adapter_model.safetensors"]
    tensors = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert tensors["base_model.model.transformer.h.1.attn.c_attn.lora_A.weight"].shape == (4, 32)
    assert tensors["base_model.model.transformer.h.1.attn.c_attn.lora_B.weight"].shape == (96, 4)
    assert tensors["base_model.model.transformer.h.1.mlp.c_proj.lora_A.weight"].shape == (4, 128)
    assert len(tensors) == 2 * 2 * TINY["n_layer"]

    config = read_adapter_config(str(tmp_path / "adapter"))
    fresh = add_lora(load_checkpoint(base), **vars(config)).eval()
    assert not torch.equal(logits(fresh), logits(model))  # a fresh adapter is not the trained one
    load_adapter(fresh, str(tmp_path / "adapter"))
    assert torch.equal(logits(fresh), logits(model))


def test_adapter_loads_in_peft(tmp_path):
    pytest.importorskip("peft")
    from peft import PeftModel
    from transformers import GPT2LMHeadModel

    base = base_checkpoint(tmp_path)
    model = adapted(base, rank=4, alpha=16, dropout=0.1)
    save_adapter(model, str(tmp_path / "adapter"), base_model=base)
    peft_model = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(base), str(tmp_path / "adapter")).eval()
    assert (logits(peft_model) - logits(model)).abs().max().item() <= 1e-5
    # peft's own merge (which transposes B @ A for the Conv1D weights) agrees with ours
    theirs = peft_model.merge_and_unload()
    out = str(tmp_path / "merged")
    save_checkpoint(merged_model(model), out)
    ours = load_file(os.path.join(out, "model.safetensors"))
    compared = 0
    for k, v in theirs.state_dict().items():
        if k in ours:  # all but lm_head (tied, not stored) and the mask buffers
            assert (ours[k] - v).abs().max().item() <= 1e-6, k
            compared += k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))
    assert compared == 4 * TINY["n_layer"]


# --- one-line errors -----------------------------------------------------------------

@pytest.mark.parametrize("kwargs, words", [
    (dict(rank=0), "rank"),
    (dict(rank=-3), "rank"),
    (dict(rank=2.5), "rank"),
    (dict(rank=4, alpha=0), "alpha"),
    (dict(rank=4, dropout=1.0), "dropout"),
    (dict(rank=4, targets=("c_attn", "q_proj")), "'q_proj'"),
    (dict(rank=4, targets="wte"), "'wte'"),
    (dict(rank=4, targets=""), "target"),
])
def test_bad_settings(kwargs, words):
    model = GPT2(GPT2Config(**TINY))
    with pytest.raises(UserError) as e:
        add_lora(model, **kwargs)
    assert words in one_line(e)
    assert all(p.requires_grad for p in model.parameters())  # refused before anything was frozen


def test_lora_twice_is_refused():
    model = add_lora(GPT2(GPT2Config(**TINY)), rank=2)
    with pytest.raises(UserError) as e:
        add_lora(model, rank=2)
    assert "already" in one_line(e)


def test_bad_adapter_directories(tmp_path):
    base = base_checkpoint(tmp_path)
    d = str(tmp_path / "adapter")
    save_adapter(adapted(base, rank=4, alpha=8, targets=ALL), d)

    def load_into(**settings):
        with pytest.raises(UserError) as e:
            load_adapter(add_lora(load_checkpoint(base), **{"rank": 4, "alpha": 8, "targets": ALL, **settings}), d)
        return one_line(e)

    assert "rank 4" in load_into(rank=2) and "rank 2" in load_into(rank=2)
    assert "alpha 16" in load_into(alpha=16)
    assert "targets" in load_into(targets="c_attn")
    # "c_proj" = "attn.c_proj" + "mlp.c_proj": the same layers, so it loads
    load_adapter(add_lora(load_checkpoint(base), 4, 8, targets="c_attn,attn.c_proj,mlp.c_proj,c_fc"), d)

    weights = os.path.join(d, "adapter_model.safetensors")
    tensors = load_file(weights)
    tensors["base_model.model.transformer.h.0.mlp.c_fc.lora_B.weight"] = torch.zeros(7, 4)
    save_file(tensors, weights)
    msg = load_into()
    assert "h.0.mlp.c_fc.lora_B.weight" in msg and "(7, 4)" in msg and "(128, 4)" in msg
    del tensors["base_model.model.transformer.h.1.attn.c_attn.lora_A.weight"]
    save_file(tensors, weights)
    assert "1 adapter tensors missing" in load_into()
    open(weights, "wb").write(b"not safetensors")
    assert "adapter_model.safetensors" in load_into()
    os.remove(weights)
    assert "no such file" in load_into()

    config_path = os.path.join(d, "adapter_config.json")
    config = json.load(open(config_path))
    json.dump({**config, "use_rslora": True}, open(config_path, "w"))
    assert "use_rslora" in load_into()
    os.remove(config_path)
    assert "adapter_config.json" in load_into() and "no such file" in load_into()


# --- through train.py: save, evaluate, resume, the range test, the sweep --------------

@pytest.fixture
def lora_run(tmp_path):
    """(common train.py flags for a rank-4 LoRA run of a tiny model, the tmp dir)."""
    base = save_hf(hf_model(**TINY), tmp_path / "base")
    text = write_text(tmp_path / "train.txt", 200)
    return ["--model", base, "--train-file", text, "--block-size", "32", "--lora", "4", "--lora-alpha", "8",
            "--lr", "1e-2", "--dropout", "0.1", "--no-progress", "--cache-dir", str(tmp_path / "cache")], tmp_path


def test_train_py_with_lora_saves_a_merged_model_and_the_adapter(lora_run, capsys):
    import evaluate as _  # noqa: F401  (evaluate.py must import cleanly next to train.py)
    import train

    common, tmp_path = lora_run
    out = tmp_path / "out"
    assert train.main(common + ["--max-steps", "4", "--eval-every", "2", "--save-best", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "restored the best checkpoint" in printed  # from best/'s adapter
    assert "parameters: 4,096 trainable of " in printed  # 2 blocks x 4 (128 + 64 + 160 + 160): rank x (in + out)
    for f in ("model.safetensors", "config.json", "vocab.json", "merges.txt", "adapter/adapter_model.safetensors",
              "adapter/adapter_config.json", "eval_results.json", "best/adapter/adapter_model.safetensors"):
        assert (out / f).is_file(), f
    for f in ("adapter_model.safetensors", "adapter_config.json"):  # not beside the merged model (issue #19)
        assert not (out / f).exists() and not (out / "best" / f).exists(), f
    # The merged checkpoint is a plain GPT-2 whose eval_loss is the adapted model's.
    merged = load_checkpoint(str(out)).eval()
    adapter = read_adapter_config(str(out / "adapter"))
    again = add_lora(load_checkpoint(common[1]), adapter.rank, adapter.alpha, 0.0, adapter.targets)
    load_adapter(again, str(out / "adapter"))
    blocks = np.random.default_rng(1).integers(0, 50257, size=(4, 32))
    want = json.loads((out / "eval_results.json").read_text())
    a = evaluate(merged, blocks, 4, torch.device("cpu"), "fp32")["eval_loss"]
    b = evaluate(again.eval(), blocks, 4, torch.device("cpu"), "fp32")["eval_loss"]
    assert abs(a - b) <= 1e-5 and want["eval_loss"] > 0


def test_a_lora_run_opens_in_transformers_and_peft_as_the_model_it_trained(lora_run):
    """Issue #19: OUT in transformers (peft installed) is the merged model, not the merged model plus
    the adapter a second time; OUT/adapter in peft, on the base model, is the same model."""
    pytest.importorskip("peft")
    from peft import PeftModel
    from transformers import GPT2LMHeadModel

    import train

    common, tmp_path = lora_run
    out = tmp_path / "out"
    assert train.main(common + ["--max-steps", "3", "--precision", "fp32", "--out", str(out)]) == 0
    adapter = read_adapter_config(str(out / "adapter"))
    trained = add_lora(load_checkpoint(common[1]), adapter.rank, adapter.alpha, 0.0, adapter.targets)
    load_adapter(trained, str(out / "adapter"))
    want = logits(trained.eval())
    assert (logits(load_checkpoint(str(out)).eval()) - want).abs().max().item() <= 1e-4  # our merge
    assert (want - logits(load_checkpoint(common[1]).eval())).abs().max().item() > 1e-3  # it learnt something
    hf = GPT2LMHeadModel.from_pretrained(str(out)).eval()
    assert not any("lora" in name for name, _ in hf.named_parameters())  # no adapter attached
    assert (logits(hf) - want).abs().max().item() <= 1e-4
    peft_model = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(common[1]), str(out / "adapter")).eval()
    assert (logits(peft_model) - want).abs().max().item() <= 1e-4


def test_lora_resume_after_kill_is_bit_exact(lora_run):
    from conftest import INJECTED_TRAIN, run_python

    common, tmp_path = lora_run
    args = common + ["--max-steps", "6", "--save-every", "2", "--grad-accum", "2"]
    assert run_python("train.py", *args, "--out", tmp_path / "straight").returncode == 0
    p = run_python(INJECTED_TRAIN, *args, "--out", tmp_path / "killed", env={"KILL_AT": "4"})
    assert p.returncode != 0 and (tmp_path / "killed" / "resume.pt").is_file()
    p = run_python("train.py", *args, "--out", tmp_path / "killed", "--resume")
    assert p.returncode == 0, p.stderr
    for f in ("model.safetensors", "adapter/adapter_model.safetensors"):
        a, b = load_file(str(tmp_path / "straight" / f)), load_file(str(tmp_path / "killed" / f))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
    # Resuming with another rank is another run: refused in one line.
    p = run_python("train.py", *[x if x != "4" else "8" for x in args], "--out", tmp_path / "straight2")
    killed = run_python(INJECTED_TRAIN, *args, "--out", tmp_path / "k2", env={"KILL_AT": "2"})
    assert killed.returncode != 0
    other = list(args)
    other[other.index("--lora") + 1] = "8"
    p = run_python("train.py", *other, "--out", tmp_path / "k2", "--resume")
    assert p.returncode == 2 and "LoRA" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_lora_with_the_range_test_and_a_sweep(lora_run, capsys):
    import train

    common, tmp_path = lora_run
    assert train.main(common + ["--find-lr", "--find-lr-steps", "8", "--out", str(tmp_path / "find")]) == 0
    assert (tmp_path / "find" / "lr_find.csv").is_file()
    assert train.main(common[:common.index("--lr")] + common[common.index("--lr") + 2:] +
                      ["--lr", "1e-2,1e-3", "--max-steps", "2", "--out", str(tmp_path / "runs")]) == 0
    for d in ("lr-1e-2", "lr-1e-3"):
        assert (tmp_path / "runs" / d / "adapter" / "adapter_model.safetensors").is_file()

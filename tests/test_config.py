"""config.json: every mistake is one line naming the file and the key, and no model is built."""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, TINY, deny_open, hf_model, make_unreadable, save_hf
from gpt2.config import MAX_SIZE, PRESETS, GPT2Config
from gpt2.errors import UserError
from gpt2.model import GPT2
from gpt2.weights import load_checkpoint

DELETE = object()  # edit_config: remove the key


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One tiny checkpoint written by transformers; tests edit copies of it."""
    return save_hf(hf_model(**TINY), tmp_path_factory.mktemp("saved") / "tiny", with_tokenizer=False)


@pytest.fixture
def ckpt(saved, tmp_path):
    return str(shutil.copytree(saved, tmp_path / "ckpt"))


@pytest.fixture
def no_model(monkeypatch):
    """Any attempt to build a GPT2 fails the test: the config must be refused before."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("a GPT2 was built from a config that should have been refused")
    monkeypatch.setattr(GPT2, "__init__", refuse)


def edit_config(directory, **changes):
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    for k, v in changes.items():
        if v is DELETE:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    with open(path, "w") as f:
        json.dump(cfg, f)  # NaN and Infinity are written as JavaScript spells them; json.load reads them


def refused(directory) -> str:
    with pytest.raises(UserError) as e:
        load_checkpoint(directory)
    msg = str(e.value)
    assert "\n" not in msg and "config.json" in msg
    return msg


# --- each class of bad value ---------------------------------------------------------

SIZES = ["vocab_size", "n_positions", "n_embd", "n_layer", "n_head"]
NOT_SIZES = [0, -1, 1e12, 2.5, 4.0, "4", True, None, [4], {"n": 4}, 10**30]


@pytest.mark.parametrize("value", NOT_SIZES, ids=repr)
@pytest.mark.parametrize("key", SIZES)
def test_sizes_must_be_positive_integers(ckpt, no_model, key, value):
    edit_config(ckpt, **{key: value})
    msg = refused(ckpt)
    assert key in msg and "integer" in msg


@pytest.mark.parametrize("key", SIZES)
def test_sizes_have_an_upper_bound(ckpt, no_model, key):
    edit_config(ckpt, **{key: MAX_SIZE[key] + 1})
    msg = refused(ckpt)
    assert key in msg and f"{MAX_SIZE[key]:,}" in msg


@pytest.mark.parametrize("changes", [
    dict(n_layer=100000),                              # the adversarial pass's out-of-memory
    dict(n_layer=1024, n_embd=8192, n_head=64),        # each size allowed, 3.3 TB together
    dict(vocab_size=2**24, n_embd=2**16, n_head=64),
    dict(n_positions=2**20, n_embd=2**16, n_head=64, n_layer=8),
], ids=["n_layer=100000", "deep-and-wide", "big-vocab", "long-and-wide"])
def test_total_size_is_bounded(ckpt, no_model, changes):
    edit_config(ckpt, **changes)
    msg = refused(ckpt)
    assert any(k in msg for k in changes)


PROBABILITY_KEYS = ["embd_pdrop", "attn_pdrop", "resid_pdrop"]
NOT_PROBABILITIES = [5.0, 1.0, 1, -0.1, -1e-9, "x", "0.1", True, False, None, math.nan, math.inf, -math.inf, [0.1]]


@pytest.mark.parametrize("value", NOT_PROBABILITIES, ids=repr)
@pytest.mark.parametrize("key", PROBABILITY_KEYS)
def test_dropout_must_be_a_probability(ckpt, no_model, key, value):
    edit_config(ckpt, **{key: value})
    msg = refused(ckpt)
    assert key in msg and "[0, 1)" in msg


NOT_EPSILONS = ["abc", "1e-5", -1, -1e-5, 0, 0.0, 1e-300, math.nan, math.inf, -math.inf, 1.0, 2, True, None, {}]


@pytest.mark.parametrize("value", NOT_EPSILONS, ids=repr)
def test_layer_norm_epsilon_must_be_small_and_positive(ckpt, no_model, value):
    edit_config(ckpt, layer_norm_epsilon=value)
    assert "layer_norm_epsilon" in refused(ckpt)


@pytest.mark.parametrize("n_embd, n_head", [(32, 5), (32, 64), (30, 4)])
def test_n_embd_must_split_evenly_into_heads(ckpt, no_model, n_embd, n_head):
    edit_config(ckpt, n_embd=n_embd, n_head=n_head)
    msg = refused(ckpt)
    assert "n_embd" in msg and "n_head" in msg and "divisible" in msg


UNSUPPORTED = [
    ("activation_function", "relu"), ("activation_function", "gelu"), ("activation_function", "silu"),
    ("activation_function", None), ("activation_function", 1),
    ("n_inner", 64), ("n_inner", 127), ("n_inner", 128.0), ("n_inner", "128"), ("n_inner", 0), ("n_inner", True),
    ("scale_attn_weights", False), ("scale_attn_weights", None), ("scale_attn_weights", 1),
    ("scale_attn_weights", "true"),
    ("scale_attn_by_inverse_layer_idx", True), ("scale_attn_by_inverse_layer_idx", 1),
    ("add_cross_attention", True),
    ("model_type", "llama"), ("model_type", "GPT2"), ("model_type", None),
    ("tie_word_embeddings", False), ("tie_word_embeddings", 0),
]


@pytest.mark.parametrize("key, value", UNSUPPORTED, ids=lambda x: repr(x))
def test_unsupported_switches_are_refused(ckpt, no_model, key, value):
    """Each would load and then compute something other than what the weights were trained for."""
    edit_config(ckpt, **{key: value})
    msg = refused(ckpt)
    assert key in msg and "not supported" in msg


def test_the_message_names_the_supported_value(ckpt, no_model):
    edit_config(ckpt, activation_function="relu")
    msg = refused(ckpt)
    assert '"relu"' in msg and "gelu_new" in msg
    edit_config(ckpt, activation_function="gelu_new", n_inner=64)
    assert "128" in refused(ckpt)


def test_n_ctx_is_named_when_it_stands_for_n_positions(ckpt, no_model):
    edit_config(ckpt, n_positions=DELETE, n_ctx=1e12)
    assert "n_ctx" in refused(ckpt)


@pytest.mark.parametrize("key", ["n_layer", "n_head", "n_embd"])
def test_missing_size(ckpt, no_model, key):
    edit_config(ckpt, **{key: DELETE})
    assert f"missing {key}" in refused(ckpt)


# --- config.json that is not a JSON object -------------------------------------------

@pytest.mark.parametrize("content, words", [
    (b"[1, 2]", "not a JSON object"),
    (b"{not json", "JSON"),
    (b"[" * 100000, "JSON"),                       # deeper than the parser recurses
    (b'{"n_layer": ' + b"1" * 5000 + b"}", "JSON"),  # more digits than Python parses
    (b'{"n_layer": "\xff\xfe"}', "JSON"),           # not UTF-8
    (b"", "JSON"),
])
def test_not_a_json_object(ckpt, no_model, content, words):
    with open(os.path.join(ckpt, "config.json"), "wb") as f:
        f.write(content)
    assert words in refused(ckpt)


def test_config_json_is_a_directory(ckpt, no_model):
    os.remove(os.path.join(ckpt, "config.json"))
    os.mkdir(os.path.join(ckpt, "config.json"))
    assert "directory" in refused(ckpt)


def test_config_json_permission_denied(ckpt, no_model, monkeypatch):
    path = os.path.join(ckpt, "config.json")
    deny_open(monkeypatch, path)  # simulated: the tests may run as root
    assert "permission denied" in refused(ckpt)


def test_config_json_permission_denied_for_real(ckpt, no_model):
    path = os.path.join(ckpt, "config.json")
    make_unreadable(path)
    assert "permission denied" in refused(ckpt)


# --- what must still be accepted -----------------------------------------------------

def test_hf_configs_and_their_variants_load(ckpt):
    load_checkpoint(ckpt)  # as transformers wrote it
    edit_config(ckpt, activation_function="gelu_pytorch_tanh", n_inner=4 * TINY["n_embd"],
                resid_pdrop=0, layer_norm_epsilon=1e-12, n_positions=DELETE, n_ctx=TINY["n_positions"],
                some_future_key=math.nan, task_specific_params={"text-generation": {"max_length": 50}})
    cfg = load_checkpoint(ckpt).config
    assert cfg.n_positions == TINY["n_positions"] and cfg.layer_norm_epsilon == 1e-12
    assert cfg.resid_pdrop == 0.0 and isinstance(cfg.resid_pdrop, float)


def test_our_own_config_json_round_trips(tmp_path):
    for name, cfg in PRESETS.items():
        cfg.to_json(str(tmp_path / "config.json"))
        assert GPT2Config.from_json(str(tmp_path / "config.json")) == cfg, name


def test_configs_made_in_code_are_checked_too():
    with pytest.raises(UserError, match="n_layer"):
        GPT2Config(n_layer=100000)
    with pytest.raises(UserError, match="n_head"):
        GPT2Config(n_head=True)
    with pytest.raises(UserError, match=r"\[0, 1\)"):
        PRESETS["gpt2"].with_dropout(1.0)
    assert PRESETS["gpt2"].with_dropout(0.0).attn_pdrop == 0.0


# --- the whole way: a command-line run ends in one line, exit 2, small memory --------

CLI = """
import sys
from gpt2.errors import run_cli
from gpt2.weights import load_checkpoint
status = run_cli(lambda argv: load_checkpoint(argv[0]), sys.argv[1:])
# This process's peak memory in KiB (not ru_maxrss, which Linux carries over from the
# parent that forked us: here, pytest).
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")))
sys.exit(status)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads peak memory from Linux's /proc")
def test_n_layer_100000_is_one_line_and_no_allocation(ckpt):
    edit_config(ckpt, n_layer=100000)  # 5 GB of float32 at this width, had it been built
    p = subprocess.run([sys.executable, "-c", CLI, ckpt], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "config.json" in lines[0] and "n_layer" in lines[0], p.stderr
    assert int(p.stdout) < 1_500_000, "peak memory over 1.5 GB: something was allocated"


def test_docstring_parameter_table():
    """gpt2/config.py's table of where GPT-2 small's 124M parameters sit, counted on a GPT2 instance."""
    import torch

    import gpt2.config

    table = {}
    for line in gpt2.config.__doc__.splitlines():
        words = line.split()
        if len(words) >= 2 and words[-1].replace(",", "").isdigit() and line.startswith("    "):
            table[words[0]] = int(words[-1].replace(",", ""))
    with torch.device("meta"):  # shapes only, no memory
        model = GPT2(PRESETS["gpt2"])
    params = dict(model.named_parameters())  # the tied lm_head.weight is listed once, as wte's

    def count(prefix):
        return sum(p.numel() for name, p in params.items() if name.startswith(prefix))

    block = "transformer.h.0."
    assert table == {
        "wte": count("transformer.wte."), "wpe": count("transformer.wpe."),
        "one": count(block), "attn": count(block + "attn."), "mlp": count(block + "mlp."),
        "ln_1/2": count(block + "ln_1.") + count(block + "ln_2."),
        "12": count("transformer.h."), "ln_f": count("transformer.ln_f."),
        "lm_head": 0, "total": sum(p.numel() for p in model.parameters()),
    }
    assert model.lm_head.weight is model.transformer.wte.weight
    assert table["total"] == 124_439_808 == gpt2.config.parameter_count(vars(PRESETS["gpt2"]))

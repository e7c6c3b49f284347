"""The plan for several processes (harness/shardplan.py): the state's arithmetic, and the cheapest strategy."""

import subprocess
import sys

from conftest import ROOT
from gpt2.config import PRESETS
from harness.memory import GB, Settings, count_parameters
from harness.shardplan import cheapest, per_gpu, unit_parameters

XL = PRESETS["gpt2-xl"]
GPU = Settings(micro_batch=1, block_size=1024, precision="bf16", device="cuda", checkpointing=True, loss_chunk=1024)


def test_the_state_is_divided_by_the_processes():
    P = count_parameters(XL).total
    units = unit_parameters(XL)
    assert units["root"] + XL.n_layer * units["block"] == P  # FSDP's units cover every parameter once
    for n in (1, 2, 4, 8):
        rows = per_gpu(XL, GPU, n)
        assert rows["FSDP"]["state"] == 16 * P // n
        assert rows["DDP"]["state"] == 16 * P + (4 * P if n > 1 else 0)  # + DDP's gradient buckets
        assert rows["FSDP+offload"]["state"] == 0 and rows["FSDP+offload"]["host"] == 16 * P // n
        # the root (wte, wpe, ln_f) and two blocks gathered in bf16, whole fp32 gradients of a root and a block
        gathered = 2 * (units["root"] + 2 * units["block"]) + 4 * (units["root"] + units["block"])
        assert rows["FSDP"]["gathered"] == gathered
    # with accumulation, the micro-steps before the last keep a whole gradient
    accum = per_gpu(XL, Settings(**{**GPU.__dict__, "grad_accum": 4}), 4)
    assert accum["FSDP"]["state"] == 16 * P // 4 + 4 * P


def test_the_cheapest_strategy_that_fits():
    one, four = per_gpu(XL, GPU, 1), per_gpu(XL, GPU, 4)
    assert cheapest(one, 80 * GB, 1) == "DDP"             # gpt2-xl whole on an 80 GB card
    assert cheapest(one, 12 * GB, 1) == "FSDP+offload"    # one 12 GB card: offload, not LoRA
    assert cheapest(four, 12 * GB, 4) == "FSDP"           # four of them: sharded
    assert cheapest(one, 1 * GB, 1) is None


def test_plan_prints_the_strategies():
    p = subprocess.run([sys.executable, "train.py", "--model", "gpt2-xl", "--plan", "--device", "cuda", "--memory",
                        "12GiB", "--bf16", "--batch-size", "1", "--checkpointing", "--loss-chunk", "1024",
                        "--processes", "4"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "per GPU with 4 process(es)" in p.stdout
    assert "cheapest that fits in 12,288 MB per GPU: FSDP (torchrun --nproc_per_node=4 train.py --fsdp ...)" in p.stdout


def test_the_docs_hold_the_planned_tables():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from plan_tables import sharding_tables

    doc = (ROOT / "docs" / "distributed.md").read_text()
    assert all(table in doc for table in sharding_tables().split("\n\n"))

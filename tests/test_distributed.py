"""Data-parallel training: 2 processes on a global batch equal 1 process on it; checkpoints cross world sizes.

Two torchrun launches (start-up is most of the cost): the worker script runs FSDP2 runs, the CLI a DDP run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unifork.data.batches import rank_rows
from unifork.data.world_pool import WorldPool
from unifork.errors import UserError
from unifork.model.unifork import UniFork
from unifork.sequences import SequenceBuilder
from unifork.train.checkpoints import latest_checkpoint
from unifork.train.global_loss import supervised_tokens, task_weights, weighted_loss
from unifork.train.launch import launch
from unifork.train.recipe import load_recipe
from unifork.train.trainer import _model_config, _prepare_tokenizers, train

# Batch 8 at a 50/50 mix: rank 0 holds only und rows and rank 1 only gen rows, so both need stand-in rows.
RECIPE = """
seed = 0
tokenizer_dir = "{tok}"
[model]
size = "debug"
[data]
pool_size = 32
[[stages]]
name = "gen_pretrain"
steps = 2
batch_size = 8
lr = 1e-3
warmup = 2
mix = {{ gen = 1.0 }}
train = ["trunk.*", "gen.*"]
[[stages]]
name = "joint"
steps = 2
batch_size = {joint_batch}
lr = 1e-3
warmup = 2
mix = {{ und = 0.5, gen = 0.5 }}
"""
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]


def write_recipe(path: Path, tokenizer_dir, joint_batch: int = 8) -> Path:
    path.write_text(RECIPE.format(tok=tokenizer_dir, joint_batch=joint_batch))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("dp")
    recipe = write_recipe(root / "r.toml", tokenizer_dir)
    train(recipe, root / "one", progress=False)
    train(recipe, root / "cut1", progress=False, max_steps=3)  # 2 gen steps + 1 joint step, 1 process
    worker = Path(__file__).with_name("two_process_worker.py")
    subprocess.run([*TORCHRUN, str(worker), str(recipe), str(root)], env=ENV, check=True, timeout=300)
    train(recipe, root / "cut2", resume=True, progress=False)  # 2 processes stopped it, 1 finishes it
    cli = [sys.executable, "-m", "unifork.cli", "train", "--nproc", "2", "--strategy", "ddp", "--config"]
    subprocess.run([*cli, str(recipe), "--out", str(root / "ddp")], env=ENV, check=True, timeout=300, capture_output=True)
    muon = root / "muon.toml"  # Muon needs whole matrices: DDP only
    muon.write_text(recipe.read_text().replace("lr = 1e-3", 'lr = 1e-3\noptimizer = "muon"'))
    train(muon, root / "one_muon", progress=False)
    subprocess.run([*cli, str(muon), "--out", str(root / "ddp_muon")], env=ENV, check=True, timeout=300, capture_output=True)
    return root


def losses(run: Path) -> list[tuple]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    return [(r["stage"], r["step"], r.get("und"), r.get("gen"), r["loss"]) for r in records]


def assert_same_training(a: Path, b: Path) -> None:
    la, lb = losses(a), losses(b)
    assert [r[:2] for r in la] == [r[:2] for r in lb]
    for ra, rb in zip(la, lb):  # the log holds 5 decimals: values a rounding step apart differ by 1e-5
        assert ra[2:] == pytest.approx(rb[2:], abs=1.01e-5), (ra, rb)
    wa, wb = load_file(str(a / "checkpoint" / "model.safetensors")), load_file(str(b / "checkpoint" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-5


@pytest.mark.slow  # the runs fixture starts torchrun three times
@pytest.mark.parametrize("run", ["fsdp", "ddp"])
def test_two_processes_match_one(runs, run):
    assert_same_training(runs / "one", runs / run)


@pytest.mark.slow
def test_two_processes_match_one_under_muon(runs):
    """As under AdamW (measured 3.8e-7 on the weights). torch.optim.Muon, whose Newton-Schulz runs in bfloat16,
    was 4.3e-4 apart; ranks that do not all-reduce their gradients are 4e-3 apart in the loss of step 2."""
    assert_same_training(runs / "one_muon", runs / "ddp_muon")


@pytest.mark.slow
@pytest.mark.parametrize("run", ["cut2", "cut1"])
def test_resume_across_world_sizes(runs, run):
    """cut2: 2 processes (sharded state gathered) then 1; cut1: 1 process then 2 (full state sharded on load)."""
    state = torch.load(latest_checkpoint(runs / run / "stages" / "joint") / "train_state.pt", weights_only=True)
    assert state["step"] == 2  # finished; the cut was at joint step 1
    assert_same_training(runs / "one", runs / run)


def test_rank_slices_are_contiguous_and_cover_the_batch():
    for batch, world in [(8, 2), (7, 2), (5, 3), (3, 3)]:
        rows = [list(rank_rows(batch, r, world)) for r in range(world)]
        assert [i for r in rows for i in r] == list(range(batch))
        assert max(map(len, rows)) - min(map(len, rows)) <= 1


def test_weighted_slices_give_the_global_gradient(tmp_path, tokenizer_dir):
    """Uneven slices (7 rows on 2 ranks, tasks mixed on one): summed weighted gradients / W = full-batch gradient."""
    recipe = load_recipe(write_recipe(tmp_path / "r.toml", tokenizer_dir, joint_batch=7))
    text, image = _prepare_tokenizers(recipe, tmp_path, progress=False)
    cfg = _model_config(recipe, text, image)
    pool = WorldPool(recipe.data, image, SequenceBuilder(text, cfg))
    stage = recipe.stages[1]
    torch.manual_seed(0)
    model = UniFork(cfg)
    full = model(pool.batch(stage, 1, 0))
    full_grads = torch.autograd.grad(full["loss"], list(model.parameters()), allow_unused=True)
    parts = [pool.rank_batch(stage, 1, 0, rank, 2) for rank in range(2)]
    local = [supervised_tokens(p.batch, p.real_rows) for p in parts]
    assert parts[0].batch.task.tolist() == [0, 0, 0, 1]  # 3 und rows + a gen stand-in
    grads, total_loss = None, 0.0
    for part, counts in zip(parts, local):
        weights = task_weights(counts, local[0] + local[1], world=2)
        rank_losses = model(part.batch)
        total_loss += sum(weights[t] / 2 * rank_losses[t].item() for t in ("und", "gen"))
        g = torch.autograd.grad(weighted_loss(rank_losses, weights), list(model.parameters()), allow_unused=True)
        grads = g if grads is None else [a + b for a, b in zip(grads, g)]
    assert total_loss == pytest.approx(full["loss"].item(), abs=1e-5)
    for a, b in zip(full_grads, grads):
        assert (a is None) == (b is None)
        if a is not None:
            assert (a - b / 2).abs().max() <= 1e-6


def test_launch_errors(tmp_path, tokenizer_dir, monkeypatch):
    recipe = write_recipe(tmp_path / "r.toml", tokenizer_dir)
    with pytest.raises(UserError, match="unknown strategy 'zero'"):
        train(recipe, tmp_path / "run", strategy="zero")
    with pytest.raises(UserError, match="batch_size 8 is the global batch, smaller than the 9 processes"):
        launch(9, str(recipe), str(tmp_path / "run"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="under torchrun leave it out"):
        launch(2, str(recipe), str(tmp_path / "run"))

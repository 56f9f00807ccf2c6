"""Muon on the blocks' matrices + AdamW on the rest: the split, its state dict, exact resume, clear errors."""

import json

import pytest
import torch
from safetensors.torch import load_file
from test_train import write_recipe

from unifork.errors import UserError
from unifork.model import UniFork
from unifork.model.config import named_config
from unifork.train.muon import Muon, orthogonalize
from unifork.train.optim import check_optimizer_strategy, make_optimizer
from unifork.train.recipe import StageConfig, load_recipe
from unifork.train.trainer import train


def muon_recipe(path, tokenizer_dir, **steps):
    text = write_recipe(path, tokenizer_dir, **steps).read_text().replace("lr = 3e-3", 'lr = 3e-3\noptimizer = "muon"')
    path.write_text(text)
    return path


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    model = UniFork(named_config("debug"))
    names = {p: n for n, p in model.named_parameters()}
    opt = make_optimizer(model, StageConfig(name="s", steps=1, optimizer="muon"))
    muon = {names[p] for g in opt.muon.param_groups for p in g["params"]}
    adamw = {names[p] for g in opt.adamw.param_groups for p in g["params"]}
    assert muon == {n for n, p in model.named_parameters() if p.ndim == 2 and ".layers." in n}
    assert not muon & adamw and muon | adamw == set(names.values())
    assert {"trunk.text_embed.weight", "trunk.projector.0.weight", "gen.head.weight", "und.norm.weight"} <= adamw
    # a stage that trains part of the model hands only that part to either optimizer
    opt = make_optimizer(model, StageConfig(name="s", steps=1, optimizer="muon", train=("trunk.projector.*", "und.*")))
    trained = {names[p] for g in opt.param_groups for p in g["params"]}
    assert trained == {n for n in names.values() if n.startswith(("trunk.projector.", "und."))}


def test_orthogonalize_brings_singular_values_near_one():
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(3, 32, 32))
    v, _ = torch.linalg.qr(torch.randn(3, 80, 32))
    s = torch.logspace(-1, 1, 32).expand(3, 32)  # singular values over two decades (five steps lift ~3 decades)
    x = u @ torch.diag_embed(s) @ v.mT  # (3, 32, 80)
    o = orthogonalize(x)
    assert o.shape == x.shape and o.dtype == torch.float32
    singular = torch.linalg.svdvals(o)
    assert singular.min() > 0.5 and singular.max() < 1.5, singular
    polar = u @ v.mT  # the exact orthogonalisation U V^T, which Muon approximates
    assert torch.nn.functional.cosine_similarity(o.flatten(1), polar.flatten(1)).min() > 0.9


def test_our_muon_steps_as_torch_muon_does():
    """Same update as torch.optim.Muon (match_rms_adamw), which differs only by its bfloat16 Newton-Schulz."""
    torch.manual_seed(0)
    shapes = [(48, 16), (16, 48), (32, 32), (16, 48)]  # tall, wide, square, and two of one shape (batched)
    ours, theirs = [torch.nn.Parameter(torch.randn(*s) * 0.1) for s in shapes], []
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt_ours = Muon(ours, lr=0.01, weight_decay=0.1)
    opt_theirs = torch.optim.Muon(theirs, lr=0.01, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    start = [p.detach().clone() for p in ours]
    for _ in range(3):
        grads = [torch.randn_like(p) for p in ours]
        for a, b, g in zip(ours, theirs, grads):
            a.grad, b.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_theirs.step()
    for a, b, p0 in zip(ours, theirs, start):
        moved = (b - p0).abs().max()
        assert moved > 1e-3 and (a - b).abs().max() < 0.03 * moved  # bf16 rounding of theirs, nothing more


def test_muon_state_dict_round_trips_in_the_single_optimizer_format():
    torch.manual_seed(0)
    model = UniFork(named_config("debug"))
    stage = StageConfig(name="s", steps=1, optimizer="muon")
    opt = make_optimizer(model, stage)
    for _ in range(2):
        opt.zero_grad()
        sum(p.square().sum() for p in model.parameters()).backward()
        opt.step()
    saved = opt.state_dict()
    params = [p for g in opt.param_groups for p in g["params"]]
    assert sorted(saved["state"]) == list(range(len(params)))  # one id per parameter, in param_groups order
    assert all(v.shape == params[i].shape for i, s in saved["state"].items() for v in s.values() if v.ndim)
    fresh = make_optimizer(model, stage)
    fresh.load_state_dict(saved)
    again = fresh.state_dict()
    assert all(torch.equal(saved["state"][i][k], again["state"][i][k]) for i in saved["state"] for k in saved["state"][i])


def test_muon_run_learns_and_resumes_exactly(tmp_path, tokenizer_dir):
    recipe = muon_recipe(tmp_path / "r.toml", tokenizer_dir, gen_steps=4, joint_steps=6)
    straight = train(recipe, tmp_path / "straight", progress=False)
    gen = [r["gen"] for r in map(json.loads, (tmp_path / "straight" / "metrics.jsonl").open())]
    assert len(gen) == 10 and gen[-1] < 0.8 * gen[0], gen  # every step taken (none skipped as non-finite)
    assert train(recipe, tmp_path / "cut", progress=False, max_steps=6) is None  # stops 2 steps into joint
    resumed = train(recipe, tmp_path / "cut", resume=True, progress=False)
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_muon_errors(tmp_path, tokenizer_dir):
    recipe = write_recipe(tmp_path / "r.toml", tokenizer_dir)
    recipe.write_text(recipe.read_text().replace("lr = 3e-3", 'lr = 3e-3\noptimizer = "lion"', 1))
    with pytest.raises(UserError, match="optimizer must be one of adamw, muon, got 'lion'"):
        load_recipe(recipe)
    stages = load_recipe(muon_recipe(tmp_path / "m.toml", tokenizer_dir)).stages
    with pytest.raises(UserError, match="use strategy ddp"):
        check_optimizer_strategy(stages, distributed=True, strategy="fsdp")
    check_optimizer_strategy(stages, distributed=True, strategy="ddp")
    check_optimizer_strategy(stages, distributed=False, strategy="fsdp")
    # a stage cut off under AdamW cannot resume under Muon: its saved moments belong to other parameter groups
    plain = write_recipe(tmp_path / "p.toml", tokenizer_dir, gen_steps=4, joint_steps=6)
    assert train(plain, tmp_path / "run", progress=False, max_steps=2) is None
    with pytest.raises(UserError, match="does not fit stage 'gen_pretrain'"):
        train(muon_recipe(tmp_path / "p2.toml", tokenizer_dir, gen_steps=4, joint_steps=6), tmp_path / "run", resume=True, progress=False)

"""Data parallelism and compilation, applied to a plain UniFork from outside (model/ stays single-device).

fsdp: PyTorch's FSDP2 `fully_shard`, one group per block, then the root (embeddings, projector, norms, heads);
      parameters, gradients and optimizer moments are sharded over the ranks.
ddp:  DistributedDataParallel; every rank holds everything and gradients are all-reduced.
Either way the checkpoint on disk is the full, unsharded format of single-process training, so any world size
resumes any other's.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.nn.parallel import DistributedDataParallel

from unifork.errors import UserError, param
from unifork.model.unifork import UniFork, attention_mask
from unifork.train.distributed import Ranks

STRATEGIES = ("fsdp", "ddp")


def blocks(model: UniFork) -> list[nn.Module]:
    return [*model.trunk.layers, *(layer for t in model.tasks for layer in model.branch(t).layers)]


def wrap(model: UniFork, ranks: Ranks, strategy: str) -> nn.Module:
    """The module whose forward the training step calls; `model` itself keeps its parameter names."""
    if not ranks.distributed:
        return model
    if strategy == "fsdp":
        mesh = init_device_mesh(ranks.device.type, (ranks.world,))
        for block in blocks(model):
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)  # in place: model's parameters are now sharded DTensors
        return model
    if strategy == "ddp":
        # find_unused_parameters: a task absent from a stage's mix (or codes-only und input) leaves trainable
        # weights without a gradient on every rank; the buffers are constant RoPE tables, nothing to sync.
        device_ids = [ranks.device.index] if ranks.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True, forward_sync_buffers=False)
    raise UserError(f"unknown {param('strategy')} '{strategy}'; choose one of: {', '.join(STRATEGIES)}")


def compile_blocks(model: UniFork) -> bool:
    """torch.compile each block (the routing between branches is data-dependent, so not the whole model).

    Tried on a copy of one block first, forward and backward: where no compiler toolchain works (some CPU
    machines), training goes on uncompiled with a message instead of failing at its first step.
    """
    cfg, layers = model.cfg, blocks(model)
    if not layers:
        return False
    probe = torch.compile(copy.deepcopy(layers[0]), dynamic=True)
    p = next(model.parameters())
    x = torch.randn(2, 5, cfg.d_model, device=p.device, requires_grad=True)
    valid = torch.ones(2, 5, dtype=torch.bool, device=p.device)
    try:
        probe(x, model.rotary.tables(valid.long().cumsum(-1) - 1), attention_mask(valid, 5)).sum().backward()
    except Exception as err:  # noqa: BLE001 -- inductor raises many types (missing compiler, unsupported op)
        print(f"compile: torch.compile failed on {p.device.type} ({type(err).__name__}: {str(err)[:200]}); training uncompiled")
        return False
    for block in layers:
        block.compile(dynamic=True)  # in place, so parameter names (and checkpoints) do not change
    return True


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict on CPU on rank 0 ({} elsewhere); a collective under FSDP, so every rank calls it."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """optimizer.state_dict() with every sharded moment gathered whole: the single-process format, on every rank.

    Not DCP's get_optimizer_state_dict: on an optimizer that has not stepped yet (a save at a stage's step 0)
    it runs a zero-gradient step to create state, which would count an extra Adam step, and it keys by name.
    Every rank must call this (gathering is a collective); ids are visited in the same order everywhere.
    """
    state = optimizer.state_dict()
    gather = lambda v: v.full_tensor().cpu() if isinstance(v, DTensor) else v
    state["state"] = {i: {k: gather(v) for k, v in s.items()} for i, s in sorted(state["state"].items())}
    return state


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Load a full (single-process format) optimizer state, sharding each moment like its parameter."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, state in saved["state"].items():
        p = params[i]
        if isinstance(p, DTensor):  # every rank holds the full moment (it read the same file) and keeps its shard
            state.update({k: distribute_tensor(v.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
                          for k, v in state.items() if torch.is_tensor(v) and v.shape == p.shape})  # fmt: skip
    optimizer.load_state_dict(saved)

"""Optimizer and schedule: AdamW over the parameters a stage trains (the rest frozen), warmup + cosine."""

from __future__ import annotations

import fnmatch
import math

import torch

from unifork.errors import UserError
from unifork.model.unifork import UniFork
from unifork.train.recipe import PARAM_GROUPS_HELP, StageConfig


def lr_at(stage: StageConfig, step: int) -> float:
    """Linear warmup, then cosine decay to lr * min_lr_ratio."""
    if step < stage.warmup:
        return stage.lr * (step + 1) / stage.warmup
    progress = (step - stage.warmup) / max(1, stage.steps - stage.warmup)
    floor = stage.lr * stage.min_lr_ratio
    return floor + (stage.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def set_trainable(model: UniFork, patterns: tuple[str, ...]) -> list[torch.nn.Parameter]:
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad_(any(fnmatch.fnmatchcase(name, pat) for pat in patterns))
        if p.requires_grad:
            trainable.append(p)
    if not trainable:
        raise UserError(f"train patterns {list(patterns)} match no parameter; use e.g. {PARAM_GROUPS_HELP}")
    return trainable


def make_optimizer(model: UniFork, stage: StageConfig) -> torch.optim.AdamW:
    params = set_trainable(model, stage.train)
    decay = [p for p in params if p.ndim >= 2]  # no weight decay on norms and biases
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": stage.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=stage.lr, betas=(0.9, 0.95), fused=False)

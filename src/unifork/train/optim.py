"""Optimizer and schedule over the parameters a stage trains (the rest frozen): AdamW, or Muon on the blocks'
matrices with AdamW on the rest (muon.py); the stage's warmup + cosine schedule."""

from __future__ import annotations

import fnmatch

import torch

from unifork.errors import UserError, param
from unifork.model.unifork import UniFork
from unifork.train.muon import Muon, MuonWithAdamW
from unifork.train.recipe import PARAM_GROUPS_HELP, StageConfig
from unifork.train.schedule import warmup_cosine


def lr_at(stage: StageConfig, step: int) -> float:
    return warmup_cosine(step, stage.steps, stage.lr, stage.warmup, stage.min_lr_ratio)


def parameter_names(model: UniFork) -> dict[torch.nn.Parameter, list[str]]:
    """Every name of each parameter. A tied text head (tie_word_embeddings) is one matrix with two names,
    trunk.text_embed.weight and und.head.weight; named_parameters() would give only the first."""
    names: dict[torch.nn.Parameter, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(p, []).append(name)
    return names


VISION_PARAMS = "trunk.vision"


def set_trainable(model: UniFork, patterns: tuple[str, ...]) -> list[torch.nn.Parameter]:
    """Train the parameters that any name of matches a pattern, freeze the rest.

    The vision encoder (trunk.vision.*) trains only under a pattern that starts with its name, e.g. trunk.vision.*
    or trunk.vision.net.encoder.layers.11.*: a pretrained encoder is frozen by default, as in LLaVA.
    `und.*` trains a tied head, as it trains an untied one; being the text embedding too, it then moves the
    trunk's input embedding. To keep a tied head frozen, name the branch's parts instead: und.layers.*, und.norm.*.
    """
    trainable = []
    naming_vision = [pat for pat in patterns if pat.startswith(VISION_PARAMS)]
    for p, names in parameter_names(model).items():
        # a pretrained vision encoder stays frozen unless a pattern names it: "*" alone does not
        among = naming_vision if names[0].startswith(VISION_PARAMS) else patterns
        p.requires_grad_(any(fnmatch.fnmatchcase(name, pat) for name in names for pat in among))
        if p.requires_grad:
            trainable.append(p)
    if not trainable:
        raise UserError(f"train patterns {list(patterns)} match no parameter; use e.g. {PARAM_GROUPS_HELP}")
    return trainable


def check_optimizer_strategy(stages: tuple[StageConfig, ...], distributed: bool, strategy: str) -> None:
    """Muon orthogonalises whole matrices; FSDP gives each rank a shard of them."""
    if distributed and strategy == "fsdp" and any(stage.optimizer == "muon" for stage in stages):
        raise UserError(f"optimizer = 'muon' needs whole weight matrices on every rank; use {param('strategy')} ddp "
                        "(FSDP shards them)")  # fmt: skip


def make_optimizer(model: UniFork, stage: StageConfig) -> torch.optim.AdamW | MuonWithAdamW:
    params = set_trainable(model, stage.train)
    # Muon takes the 2-D weights inside transformer blocks; embeddings, heads, projector, norms, biases stay on AdamW.
    in_blocks = {p for p, names in parameter_names(model).items() if p.ndim == 2 and ".layers." in names[0]}
    on_muon = in_blocks if stage.optimizer == "muon" else set()
    matrices = [p for p in params if p in on_muon]
    rest = [p for p in params if p not in on_muon]
    decay = [p for p in rest if p.ndim >= 2]  # no weight decay on norms and biases
    no_decay = [p for p in rest if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": stage.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    adamw = torch.optim.AdamW(groups, lr=stage.lr, betas=(0.9, 0.95), fused=False)
    if matrices:
        return MuonWithAdamW(adamw, Muon(matrices, lr=stage.lr, weight_decay=stage.weight_decay))
    return adamw

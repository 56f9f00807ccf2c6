"""Per-layer task conflict: how the understanding and the generation losses pull on each layer both tasks share.

On the same training batches, the gradient of the und loss and of the gen loss on one layer's parameters:

    cosine      1: the tasks push the layer the same way, 0: unrelated directions, -1: opposite ways
    norm ratio  |grad und| / |grad gen|: which task dominates the layer's update

each averaged over batches with a 95% Student-t interval. Uni-X (arXiv 2509.24365) reads a model's split from this
curve on a fully shared model. A per-task layer has no parameter both losses reach, so it has no conflict.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from unifork.data.config import DataConfig
from unifork.data.world_pool import WorldPool
from unifork.eval.stats import mean_interval
from unifork.train.recipe import StageConfig


def gradient_agreement(groups: list[list[nn.Parameter]], loss_pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> list[dict]:
    """For each parameter group: cosine and norm ratio of the two losses' gradients on it, over the pairs.

    Both losses of a pair must come from one graph (the second gradient frees it). A parameter a loss does not
    reach contributes zeros to that loss's gradient.
    """
    flat = [p for group in groups for p in group]
    cosines, ratios = [[] for _ in groups], [[] for _ in groups]
    for loss_a, loss_b in loss_pairs:
        grads = [torch.autograd.grad(loss, flat, retain_graph=loss is loss_a, allow_unused=True) for loss in (loss_a, loss_b)]
        start = 0
        for index, group in enumerate(groups):
            a, b = (torch.cat([(p.new_zeros(p.shape) if g is None else g).flatten().float()
                               for p, g in zip(group, grad[start : start + len(group)])]) for grad in grads)  # fmt: skip
            start += len(group)
            cosines[index].append(F.cosine_similarity(a, b, dim=0).item())
            ratios[index].append((a.norm() / b.norm().clamp_min(1e-30)).item())
    return [{"cosine": mean_interval(c), "norm_ratio": mean_interval(r)} for c, r in zip(cosines, ratios)]


def task_conflict(model, image_tokenizer, builder, n_batches: int = 8, batch_size: int = 32, seed: int = 0) -> dict:
    """Gradient agreement of the und and gen losses on every layer of `model` (a UniFork with both branches),
    on joint training batches of world train scenes (half understanding, half generation rows)."""
    und_path, gen_path = model.path_layers("und"), model.path_layers("gen")
    shared = [i for i, (a, b) in enumerate(zip(und_path, gen_path)) if a is b]
    trunk = model.trunk
    embeddings = [p for m in (trunk.text_embed, trunk.image_embed, trunk.image_pos, trunk.projector) for p in m.parameters()]
    groups = [embeddings] + [list(und_path[i].parameters()) for i in shared]
    pool = WorldPool(DataConfig(seed=seed, pool_size=n_batches * batch_size), image_tokenizer, builder)
    stage = StageConfig(name="conflict", steps=n_batches, batch_size=batch_size, mix={"und": 0.5, "gen": 0.5})

    def loss_pairs():
        for step in range(n_batches):
            losses = model(pool.batch(stage, 0, step))
            yield losses["und"], losses["gen"]

    agreement = gradient_agreement(groups, loss_pairs())
    by_layer = dict(zip(shared, agreement[1:]))
    layers = [{"layer": i, "shared": True, **by_layer[i]} if i in by_layer
              else {"layer": i, "shared": False, "why": "per-task layer: no parameter both losses reach"}
              for i in range(len(und_path))]  # fmt: skip
    return {"n_layers": len(und_path), "shared_layers": shared, "n_batches": n_batches, "batch_size": batch_size,
            "seed": seed, "embeddings": agreement[0], "layers": layers}  # fmt: skip

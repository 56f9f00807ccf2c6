"""Pixels from a scene spec: flat colors, no anti-aliasing, so the detector can invert rendering exactly."""

from __future__ import annotations

import numpy as np

from unifork.images import BACKGROUND
from unifork.world.spec import COLORS, Scene, SceneObject, WorldConfig


def shape_mask(shape: str, extent: int) -> np.ndarray:
    """Boolean (extent, extent) mask of a shape centred in its box."""
    r = extent // 2
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    if shape == "square":
        return np.ones((extent, extent), dtype=bool)
    if shape == "circle":
        return dx**2 + dy**2 <= (r + 0.5) ** 2
    if shape == "triangle":  # apex up, base on the bottom row
        return np.abs(dx) <= (dy + r) / 2 + 0.5
    if shape == "cross":  # a plus sign with arms one third of the extent thick
        half = round(r / 3)
        return (np.abs(dx) <= half) | (np.abs(dy) <= half)
    raise ValueError(f"unknown shape {shape!r}")


def object_mask(obj: SceneObject, cfg: WorldConfig) -> np.ndarray:
    """Boolean (canvas, canvas) mask of one object."""
    mask = np.zeros((cfg.canvas, cfg.canvas), dtype=bool)
    x0, y0, x1, y1 = obj.bbox(cfg)
    mask[y0 : y1 + 1, x0 : x1 + 1] = shape_mask(obj.shape, cfg.extent(obj.size))
    return mask


def render(scene: Scene) -> np.ndarray:
    """uint8 (H, W, 3) RGB image of the scene on a white background."""
    cfg = scene.config
    image = np.empty((cfg.canvas, cfg.canvas, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    for obj in scene.objects:
        image[object_mask(obj, cfg)] = COLORS[obj.color]
    return image

"""Random placement of objects on the canvas: non-overlapping boxes, optionally under a constraint."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from unifork.errors import UserError
from unifork.world.spec import MAX_OBJECTS, SceneObject, WorldConfig

Item = tuple[str, str, str]  # (shape, color, size)


def _boxes_apart(a: SceneObject, b: SceneObject, cfg: WorldConfig) -> bool:
    ax0, ay0, ax1, ay1 = a.bbox(cfg)
    bx0, by0, bx1, by1 = b.bbox(cfg)
    g = cfg.gap
    return ax1 + g < bx0 or bx1 + g < ax0 or ay1 + g < by0 or by1 + g < ay0


def place(
    rng: np.random.Generator,
    items: Sequence[Item],
    cfg: WorldConfig = WorldConfig(),
    accept: Callable[[list[SceneObject]], bool] | None = None,
    tries: int = 2000,
) -> tuple[SceneObject, ...]:
    """Give each (shape, color, size) a center so no two boxes touch and `accept(objects)` holds.

    Raises UserError when the items cannot fit (too many, or a constraint that placement never meets).
    """
    if not 1 <= len(items) <= MAX_OBJECTS:
        raise UserError(f"a scene holds 1 to {MAX_OBJECTS} objects, got {len(items)}; ask for fewer objects")
    for _ in range(tries):
        placed: list[SceneObject] = []
        for shape, color, size in items:
            r = cfg.extent(size) // 2
            lo, hi = cfg.margin + r, cfg.canvas - 1 - cfg.margin - r
            if lo > hi:
                raise UserError(f"a {size} {shape} does not fit on a {cfg.canvas}x{cfg.canvas} canvas; use a larger canvas")
            for _ in range(50):
                cx, cy = (int(v) for v in rng.integers(lo, hi + 1, size=2))
                obj = SceneObject(shape, color, size, cx, cy)
                if all(_boxes_apart(obj, other, cfg) for other in placed):
                    placed.append(obj)
                    break
            else:
                break
        if len(placed) == len(items) and (accept is None or accept(placed)):
            return tuple(placed)
    described = ", ".join(f"{size} {color} {shape}" for shape, color, size in items)
    raise UserError(f"cannot fit these objects on a {cfg.canvas}x{cfg.canvas} canvas: {described}; use fewer or smaller objects")

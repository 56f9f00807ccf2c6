"""Recover the scene spec from pixels: the referee for generated images (GenEval's detector, for our world).

Rendering is flat and objects never touch (WorldConfig.gap), so each object is one connected blob of
non-background pixels; its shape and size are the rendered template that overlaps it best.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

from unifork.images import BACKGROUND, fit_image
from unifork.world.render import shape_mask
from unifork.world.spec import COLORS, SHAPES, SIZES, SceneObject, WorldConfig

# Blobs smaller than this are noise: the smallest object (a small triangle, 71 px) keeps well over half its
# pixels under a 3x3 blur, while isolated misclassified pixels form blobs of a few pixels.
MIN_COMPONENT_AREA = 20
# Template centres are searched this many pixels around the blob's box centre: blur can erase a triangle's
# apex or a noise pixel can stick to an edge, shifting the box by a pixel.
CENTER_SEARCH = 2

_COLOR_NAMES = tuple(COLORS)
_PALETTE = np.array([COLORS[c] for c in _COLOR_NAMES], dtype=np.float32)  # (K, 3)
_WHITE = np.array(BACKGROUND, dtype=np.float32)


@lru_cache(maxsize=4)
def _templates(cfg: WorldConfig) -> tuple[np.ndarray, list[tuple[str, str, int, int]]]:
    """Every shape x size template at every centre offset, in a window around the blob: (M, W, W) bool."""
    w = cfg.large_extent + 2 * CENTER_SEARCH
    masks, keys = [], []
    for shape in SHAPES:
        for size in SIZES:
            extent = cfg.extent(size)
            for dy in range(-CENTER_SEARCH, CENTER_SEARCH + 1):
                for dx in range(-CENTER_SEARCH, CENTER_SEARCH + 1):
                    window = np.zeros((w, w), dtype=bool)
                    y0, x0 = w // 2 + dy - extent // 2, w // 2 + dx - extent // 2
                    window[y0 : y0 + extent, x0 : x0 + extent] = shape_mask(shape, extent)
                    masks.append(window)
                    keys.append((shape, size, dx, dy))
    return np.stack(masks), keys


def _classify_pixels(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(foreground mask, palette index per pixel), both (H, W).

    Foreground: nearest of palette + white is not white. The color index is the palette color whose
    white-to-color segment is nearest, not the nearest color: blur mixes an object's edge with white
    (2/3 red + 1/3 white is nearer orange than red), but the mixture stays on red's segment.
    """
    px = rgb.reshape(-1, 1, 3).astype(np.float32)
    to_colors = ((px - _PALETTE) ** 2).sum(-1)  # (P, K)
    to_white = ((px[:, 0] - _WHITE) ** 2).sum(-1)  # (P,)
    foreground = to_colors.min(1) < to_white
    direction = _PALETTE - _WHITE  # (K, 3)
    t = np.clip(((px - _WHITE) * direction).sum(-1) / (direction**2).sum(-1), 0.0, 1.0)  # (P, K)
    off_segment = ((px - _WHITE - t[..., None] * direction) ** 2).sum(-1)
    shape = rgb.shape[:2]
    return foreground.reshape(shape), off_segment.argmin(1).reshape(shape)


def _best_template(blob: np.ndarray, cfg: WorldConfig) -> tuple[str, str, int, int]:
    """(shape, size, cx, cy) of the template with the highest IoU against a (H, W) bool blob."""
    templates, keys = _templates(cfg)
    w = templates.shape[1]
    ys, xs = np.nonzero(blob)
    cy, cx = round((ys.min() + ys.max()) / 2), round((xs.min() + xs.max()) / 2)
    padded = np.pad(blob, w)
    window = padded[cy + w - w // 2 : cy + w - w // 2 + w, cx + w - w // 2 : cx + w - w // 2 + w]
    inter = (templates & window).sum((1, 2))
    union = templates.sum((1, 2)) + len(ys) - inter  # the whole blob, even pixels outside the window
    shape, size, dx, dy = keys[int(np.argmax(inter / union))]
    return shape, size, cx + dx, cy + dy


def detect(image, cfg: WorldConfig = WorldConfig()) -> list[SceneObject]:
    """Objects in an image, ordered by (cx, cy); any image fit_image takes, judged at the canvas size."""
    rgb = fit_image(image, cfg.canvas)
    foreground, color_index = _classify_pixels(rgb)
    labels, _ = ndimage.label(foreground)
    objects = []
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        blob = labels == k
        if blob[box].sum() < MIN_COMPONENT_AREA:
            continue
        votes = np.bincount(color_index[blob], minlength=len(_COLOR_NAMES))
        shape, size, cx, cy = _best_template(blob, cfg)
        objects.append(SceneObject(shape, _COLOR_NAMES[int(votes.argmax())], size, cx, cy))
    return sorted(objects, key=lambda o: (o.cx, o.cy))

"""Alignment of fully user-supplied paired features: an .npz with arrays `image` and `text`, each (layers, N, D)
or (N, D), for models unifork cannot run itself. A single (N, D) array is compared with every layer of the other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unifork.analysis.knn_alignment import chance_alignment, check_sizes, layerwise_alignment
from unifork.errors import UserError

FEATURE_KEYS = ("image", "text")


def load_feature_pairs(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(image, text) arrays from an .npz file, each (layers, N, D) or (N, D)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such features file: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [key for key in FEATURE_KEYS if key not in data.files]
            if missing:
                raise UserError(f"{path} lacks array(s) {', '.join(missing)}; it holds {', '.join(data.files) or 'nothing'}")
            image, text = (np.asarray(data[key]) for key in FEATURE_KEYS)
    except (OSError, ValueError) as err:
        if isinstance(err, UserError):
            raise
        raise UserError(f"cannot read {path} as an .npz of arrays 'image' and 'text': {err}") from None
    for key, array in zip(FEATURE_KEYS, (image, text)):
        if array.ndim not in (2, 3):
            raise UserError(f"'{key}' in {path} must be (N, D) or (layers, N, D), got shape {array.shape}")
    return image, text


def feature_alignment(image: np.ndarray, text: np.ndarray, k: int = 10) -> dict:
    """Per-layer alignment of paired image and text features (see layerwise_alignment for the shapes)."""
    n = image.shape[-2]
    if text.shape[-2] != n:
        raise UserError(f"image features hold {n} samples but text features {text.shape[-2]}; they must be paired")
    check_sizes(n, k)
    values = layerwise_alignment(image, text, k)
    return {
        "model": "user-supplied features",
        "layers": list(range(len(values))),
        "sharing": None,
        "n_layers": len(values) - 1,
        "k": k,
        "n_samples": n,
        "pooling": None,
        "chance": chance_alignment(n, k),
        "paths": ["features"],
        "features": values,
    }

"""`unifork align`: take features from exactly one source, measure alignment per layer, write JSON (+ a plot).

    --ckpt DIR                                   a UniFork checkpoint on world scenes (both paths)
    --hf-model DIR --texts T --image-features F  any local HF causal LM vs. image features (N, D) .npy
    --features PAIRS.npz                         fully user-supplied `image` and `text` features
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from unifork.analysis.feature_alignment import feature_alignment, load_feature_pairs
from unifork.analysis.hf_alignment import hf_alignment
from unifork.analysis.model_alignment import model_alignment
from unifork.analysis.plot import plot_alignment
from unifork.atomic import atomic_write_text
from unifork.errors import UserError

SOURCE_FLAGS = "--ckpt, --hf-model or --features"


def align(out: str | Path, *, ckpt: str | Path | None = None, hf_model: str | Path | None = None,
          texts: str | Path | None = None, image_features: str | Path | None = None, features: str | Path | None = None,
          plot: str | Path | None = None, n: int = 256, k: int = 10, pooling: str = "mean", seed: int = 0,
          split: str = "test", device: str = "cpu", batch_size: int = 64) -> dict:  # fmt: skip
    """Alignment per layer from one source, written to `out` as JSON (and to `plot` as a PNG); returns the result.

    n, seed and split choose the world scenes for a checkpoint; the other sources bring their own samples.
    """
    _check_sources(ckpt, hf_model, texts, image_features, features)
    for flag, path in (("--out", out), ("--plot", plot)):
        if path is not None and Path(path).is_dir():
            raise UserError(f"{flag} must be a file path, but {path} is a directory")
    if ckpt is not None:
        from unifork.inference.pipeline import Pipeline

        pipeline = Pipeline.from_pretrained(ckpt, device=device)
        result = model_alignment(pipeline, n=n, k=k, pooling=pooling, split=split, seed=seed, batch_size=batch_size)
        result["source"] = {"ckpt": str(ckpt)}
    elif hf_model is not None:
        lines = read_texts(texts)
        result = hf_alignment(hf_model, lines, load_image_features(image_features), k=k, pooling=pooling,
                              batch_size=batch_size, device=device)  # fmt: skip
        result["source"] = {"hf_model": str(hf_model), "texts": str(texts), "image_features": str(image_features)}
    else:
        result = feature_alignment(*load_feature_pairs(features), k=k)
        result["source"] = {"features": str(features)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    if plot is not None:
        Path(plot).parent.mkdir(parents=True, exist_ok=True)
        plot_alignment(result, plot)
    return result


def _check_sources(ckpt, hf_model, texts, image_features, features) -> None:
    given = [flag for flag, value in (("--ckpt", ckpt), ("--hf-model", hf_model), ("--features", features)) if value is not None]
    if len(given) != 1:
        raise UserError(f"give exactly one feature source of {SOURCE_FLAGS}; got {' and '.join(given) if given else 'none'}")
    hf_inputs = [flag for flag, value in (("--texts", texts), ("--image-features", image_features)) if value is not None]
    if hf_model is None and hf_inputs:
        raise UserError(f"{' and '.join(hf_inputs)} only go with --hf-model")
    if hf_model is not None and len(hf_inputs) != 2:
        raise UserError("--hf-model needs --texts FILE (one text per line) and --image-features FILE.npy (one row per text)")


def read_texts(path: str | Path) -> list[str]:
    """One text per line; a blank line is an error (it would silently shift the pairing with the features)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such texts file: {path}")
    lines = path.read_text().splitlines()
    blank = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if blank:
        raise UserError(f"line {blank[0]} of {path} is blank; give one non-empty text per line")
    return lines


def load_image_features(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such image features file: {path}")
    try:
        features = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path} as a .npy array: {err}") from None
    if not isinstance(features, np.ndarray) or features.ndim != 2:
        raise UserError(f"{path} must hold one (N, D) array of image features")
    return features

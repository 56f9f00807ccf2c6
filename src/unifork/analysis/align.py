"""`unifork align`: features from one source, alignment per layer, written as JSON (+ a plot). One entry point
per source:

    align_checkpoint   a UniFork checkpoint on world scenes (both paths)
    align_hf_model     any local HF causal LM's text states vs. image features (N, D) from a .npy
    align_features     fully user-supplied `image` and `text` features (.npz)
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
from unifork.errors import UserError, param


def align_checkpoint(ckpt: str | Path, out: str | Path, plot: str | Path | None = None, n: int = 256, k: int = 10,
                     pooling: str = "mean", seed: int = 0, split: str = "test", device: str = "cpu",
                     batch_size: int = 64) -> dict:  # fmt: skip
    """Both paths of a checkpoint on `n` scenes of a world split (`seed`); written to `out` (and `plot`)."""
    from unifork.inference.pipeline import Pipeline

    _check_outputs(out, plot)
    pipeline = Pipeline.from_pretrained(ckpt, device=device)
    result = model_alignment(pipeline, n=n, k=k, pooling=pooling, split=split, seed=seed, batch_size=batch_size)
    return _write(result | {"source": {"ckpt": str(ckpt)}}, out, plot)


def align_hf_model(hf_model: str | Path, texts: str | Path, image_features: str | Path, out: str | Path,
                   plot: str | Path | None = None, k: int = 10, pooling: str = "mean", device: str = "cpu",
                   batch_size: int = 64) -> dict:  # fmt: skip
    """A local HF causal LM's states of `texts` (one per line) against `image_features` (N, D), row by row."""
    _check_outputs(out, plot)
    result = hf_alignment(hf_model, read_texts(texts), load_image_features(image_features), k=k, pooling=pooling,
                          batch_size=batch_size, device=device)  # fmt: skip
    source = {"hf_model": str(hf_model), "texts": str(texts), "image_features": str(image_features)}
    return _write(result | {"source": source}, out, plot)


def align_features(features: str | Path, out: str | Path, plot: str | Path | None = None, k: int = 10) -> dict:
    """Arrays `image` and `text` of an .npz, each (layers, N, D) or (N, D)."""
    _check_outputs(out, plot)
    result = feature_alignment(*load_feature_pairs(features), k=k)
    return _write(result | {"source": {"features": str(features)}}, out, plot)


def _check_outputs(out: str | Path, plot: str | Path | None) -> None:
    for name, path in (("out", out), ("plot", plot)):
        if path is not None and Path(path).is_dir():
            raise UserError(f"{param(name)} must be a file path, but {path} is a directory")


def _write(result: dict, out: str | Path, plot: str | Path | None) -> dict:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    if plot is not None:
        Path(plot).parent.mkdir(parents=True, exist_ok=True)
        plot_alignment(result, plot)
    return result


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

"""Atomic file writes: temp file, fsync, rename. A kill mid-write leaves the previous file intact."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(temp_path), fsync the result, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    tmp.replace(path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors file of detached, contiguous CPU copies."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))


def atomic_torch_save(obj, path: Path) -> None:
    """For plain state (optimizer moments, counters) that `torch.load(weights_only=True)` reads back."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))

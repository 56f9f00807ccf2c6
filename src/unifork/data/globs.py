"""Shard lists from glob patterns: a leaf module, so readers and specs can both use it."""

from __future__ import annotations

import glob
from pathlib import Path

from unifork.errors import UserError


def expand_glob(pattern: str, spec: str) -> list[Path]:
    """Files matching a glob with optional {a,b} / {000..009} braces, sorted; a folder means all files in it."""
    from braceexpand import braceexpand  # a dependency of webdataset

    if Path(pattern).is_dir():
        pattern = str(Path(pattern) / "*")
    files = sorted({Path(p) for part in braceexpand(pattern) for p in glob.glob(part) if Path(p).is_file()})
    if not files:
        raise UserError(f"data source '{spec}': no files match {pattern}")
    return files

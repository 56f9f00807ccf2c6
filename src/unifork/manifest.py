"""A checkpoint directory's manifest: the size and sha256 of every file in it, written last.

A file truncated by a full disk, damaged in a copy or edited by hand then fails with one line naming it, instead
of loading garbage or failing deep inside safetensors or torch. Directories without a manifest (fork-hf output,
checkpoints written before manifests existed) load as before.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from unifork.atomic import atomic_write_text
from unifork.errors import UserError

MANIFEST_FILE = "manifest.json"
_CHUNK = 1 << 24  # 16 MiB: hashing a multi-GB weights file streams it instead of reading it whole


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: str | Path) -> None:
    """Record every file under `directory` (paths relative to it); call it after the last of them is written."""
    directory = Path(directory)
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    entries = {p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in files}
    atomic_write_text(directory / MANIFEST_FILE, json.dumps({"files": entries}, indent=1))


def has_manifest(directory: str | Path) -> bool:
    return (Path(directory) / MANIFEST_FILE).is_file()


def verify_manifest(directory: str | Path, names: tuple[str, ...] | None = None) -> None:
    """Check the files the manifest lists (or only `names` of them); a directory without a manifest passes.

    The size is checked before the hash: a truncated file fails without being read.
    """
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not path.is_file():
        return
    try:
        entries = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"corrupt checkpoint manifest {path}: {err}") from None
    for name, entry in entries.items():
        if names is not None and name not in names:
            continue
        file = directory / name
        if not file.is_file():
            raise UserError(f"checkpoint file {file} is missing (listed in {path})")
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise UserError(f"checkpoint file {file} has {size} bytes, its manifest says {entry['bytes']}: truncated or replaced")
        if file_sha256(file) != entry["sha256"]:
            raise UserError(f"checkpoint file {file} does not match the sha256 in {path}: damaged or edited")

"""A stage's checkpoints on disk, safe against a kill while saving and against damaged files.

OUT/stages/<name>/step-0000120/   a full checkpoint (save_pretrained) + train_state.pt, then manifest.json, last
OUT/stages/<name>/DONE            the stage finished; its newest step directory holds the stage's result

A step directory counts only once its manifest exists: a process killed while saving leaves one without, which
resume passes over (the checkpoint before it is untouched) and the next save of that step replaces. After each
save the newest `keep_last` complete directories stay and older ones are removed. Every step directory is a
checkpoint `Pipeline.from_pretrained` and `--ckpt` accept.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from unifork.checkpoint import (
    MANIFEST_FILE,
    has_manifest,
    verify_manifest,
    write_manifest,
)
from unifork.errors import UserError

STATE_FILE = "train_state.pt"  # optimizer moments, step, random streams: what resuming needs beyond the weights
DONE_FILE = "DONE"
_PREFIX = "step-"


def step_dir(stage_dir: Path, step: int) -> Path:
    return stage_dir / f"{_PREFIX}{step:07d}"


def checkpoint_step(directory: Path) -> int:
    """The step a step directory holds."""
    return int(directory.name[len(_PREFIX) :])


def _step_dirs(stage_dir: Path) -> list[Path]:
    """Every step directory, complete or not, oldest first."""
    if not stage_dir.is_dir():
        return []
    found = [p for p in stage_dir.iterdir() if p.is_dir() and p.name.startswith(_PREFIX) and p.name[len(_PREFIX):].isdigit()]
    return sorted(found, key=checkpoint_step)


def complete_checkpoints(stage_dir: Path) -> list[Path]:
    """Step directories whose save finished (they have a manifest), oldest first."""
    return [p for p in _step_dirs(stage_dir) if has_manifest(p)]


def latest_checkpoint(stage_dir: Path) -> Path | None:
    """The newest complete step directory, or None. Runs from before step directories kept one in `stage_dir`."""
    complete = complete_checkpoints(stage_dir)
    if complete:
        return complete[-1]
    return stage_dir if (stage_dir / STATE_FILE).is_file() else None


def save_checkpoint(stage_dir: Path, step: int, write: Callable[[Path], None], keep_last: int) -> Path:
    """`write(directory)` fills a new step directory; the manifest written after it makes it count."""
    target = step_dir(stage_dir, step)
    shutil.rmtree(target, ignore_errors=True)  # left by a save of this step that was killed before its manifest
    write(target)
    write_manifest(target)
    _prune(stage_dir, keep_last)
    return target


def _prune(stage_dir: Path, keep_last: int) -> None:
    keep = set(complete_checkpoints(stage_dir)[-keep_last:])
    for path in _step_dirs(stage_dir):
        if path not in keep:
            # the manifest goes first: a kill half-way through leaves an incomplete directory, which nothing reads
            (path / MANIFEST_FILE).unlink(missing_ok=True)
            shutil.rmtree(path)


def load_train_state(directory: Path, device: torch.device) -> dict:
    """train_state.pt of a checkpoint, checked against its manifest; plain tensors and containers only."""
    verify_manifest(directory, names=(STATE_FILE,))
    path = directory / STATE_FILE
    try:
        return torch.load(path, weights_only=True, map_location=device)
    except Exception as err:  # noqa: BLE001 -- torch raises RuntimeError, EOFError or pickle errors on damaged files
        first_line = next(iter(str(err).splitlines()), type(err).__name__)
        raise UserError(f"corrupt training state {path}: {first_line}") from None

"""Model weights on disk: config.json + model.safetensors, written atomically, loaded strictly and loudly.

Where the directory has a manifest (training checkpoints write one, see unifork.manifest), both files are checked
against it before loading.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from unifork.atomic import atomic_save_tensors
from unifork.errors import UserError
from unifork.manifest import MANIFEST_FILE, verify_manifest
from unifork.model.config import ModelConfig
from unifork.model.unifork import TASKS, UniFork

WEIGHTS_FILE = "model.safetensors"


# A tied text head is the text embedding under a second name: stored once (safetensors refuses shared storage).
TIED_HEAD, TIED_TO = "und.head.weight", "trunk.text_embed.weight"


def _tied(model: UniFork) -> bool:
    return model.cfg.tie_word_embeddings and model.und is not None


def save_model(model: UniFork, directory: str | Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST_FILE).unlink(missing_ok=True)  # it described the files about to be replaced
    model.cfg.save(directory)
    state = model.state_dict()
    if _tied(model):
        del state[TIED_HEAD]
    atomic_save_tensors(state, directory / WEIGHTS_FILE)


def load_model(directory: str | Path, task: str | None = None, device: str | torch.device = "cpu") -> UniFork:
    """Load a checkpoint; `task="gen"` / `"und"` builds and loads the trunk and that branch only."""
    if task is not None and task not in TASKS:
        raise UserError(f"unknown task '{task}'; choose one of: {', '.join(TASKS)} (or none for both)")
    directory = Path(directory)
    verify_manifest(directory, names=("config.json", WEIGHTS_FILE))
    cfg = ModelConfig.load(directory)
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise UserError(f"missing model weights {path}; is {directory} a unifork checkpoint directory?")
    try:
        state = load_file(str(path), device=str(device))
    except Exception as err:  # safetensors raises its own types on truncated or garbled files
        raise UserError(f"corrupt model weights {path}: {err}") from None
    tasks = TASKS if task is None else (task,)
    with torch.device(device):
        model = UniFork(cfg, tasks=tasks)
    skipped = tuple(f"{t}." for t in TASKS if t not in tasks)
    state = {k: v for k, v in state.items() if not k.startswith(skipped)} if skipped else state
    expected = model.state_dict()
    if _tied(model):
        del expected[TIED_HEAD]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
            if keys
        )
        raise UserError(f"weights {path} do not match {directory / 'config.json'} ({detail})")
    if _tied(model):
        state[TIED_HEAD] = state[TIED_TO]
    model.load_state_dict(state, strict=True)
    return model.eval()

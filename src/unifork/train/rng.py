"""The global random streams a resumed run must continue from where the interrupted one stopped.

Today's training draws nothing from them (batches come from per-step generators, the model has no dropout), but
a data loader, augmentation or dropout added later would, and resume must stay exact then too. The state is
stored as tensors, ints and tuples only, so `torch.load(weights_only=True)` reads it back.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def capture_rng(device: torch.device) -> dict:
    numpy_state = np.random.get_state(legacy=False)  # {"state": {"key": uint32 array, "pos"}, "has_gauss", "gauss"}
    state = {
        "torch": torch.get_rng_state(),
        "numpy_key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
        "numpy_pos": int(numpy_state["state"]["pos"]),
        "numpy_gauss": (int(numpy_state["has_gauss"]), float(numpy_state["gauss"])),
        "python": random.getstate(),
    }
    if device.type == "cuda":  # this rank's GPU only: reading the others would open a context on each
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    has_gauss, gauss = state["numpy_gauss"]
    key = state["numpy_key"].numpy().astype(np.uint32)
    np.random.set_state({"bit_generator": "MT19937", "state": {"key": key, "pos": state["numpy_pos"]},
                         "has_gauss": has_gauss, "gauss": gauss})  # fmt: skip
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:  # a CPU run resumed on a GPU starts the GPU stream fresh
        torch.cuda.set_rng_state(state["cuda"], device)

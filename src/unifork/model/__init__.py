"""The UniFork model: config, blocks, the Y-fork (checkpoint directories: unifork.checkpoint)."""

from unifork.model.config import SIZES, ModelConfig, named_config
from unifork.model.unifork import CODE, IGNORE, LATENT, TASK_ID, TASKS, TEXT, Batch, UniFork, attention_mask

__all__ = [
    "CODE", "IGNORE", "LATENT", "SIZES", "TASKS", "TASK_ID", "TEXT", "Batch", "ModelConfig", "UniFork",
    "attention_mask", "named_config",
]

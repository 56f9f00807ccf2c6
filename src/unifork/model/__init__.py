"""The UniFork model: config, blocks, the Y-fork, checkpoints."""

from unifork.model.checkpoint import load_model, save_model
from unifork.model.config import SIZES, ModelConfig, named_config
from unifork.model.unifork import CODE, IGNORE, LATENT, TASK_ID, TASKS, TEXT, Batch, UniFork, attention_mask

__all__ = [
    "CODE", "IGNORE", "LATENT", "SIZES", "TASKS", "TASK_ID", "TEXT", "Batch", "ModelConfig", "UniFork",
    "attention_mask", "load_model", "named_config", "save_model",
]

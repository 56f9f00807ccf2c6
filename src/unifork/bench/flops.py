"""FLOPs of a training step, counted from the config and the batch (one multiply-add = 2 FLOPs).

    layers     6 * (q, k, v, o, gate, up, down weights) * n_layers * positions     every row runs n_layers layers
    attention  12 * n_layers * d * (sum of each task's rows x width^2)          QK^T and AV, forward 4 T^2 d
    heads      6 * d * V_task * (supervised positions of that task)            logits only where a loss applies
    projector  (6 * d * d + 4 * latent_dim * d) * latent positions            its input needs no gradient

Backward is twice the forward for every matmul (gradients of the input and of the weight), hence 6 = 3 x 2.
"computed" counts what the model computes: each task's rows at their own width (UniFork.forward), padding within a
task included, and attention over the full width x width square because SDPA with an explicit mask computes every
score. "useful" counts real tokens only: each row's own length, its own square; MFU credits that. Norms, RoPE,
softmax and the optimizer are not counted: MFU credits matmul work only, as PaLM's definition (arXiv 2204.02311,
App. B) does.
"""

from __future__ import annotations

from unifork.model.config import ModelConfig
from unifork.model.unifork import IGNORE, TASK_ID, Batch, task_columns


def layer_weights(cfg: ModelConfig) -> int:
    """Multiply-adds per position of one block's matmuls: q, o (n_heads), k, v (n_kv_heads), and the SwiGLU."""
    return cfg.d_model * cfg.head_dim * (2 * cfg.n_heads + 2 * cfg.n_kv_heads) + 3 * cfg.d_model * cfg.mlp_hidden


def train_step_flops(cfg: ModelConfig, batch: Batch) -> dict:
    """FLOPs of forward + backward of UniFork.forward(batch) as computed, by part, with their sum as "total", and
    the same counted over real tokens only under "useful"."""
    d = cfg.d_model
    supervised = batch.targets != IGNORE  # (B, T)
    vocab = {"und": cfg.text_vocab_size, "gen": cfg.image_vocab_size}
    latent_positions = 0 if batch.latents is None else batch.latents.shape[0] * batch.latents.shape[1]
    positions = squares = 0
    for task in vocab:
        rows = (batch.task == TASK_ID[task]).nonzero().squeeze(1)
        if len(rows):
            cols = task_columns(batch, rows)
            width = cols.stop - cols.start
            positions, squares = positions + len(rows) * width, squares + len(rows) * width**2
    lengths = batch.valid.sum(-1)
    fixed = {
        "heads": sum(6 * d * v * int(supervised[batch.task == TASK_ID[task]].sum()) for task, v in vocab.items()),
        "projector": (6 * d * d + 4 * cfg.image_latent_dim * d) * latent_positions,
    }
    flops = _with_sums({"layers": _layers(cfg, positions), "attention": _attention(cfg, squares), **fixed})
    useful = {"layers": _layers(cfg, int(lengths.sum())), "attention": _attention(cfg, int((lengths**2).sum())), **fixed}
    return flops | {"useful": _with_sums(useful)}


def _layers(cfg: ModelConfig, positions: int) -> int:
    return 6 * layer_weights(cfg) * cfg.n_layers * positions


def _attention(cfg: ModelConfig, squares: int) -> int:
    return 12 * cfg.n_layers * squares * cfg.n_heads * cfg.head_dim


def _with_sums(flops: dict[str, int]) -> dict[str, int]:
    matmul = flops["layers"] + flops["heads"] + flops["projector"]  # everything but attention
    return flops | {"matmul": matmul, "total": matmul + flops["attention"]}

"""FLOPs of a training step, counted from the config and the batch (one multiply-add = 2 FLOPs).

    layers     6 * (q, k, v, o, gate, up, down weights) * n_layers * B * T    every row runs n_layers layers
    attention  12 * n_layers * B * T^2 * d                                 QK^T and AV, forward 4 T^2 d
    heads      6 * d * V_task * (supervised positions of that task)        logits only where a loss applies
    projector  (6 * d * d + 4 * latent_dim * d) * latent positions        its input needs no gradient

Backward is twice the forward for every matmul (gradients of the input and of the weight), hence 6 = 3 x 2.
Positions are all B x T columns, left padding included: the model computes them. Attention is counted over the
full T x T square because SDPA with an explicit mask computes every score, causal or not. Norms, RoPE, softmax and
the optimizer are not counted: MFU credits matmul work only, as PaLM's definition (arXiv 2204.02311, App. B) does.
"""

from __future__ import annotations

from unifork.model.config import ModelConfig
from unifork.model.unifork import IGNORE, TASK_ID, Batch


def layer_weights(cfg: ModelConfig) -> int:
    """Multiply-adds per position of one block's matmuls: q, o (n_heads), k, v (n_kv_heads), and the SwiGLU."""
    return cfg.d_model * cfg.head_dim * (2 * cfg.n_heads + 2 * cfg.n_kv_heads) + 3 * cfg.d_model * cfg.mlp_hidden


def train_step_flops(cfg: ModelConfig, batch: Batch) -> dict[str, int]:
    """FLOPs of forward + backward of UniFork.forward(batch), by part, and their sum as "total"."""
    b, t = batch.tokens.shape
    d = cfg.d_model
    supervised = batch.targets != IGNORE  # (B, T)
    vocab = {"und": cfg.text_vocab_size, "gen": cfg.image_vocab_size}
    latent_positions = 0 if batch.latents is None else batch.latents.shape[0] * batch.latents.shape[1]
    flops = {
        "layers": 6 * layer_weights(cfg) * cfg.n_layers * b * t,
        "heads": sum(6 * d * v * int(supervised[batch.task == TASK_ID[task]].sum()) for task, v in vocab.items()),
        "projector": (6 * d * d + 4 * cfg.image_latent_dim * d) * latent_positions,
        "attention": 12 * cfg.n_layers * b * t * t * cfg.n_heads * cfg.head_dim,
    }
    flops["matmul"] = flops["layers"] + flops["heads"] + flops["projector"]  # everything but attention
    flops["total"] = flops["matmul"] + flops["attention"]
    return flops

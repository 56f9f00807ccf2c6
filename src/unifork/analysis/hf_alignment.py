"""Per-layer alignment of any local Hugging Face causal LM's text features with image features the user supplies
(e.g. pooled outputs of a vision encoder for the images the texts describe), as in Huh et al. 2024, Sec. 3.

`transformers` is imported here only, so the rest of unifork never pays for it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from unifork.analysis.knn_alignment import chance_alignment, check_sizes, layerwise_alignment
from unifork.analysis.pooling import check_pooling, pool
from unifork.errors import UserError, param


@torch.inference_mode()
def hf_alignment(model_dir: str | Path, texts: list[str], image_features: np.ndarray, k: int = 10,
                 pooling: str = "mean", batch_size: int = 32, device: str = "cpu") -> dict:  # fmt: skip
    """Alignment of each LM layer's pooled text features (layer 0 = embeddings) with fixed (N, D) image features.

    Text i pairs with row i of image_features. Special tokens (BOS, ...) are left out of the pooling: their states
    are the same for every text and, in many LMs, huge (attention sinks), so they would swamp a mean.
    """
    image_features = np.asarray(image_features)
    if image_features.ndim != 2:
        raise UserError(f"image features must be a 2-D (N, D) array, got shape {image_features.shape}")
    if len(texts) != image_features.shape[0]:
        raise UserError(f"got {len(texts)} texts but {image_features.shape[0]} rows of image features; give one row per text")
    check_sizes(len(texts), k)
    check_pooling(pooling)
    model, tokenizer = load_causal_lm(model_dir, device)
    text_layers = text_features(model, tokenizer, texts, pooling, batch_size)  # (layers, N, D)
    n_layers = text_layers.shape[0] - 1
    return {
        "model": f"{model.config.model_type} from {model_dir}, {n_layers} layers",
        "layers": list(range(n_layers + 1)),
        "sharing": None,
        "n_layers": n_layers,
        "k": k,
        "n_samples": len(texts),
        "pooling": pooling,
        "chance": chance_alignment(len(texts), k),
        "paths": ["lm"],
        "lm": layerwise_alignment(image_features, text_layers, k),
    }


def load_causal_lm(model_dir: str | Path, device: str):
    """(model, tokenizer) from a local directory; never touches the network."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise UserError(f"{param('hf_model')} needs the `transformers` package: pip install 'transformers>=4.45'") from None
    if not Path(model_dir).is_dir():
        raise UserError(f"no such model directory: {model_dir} (give a local Hugging Face model directory)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot load a Hugging Face causal LM and tokenizer from {model_dir}: {first_line}") from None
    return model.to(device).eval(), tokenizer


def text_features(model, tokenizer, texts: list[str], pooling: str, batch_size: int) -> torch.Tensor:
    """Pooled features of every text at every hidden layer: float (layers, N, D), on the CPU."""
    device = next(model.parameters()).device
    encoded = tokenizer(list(texts), return_special_tokens_mask=True)
    chunks = []
    for start in range(0, len(texts), batch_size):
        ids = encoded["input_ids"][start : start + batch_size]
        special = encoded["special_tokens_mask"][start : start + batch_size]
        width = max(len(row) for row in ids)
        # right padding by hand (pad id 0, masked out): not every tokenizer defines a pad token, and under
        # causal attention the real tokens never see the padding after them
        input_ids = torch.zeros(len(ids), width, dtype=torch.long)
        attention = torch.zeros(len(ids), width, dtype=torch.long)
        content = torch.zeros(len(ids), width, dtype=torch.bool)  # the positions to pool
        for row, (tokens, is_special) in enumerate(zip(ids, special)):
            input_ids[row, : len(tokens)] = torch.tensor(tokens)
            attention[row, : len(tokens)] = 1
            content[row, : len(tokens)] = ~torch.tensor(is_special, dtype=torch.bool)
        empty = (~content.any(dim=1)).nonzero()
        if len(empty):
            raise UserError(f"text {start + int(empty[0])} has no tokens besides special ones; give non-empty texts")
        out = model(input_ids=input_ids.to(device), attention_mask=attention.to(device), output_hidden_states=True)
        content = content.to(device)
        chunks.append(torch.stack([pool(h.float(), content, pooling) for h in out.hidden_states]).cpu())
    return torch.cat(chunks, dim=1)

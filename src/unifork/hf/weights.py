"""Tensor names of the understanding path in our checkpoints and in HF Qwen2/Llama ones, and HF weight files.

One table serves both directions: fork-hf reads HF names into ours, export-hf writes ours under HF names.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from unifork.errors import UserError
from unifork.model.config import ModelConfig
from unifork.model.sharing import layer_modules

# Inside one decoder layer: our Block's names -> HF's (model.layers.{i}.*).
BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.o_proj.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
}
BIAS_NAMES = {f"attn.{p}_proj.bias": f"self_attn.{p}_proj.bias" for p in "qkv"}  # Qwen2 only
VOCAB_TENSORS = ("trunk.text_embed.weight", "und.head.weight")  # (vocab, d_model): rows follow the text ids
# HF tensors that carry nothing our model needs: old checkpoints store RoPE's inv_freq; tied ones may store the head.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def und_path_names(cfg: ModelConfig) -> dict[str, str]:
    """Our key -> HF key for text embedding, every layer on the und path, final norm and (untied) text head."""
    names = {"trunk.text_embed.weight": "model.embed_tokens.weight", "und.norm.weight": "model.norm.weight"}
    if not cfg.tie_word_embeddings:
        names["und.head.weight"] = "lm_head.weight"
    block = BLOCK_NAMES | (BIAS_NAMES if cfg.attention_bias else {})
    for i, module in enumerate(layer_modules(cfg.plan, "und")):
        names.update({f"{module}.{mine}": f"model.layers.{i}.{theirs}" for mine, theirs in block.items()})
    return names


def read_hf_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of model.safetensors, or of the shards listed in model.safetensors.index.json."""
    single, index = model_dir / "model.safetensors", model_dir / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as err:
            raise UserError(f"corrupt {index}: {err}") from None
        files = [model_dir / shard for shard in shards]
    else:
        raise UserError(
            f"no model.safetensors or model.safetensors.index.json in {model_dir}; fork-hf reads safetensors only "
            "(re-save a .bin checkpoint with transformers' save_pretrained)"
        )
    state = {}
    for file in files:
        if not file.is_file():
            raise UserError(f"missing weight shard {file} (listed in {index})")
        try:
            state.update(load_file(str(file)))
        except Exception as err:  # safetensors raises its own types on truncated or garbled files
            raise UserError(f"corrupt weights {file}: {err}") from None
    return state


def take_und_path(hf_state: dict[str, torch.Tensor], cfg: ModelConfig, source: Path) -> dict[str, torch.Tensor]:
    """Our und-path tensors (float32) from an HF state dict; loud about any missing or unexpected tensor."""
    names = und_path_names(cfg)
    missing = sorted(hf for hf in names.values() if hf not in hf_state)
    ignored = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    unexpected = sorted(k for k in set(hf_state) - set(names.values()) - ignored if not k.endswith(IGNORED_SUFFIXES))
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            raise UserError(f"weights in {source} do not match its config.json: {label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}")
    return {ours: hf_state[hf].float() for ours, hf in names.items()}

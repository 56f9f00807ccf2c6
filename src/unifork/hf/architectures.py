"""Which Hugging Face decoder LMs map one to one onto our blocks, and their config.json <-> our ModelConfig.

Both are pre-norm RMSNorm + RoPE + grouped-query attention + SwiGLU stacks: Qwen2 with q/k/v biases, Llama
without. config.json is read as plain JSON (no transformers needed) in either transformers' 4.x spelling
(`rope_theta`, `rope_scaling`) or its 5.x spelling (`rope_parameters`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from unifork.errors import UserError
from unifork.model.config import ModelConfig
from unifork.tokenizers.text import SPECIAL_TOKENS, TextTokenizer

QWEN2, LLAMA = "Qwen2ForCausalLM", "LlamaForCausalLM"
MODEL_TYPES = {QWEN2: "qwen2", LLAMA: "llama"}
SUPPORTED = f"{QWEN2}, {LLAMA}"


@dataclass(frozen=True)
class Backbone:
    """What fork-hf takes from an HF config.json."""

    architecture: str
    vocab_size: int  # rows of the HF embedding matrix (often padded past the tokenizer's ids)
    shape: dict  # ModelConfig keyword arguments: d_model, n_layers, heads, RoPE, norm, bias, tying


def read_backbone(model_dir: Path) -> Backbone:
    path = model_dir / "config.json"
    if not path.is_file():
        raise UserError(f"missing {path}; give a local Hugging Face model directory (config.json, model.safetensors, tokenizer.json)")
    try:
        raw = json.loads(path.read_text())
    except ValueError as err:
        raise UserError(f"corrupt {path}: {err}") from None
    architecture = _architecture(raw, path)

    def need(key):
        if key not in raw:
            raise UserError(f"{path} lacks '{key}', which every {architecture} config has")
        return raw[key]

    n_heads = need("num_attention_heads")
    shape = {
        "d_model": need("hidden_size"),
        "n_layers": need("num_hidden_layers"),
        "n_heads": n_heads,
        "n_kv_heads": raw.get("num_key_value_heads") or n_heads,
        "mlp_hidden": need("intermediate_size"),
        "max_seq_len": raw.get("max_position_embeddings", 2048),
        "rope_theta": float(_rope_theta(raw, path)),
        "norm_eps": float(raw.get("rms_norm_eps", 1e-6)),
        "attention_bias": architecture == QWEN2,
        "tie_word_embeddings": bool(raw.get("tie_word_embeddings", False)),
    }
    _refuse_unsupported(raw, architecture, shape, path)
    return Backbone(architecture, need("vocab_size"), shape)


def _architecture(raw: dict, path: Path) -> str:
    names = raw.get("architectures") or []
    by_type = {t: a for a, t in MODEL_TYPES.items()}
    name = names[0] if names else by_type.get(raw.get("model_type"), f"model_type '{raw.get('model_type')}'")
    if name not in MODEL_TYPES:
        raise UserError(f"unsupported architecture {name} in {path}; fork-hf supports {SUPPORTED}")
    return name


def _rope_theta(raw: dict, path: Path) -> float:
    """RoPE base; scaled variants (llama3, yarn, linear, dynamic) change inv_freq and are refused."""
    params = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise UserError(f"{path} uses '{kind}' RoPE scaling; fork-hf supports plain RoPE only")
    return params.get("rope_theta", raw.get("rope_theta", 10000.0))


def _refuse_unsupported(raw: dict, architecture: str, shape: dict, path: Path) -> None:
    head_dim = raw.get("head_dim")
    refusals = [
        (raw.get("hidden_act", "silu") != "silu", f"hidden_act '{raw.get('hidden_act')}' (only silu: SwiGLU)"),
        (architecture == LLAMA and raw.get("attention_bias", False), "attention_bias (our Llama layout has no o_proj bias)"),
        (raw.get("mlp_bias", False), "mlp_bias"),
        (raw.get("use_sliding_window", False), "sliding-window attention"),
        (head_dim not in (None, shape["d_model"] // shape["n_heads"]), f"head_dim {head_dim} != hidden_size / num_attention_heads"),
    ]  # fmt: skip
    for refused, what in refusals:
        if refused:
            raise UserError(f"{path} uses {what}, which fork-hf does not support")


def hf_config(cfg: ModelConfig, text: TextTokenizer) -> dict:
    """config.json of the understanding path as a plain causal LM over our text vocabulary.

    Written in transformers' 4.x spelling (`rope_theta`), which is also how the Qwen2.5 checkpoints on the Hub
    spell it and which 5.x still reads.
    """
    architecture = QWEN2 if cfg.attention_bias else LLAMA
    config = {
        "architectures": [architecture],
        "model_type": MODEL_TYPES[architecture],
        "vocab_size": cfg.text_vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": text.bos_id,
        "eos_token_id": text.eos_id,
        "pad_token_id": text.pad_id,
        "torch_dtype": "float32",
    }
    if architecture == QWEN2:
        config["use_sliding_window"] = False
    else:
        config.update(attention_bias=False, mlp_bias=False, head_dim=cfg.head_dim)
    return config


def hf_tokenizer_config(cfg: ModelConfig) -> dict:
    """tokenizer_config.json, so AutoTokenizer loads tokenizer.json with our special tokens."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": SPECIAL_TOKENS["bos"],
        "eos_token": SPECIAL_TOKENS["eos"],
        "pad_token": SPECIAL_TOKENS["pad"],
        "model_max_length": cfg.max_seq_len,
    }

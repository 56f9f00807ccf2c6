"""Pretrained Hugging Face backbones: fork a Qwen2/Llama checkpoint into a UniFork (fork-hf) and export the
understanding path back as a plain HF causal LM (export-hf). Only tests import transformers; these read and write
config.json, safetensors and tokenizer.json directly."""

from unifork.hf.convert import fork_hf
from unifork.hf.export import export_hf

__all__ = ["export_hf", "fork_hf"]

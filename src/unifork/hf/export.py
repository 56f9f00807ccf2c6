"""export-hf: the understanding path of a UniFork checkpoint as a standard HF causal LM over its text vocabulary.

trunk layers + und layers + und norm + text head is exactly a Qwen2 (q/k/v biases) or Llama (none) decoder, so
transformers loads it with AutoModelForCausalLM and computes the same text logits. The generation branch, the
image embeddings and the projector are left out: a text-only LM has no use for them.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from unifork.atomic import atomic_write, atomic_write_text
from unifork.checkpoint import load_model
from unifork.errors import UserError, param
from unifork.hf.architectures import hf_config, hf_tokenizer_config
from unifork.hf.weights import und_path_names
from unifork.tokenizers.text import TextTokenizer


def export_hf(ckpt: str | Path, out: str | Path) -> dict:
    """Write config.json, model.safetensors, tokenizer.json and tokenizer_config.json to `out`."""
    ckpt, out = Path(ckpt), Path(out)
    if not ckpt.is_dir():
        raise UserError(f"no such checkpoint directory: {ckpt}")
    if out.resolve() == ckpt.resolve():
        raise UserError(f"{param('out')} must differ from {param('ckpt')} ({ckpt}): the export would overwrite the "
                        "checkpoint's config.json")  # fmt: skip
    model = load_model(ckpt, task="und")
    text = TextTokenizer.load(ckpt)
    config = hf_config(model.cfg, text)
    state = model.state_dict()
    # Contiguous copies: safetensors stores no views. A tied head is not written; HF ties it on load.
    tensors = {hf: state[ours].detach().contiguous().clone() for ours, hf in und_path_names(model.cfg).items()}
    out.mkdir(parents=True, exist_ok=True)
    # transformers refuses safetensors files without the "format" metadata that its own save_pretrained writes.
    atomic_write(out / "model.safetensors", lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    atomic_write_text(out / "config.json", json.dumps(config, indent=2))
    atomic_write_text(out / "tokenizer_config.json", json.dumps(hf_tokenizer_config(model.cfg), indent=2))
    text.save(out)
    return {"architecture": config["architectures"][0], "parameters": sum(t.numel() for t in tensors.values())}

"""`unifork data pretokenize`: encode every image of a source once with the frozen image tokenizer.

Training then reads codes (and latents) instead of decoding and encoding images every step: the tokenizer
never changes during training, so this is pure savings (layout and guarantees: pretokenized.py). Shards are
written atomically and meta.json last; a killed run continues where it stopped when started again.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from tqdm import tqdm

from unifork.atomic import atomic_save_tensors, atomic_write_text
from unifork.data.pretokenized import FORMAT, META_FILE, shard_stem
from unifork.data.spec import open_source, parse_source
from unifork.errors import UserError, param
from unifork.images import CorruptImage, fit_image
from unifork.tokenizers.codec import ImageCodec
from unifork.tokenizers.image import images_to_tensor
from unifork.tokenizers.loading import load_image_tokenizer


def _encode(tokenizer: ImageCodec, pixels: list[np.ndarray], latents: bool, batch_size: int) -> dict:
    codes, lats = [], []
    with torch.no_grad():
        for i in range(0, len(pixels), batch_size):
            chunk = images_to_tensor(np.stack(pixels[i : i + batch_size]))
            codes.append(tokenizer.encode(chunk))
            if latents:
                lats.append(tokenizer.encode_latents(chunk))
    return {"codes": torch.cat(codes), **({"latents": torch.cat(lats)} if latents else {})}


def _write_shard(out: Path, index: int, source, tokenizer: ImageCodec, latents: bool, batch_size: int) -> None:
    records = list(source.read(index))
    pixels, valid = [], []
    for record in records:
        try:
            pixels.append(fit_image(record.image, tokenizer.cfg.image_size))
            valid.append(True)
        except CorruptImage:
            valid.append(False)
    g, d = tokenizer.cfg.grid**2, tokenizer.cfg.latent_dim
    encoded = _encode(tokenizer, pixels, latents, batch_size) if pixels else {}
    ok = torch.tensor(valid, dtype=torch.bool)
    # int32 halves the shards; packed residual codes (tokenizers/residual.py) may need all of an int64
    dtype = torch.int32 if tokenizer.cfg.num_codes**tokenizer.cfg.residual_depth <= 2**31 else torch.int64
    tensors = {"codes": torch.zeros(len(records), g, dtype=dtype), "valid": ok}
    if latents:
        tensors["latents"] = torch.zeros(len(records), g, d)
    for name, values in encoded.items():
        tensors[name][ok] = values.to(tensors[name].dtype)
    lines = [json.dumps({"key": r.key, "captions": list(r.captions), "qa": [list(p) for p in r.qa]}) for r in records]
    atomic_write_text(out / f"{shard_stem(index)}.jsonl", "".join(line + "\n" for line in lines))
    atomic_save_tensors(tensors, out / f"{shard_stem(index)}.safetensors")  # last: its presence marks the shard done


def pretokenize(source: str, tokenizer_dir: str | Path, out: str | Path, latents: bool = True, batch_size: int = 256,
                progress: bool = True) -> dict:  # fmt: skip
    """Encode every image of `source` (a spec, see data/spec.py) into `out`; returns meta.json's content."""
    scheme, _ = parse_source(source)
    if scheme in ("world", "pretokenized"):
        raise UserError(f"pretokenize reads image data (folder:, webdataset:, hf:, parquet:), not '{source}'")
    tokenizer = load_image_tokenizer(tokenizer_dir)
    reader = open_source(source)
    out = Path(out)
    names = reader.shards()
    meta = {"format": FORMAT, "complete": False, "source": source, "tokenizer": tokenizer.fingerprint(),
            "image_size": tokenizer.cfg.image_size, "grid": tokenizer.cfg.grid, "latent_dim": tokenizer.cfg.latent_dim,
            "latents": latents, "shards": [{"name": n} for n in names]}  # fmt: skip
    if (out / META_FILE).is_file():  # continue an unfinished run of this very command, nothing else
        before = json.loads((out / META_FILE).read_text())
        if before.get("complete"):
            raise UserError(f"{out} already holds finished pretokenized data; choose a new {param('out')}")
        if before != meta:
            raise UserError(f"{out} holds an unfinished pretokenize of another source or tokenizer (or latents "
                            f"setting); choose a new {param('out')}")  # fmt: skip
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{param('out')} {out} exists and is not an empty folder; choose a new {param('out')}")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / META_FILE, json.dumps(meta, indent=1))
    for index in tqdm(range(len(names)), desc="pretokenize", unit="shard", disable=not progress):
        if not (out / f"{shard_stem(index)}.safetensors").is_file():
            _write_shard(out, index, reader, tokenizer, latents, batch_size)
    total = corrupt = 0
    for index, shard in enumerate(meta["shards"]):
        with open(out / f"{shard_stem(index)}.jsonl") as f:
            shard["records"] = sum(1 for _ in f)
        with safe_open(out / f"{shard_stem(index)}.safetensors", "pt") as tensors:
            shard["corrupt"] = int((~tensors.get_tensor("valid")).sum())
        total, corrupt = total + shard["records"], corrupt + shard["corrupt"]
    meta.update(complete=True, records=total, corrupt=corrupt)
    atomic_write_text(out / META_FILE, json.dumps(meta, indent=1))
    return meta

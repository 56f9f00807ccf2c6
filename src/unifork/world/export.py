"""The world on disk: PNGs plus one meta.jsonl line per image (read back as any image is: unifork.images)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from unifork.errors import UserError, param
from unifork.world.dataset import World
from unifork.world.prompts import parse_prompt, scene_from_prompt
from unifork.world.render import render


def export_world(out: str | Path, n: int, split: str = "train", seed: int = 0) -> int:
    """Write samples 0..n-1 of (seed, split) as out/000000.png ... and out/meta.jsonl; returns n."""
    if n < 1:
        raise UserError(f"{param('n')} (the number of scenes) must be at least 1, got {n}")
    world = World(seed=seed, split=split)  # validates split and seed before anything touches the disk
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output path exists and is not a directory: {out}")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "meta.jsonl", "w") as meta:
        for i in range(n):
            sample = world.sample(i)
            name = f"{i:06d}.png"
            Image.fromarray(sample.image).save(out / name)
            record = {
                "file": name,
                "split": split,
                "seed": seed,
                "index": i,
                "source": sample.source,
                "spec": sample.scene.to_dict(),
                "captions": [list(c) for c in sample.captions],
                "qa": [list(q) for q in sample.qa],
            }
            meta.write(json.dumps(record) + "\n")
    return n


def export_prompt_scenes(out: str | Path, prompt: str, n: int, seed: int = 0) -> int:
    """Write n random scenes satisfying `prompt` as out/000000.png ... plus meta.jsonl; returns n."""
    if n < 1:
        raise UserError(f"{param('n')} (the number of scenes) must be at least 1, got {n}")
    spec = parse_prompt(prompt)  # a bad word fails here, before anything touches the disk
    rng = np.random.default_rng(seed)
    scenes = [scene_from_prompt(spec, rng) for _ in range(n)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "meta.jsonl", "w") as meta:
        for i, scene in enumerate(scenes):
            name = f"{i:06d}.png"
            Image.fromarray(render(scene)).save(out / name)
            meta.write(json.dumps({"file": name, "prompt": prompt, "spec": scene.to_dict()}) + "\n")
    return n

"""ShapeEval, our exact GenEval analog: prompts per category, images sampled, judged by the world's detector."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from unifork.tokenizers.image import tensor_to_images
from unifork.world import CATEGORIES, detect, judge, sample_prompt
from unifork.inference.sampler import sample_image_codes


@torch.no_grad()
def evaluate_generation(pipeline, prompts_per_category: int = 8, images_per_prompt: int = 4, cfg_scale: float = 3.0,
                        temperature: float = 1.0, top_k: int = 0, seed: int = 0, heldout: bool = False,
                        keep_images: int = 0) -> dict:  # fmt: skip
    """Fraction of images the detector judges correct for their prompt, overall and per category."""
    rng = np.random.default_rng(seed)
    generator = torch.Generator(device=pipeline.device).manual_seed(seed)
    correct, total = defaultdict(int), defaultdict(int)
    grids = []
    for category in CATEGORIES:
        prompts = [_prompt(category, rng, heldout) for _ in range(prompts_per_category)]
        captions = [p.text() for p in prompts for _ in range(images_per_prompt)]
        codes = sample_image_codes(pipeline.model, pipeline.builder, captions, cfg_scale=cfg_scale,
                                   temperature=temperature, top_k=top_k, generator=generator)  # fmt: skip
        images = tensor_to_images(pipeline.image_tokenizer.decode(codes))
        for index, (caption, image) in enumerate(zip(captions, images)):
            ok = judge(caption, category, detect(image))
            total[category] += 1
            correct[category] += int(ok)
            if index < keep_images:
                grids.append({"category": category, "prompt": caption, "image": image, "correct": ok})
    accuracy = {c: round(correct[c] / total[c], 4) for c in CATEGORIES}
    accuracy["overall"] = round(sum(correct.values()) / sum(total.values()), 4)
    return {"accuracy": accuracy, "n_images": sum(total.values()), "samples": grids}


def _prompt(category: str, rng: np.random.Generator, heldout: bool):
    """A prompt of the category; for the held-out suite, one that mentions a held-out composition."""
    for _ in range(1000):
        prompt = sample_prompt(category, rng, allow_heldout=heldout)
        if not heldout or prompt.has_heldout():
            return prompt
    raise RuntimeError(f"no held-out prompt found for category {category}")

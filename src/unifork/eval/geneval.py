"""ShapeEval, our exact GenEval analog: prompts per category, images sampled, judged by the world's detector."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from unifork.eval.stats import rates
from unifork.inference.sampler import MAX_IMAGES, sample_image_codes
from unifork.inference.settings import DEFAULTS, SamplingSettings
from unifork.tokenizers.image import tensor_to_images
from unifork.world import CATEGORIES, detect, judge, judge_exact, sample_prompt


@torch.no_grad()
def evaluate_generation(pipeline, prompts_per_category: int = 8, images_per_prompt: int = 4,
                        sampling: SamplingSettings = DEFAULTS, seed: int = 0, heldout: bool = False,
                        keep_images: int = 0, return_images: bool = False) -> dict:  # fmt: skip
    """Fraction of images the detector judges correct for their prompt, overall and per category.

    Category-balanced as GenEval: `prompts_per_category` prompts in each of the six categories, each drawn
    `images_per_prompt` times (GenEval uses 4). `heldout` draws only prompts that mention a held-out composition.
    Returns accuracy / ci95 (Wilson) / counts per category and "overall" under GenEval's rules, the same under
    the exact rule (judge_exact) as "exact", n_images, `keep_images` samples per
    category for reports, and with `return_images` every image (uint8 (N, H, W, 3)) and its caption.
    """
    rng = np.random.default_rng(seed)
    generator = torch.Generator(device=pipeline.device).manual_seed(seed)
    correct, exact, total = defaultdict(int), defaultdict(int), defaultdict(int)
    grids, all_captions, all_images = [], [], []
    for category in CATEGORIES:
        prompts = [_prompt(category, rng, heldout) for _ in range(prompts_per_category)]
        captions = [p.text() for p in prompts for _ in range(images_per_prompt)]
        images = _sample(pipeline, captions, sampling, generator)
        for index, (caption, image) in enumerate(zip(captions, images)):
            detected = detect(image)
            ok = judge(caption, category, detected)
            total[category] += 1
            correct[category] += int(ok)
            exact[category] += int(judge_exact(caption, detected))
            if index < keep_images:
                grids.append({"category": category, "prompt": caption, "image": image, "correct": ok})
        if return_images:
            all_captions += captions
            all_images.append(images)
    result = {**rates(correct, total, CATEGORIES), "n_images": sum(total.values()), "samples": grids}
    result["exact"] = rates(exact, total, CATEGORIES)  # the detector recovers the prompt's objects, nothing extra
    if return_images:
        result.update(captions=all_captions, images=np.concatenate(all_images))
    return result


def _sample(pipeline, prompts: list[str], sampling: SamplingSettings, generator: torch.Generator) -> np.ndarray:
    """uint8 images (N, H, W, 3), sampled in batches of at most MAX_IMAGES prompts."""
    chunks = []
    for start in range(0, len(prompts), MAX_IMAGES):
        codes = sample_image_codes(pipeline.model, pipeline.builder, prompts[start : start + MAX_IMAGES],
                                   settings=sampling, generator=generator)  # fmt: skip
        chunks.append(tensor_to_images(pipeline.image_tokenizer.decode(codes)))
    return np.concatenate(chunks)


def _prompt(category: str, rng: np.random.Generator, heldout: bool):
    """A prompt of the category; for the held-out suite, one that mentions a held-out composition."""
    for _ in range(1000):
        prompt = sample_prompt(category, rng, allow_heldout=heldout)
        if not heldout or prompt.has_heldout():
            return prompt
    raise RuntimeError(f"no held-out prompt found for category {category}")

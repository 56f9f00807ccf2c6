"""ShapeEval, our exact GenEval analog: prompts per category, images sampled, judged by the world's detector."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from unifork.eval.stats import rates
from unifork.images import fit_image
from unifork.inference.sampler import MAX_IMAGES, sample_image_codes
from unifork.inference.settings import DEFAULTS, SamplingSettings
from unifork.tokenizers.image import images_to_tensor, tensor_to_images
from unifork.world import CATEGORIES, detect, judge, judge_exact, render, sample_prompt, scene_from_prompt
from unifork.world.captions import object_phrase


@torch.no_grad()
def evaluate_generation(pipeline, prompts_per_category: int = 8, images_per_prompt: int = 4,
                        sampling: SamplingSettings = DEFAULTS, seed: int = 0, heldout: bool = False,
                        keep_images: int = 0, return_images: bool = False, keep_failures: int = 0) -> dict:  # fmt: skip
    """Fraction of images the detector judges correct for their prompt, overall and per category.

    Category-balanced as GenEval: `prompts_per_category` prompts in each of the six categories, each drawn
    `images_per_prompt` times (GenEval uses 4). `heldout` draws only prompts that mention a held-out composition.
    Returns accuracy / ci95 (Wilson) / counts per category and "overall" under GenEval's rules, the same under
    the exact rule (judge_exact) as "exact", n_images, `keep_images` samples per category for reports,
    `keep_failures` images per category that fail the exact rule with what the detector found instead
    ("failures"), and with `return_images` every image (uint8 (N, H, W, 3)) and its caption.
    """
    rng = np.random.default_rng(seed)
    generator = torch.Generator(device=pipeline.device).manual_seed(seed)
    correct, exact, total = defaultdict(int), defaultdict(int), defaultdict(int)
    grids, failures, all_captions, all_images = [], [], [], []
    for category in CATEGORIES:
        prompts = [_prompt(category, rng, heldout) for _ in range(prompts_per_category)]
        captions = [p.text() for p in prompts for _ in range(images_per_prompt)]
        images = _sample(pipeline, captions, sampling, generator)
        for index, (caption, image) in enumerate(zip(captions, images)):
            detected = detect(image)
            ok = judge(caption, category, detected)
            total[category] += 1
            correct[category] += int(ok)
            is_exact = judge_exact(caption, detected)
            exact[category] += int(is_exact)
            if not is_exact and sum(f["category"] == category for f in failures) < keep_failures:
                failures.append({"category": category, "prompt": caption, "image": image, "found": found_objects(detected)})
            if index < keep_images:
                grids.append({"category": category, "prompt": caption, "image": image, "correct": ok})
        if return_images:
            all_captions += captions
            all_images.append(images)
    result = {**rates(correct, total, CATEGORIES), "n_images": sum(total.values()), "samples": grids, "failures": failures}
    result["exact"] = rates(exact, total, CATEGORIES)  # the detector recovers the prompt's objects, nothing extra
    if return_images:
        result.update(captions=all_captions, images=np.concatenate(all_images))
    return result


def found_objects(detected) -> str:
    """What the detector found, in words: "a red circle at (12, 40), a blue square at (44, 20)" or "nothing"."""
    return ", ".join(f"{object_phrase(o)} at ({o.cx}, {o.cy})" for o in detected) or "nothing"


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


@torch.no_grad()
def tokenizer_ceiling(tokenizer, prompts_per_category: int = 16, images_per_prompt: int = 4, seed: int = 0) -> dict:
    """The exact rule on true renderings of ShapeEval prompts after a round trip through the image tokenizer.

    A generator that produced exactly the codes of a true scene would score this, so it bounds what any model
    on this tokenizer can reach per category (the renderings themselves score 1.0 by construction).
    """
    rng = np.random.default_rng(seed)
    exact, total = defaultdict(int), defaultdict(int)
    for category in CATEGORIES:
        prompts = [_prompt(category, rng, False) for _ in range(prompts_per_category)]
        captions = [p.text() for p in prompts for _ in range(images_per_prompt)]
        scenes = np.stack([fit_image(render(scene_from_prompt(c, rng)), tokenizer.cfg.image_size) for c in captions])
        recon = tensor_to_images(tokenizer.decode(tokenizer.encode(images_to_tensor(scenes))))
        for caption, image in zip(captions, recon):
            total[category] += 1
            exact[category] += int(judge_exact(caption, detect(image)))
    return rates(exact, total, CATEGORIES)

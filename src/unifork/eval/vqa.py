"""VQA exact-match accuracy on world scenes the model never trained on, per question type."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from unifork.inference.sampler import answer_questions
from unifork.tokenizers.image import images_to_tensor
from unifork.world import World


@torch.no_grad()
def evaluate_vqa(pipeline, split: str = "test", n_scenes: int = 200, seed: int = 1, batch_size: int = 64,
                 keep_examples: int = 0) -> dict:  # fmt: skip
    """Ask every question of n scenes of `split`; accuracy overall and by type (+ a few examples for reports)."""
    world = World(seed=seed, split=split)
    items = []  # (scene index, qtype, question, answer)
    images = []
    for i in range(n_scenes):
        sample = world.sample(i)
        images.append(sample.image)
        items.extend((i, qtype, q, a) for qtype, q, a in sample.qa)
    pixels = images_to_tensor(np.stack(images)).to(pipeline.device)
    codes = pipeline.image_tokenizer.encode(pixels)
    latents = pipeline.image_tokenizer.encode_latents(pixels)
    correct, total = defaultdict(int), defaultdict(int)
    examples = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        rows = torch.tensor([i for i, *_ in chunk], device=codes.device)
        predictions = answer_questions(pipeline.model, pipeline.builder, codes[rows], latents[rows], [q for _, _, q, _ in chunk])
        for (i, qtype, question, truth), predicted in zip(chunk, predictions):
            total[qtype] += 1
            correct[qtype] += int(predicted == truth)
            if len(examples) < keep_examples and (not examples or examples[-1]["scene"] != i):
                examples.append({"scene": i, "question": question, "answer": predicted, "truth": truth, "image": images[i]})
    by_type = {t: round(correct[t] / total[t], 4) for t in sorted(total)}
    return {
        "split": split,
        "n_questions": sum(total.values()),
        "accuracy": round(sum(correct.values()) / max(1, sum(total.values())), 4),
        "by_type": by_type,
        "examples": examples,
    }

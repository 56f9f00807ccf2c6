"""VQA exact-match accuracy on world scenes the model never trained on, per question type."""

from __future__ import annotations

from collections import defaultdict

import torch

from unifork.eval.caption_match import caption_match
from unifork.eval.stats import rates, wilson_interval
from unifork.inference.answers import answer_questions
from unifork.und_images import und_inputs
from unifork.world import World


@torch.no_grad()
def evaluate_vqa(pipeline, split: str = "test", n_scenes: int = 200, seed: int = 1, batch_size: int = 64,
                 keep_examples: int = 0) -> dict:  # fmt: skip
    """Ask every question of n scenes of `split`; accuracy overall and by type (+ a few examples for reports).

    Returns split, n_questions, accuracy (overall, exact string match), by_type, ci95 and counts per type and
    "overall", describe (caption exact / partial match, see caption_match.py) and `keep_examples` examples.
    """
    world = World(seed=seed, split=split)
    items = []  # (scene index, qtype, question, answer)
    images = []
    for i in range(n_scenes):
        sample = world.sample(i)
        images.append(sample.image)
        items.extend((i, qtype, q, a) for qtype, q, a in sample.qa)
    codes, latents = und_inputs(pipeline.model.cfg, pipeline.image_tokenizer, images, pipeline.device)
    correct, total = defaultdict(int), defaultdict(int)
    describe = []  # (exact, partial) per describe question
    examples = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        rows = torch.tensor([i for i, *_ in chunk], device=codes.device)
        predictions = answer_questions(pipeline.model, pipeline.builder, codes[rows], latents[rows], [q for _, _, q, _ in chunk])
        for (i, qtype, question, truth), predicted in zip(chunk, predictions):
            total[qtype] += 1
            correct[qtype] += int(predicted == truth)
            if qtype == "describe":
                describe.append(caption_match(predicted, truth))
            if len(examples) < keep_examples and (not examples or examples[-1]["scene"] != i):
                examples.append({"scene": i, "question": question, "answer": predicted, "truth": truth, "image": images[i]})
    per_type = rates(correct, total, sorted(total))
    overall = per_type["accuracy"].pop("overall")
    return {
        "split": split,
        "n_questions": sum(total.values()),
        "accuracy": overall,
        "by_type": per_type["accuracy"],
        "ci95": per_type["ci95"],
        "counts": per_type["counts"],
        "describe": _describe_scores(describe),
        "examples": examples,
    }


def _describe_scores(matches: list[tuple[bool, float]]) -> dict:
    """Mean caption exact match (with its Wilson interval) and mean partial match over describe questions."""
    n, exact = len(matches), sum(e for e, _ in matches)
    return {
        "n": n,
        "caption_exact": round(exact / n, 4) if n else 0.0,
        "caption_exact_ci95": [round(v, 4) for v in wilson_interval(exact, n)],
        "caption_partial": round(sum(p for _, p in matches) / n, 4) if n else 0.0,
    }

"""Quality against training steps: a small evaluation of every step checkpoint a run's stages kept on disk.

A recipe asks for it with `[report] learning_curve = true` (and keeps its checkpoints with `keep_last`); each
point is written to OUT/curve/<stage>-<step>.json as it finishes, so a rerun of the report evaluates only new ones.
Every point sees the same unseen test scenes and ShapeEval prompts, so differences between points are the
training's, not the draw's.
"""

from __future__ import annotations

import json
from pathlib import Path

from unifork.atomic import atomic_write_text
from unifork.train.checkpoints import checkpoint_step, complete_checkpoints
from unifork.train.recipe import Recipe

CURVE_DIR = "curve"


def learning_curve(out: Path, recipe: Recipe, progress: bool = True) -> list[dict]:
    """One point per kept step checkpoint, in training order: stage, step, global step, samples seen, VQA
    accuracy overall and by type, exact generation overall and by category."""
    points, steps_before, samples_before = [], 0, 0
    for stage in recipe.stages:
        for checkpoint in complete_checkpoints(out / "stages" / stage.name):
            step = checkpoint_step(checkpoint)
            cache = out / CURVE_DIR / f"{stage.name}-{step:07d}.json"
            if cache.is_file():
                point = json.loads(cache.read_text())
            else:
                point = {"stage": stage.name, "step": step, "global_step": steps_before + step,
                         "samples": samples_before + step * stage.batch_size} | _evaluate(checkpoint, recipe)  # fmt: skip
                cache.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(cache, json.dumps(point, indent=2))
            if progress:
                print(f"  learning curve: {stage.name} step {step}: VQA {point['vqa']['overall']:.3f}, "
                      f"exact generation {point['gen_exact']['overall']:.3f}", flush=True)  # fmt: skip
            points.append(point)
        steps_before += stage.steps
        samples_before += stage.steps * stage.batch_size
    return points


def _evaluate(checkpoint: Path, recipe: Recipe) -> dict:
    from unifork.eval.geneval import evaluate_generation
    from unifork.eval.vqa import evaluate_vqa
    from unifork.inference.pipeline import Pipeline

    pipeline = Pipeline.from_pretrained(checkpoint)
    vqa = evaluate_vqa(pipeline, split="test", n_scenes=recipe.report.curve_vqa_scenes)
    gen = evaluate_generation(pipeline, prompts_per_category=recipe.report.curve_prompts, images_per_prompt=2)
    return {"vqa": {"overall": vqa["accuracy"], **vqa["by_type"]}, "gen_exact": gen["exact"]["accuracy"]}

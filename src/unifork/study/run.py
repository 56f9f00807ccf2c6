"""Train and evaluate every model of a fork-point study; resumable (finished models are not redone).

    OUT/tokenizer/                    one image + text tokenizer for the whole family
    OUT/models/fork{K}-seed{S}/       a training run (see unifork.train.trainer) + result.json
    OUT/study.json, study.md, *.png   the summary (see unifork.study.summary)
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from unifork.atomic import atomic_write_text
from unifork.errors import UserError, param
from unifork.study.presets import PRESETS, StudyPreset


def run_study(out: str | Path, quick: bool = False, forks: tuple[int, ...] | None = None,
              seeds: tuple[int, ...] | None = None, tokenizer_dir: str | Path | None = None,
              steps: int | None = None, progress: bool = True, preset: StudyPreset | None = None) -> dict:  # fmt: skip
    """Run the study into `out` and return study.json's content. forks/seeds/steps override the preset."""
    from unifork.study.summary import write_summary
    from unifork.train.image_tokenizer import train_image_tokenizer
    from unifork.train.recipe import load_recipe

    preset = preset or PRESETS["quick" if quick else "default"]
    preset = replace(preset, forks=tuple(forks or preset.forks), seeds=tuple(seeds or preset.seeds))
    base = load_recipe(preset.recipe)
    if steps is not None:
        if steps < 1:
            raise UserError(f"{param('steps')} must be at least 1, got {steps}")
        base = replace(base, stages=tuple(replace(s, steps=steps) for s in base.stages))
    bad = [k for k in preset.forks if not 0 <= k <= base.model.n_layers]
    if bad:
        raise UserError(f"fork point {bad[0]} is out of range for a {base.model.n_layers}-layer model; use 0..{base.model.n_layers}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = Path(tokenizer_dir) if tokenizer_dir else out / "tokenizer"
    if not (tok_dir / "model.safetensors").is_file():
        if tokenizer_dir:
            raise UserError(f"{param('tokenizer_dir')} {tok_dir} holds no image tokenizer; train one with "
                            "`unifork tokenizer train`")  # fmt: skip
        print(f"training the tokenizers shared by every model into {tok_dir}")
        train_image_tokenizer(tok_dir, progress=progress)
    results = []
    for seed in preset.seeds:
        for fork in preset.forks:
            recipe = replace(base, seed=seed, data=replace(base.data, seed=seed), tokenizer_dir=str(tok_dir),
                             model=replace(base.model, fork_layer=fork))  # fmt: skip
            results.append(_train_and_evaluate(recipe, out / "models" / f"fork{fork}-seed{seed}", preset, progress))
    return write_summary(out, preset, base, results)


def _train_and_evaluate(recipe, run_dir: Path, preset: StudyPreset, progress: bool) -> dict:
    from unifork.train.trainer import train

    result_path = run_dir / "result.json"
    if result_path.is_file():  # finished earlier: a rerun resumes the study, it does not redo it
        result = json.loads(result_path.read_text())
        if result.get("evaluation") != evaluation_settings(preset):  # evaluated otherwise: evaluate again
            result |= evaluate_model(run_dir / "checkpoint", preset)
            atomic_write_text(result_path, json.dumps(result, indent=2))
        return result
    print(f"== fork {recipe.model.fork_layer}, seed {recipe.seed}: training -> {run_dir}")
    start = time.perf_counter()
    checkpoint = train(recipe, run_dir, resume=True, progress=progress)
    if checkpoint is None:  # stopped by SIGTERM/SIGINT after checkpointing
        raise UserError(f"training of {run_dir} stopped before the end; rerun the same study command to continue it")
    train_seconds = time.perf_counter() - start
    result = {"fork": recipe.model.fork_layer, "seed": recipe.seed, "train_seconds": round(train_seconds, 1),
              "steps": sum(s.steps for s in recipe.stages), **evaluate_model(checkpoint, preset)}  # fmt: skip
    result["recipe"] = json.loads(json.dumps(asdict(recipe), default=str))
    atomic_write_text(result_path, json.dumps(result, indent=2))
    return result


def evaluation_settings(preset: StudyPreset) -> dict:
    """What decides a model's scores beside its weights: a result measured with others is measured again."""
    settings = asdict(preset)
    return {k: v for k, v in settings.items() if k not in ("recipe", "forks", "seeds")}


def evaluate_model(checkpoint: Path, preset: StudyPreset) -> dict:
    """VQA on unseen scenes, ShapeEval, and the per-layer alignment of both paths of one checkpoint."""
    from unifork.analysis.model_alignment import model_alignment
    from unifork.eval.geneval import evaluate_generation
    from unifork.eval.vqa import evaluate_vqa
    from unifork.inference.pipeline import Pipeline

    pipeline = Pipeline.from_pretrained(checkpoint)
    vqa = evaluate_vqa(pipeline, split="test", n_scenes=preset.vqa_scenes)
    gen = evaluate_generation(pipeline, prompts_per_category=preset.prompts_per_category,
                              images_per_prompt=preset.images_per_prompt, sampling=preset.sampling)  # fmt: skip
    alignment = model_alignment(pipeline, n=preset.align_samples, k=preset.align_k)
    return {
        "evaluation": evaluation_settings(preset),
        "parameters": pipeline.model.param_counts(),
        "vqa": {"accuracy": vqa["accuracy"], "by_type": vqa["by_type"], "n_questions": vqa["n_questions"]},
        "gen": {"accuracy": gen["accuracy"], "exact": gen["exact"]["accuracy"], "n_images": gen["n_images"]},
        "alignment": {"und": alignment["und"], "gen": alignment["gen"], "chance": alignment["chance"]},
    }

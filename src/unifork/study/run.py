"""Train and evaluate every model of a sharing-pattern study; resumable across runs and machines.

    OUT/tokenizer/                      one image + text tokenizer for every model
    OUT/models/{plan}-seed{S}/          a training run (see unifork.train.trainer), its evaluation in eval.json
    RESULTS/{plan}-seed{S}.json         one result per finished model (commit these: a later run skips them)
    RESULTS/study.json, study.md, *.png the summary (see unifork.study.summary)

RESULTS defaults to OUT/results. A model whose result file holds the same recipe, tokenizer and evaluation
settings is not trained again, so a study cut short keeps every finished model and grows over several runs.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

from unifork.atomic import atomic_write_text
from unifork.errors import UserError, param
from unifork.model.config import ModelConfig
from unifork.study.plans import RECOMMENDED, plan_config
from unifork.study.presets import PRESETS, StudyPreset
from unifork.train.recipe import DICTATED_FIELDS


def run_study(out: str | Path, quick: bool = False, plans: tuple[str, ...] | None = None,
              seeds: tuple[int, ...] | None = None, tokenizer_dir: str | Path | None = None,
              steps: int | None = None, progress: bool = True, preset: StudyPreset | None = None,
              results_dir: str | Path | None = None, recipe: str | Path | None = None) -> dict:  # fmt: skip
    """Run the study into `out` and return study.json's content. plans/seeds/steps/recipe override the preset; a
    recipe is how a condition of the study (depth, task mix, data scale, a pre-trained start) is stated."""
    from unifork.study.summary import write_summary
    from unifork.train.recipe import load_recipe

    preset = preset or PRESETS["quick" if quick else "default"]
    preset = replace(preset, plans=tuple(plans or preset.plans), seeds=tuple(seeds or preset.seeds))
    if recipe is not None:
        if not Path(recipe).is_file():
            raise UserError(f"{param('recipe')}: no such file {recipe}; give a training recipe (configs/study_*.toml)")
        preset = replace(preset, recipe=Path(recipe))
    base = load_recipe(preset.recipe)
    if steps is not None:
        if steps < 1:
            raise UserError(f"{param('steps')} must be at least 1, got {steps}")
        base = replace(base, stages=tuple(replace(s, steps=steps) for s in base.stages))
    configs = {name: plan_config(name, base.model) for name in preset.plans if name != RECOMMENDED}  # errors first
    if RECOMMENDED in preset.plans and "shared" not in preset.plans:
        raise UserError(f"the {RECOMMENDED} plan is read from the fully shared model: add 'shared' to {param('plans')}")
    out = Path(out)
    results_dir = Path(results_dir) if results_dir else out / "results"
    out.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    tok_dir = _tokenizer(base, out, tokenizer_dir, progress)
    fingerprint = hashlib.sha256((tok_dir / "model.safetensors").read_bytes()).hexdigest()[:16]
    results, recommendation = [], None
    for seed in preset.seeds:
        for name in preset.plans:
            if name == RECOMMENDED:
                if recommendation is None:
                    recommendation = _recommendation(results, preset.seeds[0])
                configs[name] = replace(base.model, sharing=recommendation["plan"])
            recipe = replace(base, seed=seed, data=replace(base.data, seed=seed), tokenizer_dir=str(tok_dir),
                             model=configs[name])  # fmt: skip
            result = _train_and_evaluate(recipe, out, results_dir, preset, fingerprint, progress)
            results.append(result | {"label": name})
            study = write_summary(results_dir, preset, base, results, recommendation)  # a cut run keeps a current one
    return study


def _tokenizer(recipe, out: Path, tokenizer_dir, progress: bool) -> Path:
    from unifork.train.image_tokenizer import train_image_tokenizer

    tok_dir = Path(tokenizer_dir) if tokenizer_dir else out / "tokenizer"
    if not (tok_dir / "model.safetensors").is_file():
        if tokenizer_dir:
            raise UserError(f"{param('tokenizer_dir')} {tok_dir} holds no image tokenizer; train one with "
                            "`unifork tokenizer train`")  # fmt: skip
        print(f"training the tokenizers shared by every model into {tok_dir}")
        table = recipe.tokenizer
        train_image_tokenizer(tok_dir, steps=table.steps or None, seed=recipe.seed, size=table.size, progress=progress)
    return tok_dir


def _recommendation(results: list[dict], seed: int) -> dict:
    from unifork.analysis.recommend import recommend_plan

    shared = next((r for r in results if r["label"] == "shared" and r["seed"] == seed), None)
    if shared is None:
        raise UserError(f"the {RECOMMENDED} plan needs the fully shared model of seed {seed} first: list 'shared' "
                        f"before '{RECOMMENDED}' in {param('plans')}")  # fmt: skip
    return recommend_plan(shared["conflict"], shared["alignment"]) | {"from": f"shared, seed {seed}"}


def _train_and_evaluate(recipe, out: Path, results_dir: Path, preset: StudyPreset, tokenizer: str, progress: bool) -> dict:
    from unifork.train.trainer import train

    plan = recipe.model.plan
    name = f"{plan}-seed{recipe.seed}"
    run_dir, result_path = out / "models" / name, results_dir / f"{name}.json"
    trained = {"recipe": _recipe_record(recipe), "tokenizer_sha256": tokenizer}
    if result_path.is_file():
        result = json.loads(result_path.read_text())
        recorded = result | {"recipe": recorded_recipe(result)}
        same_model = all(recorded.get(key) == value for key, value in trained.items())
        if same_model and recorded_evaluation(result) == evaluation_settings(preset):
            return result  # finished earlier: a rerun resumes the study, it does not redo it
        if same_model and (run_dir / "checkpoint").is_dir():  # evaluated otherwise: evaluate again, not retrain
            result |= evaluate_model(run_dir / "checkpoint", preset)
            atomic_write_text(result_path, json.dumps(result, indent=2))
            return result
    print(f"== {plan} (plan), seed {recipe.seed}: training -> {run_dir}")
    start = time.perf_counter()
    checkpoint = train(recipe, run_dir, resume=True, progress=progress)
    if checkpoint is None:  # stopped by SIGTERM/SIGINT after checkpointing
        raise UserError(f"training of {run_dir} stopped before the end; rerun the same study command to continue it")
    result = {"plan": plan, "seed": recipe.seed, "train_seconds": round(time.perf_counter() - start, 1),
              "steps": sum(s.steps for s in recipe.stages), **trained}  # fmt: skip
    start = time.perf_counter()
    result |= evaluate_model(checkpoint, preset)
    result["eval_seconds"] = round(time.perf_counter() - start, 1)
    atomic_write_text(result_path, json.dumps(result, indent=2))
    return result


def _recipe_record(recipe) -> dict:
    """The recipe as a result file stores it: without paths that differ between machines."""
    record = json.loads(json.dumps(asdict(recipe), default=str))
    record.pop("tokenizer_dir", None)
    record.pop("logging", None)  # where the curves go does not change the model
    return record


def evaluation_settings(preset: StudyPreset) -> dict:
    """What decides a model's scores beside its weights: a result measured with others is measured again."""
    settings = asdict(preset)
    return {k: v for k, v in settings.items() if k not in ("recipe", "plans", "seeds")}


# Sampling settings added after results were recorded, with the value that samples as before they existed.
SAMPLING_BEFORE = {"speculative": 0}


# Model config and [tokenizer] fields added after results were recorded, with the value every run before them had.
MODEL_BEFORE = {"residual_depth": 1, "depth_head_layers": 2}
TOKENIZER_BEFORE = {"residual_depth": 0}


def recorded_recipe(result: dict) -> dict | None:
    """A result's recipe, with the fields it predates at the value its run had: in the model, in what its size
    preset stated (for the fields a preset states) and in its [tokenizer] table."""
    recipe = result.get("recipe")
    if not isinstance(recipe, dict) or not isinstance(recipe.get("model"), dict):
        return recipe
    recipe = recipe | {"model": MODEL_BEFORE | recipe["model"]}
    if isinstance(recipe.get("tokenizer"), dict):
        recipe["tokenizer"] = TOKENIZER_BEFORE | recipe["tokenizer"]
    keys = recipe.get("model_keys") or {}
    # a size preset states every field it has (train/recipe.py); a [model] table without one states only its own
    from_preset = {f.name for f in fields(ModelConfig)} - set(DICTATED_FIELDS) - set(MODEL_BEFORE) <= set(keys)
    if from_preset:
        recipe["model_keys"] = {k: v for k, v in MODEL_BEFORE.items() if k not in DICTATED_FIELDS} | keys
    return recipe


def recorded_evaluation(result: dict) -> dict | None:
    """A result's evaluation settings, with the sampling settings it predates at the value it was sampled with."""
    evaluation = result.get("evaluation")
    if evaluation is None or "sampling" not in evaluation:
        return evaluation
    return evaluation | {"sampling": SAMPLING_BEFORE | evaluation["sampling"]}


def evaluate_model(checkpoint: Path, preset: StudyPreset) -> dict:
    """The eval suite (VQA and held-out VQA, ShapeEval and held-out compositions, domain FID), the per-layer
    alignment of both paths and the per-layer task conflict of one checkpoint."""
    from unifork.analysis.conflict import task_conflict
    from unifork.analysis.model_alignment import model_alignment
    from unifork.eval.suite import EvalSettings, run_eval
    from unifork.inference.pipeline import Pipeline

    settings = EvalSettings(prompts_per_category=preset.prompts_per_category, images_per_prompt=preset.images_per_prompt,
                            sampling=preset.sampling, vqa_scenes=preset.vqa_scenes, tokenizer_images=64)  # fmt: skip
    suite = run_eval(checkpoint, checkpoint.parent / "eval.json", settings)
    pipeline = Pipeline.from_pretrained(checkpoint)
    alignment = model_alignment(pipeline, n=preset.align_samples, k=preset.align_k)
    conflict = task_conflict(pipeline.model, pipeline.image_tokenizer, pipeline.builder, n_batches=preset.conflict_batches)
    scores = {key: {k: suite[key][k] for k in ("accuracy", "by_type", "n_questions") if k in suite[key]}
              for key in ("vqa", "vqa_heldout")}  # fmt: skip
    for key in ("gen", "gen_heldout"):
        gen = suite[key]
        scores[key] = {"accuracy": gen["accuracy"], "exact": gen["exact"]["accuracy"], "n_images": gen["n_images"]}
    return {
        "evaluation": evaluation_settings(preset),
        "parameters": pipeline.model.param_counts(),
        **scores,
        "domain_fid": {k: suite["domain_fid"][k] for k in ("value", "real_vs_real", "n_images")},
        "alignment": {"und": alignment["und"], "gen": alignment["gen"], "chance": alignment["chance"]},
        "conflict": {"layers": conflict["layers"], "embeddings": conflict["embeddings"]},
    }

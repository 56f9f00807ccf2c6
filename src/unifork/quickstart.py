"""The main job: from a fresh clone to a trained, measured UniFork on a CPU, in about ten minutes.

1. train the text and image tokenizers on the shapes world (or reuse them),
2. run the training stages of the packaged recipe unifork/configs/quickstart.toml for a small Y-fork model,
3. evaluate VQA on unseen scenes, generation with the world's detector and the per-layer image-text alignment of
   both paths, and write report.html/report.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from unifork.errors import UserError, param


def quickstart(out: str | Path = "runs/quickstart", recipe: str | Path | None = None, progress: bool = True,
               eval_scale: float = 1.0) -> dict:  # fmt: skip
    """Train and evaluate; returns report.json's content. `eval_scale` shrinks the evaluation (tests use it)."""
    from unifork.analysis.model_alignment import model_alignment
    from unifork.analysis.plot import plot_alignment
    from unifork.eval.geneval import evaluate_generation, tokenizer_ceiling
    from unifork.eval.vqa import evaluate_vqa
    from unifork.inference.pipeline import Pipeline
    from unifork.inference.settings import SamplingSettings
    from unifork.learning_curve import learning_curve
    from unifork.model_card import record_evaluation
    from unifork.report import write_report
    from unifork.configs import packaged_recipe
    from unifork.train.recipe import find_recipe, load_recipe
    from unifork.train.trainer import train

    recipe = find_recipe(recipe) if recipe else packaged_recipe("quickstart")  # installed with unifork
    settings = load_recipe(recipe)
    out = Path(out)
    start = time.perf_counter()
    # A rerun reuses the tokenizer and finished stages (delete `out` to start over).
    print(f"[1/3] tokenizers and training stages of {recipe.name} -> {out}")
    checkpoint = train(settings, out, resume=True, progress=progress)
    if checkpoint is None:  # stopped by SIGTERM/SIGINT after checkpointing
        raise UserError(f"training stopped before the end; run quickstart again with the same {param('out')} ({out}) "
                        "to continue it")  # fmt: skip
    train_seconds = time.perf_counter() - start

    print("[2/3] evaluating: VQA on unseen scenes, generation judged by the world's detector")
    pipeline = Pipeline.from_pretrained(checkpoint)
    n = lambda k: max(1, round(k * eval_scale))  # noqa: E731
    vqa = evaluate_vqa(pipeline, split="test", n_scenes=n(150), keep_examples=12)
    vqa_heldout = evaluate_vqa(pipeline, split="heldout", n_scenes=n(100))
    sampling = SamplingSettings()  # the defaults, as `unifork generate` and `unifork eval` use them
    gen = evaluate_generation(pipeline, prompts_per_category=n(16), images_per_prompt=4, sampling=sampling, keep_images=8,
                              keep_failures=6)  # fmt: skip
    gen_heldout = evaluate_generation(pipeline, prompts_per_category=n(8), images_per_prompt=2, sampling=sampling,
                                      heldout=True, seed=1)  # fmt: skip
    ceiling = tokenizer_ceiling(pipeline.image_tokenizer, prompts_per_category=n(16))  # what the codes allow
    alignment = model_alignment(pipeline, n=n(256), k=min(10, n(256) - 1))
    plot_alignment(alignment, out / "alignment.png")

    curve = learning_curve(out, settings, progress) if settings.report.learning_curve else []
    tokenizer_dir = Path(settings.tokenizer_dir or out / "tokenizer")
    tokenizer_report_path = tokenizer_dir / "report.json"
    tokenizer_report = json.loads(tokenizer_report_path.read_text()) if tokenizer_report_path.is_file() else {}
    report = {
        "wall_seconds": round(time.perf_counter() - start, 1),
        "train_seconds": round(train_seconds, 1),
        "checkpoint": str(checkpoint),
        "sharing": pipeline.model.cfg.plan,
        "n_layers": pipeline.model.cfg.n_layers,
        "parameters": pipeline.model.param_counts(),
        "vqa": {k: v for k, v in vqa.items() if k != "examples"},
        "vqa_heldout": {k: v for k, v in vqa_heldout.items() if k != "examples"},
        "gen": {k: v for k, v in gen.items() if k not in ("samples", "failures")} | {"cfg_scale": sampling.cfg_scale},
        "gen_heldout": {k: v for k, v in gen_heldout.items() if k not in ("samples", "failures")},
        "tokenizer_ceiling": ceiling,
        "tokenizer": tokenizer_report,
        "alignment": {key: alignment[key] for key in ("k", "n_samples", "chance", "und", "gen")},
    } | ({"learning_curve": curve} if curve else {})
    figures = {"vqa": vqa["accuracy"], "vqa_heldout": vqa_heldout["accuracy"], "shapeeval_exact": gen["exact"]["accuracy"]["overall"],
               "shapeeval_geneval_rules": gen["accuracy"]["overall"],
               "shapeeval_exact_heldout": gen_heldout["exact"]["accuracy"]["overall"]}  # fmt: skip
    record_evaluation(checkpoint, "unifork quickstart", figures)  # on the checkpoint's card too
    if settings.logging.tensorboard:
        _log_evaluation(out, settings, curve, figures)
    print("[3/3] writing the report")
    write_report(out, report, gen["samples"], vqa["examples"], out / "metrics.jsonl", out / "alignment.png",
                 failures=gen["failures"], curve=curve)  # fmt: skip
    report["wall_seconds"] = round(time.perf_counter() - start, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(
        f"done in {report['wall_seconds']:.0f} s: VQA accuracy {vqa['accuracy']:.3f} (held-out compositions "
        f"{vqa_heldout['accuracy']:.3f}), generation judged correct {gen['accuracy']['overall']:.3f} by GenEval's "
        f"rules, {gen['exact']['accuracy']['overall']:.3f} exact (single_object {gen['exact']['accuracy']['single_object']:.3f}, "
        f"colors {gen['exact']['accuracy']['colors']:.3f}); "
        f"open {out / 'report.html'}"
    )
    return report


def _log_evaluation(out: Path, recipe, curve: list, figures: dict[str, float]) -> None:
    """The evaluation figures in TensorBoard beside the training curves (train/curves.py)."""
    from unifork.train.curves import log_evaluation, run_steps_before

    points = [(p["global_step"], {"vqa": p["vqa"]["overall"], "shapeeval_exact": p["gen_exact"]["overall"]}) for p in curve]
    log_evaluation(out / "tensorboard", points + [(run_steps_before(recipe.stages, len(recipe.stages)), figures)])

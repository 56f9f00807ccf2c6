"""The evaluation suite behind `unifork eval`: generation, understanding or both, into one JSON file.

    gen   ShapeEval per category (+ held-out compositions), domain FID against true renderings of the same
          prompts (+ standard FID where Inception weights are given)
    und   VQA per question type on unseen test scenes and on held-out compositions, describe caption match
    each  tokenizer reconstruction PSNR / SSIM on test scenes and held-out compositions, and the settings used
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from unifork.atomic import atomic_write_text
from unifork.errors import UserError, param
from unifork.inference.settings import DEFAULTS, SamplingSettings

SUITES = ("gen", "und", "all")
TASK_OF_SUITE = {"gen": "gen", "und": "und", "all": None}  # None: trunk and both branches


@dataclass(frozen=True)
class EvalSettings:
    suite: str = "all"
    images_per_prompt: int = 4  # as GenEval
    prompts_per_category: int = 16
    sampling: SamplingSettings = DEFAULTS  # the same as `unifork generate`'s unless told otherwise
    vqa_scenes: int = 200
    tokenizer_images: int = 256
    seed: int = 0
    device: str = "cpu"
    inception_weights: str | None = None
    digits: str | None = None  # the folder of `unifork data digits`: score that example instead (eval/digits.py)
    vqa_file: str | None = None  # a benchmark file (JSONL, VLMEvalKit TSV): score the und path on it (eval/vqa_file.py)

    def validate(self) -> None:
        """UserError naming the first setting out of range, before any model is loaded."""
        if self.suite not in SUITES:
            raise UserError(f"unknown {param('suite')} '{self.suite}'; choose one of: {', '.join(SUITES)}")
        for name in ("images_per_prompt", "prompts_per_category", "vqa_scenes", "tokenizer_images"):
            if not _positive_int(getattr(self, name)):
                raise UserError(f"{param(name)} must be a positive integer, got {getattr(self, name)}")
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2**63):  # torch seeds are 64-bit
            raise UserError(f"{param('seed')} must be a non-negative integer below 2**63, got {self.seed}")
        if self.suite == "und" and self.inception_weights is not None:
            raise UserError(f"{param('inception_weights')} needs a generation suite (gen or all)")
        if self.vqa_file is not None and (self.suite == "gen" or self.digits is not None):
            raise UserError(f"{param('vqa_file')} scores the understanding path alone; drop {param('suite')} gen and {param('digits')}")
        if self.digits is not None and self.inception_weights is not None:
            raise UserError(f"{param('inception_weights')} scores the shapes world; drop it with {param('digits')}")


def run_eval(ckpt: str | Path, out: str | Path, settings: EvalSettings = EvalSettings(),
             cache_dir: str | Path | None = None) -> dict:  # fmt: skip
    """Evaluate checkpoint `ckpt`, write the result to `out` (JSON, atomically) and return it.

    `cache_dir` holds the attribute classifier (see attribute_classifier.py for the default).
    """
    from unifork.eval.image_quality import reconstruction_quality, require_inception_fid
    from unifork.inference.pipeline import Pipeline

    settings.validate()
    out = Path(out)
    if out.is_dir():
        raise UserError(f"{param('out')} must be a JSON file path, but {out} is a directory")
    if settings.inception_weights is not None:
        require_inception_fid(settings.inception_weights)
    start = time.perf_counter()
    task = "und" if settings.vqa_file is not None else TASK_OF_SUITE[settings.suite]
    if settings.vqa_file is not None:
        from unifork.eval.vqa_file import read_items

        read_items(settings.vqa_file)  # a bad row fails before the model loads
    pipeline = Pipeline.from_pretrained(ckpt, task=task, device=settings.device)
    result: dict = {"suite": settings.suite, "checkpoint": str(ckpt), "settings": asdict(settings)}
    if settings.vqa_file is not None:
        from unifork.eval.vqa_file import evaluate_vqa_file

        result["vqa_file"] = evaluate_vqa_file(pipeline, settings.vqa_file)
        return _finish(result, out, start)
    if settings.digits is not None:
        from unifork.eval.digits import evaluate_digits

        result |= evaluate_digits(pipeline, settings.digits, settings.suite, settings.images_per_prompt,
                                  settings.sampling, settings.seed)  # fmt: skip
        return _finish(result, out, start)
    tokenizer = pipeline.image_tokenizer
    result["tokenizer"] = {
        split: reconstruction_quality(tokenizer, split, settings.tokenizer_images, seed=settings.seed)
        for split in ("test", "heldout")
    }
    if settings.suite in ("gen", "all"):
        result.update(_generation(pipeline, settings, cache_dir))
    if settings.suite in ("und", "all"):
        result.update(_understanding(pipeline, settings))
    return _finish(result, out, start)


def _finish(result: dict, out: Path, start: float) -> dict:
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2))
    return result


def _generation(pipeline, settings: EvalSettings, cache_dir) -> dict:
    from unifork.eval.attribute_classifier import load_or_train_attribute_classifier
    from unifork.eval.geneval import evaluate_generation
    from unifork.eval.image_quality import domain_fid, inception_fid, prompt_renderings

    common = dict(prompts_per_category=settings.prompts_per_category, images_per_prompt=settings.images_per_prompt,
                  sampling=settings.sampling, seed=settings.seed)  # fmt: skip
    gen = evaluate_generation(pipeline, **common, return_images=True)
    gen_heldout = evaluate_generation(pipeline, **common, heldout=True)
    generated, captions = gen.pop("images"), gen.pop("captions")
    classifier, classifier_info = load_or_train_attribute_classifier(cache_dir)
    real = prompt_renderings(captions, seed=settings.seed)
    # Two real sets of the same prompts and size: the value a perfect generator would get at this sample size.
    real_again = prompt_renderings(captions, seed=settings.seed + 1)
    result = {
        "gen": _without(gen, "samples"),
        "gen_heldout": _without(gen_heldout, "samples"),
        "domain_fid": {
            "value": round(domain_fid(real, generated, classifier), 3),
            "real_vs_real": round(domain_fid(real, real_again, classifier), 3),
            "n_images": len(generated),
            "features": "attribute classifier penultimate layer (domain FID, not Inception FID)",
            "classifier": classifier_info,
        },
    }
    if settings.inception_weights is not None:
        result["inception_fid"] = {
            "value": round(inception_fid(real, generated, settings.inception_weights), 3),
            "n_images": len(generated),
            "weights": str(settings.inception_weights),
        }
    return result


def _understanding(pipeline, settings: EvalSettings) -> dict:
    from unifork.eval.vqa import evaluate_vqa

    result = {}
    for key, split in (("vqa", "test"), ("vqa_heldout", "heldout")):
        vqa = evaluate_vqa(pipeline, split=split, n_scenes=settings.vqa_scenes, seed=settings.seed)
        result[key] = _without(vqa, "examples")
    return result


def summary_lines(result: dict) -> list[str]:
    """A short human table of a result: one line per metric, accuracy with its 95% interval."""
    lines = []

    def row(name: str, value: float, ci: list[float] | None = None) -> None:
        lines.append(f"  {name:<28} {value:7.3f}" + (f"   [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))

    if "digits" in result:
        return _digits_lines(result, row, lines)
    if "vqa_file" in result:
        return _vqa_file_lines(result["vqa_file"], row, lines)
    for key, title in (("gen", "generation (ShapeEval)"), ("gen_heldout", "generation, held-out compositions")):
        if key in result:
            lines.append(f"{title}: accuracy [95% CI], {result[key]['n_images']} images")
            for category, value in result[key]["accuracy"].items():
                row(category, value, result[key]["ci95"][category])
            exact = result[key].get("exact")  # stricter: the detector finds the prompt's objects and nothing else
            if exact:
                row("overall, exact rule", exact["accuracy"]["overall"], exact["ci95"]["overall"])
    if "domain_fid" in result:
        fid = result["domain_fid"]
        lines.append(f"domain FID (attribute-classifier features, {fid['n_images']} images; lower is better)")
        row("generated vs real", fid["value"])
        row("real vs real (floor)", fid["real_vs_real"])
    if "inception_fid" in result:
        row("Inception FID", result["inception_fid"]["value"])
    for key, title in (("vqa", "VQA, unseen test scenes"), ("vqa_heldout", "VQA, held-out compositions")):
        if key in result:
            vqa = result[key]
            lines.append(f"{title}: exact-match accuracy [95% CI], {vqa['n_questions']} questions")
            row("overall", vqa["accuracy"], vqa["ci95"]["overall"])
            for qtype, value in vqa["by_type"].items():
                row(qtype, value, vqa["ci95"][qtype])
            row("describe caption exact", vqa["describe"]["caption_exact"], vqa["describe"]["caption_exact_ci95"])
            row("describe caption partial", vqa["describe"]["caption_partial"])
    lines.append("image tokenizer reconstruction")
    for split, quality in result["tokenizer"].items():
        row(f"{split} PSNR (dB)", quality["psnr"])
        row(f"{split} SSIM", quality["ssim"])
    return lines


def _vqa_file_lines(scores: dict, row, lines: list[str]) -> list[str]:
    lines.append(f"{scores['file']}: {scores['rows']} rows, rate [95% CI]")
    row("exact match", scores["exact_match"]["value"], scores["exact_match"]["ci95"])
    if "yes_no" in scores:
        for name in ("accuracy", "precision", "recall", "yes_ratio"):
            row(f"yes/no {name}", scores["yes_no"][name]["value"], scores["yes_no"][name]["ci95"])
        row("yes/no F1", scores["yes_no"]["f1"])
    if "multiple_choice" in scores:
        row("multiple choice", scores["multiple_choice"]["value"], scores["multiple_choice"]["ci95"])
    return lines


def _digits_lines(result: dict, row, lines: list[str]) -> list[str]:
    if "vqa" in result:
        vqa = result["vqa"]
        lines.append(f"digits VQA on unseen scans: exact match [95% CI], {vqa['counts']['overall']['total']} questions")
        for kind, value in vqa["accuracy"].items():
            row(kind, value, vqa["ci95"][kind])
    if "gen" in result:
        gen = result["gen"]
        lines.append(f"generated digits classified as the prompted digit [95% CI], {gen['counts']['overall']['total']} images")
        row("overall", gen["accuracy"]["overall"], gen["ci95"]["overall"])
        row("judge on unseen scans", result["judge"]["accuracy_test_scans"])
        row("judge on their reconstructions", result["judge"]["accuracy_reconstructions"])
    return lines


def _without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


def _positive_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1

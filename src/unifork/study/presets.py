"""What a study trains and how hard it evaluates: the default (what a user with time runs) and --quick."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from unifork.configs import RECIPES_DIR
from unifork.inference.settings import DEFAULTS, SamplingSettings

# The patterns of the study: the paper's Y at L/2, Uni-X's X, the two ends, and the plan analysis/recommend.py
# proposes from the first seed's fully shared model.
DEFAULT_PLANS = ("shared", "y", "x", "separate", "recommended")


@dataclass(frozen=True)
class StudyPreset:
    recipe: Path  # training recipe shared by every model; the study sets the sharing plan and the seed per model
    plans: tuple[str, ...]  # study/plans.py: a shape (y = y:L/2), y:K, inverted_y:K, explicit letters, recommended
    seeds: tuple[int, ...]
    vqa_scenes: int  # test-split (and held-out) scenes whose every question is asked
    prompts_per_category: int  # ShapeEval prompts per category (and held-out compositions) ...
    images_per_prompt: int  # ... and images per prompt (GenEval uses 4)
    # ShapeEval's sampling: `unifork generate`'s, decoded plainly whatever its default window: speculative decoding
    # draws from the same distribution but with other random numbers, and the study's models must stay comparable
    sampling: SamplingSettings = replace(DEFAULTS, speculative=0)
    align_samples: int = 256  # paired scenes for the per-layer alignment analysis
    align_k: int = 10
    conflict_batches: int = 8  # joint batches of 32 rows the per-layer task conflict is averaged over


PRESETS = {
    "default": StudyPreset(RECIPES_DIR / "study.toml", plans=DEFAULT_PLANS, seeds=(0, 1, 2), vqa_scenes=150,
                           prompts_per_category=12, images_per_prompt=4),  # fmt: skip
    "quick": StudyPreset(RECIPES_DIR / "study_quick.toml", plans=("shared", "y", "separate"), seeds=(0,), vqa_scenes=60,
                         prompts_per_category=4, images_per_prompt=2, align_samples=128, conflict_batches=4),  # fmt: skip
}

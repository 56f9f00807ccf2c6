"""What a study trains and how hard it evaluates: the default (what a user with time runs) and --quick."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unifork.configs import RECIPES_DIR
from unifork.inference.settings import DEFAULTS, SamplingSettings


@dataclass(frozen=True)
class StudyPreset:
    recipe: Path  # training recipe shared by every model; the study sets fork_layer and seed per model
    forks: tuple[int, ...]  # fork points: 0 = task-specific models, n_layers = fully shared
    seeds: tuple[int, ...]
    vqa_scenes: int  # test-split scenes whose every question is asked
    prompts_per_category: int  # ShapeEval prompts per category ...
    images_per_prompt: int  # ... and images per prompt (GenEval uses 4)
    sampling: SamplingSettings = DEFAULTS  # ShapeEval's sampling: the same as `unifork generate` and `unifork eval`
    align_samples: int = 256  # paired scenes for the per-layer alignment analysis
    align_k: int = 10


PRESETS = {
    "default": StudyPreset(RECIPES_DIR / "study.toml", forks=(0, 3, 6), seeds=(0, 1, 2), vqa_scenes=150,
                           prompts_per_category=8, images_per_prompt=4),  # fmt: skip
    "quick": StudyPreset(RECIPES_DIR / "study_quick.toml", forks=(0, 2, 4), seeds=(0,), vqa_scenes=60,
                         prompts_per_category=4, images_per_prompt=2, align_samples=128),  # fmt: skip
}

"""The shapes world as an infinite, seekable dataset: sample i of (seed, split) is always the same."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from unifork.errors import UserError, param
from unifork.world.captions import CATEGORIES, scene_captions
from unifork.world.prompts import ObjectGroup, PromptSpec, sample_prompt, scene_from_prompt
from unifork.world.questions import QA, questions_for
from unifork.world.render import render
from unifork.world.spec import COLORS, MAX_OBJECTS, SHAPES, SIZES, Scene, WorldConfig

SPLITS = ("train", "val", "test", "heldout")
# Where a scene comes from: a random prompt of each GenEval category, or free random objects (which give
# scenes with three or four mixed objects, only described by the canonical caption).
SCENE_SOURCES = (*CATEGORIES, "random")


@dataclass(frozen=True)
class Sample:
    index: int
    source: str  # a SCENE_SOURCES entry
    scene: Scene
    image: np.ndarray  # uint8 (H, W, 3)
    captions: list[tuple[str, str]]  # (category, caption); see captions.scene_captions
    qa: list[QA]  # (question type, question, answer)


def _random_objects(rng: np.random.Generator) -> PromptSpec:
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    colors = list(COLORS)
    groups = []
    for _ in range(n):
        color, shape = colors[rng.integers(len(colors))], SHAPES[rng.integers(len(SHAPES))]
        groups.append(ObjectGroup(1, color, shape, SIZES[rng.integers(len(SIZES))]))
    return PromptSpec(tuple(groups))


class World:
    """Scenes, images, captions and questions of one split.

    train/val/test never show or mention a held-out composition (heldout.py); every `heldout` sample
    holds at least one: a held-out color-shape object, or a prompt over a held-out relation pair.
    """

    def __init__(self, seed: int = 0, split: str = "train", cfg: WorldConfig = WorldConfig()):
        if split not in SPLITS:
            raise UserError(f"unknown {param('split')} '{split}'; valid splits: {', '.join(SPLITS)}")
        if seed < 0:
            raise UserError(f"{param('seed')} must be a non-negative integer, got {seed}")
        self.seed, self.split, self.cfg = seed, split, cfg
        self.heldout = split == "heldout"

    def _draw_spec(self, rng: np.random.Generator) -> tuple[str, PromptSpec]:
        source = SCENE_SOURCES[rng.integers(len(SCENE_SOURCES))]
        while True:  # rejection keeps each split's distribution the plain one, conditioned on its held-out rule
            spec = _random_objects(rng) if source == "random" else sample_prompt(source, rng, allow_heldout=True)
            if spec.has_heldout() == self.heldout:
                return source, spec

    def sample(self, i: int) -> Sample:
        if i < 0:
            raise UserError(f"sample index must be non-negative, got {i}")
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, SPLITS.index(self.split), i]))
        source, spec = self._draw_spec(rng)
        scene = scene_from_prompt(spec, rng, self.cfg)
        captions = scene_captions(scene, allow_heldout=self.heldout)
        qa = questions_for(scene, rng, allow_heldout=self.heldout)
        return Sample(i, source, scene, render(scene), captions, qa)

    def __iter__(self) -> Iterator[Sample]:
        i = 0
        while True:
            yield self.sample(i)
            i += 1

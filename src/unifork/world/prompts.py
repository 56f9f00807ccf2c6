"""Text prompts as structured specs: parse the caption grammar, draw random prompts, and sample scenes for them.

Grammar (case and spacing ignored, optional "a photo of" and trailing period):
    prompt   := phrases | phrase RELATION phrase
    phrases  := phrase ("," phrase)* ["and" phrase]
    phrase   := [COUNT] [SIZE] [COLOR] SHAPE        COUNT: a | an | one .. four
    RELATION := "to the left of" | "to the right of" | "left of" | "right of" | "above" | "below"
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

import numpy as np

from unifork.errors import UserError
from unifork.world.captions import CATEGORIES, RELATION_PHRASES, join_phrases, phrase, plural
from unifork.world.heldout import is_heldout_pair, is_heldout_relation
from unifork.world.layout import place
from unifork.world.relations import RELATIONS, relation_holds
from unifork.world.spec import COLORS, MAX_OBJECTS, SHAPES, SIZES, Scene, WorldConfig

# Counts beyond four are recognised only to give the "at most 4 objects" error instead of "unknown color".
_COUNTS = {
    "zero": 0, "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4,
    "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
}
_SHAPE_WORDS = {**{s: s for s in SHAPES}, **{plural(s): s for s in SHAPES}}
_RELATION_RE = re.compile(r"\b(to the left of|to the right of|left of|right of|above|below)\b")


@dataclass(frozen=True)
class ObjectGroup:
    """`count` identical objects; None means "any" (drawn at random for a scene, ignored by the judge)."""

    count: int
    color: str | None
    shape: str
    size: str | None = None

    def text(self) -> str:
        return phrase(self.count, self.shape, self.color, self.size)


@dataclass(frozen=True)
class Relation:
    a: int  # index into PromptSpec.groups
    relation: str  # one of relations.RELATIONS
    b: int


@dataclass(frozen=True)
class PromptSpec:
    groups: tuple[ObjectGroup, ...]
    relation: Relation | None = None

    @property
    def n_objects(self) -> int:
        return sum(g.count for g in self.groups)

    def text(self) -> str:
        if self.relation is None:
            return join_phrases([g.text() for g in self.groups])
        r = self.relation
        return f"{self.groups[r.a].text()} {RELATION_PHRASES[r.relation]} {self.groups[r.b].text()}"

    def has_heldout(self) -> bool:
        """Mentions a held-out color-shape pair or a held-out relation pair."""
        if any(g.color and is_heldout_pair(g.color, g.shape) for g in self.groups):
            return True
        r = self.relation
        return r is not None and is_heldout_relation(self.groups[r.a].shape, r.relation, self.groups[r.b].shape)


def _normalize(text: str) -> str:
    text = " ".join(text.lower().split()).rstrip(".").strip()
    return re.sub(r"^an? (photo|image|picture) of(\s+|$)", "", text)


def _short(text: str, limit: int = 80) -> str:
    """Text quoted in an error message, cut so that a 100 kB prompt still gives a readable line."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse_phrase(words: list[str], prompt: str) -> ObjectGroup:
    if not words:
        raise UserError(f"empty phrase in prompt '{prompt}'; write e.g. 'a red circle and a blue square'")
    count = 1
    if words[0] in _COUNTS or (words[0].isascii() and words[0].isdigit()):  # "²".isdigit() too, but int() fails
        # nine digits are far past MAX_OBJECTS already; int() of thousands of digits would fail
        count = _COUNTS[words[0]] if words[0] in _COUNTS else int((words[0].lstrip("0") or "0")[:9])
        words = words[1:]
    if count < 1:
        raise UserError(f"a count must be at least one in prompt '{prompt}'")
    if count > MAX_OBJECTS:
        raise UserError(f"a scene holds at most {MAX_OBJECTS} objects; prompt '{prompt}' asks for {count} of one kind")
    if not words or words[-1] in COLORS or words[-1] in SIZES:
        raise UserError(f"missing shape in prompt '{prompt}'; known shapes: {', '.join(SHAPES)}")
    if words[-1] not in _SHAPE_WORDS:
        raise UserError(f"unknown shape '{_short(words[-1])}' in prompt '{prompt}'; known shapes: {', '.join(SHAPES)}")
    color = size = None
    for word in words[:-1]:
        if word in SIZES and size is None:
            size = word
        elif word in COLORS and color is None:
            color = word
        elif word in SIZES or word in COLORS:
            raise UserError(f"more than one {'size' if word in SIZES else 'color'} for one object in prompt '{prompt}'")
        else:
            raise UserError(f"unknown color '{_short(word)}' in prompt '{prompt}'; known colors: {', '.join(COLORS)}")
    return ObjectGroup(count, color, _SHAPE_WORDS[words[-1]], size)


def parse_prompt(text: str) -> PromptSpec:
    """The spec of a prompt in the caption grammar; UserError naming the first word it cannot read."""
    if not isinstance(text, str) or not _normalize(text):
        raise UserError("empty prompt; write e.g. 'a red circle to the left of a blue square'")
    shown, norm = _short(" ".join(text.split())), _normalize(text)
    parts = _RELATION_RE.split(norm)  # [left, relation, right, ...]
    if len(parts) > 3:
        raise UserError(f"a prompt states at most one relation, got {len(parts) // 2} in '{shown}'")
    if len(parts) == 3:
        one_to_one = "a position prompt relates one object to one object, e.g. 'a red circle above a blue square'"
        if "," in norm or " and " in f" {norm} ":
            raise UserError(f"{one_to_one}; got '{shown}'")
        a, b = (_parse_phrase(p.split(), shown) for p in (parts[0], parts[2]))
        if a.count != 1 or b.count != 1:
            raise UserError(f"{one_to_one}; got '{shown}'")
        relation = parts[1].removeprefix("to the ")
        return PromptSpec((a, b), Relation(0, relation, 1))
    chunks = re.split(r"\s*,\s*(?:and\s+)?|\s+and(?:\s+|$)", norm)
    spec = PromptSpec(tuple(_parse_phrase(c.split(), shown) for c in chunks))
    if spec.n_objects > MAX_OBJECTS:
        raise UserError(f"a scene holds at most {MAX_OBJECTS} objects; prompt '{shown}' asks for {spec.n_objects}")
    return spec


def scene_from_prompt(
    prompt: Union[str, PromptSpec], rng: np.random.Generator, cfg: WorldConfig = WorldConfig()
) -> Scene:
    """A random scene holding exactly the prompt's objects (unspecified color/size drawn), relation enforced."""
    spec = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    colors, sizes = list(COLORS), list(SIZES)
    items = [
        (g.shape, g.color or colors[rng.integers(len(colors))], g.size or sizes[rng.integers(len(sizes))])
        for g in spec.groups
        for _ in range(g.count)
    ]
    accept = None
    if spec.relation is not None:
        # Position prompts hold one object per group, so group indices are object indices.
        r = spec.relation
        accept = lambda objs: relation_holds(objs[r.a], r.relation, objs[r.b])  # noqa: E731
    return Scene(place(rng, items, cfg, accept=accept), cfg)


def _draw(rng: np.random.Generator, options, k: int = 1, distinct: bool = False) -> list:
    idx = rng.choice(len(options), size=k, replace=not distinct)
    return [options[i] for i in idx]


def sample_prompt(category: str, rng: np.random.Generator, allow_heldout: bool = False) -> PromptSpec:
    """A random prompt of a GenEval category; without `allow_heldout` it never mentions a held-out pair."""
    if category not in CATEGORIES:
        raise UserError(f"unknown prompt category '{category}'; known categories: {', '.join(CATEGORIES)}")
    colors = list(COLORS)
    while True:
        if category in ("single_object", "colors"):
            spec = PromptSpec((ObjectGroup(1, _draw(rng, colors)[0], _draw(rng, SHAPES)[0]),))
        elif category == "counting":
            count = int(rng.integers(2, MAX_OBJECTS + 1))
            spec = PromptSpec((ObjectGroup(count, _draw(rng, colors)[0], _draw(rng, SHAPES)[0]),))
        elif category in ("two_object", "color_attr", "position"):
            shapes = _draw(rng, SHAPES, 2, distinct=True)
            pair_colors = _draw(rng, colors, 2, distinct=category == "color_attr")
            spec = PromptSpec(tuple(ObjectGroup(1, c, s) for c, s in zip(pair_colors, shapes)))
            if category == "position":
                spec = PromptSpec(spec.groups, Relation(0, _draw(rng, RELATIONS)[0], 1))
        if allow_heldout or not spec.has_heldout():
            return spec

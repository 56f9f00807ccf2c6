"""Compositions reserved for the `heldout` split: they never appear in train/val/test scenes or text.

Color-shape pairs are held out in pixels and text (no training image contains a red triangle). Relation
pairs are held out in text only (no training caption or question says a circle is above a cross, in
either phrasing); the geometry itself can still occur in training images, as it would in real data.
"""

from __future__ import annotations

HELDOUT_COLOR_SHAPES = frozenset(
    {("red", "triangle"), ("green", "cross"), ("blue", "circle"), ("yellow", "square")}
)
# (shape A, relation, shape B); the inverse phrasing (B below A) is held out with it.
HELDOUT_RELATIONS = frozenset({("circle", "above", "cross"), ("square", "left of", "triangle")})
INVERSE_RELATION = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def is_heldout_pair(color: str, shape: str) -> bool:
    return (color, shape) in HELDOUT_COLOR_SHAPES


def is_heldout_relation(shape_a: str, relation: str, shape_b: str) -> bool:
    return (shape_a, relation, shape_b) in HELDOUT_RELATIONS or (
        shape_b,
        INVERSE_RELATION[relation],
        shape_a,
    ) in HELDOUT_RELATIONS

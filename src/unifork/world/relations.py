"""Spatial relations between two objects, with a dead band so every stated relation is visibly true.

Image y grows downwards, so "above" means a smaller cy.
"""

from __future__ import annotations

from unifork.world.spec import SceneObject

RELATIONS = ("left of", "right of", "above", "below")
# Centers must differ by this many pixels along the axis; closer pairs are neither left nor right of each
# other, so a caption or an answer never hinges on a one-pixel difference.
MIN_OFFSET = 8


def relation_offset(a: SceneObject, relation: str, b: SceneObject) -> int:
    """Signed pixels by which A lies in `relation` to B (positive: towards the relation, negative: away)."""
    if relation == "left of":
        return b.cx - a.cx
    if relation == "right of":
        return a.cx - b.cx
    if relation == "above":
        return b.cy - a.cy
    if relation == "below":
        return a.cy - b.cy
    raise ValueError(f"unknown relation {relation!r}; known relations: {', '.join(RELATIONS)}")


def relation_holds(a: SceneObject, relation: str, b: SceneObject) -> bool:
    """A is clearly `relation` B."""
    return relation_offset(a, relation, b) >= MIN_OFFSET


def relation_clearly_false(a: SceneObject, relation: str, b: SceneObject) -> bool:
    """The opposite relation clearly holds (A is clearly right of B when asking "left of")."""
    return relation_offset(a, relation, b) <= -MIN_OFFSET


def relation_decidable(a: SceneObject, relation: str, b: SceneObject) -> bool:
    """Outside the ambiguous band: a yes/no question about it has an unarguable answer."""
    return relation_holds(a, relation, b) or relation_clearly_false(a, relation, b)

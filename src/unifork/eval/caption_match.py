"""Scoring a predicted scene description against the true one, read through the world's caption grammar.

Plain string equality under-credits "describe the image." answers: "a blue square and a red circle" names the
same scene as "a red circle and a blue square", and "two red circles" is nearly right for three. So both
captions are parsed with `parse_prompt` and compared as specs.
"""

from __future__ import annotations

from collections import Counter

from unifork.errors import UserError
from unifork.world import PromptSpec, parse_prompt
from unifork.world.heldout import INVERSE_RELATION

ObjectItem = tuple[str | None, str, str | None]  # (color, shape, size); None where the caption leaves it out


def object_items(spec: PromptSpec) -> Counter[ObjectItem]:
    """The multiset of objects a caption names: a group "two red circles" is two (red, circle, None) items."""
    return Counter((g.color, g.shape, g.size) for g in spec.groups for _ in range(g.count))


def relation_key(spec: PromptSpec) -> tuple | None:
    """The stated relation in one phrasing ("B right of A" is read as "A left of B"), or None."""
    r = spec.relation
    if r is None:
        return None
    a, b = spec.groups[r.a], spec.groups[r.b]
    a_key, b_key = (a.color, a.shape, a.size), (b.color, b.shape, b.size)
    if r.relation in ("right of", "below"):
        return b_key, INVERSE_RELATION[r.relation], a_key
    return a_key, r.relation, b_key


def caption_match(predicted: str, truth: str) -> tuple[bool, float]:
    """(exact, partial) for a predicted caption against the true one.

    Each caption is parsed to a multiset of object items (color, shape, size), one item per object, so a
    group's count becomes multiplicity (`object_items`). With P and T those multisets:
        partial = 2 |P ∩ T| / (|P| + |T|)       (F1 / Dice over multisets; ∩ takes the smaller multiplicity)
        exact   = P == T and both state the same relation (or none), read in one phrasing (`relation_key`).
    So exact implies partial == 1, and partial == 1 without exact only when the relations differ. A prediction
    the grammar cannot parse scores (False, 0.0). The true caption must parse.
    """
    truth_spec = parse_prompt(truth)
    try:
        predicted_spec = parse_prompt(predicted)
    except UserError:
        return False, 0.0
    p, t = object_items(predicted_spec), object_items(truth_spec)
    overlap = sum((p & t).values())
    partial = 2 * overlap / (sum(p.values()) + sum(t.values()))
    exact = p == t and relation_key(predicted_spec) == relation_key(truth_spec)
    return exact, partial

"""GenEval's pass/fail rules for a prompt against the objects detected in a generated image."""

from __future__ import annotations

from collections import Counter
from typing import Sequence, Union

from unifork.errors import UserError
from unifork.world.captions import CATEGORIES
from unifork.world.prompts import ObjectGroup, PromptSpec, parse_prompt
from unifork.world.relations import relation_holds
from unifork.world.spec import SceneObject


def _fits(obj: SceneObject, group: ObjectGroup, bind_attributes: bool) -> bool:
    """Shape always; color and size (where the prompt names them) only for categories that test binding."""
    if obj.shape != group.shape:
        return False
    return not bind_attributes or ((group.color in (None, obj.color)) and (group.size in (None, obj.size)))


def _all_present(groups: Sequence[ObjectGroup], objects: Sequence[SceneObject], bind_attributes: bool) -> bool:
    """Each group's count is met by distinct objects (a small backtracking match: at most 4 slots)."""
    slots = [g for g in groups for _ in range(g.count)]

    def assign(i: int, used: frozenset[int]) -> bool:
        if i == len(slots):
            return True
        return any(
            assign(i + 1, used | {j})
            for j, obj in enumerate(objects)
            if j not in used and _fits(obj, slots[i], bind_attributes)
        )

    return assign(0, frozenset())


def _position_holds(spec: PromptSpec, objects: Sequence[SceneObject]) -> bool:
    if spec.relation is None:
        raise UserError(f"a position prompt needs a relation such as 'above'; got '{spec.text()}'")
    r = spec.relation
    a_group, b_group = spec.groups[r.a], spec.groups[r.b]
    return any(
        a is not b and relation_holds(a, r.relation, b)
        for a in objects
        if _fits(a, a_group, True)
        for b in objects
        if _fits(b, b_group, True)
    )


def judge(prompt: Union[str, PromptSpec], category: str, detected: Sequence[SceneObject]) -> bool:
    """Whether the detected objects satisfy the prompt under the category's rule.

    single_object, two_object: the shapes are present (distinct objects); counting: exactly n of the shape;
    colors, color_attr: objects with the named shape AND color; position: such a pair in the relation.
    """
    spec = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    if category in ("single_object", "two_object"):
        return _all_present(spec.groups, detected, bind_attributes=False)
    if category == "counting":
        wanted = Counter()
        for g in spec.groups:
            wanted[g.shape] += g.count
        return all(sum(o.shape == shape for o in detected) == n for shape, n in wanted.items())
    if category in ("colors", "color_attr"):
        return _all_present(spec.groups, detected, bind_attributes=True)
    if category == "position":
        return _position_holds(spec, detected)
    raise UserError(f"unknown prompt category '{category}'; known categories: {', '.join(CATEGORIES)}")


def judge_exact(prompt: Union[str, PromptSpec], detected: Sequence[SceneObject]) -> bool:
    """Whether the detector recovers the prompt's spec: exactly its objects (color and size where named), nothing
    else, and its relation. Stricter than GenEval's rules, which ignore extra objects: in this world a noisy
    image full of blobs passes GenEval's "a red circle" often (an untrained model scored 0.62 on single_object).
    """
    spec = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    if len(detected) != spec.n_objects or not _all_present(spec.groups, detected, bind_attributes=True):
        return False
    return spec.relation is None or _position_holds(spec, detected)

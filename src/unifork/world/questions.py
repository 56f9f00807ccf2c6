"""Question-answer pairs about a scene (the understanding task), each answerable from pixels without doubt.

Objects are referred to by "the <color> <shape>" only when that names exactly one object, and relations are
asked only outside the ambiguous band of relations.py, so every answer is unarguable.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from unifork.world.captions import RELATION_PHRASES, canonical_caption, number_word, object_phrase, plural
from unifork.world.heldout import is_heldout_pair, is_heldout_relation
from unifork.world.relations import RELATIONS, relation_decidable, relation_holds, relation_offset
from unifork.world.spec import COLORS, SHAPES, Scene, SceneObject

QUESTION_TYPES = ("color", "shape", "count", "relation", "what_left", "describe")
QA = tuple[str, str, str]  # (question type, question, answer)


def _the(obj: SceneObject) -> str:
    return f"the {obj.color} {obj.shape}"


def _attribute_questions(scene: Scene) -> list[QA]:
    shapes = Counter(o.shape for o in scene.objects)
    colors = Counter(o.color for o in scene.objects)
    qa = [("color", f"what color is the {o.shape}?", o.color) for o in scene.objects if shapes[o.shape] == 1]
    qa += [("shape", f"what shape is the {o.color} object?", o.shape) for o in scene.objects if colors[o.color] == 1]
    return qa


def _count_questions(scene: Scene, rng: np.random.Generator, allow_heldout: bool) -> list[QA]:
    kinds = Counter((o.color, o.shape) for o in scene.objects)
    shapes = Counter(o.shape for o in scene.objects)
    qa = [("count", f"how many {c} {plural(s)} are there?", number_word(n)) for (c, s), n in kinds.items()]
    qa += [("count", f"how many {plural(s)} are there?", number_word(n)) for s, n in shapes.items()]
    # One absent kind and one absent shape, so "zero" is a possible answer the model has to learn.
    absent_kinds = [
        (c, s) for c in COLORS for s in SHAPES if (c, s) not in kinds and (allow_heldout or not is_heldout_pair(c, s))
    ]
    absent_shapes = [s for s in SHAPES if s not in shapes]
    if absent_kinds:
        c, s = absent_kinds[rng.integers(len(absent_kinds))]
        qa.append(("count", f"how many {c} {plural(s)} are there?", "zero"))
    if absent_shapes:
        s = absent_shapes[rng.integers(len(absent_shapes))]
        qa.append(("count", f"how many {plural(s)} are there?", "zero"))
    return qa


def _relation_questions(referable: list[SceneObject], rng: np.random.Generator, allow_heldout: bool) -> list[QA]:
    """One yes/no question per ordered pair, about a relation drawn among the decidable ones."""
    qa = []
    for a in referable:
        for b in referable:
            if a is b:
                continue
            options = [
                r for r in RELATIONS
                if relation_decidable(a, r, b) and (allow_heldout or not is_heldout_relation(a.shape, r, b.shape))
            ]
            if options:
                r = options[rng.integers(len(options))]
                answer = "yes" if relation_holds(a, r, b) else "no"
                qa.append(("relation", f"is {_the(a)} {RELATION_PHRASES[r]} {_the(b)}?", answer))
    return qa


def _what_left_questions(scene: Scene, referable: list[SceneObject], allow_heldout: bool) -> list[QA]:
    """Asked only when one object is clearly left of B and every other one is level with or right of it."""
    qa = []
    for b in referable:
        others = [o for o in scene.objects if o is not b]
        left = [o for o in others if relation_holds(o, "left of", b)]
        if len(left) != 1 or any(relation_offset(o, "left of", b) > 0 for o in others if o is not left[0]):
            continue
        if allow_heldout or not is_heldout_relation(left[0].shape, "left of", b.shape):
            qa.append(("what_left", f"what is to the left of {_the(b)}?", object_phrase(left[0])))
    return qa


OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def opposite_question(question: str, answer: str) -> tuple[str, str]:
    """A relation question's twin: the same two objects, the opposite relation, the opposite answer.

    Both are decidable together (relations.py: outside the dead band one relation or its opposite holds), so a
    training example that asks both shows the answer turning on the relation named, not on a prior for "no".
    """
    for relation, phrase in RELATION_PHRASES.items():
        if f" {phrase} " in question:
            twin = question.replace(f" {phrase} ", f" {RELATION_PHRASES[OPPOSITE[relation]]} ", 1)
            return twin, "no" if answer == "yes" else "yes"
    raise ValueError(f"not a relation question: {question!r}")


def relation_objects(scene: Scene, question: str) -> tuple[SceneObject, SceneObject]:
    """The two objects a relation question of this scene names, in the order it names them."""
    by_name = {_the(o): o for o in scene.objects}  # relation questions name only objects their name picks out
    body = question.removeprefix("is ").removesuffix("?")
    for phrase in RELATION_PHRASES.values():
        first, found, second = body.partition(f" {phrase} ")
        if found and first in by_name and second in by_name:
            return by_name[first], by_name[second]
    raise ValueError(f"not a relation question about this scene: {question!r}")


def questions_for(scene: Scene, rng: np.random.Generator, allow_heldout: bool = False) -> list[QA]:
    """All questions of every type the scene supports; `rng` picks the zero-count and relation questions.

    Without `allow_heldout` the text adds no held-out composition the scene does not show: zero-count
    questions skip held-out color-shape pairs, relation questions skip held-out relation pairs.
    """
    kinds = Counter((o.color, o.shape) for o in scene.objects)
    referable = [o for o in scene.objects if kinds[(o.color, o.shape)] == 1]
    return [
        *_attribute_questions(scene),
        *_count_questions(scene, rng, allow_heldout),
        *_relation_questions(referable, rng, allow_heldout),
        *_what_left_questions(scene, referable, allow_heldout),
        ("describe", "describe the image.", canonical_caption(scene)),
    ]

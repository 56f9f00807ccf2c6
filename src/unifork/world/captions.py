"""English text for scenes: noun phrases, the six GenEval prompt categories and the canonical caption.

Every phrase names a color; sizes are part of the grammar ("a large red circle") but generated text omits
them, so a caption constrains what GenEval checks (shape, count, color, position) and nothing more.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from unifork.world.heldout import is_heldout_relation
from unifork.world.relations import RELATIONS, relation_holds
from unifork.world.spec import Scene, SceneObject

# The GenEval categories (Ghosh et al. 2023), minus attributes our world lacks.
CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
# Tag of the caption every scene gets: the full description, also the answer to "describe the image."
CANONICAL = "canonical"
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
RELATION_PHRASES = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def plural(noun: str) -> str:
    return noun + "es" if noun.endswith(("s", "x", "sh", "ch")) else noun + "s"


def number_word(n: int) -> str:
    return NUMBER_WORDS[n]


def phrase(count: int, shape: str, color: str | None = None, size: str | None = None) -> str:
    """"an orange circle", "two large red crosses"."""
    words = " ".join(w for w in (size, color) if w)
    if count == 1:
        head = words.split()[0] if words else shape
        return f"{article(head)} {words + ' ' if words else ''}{shape}"
    return f"{number_word(count)} {words + ' ' if words else ''}{plural(shape)}"


def object_phrase(obj: SceneObject) -> str:
    return phrase(1, obj.shape, obj.color)


def join_phrases(phrases: Sequence[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def relation_caption(a: SceneObject, relation: str, b: SceneObject) -> str:
    return f"{object_phrase(a)} {RELATION_PHRASES[relation]} {object_phrase(b)}"


def canonical_caption(scene: Scene) -> str:
    """Identical (color, shape) objects grouped, groups read left to right by their leftmost member."""
    groups: dict[tuple[str, str], list[SceneObject]] = defaultdict(list)
    for obj in scene.objects:
        groups[(obj.color, obj.shape)].append(obj)
    # The trailing key makes the order total, so the caption is a pure function of the scene.
    order = sorted(groups, key=lambda k: (min((o.cx, o.cy) for o in groups[k]), k))
    return join_phrases([phrase(len(groups[k]), k[1], k[0]) for k in order])


def scene_captions(scene: Scene, allow_heldout: bool = False) -> list[tuple[str, str]]:
    """Every (category, caption) that describes the scene exactly (all its objects, nothing else).

    The canonical caption always comes last. Without `allow_heldout`, position captions over a held-out
    relation pair are left out (in either phrasing), as the train/val/test splits require.
    """
    objs = sorted(scene.objects, key=lambda o: (o.cx, o.cy, o.color, o.shape))
    kinds = {(o.color, o.shape) for o in objs}
    captions: list[tuple[str, str]] = []
    if len(objs) == 1:
        captions += [("single_object", object_phrase(objs[0])), ("colors", object_phrase(objs[0]))]
    if len(objs) == 2 and objs[0].shape != objs[1].shape:
        pair = join_phrases([object_phrase(o) for o in objs])
        captions.append(("two_object", pair))
        if objs[0].color != objs[1].color:
            captions.append(("color_attr", pair))
    if len(objs) >= 2 and len(kinds) == 1:
        captions.append(("counting", phrase(len(objs), objs[0].shape, objs[0].color)))
    if len(objs) == 2 and len(kinds) == 2:
        for a, b in (objs, objs[::-1]):
            for relation in RELATIONS:
                if not relation_holds(a, relation, b):
                    continue
                if allow_heldout or not is_heldout_relation(a.shape, relation, b.shape):
                    captions.append(("position", relation_caption(a, relation, b)))
    captions.append((CANONICAL, canonical_caption(scene)))
    return captions

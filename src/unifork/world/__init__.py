"""The shapes world: scenes of colored shapes, their images, captions and questions, and a detector to judge them."""

from unifork.world.captions import CANONICAL, CATEGORIES, canonical_caption, phrase, scene_captions
from unifork.world.dataset import SCENE_SOURCES, SPLITS, Sample, World
from unifork.world.detect import detect
from unifork.world.export import export_world
from unifork.world.judge import judge, judge_exact
from unifork.world.layout import place
from unifork.world.prompts import ObjectGroup, PromptSpec, Relation, parse_prompt, sample_prompt, scene_from_prompt
from unifork.world.questions import QUESTION_TYPES, questions_for
from unifork.world.relations import RELATIONS, relation_holds
from unifork.world.render import render
from unifork.world.spec import COLORS, MAX_OBJECTS, SHAPES, SIZES, Scene, SceneObject, WorldConfig

__all__ = [
    "CANONICAL", "CATEGORIES", "COLORS", "MAX_OBJECTS", "QUESTION_TYPES", "RELATIONS", "SCENE_SOURCES", "SHAPES",
    "SIZES", "SPLITS", "ObjectGroup", "PromptSpec", "Relation", "Sample", "Scene", "SceneObject", "World",
    "WorldConfig", "canonical_caption", "detect", "export_world", "judge", "judge_exact", "parse_prompt", "phrase",
    "place", "questions_for", "relation_holds", "render", "sample_prompt", "scene_captions", "scene_from_prompt",
]

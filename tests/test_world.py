"""The shapes world: determinism, the detector, prompt round trips, held-out compositions, text grammar, CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import uniform_filter

from unifork.errors import UserError
from unifork.images import fit_image
from unifork.world import (
    CATEGORIES,
    COLORS,
    SHAPES,
    SPLITS,
    Scene,
    SceneObject,
    World,
    WorldConfig,
    canonical_caption,
    detect,
    judge,
    judge_exact,
    parse_prompt,
    phrase,
    questions_for,
    render,
    sample_prompt,
    scene_captions,
    scene_from_prompt,
)
from unifork.world.heldout import is_heldout_pair
from unifork.world.prompts import ObjectGroup, PromptSpec, Relation
from unifork.world.relations import relation_holds


def _degrade(image: np.ndarray, rng: np.random.Generator, sigma: float = 12.0) -> np.ndarray:
    """3x3 box blur then Gaussian pixel noise (0-255 scale), as a generator's imperfect output might look."""
    blurred = uniform_filter(image.astype(np.float64), size=(3, 3, 1), mode="nearest")
    return np.clip(blurred + rng.normal(0.0, sigma, image.shape), 0, 255).round().astype(np.uint8)


def _same_objects(found, truth, tol: int = 0) -> bool:
    """Same multiset of (shape, color, size), centres within `tol` pixels."""
    left = list(found)
    for t in truth:
        kind = (t.shape, t.color, t.size)
        near = (f for f in left if (f.shape, f.color, f.size) == kind and max(abs(f.cx - t.cx), abs(f.cy - t.cy)) <= tol)
        match = next(near, None)
        if match is None:
            return False
        left.remove(match)
    return not left


def _as_statement(question: str) -> str:
    """"is the red circle above the blue square?" -> "a red circle above a blue square" (a parseable prompt)."""
    return re.sub(rf"\bthe (?=({'|'.join(COLORS)}) )", "a ", question.removeprefix("is ").rstrip("?"))


def _scene(*objs: tuple) -> Scene:
    return Scene(tuple(SceneObject(*o) for o in objs))


# --- determinism -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", SPLITS)
def test_same_seed_split_index_gives_same_sample(split):
    a, b = World(seed=3, split=split).sample(17), World(seed=3, split=split).sample(17)
    assert np.array_equal(a.image, b.image)
    assert (a.scene, a.captions, a.qa) == (b.scene, b.captions, b.qa)


def test_different_seeds_and_splits_differ():
    samples = [World(seed=s, split=sp).sample(i) for s, sp in ((0, "train"), (1, "train"), (0, "val")) for i in range(10)]
    images = {s.image.tobytes() for s in samples}
    assert len(images) == len(samples)


def test_unknown_split_lists_valid_ones():
    with pytest.raises(UserError, match="train, val, test, heldout"):
        World(split="training")


def test_sampling_is_fast_and_covers_every_category():
    world = World(seed=0)
    start = time.perf_counter()
    samples = [world.sample(i) for i in range(1000)]
    assert time.perf_counter() - start < 2.0
    categories = {c for s in samples for c, _ in s.captions}
    assert set(CATEGORIES) <= categories
    assert {len(s.scene.objects) for s in samples} == {1, 2, 3, 4}
    assert all(s.image.dtype == np.uint8 and s.image.shape == (64, 64, 3) for s in samples[:10])


# --- detector --------------------------------------------------------------------------------------------


def test_detector_recovers_clean_scenes():
    samples = [World(seed=11).sample(i) for i in range(300)]
    accuracy = np.mean([_same_objects(detect(s.image), s.scene.objects) for s in samples])
    assert accuracy >= 0.99


def test_detector_recovers_noisy_blurred_scenes():
    rng = np.random.default_rng(0)
    samples = [World(seed=12).sample(i) for i in range(300)]
    accuracy = np.mean([_same_objects(detect(_degrade(s.image, rng)), s.scene.objects, tol=1) for s in samples])
    assert accuracy >= 0.97


def test_detector_accepts_pil_images_of_other_sizes_and_modes():
    sample = World(seed=5).sample(3)
    big = Image.fromarray(sample.image).resize((128, 128), Image.NEAREST)
    assert _same_objects(detect(big), sample.scene.objects)
    rgba = np.concatenate([sample.image, np.full((64, 64, 1), 255, np.uint8)], axis=-1)
    assert _same_objects(detect(rgba), sample.scene.objects)
    assert _same_objects(detect(sample.image.astype(np.float32) / 255), sample.scene.objects)


@pytest.mark.parametrize("not_an_image", ["a red circle", None, np.zeros(5), np.zeros((2, 2, 2, 3))])
def test_detector_rejects_non_images(not_an_image):
    with pytest.raises(UserError):
        detect(not_an_image)


# --- prompts, scenes and the judge -----------------------------------------------------------------------


@pytest.mark.parametrize("category", CATEGORIES)
def test_prompt_scene_render_detect_judge_round_trip(category):
    rng = np.random.default_rng(CATEGORIES.index(category))
    for _ in range(40):
        spec = sample_prompt(category, rng)
        assert parse_prompt(spec.text()) == spec  # generated text is in the grammar the parser reads
        scene = scene_from_prompt(spec.text(), rng)
        assert len(scene.objects) == spec.n_objects
        assert judge(spec.text(), category, detect(render(scene))), (category, spec.text(), scene)
        assert judge_exact(spec.text(), detect(render(scene))), (category, spec.text(), scene)


RED_CIRCLE_LEFT, BLUE_CIRCLE_LEFT = ("circle", "red", "small", 10, 20), ("circle", "blue", "small", 10, 20)
RED_SQUARE_RIGHT, BLUE_SQUARE_RIGHT = ("square", "red", "small", 40, 22), ("square", "blue", "small", 40, 22)


@pytest.mark.parametrize(
    "prompt, category, objects, expected",
    [
        ("a red circle", "single_object", [("circle", "blue", "small", 20, 20)], True),
        ("a red circle", "colors", [("circle", "blue", "small", 20, 20)], False),
        ("a red circle and a blue square", "two_object", [("circle", "red", "small", 20, 20)], False),
        ("three green triangles", "counting", [("triangle", "green", "small", 10 + 15 * i, 20) for i in range(2)], False),
        ("two green triangles", "counting", [("triangle", "red", "small", 10 + 15 * i, 20) for i in range(2)], True),
        ("a red circle and a blue square", "color_attr", [BLUE_CIRCLE_LEFT, RED_SQUARE_RIGHT], False),
        ("a red circle and a blue square", "color_attr", [RED_CIRCLE_LEFT, BLUE_SQUARE_RIGHT], True),
        ("a red circle to the left of a blue square", "position", [RED_CIRCLE_LEFT, BLUE_SQUARE_RIGHT], True),
        ("a red circle to the right of a blue square", "position", [RED_CIRCLE_LEFT, BLUE_SQUARE_RIGHT], False),
        ("a red circle above a blue square", "position", [RED_CIRCLE_LEFT, BLUE_SQUARE_RIGHT], False),  # level
    ],
)
def test_judge_applies_geneval_rules(prompt, category, objects, expected):
    assert judge(prompt, category, [SceneObject(*o) for o in objects]) is expected


@pytest.mark.parametrize(
    "prompt, objects, expected",
    [
        ("a red circle", [RED_CIRCLE_LEFT], True),
        ("a red circle", [RED_CIRCLE_LEFT, BLUE_SQUARE_RIGHT], False),  # GenEval's rules pass this; exact does not
        ("a red circle", [BLUE_CIRCLE_LEFT], False),
        ("a large red circle", [RED_CIRCLE_LEFT], False),  # size named: must match
        ("two green triangles", [("triangle", "green", "small", 10 + 15 * i, 20) for i in range(3)], False),
        ("a red circle and a blue square", [BLUE_CIRCLE_LEFT, RED_SQUARE_RIGHT], False),
        ("a red circle to the left of a blue square", [RED_CIRCLE_LEFT, BLUE_SQUARE_RIGHT], True),
        ("a red circle to the right of a blue square", [RED_CIRCLE_LEFT, BLUE_SQUARE_RIGHT], False),
    ],
)
def test_exact_judge_wants_the_prompts_objects_and_nothing_else(prompt, objects, expected):
    assert judge_exact(prompt, [SceneObject(*o) for o in objects]) is expected


def test_scene_that_cannot_fit_is_a_user_error():
    small_canvas = WorldConfig(canvas=30)  # room for one large object's box, not two side by side
    with pytest.raises(UserError, match="cannot fit"):
        scene_from_prompt("two large red squares", np.random.default_rng(0), small_canvas)


# --- held-out compositions -------------------------------------------------------------------------------


def _heldout_mentions(sample) -> list[str]:
    """Every held-out composition the sample's objects, captions or questions show or state."""
    found = [f"object {o}" for o in sample.scene.objects if is_heldout_pair(o.color, o.shape)]
    for _, caption in sample.captions:
        if parse_prompt(caption).has_heldout():
            found.append(caption)
    for qtype, question, answer in sample.qa:
        text = f"{question} {answer}"
        pairs = re.findall(rf"\b({'|'.join(COLORS)}) ({'|'.join(SHAPES)})", text.replace("crosses", "cross"))
        if qtype == "color":
            pairs.append((answer, question.split()[-1].rstrip("?")))
        if qtype == "shape":
            pairs.append((question.split()[3], answer))
        found += [f"{qtype}: {text}" for c, s in pairs if is_heldout_pair(c, s)]
        if qtype == "relation":
            stated = _as_statement(question)
        elif qtype == "what_left":
            stated = f"{answer} to the left of {question.removeprefix('what is to the left of the ').rstrip('?')}"
        else:
            continue
        if parse_prompt(stated).has_heldout():
            found.append(f"{qtype}: {text}")
    return found


def test_train_val_test_never_show_or_mention_heldout_compositions():
    for split, n in (("train", 800), ("val", 600), ("test", 600)):
        world = World(seed=0, split=split)
        for i in range(n):
            assert _heldout_mentions(world.sample(i)) == [], (split, i)


def test_every_heldout_sample_holds_a_heldout_composition():
    world = World(seed=0, split="heldout")
    samples = [world.sample(i) for i in range(300)]
    assert all(_heldout_mentions(s) for s in samples)
    by_object = sum(any(is_heldout_pair(o.color, o.shape) for o in s.scene.objects) for s in samples)
    assert 0 < by_object < len(samples)  # both kinds occur: held-out objects and held-out relation captions


# --- captions and questions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, text",
    [
        ((1, "circle", "orange"), "an orange circle"),
        ((1, "square", "red"), "a red square"),
        ((1, "circle", "red", "large"), "a large red circle"),
        ((2, "cross", "green"), "two green crosses"),
        ((3, "circle", "blue"), "three blue circles"),
        ((4, "triangle", "purple"), "four purple triangles"),
    ],
)
def test_phrases_use_articles_plurals_and_number_words(args, text):
    assert phrase(*args) == text


@pytest.mark.parametrize(
    "objects, caption",
    [
        (
            (("circle", "red", "small", 10, 10), ("square", "blue", "small", 30, 40), ("circle", "red", "small", 50, 10)),
            "two red circles and a blue square",
        ),
        (
            (("triangle", "yellow", "small", 50, 10), ("circle", "red", "small", 10, 30), ("cross", "green", "large", 30, 40)),
            "a red circle, a green cross and a yellow triangle",
        ),
        ((("cross", "orange", "large", 20, 20),), "an orange cross"),
    ],
)
def test_canonical_caption_groups_and_orders_left_to_right(objects, caption):
    assert canonical_caption(_scene(*objects)) == caption


def test_scene_captions_for_two_objects():
    scene = _scene(("circle", "red", "small", 10, 10), ("square", "blue", "small", 40, 12))
    captions = scene_captions(scene)
    assert ("two_object", "a red circle and a blue square") in captions
    assert ("color_attr", "a red circle and a blue square") in captions
    assert ("position", "a red circle to the left of a blue square") in captions
    assert ("position", "a blue square to the right of a red circle") in captions
    assert not any("above" in c or "below" in c for _, c in captions)  # 2 px apart vertically: ambiguous band


def test_questions_have_unarguable_answers():
    scene = _scene(
        ("circle", "red", "small", 10, 30), ("square", "blue", "small", 40, 30), ("square", "green", "small", 40, 55)
    )
    qa = {(q, a) for _, q, a in questions_for(scene, np.random.default_rng(0))}
    assert ("what color is the circle?", "red") in qa
    assert ("what shape is the blue object?", "square") in qa
    assert ("how many squares are there?", "two") in qa
    assert ("what is to the left of the blue square?", "a red circle") in qa
    assert ("describe the image.", "a red circle, a blue square and a green square") in qa
    assert any(a == "zero" for _, a in qa)
    assert not any(q == "what color is the square?" for q, _ in qa)  # two squares: "the square" is ambiguous


def test_relation_questions_agree_with_geometry_and_skip_the_ambiguous_band():
    for i in range(200):
        sample = World(seed=4).sample(i)
        objects = {(o.color, o.shape): o for o in sample.scene.objects}
        for qtype, question, answer in sample.qa:
            if qtype != "relation":
                continue
            spec = parse_prompt(_as_statement(question))
            a, b = (objects[(g.color, g.shape)] for g in spec.groups)
            holds = relation_holds(a, spec.relation.relation, b)
            assert answer == ("yes" if holds else "no")
            assert holds or relation_holds(b, spec.relation.relation, a)


# --- the prompt parser -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, spec",
    [
        ("A photo of two red circles.", PromptSpec((ObjectGroup(2, "red", "circle"),))),
        ("  an   ORANGE cross ", PromptSpec((ObjectGroup(1, "orange", "cross"),))),
        (
            "a large red circle to the left of a blue square",
            PromptSpec((ObjectGroup(1, "red", "circle", "large"), ObjectGroup(1, "blue", "square")), Relation(0, "left of", 1)),
        ),
        (
            "a red circle, a green cross and a triangle",
            PromptSpec((ObjectGroup(1, "red", "circle"), ObjectGroup(1, "green", "cross"), ObjectGroup(1, None, "triangle"))),
        ),
    ],
)
def test_parse_prompt(text, spec):
    assert parse_prompt(text) == spec


@pytest.mark.parametrize(
    "text, message",
    [
        ("a pink circle", "unknown color 'pink'.*known colors: red, green"),
        ("a red hexagon", "unknown shape 'hexagon'.*known shapes: circle, square"),
        ("five red circles", "at most 4 objects"),
        ("three red circles and two blue squares", "at most 4 objects"),
        ("", "empty prompt"),
        ("  .  ", "empty prompt"),
    ],
)
def test_parse_prompt_errors_name_the_problem(text, message):
    with pytest.raises(UserError, match=message):
        parse_prompt(text)


# --- export, reading back and the CLI --------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unifork.cli", *args], capture_output=True, text=True, timeout=60)


def test_cli_world_writes_pngs_and_meta(tmp_path):
    result = _cli("world", "--n", "8", "--split", "train", "--seed", "0", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert len(list(tmp_path.glob("*.png"))) == 8
    lines = [json.loads(line) for line in (tmp_path / "meta.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and lines[0]["file"] == "000000.png"
    first = World(seed=0, split="train").sample(0)
    assert Scene.from_dict(lines[0]["spec"]) == first.scene
    assert np.array_equal(fit_image(tmp_path / "000000.png", 64), first.image)


def test_cli_bad_split_is_one_line_without_traceback(tmp_path):
    result = _cli("world", "--n", "2", "--split", "nope", "--out", str(tmp_path / "x"))
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "valid splits: train, val, test, heldout" in result.stderr
    assert not (tmp_path / "x").exists()


def test_reading_a_text_file_as_an_image_is_a_user_error(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not pixels")
    with pytest.raises(UserError, match="not an image file"):
        fit_image(path, 64)


@pytest.mark.parametrize("mode", ["P", "RGBA", "CMYK", "L", "I;16"])
def test_world_images_read_back_in_any_mode(tmp_path, mode):
    """Through unifork.images, as user images are: color modes at another size still detect, greys are exact."""
    sample = World(seed=2).sample(1)
    img = Image.fromarray(sample.image)
    if mode == "I;16":  # 16-bit grey: stored 0..65535
        img = Image.fromarray((np.asarray(img.convert("L"), dtype=np.uint16) * 257))
    elif mode == "L":
        img = img.convert(mode)
    else:
        img = img.resize((96, 96), Image.NEAREST).convert(mode)
    path = tmp_path / ("img.tiff" if mode == "CMYK" else "img.png")
    img.save(path)
    loaded = fit_image(path, 64)
    assert loaded.dtype == np.uint8 and loaded.shape == (64, 64, 3)
    if mode in ("P", "RGBA", "CMYK"):  # color-preserving modes: the detector still reads the scene
        assert _same_objects(detect(loaded), sample.scene.objects)
    else:
        assert np.array_equal(loaded[..., 0], np.asarray(Image.fromarray(sample.image).convert("L")))


@pytest.mark.parametrize(
    "prompt, message",
    [
        ("a pink circle", "unknown color 'pink'"),
        ("a red hexagon", "unknown shape 'hexagon'"),
        ("five large red circles", "at most 4"),
        ("four large circles and a large square", "at most 4"),
    ],
)
def test_cli_bad_prompts_are_one_line_errors(tmp_path, prompt, message):
    result = _cli("world", "--prompt", prompt, "--n", "2", "--out", str(tmp_path / "w"))
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()


def test_cli_prompt_scenes_satisfy_the_prompt(tmp_path):
    result = _cli("world", "--prompt", "two green triangles", "--n", "3", "--out", str(tmp_path / "w"))
    assert result.returncode == 0, result.stderr
    for i in range(3):
        image = fit_image(tmp_path / "w" / f"{i:06d}.png", 64)
        assert judge("two green triangles", "counting", detect(image))


def test_object_larger_than_the_canvas_is_a_user_error():
    from unifork.world.layout import place

    with pytest.raises(UserError, match="does not fit on a 16x16 canvas"):
        place(np.random.default_rng(0), [("circle", "red", "large")], WorldConfig(canvas=16))

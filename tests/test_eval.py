"""The evaluation suite: Wilson intervals, caption matching, the attribute classifier, domain FID and `unifork eval`."""

import json

import numpy as np
import pytest
import torch

from unifork.cli import main
from unifork.errors import UserError
from unifork.eval import geneval
from unifork.eval.attribute_classifier import (
    CACHE_NAME,
    ClassifierRecipe,
    load_or_train_attribute_classifier,
    to_classifier_input,
    train_attribute_classifier,
)
from unifork.eval.caption_match import caption_match
from unifork.eval.geneval import evaluate_generation
from unifork.eval.image_quality import domain_fid, require_inception_fid
from unifork.eval.stats import rates, wilson_interval
from unifork.eval.suite import EvalSettings
from unifork.inference import Pipeline
from unifork.inference.settings import DEFAULT_CFG_SCALE, SamplingSettings
from unifork.world import CATEGORIES, World

# The shipped recipe (1000 steps) takes ~40 s; this one learns colors but not yet shapes, in ~8 s. Measured
# held-out (test split) accuracy 0.82; predicting each attribute's most common count scores 0.70.
QUICK = ClassifierRecipe(steps=200, n_train_images=1000, n_eval_images=300)
QUICK_MIN_ACCURACY = 0.78


@pytest.fixture(scope="session")
def classifier_cache(tmp_path_factory):
    """A cache root holding a quickly trained attribute classifier, and the classifier with its info."""
    root = tmp_path_factory.mktemp("cache")
    model, info = load_or_train_attribute_classifier(root, QUICK)
    return root, model, info


def record_loads(monkeypatch) -> list:
    """Spy on Pipeline.from_pretrained: the list fills with (directory, task) per call."""
    loaded, original = [], Pipeline.from_pretrained.__func__

    def spy(cls, directory, task=None, device="cpu"):
        loaded.append((str(directory), task))
        return original(cls, directory, task, device)

    monkeypatch.setattr(Pipeline, "from_pretrained", classmethod(spy))
    return loaded


def world_images(split, n, seed):
    world = World(seed=seed, split=split)
    return np.stack([world.sample(i).image for i in range(n)])


# --- statistics -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "correct, total, expected",
    [(8, 10, (0.4902, 0.9433)), (0, 10, (0.0, 0.2775)), (10, 10, (0.7225, 1.0)), (50, 100, (0.4038, 0.5962)), (0, 0, (0.0, 1.0))],
)  # fmt: skip
def test_wilson_interval_known_values(correct, total, expected):
    assert wilson_interval(correct, total) == pytest.approx(expected, abs=1e-4)


def test_wilson_interval_is_symmetric_and_rejects_impossible_counts():
    lo, hi = wilson_interval(3, 17)
    assert wilson_interval(14, 17) == pytest.approx((1 - hi, 1 - lo))
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_rates_adds_overall_and_counts():
    r = rates({"a": 3, "b": 0}, {"a": 4, "b": 2}, ["a", "b"])
    assert r["accuracy"] == {"a": 0.75, "b": 0.0, "overall": 0.5}
    assert r["counts"]["overall"] == {"correct": 3, "total": 6}
    assert r["ci95"]["b"][0] == 0.0 and r["ci95"]["b"][1] > 0


# --- describe caption matching ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "predicted, truth, exact, partial",
    [
        ("a red circle and a blue square", "a red circle and a blue square", True, 1.0),
        ("a blue square and a red circle", "a red circle and a blue square", True, 1.0),  # order is free
        ("a red circle and a red circle", "two red circles", True, 1.0),  # counts are multiplicities
        ("two red circles", "three red circles", False, 0.8),  # 2 * 2 / (2 + 3)
        ("a red circle", "a red circle and a blue square", False, 2 / 3),
        ("a green circle", "a red circle", False, 0.0),  # color is part of the item
        ("a circle", "a red circle", False, 0.0),
        ("red red red", "a red circle", False, 0.0),  # unparseable
        ("", "a red circle", False, 0.0),
        ("a red circle to the left of a blue square", "a blue square to the right of a red circle", True, 1.0),
        ("a red circle above a blue square", "a red circle to the left of a blue square", False, 1.0),
        ("a red circle and a blue square", "a red circle to the left of a blue square", False, 1.0),
    ],
)  # fmt: skip
def test_caption_match(predicted, truth, exact, partial):
    got_exact, got_partial = caption_match(predicted, truth)
    assert got_exact is exact and got_partial == pytest.approx(partial)


# --- attribute classifier and domain FID --------------------------------------------------------------------------


def test_attribute_classifier_beats_threshold_on_unseen_scenes(classifier_cache):
    _, _, info = classifier_cache
    assert info["accuracy_test"] >= QUICK_MIN_ACCURACY
    assert info["version"] == CACHE_NAME and info["num_features"] == 64


def test_attribute_classifier_is_deterministic_and_cached(tmp_path):
    tiny = ClassifierRecipe(steps=8, n_train_images=64, n_eval_images=16)
    images = to_classifier_input(world_images("test", 8, seed=3))
    a, _ = train_attribute_classifier(tiny)
    torch.manual_seed(1234)  # the caller's RNG state must not matter
    b, _ = train_attribute_classifier(tiny)
    with torch.no_grad():
        assert torch.equal(a.features(images), b.features(images))
        other, _ = train_attribute_classifier(ClassifierRecipe(**{**tiny.__dict__, "seed": 1}))
        assert not torch.allclose(a.features(images), other.features(images))

        first, info = load_or_train_attribute_classifier(tmp_path, tiny)
        assert (tmp_path / CACHE_NAME / "model.safetensors").is_file()
        again, info_again = load_or_train_attribute_classifier(tmp_path, ClassifierRecipe(steps=1))  # cache wins
        assert info_again == info
        torch.testing.assert_close(again.features(images), first.features(images))


def test_corrupt_classifier_cache_is_a_user_error(tmp_path):
    directory = tmp_path / CACHE_NAME
    directory.mkdir()
    (directory / "config.json").write_text("{not json")
    (directory / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="delete it to retrain"):
        load_or_train_attribute_classifier(tmp_path)


def test_domain_fid_separates_real_from_noise_and_blank(classifier_cache):
    _, model, _ = classifier_cache
    real, other_real = world_images("test", 100, seed=0), world_images("test", 100, seed=1)
    noise = np.random.default_rng(0).integers(0, 256, real.shape, dtype=np.uint8)
    blank = np.full_like(real, 255)
    same = domain_fid(real, other_real, model)
    assert same * 5 < domain_fid(real, noise, model)
    assert same * 5 < domain_fid(real, blank, model)
    assert domain_fid(real, real, model) == pytest.approx(0.0, abs=1e-3)


def test_inception_fid_checks_its_inputs_without_downloading(tmp_path):
    with pytest.raises(UserError, match="no Inception weights file"):
        require_inception_fid(tmp_path / "missing.pth")
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"")
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="pip install torch-fidelity"):
            require_inception_fid(weights)


# --- ShapeEval and the CLI ------------------------------------------------------------------------------------------


def test_shapeeval_is_category_balanced_and_batches_past_the_sampler_limit(ckpt, monkeypatch):
    monkeypatch.setattr("unifork.eval.geneval.MAX_IMAGES", 3)  # 4 images per category: batches of 3 and 1
    batches, sample = [], geneval.sample_image_codes

    def spy(model, builder, captions, **kwargs):
        batches.append(len(captions))
        return sample(model, builder, captions, **kwargs)

    monkeypatch.setattr(geneval, "sample_image_codes", spy)
    result = evaluate_generation(Pipeline.from_pretrained(ckpt, task="gen"), prompts_per_category=2,
                                 images_per_prompt=2, return_images=True)  # fmt: skip
    assert batches == [3, 1] * len(CATEGORIES)
    assert {c: result["counts"][c]["total"] for c in CATEGORIES} == {c: 4 for c in CATEGORIES}
    assert result["n_images"] == len(result["captions"]) == len(result["images"]) == 24
    for key, (lo, hi) in result["ci95"].items():
        assert lo <= result["accuracy"][key] <= hi


def eval_args(ckpt, out, suite):
    return ["eval", "--ckpt", str(ckpt), "--suite", suite, "--out", str(out), "--prompts-per-category", "1",
            "--images-per-prompt", "2", "--vqa-scenes", "3"]  # fmt: skip


@pytest.mark.parametrize(
    "suite, task, present, absent",
    [
        ("gen", "gen", {"gen", "gen_heldout", "domain_fid"}, {"vqa", "vqa_heldout"}),
        ("und", "und", {"vqa", "vqa_heldout"}, {"gen", "gen_heldout", "domain_fid"}),
        ("all", None, {"gen", "gen_heldout", "domain_fid", "vqa", "vqa_heldout"}, set()),
    ],
)  # fmt: skip
def test_eval_cli_writes_a_complete_json(ckpt, classifier_cache, tmp_path, monkeypatch, capsys, suite, task, present, absent):
    monkeypatch.setenv("UNIFORK_CACHE", str(classifier_cache[0]))
    loaded = record_loads(monkeypatch)
    drawn, sample = [], geneval.sample_image_codes

    def spy(model, builder, prompts, **kwargs):
        drawn.append(kwargs["settings"])
        return sample(model, builder, prompts, **kwargs)

    monkeypatch.setattr(geneval, "sample_image_codes", spy)
    out = tmp_path / "eval.json"
    assert main(eval_args(ckpt, out, suite)) == 0  # no --cfg: the default guidance, as `unifork generate`
    assert set(drawn) <= {SamplingSettings(cfg_scale=DEFAULT_CFG_SCALE)} and bool(drawn) == ("gen" in present)
    assert EvalSettings().sampling.cfg_scale == DEFAULT_CFG_SCALE
    assert loaded == [(str(ckpt), task)]
    result = json.loads(out.read_text())
    assert present <= set(result) and not absent & set(result)
    assert result["settings"]["suite"] == suite and result["settings"]["images_per_prompt"] == 2
    for split in ("test", "heldout"):
        assert result["tokenizer"][split]["psnr"] > 0 and -1 <= result["tokenizer"][split]["ssim"] <= 1
    if "gen" in present:
        for key in ("gen", "gen_heldout"):
            assert set(result[key]["accuracy"]) == {*CATEGORIES, "overall"} == set(result[key]["ci95"])
            assert result[key]["counts"]["overall"]["total"] == result[key]["n_images"] == 12
        fid = result["domain_fid"]
        assert fid["value"] >= 0 and fid["real_vs_real"] >= 0 and fid["n_images"] == 12
        assert fid["classifier"]["accuracy_test"] == classifier_cache[2]["accuracy_test"]  # the cached one
    if "vqa" in present:
        for key, split in (("vqa", "test"), ("vqa_heldout", "heldout")):
            vqa = result[key]
            assert vqa["split"] == split and vqa["n_questions"] == vqa["counts"]["overall"]["total"] > 0
            assert set(vqa["by_type"]) | {"overall"} == set(vqa["ci95"]) == set(vqa["counts"])
            assert vqa["describe"]["n"] == 3 and 0 <= vqa["describe"]["caption_partial"] <= 1
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--ckpt": "MISSING"}, "no such checkpoint directory"),
        ({"--suite": "both"}, "unknown --suite 'both'"),
        ({"--images-per-prompt": "0"}, "--images-per-prompt must be a positive integer"),
        ({"--cfg": "nan"}, "--cfg must be a finite number"),
        ({"--inception-weights": "MISSING"}, "no Inception weights file"),
    ],
)  # fmt: skip
def test_eval_cli_bad_input_is_one_line_error_before_any_work(ckpt, tmp_path, monkeypatch, capsys, change, message):
    monkeypatch.setenv("UNIFORK_CACHE", str(tmp_path / "cache"))  # never the user's cache, even if a check slips
    loaded = record_loads(monkeypatch)
    args = eval_args(ckpt, tmp_path / "eval.json", "gen")
    for flag, value in change.items():
        value = str(tmp_path / value) if value == "MISSING" else value
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "eval.json").exists()
    assert [d for d, _ in loaded] == ([str(tmp_path / "MISSING")] if "--ckpt" in change else [])  # checked first


class _Through:
    """A stand-in image tokenizer whose round trip returns the image (exact) or a blank page (nothing)."""

    def __init__(self, exact: bool):
        self.exact, self.cfg = exact, type("cfg", (), {"image_size": 64})()

    def encode(self, images):
        return images

    def decode(self, codes):
        return codes if self.exact else torch.ones_like(codes)


def test_the_tokenizer_ceiling_is_the_exact_rule_on_round_tripped_true_scenes():
    from unifork.eval.geneval import tokenizer_ceiling

    perfect = tokenizer_ceiling(_Through(exact=True), prompts_per_category=3, images_per_prompt=2)
    assert all(v == 1.0 for v in perfect["accuracy"].values())  # true renderings pass by construction
    blank = tokenizer_ceiling(_Through(exact=False), prompts_per_category=3, images_per_prompt=2)
    assert all(v == 0.0 for v in blank["accuracy"].values()) and blank["counts"]["overall"]["total"] == 36

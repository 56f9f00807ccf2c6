"""The sharing-pattern study: every plan trains on identical batches, the summary is complete, reruns resume."""

import json
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch

import unifork.train.trainer as trainer
from unifork.cli import main
from unifork.data.batches import PlannedPool
from unifork.errors import UserError
from unifork.eval.attribute_classifier import ClassifierRecipe, load_or_train_attribute_classifier
from unifork.inference.settings import DEFAULT_CFG_SCALE
from unifork.study import run_study
from unifork.study.presets import StudyPreset
from unifork.study.summary import mean_std, paired

PLANS = ("separate", "y", "shared")
RECIPE = """
seed = 0
[model]
size = "debug"
[data]
pool_size = 32
[[stages]]
name = "joint"
steps = 3
batch_size = 8
lr = 3e-3
warmup = 1
mix = { und = 0.5, gen = 0.5 }
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory, tokenizer_dir):
    """The study run, and the batches each of its models was trained on (by run directory name)."""
    out = tmp_path_factory.mktemp("study")
    (out / "recipe.toml").write_text(RECIPE)
    preset = StudyPreset(out / "recipe.toml", plans=PLANS, seeds=(0, 1), vqa_scenes=2, prompts_per_category=1,
                         images_per_prompt=1, align_samples=12, align_k=2, conflict_batches=2)  # fmt: skip
    cache = out / "cache"  # domain FID's classifier, trained small (the shipped recipe takes ~40 s)
    load_or_train_attribute_classifier(cache, ClassifierRecipe(steps=20, n_train_images=200, n_eval_images=50))
    batches, current = {}, []
    real_train, real_rank_batch = trainer.train, PlannedPool.rank_batch

    def train(recipe, run_dir, **kwargs):
        current[:] = [Path(run_dir).name]
        return real_train(recipe, run_dir, **kwargs)

    def rank_batch(pool, *args, **kwargs):
        part = real_rank_batch(pool, *args, **kwargs)
        batches.setdefault(current[0], []).append(part.batch)
        return part

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UNIFORK_CACHE", str(cache))
        patch.setattr(trainer, "train", train)
        patch.setattr(PlannedPool, "rank_batch", rank_batch)
        result = run_study(out / "run", tokenizer_dir=tokenizer_dir, progress=False, preset=preset)
    return out, preset, result, batches, cache


@pytest.mark.slow  # the study fixture trains six models
def test_study_trains_every_plan_and_seed_and_summarizes(study):
    out, _, result, *_ = study
    plans = ["tttt", "sstt", "ssss"]
    assert sorted((r["plan"], r["seed"]) for r in result["runs"]) == sorted((p, s) for p in plans for s in (0, 1))
    assert [row["plan"] for row in result["by_plan"]] == plans
    for row in result["by_plan"]:
        assert row["seeds"] == [0, 1]
        for key in ("vqa", "vqa_heldout", "gen_exact", "gen_heldout_exact", "domain_fid", "train_seconds"):
            assert set(row[key]) == {"mean", "std"}
        assert len(row["alignment"]["und"]) == len(row["alignment"]["gen"]) == 5  # embeddings + 4 layers
        # conflict is measured on shared layers only
        assert [v is None for v in row["conflict_cosine"]] == [c == "t" for c in row["plan"]]
    # fewer shared layers, more parameters: separate > Y-fork > fully shared
    totals = [row["parameters"]["total"] for row in result["by_plan"]]
    assert totals[0] > totals[1] > totals[2]
    results = out / "run" / "results"
    assert json.loads((results / "study.json").read_text())["by_plan"] == result["by_plan"]
    assert {p.name for p in results.glob("*-seed*.json")} == {f"{p}-seed{s}.json" for p in plans for s in (0, 1)}
    for name in ("study.md", "quality_per_plan.png", "curves_per_plan.png"):
        assert (results / name).stat().st_size > 0
    assert "| y `sstt` | layers 0-1 shared, 2-3 per task |" in (results / "study.md").read_text()
    assert result["settings"]["cfg_scale"] == DEFAULT_CFG_SCALE  # ShapeEval samples as `unifork generate` does
    pairs = {(c["a"], c["b"]) for c in result["paired"]}
    assert pairs == {("tttt", "sstt"), ("tttt", "ssss"), ("sstt", "ssss")}


@pytest.mark.slow  # the study fixture trains six models
def test_same_seed_same_batches_for_every_plan(study):
    """Every model of a seed trains on the very same batches, whatever its plan; another seed, others."""
    _, _, _, batches, _ = study

    def same(a, b):
        def equal(u, v):
            return u is v is None or (u is not None and v is not None and torch.equal(u, v))

        return all(equal(getattr(x, f.name), getattr(y, f.name)) for x, y in zip(a, b) for f in fields(x))

    for seed in (0, 1):
        runs = [batches[f"{plan}-seed{seed}"] for plan in ("tttt", "sstt", "ssss")]
        assert len(runs[0]) == 3 and all(same(runs[0], other) for other in runs[1:])
    assert not same(batches["tttt-seed0"], batches["tttt-seed1"])


@pytest.mark.slow  # the study fixture trains six models
def test_results_alone_let_a_rerun_skip_finished_models(study, tokenizer_dir, monkeypatch, tmp_path):
    """The committed result files are enough: a new study directory (no checkpoints) with them trains nothing."""
    out, preset, result, _, cache = study
    monkeypatch.setenv("UNIFORK_CACHE", str(cache))
    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("a finished model was trained again"))
    again = run_study(tmp_path / "elsewhere", tokenizer_dir=tokenizer_dir, progress=False, preset=preset,
                      results_dir=out / "run" / "results")  # fmt: skip
    assert again["by_plan"] == result["by_plan"]


def test_mean_std():
    assert mean_std([0.5]) == {"mean": 0.5, "std": 0.0}
    assert mean_std([0.2, 0.4]) == {"mean": 0.3, "std": 0.1414}


def _result(plan, seed, vqa, fid=1.0):
    return {"plan": plan, "seed": seed, "vqa": {"accuracy": vqa, "by_type": {"relation": 0.5}}, "vqa_heldout": {"accuracy": vqa},
            "gen": {"exact": {"overall": 0.5}, "accuracy": {"overall": 0.5}}, "gen_heldout": {"exact": {"overall": 0.5}},
            "domain_fid": {"value": fid}}  # fmt: skip


def test_paired_differences_are_per_seed():
    """A gap far smaller than the seed-to-seed spread is beyond noise when it holds seed by seed."""
    results = [_result("a", s, v + 0.01) for s, v in enumerate((0.3, 0.6, 0.9))]
    results += [_result("b", s, v, fid=2.0 + 0.1 * s) for s, v in enumerate((0.3, 0.6, 0.9))]
    by = {c["metric"]: c for c in paired(results)}
    assert by["vqa"]["diff"]["mean"] == 0.01 and by["vqa"]["verdict"] == "a better"
    assert by["domain_fid"]["verdict"] == "a better"  # lower FID is better
    assert by["gen_exact"]["verdict"] == "within noise"
    assert paired(results[:1] + results[3:4])[0]["verdict"] == "one seed: no interval"


@pytest.mark.slow  # the study fixture trains six models
def test_bad_plan_is_a_user_error(study, tokenizer_dir):
    out, preset, *_ = study
    with pytest.raises(UserError, match="study plan 'y:9': a fork point is y:K or inverted_y:K with K in 0..4"):
        run_study(out / "bad", plans=("y:9",), tokenizer_dir=tokenizer_dir, progress=False, preset=preset)
    with pytest.raises(UserError, match="study plan 'sst'"):
        run_study(out / "bad", plans=("sst",), tokenizer_dir=tokenizer_dir, progress=False, preset=preset)
    with pytest.raises(UserError, match="the recommended plan is read from the fully shared model: add 'shared' to"):
        run_study(out / "bad", plans=("y", "recommended"), tokenizer_dir=tokenizer_dir, progress=False, preset=preset)


def test_cli_rejects_bad_lists_in_one_line(tmp_path, capsys):
    assert main(["study", "--out", str(tmp_path), "--seeds", "0,two"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--seeds takes comma-separated integers" in err


@pytest.mark.slow
def test_rerun_with_other_evaluation_settings_evaluates_again_without_training(study, tokenizer_dir, monkeypatch):
    out, preset, result, _, cache = study
    monkeypatch.setenv("UNIFORK_CACHE", str(cache))
    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("a finished model was trained again"))
    other = replace(preset, sampling=replace(preset.sampling, cfg_scale=preset.sampling.cfg_scale + 1))
    again = run_study(out / "run", tokenizer_dir=tokenizer_dir, progress=False, preset=other)
    assert {r["evaluation"]["sampling"]["cfg_scale"] for r in again["runs"]} == {other.sampling.cfg_scale}
    assert [r["train_seconds"] for r in again["runs"]] == [r["train_seconds"] for r in result["runs"]]
    run_study(out / "run", tokenizer_dir=tokenizer_dir, progress=False, preset=preset)  # back as the others expect


def test_committed_study_results_still_count_as_finished():
    """The committed results are days of CPU time: a change to the recipe format, the evaluation settings or the
    sampling settings must not make a rerun of the study train them again."""
    from unifork.study.presets import PRESETS
    from unifork.study.run import _recipe_record, evaluation_settings, recorded_evaluation, recorded_recipe
    from unifork.train.recipe import load_recipe

    preset = PRESETS["default"]
    base = load_recipe(preset.recipe)
    results = sorted((Path(__file__).parent.parent / "docs" / "results" / "study").glob("*-seed*.json"))
    assert len(results) >= 14
    for path in results:
        result = json.loads(path.read_text())
        assert recorded_evaluation(result) == evaluation_settings(preset), path.name
        model = result["recipe"]["model"]
        recipe = replace(base, seed=result["seed"], data=replace(base.data, seed=result["seed"]),
                         model=replace(base.model, sharing=model["sharing"], fork_layer=model["fork_layer"]))  # fmt: skip
        assert _recipe_record(recipe) == recorded_recipe(result), path.name

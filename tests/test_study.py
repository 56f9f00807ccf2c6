"""The fork-point study: the family trains on identical batches, the summary is complete, reruns resume."""

import json
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch

import unifork.train.trainer as trainer
from unifork.cli import main
from unifork.data.batches import PlannedPool
from unifork.errors import UserError
from unifork.inference.settings import DEFAULT_CFG_SCALE
from unifork.study import run_study
from unifork.study.presets import StudyPreset
from unifork.study.summary import mean_std

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
    preset = StudyPreset(out / "recipe.toml", forks=(0, 2, 4), seeds=(0, 1), vqa_scenes=2, prompts_per_category=1,
                         images_per_prompt=1, align_samples=12, align_k=2)  # fmt: skip
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
        patch.setattr(trainer, "train", train)
        patch.setattr(PlannedPool, "rank_batch", rank_batch)
        result = run_study(out / "run", tokenizer_dir=tokenizer_dir, progress=False, preset=preset)
    return out, preset, result, batches


@pytest.mark.slow  # the study fixture trains six models
def test_study_trains_every_fork_and_seed_and_summarizes(study):
    out, _, result, _ = study
    assert sorted((r["fork"], r["seed"]) for r in result["runs"]) == [(f, s) for f in (0, 2, 4) for s in (0, 1)]
    assert [row["fork"] for row in result["by_fork"]] == [0, 2, 4]
    for row in result["by_fork"]:
        assert row["seeds"] == [0, 1]
        for key in ("vqa", "gen", "gen_exact", "train_seconds"):
            assert set(row[key]) == {"mean", "std"}
        assert len(row["alignment"]["und"]) == len(row["alignment"]["gen"]) == 5  # embeddings + 4 layers
    # fewer shared layers, more parameters: task-specific > Y-fork > fully shared
    totals = [row["parameters"]["total"] for row in result["by_fork"]]
    assert totals[0] > totals[1] > totals[2]
    assert json.loads((out / "run" / "study.json").read_text())["by_fork"] == result["by_fork"]
    for name in ("study.md", "quality_vs_fork.png", "alignment.png"):
        assert (out / "run" / name).stat().st_size > 0
    assert "| 2 | Y-fork | 2 of 4 |" in (out / "run" / "study.md").read_text()
    assert result["settings"]["cfg_scale"] == DEFAULT_CFG_SCALE  # ShapeEval samples as `unifork generate` does


@pytest.mark.slow  # the study fixture trains six models
def test_same_seed_same_batches_for_every_fork(study):
    """Every model of a seed trains on the very same batches, whatever its fork point; another seed, others."""
    *_, batches = study

    def same(a, b):
        def equal(u, v):
            return u is v is None or (u is not None and v is not None and torch.equal(u, v))

        return all(equal(getattr(x, f.name), getattr(y, f.name)) for x, y in zip(a, b) for f in fields(x))

    for seed in (0, 1):
        runs = [batches[f"fork{fork}-seed{seed}"] for fork in (0, 2, 4)]
        assert len(runs[0]) == 3 and all(same(runs[0], other) for other in runs[1:])
    assert not same(batches["fork0-seed0"], batches["fork0-seed1"])


@pytest.mark.slow  # the study fixture trains six models
def test_rerun_reuses_finished_models(study, tokenizer_dir, monkeypatch):
    out, preset, result, _ = study
    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("a finished model was trained again"))
    again = run_study(out / "run", tokenizer_dir=tokenizer_dir, progress=False, preset=preset)
    assert again["by_fork"] == result["by_fork"]


def test_mean_std():
    assert mean_std([0.5]) == {"mean": 0.5, "std": 0.0}
    assert mean_std([0.2, 0.4]) == {"mean": 0.3, "std": 0.1414}


@pytest.mark.slow  # the study fixture trains six models
def test_bad_fork_point_is_a_user_error(study, tokenizer_dir):
    out, preset, _, _ = study
    with pytest.raises(UserError, match="fork point 9 is out of range for a 4-layer model"):
        run_study(out / "bad", forks=(9,), tokenizer_dir=tokenizer_dir, progress=False, preset=preset)


def test_cli_rejects_bad_lists_in_one_line(tmp_path, capsys):
    assert main(["study", "--out", str(tmp_path), "--forks", "0,two"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--forks takes comma-separated integers" in err


@pytest.mark.slow
def test_rerun_with_other_evaluation_settings_evaluates_again_without_training(study, tokenizer_dir, monkeypatch):
    out, preset, result, _ = study
    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("a finished model was trained again"))
    other = replace(preset, sampling=replace(preset.sampling, cfg_scale=preset.sampling.cfg_scale + 1))
    again = run_study(out / "run", tokenizer_dir=tokenizer_dir, progress=False, preset=other)
    assert {r["evaluation"]["sampling"]["cfg_scale"] for r in again["runs"]} == {other.sampling.cfg_scale}
    assert [r["train_seconds"] for r in again["runs"]] == [r["train_seconds"] for r in result["runs"]]
    run_study(out / "run", tokenizer_dir=tokenizer_dir, progress=False, preset=preset)  # back as the others expect

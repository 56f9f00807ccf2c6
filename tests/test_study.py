"""The fork-point study: the family trains on identical batches, the summary is complete, reruns resume."""

import json

import pytest

from unifork.cli import main
from unifork.errors import UserError
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
    out = tmp_path_factory.mktemp("study")
    (out / "recipe.toml").write_text(RECIPE)
    preset = StudyPreset(out / "recipe.toml", forks=(0, 2, 4), seeds=(0, 1), vqa_scenes=2, prompts_per_category=1,
                         images_per_prompt=1, align_samples=12, align_k=2)  # fmt: skip
    return out, preset, run_study(out / "run", tokenizer_dir=tokenizer_dir, progress=False, preset=preset)


def test_study_trains_every_fork_and_seed_and_summarizes(study):
    out, _, result = study
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


def test_same_seed_same_batches_for_every_fork(study):
    """Batches are a pure function of (data seed, stage, step): equal data and stages mean equal batches."""
    out, _, _ = study
    recipes = [json.loads((out / "run" / "models" / f"fork{f}-seed0" / "result.json").read_text())["recipe"] for f in (0, 2, 4)]
    assert all(r["data"] == recipes[0]["data"] and r["stages"] == recipes[0]["stages"] for r in recipes)
    assert [r["model"]["fork_layer"] for r in recipes] == [0, 2, 4]


def test_rerun_reuses_finished_models(study, tokenizer_dir, monkeypatch):
    out, preset, result = study
    import unifork.train.trainer as trainer

    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("a finished model was trained again"))
    again = run_study(out / "run", tokenizer_dir=tokenizer_dir, progress=False, preset=preset)
    assert again["by_fork"] == result["by_fork"]


def test_mean_std():
    assert mean_std([0.5]) == {"mean": 0.5, "std": 0.0}
    assert mean_std([0.2, 0.4]) == {"mean": 0.3, "std": 0.1414}


def test_bad_fork_point_is_a_user_error(study, tokenizer_dir):
    out, preset, _ = study
    with pytest.raises(UserError, match="fork point 9 is out of range for a 4-layer model"):
        run_study(out / "bad", forks=(9,), tokenizer_dir=tokenizer_dir, progress=False, preset=preset)


def test_cli_rejects_bad_lists_in_one_line(tmp_path, capsys):
    assert main(["study", "--out", str(tmp_path), "--forks", "0,two"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--forks takes comma-separated integers" in err

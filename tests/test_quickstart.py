"""The main job end to end at a tiny size: train, evaluate, report; the checkpoint works with the CLI."""

import json
import subprocess
import sys

import pytest

from unifork.inference.settings import DEFAULT_CFG_SCALE
from unifork.quickstart import quickstart

RECIPE = """
tokenizer_dir = "{tok}"
[model]
size = "debug"
[data]
pool_size = 64
[report]
learning_curve = true
curve_vqa_scenes = 2
curve_prompts = 1
[[stages]]
name = "gen_pretrain"
steps = 3
batch_size = 8
mix = {{ gen = 1.0 }}
train = ["trunk.*", "gen.*"]
save_every = 2
[[stages]]
name = "joint"
steps = 3
batch_size = 8
save_every = 2
"""


@pytest.mark.slow
def test_quickstart_writes_report_and_a_usable_checkpoint(tmp_path, tokenizer_dir, monkeypatch):
    (tmp_path / "r.toml").write_text(RECIPE.format(tok=tokenizer_dir))
    out = tmp_path / "qs"
    report = quickstart(out, recipe=tmp_path / "r.toml", progress=False, eval_scale=0.1)

    saved = json.loads((out / "report.json").read_text())
    assert saved == report
    assert 0.0 <= saved["vqa"]["accuracy"] <= 1.0 and saved["vqa"]["n_questions"] > 0
    assert set(saved["vqa"]["by_type"]) <= {"color", "shape", "count", "relation", "what_left", "describe"}
    expected = {"overall", "single_object", "two_object", "counting", "colors", "position", "color_attr"}
    assert set(saved["gen"]["accuracy"]) == expected and set(saved["gen"]["exact"]["accuracy"]) == expected
    assert saved["gen"]["cfg_scale"] == DEFAULT_CFG_SCALE  # the scale `unifork generate` uses without --cfg
    n_layers = saved["n_layers"]
    assert len(saved["alignment"]["und"]) == len(saved["alignment"]["gen"]) == n_layers + 1
    assert saved["wall_seconds"] > 0
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") > 10 and "Training loss per task" in page
    assert "Image-text alignment per layer" in page and (out / "alignment.png").stat().st_size > 0
    assert "classifier-free guidance scale" in page
    assert "what the detector found instead" in page and page.count("found: ") >= 1  # a tiny run fails somewhere

    # The learning curve: every kept step checkpoint (steps 2 and 3 of each stage), in training order.
    curve = saved["learning_curve"]
    assert [(p["stage"], p["step"], p["global_step"], p["samples"]) for p in curve] == [
        ("gen_pretrain", 2, 2, 16), ("gen_pretrain", 3, 3, 24), ("joint", 2, 5, 40), ("joint", 3, 6, 48)]  # fmt: skip
    assert all(set(p["gen_exact"]) == expected and 0 <= p["vqa"]["overall"] <= 1 for p in curve)
    assert "Quality against training steps" in page
    assert len(list((out / "curve").glob("*.json"))) == 4  # each point saved as it finished: a rerun reuses them
    # TensorBoard: the training curves and, at the steps they measure, the evaluation figures
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 7))
    assert [e.step for e in events.Scalars("eval/shapeeval_exact")] == [2, 3, 5, 6, 6]
    assert events.Scalars("eval/vqa")[-1].value == pytest.approx(saved["vqa"]["accuracy"])
    stored = json.loads((out / "checkpoint" / "evaluation.json").read_text())["figures"]  # with the checkpoint
    assert stored["vqa"] == pytest.approx(saved["vqa"]["accuracy"], abs=1e-4)
    assert f"vqa {stored['vqa']:.3f}" in (out / "checkpoint" / "README.md").read_text()  # and on its card

    def no_new_evaluation(*_):
        raise AssertionError("a point on disk was evaluated again")

    monkeypatch.setattr("unifork.learning_curve._evaluate", no_new_evaluation)
    from unifork.learning_curve import learning_curve
    from unifork.train.recipe import load_recipe

    assert learning_curve(out, load_recipe(tmp_path / "r.toml"), progress=False) == curve

    ckpt = out / "checkpoint"
    ask = subprocess.run([sys.executable, "-m", "unifork.cli", "ask", "--ckpt", str(ckpt), "--image",
                          str(tmp_path / "qs" / "missing.png"), "--question", "what?"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert ask.returncode != 0 and "missing.png" in ask.stderr
    gen = subprocess.run([sys.executable, "-m", "unifork.cli", "generate", "--ckpt", str(ckpt), "--prompt",
                          "a red circle", "--n", "2", "--out", str(tmp_path / "grid.png")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert gen.returncode == 0, gen.stderr
    assert (tmp_path / "grid.png").is_file()

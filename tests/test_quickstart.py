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
[[stages]]
name = "gen_pretrain"
steps = 3
batch_size = 8
mix = {{ gen = 1.0 }}
train = ["trunk.*", "gen.*"]
[[stages]]
name = "joint"
steps = 3
batch_size = 8
"""


@pytest.mark.slow
def test_quickstart_writes_report_and_a_usable_checkpoint(tmp_path, tokenizer_dir):
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

"""Training: recipes are validated, a tiny run reduces both losses, stages chain, runs resume exactly."""

import json
import math
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.tensorboard import SummaryWriter

from unifork.checkpoint import load_model
from unifork.errors import UserError
from unifork.model import UniFork
from unifork.tokenizers.text import TextTokenizer
from unifork.train.checkpoints import latest_checkpoint
from unifork.train.recipe import load_recipe
from unifork.train.trainer import train

TINY_RECIPE = """
seed = 0
tokenizer_dir = "{tok}"
[model]
size = "debug"
[data]
pool_size = 64
[[stages]]
name = "gen_pretrain"
steps = {gen_steps}
batch_size = 8
lr = 3e-3
warmup = 2
mix = {{ gen = 1.0 }}
train = ["trunk.*", "gen.*"]
save_every = 3
[[stages]]
name = "joint"
steps = {joint_steps}
batch_size = 8
lr = 3e-3
warmup = 2
mix = {{ und = 0.5, gen = 0.5 }}
save_every = 3
"""


def write_recipe(path, tokenizer_dir, gen_steps=4, joint_steps=24):
    path.write_text(TINY_RECIPE.format(tok=tokenizer_dir, gen_steps=gen_steps, joint_steps=joint_steps))
    return path


def test_tiny_run_reduces_both_losses_and_chains_stages(tmp_path, tokenizer_dir):
    recipe = write_recipe(tmp_path / "r.toml", tokenizer_dir)
    final = train(recipe, tmp_path / "run", progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records] == ["gen_pretrain"] * 4 + ["joint"] * 24
    joint = [r for r in records if r["stage"] == "joint"]
    for task in ("und", "gen"):
        first, last = sum(r[task] for r in joint[:4]) / 4, sum(r[task] for r in joint[-4:]) / 4
        assert last < 0.8 * first, (task, first, last)
    # the gen_pretrain stage freezes the und branch: its weights equal the initialisation saved by nobody, so
    # compare the stage checkpoint's und weights to the final model's: joint must have changed them
    stage1 = load_file(str(latest_checkpoint(tmp_path / "run" / "stages" / "gen_pretrain") / "model.safetensors"))
    final_weights = load_file(str(final / "model.safetensors"))
    assert not torch.equal(stage1["und.head.weight"], final_weights["und.head.weight"])
    model = load_model(final)
    assert model.cfg.text_vocab_size == TextTokenizer.load(final).vocab_size
    card = (final / "README.md").read_text()  # the model card: how it was trained
    assert "stage gen_pretrain: 4 steps x 8 rows (gen 1)" in card and "stage joint: 24 steps" in card


def test_frozen_parameters_do_not_move(tmp_path, tokenizer_dir):
    recipe = write_recipe(tmp_path / "r.toml", tokenizer_dir, gen_steps=3, joint_steps=1)
    train(recipe, tmp_path / "run", progress=False)
    stage = load_file(str(latest_checkpoint(tmp_path / "run" / "stages" / "gen_pretrain") / "model.safetensors"))
    cfg = load_model(tmp_path / "run" / "checkpoint").cfg
    torch.manual_seed(0)  # the trainer seeds the same way right before building the model
    init = UniFork(cfg).state_dict()
    assert torch.equal(stage["und.head.weight"], init["und.head.weight"])  # frozen in gen_pretrain
    assert not torch.equal(stage["gen.head.weight"], init["gen.head.weight"])  # trained


def test_resume_is_exact(tmp_path, tokenizer_dir):
    recipe = write_recipe(tmp_path / "r.toml", tokenizer_dir, gen_steps=4, joint_steps=6)
    straight = train(recipe, tmp_path / "straight", progress=False)
    cut = tmp_path / "cut"
    assert train(recipe, cut, progress=False, max_steps=6) is None  # 4 gen steps + 2 of 6 joint steps, then stop
    assert torch.load(latest_checkpoint(cut / "stages" / "joint") / "train_state.pt", weights_only=True)["step"] == 2
    with pytest.raises(UserError, match="continue it with resume") as err:
        train(recipe, cut, progress=False)
    assert err.value.render({"resume": "--resume"}).endswith("continue it with --resume or choose a new out directory")
    # a process killed after logging steps it never checkpointed: those lines must be redone, not kept twice
    logged_later = [line for line in (tmp_path / "straight" / "metrics.jsonl").open() if '"joint", "step": 3,' in line]
    with open(cut / "metrics.jsonl", "a") as f:
        f.writelines(logged_later)
    with SummaryWriter(str(cut / "tensorboard")) as writer:  # and its TensorBoard curve points, with other values
        for step in (7, 8):
            writer.add_scalar("train/loss", 99.0, step)
    resumed = train(recipe, cut, resume=True, progress=False)
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = lambda run: [(r["stage"], r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").open())]  # noqa: E731
    assert losses(tmp_path / "straight") == losses(cut)
    # TensorBoard: one step axis over both stages, the same curve straight or cut and resumed
    assert tensorboard_curve(cut) == tensorboard_curve(tmp_path / "straight")
    assert [step for step, _ in tensorboard_curve(cut)] == list(range(1, 11))
    logged = [loss for *_, loss in losses(cut)]
    assert all(math.isclose(v, loss, rel_tol=1e-6) for (_, v), loss in zip(tensorboard_curve(cut), logged))  # float32


def tensorboard_curve(run, tag="train/loss"):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_tensorboard_logging_can_be_turned_off(tmp_path, tokenizer_dir):
    recipe = write_recipe(tmp_path / "r.toml", tokenizer_dir, gen_steps=1, joint_steps=1)
    recipe.write_text(recipe.read_text() + "[logging]\ntensorboard = false\n")
    train(recipe, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "metrics.jsonl").is_file() and not (tmp_path / "run" / "tensorboard").exists()
    recipe.write_text(recipe.read_text().replace("tensorboard = false", "tensorboard = 1"))
    with pytest.raises(UserError, match="'tensorboard' in \\[logging\\] of .* must be bool"):
        load_recipe(recipe)


def test_step_budget_at_a_stage_boundary_starts_nothing_new(tmp_path, tokenizer_dir):
    recipe = write_recipe(tmp_path / "r.toml", tokenizer_dir, gen_steps=4, joint_steps=3)
    with pytest.raises(UserError, match="max_steps must be at least 1"):
        train(recipe, tmp_path / "run", progress=False, max_steps=0)
    assert train(recipe, tmp_path / "run", progress=False, max_steps=4) is None
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["stage"] for r in records] == ["gen_pretrain"] * 4
    assert train(recipe, tmp_path / "run", resume=True, progress=False) is not None


def test_recipe_errors(tmp_path, tokenizer_dir):
    good = write_recipe(tmp_path / "r.toml", tokenizer_dir).read_text()
    cases = {
        "unknown key 'colour'": good.replace("[data]", "[data]\ncolour = 1"),
        "'steps' in stage 1": good.replace("steps = 4", 'steps = "four"'),
        "unknown key 'dropout'": good.replace("lr = 3e-3", "dropout = 0.1", 1),
        "unknown model size 'huge'": good.replace('size = "debug"', 'size = "huge"'),
        "no such recipe file": None,
        "invalid TOML": good + "\n[[[",
        "unknown key 'curve' in \\[report\\]": good + "\n[report]\ncurve = true\n",
        "\\[report\\] curve_prompts of .* must be at least 1": good + "\n[report]\ncurve_prompts = 0\n",
        "'learning_curve' in \\[report\\]": good + '\n[report]\nlearning_curve = "yes"\n',
    }
    for message, text in cases.items():
        path = tmp_path / "bad.toml"
        if text is None:
            path = tmp_path / "missing.toml"
        else:
            path.write_text(text)
        with pytest.raises(UserError, match=message.replace("(", r"\(")):
            load_recipe(path)


def test_cli_train_bad_config_is_one_line(tmp_path):
    (tmp_path / "bad.toml").write_text('[model]\nd_modle = 3\n[[stages]]\nname="a"\nsteps=1\n')
    result = subprocess.run([sys.executable, "-m", "unifork.cli", "train", "--config", str(tmp_path / "bad.toml"),
                             "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode != 0
    assert "unknown key 'd_modle'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow  # two training runs, one in a subprocess
def test_a_checkpoint_records_its_recipe_and_the_recipe_reproduces_it(tmp_path, tokenizer_dir, monkeypatch):
    recipe = write_recipe(tmp_path / "r.toml", tokenizer_dir, gen_steps=3, joint_steps=4)
    final = train(recipe, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "recipe.toml").read_text() == (final / "recipe.toml").read_text()
    assert json.loads((final / "provenance.json").read_text())["stage"] == "joint"
    stage_ckpt = latest_checkpoint(tmp_path / "run" / "stages" / "gen_pretrain")
    assert json.loads((stage_ckpt / "provenance.json").read_text())["stage"] == "gen_pretrain"
    resolved = load_recipe(final / "recipe.toml")  # every default spelled out, the one model that was trained
    assert resolved.stages == load_recipe(recipe).stages and resolved.model == load_model(final).cfg
    monkeypatch.chdir(tmp_path.parent)  # paths in it are absolute: it reproduces the run from anywhere
    again = subprocess.run([sys.executable, "-m", "unifork.cli", "train", "--config", str(final / "recipe.toml"),
                            "--out", str(tmp_path / "again")], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr
    a, b = load_file(str(final / "model.safetensors")), load_file(str(tmp_path / "again" / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_packaged_recipes_load_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here: the recipes ship inside the package
    assert load_recipe("quickstart").stages[-1].name == "joint"
    full = load_recipe("full")  # its learning curve covers the whole run: every stage keeps all its checkpoints
    assert full.report.learning_curve and all(math.ceil(s.steps / s.save_every) <= s.keep_last for s in full.stages)
    with pytest.raises(UserError, match="packaged recipe: .*quickstart"):
        load_recipe("no-such-recipe")

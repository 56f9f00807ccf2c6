"""Faults during long runs: signals, kills while saving, damaged files and non-finite steps.

The reference for "exact" is an uninterrupted run of the same recipe in a fresh process: an interrupted and
resumed run must end with the same weights, optimizer moments and loss curve, bit for bit.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from unifork.checkpoint import has_manifest, load_model
from unifork.errors import UserError
from unifork.model import UniFork
from unifork.train.checkpoints import (
    STATE_FILE,
    complete_checkpoints,
    latest_checkpoint,
    save_checkpoint,
    step_dir,
)
from unifork.train.recipe import load_recipe
from unifork.train.trainer import train

RECIPE = """
seed = 0
tokenizer_dir = "{tok}"
[model]
size = "debug"
[data]
pool_size = 64
[[stages]]
name = "gen_pretrain"
steps = 4
batch_size = 8
lr = 3e-3
warmup = 2
mix = {{ gen = 1.0 }}
train = ["trunk.*", "gen.*"]
[[stages]]
name = "joint"
steps = {joint_steps}
batch_size = 8
lr = 3e-3
warmup = 2
mix = {{ und = 0.5, gen = 0.5 }}
save_every = {save_every}
keep_last = {keep_last}
max_bad_steps = {max_bad_steps}
"""
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads in every process, so float sums agree bit for bit
JOINT_STEPS = 40  # long enough that a signal sent after a few steps lands mid-stage


def write_recipe(path: Path, tok, joint_steps=JOINT_STEPS, save_every=3, keep_last=2, max_bad_steps=5) -> Path:
    path.write_text(RECIPE.format(tok=tok, joint_steps=joint_steps, save_every=save_every, keep_last=keep_last,
                                  max_bad_steps=max_bad_steps))  # fmt: skip
    return path


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "unifork.cli", "train", *args]


def curve(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock throughput, the one field that may differ between equal runs."""
    return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"} for line in (run / "metrics.jsonl").open()]


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"training exited (status {process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def logged_steps(run: Path) -> int:
    path = run / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def assert_same_run(a: Path, b: Path) -> None:
    """Same final weights, same final Adam moments and step counts, same loss curve: all bit for bit."""
    wa, wb = load_file(str(a / "checkpoint" / "model.safetensors")), load_file(str(b / "checkpoint" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = (torch.load(latest_checkpoint(r / "stages" / "joint") / STATE_FILE, weights_only=True) for r in (a, b))
    moments_a, moments_b = sa["optimizer"]["state"], sb["optimizer"]["state"]
    assert moments_a.keys() == moments_b.keys() and moments_a
    for i in moments_a:
        assert all(torch.equal(moments_a[i][k], moments_b[i][k]) for k in ("step", "exp_avg", "exp_avg_sq")), i
    assert curve(a) == curve(b)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tokenizer_dir) -> Path:
    """The uninterrupted reference run, in its own process like the interrupted ones."""
    root = tmp_path_factory.mktemp("straight")
    recipe = write_recipe(root / "r.toml", tokenizer_dir)
    subprocess.run(cli("--config", str(recipe), "--out", str(root / "run")), env=ENV, check=True, capture_output=True, timeout=300)
    return root / "run"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_signal_checkpoints_exits_zero_and_resumes_exactly(tmp_path, tokenizer_dir, straight, sig):
    recipe = write_recipe(tmp_path / "r.toml", tokenizer_dir, save_every=1000)  # the signal's save is the only one
    run = tmp_path / "run"
    process = subprocess.Popen(cli("--config", str(recipe), "--out", str(run)), env=ENV, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    wait_for(lambda: logged_steps(run) >= 6, process, "two joint steps")  # 4 gen_pretrain steps + 2 joint steps
    process.send_signal(sig)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "Traceback" not in err
    assert len([line for line in out.splitlines() if f"stopped by {sig.name}" in line]) == 1
    assert [line for line in out.splitlines() if "--resume" in line] == [
        f"continue with: unifork train --config {recipe} --out {run} --resume"]
    joint = run / "stages" / "joint"
    assert not (joint / "DONE").is_file()
    done = logged_steps(run) - 4  # the step finished when the signal came is logged and checkpointed
    assert 2 <= done < JOINT_STEPS
    assert latest_checkpoint(joint) == step_dir(joint, done)
    subprocess.run(cli("--config", str(recipe), "--out", str(run), "--resume"), env=ENV, check=True, capture_output=True, timeout=300)
    assert_same_run(straight, run)


SLOW_SAVE = """
import sys, time
from pathlib import Path
import unifork.train.checkpoints as checkpoints

marker, target = Path(sys.argv[1]), sys.argv[2]
write_manifest = checkpoints.write_manifest

def slow_write_manifest(directory):
    if directory.name == target and directory.parent.name == "joint":  # every file but the manifest is written
        marker.touch()
        time.sleep(600)
    write_manifest(directory)

checkpoints.write_manifest = slow_write_manifest
from unifork.cli import main
sys.exit(main(["train", *sys.argv[3:]]))
"""


@pytest.mark.slow
def test_kill_while_saving_keeps_the_previous_checkpoint(tmp_path, tokenizer_dir, straight):
    recipe = write_recipe(tmp_path / "r.toml", tokenizer_dir)
    run, marker = tmp_path / "run", tmp_path / "saving"
    joint = run / "stages" / "joint"
    driver = tmp_path / "slow_save.py"
    driver.write_text(SLOW_SAVE)
    args = [sys.executable, str(driver), str(marker), step_dir(joint, 6).name, "--config", str(recipe), "--out", str(run)]
    process = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(marker.is_file, process, "the save of joint step 6")
    process.kill()  # SIGKILL: no handler runs, the save stops where it is
    process.wait(timeout=60)
    half_written = step_dir(joint, 6)
    assert (half_written / "model.safetensors").is_file() and not has_manifest(half_written)
    assert latest_checkpoint(joint) == step_dir(joint, 3)  # the save before it, untouched
    subprocess.run(cli("--config", str(recipe), "--out", str(run), "--resume"), env=ENV, check=True, capture_output=True, timeout=300)
    assert_same_run(straight, run)


def noisy_forward(monkeypatch) -> None:
    """Scale each step's loss by draws from torch's, numpy's and Python's global generators, as dropout or a
    shuffling data loader would consume them: resuming is exact only if all three streams are restored."""
    forward = UniFork.forward

    def noisy(self, batch):
        losses = forward(self, batch)
        scale = 1 + 0.1 * (torch.rand(()).item() + np.random.rand() + random.random())
        return {k: v * scale for k, v in losses.items()}

    monkeypatch.setattr(UniFork, "forward", noisy)


def scramble_random_streams() -> None:
    """What a fresh process starts from: no trace of the streams the interrupted process left behind."""
    torch.manual_seed(1234)
    np.random.seed(1234)
    random.seed(1234)


def test_resume_restores_random_streams_and_optimizer_state(tmp_path, tokenizer_dir, monkeypatch):
    noisy_forward(monkeypatch)
    recipe = write_recipe(tmp_path / "r.toml", tokenizer_dir, joint_steps=6, save_every=100)
    scramble_random_streams()
    train(recipe, tmp_path / "straight", progress=False)
    scramble_random_streams()
    assert train(recipe, tmp_path / "cut", progress=False, max_steps=7) is None  # 4 gen steps + 3 of 6 joint steps
    assert latest_checkpoint(tmp_path / "cut" / "stages" / "joint") == step_dir(tmp_path / "cut" / "stages" / "joint", 3)
    scramble_random_streams()
    train(recipe, tmp_path / "cut", resume=True, progress=False)
    assert_same_run(tmp_path / "straight", tmp_path / "cut")


def test_keep_last_and_incomplete_saves(tmp_path):
    stage = tmp_path / "stage"

    def write(directory: Path) -> None:
        directory.mkdir(parents=True)
        (directory / "weights.bin").write_bytes(b"w" * 10)

    step_dir(stage, 9).mkdir(parents=True)  # a save killed before its manifest: never a checkpoint
    assert latest_checkpoint(stage) is None
    for step in range(1, 6):
        save_checkpoint(stage, step, write, keep_last=2)
    assert [p.name for p in complete_checkpoints(stage)] == ["step-0000004", "step-0000005"]
    assert sorted(p.name for p in stage.iterdir()) == ["step-0000004", "step-0000005"]  # the half-written one too
    save_checkpoint(stage, 6, write, keep_last=1)
    assert [p.name for p in stage.iterdir()] == ["step-0000006"] and latest_checkpoint(stage) == step_dir(stage, 6)


@pytest.fixture
def cut_run(tmp_path, tokenizer_dir) -> tuple[Path, Path]:
    """A run stopped at joint step 3 (checkpointed there), and its recipe."""
    recipe = write_recipe(tmp_path / "r.toml", tokenizer_dir, joint_steps=6, save_every=100)
    assert train(recipe, tmp_path / "run", progress=False, max_steps=7) is None
    return recipe, tmp_path / "run"


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage,name,message", [
    (truncate, "model.safetensors", "truncated"),
    (flip_a_byte, "model.safetensors", "does not match the sha256"),
    (flip_a_byte, STATE_FILE, "does not match the sha256"),
    (lambda p: p.unlink(), STATE_FILE, "is missing"),
])  # fmt: skip
def test_damaged_checkpoint_is_a_one_line_error_naming_the_file(cut_run, damage, name, message):
    recipe, run = cut_run
    checkpoint = latest_checkpoint(run / "stages" / "joint")
    damage(checkpoint / name)
    with pytest.raises(UserError) as err:
        train(recipe, run, resume=True, progress=False)
    text = str(err.value)
    assert "\n" not in text and str(checkpoint / name) in text and message in text
    assert f"delete {checkpoint}" in text  # and how to fall back to the checkpoint before it
    if name == "model.safetensors":
        with pytest.raises(UserError, match=message):
            load_model(checkpoint)


def test_final_checkpoint_has_a_manifest_that_loading_checks(cut_run):
    recipe, run = cut_run
    final = train(recipe, run, resume=True, progress=False)
    assert has_manifest(final)
    flip_a_byte(final / "config.json")
    with pytest.raises(UserError, match="config.json does not match the sha256"):
        load_model(final)


class PoisonGradient(torch.autograd.Function):
    """Identity forward (a finite loss), infinite gradient backward: a gradient-only fault."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def poison_steps(monkeypatch, steps: set[int], where: str) -> None:
    """Make the loss (NaN) or only its gradient (inf) non-finite at the given training steps (1-based calls)."""
    forward, calls = UniFork.forward, [0]

    def poisoned(self, batch):
        losses = forward(self, batch)
        calls[0] += 1
        if calls[0] in steps:
            poison = (lambda v: v * float("nan")) if where == "loss" else PoisonGradient.apply
            losses = {k: poison(v) for k, v in losses.items()}
        return losses

    monkeypatch.setattr(UniFork, "forward", poisoned)


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_non_finite_step_is_skipped_and_counted(tmp_path, tokenizer_dir, monkeypatch, where):
    recipe = write_recipe(tmp_path / "r.toml", tokenizer_dir, joint_steps=4, save_every=1, keep_last=10)
    poison_steps(monkeypatch, {4 + 2}, where)  # joint step 2
    final = train(recipe, tmp_path / "run", progress=False)
    joint = tmp_path / "run" / "stages" / "joint"
    records = [r for r in curve(tmp_path / "run") if r["stage"] == "joint"]
    assert [r.get("skipped_nonfinite", False) for r in records] == [False, True, False, False]
    assert records[1]["bad_in_a_row"] == 1 and "loss" not in records[1]
    weights = {s: load_file(str(step_dir(joint, s) / "model.safetensors")) for s in (1, 2, 3)}
    assert all(torch.equal(weights[1][k], weights[2][k]) for k in weights[1])  # the skipped step changed nothing
    assert not torch.equal(weights[2]["gen.head.weight"], weights[3]["gen.head.weight"])  # the next one trains
    adam_steps = {s: torch.load(step_dir(joint, s) / STATE_FILE, weights_only=True)["optimizer"]["state"][0]["step"] for s in (1, 2, 3)}
    assert [float(adam_steps[s]) for s in (1, 2, 3)] == [1.0, 1.0, 2.0]
    assert all(torch.isfinite(p).all() for p in load_model(final).parameters())


def test_too_many_bad_steps_in_a_row_stop_the_run(tmp_path, tokenizer_dir, monkeypatch):
    recipe = write_recipe(tmp_path / "r.toml", tokenizer_dir, joint_steps=10, max_bad_steps=3)
    poison_steps(monkeypatch, {4 + 2, 4 + 4, 4 + 5, 4 + 6, 4 + 7}, "loss")  # joint steps 2, then 4-7
    with pytest.raises(UserError) as err:
        train(recipe, tmp_path / "run", progress=False)
    text = str(err.value)
    assert "\n" not in text and "not finite in 3 steps in a row (steps 4-6)" in text and "with resume" in text
    records = [r for r in curve(tmp_path / "run") if r["stage"] == "joint"]
    assert [r.get("bad_in_a_row", 0) for r in records] == [0, 1, 0, 1, 2, 3]  # a good step resets the count


@pytest.mark.parametrize("key", ["keep_last", "max_bad_steps"])
def test_fault_settings_must_be_positive(tmp_path, tokenizer_dir, key):
    recipe = write_recipe(tmp_path / "r.toml", tokenizer_dir, **{key: 0})
    with pytest.raises(UserError, match=f"{key} must be at least 1, got 0"):
        load_recipe(recipe)

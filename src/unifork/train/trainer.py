"""The trainer: runs a recipe's stages in order, each starting from the previous stage's weights.

OUT/tokenizer/          text + image tokenizer (trained here unless the recipe names one)
OUT/stages/<name>/      a full checkpoint per stage + train_state.pt (resume) + DONE when finished
OUT/checkpoint/         the final model, usable as --ckpt
OUT/metrics.jsonl       one line per logged step
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from unifork.atomic import atomic_torch_save, atomic_write_text
from unifork.errors import UserError
from unifork.inference.pipeline import save_pretrained
from unifork.model.checkpoint import load_model
from unifork.model.unifork import UniFork
from unifork.sequences import SequenceBuilder
from unifork.tokenizers.image import ImageTokenizer
from unifork.tokenizers.text import TextTokenizer
from unifork.tokenizers.train_image import train_image_tokenizer
from unifork.train.data import SamplePool
from unifork.train.optim import lr_at, make_optimizer
from unifork.train.recipe import Recipe, load_recipe

STATE_FILE = "train_state.pt"


def _prepare_tokenizers(recipe: Recipe, out: Path, progress: bool) -> tuple[TextTokenizer, ImageTokenizer]:
    tok_dir = Path(recipe.tokenizer_dir) if recipe.tokenizer_dir else out / "tokenizer"
    if not (tok_dir / "model.safetensors").is_file():
        if recipe.tokenizer_dir:
            raise UserError(f"tokenizer_dir {tok_dir} holds no image tokenizer; train one with `unifork tokenizer train`")
        print(f"training the text and image tokenizers into {tok_dir}")
        train_image_tokenizer(tok_dir, seed=recipe.seed, progress=progress)
    return TextTokenizer.load(tok_dir), ImageTokenizer.load(tok_dir)


def train(recipe_path: str | Path, out: str | Path, resume: bool = False, progress: bool = True,
          device: str | None = None, max_steps: int | None = None) -> Path | None:  # fmt: skip
    """Run every stage of the recipe; returns the final checkpoint directory.

    `max_steps` stops after that many optimizer steps in this call (a time-limited job), checkpointed so that
    `resume=True` continues exactly; the return value is then None.
    """
    if max_steps is not None and max_steps < 1:
        raise UserError(f"--max-steps must be at least 1, got {max_steps}")
    recipe = load_recipe(recipe_path)
    out = Path(out)
    stages_dir = out / "stages"
    if stages_dir.exists() and any(stages_dir.iterdir()) and not resume:
        raise UserError(f"{out} already holds a training run; pass --resume to continue it or choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    text, image = _prepare_tokenizers(recipe, out, progress)
    cfg = _model_config(recipe, text, image)
    builder = SequenceBuilder(text, cfg)
    pool = SamplePool(recipe.data, image, builder)
    torch.manual_seed(recipe.seed)  # right before init: the initial weights depend on the seed alone
    model = UniFork(cfg).to(device)
    budget = [max_steps if max_steps is not None else float("inf")]  # steps left in this call, shared by stages
    for index, stage in enumerate(recipe.stages):
        stage_dir = stages_dir / stage.name
        if (stage_dir / "DONE").is_file():
            model = load_model(stage_dir, device=device)
            continue
        model = _run_stage(model, pool, stage, index, stage_dir, out / "metrics.jsonl", text, image, progress, device, budget)
        if not (stage_dir / "DONE").is_file():
            print(f"stopped after {max_steps} steps in stage '{stage.name}'; continue with --resume and the same --out")
            return None
    final = out / "checkpoint"
    tmp = out / "checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_pretrained(tmp, model, text, image)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def _model_config(recipe: Recipe, text: TextTokenizer, image: ImageTokenizer):
    """The recipe's model, with the vocabulary and image sizes the tokenizers dictate."""
    return replace(
        recipe.model,
        text_vocab_size=text.vocab_size,
        image_vocab_size=image.cfg.num_codes,
        image_tokens=image.cfg.grid**2,
        image_latent_dim=image.cfg.latent_dim,
    )


def _run_stage(model, pool, stage, index, stage_dir, metrics_path, text, image, progress, device, budget):
    optimizer = make_optimizer(model, stage)
    start_step = 0
    if (stage_dir / STATE_FILE).is_file():  # resume a stage cut off mid-way
        model = load_model(stage_dir, device=device)
        optimizer = make_optimizer(model, stage)
        state = torch.load(stage_dir / STATE_FILE, weights_only=True, map_location=device)
        optimizer.load_state_dict(state["optimizer"])
        start_step = state["step"]
        _forget_metrics_after(metrics_path, stage.name, start_step)
    model.train()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    bar = tqdm(range(start_step, stage.steps), desc=stage.name, disable=not progress, mininterval=2.0)
    tokens_seen, t0 = 0, time.perf_counter()
    with open(metrics_path, "a", buffering=1) as metrics:  # line-buffered: `tail -f` shows every step
        for step in bar:
            if budget[0] <= 0:  # this call's step budget is spent: checkpoint mid-stage and hand back
                _save_stage(stage_dir, model, optimizer, step, text, image)
                return model
            budget[0] -= 1
            for group in optimizer.param_groups:
                group["lr"] = lr_at(stage, step)
            batch = pool.batch(stage, index, step).to(device)
            with autocast:
                losses = model(batch)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            grad_norm = torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], stage.grad_clip)
            optimizer.step()
            tokens_seen += int(batch.valid.sum())
            record = {"stage": stage.name, "step": step + 1, "lr": optimizer.param_groups[0]["lr"],
                      "grad_norm": round(float(grad_norm), 4),
                      "tokens_per_s": round(tokens_seen / (time.perf_counter() - t0), 1)}  # fmt: skip
            record.update({k: round(v.item(), 5) for k, v in losses.items()})
            metrics.write(json.dumps(record) + "\n")
            postfix = {k: f"{record[k]:.3f}" for k in ("und", "gen") if k in record}
            bar.set_postfix(postfix | {"tok/s": f"{record['tokens_per_s']:.0f}"}, refresh=False)
            if (step + 1) % stage.save_every == 0 and step + 1 < stage.steps:
                _save_stage(stage_dir, model, optimizer, step + 1, text, image)
    _save_stage(stage_dir, model, optimizer, stage.steps, text, image)
    (stage_dir / "DONE").write_text("finished\n")
    return model


def _forget_metrics_after(metrics_path: Path, stage_name: str, step: int) -> None:
    """Drop log lines of steps after the checkpoint we resume from: they are about to be redone."""
    if not metrics_path.is_file():
        return
    keep = [line for line in metrics_path.read_text().splitlines(keepends=True)
            if not ((r := json.loads(line))["stage"] == stage_name and r["step"] > step)]  # fmt: skip
    atomic_write_text(metrics_path, "".join(keep))


def _save_stage(stage_dir: Path, model, optimizer, step: int, text, image) -> None:
    save_pretrained(stage_dir, model, text, image)
    atomic_torch_save({"optimizer": optimizer.state_dict(), "step": step}, stage_dir / STATE_FILE)

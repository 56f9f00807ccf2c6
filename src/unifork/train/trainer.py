"""The trainer: runs a recipe's stages in order, each starting from the previous stage's weights.

OUT/tokenizer/          text + image tokenizer (trained here unless the recipe names one)
OUT/stages/<name>/      a full checkpoint per stage + train_state.pt (resume) + DONE when finished
OUT/checkpoint/         the final model, usable as --ckpt
OUT/metrics.jsonl       one line per logged step

Under torchrun this is one rank of a data-parallel run (docs/scale.md): each rank trains on its slice of the same
global batch, and rank 0 writes the same files as a single process, so any world size resumes any other's run.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor
from tqdm import tqdm

from unifork.atomic import atomic_torch_save, atomic_write_text
from unifork.errors import UserError
from unifork.inference.pipeline import save_pretrained
from unifork.model.checkpoint import load_model
from unifork.model.unifork import TASKS, UniFork
from unifork.sequences import SequenceBuilder
from unifork.tokenizers.image import ImageTokenizer
from unifork.tokenizers.text import TextTokenizer
from unifork.tokenizers.train_image import train_image_tokenizer
from unifork.train.data import SamplePool, check_split
from unifork.train.distributed import Ranks, start, stop
from unifork.train.global_loss import supervised_tokens, task_weights, weighted_loss
from unifork.train.optim import lr_at, make_optimizer, set_trainable
from unifork.train.parallelize import (
    STRATEGIES,
    compile_blocks,
    full_model_state,
    full_optimizer_state,
    load_optimizer_state,
    wrap,
)
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


def train(recipe_path: str | Path | Recipe, out: str | Path, resume: bool = False, progress: bool = True,
          device: str | None = None, max_steps: int | None = None, strategy: str = "fsdp",
          compile: bool = False) -> Path | None:  # fmt: skip
    """Run every stage of the recipe (a TOML path or a Recipe); returns the final checkpoint directory.

    `max_steps` stops after that many optimizer steps in this call (a time-limited job), checkpointed so that
    `resume=True` continues exactly; the return value is then None. Launched by torchrun (WORLD_SIZE > 1), this
    process is one rank of a data-parallel run wrapped by `strategy` ("fsdp" or "ddp"); `compile` applies
    torch.compile to each block.
    """
    if max_steps is not None and max_steps < 1:
        raise UserError(f"--max-steps must be at least 1, got {max_steps}")
    if strategy not in STRATEGIES:
        raise UserError(f"unknown --strategy '{strategy}'; choose one of: {', '.join(STRATEGIES)}")
    recipe = recipe_path if isinstance(recipe_path, Recipe) else load_recipe(recipe_path)
    ranks = start(device)
    try:
        return _train(recipe, Path(out), resume, progress and ranks.is_main, max_steps, ranks, strategy, compile)
    finally:
        stop(ranks)


def _train(recipe: Recipe, out: Path, resume, progress, max_steps, ranks: Ranks, strategy, compile) -> Path | None:
    stages_dir = out / "stages"
    if stages_dir.exists() and any(stages_dir.iterdir()) and not resume:
        raise UserError(f"{out} already holds a training run; pass --resume to continue it or choose a new --out")
    check_split(recipe.stages, ranks.world)
    with ranks.main_first():  # rank 0 trains the tokenizers if needed, the others then read them
        out.mkdir(parents=True, exist_ok=True)
        text, image = _prepare_tokenizers(recipe, out, progress)
    cfg = _model_config(recipe, text, image)
    builder = SequenceBuilder(text, cfg)
    pool = SamplePool(recipe.data, image, builder)
    torch.manual_seed(recipe.seed)  # right before init: the initial weights depend on the seed alone
    model = UniFork(cfg).to(ranks.device)
    budget = [max_steps if max_steps is not None else float("inf")]  # steps left in this call, shared by stages
    settings = dict(progress=progress, ranks=ranks, budget=budget, strategy=strategy, compile=compile)
    for index, stage in enumerate(recipe.stages):
        stage_dir = stages_dir / stage.name
        if (stage_dir / "DONE").is_file():
            model = load_model(stage_dir, device=ranks.device)
            continue
        model = _run_stage(model, pool, stage, index, stage_dir, out / "metrics.jsonl", text, image, **settings)
        if not (stage_dir / "DONE").is_file():
            if ranks.is_main:
                print(f"stopped after {max_steps} steps in stage '{stage.name}'; continue with --resume and the same --out")
            return None
    final = out / "checkpoint"
    if ranks.is_main:
        tmp = out / "checkpoint.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_pretrained(tmp, model, text, image)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    ranks.barrier()
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


def _run_stage(model, pool, stage, index, stage_dir, metrics_path, text, image, *, progress, ranks: Ranks, budget,
               strategy, compile):  # fmt: skip
    """Train one stage from `model` (plain, unwrapped); returns the plain model at the stage's end."""
    start_step, saved = 0, None
    if (stage_dir / STATE_FILE).is_file():  # resume a stage cut off mid-way, whatever world size wrote it
        model = load_model(stage_dir, device=ranks.device)
        saved = torch.load(stage_dir / STATE_FILE, weights_only=True, map_location=ranks.device)
        start_step = saved["step"]
        if ranks.is_main:
            _forget_metrics_after(metrics_path, stage.name, start_step)
    set_trainable(model, stage.train)  # before wrapping: FSDP and DDP read requires_grad when they wrap
    if compile:
        compile_blocks(model)
    step_model = wrap(model, ranks, strategy)
    optimizer = make_optimizer(model, stage)
    if saved is not None:
        load_optimizer_state(optimizer, saved["optimizer"])
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    model.train()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if ranks.device.type == "cuda" else nullcontext()
    bar = tqdm(range(start_step, stage.steps), desc=stage.name, disable=not progress, mininterval=2.0)
    tokens_seen, t0 = 0, time.perf_counter()
    # line-buffered: `tail -f` shows every step; only rank 0 logs
    with open(metrics_path if ranks.is_main else os.devnull, "a", buffering=1) as metrics:
        for step in bar:
            if budget[0] <= 0:  # this call's step budget is spent: checkpoint mid-stage and hand back
                _save_stage(stage_dir, step, model, step_model, optimizer, text, image, ranks)
                return _unwrapped(model, stage_dir, ranks)
            budget[0] -= 1
            for group in optimizer.param_groups:
                group["lr"] = lr_at(stage, step)
            part = pool.rank_batch(stage, index, step, ranks.rank, ranks.world)
            batch = part.batch.to(ranks.device)
            local = supervised_tokens(batch, part.real_rows)
            total = ranks.all_sum(local)  # the global batch's token counts, to weight this rank's means
            weights = task_weights(local, total, ranks.world)
            with autocast:
                losses = step_model(batch)
            optimizer.zero_grad(set_to_none=True)
            weighted_loss(losses, weights).backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, stage.grad_clip)  # of the global gradient
            optimizer.step()
            present = [t for t in TASKS if t in losses]
            means = ranks.all_sum(torch.stack([weights[t] / ranks.world * losses[t].detach().float() for t in present]))
            tokens_seen += int(total[-1])
            record = {"stage": stage.name, "step": step + 1, "lr": optimizer.param_groups[0]["lr"],
                      "grad_norm": round(_value(grad_norm), 4),
                      "tokens_per_s": round(tokens_seen / (time.perf_counter() - t0), 1)}  # fmt: skip
            record.update({t: round(m.item(), 5) for t, m in zip(present, means)})
            record["loss"] = round(means.sum().item(), 5)
            metrics.write(json.dumps(record) + "\n")
            postfix = {k: f"{record[k]:.3f}" for k in ("und", "gen") if k in record}
            bar.set_postfix(postfix | {"tok/s": f"{record['tokens_per_s']:.0f}"}, refresh=False)
            if (step + 1) % stage.save_every == 0 and step + 1 < stage.steps:
                _save_stage(stage_dir, step + 1, model, step_model, optimizer, text, image, ranks)
    _save_stage(stage_dir, stage.steps, model, step_model, optimizer, text, image, ranks)
    if ranks.is_main:
        (stage_dir / "DONE").write_text("finished\n")
    return _unwrapped(model, stage_dir, ranks)


def _value(norm: torch.Tensor) -> float:
    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)


def _unwrapped(model: UniFork, stage_dir: Path, ranks: Ranks) -> UniFork:
    """A plain model with the stage's weights: wrapping changed `model` in place, so ranks read them back."""
    if not ranks.distributed:
        return model
    ranks.barrier()  # rank 0 has written them
    return load_model(stage_dir, device=ranks.device)


def _forget_metrics_after(metrics_path: Path, stage_name: str, step: int) -> None:
    """Drop log lines of steps after the checkpoint we resume from: they are about to be redone."""
    if not metrics_path.is_file():
        return
    keep = [line for line in metrics_path.read_text().splitlines(keepends=True)
            if not ((r := json.loads(line))["stage"] == stage_name and r["step"] > step)]  # fmt: skip
    atomic_write_text(metrics_path, "".join(keep))


def _save_stage(stage_dir: Path, step: int, model: UniFork, step_model, optimizer, text, image, ranks: Ranks) -> None:
    if not ranks.distributed:
        save_pretrained(stage_dir, model, text, image)
        atomic_torch_save({"optimizer": optimizer.state_dict(), "step": step}, stage_dir / STATE_FILE)
        return
    # the single-process format, from the gathered full state; gathering is a collective: every rank takes part
    weights = full_model_state(step_model)
    optimizer_state = full_optimizer_state(optimizer)
    if ranks.is_main:
        save_pretrained(stage_dir, _holding(model.cfg, weights), text, image)
        atomic_torch_save({"optimizer": optimizer_state, "step": step}, stage_dir / STATE_FILE)
    ranks.barrier()


def _holding(cfg, weights: dict[str, torch.Tensor]) -> UniFork:
    """A plain UniFork whose parameters are `weights`: built on the meta device, then assigned (no copy)."""
    with torch.device("meta"):
        plain = UniFork(cfg)
    plain.load_state_dict(weights, strict=True, assign=True)
    return plain

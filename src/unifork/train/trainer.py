"""The trainer: runs a recipe's stages in order, each starting from the previous stage's weights.

OUT/tokenizer/          text + image tokenizer (trained here unless the recipe names one or an init_checkpoint)
OUT/stages/<name>/      step-NNNNNNN/ checkpoints (weights + train_state.pt + manifest) and DONE when finished;
                        see train/checkpoints.py for why a kill while saving loses nothing
OUT/checkpoint/         the final model, usable as --ckpt
OUT/metrics.jsonl       one line per logged step

Under torchrun this is one rank of a data-parallel run (docs/scale.md): each rank trains on its slice of the same
global batch, and rank 0 writes the same files as a single process, so any world size resumes any other's run.

Faults a long run survives: SIGTERM/SIGINT finish the current step, checkpoint and return (graceful_stop.py); a
step whose loss or gradient is not finite changes nothing and is logged as skipped, and `max_bad_steps` of them in
a row stop the run. Resuming restores weights, optimizer moments, random streams and the step, so an interrupted
run continues bit for bit as if it had not been.
"""

from __future__ import annotations

import json
import math
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
from unifork.inference.pipeline import (
    IMAGE_TOKENIZER_DIR,
    check_compatible,
    save_pretrained,
)
from unifork.manifest import write_manifest
from unifork.model.checkpoint import load_model
from unifork.model.config import ModelConfig
from unifork.model.unifork import TASKS, UniFork
from unifork.sequences import SequenceBuilder
from unifork.tokenizers.image import ImageTokenizer
from unifork.tokenizers.text import TextTokenizer
from unifork.tokenizers.train_image import train_image_tokenizer
from unifork.train.checkpoints import (
    DONE_FILE,
    STATE_FILE,
    latest_checkpoint,
    load_train_state,
    save_checkpoint,
)
from unifork.train.data import check_split, make_pool
from unifork.train.distributed import Ranks, start, stop
from unifork.train.global_loss import supervised_tokens, task_weights, weighted_loss
from unifork.train.graceful_stop import GracefulStop
from unifork.train.optim import (
    check_optimizer_strategy,
    lr_at,
    make_optimizer,
    set_trainable,
)
from unifork.train.parallelize import (
    STRATEGIES,
    compile_blocks,
    full_model_state,
    full_optimizer_state,
    load_optimizer_state,
    wrap,
)
from unifork.train.recipe import Recipe, check_model_agrees, load_recipe
from unifork.train.rng import capture_rng, restore_rng


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

    Returns None when stopped early, checkpointed so that `resume=True` continues exactly: after `max_steps`
    optimizer steps in this call (a time-limited job), or at the first step boundary after SIGTERM or SIGINT.
    Launched by torchrun (WORLD_SIZE > 1), this process is one rank of a data-parallel run wrapped by `strategy`
    ("fsdp" or "ddp"); `compile` applies torch.compile to each block.
    """
    if max_steps is not None and max_steps < 1:
        raise UserError(f"--max-steps must be at least 1, got {max_steps}")
    if strategy not in STRATEGIES:
        raise UserError(f"unknown --strategy '{strategy}'; choose one of: {', '.join(STRATEGIES)}")
    recipe = recipe_path if isinstance(recipe_path, Recipe) else load_recipe(recipe_path)
    resume_hint = (f"call train() again with resume=True and out={out}" if isinstance(recipe_path, Recipe)
                   else f"unifork train --config {recipe_path} --out {out} --resume")  # fmt: skip
    ranks = start(device)
    try:
        return _train(recipe, Path(out), resume, progress and ranks.is_main, max_steps, ranks, strategy, compile, resume_hint)
    finally:
        stop(ranks)


def _train(recipe: Recipe, out: Path, resume, progress, max_steps, ranks: Ranks, strategy, compile,
           resume_hint: str) -> Path | None:  # fmt: skip
    stages_dir = out / "stages"
    if stages_dir.exists() and any(stages_dir.iterdir()) and not resume:
        raise UserError(f"{out} already holds a training run; pass --resume to continue it or choose a new --out")
    check_split(recipe.stages, ranks.world)
    check_optimizer_strategy(recipe.stages, ranks.distributed, strategy)
    with ranks.main_first():  # rank 0 trains the tokenizers if needed, the others then read them
        out.mkdir(parents=True, exist_ok=True)
        text, image, cfg = _tokenizers_and_config(recipe, out, progress)
    builder = SequenceBuilder(text, cfg)
    pool = make_pool(recipe.data, image, builder, announce=ranks.is_main)
    torch.manual_seed(recipe.seed)  # right before init: the initial weights depend on the seed alone
    if recipe.init_checkpoint:
        model = load_model(recipe.init_checkpoint, device=ranks.device)
    else:
        model = UniFork(cfg).to(ranks.device)
    budget = [max_steps if max_steps is not None else float("inf")]  # steps left in this call, shared by stages
    # Installed only now: a signal while the tokenizers train or the data loads should end the process at once.
    with GracefulStop() as signals:
        settings = {"progress": progress, "ranks": ranks, "budget": budget, "strategy": strategy, "compile": compile,
                    "signals": signals}  # fmt: skip
        for index, stage in enumerate(recipe.stages):
            stage_dir = stages_dir / stage.name
            if (stage_dir / DONE_FILE).is_file():
                model = _finished_stage(stage_dir, ranks, pool)
                continue
            model = _run_stage(model, pool, stage, index, stage_dir, out / "metrics.jsonl", text, image, **settings)
            if not (stage_dir / DONE_FILE).is_file():
                if ranks.is_main:
                    # a signal may have reached another rank only (all stop together)
                    why = (f"stopped after {max_steps} steps (--max-steps)" if budget[0] <= 0
                           else f"stopped by {signals.requested or 'a signal to another rank'}")  # fmt: skip
                    print(f"{why} in stage '{stage.name}', checkpoint {latest_checkpoint(stage_dir)}; "
                          f"continue with: {resume_hint}", flush=True)  # fmt: skip
                return None
    final = out / "checkpoint"
    if ranks.is_main:
        tmp = out / "checkpoint.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_pretrained(tmp, model, text, image)
        write_manifest(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    ranks.barrier()
    return final


def _tokenizers_and_config(recipe: Recipe, out: Path, progress: bool) -> tuple[TextTokenizer, ImageTokenizer, ModelConfig]:
    """A fresh model's tokenizers (trained if needed) and config, or those an init_checkpoint brings."""
    if not recipe.init_checkpoint:
        text, image = _prepare_tokenizers(recipe, out, progress)
        return text, image, _model_config(recipe, text, image)
    directory = Path(recipe.init_checkpoint)
    if not directory.is_dir():
        raise UserError(f"init_checkpoint {directory} is not a directory; give a unifork checkpoint, e.g. the --out of `unifork fork-hf`")
    cfg = ModelConfig.load(directory)
    check_model_agrees(recipe, cfg, str(directory))
    text, image = TextTokenizer.load(directory), ImageTokenizer.load(directory / IMAGE_TOKENIZER_DIR)
    with torch.device("meta"):  # shapes only: the weights are loaded after the data, where a fresh model is built
        check_compatible(UniFork(cfg), text, image)
    return text, image, cfg


def _model_config(recipe: Recipe, text: TextTokenizer, image: ImageTokenizer):
    """The recipe's model, with the vocabulary and image sizes the tokenizers dictate."""
    return replace(
        recipe.model,
        text_vocab_size=text.vocab_size,
        image_vocab_size=image.cfg.num_codes,
        image_tokens=image.cfg.grid**2,
        image_latent_dim=image.cfg.latent_dim,
    )


def _finished_stage(stage_dir: Path, ranks: Ranks, pool) -> UniFork:
    """The model a finished stage ended with, and the random streams and data position it ended with, for the
    stages after it."""
    checkpoint = latest_checkpoint(stage_dir)
    if checkpoint is None:
        raise UserError(f"{stage_dir} is marked finished but holds no complete checkpoint; delete {stage_dir} to train that stage again")
    saved = load_train_state(checkpoint, ranks.device)
    pool.load_state_dict(saved.get("data", {}))  # a world pool has no position; a stream reads on from here
    _restore_rng(saved, ranks)
    return load_model(checkpoint, device=ranks.device)


def _restore_rng(saved: dict, ranks: Ranks) -> None:
    if "rng" in saved:  # runs from before random streams were saved have none to restore
        restore_rng(saved["rng"], ranks.device)


def _run_stage(model, pool, stage, index, stage_dir, metrics_path, text, image, *, progress, ranks: Ranks, budget,
               strategy, compile, signals: GracefulStop):  # fmt: skip
    """Train one stage from `model` (plain, unwrapped); returns the plain model at the stage's end."""
    start_step, saved = 0, None
    checkpoint = latest_checkpoint(stage_dir)
    if checkpoint is not None:  # resume a stage cut off mid-way, whatever world size wrote it
        try:
            saved = load_train_state(checkpoint, ranks.device)
            model = load_model(checkpoint, device=ranks.device)
        except UserError as err:
            raise UserError(f"{err}; to resume from the checkpoint before it, delete {checkpoint}") from None
        start_step = saved["step"]
    if ranks.is_main:  # lines of steps after the checkpoint (or of a stage never checkpointed) are about to be redone
        _forget_metrics_after(metrics_path, stage.name, start_step)
    set_trainable(model, stage.train)  # before wrapping: FSDP and DDP read requires_grad when they wrap
    if compile:
        compile_blocks(model)
    step_model = wrap(model, ranks, strategy)
    optimizer = make_optimizer(model, stage)
    bad_in_a_row = 0  # consecutive skipped steps
    if saved is not None:
        try:
            load_optimizer_state(optimizer, saved["optimizer"])
        except (ValueError, KeyError) as err:
            raise UserError(f"the optimizer state in {checkpoint} does not fit stage '{stage.name}' (was its optimizer or "
                            f"its train list changed?): {err}; restore the recipe or delete {checkpoint}") from None
        pool.load_state_dict(saved.get("data", {}))  # a stream's position: the batches after this step's
        _restore_rng(saved, ranks)  # last: nothing between here and the first step draws from them
        bad_in_a_row = saved.get("bad_in_a_row", 0)
    saved_step = start_step if saved is not None else None  # the step whose checkpoint is on disk already

    def save(step: int) -> None:
        _save_stage(stage_dir, step, model, step_model, optimizer, text, image, ranks, stage.keep_last, bad_in_a_row,
                    pool.state_dict())

    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    model.train()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if ranks.device.type == "cuda" else nullcontext()
    bar = tqdm(range(start_step, stage.steps), desc=stage.name, disable=not progress, mininterval=2.0)
    tokens_seen, t0 = 0, time.perf_counter()
    # line-buffered: `tail -f` shows every step; only rank 0 logs
    with open(metrics_path if ranks.is_main else os.devnull, "a", buffering=1) as metrics:
        for step in bar:
            if _should_stop(budget, signals, ranks):  # checkpoint mid-stage and hand back
                if step != saved_step:
                    save(step)
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
            present = [t for t in TASKS if t in losses]
            means = ranks.all_sum(torch.stack([weights[t] / ranks.world * losses[t].detach().float() for t in present]))
            tokens_seen += int(total[-1])
            record = {"stage": stage.name, "step": step + 1, "lr": optimizer.param_groups[0]["lr"]}
            # Every rank sees the same global norm and losses, so all skip together.
            if math.isfinite(_value(grad_norm)) and bool(torch.isfinite(means).all()):
                optimizer.step()
                bad_in_a_row = 0
                record.update({"grad_norm": round(_value(grad_norm), 4),
                               "tokens_per_s": round(tokens_seen / (time.perf_counter() - t0), 1)})  # fmt: skip
                record.update({t: round(m.item(), 5) for t, m in zip(present, means)})
                record["loss"] = round(means.sum().item(), 5)
                postfix = {k: f"{record[k]:.3f}" for k in ("und", "gen") if k in record}
                bar.set_postfix(postfix | {"tok/s": f"{record['tokens_per_s']:.0f}"}, refresh=False)
            else:  # an update from a NaN/inf gradient would poison every weight it touches: leave them as they are
                bad_in_a_row += 1
                record.update({"skipped_nonfinite": True, "bad_in_a_row": bad_in_a_row})
            record.update(pool.metrics())  # data on disk: images skipped as corrupt so far
            metrics.write(json.dumps(record) + "\n")
            if bad_in_a_row >= stage.max_bad_steps:
                raise UserError(f"stage '{stage.name}': the loss or gradient was not finite in {bad_in_a_row} steps in a row "
                                f"(steps {step + 2 - bad_in_a_row}-{step + 1}), none of which changed the model; lower lr "
                                f"or raise warmup, check the data, then continue from {latest_checkpoint(stage_dir)} with --resume")  # fmt: skip
            if (step + 1) % stage.save_every == 0 and step + 1 < stage.steps:
                save(step + 1)
                saved_step = step + 1
    save(stage.steps)
    if ranks.is_main:
        atomic_write_text(stage_dir / DONE_FILE, "finished\n")
    return _unwrapped(model, stage_dir, ranks)


def _should_stop(budget: list, signals: GracefulStop, ranks: Ranks) -> bool:
    """This call's step budget is spent, or some rank got SIGTERM/SIGINT: then every rank stops at this step."""
    if budget[0] <= 0:  # the same on every rank
        return True
    if not ranks.distributed:
        return signals.requested is not None
    # torchrun signals each rank separately; one that has not seen it yet must still stop with the others
    return ranks.all_sum(torch.tensor([float(signals.requested is not None)])).item() > 0


def _value(norm: torch.Tensor) -> float:
    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)


def _unwrapped(model: UniFork, stage_dir: Path, ranks: Ranks) -> UniFork:
    """A plain model with the stage's weights: wrapping changed `model` in place, so ranks read them back."""
    if not ranks.distributed:
        return model
    ranks.barrier()  # rank 0 has written them
    return load_model(latest_checkpoint(stage_dir), device=ranks.device)


def _forget_metrics_after(metrics_path: Path, stage_name: str, step: int) -> None:
    """Drop log lines of steps after the checkpoint we resume from: they are about to be redone."""
    if not metrics_path.is_file():
        return
    keep = [line for line in metrics_path.read_text().splitlines(keepends=True)
            if not ((r := json.loads(line))["stage"] == stage_name and r["step"] > step)]  # fmt: skip
    atomic_write_text(metrics_path, "".join(keep))


def _save_stage(stage_dir: Path, step: int, model: UniFork, step_model, optimizer, text, image, ranks: Ranks,
                keep_last: int, bad_in_a_row: int, data_state: dict) -> None:  # fmt: skip
    """Checkpoint `step` into a new step directory, in the single-process format whatever the world size."""
    if ranks.distributed:  # gathering the full state is a collective: every rank takes part
        weights, optimizer_state = full_model_state(step_model), full_optimizer_state(optimizer)
    else:
        weights, optimizer_state = None, optimizer.state_dict()
    if ranks.is_main:
        plain = model if weights is None else _holding(model.cfg, weights)
        state = {"optimizer": optimizer_state, "step": step, "rng": capture_rng(ranks.device), "bad_in_a_row": bad_in_a_row,
                 "data": data_state}  # fmt: skip

        def write(directory: Path) -> None:
            save_pretrained(directory, plain, text, image)
            atomic_torch_save(state, directory / STATE_FILE)

        save_checkpoint(stage_dir, step, write, keep_last)
    ranks.barrier()


def _holding(cfg, weights: dict[str, torch.Tensor]) -> UniFork:
    """A plain UniFork whose parameters are `weights`: built on the meta device, then assigned (no copy)."""
    with torch.device("meta"):
        plain = UniFork(cfg)
    plain.load_state_dict(weights, strict=True, assign=True)
    return plain

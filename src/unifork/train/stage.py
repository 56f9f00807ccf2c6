"""One stage of a recipe: resume it, take its steps, log them, checkpoint it.

A stage starts from the model the previous stage ended with, or from its own newest checkpoint when a cut run
resumes. Faults it survives: SIGTERM/SIGINT finish the current step, checkpoint and hand back (graceful_stop.py);
a step whose loss or gradient is not finite changes nothing and is logged as skipped, and `max_bad_steps` of
them in a row stop the run. Resuming restores weights, optimizer moments, random streams, the data position and
the step, so an interrupted stage continues bit for bit as if it had not been.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import closing, nullcontext
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TextIO

import torch
from torch.distributed.tensor import DTensor

from unifork.atomic import atomic_torch_save, atomic_write_text
from unifork.checkpoint import load_model, save_pretrained
from unifork.data.pool import Pool
from unifork.errors import UserError, param
from unifork.model.unifork import TASKS, UniFork
from unifork.tokenizers.codec import ImageCodec
from unifork.tokenizers.text import TextTokenizer
from unifork.train.checkpoints import DONE_FILE, STATE_FILE, latest_checkpoint, load_train_state, save_checkpoint
from unifork.train.curves import Curves
from unifork.train.distributed import Ranks
from unifork.train.global_loss import supervised_tokens, task_weights, weighted_loss
from unifork.train.graceful_stop import GracefulStop
from unifork.train.optim import lr_at, make_optimizer, set_trainable
from unifork.train.parallelize import compile_blocks, full_model_state, full_optimizer_state, load_optimizer_state, wrap
from unifork.train.recipe import StageConfig
from unifork.train.rng import capture_rng, restore_rng
from unifork.train.schedule import progress_bar


@dataclass
class Run:
    """What every stage of one training run shares."""

    out: Path
    recipe_toml: str  # the resolved recipe, written into every checkpoint
    text: TextTokenizer
    image: ImageCodec
    pool: Pool
    ranks: Ranks
    signals: GracefulStop
    steps_left: float  # optimizer steps this call may still take (max_steps), shared by the stages
    strategy: str = "fsdp"
    compile: bool = False
    progress: bool = True
    tensorboard: bool = True  # the recipe's [logging]: curves in OUT/tensorboard/ beside metrics.jsonl

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    def stage_dir(self, stage: StageConfig) -> Path:
        return self.out / "stages" / stage.name

    def provenance(self, stage: StageConfig, index: int, step: int) -> dict:
        """Where a checkpoint's weights come from, beside the recipe.toml that made them."""
        return {"stage": stage.name, "stage_index": index, "step": step, "stage_steps": stage.steps,
                "image_tokenizer_sha256": self.image_tokenizer_sha256}  # fmt: skip

    @cached_property
    def image_tokenizer_sha256(self) -> str:
        return self.image.fingerprint()


@dataclass
class TrainState:
    """Where a stage stands: what train_state.pt holds beside the optimizer and the random streams."""

    step: int = 0  # optimizer steps taken in this stage
    bad_in_a_row: int = 0  # consecutive skipped (non-finite) steps
    saved_step: int | None = None  # the step whose checkpoint is on disk already
    tokens_seen: int = 0  # in this call, for tokens/s
    started: float = 0.0  # when this call's first step began


def finished_stage(run: Run, stage: StageConfig) -> UniFork:
    """The model a finished stage ended with; the random streams and data position it ended with are restored
    for the stages after it."""
    stage_dir = run.stage_dir(stage)
    checkpoint = latest_checkpoint(stage_dir)
    if checkpoint is None:
        raise UserError(f"{stage_dir} is marked finished but holds no complete checkpoint; delete {stage_dir} to train that stage again")
    saved = load_train_state(checkpoint, run.ranks.device)
    run.pool.load_state_dict(saved.get("data", {}))  # a world pool has no position; a stream reads on from here
    _restore_rng(saved, run.ranks)
    return load_model(checkpoint, device=run.ranks.device)


class StageRun:
    """Train `stage` (the `index`-th of the recipe) from `model` (plain, unwrapped)."""

    def __init__(self, run: Run, stage: StageConfig, index: int, model: UniFork, run_step: int = 0):
        """run_step: where this stage starts on the run's step axis (the steps of the stages before it)."""
        self.run, self.stage, self.index, self.run_step = run, stage, index, run_step
        self.dir = run.stage_dir(stage)
        self.state = TrainState()
        checkpoint = latest_checkpoint(self.dir)
        saved = None
        if checkpoint is not None:  # resume a stage cut off mid-way, whatever world size wrote it
            saved, model = self._load(checkpoint)
        if run.ranks.is_main:  # lines of steps after the checkpoint (or of a stage never checkpointed) are redone
            _forget_metrics_after(run.metrics_path, stage.name, self.state.step)
        set_trainable(model, stage.train)  # before wrapping: FSDP and DDP read requires_grad when they wrap
        if run.compile:
            compile_blocks(model)
        self.model, self.step_model = model, wrap(model, run.ranks, run.strategy)
        self.optimizer = make_optimizer(model, stage)
        self.trainable = [p for g in self.optimizer.param_groups for p in g["params"]]
        if saved is not None:
            self._restore(saved, checkpoint)

    def _load(self, checkpoint: Path) -> tuple[dict, UniFork]:
        """A cut stage's train_state.pt and weights; a damaged file says how to fall back to the checkpoint before."""
        try:
            saved = load_train_state(checkpoint, self.run.ranks.device)
            model = load_model(checkpoint, device=self.run.ranks.device)
        except UserError as err:
            raise UserError(f"{err}; to resume from the checkpoint before it, delete {checkpoint}") from None
        self.state.step = self.state.saved_step = saved["step"]
        self.state.bad_in_a_row = saved.get("bad_in_a_row", 0)
        return saved, model

    def _restore(self, saved: dict, checkpoint: Path) -> None:
        try:
            load_optimizer_state(self.optimizer, saved["optimizer"])
        except (ValueError, KeyError) as err:
            raise UserError(f"the optimizer state in {checkpoint} does not fit stage '{self.stage.name}' (was its optimizer "
                            f"or its train list changed?): {err}; restore the recipe or delete {checkpoint}") from None  # fmt: skip
        self.run.pool.load_state_dict(saved.get("data", {}))  # a stream's position: the batches after this step's
        _restore_rng(saved, self.run.ranks)  # last: nothing between here and the first step draws from them

    def train(self) -> UniFork:
        """Every remaining step, then the stage's last checkpoint and DONE; or, when asked to stop, a checkpoint
        of where it stands. Returns the plain model either way (DONE tells which)."""
        bar = progress_bar(self.state.step, self.stage.steps, self.stage.name, self.run.progress)
        self.state.started = time.perf_counter()  # tokens/s of the steps, not of loading and wrapping
        curves = Curves(self.run.out / "tensorboard", self.run_step, self.state.step) if self._curves() else None
        # line-buffered: `tail -f` shows every step; only rank 0 logs
        with open(self.run.metrics_path if self.run.ranks.is_main else os.devnull, "a", buffering=1) as log, \
                closing(curves) if curves else nullcontext():  # fmt: skip
            for step in bar:
                if self._should_stop():  # checkpoint mid-stage and hand back
                    if step != self.state.saved_step:
                        self.save(step)
                    return self._unwrapped()
                record = self.train_step(step)
                self.log(record, log, bar)
                if curves:
                    curves.add(record)
                self._check_skipped(step + 1)
                if (step + 1) % self.stage.save_every == 0 and step + 1 < self.stage.steps:
                    self.save(step + 1)
        self.save(self.stage.steps)
        if self.run.ranks.is_main:
            atomic_write_text(self.dir / DONE_FILE, "finished\n")
        return self._unwrapped()

    def train_step(self, step: int) -> dict:
        """One optimizer step on the global batch of `step`, skipped when its loss or gradient is not finite;
        returns its metrics record."""
        run, ranks, stage = self.run, self.run.ranks, self.stage
        run.steps_left -= 1
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(stage, step)
        part = run.pool.rank_batch(stage, self.index, step, ranks.rank, ranks.world)
        batch = part.batch.to(ranks.device)
        local = supervised_tokens(batch, part.real_rows)
        total = ranks.all_sum(local)  # the global batch's token counts, to weight this rank's means
        weights = task_weights(local, total, ranks.world)
        with torch.autocast("cuda", dtype=torch.bfloat16) if ranks.device.type == "cuda" else nullcontext():
            losses = self.step_model(batch)
        self.optimizer.zero_grad(set_to_none=True)
        weighted_loss(losses, weights).backward()
        grad_norm = _value(torch.nn.utils.clip_grad_norm_(self.trainable, stage.grad_clip))  # of the global gradient
        present = [t for t in TASKS if t in losses]
        means = ranks.all_sum(torch.stack([weights[t] / ranks.world * losses[t].detach().float() for t in present]))
        self.state.tokens_seen += int(total[-1])
        record = {"stage": stage.name, "step": step + 1, "lr": self.optimizer.param_groups[0]["lr"]}
        # Every rank sees the same global norm and losses, so all skip together.
        if math.isfinite(grad_norm) and bool(torch.isfinite(means).all()):
            self.optimizer.step()
            self.state.bad_in_a_row = 0
            tokens_per_s = self.state.tokens_seen / (time.perf_counter() - self.state.started)
            record |= {"grad_norm": round(grad_norm, 4), "tokens_per_s": round(tokens_per_s, 1)}
            record |= {t: round(m.item(), 5) for t, m in zip(present, means)}
            record["loss"] = round(means.sum().item(), 5)
        else:  # an update from a NaN/inf gradient would poison every weight it touches: leave them as they are
            self.state.bad_in_a_row += 1
            record |= {"skipped_nonfinite": True, "bad_in_a_row": self.state.bad_in_a_row}
        return record | run.pool.metrics()  # data on disk: images skipped as corrupt so far

    def log(self, record: dict, log: TextIO, bar) -> None:
        """One line of metrics.jsonl (rank 0; the others write to devnull) and the progress bar."""
        log.write(json.dumps(record) + "\n")
        if "loss" in record:
            postfix = {k: f"{record[k]:.3f}" for k in ("und", "gen") if k in record}
            bar.set_postfix(postfix | {"tok/s": f"{record['tokens_per_s']:.0f}"}, refresh=False)

    def _curves(self) -> bool:
        return self.run.tensorboard and self.run.ranks.is_main

    def _check_skipped(self, step: int) -> None:
        """Too many skipped steps in a row stop the run: the model is not going to recover on its own."""
        bad = self.state.bad_in_a_row
        if bad >= self.stage.max_bad_steps:
            raise UserError(f"stage '{self.stage.name}': the loss or gradient was not finite in {bad} steps in a row "
                            f"(steps {step + 1 - bad}-{step}), none of which changed the model; lower lr or raise warmup, "
                            f"check the data, then continue from {latest_checkpoint(self.dir)} with {param('resume')}")  # fmt: skip

    def save(self, step: int) -> None:
        """Checkpoint `step` into a new step directory, in the single-process format whatever the world size."""
        ranks = self.run.ranks
        if ranks.distributed:  # gathering the full state is a collective: every rank takes part
            weights, optimizer_state = full_model_state(self.step_model), full_optimizer_state(self.optimizer)
        else:
            weights, optimizer_state = None, self.optimizer.state_dict()
        if ranks.is_main:
            plain = self.model if weights is None else _holding(self.model.cfg, weights)
            state = {"optimizer": optimizer_state, "step": step, "rng": capture_rng(ranks.device),
                     "bad_in_a_row": self.state.bad_in_a_row, "data": self.run.pool.state_dict()}  # fmt: skip
            provenance = self.run.provenance(self.stage, self.index, step)

            def write(directory: Path) -> None:
                save_pretrained(directory, plain, self.run.text, self.run.image, self.run.recipe_toml, provenance)
                atomic_torch_save(state, directory / STATE_FILE)

            save_checkpoint(self.dir, step, write, self.stage.keep_last)
        self.state.saved_step = step
        ranks.barrier()

    def _should_stop(self) -> bool:
        """This call's step budget is spent, or some rank got SIGTERM/SIGINT: then every rank stops at this step."""
        if self.run.steps_left <= 0:  # the same on every rank
            return True
        requested = self.run.signals.requested is not None
        if not self.run.ranks.distributed:
            return requested
        # torchrun signals each rank separately; one that has not seen it yet must still stop with the others
        return self.run.ranks.all_sum(torch.tensor([float(requested)])).item() > 0

    def _unwrapped(self) -> UniFork:
        """A plain model with the stage's weights: wrapping changed the model in place, so ranks read them back."""
        if not self.run.ranks.distributed:
            return self.model
        self.run.ranks.barrier()  # rank 0 has written them
        return load_model(latest_checkpoint(self.dir), device=self.run.ranks.device)


def _restore_rng(saved: dict, ranks: Ranks) -> None:
    if "rng" in saved:  # runs from before random streams were saved have none to restore
        restore_rng(saved["rng"], ranks.device)


def _value(norm: torch.Tensor) -> float:
    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)


def _forget_metrics_after(metrics_path: Path, stage_name: str, step: int) -> None:
    """Drop log lines of steps after the checkpoint we resume from: they are about to be redone."""
    if not metrics_path.is_file():
        return
    keep = [line for line in metrics_path.read_text().splitlines(keepends=True)
            if not ((r := json.loads(line))["stage"] == stage_name and r["step"] > step)]  # fmt: skip
    atomic_write_text(metrics_path, "".join(keep))


def _holding(cfg, weights: dict[str, torch.Tensor]) -> UniFork:
    """A plain UniFork whose parameters are `weights`: built on the meta device, then assigned (no copy)."""
    with torch.device("meta"):
        plain = UniFork(cfg)
    plain.load_state_dict(weights, strict=True, assign=True)
    return plain

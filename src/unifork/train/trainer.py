"""The trainer: runs a recipe's stages in order, each starting from the previous stage's weights.

OUT/recipe.toml         the fully resolved recipe (every default spelled out); `--config` on it trains the same run
OUT/tokenizer/          text + image tokenizer (trained here unless the recipe names one or an init_checkpoint)
OUT/stages/<name>/      step-NNNNNNN/ checkpoints (weights + recipe + train_state.pt + manifest) and DONE when
                        finished; see train/checkpoints.py for why a kill while saving loses nothing
OUT/checkpoint/         the final model, usable as --ckpt (with its recipe.toml and provenance.json)
OUT/metrics.jsonl       one line per logged step

Under torchrun this is one rank of a data-parallel run (docs/scale.md): each rank trains on its slice of the same
global batch, and rank 0 writes the same files as a single process, so any world size resumes any other's run.
A stage itself (resume, step, log, save, faults) is stage.py.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import torch

from unifork.atomic import atomic_write_text
from unifork.checkpoint import (
    RECIPE_FILE,
    check_compatible,
    load_model,
    load_tokenizers,
    save_pretrained,
    write_manifest,
)
from unifork.data.pool import make_pool
from unifork.errors import UserError, param
from unifork.hf.vision import read_vision_encoder
from unifork.model.config import ModelConfig
from unifork.model.unifork import UniFork
from unifork.model.vision import feature_width
from unifork.sequences import SequenceBuilder
from unifork.tokenizers.codec import ImageCodec
from unifork.tokenizers.loading import image_tokenizer_kind, load_image_tokenizer
from unifork.tokenizers.text import TOKENIZER_FILE as TEXT_TOKENIZER_FILE
from unifork.tokenizers.text import TextTokenizer
from unifork.model_card import write_card
from unifork.train.checkpoints import DONE_FILE, latest_checkpoint
from unifork.train.curves import run_steps_before
from unifork.train.distributed import Ranks, start, stop
from unifork.train.graceful_stop import GracefulStop
from unifork.train.image_tokenizer import TokenizerData, train_image_tokenizer, train_text_tokenizer
from unifork.train.optim import check_optimizer_strategy
from unifork.train.parallelize import STRATEGIES
from unifork.train.recipe import Recipe, check_model_agrees, check_split, load_recipe, resolved_recipe
from unifork.train.stage import Run, StageRun, finished_stage


def train(recipe_path: str | Path | Recipe, out: str | Path, resume: bool = False, progress: bool = True,
          device: str | None = None, max_steps: int | None = None, strategy: str = "fsdp",
          compile: bool = False) -> Path | None:  # fmt: skip
    """Run every stage of the recipe (a TOML path, a packaged recipe's name or a Recipe); returns the final
    checkpoint directory.

    Returns None when stopped early, checkpointed so that `resume=True` continues exactly: after `max_steps`
    optimizer steps in this call (a time-limited job), or at the first step boundary after SIGTERM or SIGINT.
    Launched by torchrun (WORLD_SIZE > 1), this process is one rank of a data-parallel run wrapped by `strategy`
    ("fsdp" or "ddp"); `compile` applies torch.compile to each block.
    """
    if max_steps is not None and max_steps < 1:
        raise UserError(f"{param('max_steps')} must be at least 1, got {max_steps}")
    if strategy not in STRATEGIES:
        raise UserError(f"unknown {param('strategy')} '{strategy}'; choose one of: {', '.join(STRATEGIES)}")
    recipe = recipe_path if isinstance(recipe_path, Recipe) else load_recipe(recipe_path)
    out = Path(out)
    ranks = start(device)
    try:
        stages_dir = out / "stages"
        if stages_dir.exists() and any(stages_dir.iterdir()) and not resume:
            raise UserError(f"{out} already holds a training run; continue it with {param('resume')} or choose a new "
                            f"{param('out')} directory")  # fmt: skip
        check_split(recipe.stages, ranks.world)
        check_optimizer_strategy(recipe.stages, ranks.distributed, strategy)
        with ranks.main_first():  # rank 0 trains the tokenizers if needed, the others then read them
            out.mkdir(parents=True, exist_ok=True)
            text, image, cfg = _tokenizers_and_config(recipe, out, progress and ranks.is_main)
            recipe_toml = resolved_recipe(recipe, cfg)
            if ranks.is_main:
                atomic_write_text(out / RECIPE_FILE, recipe_toml)
        pool = make_pool(recipe.data, image, SequenceBuilder(text, cfg), announce=ranks.is_main)
        model = _initial_model(recipe, cfg, ranks)
        # Installed only now: a signal while the tokenizers train or the data loads should end the process at once.
        with GracefulStop() as signals:
            run = Run(out, recipe_toml, text, image, pool, ranks, signals,
                      steps_left=max_steps if max_steps is not None else float("inf"), strategy=strategy,
                      compile=compile, progress=progress and ranks.is_main,
                      tensorboard=recipe.logging.tensorboard)  # fmt: skip
            model = _run_stages(run, recipe, model)
        return None if model is None else _save_final(run, recipe, model)
    finally:
        stop(ranks)


def _run_stages(run: Run, recipe: Recipe, model: UniFork) -> UniFork | None:
    """Every stage in order (finished ones are read back); None when one stopped before its end."""
    for index, stage in enumerate(recipe.stages):
        stage_dir = run.stage_dir(stage)
        if (stage_dir / DONE_FILE).is_file():
            model = finished_stage(run, stage)
            continue
        model = StageRun(run, stage, index, model, run_steps_before(recipe.stages, index)).train()
        if not (stage_dir / DONE_FILE).is_file():
            if run.ranks.is_main:  # a signal may have reached another rank only (all stop together)
                why = ("stopped after the max_steps of this call" if run.steps_left <= 0
                       else f"stopped by {run.signals.requested or 'a signal to another rank'}")  # fmt: skip
                print(f"{why} in stage '{stage.name}', checkpoint {latest_checkpoint(stage_dir)}; training the same "
                      f"recipe into {run.out} with resume continues it", flush=True)  # fmt: skip
            return None
    return model


def _save_final(run: Run, recipe: Recipe, model: UniFork) -> Path:
    """OUT/checkpoint, written beside it and renamed into place: a kill while saving leaves the old one."""
    final = run.out / "checkpoint"
    if run.ranks.is_main:
        last = recipe.stages[-1]
        provenance = run.provenance(last, len(recipe.stages) - 1, last.steps) | {"final": True}
        tmp = run.out / "checkpoint.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_pretrained(tmp, model, run.text, run.image, run.recipe_toml, provenance)
        write_manifest(tmp)
        write_card(tmp)  # after the manifest: the card is documentation, rewritten when the model is evaluated
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    run.ranks.barrier()
    return final


def _initial_model(recipe: Recipe, cfg: ModelConfig, ranks: Ranks) -> UniFork:
    torch.manual_seed(recipe.seed)  # right before init: the initial weights depend on the seed alone
    if recipe.init_checkpoint:
        return load_model(recipe.init_checkpoint, device=ranks.device)
    model = UniFork(cfg)
    if recipe.vision_encoder:  # the pretrained encoder's weights over the fresh init
        state = model.state_dict() | read_vision_encoder(recipe.vision_encoder, recipe.vision_layer)[1]
        model.load_state_dict(state, strict=True)
    return model.to(ranks.device)


def _tokenizers_and_config(recipe: Recipe, out: Path, progress: bool) -> tuple[TextTokenizer, ImageCodec, ModelConfig]:
    """A fresh model's tokenizers (trained if needed) and config, or those an init_checkpoint brings."""
    if not recipe.init_checkpoint:
        text, image = _prepare_tokenizers(recipe, out, progress)
        return text, image, _model_config(recipe, text, image)
    directory = Path(recipe.init_checkpoint)
    if not directory.is_dir():
        raise UserError(f"init_checkpoint {directory} is not a directory; give a unifork checkpoint, e.g. the out of `unifork fork-hf`")
    cfg = ModelConfig.load(directory)
    check_model_agrees(recipe, cfg, str(directory))
    text, image = load_tokenizers(directory)
    with torch.device("meta"):  # shapes only: the weights are loaded after the data, where a fresh model is built
        check_compatible(UniFork(cfg), text, image)
    return text, image, cfg


def _prepare_tokenizers(recipe: Recipe, out: Path, progress: bool) -> tuple[TextTokenizer, ImageCodec]:
    """The recipe's tokenizer_dir, or OUT/tokenizer, trained on the recipe's data source unless already there."""
    if recipe.tokenizer_dir:
        tok_dir = Path(recipe.tokenizer_dir)
        if image_tokenizer_kind(tok_dir) is None:
            raise UserError(f"tokenizer_dir {tok_dir} holds no image tokenizer; train one with `unifork tokenizer train`")
        if not (tok_dir / TEXT_TOKENIZER_FILE).is_file():
            raise UserError(f"tokenizer_dir {tok_dir} holds no text tokenizer ({TEXT_TOKENIZER_FILE}); for an image "
                            "tokenizer alone (e.g. from `tokenizer from-hf`) set [tokenizer] image_tokenizer instead")  # fmt: skip
        return TextTokenizer.load(tok_dir), load_image_tokenizer(tok_dir)
    table, tok_dir = recipe.tokenizer, out / "tokenizer"
    image = load_image_tokenizer(table.image_tokenizer) if table.image_tokenizer else None
    if image is not None and table.image_size and image.cfg.image_size != table.image_size:  # before anything trains
        raise UserError(f"the image tokenizer in {table.image_tokenizer} encodes {image.cfg.image_size} px images, but "
                        f"[tokenizer] image_size is {table.image_size}; make them agree (or drop image_size)")  # fmt: skip
    if not (tok_dir / TEXT_TOKENIZER_FILE).is_file() or (image is None and image_tokenizer_kind(tok_dir) is None):
        print(f"training the text{'' if image is not None else ' and image'} tokenizers into {tok_dir} on {recipe.data.source}")
        if image is not None:
            tok_dir.mkdir(parents=True, exist_ok=True)
            train_text_tokenizer(tok_dir, recipe.data.source, seed=recipe.seed)
        else:
            data = TokenizerData(recipe.data.source, table.eval_source, table.image_size or None, table.downsample or None,
                                 table.residual_depth or None)  # fmt: skip
            train_image_tokenizer(tok_dir, steps=table.steps or None, seed=recipe.seed, size=table.size, data=data,
                                  batch_size=table.batch_size or None, progress=progress)  # fmt: skip
    if image is None:
        image = load_image_tokenizer(tok_dir)
        if table.image_size and image.cfg.image_size != table.image_size:
            raise UserError(f"{tok_dir} holds an image tokenizer for {image.cfg.image_size} px images, but [tokenizer] "
                            f"image_size is {table.image_size}; delete {tok_dir} to train a new one")  # fmt: skip
        if table.residual_depth and image.cfg.residual_depth != table.residual_depth:
            raise UserError(f"{tok_dir} holds an image tokenizer of residual depth {image.cfg.residual_depth}, but "
                            f"[tokenizer] residual_depth is {table.residual_depth}; delete {tok_dir} to train a new one")  # fmt: skip
    return TextTokenizer.load(tok_dir), image


def _model_config(recipe: Recipe, text: TextTokenizer, image: ImageCodec) -> ModelConfig:
    """The recipe's model, with the vocabulary and image sizes the tokenizers dictate; a [model] table that states
    one of them (as a resolved recipe.toml does) must agree, or this is not the tokenizer it was trained with."""
    dictated = {"text_vocab_size": text.vocab_size, "image_vocab_size": image.cfg.num_codes,
                "image_tokens": image.cfg.grid**2, "image_latent_dim": image.cfg.latent_dim,
                "residual_depth": image.cfg.residual_depth}  # fmt: skip
    if recipe.vision_encoder:  # its features, not the tokenizer's latents, are the understanding input
        spec = read_vision_encoder(recipe.vision_encoder, recipe.vision_layer)[0]
        dictated |= {"image_latent_dim": feature_width(spec), "und_input": "vision", "vision": spec}
    for key, value in dictated.items():
        if key in recipe.model_keys and recipe.model_keys[key] != value:
            what = "the vision encoder" if key in ("und_input", "vision") and recipe.vision_encoder else "the tokenizer"
            raise UserError(f"[model] {key} = {recipe.model_keys[key]} disagrees with {what}, which gives {value}: "
                            f"this recipe was trained with another one; point it at the one it was trained with")  # fmt: skip
    return replace(recipe.model, **dictated)

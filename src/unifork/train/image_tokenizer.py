"""Train the VQ-VAE image tokenizer (and the text tokenizer) on the shapes world or on a user's images, then
measure them: report.json and reconstructions.png (held-out images above their reconstructions) beside them.

A run checkpoints every `save_every` steps, and on SIGTERM/SIGINT, to OUT/tokenizer_state.pt; `resume=True`
continues it bit-exactly (the weights, the optimizer, the image stream's position and the random streams).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange

from unifork.atomic import atomic_torch_save, atomic_write_text
from unifork.data.spec import check_source
from unifork.errors import UserError, param
from unifork.eval.image_quality import reconstruction_metrics
from unifork.tokenizers.image import ImageTokenizer, ImageTokenizerConfig
from unifork.tokenizers.objectives import SemanticHead, cell_labels
from unifork.tokenizers.residual import unpack_levels
from unifork.tokenizers.reconstruct import reconstruction_sheet
from unifork.tokenizers.text import TextTokenizer, world_corpus
from unifork.train.graceful_stop import GracefulStop
from unifork.train.rng import capture_rng, restore_rng
from unifork.train.schedule import progress_bar, warmup_cosine
from unifork.train.tokenizer_images import SourceImages, WorldImages, source_corpus, source_eval_images, world_data

STATE_FILE = "tokenizer_state.pt"
MAX_RESIDUAL_DEPTH = 8  # VILA-U uses 4; the packed ids must also fit an int64 (6 levels of 512 codes do, 7 do not)
REPORT_FILE = "report.json"
SHEET_FILE = "reconstructions.png"


@dataclass(frozen=True)
class TokenizerRecipe:
    model: ImageTokenizerConfig
    steps: int
    batch_size: int = 32
    lr: float = 5e-3  # measured: 2e-3 reached 26.6 dB in the same time, 5e-3 reached 29.8 dB
    warmup: int = 50
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    n_train_images: int = 8192  # the world's: rendered once, drawn with replacement
    n_eval_images: int = 512
    text_samples: int = 4000  # world samples (or records of a source) whose text trains the text tokenizer
    semantic_weight: float = 0.1  # of the per-cell attribute loss (tokenizers/objectives.py), world only; 0: plain
    save_every: int = 200  # steps between resumable checkpoints
    shuffle_buffer: int = 1000  # a source's records held for shuffling


# Measured on the 2-core CPU: (16, 32, 64) channels train ~8x faster per step than (64, 128, 128) and reach a
# higher PSNR within the 3-minute budget because they get ~8x more steps.
RECIPES = {
    "default": TokenizerRecipe(ImageTokenizerConfig(channels=(16, 32, 64)), steps=1000),
    # Tests' size: over so few steps a long warmup to a lower peak keeps more of the codebook in use.
    "tiny": TokenizerRecipe(ImageTokenizerConfig(channels=(16, 32, 64)), steps=120, lr=4e-3, warmup=60,
                            n_train_images=1024, n_eval_images=128, text_samples=300),  # fmt: skip
}


@dataclass(frozen=True)
class TokenizerData:
    """What the tokenizer trains on (the world, or any source a recipe's [data] accepts: data/spec.py), and the
    shape of the codes it makes of it."""

    source: str = "world"
    eval_source: str = ""  # held-out images; empty: the world's held-out splits, or 1 in 50 records of source
    image_size: int | None = None  # None: the recipe's
    downsample: int | None = None  # pixels per code along a side (a power of 2); None: the recipe's
    residual_depth: int | None = None  # codes per position (residual quantization); None: the recipe's (1)

    @property
    def world(self) -> bool:
        return self.source == "world"


def sized_config(cfg: ImageTokenizerConfig, image_size: int | None, downsample: int | None) -> ImageTokenizerConfig:
    """cfg at another image size and downsampling; extra halving stages repeat the widest stage's channels."""
    image_size = cfg.image_size if image_size is None else image_size
    downsample = 2 ** len(cfg.channels) if downsample is None else downsample
    stages = round(math.log2(downsample)) if downsample >= 2 else 0
    if downsample < 2 or 2**stages != downsample:
        raise UserError(f"{param('downsample')} must be a power of 2 of at least 2 (one halving per encoder stage), got {downsample}")
    if image_size < 1 or image_size % downsample:
        fit = max(downsample, round(image_size / downsample) * downsample)
        raise UserError(f"{param('image_size')} {image_size} is not divisible by the encoder's downsampling "
                        f"{downsample}; use a multiple of it (e.g. {fit}) or another {param('downsample')}")  # fmt: skip
    channels = cfg.channels[:stages] + (cfg.channels[-1],) * (stages - len(cfg.channels))
    return replace(cfg, image_size=image_size, channels=channels)


def train_image_tokenizer(out: str | Path, steps: int | None = None, seed: int = 0, size: str = "default",
                          data: TokenizerData = TokenizerData(), batch_size: int | None = None, resume: bool = False,
                          progress: bool = True, max_steps: int | None = None) -> dict | None:  # fmt: skip
    """Train both tokenizers into `out` (config.json, model.safetensors, tokenizer.json) and return report.json's
    content; None when stopped early (after `max_steps` steps of this call, or by a signal), checkpointed."""
    recipe = _recipe(size, steps, batch_size, data)
    for spec in (data.source, data.eval_source):
        if spec:  # a bad scheme or a missing path fails before anything trains
            check_source(spec)
    out = Path(out)
    state_path = out / STATE_FILE
    if state_path.is_file() and not resume:
        raise UserError(f"{out} holds an interrupted tokenizer training; continue it with {param('resume')} or "
                        f"choose a new {param('out')}")  # fmt: skip
    if resume and not state_path.is_file() and (out / REPORT_FILE).is_file():
        print(f"{out} already holds a trained tokenizer; nothing to resume")
        return json.loads((out / REPORT_FILE).read_text())
    eval_sets = _eval_sets(recipe, data, seed)  # before anything is written: a source without images fails here
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    train_text_tokenizer(out, data.source, recipe.text_samples, seed)
    fit = _Fit(recipe, data, seed, progress)
    if resume and state_path.is_file():
        fit.load_state_dict(torch.load(state_path, weights_only=True))
    if not fit.run(state_path, max_steps):
        return None
    fit.model.save(out)
    report = {"steps": recipe.steps, "train_seconds": round(fit.seconds, 1), "data": data.source,
              **_measure(fit, eval_sets, data, out)}  # fmt: skip
    atomic_write_text(out / REPORT_FILE, json.dumps(report, indent=2))
    state_path.unlink(missing_ok=True)
    return report


def train_text_tokenizer(out: Path, source: str = "world", n_samples: int = RECIPES["default"].text_samples,
                         seed: int = 0) -> None:  # fmt: skip
    """The text tokenizer, trained on the text of n world samples or of the source's first n records."""
    corpus = world_corpus(n_samples, seed=seed) if source == "world" else source_corpus(source, n_samples)
    TextTokenizer.train(corpus).save(out)


def _recipe(size: str, steps: int | None, batch_size: int | None, data: TokenizerData) -> TokenizerRecipe:
    if size not in RECIPES:
        raise UserError(f"unknown tokenizer {param('size')} '{size}'; choose one of: {', '.join(RECIPES)}")
    recipe = RECIPES[size]
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if value is not None and value < 1:
            raise UserError(f"{param(name)} must be at least 1, got {value}")
    model = sized_config(recipe.model, data.image_size, data.downsample)
    if data.residual_depth is not None:
        if not 1 <= data.residual_depth <= MAX_RESIDUAL_DEPTH:
            raise UserError(f"{param('residual_depth')} must be between 1 and {MAX_RESIDUAL_DEPTH}, got {data.residual_depth}")
        model = replace(model, residual_depth=data.residual_depth)
        if model.code_space >= 2**62:
            raise UserError(f"{param('residual_depth')} {data.residual_depth} with {model.num_codes} codes per level makes "
                            f"{model.num_codes}**{data.residual_depth} packed ids, more than an int64 holds; use at most "
                            f"{_deepest(model.num_codes)}")  # fmt: skip
    recipe = replace(recipe, steps=steps or recipe.steps, batch_size=batch_size or recipe.batch_size, model=model)
    if not data.world:  # the per-cell labels exist only where the scene is known
        recipe = replace(recipe, semantic_weight=0.0)
    return recipe


def _deepest(num_codes: int) -> int:
    """The most residual levels whose packed ids fit an int64."""
    depth = 1
    while num_codes ** (depth + 1) < 2**62:
        depth += 1
    return depth


class _Fit:
    """The model, its optimizer and its image stream, stepped through the recipe."""

    def __init__(self, recipe: TokenizerRecipe, data: TokenizerData, seed: int, progress: bool):
        self.recipe, self.progress, self.step, self.seconds = recipe, progress, 0, 0.0
        if data.world:
            self.images = WorldImages(recipe.n_train_images, seed)
        else:
            self.images = SourceImages(data.source, recipe.model.image_size, seed, recipe.shuffle_buffer,
                                       holdout=not data.eval_source)  # fmt: skip
        self.model = ImageTokenizer(recipe.model)
        self.semantic = SemanticHead(self.model.cfg.latent_dim)  # built either way: the random stream stays that of older runs
        self.labels = cell_labels(self.images.scenes, self.model.cfg.grid) if recipe.semantic_weight else None
        params = [*self.model.parameters(), *(self.semantic.parameters() if self.labels is not None else ())]
        self.optimizer = torch.optim.AdamW(params, lr=recipe.lr, betas=(0.9, 0.99), weight_decay=0.0)
        self.identity = {"steps": recipe.steps, "batch_size": recipe.batch_size, "source": data.source,
                         "model": recipe.model.to_json()}  # fmt: skip

    def run(self, state_path: Path, max_steps: int | None) -> bool:
        """Train to the recipe's last step (True), or stop early with a checkpoint (False)."""
        recipe, start, began = self.recipe, self.step, time.perf_counter()
        self.model.train()
        with GracefulStop() as signals:
            bar = progress_bar(start, recipe.steps, "image tokenizer", self.progress)
            for step in bar:
                loss = self._train_step(step)
                self.step = step + 1
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{loss:.4f}")
                stop = signals.requested or (max_steps is not None and self.step - start >= max_steps)
                if self.step < recipe.steps and (stop or self.step % recipe.save_every == 0):
                    self.seconds += time.perf_counter() - began
                    began = time.perf_counter()
                    atomic_torch_save(self.state_dict(), state_path)
                if stop and self.step < recipe.steps:
                    print(f"tokenizer training stopped at step {self.step}; resuming continues it", flush=True)
                    return False
        self.seconds += time.perf_counter() - began
        self.model.eval()
        return True

    def _train_step(self, step: int) -> float:
        recipe = self.recipe
        for group in self.optimizer.param_groups:
            group["lr"] = warmup_cosine(step, recipe.steps, recipe.lr, recipe.warmup, recipe.min_lr_ratio)
        batch, pick = self.images.next_batch(recipe.batch_size)
        latents = self.model.encoder(batch)
        quantized, _, aux = self.model.quantize(latents)
        loss = F.mse_loss(self.model.decoder(quantized), batch) + aux
        if self.labels is not None:
            flat = rearrange(latents, "b d h w -> b (h w) d")
            loss = loss + recipe.semantic_weight * self.semantic.loss(flat, self.labels[pick])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def state_dict(self) -> dict:
        return {"identity": self.identity, "step": self.step, "seconds": self.seconds, "model": self.model.state_dict(),
                "semantic": self.semantic.state_dict(), "optimizer": self.optimizer.state_dict(),
                "images": self.images.state_dict(), "rng": capture_rng(torch.device("cpu"))}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        changed = [k for k, v in self.identity.items() if state["identity"].get(k) != v]
        if changed:
            raise UserError(f"the interrupted tokenizer training was started with another {changed[0]} "
                            f"({state['identity'][changed[0]]!r}); resume it with the settings it started with")  # fmt: skip
        self.step, self.seconds = state["step"], state["seconds"]
        self.model.load_state_dict(state["model"])
        self.semantic.load_state_dict(state["semantic"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.images.load_state_dict(state["images"])
        restore_rng(state["rng"], torch.device("cpu"))


def _eval_sets(recipe: TokenizerRecipe, data: TokenizerData, seed: int) -> dict:
    """The held-out images the report measures, by name, and the world's test scenes (for the semantic probe)."""
    size, n = recipe.model.image_size, recipe.n_eval_images
    if data.world:
        heldout, _ = world_data("heldout", n, seed=seed)
        test, test_scenes = world_data("test", n, seed=seed)
        return {"heldout": heldout, "test": test, "test_scenes": test_scenes}
    source_eval_images(data.source, size, 1, holdout=False)  # one readable training image, or a clear error
    if data.eval_source:
        return {"heldout": source_eval_images(data.eval_source, size, n, holdout=False)}
    return {"heldout": source_eval_images(data.source, size, n, holdout=True)}


def _measure(fit: _Fit, eval_sets: dict, data: TokenizerData, out: Path) -> dict:
    """Reconstruction PSNR/SSIM and codebook usage on held-out images (and, on the world, how well the latents of
    unseen scenes tell each object cell's attributes); writes the reconstruction sheet."""
    model = fit.model
    sets = {name: images for name, images in eval_sets.items() if name != "test_scenes"}
    report = {"image_size": model.cfg.image_size, "grid": model.cfg.grid, "num_codes": model.cfg.num_codes}
    for name, images in sets.items():
        metrics = reconstruction_metrics(model, images)
        report |= {f"psnr_{name}": round(metrics["psnr"], 2), f"ssim_{name}": metrics["ssim"], f"n_{name}": len(images)}
    usage = _codebook_usage(model, torch.cat(list(sets.values())))
    report["codebook_usage"] = round(sum(usage) / len(usage), 4)  # the mean over the residual levels
    if len(usage) > 1:
        report |= {"residual_depth": len(usage), "codebook_usage_per_level": [round(u, 4) for u in usage]}
    if not data.world:
        report |= {"eval_data": data.eval_source or f"1 in 50 records of {data.source}, held out of training",
                   "skipped_corrupt": fit.images.skipped}  # fmt: skip
    if fit.labels is not None:
        with torch.no_grad():
            labels = cell_labels(eval_sets["test_scenes"], model.cfg.grid)
            report["semantic_accuracy"] = fit.semantic.accuracy(model.encode_latents(sets["test"]), labels)
    reconstruction_sheet(model, sets["heldout"][:16], out / SHEET_FILE)
    return report


@torch.no_grad()
def _codebook_usage(model: ImageTokenizer, images: torch.Tensor, batch: int = 256) -> list[float]:
    """Fraction of each level's codebook used at least once over the images (one entry per residual level)."""
    codes = torch.cat([model.encode(chunk).flatten() for chunk in images.split(batch)])
    levels = unpack_levels(codes, model.cfg.num_codes, model.cfg.residual_depth)  # (N, D)
    return [level.unique().numel() / model.cfg.num_codes for level in levels.T]

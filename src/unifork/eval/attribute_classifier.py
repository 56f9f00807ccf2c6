"""A tiny CNN that reads a world image's attributes, whose penultimate layer is the domain FID's feature space.

Inception features (FID's usual space) know ImageNet, not flat colored shapes; a network trained on the world
itself measures what matters here. Targets: for each color and each shape, how many objects of it the image
holds (0..MAX_OBJECTS), one softmax per attribute. Training is deterministic (fixed seed, CPU, one thread) and
fast, and the result is cached once per machine, independent of any checkpoint:

    <cache>/attribute_classifier_v1/config.json         recipe, feature width, held-out accuracy
    <cache>/attribute_classifier_v1/model.safetensors   weights

<cache> is the `cache_dir` argument, else $UNIFORK_CACHE, else ~/.cache/unifork. Bump the version suffix when
the architecture or targets change, so stale caches are not read.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from unifork.atomic import atomic_save_tensors, atomic_write_text
from unifork.errors import UserError
from unifork.images import fit_image
from unifork.tokenizers.image import images_to_tensor
from unifork.world import (
    COLORS,
    MAX_OBJECTS,
    SHAPES,
    Scene,
    World,
    WorldConfig,
)

CACHE_NAME = "attribute_classifier_v1"
ATTRIBUTES = (*COLORS, *SHAPES)
N_COUNTS = MAX_OBJECTS + 1  # classes per attribute: 0..MAX_OBJECTS objects
CANVAS = WorldConfig().canvas  # images of any size are fitted to the world's canvas first (unifork.images)


@dataclass(frozen=True)
class ClassifierRecipe:
    # 1000 steps: shapes are learned late (colors by step ~200): test accuracy 0.90 after 600 steps, 0.99 after 1000.
    steps: int = 1000
    batch_size: int = 64
    lr: float = 5e-3
    n_train_images: int = 4000
    n_eval_images: int = 500
    seed: int = 0


class AttributeClassifier(nn.Module):
    """(B, 3, 64, 64) in [-1, 1] -> per-attribute count logits (B, len(ATTRIBUTES), N_COUNTS)."""

    def __init__(self, width: int = 8, num_features: int = 64):
        super().__init__()
        self.num_features = num_features  # torchmetrics' FID reads this instead of probing with a dummy image

        def stage(c_in: int, c_out: int) -> list[nn.Module]:
            # BatchNorm: without it shapes were still near chance after the whole budget (colors alone were
            # learned). Pooling before it and the ReLU runs them on a quarter of the pixels.
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.MaxPool2d(2), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.trunk = nn.Sequential(
            *stage(3, width), *stage(width, 2 * width), *stage(2 * width, 4 * width),  # 64 -> 8 px
            nn.Conv2d(4 * width, num_features, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.penultimate = nn.Sequential(nn.Linear(num_features, num_features), nn.ReLU())
        self.head = nn.Linear(num_features, len(ATTRIBUTES) * N_COUNTS)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, num_features): the domain FID's embedding."""
        x = self.trunk(images)  # (B, F, 8, 8)
        # Summed, not averaged, over space: a sum grows with the number of objects, which the targets count.
        # (/16 keeps it O(1) over the 64 cells.)
        return self.penultimate(x.sum(dim=(2, 3)) / 16)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images)).view(-1, len(ATTRIBUTES), N_COUNTS)


def to_classifier_input(images) -> torch.Tensor:
    """uint8 images (N, H, W, 3) of any size -> (N, 3, CANVAS, CANVAS) floats in [-1, 1]."""
    return images_to_tensor(np.stack([fit_image(img, CANVAS) for img in images]))


def attribute_targets(scene: Scene) -> list[int]:
    """How many objects of each color, then of each shape (ATTRIBUTES order)."""
    return [sum(o.color == c for o in scene.objects) for c in COLORS] + [
        sum(o.shape == s for o in scene.objects) for s in SHAPES
    ]


def world_examples(split: str, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (n, 3, 64, 64) and targets (n, len(ATTRIBUTES)) of the first n samples of a split."""
    world = World(seed=seed, split=split)
    samples = [world.sample(i) for i in range(n)]
    images = images_to_tensor(np.stack([s.image for s in samples]))
    return images, torch.tensor([attribute_targets(s.scene) for s in samples])


@torch.no_grad()
def attribute_accuracy(model: AttributeClassifier, images: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of (image, attribute) pairs whose count is predicted exactly."""
    predicted = torch.cat([model(chunk).argmax(-1) for chunk in images.split(256)])
    return (predicted == targets).float().mean().item()


def train_attribute_classifier(recipe: ClassifierRecipe = ClassifierRecipe()) -> tuple[AttributeClassifier, dict]:
    """Train on `train` scenes; report accuracy on unseen `test` scenes and on held-out compositions."""
    start = time.perf_counter()
    threads = torch.get_num_threads()
    # One thread: CPU kernels may sum in a different order with more threads, and the same seed must give the
    # same features on every machine.
    torch.set_num_threads(1)
    try:
        # Own RNG state and grad mode: callers (an evaluation under no_grad) keep theirs.
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(recipe.seed)
            model = _fit(recipe)
    finally:
        torch.set_num_threads(threads)
    train_seconds = time.perf_counter() - start
    report = {"train_seconds": round(train_seconds, 1)}
    for split in ("test", "heldout"):
        images, targets = world_examples(split, recipe.n_eval_images, seed=recipe.seed + 1)
        report[f"accuracy_{split}"] = round(attribute_accuracy(model, images, targets), 4)
    return model, report


def _fit(recipe: ClassifierRecipe) -> AttributeClassifier:
    images, targets = world_examples("train", recipe.n_train_images, seed=recipe.seed)
    # channels-last: CPU pooling and normalization kernels ran about a third faster in this layout
    images = images.contiguous(memory_format=torch.channels_last)
    model = AttributeClassifier().to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(recipe.seed)
    for step in range(recipe.steps):
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr * 0.5 * (1 + math.cos(math.pi * step / recipe.steps))
        rows = torch.randint(len(images), (recipe.batch_size,), generator=generator)
        logits = model(images[rows])  # (B, A, N_COUNTS)
        loss = F.cross_entropy(logits.flatten(0, 1), targets[rows].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    # At this learning rate BatchNorm's running averages lag the weights; eval-mode outputs were far off until
    # the statistics were recomputed once, over training images, with the final weights.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the passes below
    with torch.no_grad():
        for chunk in images[:2048].split(256):
            model(chunk)
    return model.eval()


def default_cache_dir() -> Path:
    return Path(os.environ.get("UNIFORK_CACHE") or Path.home() / ".cache" / "unifork")


def load_or_train_attribute_classifier(
    cache_dir: str | Path | None = None, recipe: ClassifierRecipe = ClassifierRecipe()
) -> tuple[AttributeClassifier, dict]:
    """The cached classifier and its config.json content; trained with `recipe` and cached if absent.

    A cached classifier is used whatever recipe trained it; its config (returned) says which, so reports can
    show it. Delete the directory to retrain.
    """
    directory = Path(cache_dir if cache_dir is not None else default_cache_dir()) / CACHE_NAME
    config_path, weights_path = directory / "config.json", directory / "model.safetensors"
    if config_path.is_file() and weights_path.is_file():
        return _load(config_path, weights_path)
    model, report = train_attribute_classifier(recipe)
    info = {"version": CACHE_NAME, "recipe": asdict(recipe), "num_features": model.num_features, **report}
    directory.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(model.state_dict(), weights_path)
    atomic_write_text(config_path, json.dumps(info, indent=2))  # last: its presence marks a complete cache
    return model, info


def _load(config_path: Path, weights_path: Path) -> tuple[AttributeClassifier, dict]:
    try:
        info = json.loads(config_path.read_text())
        model = AttributeClassifier(num_features=info["num_features"])
        model.load_state_dict(load_file(str(weights_path)), strict=True)
    except Exception as err:  # json, safetensors and torch each raise their own types for a damaged file
        directory = config_path.parent
        raise UserError(f"corrupt attribute classifier cache in {directory} ({err}); delete it to retrain") from None
    return model.eval(), info

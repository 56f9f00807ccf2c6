"""Image quality: the tokenizer's reconstruction fidelity, and Fréchet distances between generated and real images.

domain FID is the Fréchet distance (Heusel et al. 2017, arXiv 1706.08500) between Gaussians fitted to the
penultimate-layer features of the world's attribute classifier (attribute_classifier.py), NOT to Inception-v3
features: it says how close generated images come to real world renderings in a space that knows colors,
shapes and counts, and its values are not comparable with published FIDs. Standard Inception FID is computed
only from a weights file the user supplies; nothing is ever downloaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)
from torchmetrics.image.fid import FrechetInceptionDistance

from unifork.errors import UserError
from unifork.eval.attribute_classifier import AttributeClassifier, to_classifier_input
from unifork.images import fit_image
from unifork.tokenizers.codec import ImageCodec
from unifork.tokenizers.image import images_to_tensor
from unifork.world import World, render, scene_from_prompt


@torch.no_grad()
def reconstruction_metrics(tokenizer: ImageCodec, images: torch.Tensor, batch_size: int = 128) -> dict:
    """PSNR (dB) and SSIM of code -> image round trips of float (N, 3, H, W) images in [-1, 1].

    Both on [0, 1] pixels, averaged over images (per-image PSNR); SSIM with torchmetrics' defaults (11 px
    Gaussian window, sigma 1.5).
    """
    device = next(tokenizer.parameters()).device
    psnr, ssim = [], []
    for chunk in images.split(batch_size):
        target = chunk.to(device)
        recon = tokenizer.decode(tokenizer.encode(target))
        target, recon = (target + 1) / 2, (recon + 1) / 2  # [-1, 1] -> [0, 1]
        psnr.append(peak_signal_noise_ratio(recon, target, data_range=1.0, reduction="none", dim=(1, 2, 3)))
        ssim.append(structural_similarity_index_measure(recon, target, data_range=1.0, reduction="none"))
    return {"psnr": round(torch.cat(psnr).mean().item(), 3), "ssim": round(torch.cat(ssim).mean().item(), 4)}


def reconstruction_quality(tokenizer: ImageCodec, split: str = "test", n_images: int = 256, seed: int = 0,
                           batch_size: int = 128) -> dict:  # fmt: skip
    """reconstruction_metrics on `split` scenes of the world, which the tokenizer never trained on."""
    world = World(seed=seed, split=split)
    images = np.stack([fit_image(world.sample(i).image, tokenizer.cfg.image_size) for i in range(n_images)])
    return {"split": split, "n_images": n_images} | reconstruction_metrics(tokenizer, images_to_tensor(images), batch_size)


def prompt_renderings(captions: list[str], seed: int = 0) -> np.ndarray:
    """One true rendering per caption (a random scene satisfying it): the real set generated images are held to."""
    rng = np.random.default_rng(seed)
    return np.stack([render(scene_from_prompt(caption, rng)) for caption in captions])


class _ClassifierFeatures(nn.Module):
    """The attribute classifier's penultimate layer, as the feature extractor torchmetrics' FID calls."""

    def __init__(self, classifier: AttributeClassifier):
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images)


@torch.no_grad()
def domain_fid(real, generated, classifier: AttributeClassifier, batch_size: int = 256) -> float:
    """Fréchet distance between two sets of uint8 images (N, H, W, 3), any size, in attribute-classifier space.

    torchmetrics' FrechetInceptionDistance accepts a custom feature module and then needs no torch-fidelity;
    its accumulators are float64 and it takes the matrix square root through eigenvalues.
    """
    if len(real) < 2 or len(generated) < 2:
        sizes = f"got {len(real)} real and {len(generated)} generated"
        raise UserError(f"a Fréchet distance needs at least 2 images per set, {sizes}")
    metric = FrechetInceptionDistance(feature=_ClassifierFeatures(classifier.eval()))
    for images, is_real in ((real, True), (generated, False)):
        for chunk in to_classifier_input(images).split(batch_size):
            metric.update(chunk, real=is_real)
    return max(0.0, metric.compute().item())  # the eigenvalue route can land a hair below 0 for equal sets


def require_inception_fid(weights_path: str | Path) -> Path:
    """The weights file, checked before any work: it exists and torch-fidelity (which runs it) is installed."""
    path = Path(weights_path)
    if not path.is_file():
        raise UserError(f"no Inception weights file at {path}; pass FID's Inception-v3 weights as a local file")
    if importlib.util.find_spec("torch_fidelity") is None:
        raise UserError("standard FID needs torch-fidelity: pip install torch-fidelity")
    return path


@torch.no_grad()
def inception_fid(real, generated, weights_path: str | Path, batch_size: int = 64) -> float:
    """Standard FID (2048-d Inception-v3 pool features) from a local weights file; images uint8 (N, H, W, 3)."""
    metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(require_inception_fid(weights_path)))
    for images, is_real in ((real, True), (generated, False)):
        pixels = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).contiguous()  # uint8 (N, 3, H, W)
        for chunk in pixels.split(batch_size):
            metric.update(chunk, real=is_real)
    return metric.compute().item()

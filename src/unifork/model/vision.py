"""A pretrained vision encoder as the understanding input (und_input = "vision"): SigLIP or CLIP through transformers.

As in LLaVA, the features are the hidden states of one layer (default the second-to-last), every patch token
(CLIP's class token dropped; SigLIP has none), fed to the trunk's 2-layer projector. The layers above the chosen
one, and SigLIP's pooling head, are never run, so they are not kept. The encoder lives in the model
(trunk.vision.*, saved with its weights) and is frozen unless a stage's train patterns name it explicitly
(train/optim.py): "*" alone leaves it as it was pretrained.

Images reach it as our other image inputs do (float, [-1, 1], prepared by images.fit_image at its size) and are
normalised with the checkpoint's processor mean and std here.
"""

from __future__ import annotations

import torch
from torch import nn

FAMILIES = {"siglip": "Siglip", "clip": "CLIP"}  # -> transformers' {Name}VisionModel / {Name}VisionConfig
DEFAULT_FEATURE_LAYER = -2  # LLaVA's: the second-to-last layer's hidden states


def family_of(model_type: str) -> str | None:
    """"siglip" / "clip" for a full or vision-only config's model_type (siglip, siglip_vision_model, ...)."""
    return next((f for f in FAMILIES if model_type in (f, f"{f}_vision_model")), None)


def vision_classes(family: str):
    import transformers

    name = FAMILIES[family]
    return getattr(transformers, f"{name}VisionModel"), getattr(transformers, f"{name}VisionConfig")


def patch_tokens(spec: dict) -> int:
    """Feature vectors per image: one per patch."""
    return (spec["config"]["image_size"] // spec["config"]["patch_size"]) ** 2


def feature_width(spec: dict) -> int:
    return spec["config"]["hidden_size"]


class VisionEncoder(nn.Module):
    def __init__(self, spec: dict):
        """`spec` as ModelConfig.vision holds it: family, config (already cut at the feature layer), image_size,
        image_mean, image_std (see hf/vision.py, which writes it)."""
        super().__init__()
        model_class, config_class = vision_classes(spec["family"])
        self.net = model_class(config_class(**spec["config"]))
        self.net.post_layernorm = nn.Identity()  # it normalises only the last layer's output, which is not read
        self.drop_cls = spec["family"] == "clip"
        mean, std = torch.tensor(spec["image_mean"]).view(1, -1, 1, 1), torch.tensor(spec["image_std"]).view(1, -1, 1, 1)
        # ((x + 1) / 2 - mean) / std as one multiply-add on our [-1, 1] pixels
        self.register_buffer("scale", 1 / (2 * std), persistent=False)
        self.register_buffer("shift", (0.5 - mean) / std, persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] at the encoder's size -> (N, patch_tokens, width) features."""
        frozen = not any(p.requires_grad for p in self.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            x = (pixels * self.scale + self.shift).to(self.scale.dtype)
            hidden = self.net(pixel_values=x, output_hidden_states=True).hidden_states[-1]
        return hidden[:, 1:] if self.drop_cls else hidden

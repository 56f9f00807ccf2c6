"""A local SigLIP or CLIP checkpoint (vision-only or the full image-text model) -> the spec ModelConfig.vision holds
and the weights of trunk.vision, read by transformers itself (SiglipVisionModel / CLIPVisionModel.from_pretrained).

The spec keeps only what builds the network: the architecture keys of its config, cut at the feature layer, and
the processor's image size, mean and std (preprocessor_config.json, which the checkpoint must have).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from unifork.errors import UserError, param
from unifork.model.vision import DEFAULT_FEATURE_LAYER, VisionEncoder, family_of, vision_classes
from unifork.quiet import quiet_transformers

VISION_PREFIX = "trunk.vision.net."
SUPPORTED = "SigLIP or CLIP (a vision-only checkpoint or the full image-text model)"
BOOKKEEPING = ("transformers_version", "architectures", "dtype", "torch_dtype", "_name_or_path", "id2label",
               "label2id", "output_hidden_states", "return_dict", "output_attentions", "problem_type", "model_type")  # fmt: skip


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise UserError(f"missing {path}; {what}")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise UserError(f"corrupt {path}: {err}") from None


def _processor_size(processor: dict, path: Path) -> int:
    """The side the processor feeds the encoder: its crop if it crops, else its resize target."""
    size = processor.get("crop_size") if processor.get("do_center_crop") else processor.get("size")
    size = size or processor.get("size")
    if isinstance(size, int):
        return size
    if isinstance(size, dict):
        side = size.get("height", size.get("shortest_edge"))
        if isinstance(side, int) and size.get("width", side) == side:
            return side
    raise UserError(f"{path} states no square image size (size / crop_size); vision encoders here read square images")


def read_vision_encoder(model_dir: str | Path, feature_layer: int = DEFAULT_FEATURE_LAYER) -> tuple[dict, dict[str, torch.Tensor]]:
    """(spec for ModelConfig.vision, our trunk.vision.* tensors) of the checkpoint in model_dir."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"no such vision encoder directory {model_dir}; give a local {SUPPORTED} checkpoint")
    raw = _read_json(model_dir / "config.json", f"give a local {SUPPORTED} checkpoint folder")
    family = family_of(str(raw.get("model_type")))
    if family is None:
        raise UserError(f"{model_dir} is a {raw.get('model_type', 'untyped')} checkpoint; the vision encoder must be {SUPPORTED}")
    processor_path = model_dir / "preprocessor_config.json"
    processor = _read_json(processor_path, "the vision encoder's processor config (image size, mean, std) must sit "
                           "beside its weights, as save_pretrained of the model and its processor writes them")  # fmt: skip
    model_class, _ = vision_classes(family)
    try:
        with quiet_transformers():
            network = model_class.from_pretrained(str(model_dir)).float()
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load the vision encoder in {model_dir}: {str(err).splitlines()[0]}") from None
    n_layers = network.config.num_hidden_layers
    keep = n_layers + 1 + feature_layer if feature_layer < 0 else feature_layer  # hidden_states[keep]: after `keep` layers
    if not 1 <= keep <= n_layers:
        raise UserError(f"{param('vision_layer')} {feature_layer} is out of range for a {n_layers}-layer encoder; use "
                        f"1..{n_layers} or -{n_layers}..-1 (-2: the second-to-last, LLaVA's)")  # fmt: skip
    size = _processor_size(processor, processor_path)
    if not all(isinstance(processor.get(k), list) for k in ("image_mean", "image_std")):
        raise UserError(f"{processor_path} states no image_mean / image_std; the encoder's inputs must be normalised as it was trained")
    if size != network.config.image_size:
        raise UserError(f"{processor_path} prepares {size} px images but the encoder reads {network.config.image_size} px")
    config = {k: v for k, v in network.config.to_diff_dict().items()
              if k not in BOOKKEEPING and isinstance(v, int | float | str | bool)}  # fmt: skip
    config |= {"num_hidden_layers": keep, "image_size": size, "patch_size": network.config.patch_size,
               "hidden_size": network.config.hidden_size}  # fmt: skip
    if family == "siglip":
        config["vision_use_head"] = False  # its attention-pooled output is not what LLaVA-style models read
    spec = {"family": family, "config": config, "feature_layer": feature_layer, "source": str(model_dir.resolve()),
            "image_size": size, "image_mean": [float(v) for v in processor["image_mean"]],
            "image_std": [float(v) for v in processor["image_std"]]}  # fmt: skip
    with torch.device("meta"):
        wanted = VisionEncoder(spec).net.state_dict().keys()
    theirs = network.state_dict()
    return spec, {VISION_PREFIX + k: theirs[k] for k in wanted}

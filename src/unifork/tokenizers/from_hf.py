"""`unifork tokenizer from-hf`: a local pretrained image tokenizer checkpoint -> a unifork tokenizer directory.

Accepted, standalone or inside the full model (only the VQ part is read from the weights):

    transformers JanusVQVAE (config model_type "janus_vqgan"), or a Janus / Janus-Pro checkpoint ("janus")
    transformers Emu3VQVAE ("emu3_vqgan"), or an Emu3 checkpoint ("emu3")
    diffusers VQModel (config _class_name "VQModel"), or a diffusers pipeline holding one (model_index.json,
    e.g. aMUSEd: its vqvae/ folder)

The grid's downsampling and the codebook size come from the checkpoint's config; so does the image size where
the network fixes one (Janus: num_patches codes per side; a diffusers VQModel states sample_size). A full
checkpoint's preprocessor_config.json gives the pixel normalisation, [-1, 1] otherwise.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open

from unifork.errors import UserError, param
from unifork.tokenizers.image import CONFIG_FILE
from unifork.tokenizers.pretrained import PretrainedImageTokenizer, PretrainedTokenizerConfig, library_class, load_network

SUPPORTED = ("transformers JanusVQVAE or Janus / Janus-Pro, transformers Emu3VQVAE or Emu3, "
             "diffusers VQModel or a pipeline holding one (e.g. aMUSEd)")  # fmt: skip
CODEBOOK_SUFFIX = "quantize.embedding.weight"  # every supported VQ network has it: it marks where the VQ part sits
WEIGHT_FILES = ("model.safetensors", "diffusion_pytorch_model.safetensors")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as err:
        raise UserError(f"corrupt {path}: {err}") from None


def import_image_tokenizer(model_dir: str | Path, out: str | Path, image_size: int | None = None) -> dict:
    """Write a tokenizer directory for the checkpoint in `model_dir` into `out`; returns its config as a dict."""
    model_dir, out = Path(model_dir), Path(out)
    if not model_dir.is_dir():
        raise UserError(f"no such checkpoint directory {model_dir}; give a local folder ({SUPPORTED})")
    if (out / CONFIG_FILE).exists():
        raise UserError(f"{out} already holds a tokenizer; choose a new {param('out')} or delete it first")
    kind, network, config = _network(model_dir)
    tokenizer = PretrainedImageTokenizer(_config(kind, network, config, model_dir, image_size), network.float())
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save(tmp)
    tmp.rename(out)  # nothing half-written is left under `out`
    return json.loads(tokenizer.cfg.to_json())


def _network(model_dir: Path) -> tuple[str, torch.nn.Module, dict]:
    """(kind, the library's network with the checkpoint's weights, the config it was built from)."""
    index = model_dir / "model_index.json"
    if index.is_file():  # a diffusers pipeline: the component whose class is VQModel
        components = [name for name, spec in _read_json(index).items() if isinstance(spec, list) and spec[-1:] == ["VQModel"]]
        if not components:
            raise UserError(f"the diffusers pipeline in {model_dir} holds no VQModel; supported: {SUPPORTED}")
        return _network(model_dir / components[0])
    config_path = model_dir / CONFIG_FILE
    if not config_path.is_file():
        raise UserError(f"missing {config_path}; give a local checkpoint folder ({SUPPORTED})")
    config = _read_json(config_path)
    model_type, class_name = config.get("model_type"), config.get("_class_name")
    if class_name == "VQModel":
        return "diffusers_vqmodel", load_network("diffusers_vqmodel", model_dir), config
    if model_type in ("janus_vqgan", "emu3_vqgan"):
        kind = "janus_vqvae" if model_type == "janus_vqgan" else "emu3_vqvae"
        return kind, load_network(kind, model_dir), config
    if model_type in ("janus", "emu3"):
        import transformers

        kind = "janus_vqvae" if model_type == "janus" else "emu3_vqvae"
        full = transformers.AutoConfig.from_pretrained(str(model_dir))  # fills the VQ config from the full one's
        network = library_class(kind)._from_config(full.vq_config)
        _load_vq_weights(network, model_dir)
        return kind, network, full.vq_config.to_dict()
    found = class_name or model_type or "no model_type"
    raise UserError(f"{model_dir} is a {found} checkpoint, not an image tokenizer from-hf reads; supported: {SUPPORTED}")


def _weight_files(model_dir: Path) -> list[Path]:
    for name in WEIGHT_FILES:
        if (model_dir / name).is_file():
            return [model_dir / name]
        index = model_dir / f"{name}.index.json"
        if index.is_file():
            return [model_dir / shard for shard in sorted(set(_read_json(index).get("weight_map", {}).values()))]
    raise UserError(f"no safetensors weights in {model_dir}; from-hf reads safetensors only (re-save with save_pretrained)")


def _load_vq_weights(network: torch.nn.Module, model_dir: Path) -> None:
    """Only the tensors under the VQ part's prefix (found by its codebook's name) are read from the full model."""
    state, prefix = {}, None
    for file in _weight_files(model_dir):
        try:
            with safe_open(str(file), "pt") as f:
                keys = list(f.keys())
                if prefix is None:
                    prefix = next((k[: -len(CODEBOOK_SUFFIX)] for k in keys if k.endswith(CODEBOOK_SUFFIX)), None)
                state.update({k[len(prefix) :]: f.get_tensor(k) for k in keys if prefix is not None and k.startswith(prefix)})
        except (OSError, ValueError) as err:
            raise UserError(f"corrupt weights {file}: {err}") from None
    if prefix is None:
        raise UserError(f"the weights in {model_dir} hold no image tokenizer (no tensor named *{CODEBOOK_SUFFIX})")
    expected = set(network.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        which = f"missing tensor {missing[0]}" if missing else f"unexpected tensor {unexpected[0]}"
        raise UserError(f"the VQ weights under '{prefix}' in {model_dir} do not fit its config: {which}")
    network.load_state_dict(state, strict=True)


def _config(kind: str, network, config: dict, model_dir: Path, image_size: int | None) -> PretrainedTokenizerConfig:
    if kind == "diffusers_vqmodel":
        downsample = 2 ** (len(config["block_out_channels"]) - 1)
        num_codes = config["num_vq_embeddings"]
        latent_dim = config.get("vq_embed_dim") or config["latent_channels"]
        fixed, stated = None, config.get("sample_size")
    else:
        downsample = 2 ** (len(config["channel_multiplier"]) - 1)
        num_codes = config["num_embeddings"] if kind == "janus_vqvae" else config["codebook_size"]
        latent_dim = config["latent_channels"]
        fixed = config["num_patches"] * downsample if kind == "janus_vqvae" else None  # its decoder's grid is fixed
        stated = fixed
    size = _image_size(kind, image_size, fixed, stated if isinstance(stated, int) else None, downsample)
    mean, std = _normalisation(model_dir)
    return PretrainedTokenizerConfig(kind=kind, image_size=size, grid=size // downsample, num_codes=num_codes,
                                     latent_dim=latent_dim, pixel_mean=mean, pixel_std=std, source=str(model_dir.resolve()))  # fmt: skip


def _image_size(kind: str, given: int | None, fixed: int | None, stated: int | None, downsample: int) -> int:
    if fixed is not None and given not in (None, fixed):
        raise UserError(f"a {kind} checkpoint fixes its image size at {fixed} px ({fixed // downsample} codes per "
                        f"side); drop {param('image_size')} or give {fixed}")  # fmt: skip
    size = given or fixed or stated
    if size is None:
        raise UserError(f"the {kind} checkpoint's config states no image size; give {param('image_size')} "
                        f"(a multiple of its downsampling {downsample}, e.g. {downsample * 16})")  # fmt: skip
    if size < downsample or size % downsample:
        raise UserError(f"{param('image_size')} {size} is not divisible by the tokenizer's downsampling {downsample}; "
                        f"use a multiple of it, e.g. {max(1, round(size / downsample)) * downsample}")  # fmt: skip
    return size


def _normalisation(model_dir: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """image_mean / image_std of the checkpoint's preprocessor_config.json (where the full model has one)."""
    path = model_dir / "preprocessor_config.json"
    config = _read_json(path) if path.is_file() else {}
    if "image_mean" in config and "image_std" in config:
        return tuple(float(v) for v in config["image_mean"]), tuple(float(v) for v in config["image_std"])
    return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

"""A checkpoint directory: what the trainer writes and `Pipeline.from_pretrained` reads, in one place.

    DIR/config.json          ModelConfig
    DIR/model.safetensors    UniFork weights (a tied text head stored once)
    DIR/tokenizer.json       text tokenizer
    DIR/image_tokenizer/     image tokenizer (config.json + model.safetensors)
    DIR/recipe.toml          the fully resolved recipe that trained it: `unifork train --config` reproduces it
    DIR/provenance.json      which stage and step of that recipe the weights come from
    DIR/manifest.json        size and sha256 of every file, written last (training checkpoints)

Every file is written atomically and loaded strictly: a missing or damaged file fails with one line naming it.
The manifest catches what atomic writes cannot (a full disk, a bad copy, an edit by hand); directories without
one (fork-hf output, checkpoints from before manifests, or from before recipes) load as before.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from unifork.atomic import atomic_save_tensors, atomic_write_text
from unifork.errors import UserError
from unifork.model.config import ModelConfig
from unifork.model.unifork import TASKS, UniFork
from unifork.tokenizers.codec import ImageCodec
from unifork.tokenizers.loading import load_image_tokenizer
from unifork.tokenizers.text import TextTokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
IMAGE_TOKENIZER_DIR = "image_tokenizer"
RECIPE_FILE = "recipe.toml"
PROVENANCE_FILE = "provenance.json"
MANIFEST_FILE = "manifest.json"
_CHUNK = 1 << 24  # 16 MiB: hashing a multi-GB weights file streams it instead of reading it whole

# A tied text head is the text embedding under a second name: stored once (safetensors refuses shared storage).
TIED_HEAD, TIED_TO = "und.head.weight", "trunk.text_embed.weight"


# --- the whole directory --------------------------------------------------------------------------------------------


def save_pretrained(directory: str | Path, model: UniFork, text: TextTokenizer, image: ImageCodec,
                    recipe: str | None = None, provenance: dict | None = None) -> None:  # fmt: skip
    """Write everything `load_pretrained` reads back; `recipe` (TOML text) and `provenance` say how it was made."""
    directory = Path(directory)
    save_model(model, directory)
    text.save(directory)
    image.save(directory / IMAGE_TOKENIZER_DIR)
    if recipe is not None:
        atomic_write_text(directory / RECIPE_FILE, recipe)
    if provenance is not None:
        atomic_write_text(directory / PROVENANCE_FILE, json.dumps(provenance, indent=2))


def load_pretrained(directory: str | Path, task: str | None = None,
                    device: str | torch.device = "cpu") -> tuple[UniFork, TextTokenizer, ImageCodec]:  # fmt: skip
    """The model (both branches, or the trunk and `task`'s branch) and the tokenizers it was trained with."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"no such checkpoint directory: {directory}")
    _require_image_tokenizer(directory)
    model = load_model(directory, task=task, device=device)
    text, image = load_tokenizers(directory)
    check_compatible(model, text, image)
    return model, text, image.to(device)


def load_tokenizers(directory: str | Path) -> tuple[TextTokenizer, ImageCodec]:
    directory = Path(directory)
    _require_image_tokenizer(directory)
    return TextTokenizer.load(directory), load_image_tokenizer(directory / IMAGE_TOKENIZER_DIR)


def _require_image_tokenizer(directory: Path) -> None:
    if not (directory / IMAGE_TOKENIZER_DIR).is_dir():
        raise UserError(
            f"missing {directory / IMAGE_TOKENIZER_DIR}/; a unifork checkpoint directory holds the image "
            "tokenizer it was trained with (written by save_pretrained)"
        )


def check_compatible(model: UniFork, text: TextTokenizer, image: ImageCodec) -> None:
    """The tokenizers must produce ids and latents the model was built for; say which one does not."""
    cfg, icfg = model.cfg, image.cfg
    checks = [
        (text.vocab_size <= cfg.text_vocab_size, f"text tokenizer has {text.vocab_size} ids", f"text_vocab_size={cfg.text_vocab_size}"),
        # packed residual ids are read in base num_codes: at depth > 1 the counts must be equal, not just fit
        (icfg.num_codes <= cfg.image_vocab_size if icfg.residual_depth == 1 else icfg.num_codes == cfg.image_vocab_size,
         f"image tokenizer has {icfg.num_codes} codes", f"image_vocab_size={cfg.image_vocab_size}"),
        (icfg.grid**2 == cfg.image_tokens, f"image tokenizer gives {icfg.grid**2} codes per image", f"image_tokens={cfg.image_tokens}"),
        (icfg.residual_depth == cfg.residual_depth, f"image tokenizer has {icfg.residual_depth} residual levels",
         f"residual_depth={cfg.residual_depth}"),
        (cfg.und_input != "latents" or icfg.latent_dim == cfg.image_latent_dim, f"image tokenizer latents are "
         f"{icfg.latent_dim}-wide", f"image_latent_dim={cfg.image_latent_dim}"),
    ]  # fmt: skip
    for ok, have, want in checks:
        if not ok:
            raise UserError(f"tokenizer does not match the model: {have}, the model config has {want}")


# --- the weights ----------------------------------------------------------------------------------------------------


def _tied(model: UniFork) -> bool:
    return model.cfg.tie_word_embeddings and model.und is not None


def save_model(model: UniFork, directory: str | Path) -> None:
    """config.json + model.safetensors; a manifest already there described the files being replaced: it goes."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST_FILE).unlink(missing_ok=True)
    model.cfg.save(directory)
    state = model.state_dict()
    if _tied(model):
        del state[TIED_HEAD]
    atomic_save_tensors(state, directory / WEIGHTS_FILE)


def load_model(directory: str | Path, task: str | None = None, device: str | torch.device = "cpu") -> UniFork:
    """Load a checkpoint's model; `task="gen"` / `"und"` builds and loads the trunk and that branch only."""
    if task is not None and task not in TASKS:
        raise UserError(f"unknown task '{task}'; choose one of: {', '.join(TASKS)} (or none for both)")
    directory = Path(directory)
    verify_manifest(directory, names=(CONFIG_FILE, WEIGHTS_FILE))
    cfg = ModelConfig.load(directory)
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise UserError(f"missing model weights {path}; is {directory} a unifork checkpoint directory?")
    try:
        state = load_file(str(path), device=str(device))
    except Exception as err:  # safetensors raises its own types on truncated or garbled files
        raise UserError(f"corrupt model weights {path}: {err}") from None
    tasks = TASKS if task is None else (task,)
    with torch.device(device):
        model = UniFork(cfg, tasks=tasks)
    skipped = tuple(f"{t}." for t in TASKS if t not in tasks)
    state = {k: v for k, v in state.items() if not k.startswith(skipped)} if skipped else state
    expected = model.state_dict()
    if _tied(model):
        del expected[TIED_HEAD]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
            if keys
        )
        raise UserError(f"weights {path} do not match {directory / CONFIG_FILE} ({detail})")
    if _tied(model):
        state[TIED_HEAD] = state[TIED_TO]
    model.load_state_dict(state, strict=True)
    return model.eval()


# --- the manifest ---------------------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: str | Path) -> None:
    """Record every file under `directory` (paths relative to it); call it after the last of them is written."""
    directory = Path(directory)
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    entries = {p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in files}
    atomic_write_text(directory / MANIFEST_FILE, json.dumps({"files": entries}, indent=1))


def has_manifest(directory: str | Path) -> bool:
    return (Path(directory) / MANIFEST_FILE).is_file()


def verify_manifest(directory: str | Path, names: tuple[str, ...] | None = None) -> None:
    """Check the files the manifest lists (or only `names` of them); a directory without a manifest passes.

    The size is checked before the hash: a truncated file fails without being read.
    """
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not path.is_file():
        return
    try:
        entries = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"corrupt checkpoint manifest {path}: {err}") from None
    for name, entry in entries.items():
        if names is not None and name not in names:
            continue
        file = directory / name
        if not file.is_file():
            raise UserError(f"checkpoint file {file} is missing (listed in {path})")
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise UserError(f"checkpoint file {file} has {size} bytes, its manifest says {entry['bytes']}: truncated or replaced")
        if file_sha256(file) != entry["sha256"]:
            raise UserError(f"checkpoint file {file} does not match the sha256 in {path}: damaged or edited")

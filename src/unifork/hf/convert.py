"""fork-hf: a pretrained Qwen2/Llama checkpoint becomes a UniFork checkpoint, forked at layer K (paper, Sec. 3).

    HF layers [0, K)           -> trunk (shared)
    HF layers [K, L) + norm    -> und branch, with lm_head (or the tied embedding) as its text head
    a copy of [K, L) + norm    -> gen branch, with a new image-code head
    (any other sharing plan: the shared layers -> trunk, the per-task ones -> und and a copy -> gen)
    new                        -> image-code embeddings, image-position embeddings, the latent projector
    a SigLIP / CLIP checkpoint -> trunk.vision, the understanding input (with `vision_encoder_dir`; hf/vision.py)

The reference code initialises the generation branch by copying the original deep layers, as here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer

from unifork.checkpoint import save_pretrained
from unifork.errors import UserError, param
from unifork.hf.architectures import read_backbone
from unifork.hf.vision import read_vision_encoder
from unifork.hf.weights import VOCAB_TENSORS, read_hf_weights, take_und_path
from unifork.model.config import ModelConfig
from unifork.model.sharing import FORKED_SHAPES
from unifork.model.unifork import UniFork
from unifork.model.vision import DEFAULT_FEATURE_LAYER, feature_width
from unifork.tokenizers.codec import ImageCodec
from unifork.tokenizers.image import ImageTokenizer
from unifork.tokenizers.loading import load_image_tokenizer
from unifork.tokenizers.text import TOKENIZER_FILE, TextTokenizer

UNTRAINED_IMAGE_TOKENIZER = (
    "warning: no --image-tokenizer given, so the checkpoint gets a fresh, UNTRAINED image tokenizer: its codes say "
    "nothing about images. Train one with `unifork tokenizer train --out DIR` and pass --image-tokenizer DIR."
)


def fork_hf(model_dir: str | Path, fork_layer: int | None, out: str | Path, image_tokenizer_dir: str | Path | None = None,
            seed: int = 0, vision_encoder_dir: str | Path | None = None, vision_layer: int = DEFAULT_FEATURE_LAYER,
            sharing: str = "y") -> dict:  # fmt: skip
    """Write a unifork checkpoint directory (save_pretrained) at `out`; returns a summary of what was built.

    fork_layer places the split of the y and inverted_y plans (model/sharing.py); other plans need none.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"no such model directory: {model_dir} (give a local Hugging Face model directory)")
    backbone = read_backbone(model_dir)
    n_layers = backbone.shape["n_layers"]
    if fork_layer is None and sharing in FORKED_SHAPES:
        raise UserError(f"sharing '{sharing}' splits at a layer: give {param('fork_layer')} (0..{n_layers})")
    fork_layer = 0 if fork_layer is None else fork_layer
    if not 0 <= fork_layer <= n_layers:
        raise UserError(f"{param('fork_layer')} must be in [0, {n_layers}] for this {n_layers}-layer model, got {fork_layer}")
    hf_tokenizer = _read_tokenizer(model_dir)
    pretrained_ids = hf_tokenizer.get_vocab_size(with_added_tokens=True)
    known_ids = min(pretrained_ids, backbone.vocab_size)  # rows that a pretrained token id reads
    text = TextTokenizer(hf_tokenizer)  # appends our special tokens after the pretrained ids
    new_ids = range(pretrained_ids, text.vocab_size)
    image = load_image_tokenizer(image_tokenizer_dir) if image_tokenizer_dir is not None else _fresh_image_tokenizer(seed)
    icfg = image.cfg
    spec, vision_state = read_vision_encoder(vision_encoder_dir, vision_layer) if vision_encoder_dir is not None else ({}, {})
    cfg = ModelConfig(
        **backbone.shape,
        fork_layer=fork_layer,
        sharing=sharing,
        text_vocab_size=max(backbone.vocab_size, text.vocab_size),
        image_vocab_size=icfg.num_codes,
        residual_depth=icfg.residual_depth,  # at > 1 the gen branch gets a fresh depth head
        image_tokens=icfg.grid**2,
        image_latent_dim=feature_width(spec) if spec else icfg.latent_dim,
        **({"und_input": "vision", "vision": spec} if spec else {}),
    )
    pretrained = take_und_path(read_hf_weights(model_dir), cfg, model_dir)
    torch.manual_seed(seed)
    with torch.no_grad():
        model = UniFork(cfg)  # the new parts (image embeddings, projector, image head) keep our init
        state = model.state_dict()
        _check_shapes(pretrained, state, backbone.vocab_size, model_dir)
        for key in VOCAB_TENSORS:
            if key in pretrained:
                pretrained[key] = grow_vocab(pretrained[key], cfg.text_vocab_size, known_ids, new_ids)
        state.update(pretrained)
        state.update(vision_state)
        state.update(fork_copy(state))
        if cfg.tie_word_embeddings:
            state["und.head.weight"] = state["trunk.text_embed.weight"]
        model.load_state_dict(state, strict=True)
    if image_tokenizer_dir is None:  # only now: an input error above is the one line the user should see
        print(UNTRAINED_IMAGE_TOKENIZER, file=sys.stderr)
    save_pretrained(out, model, text, image)
    return {
        "architecture": backbone.architecture,
        "n_layers": n_layers,
        "sharing": cfg.plan,
        "text_vocab_size": cfg.text_vocab_size,
        "added_tokens": text.vocab_size - pretrained_ids,
        "mean_init_rows": len(set(new_ids) | set(range(backbone.vocab_size, cfg.text_vocab_size))),
        "parameters": model.param_counts(),
        "und_input": cfg.und_input,
    }


def fork_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """gen.layers.* and gen.norm.* as clones of the und branch's: equal now, trained independently later."""
    return {"gen." + key[len("und."):]: value.clone() for key, value in state.items()
            if key.startswith(("und.layers.", "und.norm."))}  # fmt: skip


def grow_vocab(matrix: torch.Tensor, rows: int, known: int, new: range) -> torch.Tensor:
    """(rows, C): the checkpoint's rows as they are, but for the rows given to our added tokens (`new`) and rows
    past the checkpoint's, which start at the mean of the `known` rows (those a pretrained token id reads).

    The checkpoint's padding rows past its tokenizer stay untouched, so the forked model's next-token
    distribution equals the original's on every row but the new tokens'. The mean keeps new tokens' embeddings
    and logits in the range of trained ones, so they start neither huge nor dominant (as transformers'
    resize_token_embeddings does).
    """
    mean = matrix[:known].mean(0)
    out = mean.expand(rows, -1).clone()
    out[: matrix.shape[0]] = matrix
    out[new.start : new.stop] = mean
    return out


def _check_shapes(pretrained: dict, state: dict, hf_vocab: int, source: Path) -> None:
    for key, tensor in pretrained.items():
        want = (hf_vocab, state[key].shape[1]) if key in VOCAB_TENSORS else tuple(state[key].shape)
        if tuple(tensor.shape) != want:
            raise UserError(f"weights in {source} do not match its config.json: {key} has shape {tuple(tensor.shape)}, expected {want}")


def _read_tokenizer(model_dir: Path) -> Tokenizer:
    path = model_dir / TOKENIZER_FILE
    if not path.is_file():
        raise UserError(f"missing {path}; fork-hf needs the checkpoint's fast tokenizer file ({TOKENIZER_FILE})")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception on malformed JSON
        raise UserError(f"corrupt text tokenizer file {path}: {str(err).splitlines()[0]}") from None


def _fresh_image_tokenizer(seed: int) -> ImageCodec:
    torch.manual_seed(seed)
    return ImageTokenizer()

"""Per-layer image-text alignment inside a UniFork model, on each task's path.

UniFork (arXiv 2506.17202, Sec. 3) motivates the Y shape with this measurement: along an understanding model,
image-text alignment keeps rising with depth; along a generation model it rises in shallow layers and falls in
deep ones, which turn to spatial detail. Here each world scene and its caption go through both paths:

    und: [BOS] <img> image-input </img> caption      (trunk + und branch; the caption as the answer)
    gen: [BOS] caption <img> codes                   (trunk + gen branch; the image's real codes)

At every layer the image positions and the caption positions of a sample are pooled into one vector each, and
the two sets of N vectors are compared with mutual k-NN alignment.
"""

from __future__ import annotations

import numpy as np
import torch

from unifork.analysis.knn_alignment import chance_alignment, check_sizes, layerwise_alignment
from unifork.analysis.pooling import check_pooling, pool
from unifork.images import fit_image
from unifork.model.unifork import CODE, IGNORE, LATENT, Batch
from unifork.sequences import Example, SequenceBuilder
from unifork.tokenizers.image import images_to_tensor
from unifork.und_images import und_inputs
from unifork.world import World, canonical_caption


@torch.inference_mode()
def model_alignment(pipeline, n: int = 256, k: int = 10, pooling: str = "mean", split: str = "test", seed: int = 0,
                    batch_size: int = 64) -> dict:  # fmt: skip
    """Alignment per layer (0 = embeddings) of every loaded path of `pipeline` (a Pipeline) on n world scenes."""
    check_sizes(n, k)
    check_pooling(pooling)
    model, builder = pipeline.model, pipeline.builder
    cfg = model.cfg
    captions, codes, latents = world_pairs(pipeline, n, split, seed, batch_size)
    caption_lengths = [len(builder.text.encode(c)) for c in captions]
    result = {
        "model": f"UniFork, {cfg.n_layers} layers, d_model {cfg.d_model}, und_input {cfg.und_input}",
        "layers": list(range(cfg.n_layers + 1)),
        "sharing": cfg.plan,
        "n_layers": cfg.n_layers,
        "k": k,
        "n_samples": n,
        "pooling": pooling,
        "split": split,
        "seed": seed,
        "chance": chance_alignment(n, k),
        "paths": list(model.tasks),
    }
    for task in model.tasks:
        if task == "und":
            examples = [understand_caption(builder, codes[i], _row(latents, i), captions[i]) for i in range(n)]
        else:
            examples = [generate_from_caption(builder, codes[i], captions[i]) for i in range(n)]
        masks = caption_masks(task, examples, caption_lengths)
        image, text = path_features(model, builder, task, examples, masks, pooling, batch_size)
        result[task] = layerwise_alignment(image, text, k)
    return result


def world_pairs(pipeline, n: int, split: str, seed: int, batch_size: int):
    """n scenes of a split: canonical captions, codes (n, L) and the understanding input (latents or pixels) or None."""
    world = World(seed=seed, split=split)
    tokenizer = pipeline.image_tokenizer
    samples = [world.sample(i) for i in range(n)]
    captions = [canonical_caption(s.scene) for s in samples]  # names every object, so it pairs with the whole image
    codes, und = [], []
    for start in range(0, n, batch_size):
        chunk = [s.image for s in samples[start : start + batch_size]]
        pixels = np.stack([fit_image(image, tokenizer.cfg.image_size) for image in chunk])
        codes.append(tokenizer.encode(images_to_tensor(pixels).to(pipeline.device)).cpu())  # the generation path's
        _, inputs = und_inputs(pipeline.model.cfg, tokenizer, chunk, pipeline.device)
        if inputs is not None:
            und.append(inputs.cpu())
    return captions, torch.cat(codes), torch.cat(und) if und else None


def understand_caption(builder: SequenceBuilder, codes: torch.Tensor, latents: torch.Tensor | None,
                       caption: str) -> Example:  # fmt: skip
    """[BOS] <img> image-input </img> caption: the caption as the answer to an empty question."""
    return builder.understand_turns(codes, latents, [("", caption)])


def generate_from_caption(builder: SequenceBuilder, codes: torch.Tensor, caption: str) -> Example:
    """[BOS] caption <img> codes: the generation prompt followed by all of the image's codes, as decoding feeds them."""
    prompt = builder.generate(caption)
    m = len(codes)
    return Example("gen", prompt.tokens + codes.tolist(), prompt.kinds + [CODE] * m, prompt.targets + [IGNORE] * m)


def caption_masks(task: str, examples: list[Example], caption_lengths: list[int]) -> list[list[bool]]:
    """Which positions of each example hold its caption's tokens."""
    if task == "und":  # the caption ends the sequence (its EOS is never fed)
        return [[False] * (len(e.tokens) - m) + [True] * m for e, m in zip(examples, caption_lengths)]
    return [[False] + [True] * m + [False] * (len(e.tokens) - 1 - m) for e, m in zip(examples, caption_lengths)]  # after BOS


def path_features(model, builder: SequenceBuilder, task: str, examples: list[Example], caption_masks: list[list[bool]],
                  pooling: str, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Pooled image and caption features at every layer of `task`'s path: two float (n_layers + 1, N, C) tensors."""
    device = next(model.parameters()).device
    image_chunks, text_chunks = [], []
    for start in range(0, len(examples), batch_size):
        batch: Batch = builder.collate(examples[start : start + batch_size]).to(device)
        captions = left_pad(caption_masks[start : start + batch_size], batch.tokens.shape[1]).to(device)
        image = (batch.kinds == CODE) | (batch.kinds == LATENT)  # (B, T)
        states = model.hidden_states(task, batch)
        image_chunks.append(torch.stack([pool(h, image, pooling) for h in states]).float().cpu())  # (layers, B, C)
        text_chunks.append(torch.stack([pool(h, captions, pooling) for h in states]).float().cpu())
    return torch.cat(image_chunks, dim=1), torch.cat(text_chunks, dim=1)


def left_pad(masks: list[list[bool]], width: int) -> torch.Tensor:
    """(B, width) bool, each row right-aligned like SequenceBuilder.collate left-pads its tokens."""
    out = torch.zeros(len(masks), width, dtype=torch.bool)
    for row, mask in enumerate(masks):
        out[row, width - len(mask) :] = torch.tensor(mask, dtype=torch.bool)
    return out


def _row(latents: torch.Tensor | None, i: int) -> torch.Tensor | None:
    return None if latents is None else latents[i]

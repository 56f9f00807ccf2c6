"""A checkpoint directory as one object: prompts in, images out; images and questions in, answers out.

    DIR/config.json          ModelConfig
    DIR/model.safetensors    UniFork weights
    DIR/tokenizer.json       text tokenizer
    DIR/image_tokenizer/     image tokenizer (config.json + model.safetensors)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unifork.errors import UserError
from unifork.inference.sampler import MAX_IMAGES, answer_questions, require_branch, sample_image_codes
from unifork.model.checkpoint import load_model, save_model
from unifork.model.unifork import UniFork
from unifork.sequences import SequenceBuilder
from unifork.tokenizers.image import ImageTokenizer, images_to_tensor, tensor_to_images
from unifork.tokenizers.text import TextTokenizer
from unifork.world import WorldConfig, load_image, to_canvas_rgb

IMAGE_TOKENIZER_DIR = "image_tokenizer"


def save_pretrained(directory: str | Path, model: UniFork, text: TextTokenizer, image: ImageTokenizer) -> None:
    """Write everything Pipeline.from_pretrained reads back."""
    directory = Path(directory)
    save_model(model, directory)
    text.save(directory)
    image.save(directory / IMAGE_TOKENIZER_DIR)


class Pipeline:
    def __init__(self, model: UniFork, text: TextTokenizer, image: ImageTokenizer):
        check_compatible(model, text, image)
        self.model, self.text_tokenizer, self.image_tokenizer = model, text, image
        self.builder = SequenceBuilder(text, model.cfg)
        self.device = next(model.parameters()).device

    @classmethod
    def from_pretrained(cls, directory: str | Path, task: str | None = None, device: str = "cpu") -> "Pipeline":
        """Load a checkpoint; task="gen" or "und" loads the trunk and that branch only."""
        directory = Path(directory)
        if not directory.is_dir():
            raise UserError(f"no such checkpoint directory: {directory}")
        if not (directory / IMAGE_TOKENIZER_DIR).is_dir():
            raise UserError(
                f"missing {directory / IMAGE_TOKENIZER_DIR}/; a unifork checkpoint directory holds the image "
                "tokenizer it was trained with (written by save_pretrained)"
            )
        model = load_model(directory, task=task, device=device)
        text = TextTokenizer.load(directory)
        image = ImageTokenizer.load(directory / IMAGE_TOKENIZER_DIR).to(device)
        return cls(model, text, image)

    def generate_codes(self, prompt: str, n: int = 4, cfg_scale: float = 3.0, temperature: float = 1.0,
                       top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> torch.Tensor:  # fmt: skip
        """Image codes (n, image_tokens) for one prompt; the same seed gives the same codes."""
        if not isinstance(n, int) or not 1 <= n <= MAX_IMAGES:
            raise UserError(f"n (the number of images) must be between 1 and {MAX_IMAGES}, got {n}")
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
            raise UserError(f"seed must be an integer in [0, 2**63), got {seed}")
        generator = torch.Generator(device=self.device).manual_seed(seed)
        return sample_image_codes(self.model, self.builder, [prompt] * n, cfg_scale, temperature, top_k, top_p, generator)

    def generate(self, prompt: str, n: int = 4, cfg_scale: float = 3.0, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> list[Image.Image]:  # fmt: skip
        """n RGB images for one prompt; the same seed gives the same images."""
        codes = self.generate_codes(prompt, n, cfg_scale, temperature, top_k, top_p, seed)
        return self.decode_codes(codes)

    def decode_codes(self, codes: torch.Tensor) -> list[Image.Image]:
        return [Image.fromarray(a) for a in tensor_to_images(self.image_tokenizer.decode(codes.to(self.device)))]

    def ask(self, image, question: str, max_new_tokens: int = 32) -> str:
        """A greedy answer about one image: a path, a PIL image or a uint8 array of any size and mode."""
        return self.ask_batch([image], [question], max_new_tokens)[0]

    def ask_batch(self, images: list, questions: list[str], max_new_tokens: int = 32) -> list[str]:
        if len(images) != len(questions):
            raise UserError(f"got {len(images)} images but {len(questions)} questions; give one image per question")
        if not all(isinstance(q, str) and q.strip() for q in questions):
            raise UserError("a question is empty; ask e.g. 'what color is the circle?'")
        require_branch(self.model, "und")
        canvas = WorldConfig(canvas=self.image_tokenizer.cfg.image_size)
        pixels = np.stack([_to_rgb(img, canvas) for img in images])  # (N, H, W, 3) uint8
        x = images_to_tensor(pixels).to(self.device)
        with torch.inference_mode():
            codes = self.image_tokenizer.encode(x)
            latents = self.image_tokenizer.encode_latents(x) if self.model.cfg.und_input == "latents" else None
        return answer_questions(self.model, self.builder, codes, latents, questions, max_new_tokens)


def check_compatible(model: UniFork, text: TextTokenizer, image: ImageTokenizer) -> None:
    """The tokenizers must produce ids and latents the model was built for; say which one does not."""
    cfg, icfg = model.cfg, image.cfg
    checks = [
        (text.vocab_size <= cfg.text_vocab_size, f"text tokenizer has {text.vocab_size} ids", f"text_vocab_size={cfg.text_vocab_size}"),
        (icfg.num_codes <= cfg.image_vocab_size, f"image tokenizer has {icfg.num_codes} codes", f"image_vocab_size={cfg.image_vocab_size}"),
        (icfg.grid**2 == cfg.image_tokens, f"image tokenizer gives {icfg.grid**2} codes per image", f"image_tokens={cfg.image_tokens}"),
        (icfg.latent_dim == cfg.image_latent_dim, f"image tokenizer latents are {icfg.latent_dim}-wide", f"image_latent_dim={cfg.image_latent_dim}"),
    ]  # fmt: skip
    for ok, have, want in checks:
        if not ok:
            raise UserError(f"tokenizer does not match the model: {have}, the model config has {want}")


def image_grid(images: list[Image.Image], gap: int = 2) -> Image.Image:
    """Images in a near-square grid, row by row, with `gap` white pixels between them."""
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w + (cols - 1) * gap, rows * h + (rows - 1) * gap), (255, 255, 255))
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid.paste(img, (c * (w + gap), r * (h + gap)))
    return grid


def _to_rgb(image, canvas: WorldConfig) -> np.ndarray:
    if isinstance(image, (str, Path)):
        return load_image(image, canvas)
    return to_canvas_rgb(image, canvas)

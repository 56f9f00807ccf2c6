"""A checkpoint directory as one object: prompts in, images out; images and questions in, answers out.

The directory format (weights, tokenizers, recipe, manifest) is unifork.checkpoint's.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image

from unifork.checkpoint import check_compatible, load_pretrained
from unifork.errors import UserError, param
from unifork.inference.answers import Answer, AnswerRequest, sample_answers
from unifork.inference.sampler import check_images, require_branch, sample_image_codes
from unifork.inference.settings import DEFAULT_ANSWER_TOKENS, DEFAULT_IMAGES, DEFAULTS, SamplingSettings
from unifork.model.unifork import UniFork
from unifork.sequences import SequenceBuilder
from unifork.tokenizers.codec import ImageCodec
from unifork.tokenizers.image import tensor_to_images
from unifork.tokenizers.text import TextTokenizer
from unifork.und_images import und_inputs


class Pipeline:
    def __init__(self, model: UniFork, text: TextTokenizer, image: ImageCodec):
        check_compatible(model, text, image)
        self.model, self.text_tokenizer, self.image_tokenizer = model, text, image
        self.builder = SequenceBuilder(text, model.cfg)
        self.device = next(model.parameters()).device

    @classmethod
    def from_pretrained(cls, directory: str | Path, task: str | None = None, device: str = "cpu") -> "Pipeline":
        """Load a checkpoint; task="gen" or "und" loads the trunk and that branch only."""
        return cls(*load_pretrained(directory, task=task, device=device))

    def generate_codes(self, prompt: str, n: int = DEFAULT_IMAGES, cfg_scale: float = DEFAULTS.cfg_scale,
                       temperature: float = DEFAULTS.temperature, top_k: int = DEFAULTS.top_k,
                       top_p: float = DEFAULTS.top_p, seed: int = 0,
                       speculative: int = DEFAULTS.speculative) -> torch.Tensor:  # fmt: skip
        """Image codes (n, image_tokens) for one prompt; the same seed gives the same codes."""
        check_images(n)
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
            raise UserError(f"{param('seed')} must be an integer in [0, 2**63), got {seed}")
        settings = SamplingSettings(cfg_scale, temperature, top_k, top_p, speculative)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        return sample_image_codes(self.model, self.builder, [prompt] * n, settings, generator)

    def generate(self, prompt: str, n: int = DEFAULT_IMAGES, cfg_scale: float = DEFAULTS.cfg_scale,
                 temperature: float = DEFAULTS.temperature, top_k: int = DEFAULTS.top_k,
                 top_p: float = DEFAULTS.top_p, seed: int = 0,
                 speculative: int = DEFAULTS.speculative) -> list[Image.Image]:  # fmt: skip
        """n RGB images for one prompt (settings: unifork.inference.settings); the same seed gives the same images."""
        codes = self.generate_codes(prompt, n, cfg_scale, temperature, top_k, top_p, seed, speculative)
        return self.decode_codes(codes)

    def decode_codes(self, codes: torch.Tensor) -> list[Image.Image]:
        return [Image.fromarray(a) for a in tensor_to_images(self.image_tokenizer.decode(codes.to(self.device)))]

    def ask(self, image, question: str, max_new_tokens: int = DEFAULT_ANSWER_TOKENS) -> str:
        """A greedy answer about one image: a path, bytes, a PIL image or an array of any size, mode and dtype,
        prepared as training data is (unifork.images.fit_image)."""
        return self.ask_batch([image], [question], max_new_tokens)[0]

    def ask_batch(self, images: list, questions: list[str], max_new_tokens: int = DEFAULT_ANSWER_TOKENS) -> list[str]:
        """Greedy answers, one per (image, question)."""
        if len(images) != len(questions):
            raise UserError(f"got {len(images)} images but {len(questions)} questions; give one image per question")
        if max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        requests = [AnswerRequest(q, max_new_tokens=max_new_tokens) for q in questions]
        return [answers[0].text for answers in self.answer(images, requests)]

    def answer(self, images: list, requests: list[AnswerRequest]) -> list[list[Answer]]:
        """request.n answers per (image, request), each request with its own settings and generator
        (inference.answers.sample_answers); images as for `ask`."""
        if len(images) != len(requests):
            raise UserError(f"got {len(images)} images but {len(requests)} questions; give one image per question")
        if not all(isinstance(r.question, str) and r.question.strip() for r in requests):
            raise UserError("a question is empty; ask e.g. 'what color is the circle?'")
        require_branch(self.model, "und")
        with torch.inference_mode():
            codes, latents = und_inputs(self.model.cfg, self.image_tokenizer, images, self.device)
        return sample_answers(self.model, self.builder, codes, latents, requests)


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

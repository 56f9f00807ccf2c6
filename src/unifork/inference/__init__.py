"""Inference: KV-cache sampling over a UniFork model (sampler) and a checkpoint-directory pipeline around it."""

from unifork.inference.pipeline import Pipeline, image_grid, save_pretrained
from unifork.inference.sampler import answer_questions, sample_image_codes

__all__ = ["Pipeline", "answer_questions", "image_grid", "sample_image_codes", "save_pretrained"]

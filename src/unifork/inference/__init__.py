"""Inference: KV-cache sampling over a UniFork model (sampler), its settings, and a pipeline around a checkpoint
directory."""

from importlib import import_module

# Loaded on first use (PEP 562): `unifork.inference.settings` has no torch, and importing it must not load the
# model code, so that the CLI can show the sampling defaults in its help at once.
_HOMES = {
    "Pipeline": "pipeline", "image_grid": "pipeline",
    "CodeRequest": "sampler", "sample_codes_per_request": "sampler", "sample_image_codes": "sampler",
    "AnswerRequest": "answers", "answer_questions": "answers", "sample_answers": "answers",
    "DEFAULT_CFG_SCALE": "settings", "SamplingSettings": "settings",
}  # fmt: skip
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'unifork.inference' has no attribute '{name}'")
    return getattr(import_module(f"unifork.inference.{_HOMES[name]}"), name)

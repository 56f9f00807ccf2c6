"""A study's plan names: what `--plans` accepts, and the model config each one gives."""

from __future__ import annotations

from dataclasses import replace

from unifork.errors import UserError
from unifork.model.config import ModelConfig
from unifork.model.sharing import FORKED_SHAPES, SHAPES

RECOMMENDED = "recommended"  # analysis/recommend.py's plan, read from the first seed's fully shared model


def plan_config(name: str, model: ModelConfig) -> ModelConfig:
    """`model` with the sharing of a study plan name: a shape (y and inverted_y split at L/2), y:K or
    inverted_y:K (split at layer K), or one letter per layer (s shared, t per task)."""
    shape, _, fork = name.partition(":")
    if fork:
        if shape not in FORKED_SHAPES or not fork.isdigit() or not 0 <= int(fork) <= model.n_layers:
            raise UserError(f"study plan '{name}': a fork point is y:K or inverted_y:K with K in 0..{model.n_layers}")
        return replace(model, sharing=shape, fork_layer=int(fork))
    if shape in SHAPES:
        return replace(model, sharing=shape, fork_layer=model.n_layers // 2)
    try:
        return replace(model, sharing=shape)
    except UserError as err:
        raise UserError(f"study plan '{name}': {err}; or name a plan: {', '.join((*SHAPES, 'y:K', RECOMMENDED))}") from None

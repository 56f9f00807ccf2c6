"""The training recipes that ship with unifork, as package data: a plain `pip install .` has them too."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

RECIPES_DIR = Path(str(files(__name__)))


def packaged_recipes() -> list[str]:
    """Names of the shipped recipes (file names without .toml), e.g. "quickstart"."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


def packaged_recipe(name: str) -> Path | None:
    """The shipped recipe of that name, or None."""
    path = RECIPES_DIR / f"{name}.toml"
    return path if name in packaged_recipes() else None

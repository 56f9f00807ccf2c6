"""Training recipes: a TOML file with the model, the data and a list of stages (UniFork trains in stages).

Every key is checked: an unknown key or a wrong type is an error naming the key, not a silent default.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from unifork.errors import UserError
from unifork.model.config import ModelConfig, named_config

PARAM_GROUPS_HELP = "trunk.*, trunk.projector.*, trunk.layers.*, und.*, gen.*, * (fnmatch patterns over parameter names)"


@dataclass(frozen=True)
class StageConfig:
    name: str
    steps: int
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 20
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    mix: dict = field(default_factory=lambda: {"und": 0.5, "gen": 0.5})  # fraction of each batch per task
    train: tuple = ("*",)  # which parameters train; the rest are frozen
    save_every: int = 100


@dataclass(frozen=True)
class DataConfig:
    seed: int = 0
    pool_size: int = 8000  # world samples encoded once by the frozen image tokenizer and reused
    caption_dropout: float = 0.1  # captions replaced by the null condition, for classifier-free guidance
    und_turns: int = 4  # questions packed per understanding example (one image, several answers)


@dataclass(frozen=True)
class Recipe:
    model: ModelConfig
    data: DataConfig
    stages: tuple[StageConfig, ...]
    tokenizer_dir: str = ""  # empty: train (or reuse) one in OUT/tokenizer
    seed: int = 0


def _check_keys(table: dict, cls, where: str) -> dict:
    known = {f.name: f.type for f in fields(cls)}
    for key, value in table.items():
        if key not in known:
            raise UserError(f"unknown key '{key}' in {where}; known keys: {', '.join(known)}")
        expected = {"int": int, "float": (int, float), "str": str, "dict": dict, "tuple": list}.get(known[key])
        if expected and (not isinstance(value, expected) or isinstance(value, bool)):
            raise UserError(f"'{key}' in {where} must be of type {known[key]}, got {value!r}")
    return table


def _stage(table: dict, index: int, source: str) -> StageConfig:
    where = f"stage {index + 1} of {source}"
    table = dict(_check_keys(table, StageConfig, where))
    for key in ("name", "steps"):
        if key not in table:
            raise UserError(f"{where} has no '{key}'")
    if "train" in table:
        table["train"] = tuple(table["train"])
    stage = StageConfig(**table)
    if stage.steps < 1 or stage.batch_size < 1:
        raise UserError(f"{where}: steps and batch_size must be at least 1")
    unknown_tasks = set(stage.mix) - {"und", "gen"}
    if unknown_tasks or not stage.mix or sum(stage.mix.values()) <= 0:
        raise UserError(f"{where}: mix must weight the tasks 'und' and/or 'gen', got {stage.mix}")
    return stage


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such recipe file: {path}; see configs/ for examples")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"invalid TOML in {path}: {err}") from None
    allowed = {"model", "data", "stages", "tokenizer_dir", "seed"}
    for key in raw:
        if key not in allowed:
            raise UserError(f"unknown key '{key}' in {path}; known keys: {', '.join(sorted(allowed))}")
    model_table = dict(raw.get("model", {}))
    size = model_table.pop("size", "tiny")
    model = named_config(size)
    model = ModelConfig.from_dict({**model.__dict__, **model_table}, source=f"[model] of {path}")
    data = DataConfig(**_check_keys(raw.get("data", {}), DataConfig, f"[data] of {path}"))
    stages = tuple(_stage(t, i, str(path)) for i, t in enumerate(raw.get("stages", [])))
    if not stages:
        raise UserError(f"{path} defines no [[stages]]")
    if len({s.name for s in stages}) != len(stages):
        raise UserError(f"stage names in {path} must be unique")
    return Recipe(model=model, data=data, stages=stages, tokenizer_dir=raw.get("tokenizer_dir", ""), seed=raw.get("seed", 0))

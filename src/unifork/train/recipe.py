"""Training recipes: a TOML file with the model, the data and a list of stages (UniFork trains in stages).

Every key is checked: an unknown key or a wrong type is an error naming the key, not a silent default.
A recipe either builds a fresh model from its [model] table, or starts from `init_checkpoint` (e.g. the output of
`unifork fork-hf`), whose config and tokenizers then fix the model; a [model] table may only restate them.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from unifork.config_fields import checked_fields
from unifork.configs import packaged_recipe, packaged_recipes
from unifork.data.config import DataConfig
from unifork.data.spec import check_source, parse_source
from unifork.errors import UserError
from unifork.model.config import ModelConfig, named_config
from unifork.world.questions import QUESTION_TYPES

PARAM_GROUPS_HELP = ("trunk.*, trunk.projector.*, trunk.layers.*, und.*, gen.*, * (fnmatch patterns over parameter "
                     "names; a vision encoder trains only when named: trunk.vision.*)")  # fmt: skip
OPTIMIZERS = ("adamw", "muon")
# Filled in from the tokenizers (and a vision encoder), not the [model] table (trainer._model_config), so a size
# preset says nothing of them.
DICTATED_FIELDS = ("text_vocab_size", "image_vocab_size", "image_tokens", "image_latent_dim", "residual_depth", "und_input",
                   "vision")  # fmt: skip


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
    train: tuple = ("*",)  # which parameters train; the rest are frozen (a tied head matches und.head.* too)
    save_every: int = 100
    keep_last: int = 2  # mid-stage checkpoints kept on disk; older ones are deleted after each save
    max_bad_steps: int = 5  # steps in a row with a non-finite loss or gradient (each skipped) before the run stops
    optimizer: str = "adamw"  # or "muon": Muon on the blocks' matrices, AdamW on the rest (train/muon.py)


@dataclass(frozen=True)
class TokenizerTable:
    """[tokenizer]: how a recipe without tokenizer_dir makes its tokenizers in OUT/tokenizer, trained on its [data]
    source (`unifork tokenizer train --data`); 0 or empty keeps the tokenizer size preset's value."""

    size: str = "default"  # the preset (train/image_tokenizer.py RECIPES)
    steps: int = 0
    batch_size: int = 0
    image_size: int = 0
    downsample: int = 0
    residual_depth: int = 0  # codes per position (residual quantization); the model gets a depth head at > 1
    eval_source: str = ""  # held-out images for its report; empty: 1 in 50 records of the data
    image_tokenizer: str = ""  # use this image tokenizer directory as is (e.g. `tokenizer from-hf`): only text trains


@dataclass(frozen=True)
class ReportTable:
    """[report]: what `unifork quickstart --recipe` measures beyond the final checkpoint's evaluation."""

    learning_curve: bool = False  # a small evaluation of every step checkpoint the stages kept (unifork/learning_curve.py)
    curve_vqa_scenes: int = 40  # unseen test scenes per point (~420 questions)
    curve_prompts: int = 8  # ShapeEval prompts per category per point, 2 images each (96 images)


@dataclass(frozen=True)
class LoggingTable:
    """[logging]: where training curves go besides metrics.jsonl, which is always written."""

    tensorboard: bool = True  # scalars in OUT/tensorboard/ (`tensorboard --logdir runs/`)


@dataclass(frozen=True)
class Recipe:
    model: ModelConfig
    data: DataConfig
    stages: tuple[StageConfig, ...]
    tokenizer_dir: str = ""  # empty: train (or reuse) one in OUT/tokenizer
    seed: int = 0
    init_checkpoint: str = ""  # a checkpoint directory to start from (weights, config, tokenizers); empty: fresh
    model_keys: dict = field(default_factory=dict)  # what [model] stated (a `size` as its keys), checked against it
    tokenizer: TokenizerTable = TokenizerTable()
    vision_encoder: str = ""  # a SigLIP / CLIP checkpoint whose features are the understanding input (hf/vision.py)
    vision_layer: int = -2  # its hidden layer read (LLaVA's: the second-to-last)
    report: ReportTable = ReportTable()
    logging: LoggingTable = LoggingTable()


def _stage(table: dict, index: int, source: str) -> StageConfig:
    where = f"stage {index + 1} of {source}"
    table = checked_fields(table, StageConfig, where, non_negative=True)
    for key in ("name", "steps"):
        if key not in table:
            raise UserError(f"{where} has no '{key}'")
    stage = StageConfig(**table)
    for key in ("steps", "batch_size", "save_every", "keep_last", "max_bad_steps"):
        if getattr(stage, key) < 1:
            raise UserError(f"{where}: {key} must be at least 1, got {getattr(stage, key)}")
    if not all(isinstance(pattern, str) for pattern in stage.train):
        raise UserError(f"{where}: train must be a list of parameter-name patterns ({PARAM_GROUPS_HELP}), got {list(stage.train)}")
    if stage.optimizer not in OPTIMIZERS:
        raise UserError(f"{where}: optimizer must be one of {', '.join(OPTIMIZERS)}, got '{stage.optimizer}'")
    weights = list(stage.mix.values())
    unknown_tasks = set(stage.mix) - {"und", "gen"}
    numbers = all(isinstance(w, int | float) and not isinstance(w, bool) and 0 <= w < math.inf for w in weights)
    if unknown_tasks or not numbers or sum(weights) <= 0:
        raise UserError(f"{where}: mix must weight the tasks 'und' and/or 'gen' with numbers >= 0, got {stage.mix}")
    return stage


def find_recipe(path: str | Path) -> Path:
    """A recipe file, or the name of a recipe that ships with unifork (unifork/configs/, e.g. "quickstart")."""
    path = Path(path)
    if path.is_file():
        return path
    packaged = packaged_recipe(str(path)) if path.suffix == "" and len(path.parts) == 1 else None
    if packaged is None:
        raise UserError(f"no such recipe file: {path}; give a TOML file or a packaged recipe: {', '.join(packaged_recipes())}")
    return packaged


def load_recipe(path: str | Path) -> Recipe:
    path = find_recipe(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"invalid TOML in {path}: {err}") from None
    allowed = {"model": dict, "data": dict, "stages": list, "tokenizer_dir": str, "seed": int, "init_checkpoint": str,
               "tokenizer": dict, "vision_encoder": str, "vision_layer": int, "report": dict, "logging": dict}  # fmt: skip
    for key, value in raw.items():
        if key not in allowed:
            raise UserError(f"unknown key '{key}' in {path}; known keys: {', '.join(sorted(allowed))}")
        if not isinstance(value, allowed[key]) or isinstance(value, bool) or (key == "seed" and value < 0):
            kind = {dict: "a table", list: "an array of tables [[stages]]", str: "a string", int: "an integer >= 0"}
            raise UserError(f"'{key}' in {path} must be {kind[allowed[key]]}, got {value!r}")
    model_table = dict(raw.get("model", {}))
    size = model_table.pop("size", None)
    model = named_config(size or "tiny")
    model = ModelConfig.from_dict({**model.__dict__, **model_table}, source=f"[model] of {path}")
    stated = {k: v for k, v in named_config(size).__dict__.items() if k not in DICTATED_FIELDS} if size else {}
    stated.update(model_table)
    init_checkpoint = raw.get("init_checkpoint", "")
    if init_checkpoint and raw.get("tokenizer_dir"):
        raise UserError(f"{path} sets both init_checkpoint and tokenizer_dir; the checkpoint brings its tokenizers, drop tokenizer_dir")
    if init_checkpoint and raw.get("vision_encoder"):
        raise UserError(f"{path} sets both init_checkpoint and vision_encoder; the checkpoint brings its own, drop vision_encoder")
    if raw.get("vision_encoder") and not Path(raw["vision_encoder"]).is_dir():
        raise UserError(f"vision_encoder of {path}: no such directory {raw['vision_encoder']}; give a local SigLIP or CLIP checkpoint")
    if raw.get("tokenizer") and (raw.get("tokenizer_dir") or init_checkpoint):
        given = "tokenizer_dir" if raw.get("tokenizer_dir") else "init_checkpoint"
        raise UserError(f"{path} sets both {given} and a [tokenizer] table, which says how to train new tokenizers; drop one")
    tokenizer = _tokenizer_table(raw.get("tokenizer", {}), path)
    report = ReportTable(**checked_fields(raw.get("report", {}), ReportTable, f"[report] of {path}", non_negative=True))
    for key in ("curve_vqa_scenes", "curve_prompts"):
        if getattr(report, key) < 1:
            raise UserError(f"[report] {key} of {path} must be at least 1, got {getattr(report, key)}")
    logging = LoggingTable(**checked_fields(raw.get("logging", {}), LoggingTable, f"[logging] of {path}"))
    data = DataConfig(**checked_fields(raw.get("data", {}), DataConfig, f"[data] of {path}", non_negative=True))
    check_source(data.source)  # a bad scheme or a missing path fails now, not after the tokenizers train
    unknown = [t for t in data.question_types if t not in QUESTION_TYPES]
    if unknown or not all(isinstance(t, str) for t in data.question_types):
        raise UserError(f"[data] question_types of {path} must list types among {', '.join(QUESTION_TYPES)}, got {unknown[0] if unknown else list(data.question_types)!r}")
    if data.source != "world" and (data.relation_pairs or data.question_types):
        raise UserError(f"[data] relation_pairs and question_types of {path} shape the world's questions; a data source on disk brings its own")
    for key in ("pool_size", "und_turns", "shuffle_buffer"):
        if getattr(data, key) < 1:
            raise UserError(f"[data] {key} of {path} must be at least 1, got {getattr(data, key)}")
    stages = tuple(_stage(t, i, str(path)) for i, t in enumerate(raw.get("stages", [])))
    if not stages:
        raise UserError(f"{path} defines no [[stages]]")
    if len({s.name for s in stages}) != len(stages):
        raise UserError(f"stage names in {path} must be unique")
    return Recipe(model=model, data=data, stages=stages, tokenizer_dir=raw.get("tokenizer_dir", ""), seed=raw.get("seed", 0),
                  init_checkpoint=init_checkpoint, model_keys=stated, tokenizer=tokenizer,
                  vision_encoder=raw.get("vision_encoder", ""), vision_layer=raw.get("vision_layer", -2),
                  report=report, logging=logging)  # fmt: skip


def _tokenizer_table(table: dict, path: Path) -> TokenizerTable:
    tokenizer = TokenizerTable(**checked_fields(table, TokenizerTable, f"[tokenizer] of {path}", non_negative=True))
    if tokenizer.eval_source:
        check_source(tokenizer.eval_source)
    if tokenizer.image_tokenizer and not Path(tokenizer.image_tokenizer).is_dir():
        raise UserError(f"[tokenizer] image_tokenizer of {path}: no such directory {tokenizer.image_tokenizer}; "
                        "make one with `unifork tokenizer from-hf` or `unifork tokenizer train`")  # fmt: skip
    return tokenizer


def resolved_recipe(recipe: Recipe, model: ModelConfig) -> str:
    """The recipe as TOML with every default spelled out, `model` (the one trained) as its [model] table and paths
    made absolute: `unifork train --config` on it, from any directory, trains the same model again."""
    import tomlkit

    def absolute(path: str) -> str:
        return os.path.abspath(path) if path else ""

    def absolute_source(spec: str) -> str:
        scheme, path = parse_source(spec)
        return f"{scheme}:{absolute(path)}" if path else scheme

    data = replace(recipe.data, source=absolute_source(recipe.data.source))
    table = {"seed": recipe.seed, "tokenizer_dir": absolute(recipe.tokenizer_dir),
             "vision_encoder": absolute(recipe.vision_encoder), "vision_layer": recipe.vision_layer,
             "init_checkpoint": absolute(recipe.init_checkpoint), "model": asdict(model), "data": asdict(data),
             "report": asdict(recipe.report), "logging": asdict(recipe.logging),
             "stages": [asdict(stage) | {"train": list(stage.train)} for stage in recipe.stages]}  # fmt: skip
    if not (recipe.tokenizer_dir or recipe.init_checkpoint):  # else the tokenizers come from there, not a table
        tokenizer = recipe.tokenizer
        table["tokenizer"] = asdict(replace(tokenizer, image_tokenizer=absolute(tokenizer.image_tokenizer),
                                            eval_source=absolute_source(tokenizer.eval_source) if tokenizer.eval_source else ""))  # fmt: skip
    return "# The fully resolved recipe this was trained with (unifork train --config FILE --out DIR).\n" + tomlkit.dumps(table)


def check_model_agrees(recipe: Recipe, cfg: ModelConfig, source: str) -> None:
    """Starting from a checkpoint, the model is the checkpoint's: a [model] table may only restate its values."""
    for key, value in recipe.model_keys.items():
        if getattr(cfg, key) != value:
            raise UserError(f"[model] {key} = {value!r} disagrees with init_checkpoint {source} ({key} = {getattr(cfg, key)!r}); "
                            "the checkpoint fixes the model: drop the key (or the whole [model] table)")  # fmt: skip


def check_split(stages: tuple[StageConfig, ...], world: int) -> None:
    """Every rank needs at least one row of each global batch."""
    for stage in stages:
        if stage.batch_size < world:
            raise UserError(f"stage '{stage.name}': batch_size {stage.batch_size} is the global batch, smaller than "
                            f"the {world} processes sharing it")  # fmt: skip

"""Model cards: a README.md in Hugging Face's model-card form beside every final checkpoint, and `unifork info`.

Everything on the card is read from the checkpoint's own files (config.json, the safetensors header, recipe.toml,
provenance.json, and evaluation.json where an evaluation wrote one), so the card and `unifork info` cannot
disagree with the weights. The trainer writes the card after the checkpoint's manifest: it is documentation, and
the quickstart rewrites it with the evaluation's figures.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from unifork.atomic import atomic_write_text
from unifork.errors import UserError

CARD_FILE = "README.md"
EVALUATION_FILE = "evaluation.json"  # {"source": what measured it, "figures": {name: value}}
TAGS = ("unifork", "unified-multimodal", "text-to-image", "visual-question-answering", "image-to-text")


def checkpoint_facts(directory: str | Path) -> dict:
    """What a card says about the checkpoint in `directory`, from its files alone (no weights are loaded)."""
    from safetensors import safe_open

    from unifork.model.config import ModelConfig

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise UserError(f"{directory} is not a checkpoint directory (no config.json); give one that save_pretrained wrote")
    cfg = ModelConfig.from_dict(json.loads((directory / "config.json").read_text()), source=str(directory / "config.json"))
    parameters = {"trunk": 0, "und": 0, "gen": 0}
    with safe_open(str(directory / "model.safetensors"), "pt") as weights:
        for name in weights.keys():
            shape = weights.get_slice(name).get_shape()
            count = 1
            for size in shape:
                count *= size
            part = name.split(".")[0]
            parameters[part] = parameters.get(part, 0) + count
    facts = {"directory": str(directory), "config": cfg, "parameters": parameters | {"total": sum(parameters.values())}}
    if (directory / "recipe.toml").is_file():
        facts["recipe"] = tomllib.loads((directory / "recipe.toml").read_text())
    if (directory / "provenance.json").is_file():
        facts["provenance"] = json.loads((directory / "provenance.json").read_text())
    if (directory / EVALUATION_FILE).is_file():
        facts["evaluation"] = json.loads((directory / EVALUATION_FILE).read_text())
    return facts


def summary_lines(facts: dict) -> list[str]:
    """The card's facts as plain lines: what `unifork info` prints."""
    cfg, p = facts["config"], facts["parameters"]
    lines = [
        f"UniFork, sharing plan {cfg.plan} ({cfg.plan.count('s')} shared layers of {cfg.n_layers}), d_model {cfg.d_model}, "
        f"{cfg.n_heads} heads ({cfg.n_kv_heads} key/value), context {cfg.max_seq_len}",
        f"parameters: {p['total'] / 1e6:.2f}M (trunk {p['trunk'] / 1e6:.2f}M, und {p['und'] / 1e6:.2f}M, gen {p['gen'] / 1e6:.2f}M)",
        f"images: {_image_codes(cfg)}; understanding input: {cfg.und_input}; text vocabulary {cfg.text_vocab_size}",
    ]
    recipe = facts.get("recipe")
    if recipe:
        lines.append(f"data: {recipe.get('data', {}).get('source', 'world')}, seed {recipe.get('seed', 0)}")
        for stage in recipe.get("stages", []):
            mix = ", ".join(f"{task} {share:g}" for task, share in stage.get("mix", {}).items())
            lines.append(f"stage {stage['name']}: {stage['steps']} steps x {stage.get('batch_size', '?')} rows "
                         f"({mix}), {stage.get('optimizer', 'adamw')}, lr {stage.get('lr', '?')}")  # fmt: skip
    else:
        lines.append("training: no recipe.toml in the checkpoint")
    provenance = facts.get("provenance", {})
    if "image_tokenizer_sha256" in provenance:
        lines.append(f"image tokenizer sha256: {provenance['image_tokenizer_sha256']}")
    evaluation = facts.get("evaluation")
    if evaluation:
        figures = ", ".join(f"{name} {value:.3f}" for name, value in evaluation["figures"].items())
        lines.append(f"evaluation ({evaluation['source']}): {figures}")
    return lines


def write_card(directory: str | Path) -> Path:
    """README.md of the checkpoint in `directory`: YAML header, what it is, how it was trained, figures, how to load."""
    directory = Path(directory)
    facts = checkpoint_facts(directory)
    tags = "\n".join(f"- {tag}" for tag in TAGS)
    header = f"---\nlibrary_name: unifork\nlicense: other\npipeline_tag: any-to-any\ntags:\n{tags}\n---\n"
    summary = summary_lines(facts)
    body = [
        "# UniFork checkpoint",
        "",
        "A unified model that answers questions about images and generates images from text with one Y-shaped "
        "transformer (UniFork, arXiv 2506.17202), trained with the unifork library. The license is whatever its "
        "training data and code allow: set the `license` field before sharing it.",
        "",
        "## What it is",
        "",
        *[f"- {line}" for line in summary],
        "",
        "## Use",
        "",
        "```python",
        "from unifork.inference.pipeline import Pipeline",
        "",
        f'pipe = Pipeline.from_pretrained("{directory}")  # task="gen" or "und" loads one branch',
        'images = pipe.generate("a red circle to the left of a blue square", n=4, seed=0)',
        'print(pipe.ask(images[0], "what color is the circle?"))',
        "```",
        "",
        f"`unifork generate --ckpt {directory} --prompt '...' --out grid.png`, `unifork ask`, `unifork eval`, "
        f"`unifork serve --ckpt {directory}`; `unifork info --ckpt {directory}` prints the facts above. "
        "`recipe.toml` in this directory trains the same model again (`unifork train --config`).",
        "",
    ]
    path = directory / CARD_FILE
    atomic_write_text(path, header + "\n" + "\n".join(body))
    return path


def record_evaluation(directory: str | Path, source: str, figures: dict[str, float]) -> None:
    """Store an evaluation's headline figures with the checkpoint and put them on its card."""
    directory = Path(directory)
    data = {"source": source, "figures": {name: round(float(v), 4) for name, v in figures.items()}}
    atomic_write_text(directory / EVALUATION_FILE, json.dumps(data, indent=2))
    write_card(directory)


def _image_codes(cfg) -> str:
    if cfg.residual_depth == 1:
        return f"{cfg.image_tokens} codes of {cfg.image_vocab_size}"
    return (f"{cfg.image_tokens} positions of {cfg.residual_depth} residual codes of {cfg.image_vocab_size} "
            f"(a {cfg.depth_head_layers}-layer depth head)")

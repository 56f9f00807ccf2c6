"""A study's results as study.json, study.md and two plots: quality vs fork point, alignment per model."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from unifork.analysis.plot import PATH_LABELS, PATH_STYLES
from unifork.atomic import atomic_write, atomic_write_text
from unifork.world import CATEGORIES


def mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation (0 for a single seed)."""
    return {"mean": round(statistics.fmean(values), 4), "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0}


def summarize(results: list[dict]) -> list[dict]:
    """One row per fork point, metrics as mean ± std over seeds, alignment curves averaged over seeds."""
    rows = []
    for fork in sorted({r["fork"] for r in results}):
        runs = [r for r in results if r["fork"] == fork]
        curves = {path: [statistics.fmean(layer) for layer in zip(*(r["alignment"][path] for r in runs))]
                  for path in ("und", "gen")}  # fmt: skip
        rows.append({
            "fork": fork,
            "seeds": [r["seed"] for r in runs],
            "parameters": runs[0]["parameters"],
            "train_seconds": mean_std([r["train_seconds"] for r in runs]),
            "vqa": mean_std([r["vqa"]["accuracy"] for r in runs]),
            "gen": mean_std([r["gen"]["accuracy"]["overall"] for r in runs]),
            "gen_exact": mean_std([r["gen"]["exact"]["overall"] for r in runs]),
            "gen_by_category": {c: mean_std([r["gen"]["accuracy"][c] for r in runs]) for c in CATEGORIES},
            "gen_exact_by_category": {c: mean_std([r["gen"]["exact"][c] for r in runs]) for c in CATEGORIES},
            "vqa_by_type": {t: mean_std([r["vqa"]["by_type"][t] for r in runs]) for t in runs[0]["vqa"]["by_type"]},
            "alignment": {path: [round(v, 4) for v in curve] for path, curve in curves.items()},
        })  # fmt: skip
    return rows


def write_summary(out: Path, preset, recipe, results: list[dict]) -> dict:
    rows = summarize(results)
    n_layers = recipe.model.n_layers
    study = {
        "settings": {
            "recipe": str(preset.recipe), "model": f"d_model {recipe.model.d_model}, {n_layers} layers",
            "steps": sum(s.steps for s in recipe.stages), "batch_size": recipe.stages[0].batch_size,
            "forks": list(preset.forks), "seeds": list(preset.seeds), "vqa_scenes": preset.vqa_scenes,
            "gen_images": 6 * preset.prompts_per_category * preset.images_per_prompt, "cfg_scale": preset.sampling.cfg_scale,
            "align_samples": preset.align_samples, "align_k": preset.align_k,
            "chance_alignment": results[0]["alignment"]["chance"],
        },
        "by_fork": rows,
        "runs": [{k: v for k, v in r.items() if k != "recipe"} for r in results],
    }  # fmt: skip
    atomic_write_text(out / "study.json", json.dumps(study, indent=2))
    plot_quality(rows, n_layers, out / "quality_vs_fork.png")
    plot_alignment(rows, n_layers, study["settings"]["chance_alignment"], out / "alignment.png")
    atomic_write_text(out / "study.md", markdown(study, n_layers))
    return study


def _pm(stat: dict) -> str:
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def _kind(fork: int, n_layers: int) -> str:
    return "task-specific" if fork == 0 else "fully shared" if fork == n_layers else "Y-fork"


def markdown(study: dict, n_layers: int) -> str:
    s = study["settings"]
    lines = [
        "# Fork-point study",
        "",
        f"Model {s['model']}; recipe `{s['recipe']}` ({s['steps']} joint steps of batch {s['batch_size']}, half "
        f"understanding, half generation); seeds {s['seeds']}; every model sees the same batches for a given seed.",
        f"VQA: every question of {s['vqa_scenes']} test-split scenes. ShapeEval: {s['gen_images']} images per model "
        f"(CFG {s['cfg_scale']}), judged by the world's detector. Mean ± std over seeds.",
        "",
        "ShapeEval counts an image correct under GenEval's rules (the prompt's objects are present; extra objects",
        "are ignored); *exact* wants the prompt's objects and nothing else (the stricter, more telling figure here).",
        "",
        "| fork | model | shared layers | parameters | VQA accuracy | ShapeEval (GenEval rules) | ShapeEval exact | train s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in study["by_fork"]:
        lines.append(f"| {r['fork']} | {_kind(r['fork'], n_layers)} | {r['fork']} of {n_layers} | "
                     f"{r['parameters']['total'] / 1e6:.2f}M | {_pm(r['vqa'])} | {_pm(r['gen'])} | {_pm(r['gen_exact'])} | "
                     f"{r['train_seconds']['mean']:.0f} |")  # fmt: skip
    for key, rule in (("gen_exact_by_category", "exact"), ("gen_by_category", "GenEval rules")):
        lines += ["", f"## ShapeEval by category ({rule})", "", "| fork | " + " | ".join(CATEGORIES) + " |",
                  "|---:|" + "---:|" * len(CATEGORIES)]  # fmt: skip
        lines += [f"| {r['fork']} | " + " | ".join(_pm(r[key][c]) for c in CATEGORIES) + " |" for r in study["by_fork"]]
    types = list(study["by_fork"][0]["vqa_by_type"])
    lines += ["", "## VQA by question type", "", "| fork | " + " | ".join(types) + " |", "|---:|" + "---:|" * len(types)]
    lines += [f"| {r['fork']} | " + " | ".join(_pm(r["vqa_by_type"][t]) for t in types) + " |" for r in study["by_fork"]]
    lines += ["", f"## Per-layer image-text alignment (mutual {s['align_k']}-NN, {s['align_samples']} scenes; "
              f"chance {s['chance_alignment']:.3f}; layer 0 = embeddings, mean over seeds)", "",
              "| fork | path | " + " | ".join(f"L{i}" for i in range(n_layers + 1)) + " | peak layer |",
              "|---:|---|" + "---:|" * (n_layers + 2)]  # fmt: skip
    for r in study["by_fork"]:
        for path in ("und", "gen"):
            curve = r["alignment"][path]
            lines.append(f"| {r['fork']} | {path} | " + " | ".join(f"{v:.3f}" for v in curve) +
                         f" | {max(range(len(curve)), key=curve.__getitem__)} |")  # fmt: skip
    lines += ["", "![quality vs fork point](quality_vs_fork.png)", "", "![alignment per model](alignment.png)", ""]
    return "\n".join(lines)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # a bare Figure: never touches the caller's pyplot backend

    return Figure(figsize=(width, height), dpi=110)


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))


def plot_quality(rows: list[dict], n_layers: int, path: Path) -> None:
    fig = _figure(6.5, 3.8)
    ax = fig.add_subplot()
    forks = [r["fork"] for r in rows]
    for key, label, color in (("vqa", "understanding: VQA accuracy", "tab:blue"),
                              ("gen_exact", "generation: ShapeEval exact", "tab:orange"),
                              ("gen", "generation: ShapeEval (GenEval rules)", "tab:red")):  # fmt: skip
        ax.errorbar(forks, [r[key]["mean"] for r in rows], yerr=[r[key]["std"] for r in rows], marker="o",
                    capsize=3, color=color, label=label)  # fmt: skip
    ax.set_xticks(forks, [f"{k}\n{_kind(k, n_layers)}" for k in forks], fontsize=8)
    ax.set_xlabel("fork layer (layers shared by both tasks)")
    ax.set_ylabel("accuracy (mean ± std over seeds)")
    ax.set_title("Quality vs fork point")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_alignment(rows: list[dict], n_layers: int, chance: float, path: Path) -> None:
    fig = _figure(3.2 * len(rows), 3.2)
    axes = fig.subplots(1, len(rows), sharey=True, squeeze=False)[0]
    for ax, r in zip(axes, rows):
        layers = list(range(n_layers + 1))
        for name in ("und", "gen"):
            color, marker = PATH_STYLES[name]
            ax.plot(layers, r["alignment"][name], marker=marker, color=color, label=PATH_LABELS[name])
        ax.axhline(chance, color="gray", linestyle=":", linewidth=1, label="chance")
        ax.axvline(r["fork"], color="black", linestyle="--", linewidth=1, label="fork point")
        ax.set_title(f"fork {r['fork']} ({_kind(r['fork'], n_layers)})", fontsize=9)
        ax.set_xlabel("layer (0 = embeddings)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mutual k-NN alignment")
    axes[0].legend(fontsize=7)
    _save(fig, path)

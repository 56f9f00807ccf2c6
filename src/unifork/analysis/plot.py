"""Alignment and task conflict against depth: one line per path, per-task layers shaded, chance marked."""

from __future__ import annotations

from pathlib import Path

# A bare Figure renders PNGs through Agg without pyplot, so plotting never switches the caller's backend
# (a notebook importing unifork keeps its own) and needs no display.
from matplotlib.figure import Figure

from unifork.atomic import atomic_write
from unifork.model.sharing import PER_TASK

PATH_LABELS = {
    "und": "understanding path (image -> text)",
    "gen": "generation path (text -> image)",
    "lm": "language model text vs. image features",
    "features": "supplied image vs. text features",
}
PATH_STYLES = {"und": ("tab:blue", "o"), "gen": ("tab:orange", "s"), "lm": ("tab:green", "^"), "features": ("tab:purple", "D")}


def shade_per_task_layers(ax, plan: str | None) -> None:
    """Shade the states that per-task layers write: state i + 1 is layer i's output (state 0 = embeddings)."""
    if not plan:
        return
    for i, letter in enumerate(plan):
        if letter == PER_TASK:
            ax.axvspan(i + 0.5, i + 1.5, color="gray", alpha=0.12, linewidth=0,
                       label="per-task layer" if PER_TASK not in plan[:i] else None)  # fmt: skip


def plot_alignment(result: dict, path: str | Path) -> None:
    """Write a PNG of a result of model_alignment, hf_alignment or feature_alignment."""
    fig = Figure(figsize=(7, 4.5), dpi=120)
    ax = fig.subplots()
    layers = result["layers"]
    for name in result["paths"]:
        color, marker = PATH_STYLES[name]
        ax.plot(layers, result[name], color=color, marker=marker, label=PATH_LABELS[name])
    shade_per_task_layers(ax, result.get("sharing"))
    ax.axhline(result["chance"], color="black", linestyle=":", linewidth=1, label=f"chance k/(N-1) = {result['chance']:.3f}")
    ax.set_xticks(layers)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel(f"mutual {result['k']}-NN alignment")
    highest = max(result["chance"], *(max(result[name]) for name in result["paths"]))
    ax.set_ylim(0, min(1.05, max(0.05, 1.15 * highest)))  # headroom above the highest point for the legend
    pooling = f", {result['pooling']} pooling" if result.get("pooling") else ""
    ax.set_title(f"Image-text alignment per layer\n{result['model']}; N={result['n_samples']}, k={result['k']}{pooling}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))


def plot_conflict(result: dict, path: str | Path) -> None:
    """Write a PNG of a task_conflict result: gradient cosine per shared layer (with its interval) and the norm ratio."""
    fig = Figure(figsize=(7, 4.5), dpi=120)
    cos_ax = fig.subplots()
    shared = [layer for layer in result["layers"] if layer["shared"]]
    xs = [layer["layer"] for layer in shared]
    means = [layer["cosine"]["mean"] for layer in shared]
    errors = [[m - layer["cosine"]["ci95"][0] for m, layer in zip(means, shared)],
              [layer["cosine"]["ci95"][1] - m for m, layer in zip(means, shared)]]  # fmt: skip
    cos_ax.errorbar(xs, means, yerr=errors, color="tab:red", marker="o", capsize=3, label="cosine(grad und, grad gen)")
    cos_ax.axhline(0, color="black", linewidth=0.8)
    cos_ax.set_xticks(range(result["n_layers"]))
    cos_ax.set_xlim(-0.5, result["n_layers"] - 0.5)
    cos_ax.set_xlabel("layer")
    cos_ax.set_ylabel("gradient cosine (95% interval)")
    ratio_ax = cos_ax.twinx()
    ratio_ax.plot(xs, [layer["norm_ratio"]["mean"] for layer in shared], color="tab:gray", marker="s", linestyle="--",
                  label="|grad und| / |grad gen|")  # fmt: skip
    ratio_ax.set_yscale("log")
    ratio_ax.set_ylabel("norm ratio")
    per_task = [layer["layer"] for layer in result["layers"] if not layer["shared"]]
    for layer in per_task:
        cos_ax.axvspan(layer - 0.5, layer + 0.5, color="gray", alpha=0.12, linewidth=0)
    handles = cos_ax.get_legend_handles_labels()[0] + ratio_ax.get_legend_handles_labels()[0]
    cos_ax.legend(handles=handles, fontsize=8, loc="best")
    shaded = "; shaded: per-task layers" if per_task else ""
    cos_ax.set_title(f"Task conflict per layer ({result['n_batches']} batches of {result['batch_size']}){shaded}", fontsize=10)
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))

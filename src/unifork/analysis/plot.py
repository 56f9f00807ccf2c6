"""Alignment against depth: one line per path, the fork point and the chance level marked."""

from __future__ import annotations

from pathlib import Path

# A bare Figure renders PNGs through Agg without pyplot, so plotting never switches the caller's backend
# (a notebook importing unifork keeps its own) and needs no display.
from matplotlib.figure import Figure

from unifork.atomic import atomic_write

PATH_LABELS = {
    "und": "understanding path (image -> text)",
    "gen": "generation path (text -> image)",
    "lm": "language model text vs. image features",
    "features": "supplied image vs. text features",
}
PATH_STYLES = {"und": ("tab:blue", "o"), "gen": ("tab:orange", "s"), "lm": ("tab:green", "^"), "features": ("tab:purple", "D")}


def plot_alignment(result: dict, path: str | Path) -> None:
    """Write a PNG of a result of model_alignment, hf_alignment or feature_alignment."""
    fig = Figure(figsize=(7, 4.5), dpi=120)
    ax = fig.subplots()
    layers = result["layers"]
    for name in result["paths"]:
        color, marker = PATH_STYLES[name]
        ax.plot(layers, result[name], color=color, marker=marker, label=PATH_LABELS[name])
    fork = result.get("fork_layer")
    if fork is not None:
        # state `fork` is the trunk's output; later states come from task-specific layers
        ax.axvline(fork, color="gray", linestyle="--", linewidth=1)
        ax.annotate(f"fork: layers {fork + 1}+ per task", xy=(fork, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(4, -14), textcoords="offset points", color="dimgray", fontsize=9)  # fmt: skip
    ax.axhline(result["chance"], color="black", linestyle=":", linewidth=1, label=f"chance k/(N-1) = {result['chance']:.3f}")
    ax.set_xticks(layers)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel(f"mutual {result['k']}-NN alignment")
    highest = max(result["chance"], *(max(result[name]) for name in result["paths"]))
    ax.set_ylim(0, min(1.05, max(0.05, 1.15 * highest)))  # headroom above the highest point for the fork label
    pooling = f", {result['pooling']} pooling" if result.get("pooling") else ""
    ax.set_title(f"Image-text alignment per layer\n{result['model']}; N={result['n_samples']}, k={result['k']}{pooling}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))

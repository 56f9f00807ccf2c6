"""A study's results as study.json, study.md and three plots: quality per plan, alignment and conflict per layer.

Every model of a seed trains on the same batches and is evaluated on the same prompts and scenes, so the
difference of two plans is compared seed by seed (a paired interval), far tighter than two independent ones.
"""

from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path

from unifork.analysis.plot import PATH_LABELS, PATH_STYLES, shade_per_task_layers
from unifork.atomic import atomic_write, atomic_write_text
from unifork.eval.stats import mean_interval
from unifork.model.sharing import describe
from unifork.world import CATEGORIES

# The headline figures, each (key, what it is, higher is better)
METRICS = {
    "vqa": ("VQA, unseen scenes", lambda r: r["vqa"]["accuracy"], True),
    "vqa_relation": ("VQA relation", lambda r: r["vqa"]["by_type"]["relation"], True),
    "vqa_heldout": ("VQA, held-out compositions", lambda r: r["vqa_heldout"]["accuracy"], True),
    "gen_exact": ("ShapeEval exact", lambda r: r["gen"]["exact"]["overall"], True),
    "gen_geneval": ("ShapeEval (GenEval rules)", lambda r: r["gen"]["accuracy"]["overall"], True),
    "gen_heldout_exact": ("ShapeEval exact, held-out compositions", lambda r: r["gen_heldout"]["exact"]["overall"], True),
    "domain_fid": ("domain FID", lambda r: r["domain_fid"]["value"], False),
}


def mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation (0 for a single seed)."""
    return {"mean": round(statistics.fmean(values), 4), "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0}


def _mean_curve(curves: list[list[float]]) -> list[float]:
    return [round(statistics.fmean(layer), 4) for layer in zip(*curves)]


def summarize(results: list[dict]) -> list[dict]:
    """One row per plan: metrics as mean ± std over seeds, alignment and conflict curves averaged over seeds."""
    rows = []
    for plan in dict.fromkeys(r["plan"] for r in results):
        runs = [r for r in results if r["plan"] == plan]
        conflict = [[layer["cosine"]["mean"] if layer["shared"] else None for layer in r["conflict"]["layers"]] for r in runs]
        rows.append({
            "plan": plan,
            "labels": sorted({r["label"] for r in runs}),
            "seeds": sorted({r["seed"] for r in runs}),
            "parameters": runs[0]["parameters"],
            "train_seconds": mean_std([r["train_seconds"] for r in runs]),
            **{key: mean_std([get(r) for r in runs]) for key, (_, get, _) in METRICS.items()},
            "gen_exact_by_category": {c: mean_std([r["gen"]["exact"][c] for r in runs]) for c in CATEGORIES},
            "vqa_by_type": {t: mean_std([r["vqa"]["by_type"][t] for r in runs]) for t in runs[0]["vqa"]["by_type"]},
            "alignment": {path: _mean_curve([r["alignment"][path] for r in runs]) for path in ("und", "gen")},
            "conflict_cosine": [None if None in layer else round(statistics.fmean(layer), 4) for layer in zip(*conflict)],
        })  # fmt: skip
    return rows


def paired(results: list[dict]) -> list[dict]:
    """For each pair of plans and headline metric: the mean per-seed difference (first minus second) with a 95%
    Student-t interval over the seeds both have, and whether it is beyond noise (the interval excludes 0)."""
    plans = list(dict.fromkeys(r["plan"] for r in results))
    by = {(r["plan"], r["seed"]): r for r in results}
    comparisons = []
    for a, b in itertools.combinations(plans, 2):
        seeds = sorted(s for p, s in by if p == a and (b, s) in by)
        if not seeds:
            continue
        for key, (_, get, higher_better) in METRICS.items():
            diffs = [get(by[a, s]) - get(by[b, s]) for s in seeds]
            stat = mean_interval(diffs)
            lo, hi = stat["ci95"]
            if len(seeds) < 2:
                verdict = "one seed: no interval"
            elif lo > 0 or hi < 0:
                verdict = f"{a if (lo > 0) == higher_better else b} better"
            else:
                verdict = "within noise"
            comparisons.append({"a": a, "b": b, "metric": key, "seeds": seeds, "diff": stat, "verdict": verdict})
    return comparisons


def write_summary(out: Path, preset, recipe, results: list[dict], recommendation: dict | None) -> dict:
    rows = summarize(results)
    n_layers = recipe.model.n_layers
    stage = recipe.stages[0]
    study = {
        "settings": {
            "recipe": Path(preset.recipe).name, "model": f"d_model {recipe.model.d_model}, {n_layers} layers",
            "stages": [{"name": s.name, "steps": s.steps, "batch_size": s.batch_size, "mix": s.mix} for s in recipe.stages],
            "samples_per_model": sum(s.steps * s.batch_size for s in recipe.stages),
            "plans": list(preset.plans), "seeds": list(preset.seeds), "vqa_scenes": preset.vqa_scenes,
            "gen_images": len(CATEGORIES) * preset.prompts_per_category * preset.images_per_prompt,
            "cfg_scale": preset.sampling.cfg_scale, "align_samples": preset.align_samples, "align_k": preset.align_k,
            "conflict_batches": preset.conflict_batches, "chance_alignment": results[0]["alignment"]["chance"],
            "batch_size": stage.batch_size,
        },
        "recommendation": recommendation,
        "by_plan": rows,
        "paired": paired(results),
        "runs": [{k: v for k, v in r.items() if k != "recipe"} for r in results],
    }  # fmt: skip
    atomic_write_text(out / "study.json", json.dumps(study, indent=2))
    plot_quality(rows, out / "quality_per_plan.png")
    plot_curves(rows, n_layers, study["settings"]["chance_alignment"], out / "curves_per_plan.png")
    atomic_write_text(out / "study.md", markdown(study, n_layers))
    return study


def _pm(stat: dict, digits: int = 3) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _name(row: dict) -> str:
    return f"{' = '.join(row['labels'])} `{row['plan']}`"


def markdown(study: dict, n_layers: int) -> str:
    s = study["settings"]
    stages = ", ".join(f"{st['name']} {st['steps']} steps of {st['batch_size']}" for st in s["stages"])
    lines = [
        "# Sharing-pattern study",
        "",
        f"Model {s['model']}; recipe `{s['recipe']}` ({stages}: {s['samples_per_model']:,} samples per model, the "
        f"same for every plan); seeds {s['seeds']}; every model of a seed sees the same batches and is evaluated on "
        f"the same scenes, prompts and sampling seeds. VQA: every question of {s['vqa_scenes']} scenes per split. "
        f"ShapeEval: {s['gen_images']} images per split (CFG {s['cfg_scale']}), judged by the world's detector. "
        "Mean ± std over seeds. A plan is one letter per layer: s shared, t per task.",
        "",
        "| plan | layers | parameters | VQA | relation | VQA held-out | exact | GenEval rules | exact held-out | domain FID | train s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in study["by_plan"]:
        lines.append(f"| {_name(r)} | {describe(r['plan'])} | {r['parameters']['total'] / 1e6:.2f}M | "
                     + " | ".join(_pm(r[k], 2 if k == "domain_fid" else 3) for k in METRICS)
                     + f" | {r['train_seconds']['mean']:.0f} |")  # fmt: skip
    lines += ["", "## ShapeEval exact by category", "", "| plan | " + " | ".join(CATEGORIES) + " |",
              "|---|" + "---:|" * len(CATEGORIES)]  # fmt: skip
    lines += [f"| {_name(r)} | " + " | ".join(_pm(r["gen_exact_by_category"][c]) for c in CATEGORIES) + " |" for r in study["by_plan"]]
    types = list(study["by_plan"][0]["vqa_by_type"])
    lines += ["", "## VQA by question type", "", "| plan | " + " | ".join(types) + " |", "|---|" + "---:|" * len(types)]
    lines += [f"| {_name(r)} | " + " | ".join(_pm(r["vqa_by_type"][t]) for t in types) + " |" for r in study["by_plan"]]
    lines += ["", "## Paired differences (first minus second plan, per seed, mean with 95% t interval)", "",
              "| first | second | metric | seeds | difference | verdict |", "|---|---|---|---:|---:|---|"]  # fmt: skip
    for c in study["paired"]:
        d = c["diff"]
        lines.append(f"| `{c['a']}` | `{c['b']}` | {METRICS[c['metric']][0]} | {len(c['seeds'])} | {d['mean']:+.3f} "
                     f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] | {c['verdict']} |")  # fmt: skip
    rec = study["recommendation"]
    if rec:
        lines += ["", f"## The recommended plan: `{rec['plan']}` ({describe(rec['plan'])}), from the {rec['from']} model", "",
                  rec["rule"], "", "| layer | plan | why |", "|---:|---|---|"]  # fmt: skip
        lines += [f"| {layer['layer']} | {layer['plan']} | {layer['why']} |" for layer in rec["layers"]]
    lines += ["", f"## Curves (mean over seeds; alignment: mutual {s['align_k']}-NN over {s['align_samples']} scenes, chance "
              f"{s['chance_alignment']:.3f}, state 0 = embeddings; conflict: gradient cosine of the two losses on each "
              f"shared layer, {s['conflict_batches']} batches of 32)", "",
              "| plan | curve | " + " | ".join(f"L{i}" for i in range(n_layers + 1)) + " |", "|---|---|" + "---:|" * (n_layers + 1)]  # fmt: skip
    for r in study["by_plan"]:
        for path in ("und", "gen"):
            lines.append(f"| `{r['plan']}` | {path} alignment | " + " | ".join(f"{v:.3f}" for v in r["alignment"][path]) + " |")
        cells = ["", *("per task" if v is None else f"{v:+.3f}" for v in r["conflict_cosine"])]
        lines.append(f"| `{r['plan']}` | conflict cosine | " + " | ".join(cells) + " |")
    lines += ["", "![quality per plan](quality_per_plan.png)", "", "![curves per plan](curves_per_plan.png)", ""]
    return "\n".join(lines)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # a bare Figure: never touches the caller's pyplot backend

    return Figure(figsize=(width, height), dpi=110)


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))


def plot_quality(rows: list[dict], path: Path) -> None:
    fig = _figure(1.4 * len(rows) + 3, 3.8)
    ax = fig.add_subplot()
    xs = range(len(rows))
    for offset, (key, color) in zip((-0.2, 0, 0.2), (("vqa", "tab:blue"), ("gen_exact", "tab:orange"), ("gen_heldout_exact", "tab:red"))):
        ax.errorbar([x + offset for x in xs], [r[key]["mean"] for r in rows], yerr=[r[key]["std"] for r in rows],
                    marker="o", linestyle="none", capsize=3, color=color, label=METRICS[key][0])  # fmt: skip
    ax.set_xticks(list(xs), [f"{'/'.join(r['labels'])}\n{r['plan']}" for r in rows], fontsize=8)
    ax.set_ylabel("accuracy (mean ± std over seeds)")
    ax.set_title("Quality per sharing plan")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_curves(rows: list[dict], n_layers: int, chance: float, path: Path) -> None:
    fig = _figure(3.2 * len(rows), 5.6)
    axes = fig.subplots(2, len(rows), sharey="row", squeeze=False)
    for column, r in enumerate(rows):
        ax, cax = axes[0][column], axes[1][column]
        for name in ("und", "gen"):
            color, marker = PATH_STYLES[name]
            ax.plot(range(n_layers + 1), r["alignment"][name], marker=marker, color=color, label=PATH_LABELS[name])
        ax.axhline(chance, color="gray", linestyle=":", linewidth=1, label="chance")
        shade_per_task_layers(ax, r["plan"])
        ax.set_title(f"{'/'.join(r['labels'])} {r['plan']}", fontsize=9)
        ax.set_xlabel("state (0 = embeddings)", fontsize=8)
        ax.grid(alpha=0.3)
        shared = [(i, v) for i, v in enumerate(r["conflict_cosine"]) if v is not None]
        cax.plot([i for i, _ in shared], [v for _, v in shared], marker="o", color="tab:red")
        cax.axhline(0, color="black", linewidth=0.8)
        cax.set_xlim(-0.5, n_layers - 0.5)
        cax.set_xlabel("layer", fontsize=8)
        cax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mutual k-NN alignment")
    axes[1][0].set_ylabel("gradient cosine und vs gen")
    axes[0][0].legend(fontsize=6)
    _save(fig, path)

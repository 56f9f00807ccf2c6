"""The quickstart report: one self-contained HTML page (images inlined) plus the same numbers as JSON."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: the caller's backend stays as it was (analysis/plot.py)
from PIL import Image


def _png_data_uri(image: np.ndarray, scale: int = 2) -> str:
    buffer = io.BytesIO()
    pil = Image.fromarray(image)
    pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _figure_data_uri(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def loss_curves_png(metrics_path: Path) -> str:
    """Per-task training loss over all stages, as a data URI."""
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    fig = Figure(figsize=(8, 3.5), dpi=100)
    ax = fig.subplots()
    for task, color in (("und", "tab:blue"), ("gen", "tab:orange")):
        xs = [i for i, r in enumerate(records) if task in r]
        ax.plot(xs, [records[i][task] for i in xs], ".", markersize=2, color=color, label=f"{task} loss")
    boundaries = [i for i in range(1, len(records)) if records[i]["stage"] != records[i - 1]["stage"]]
    for b in boundaries:
        ax.axvline(b, color="gray", linestyle="--", linewidth=0.8)
    for start, end in zip([0, *boundaries], [*boundaries, len(records)]):
        ax.text((start + end) / 2, ax.get_ylim()[1] * 0.95, records[start]["stage"], ha="center", va="top", fontsize=8)
    ax.set_xlabel("training step (all stages)")
    ax.set_ylabel("cross-entropy")
    ax.set_yscale("log")
    ax.legend()
    return _figure_data_uri(fig)


def learning_curve_png(points: list[dict]) -> str:
    """VQA accuracy by type and exact generation by category against training steps (learning_curve.py)."""
    fig = Figure(figsize=(11, 4), dpi=100)
    vqa_ax, gen_ax = fig.subplots(1, 2, sharex=True)
    steps = [p["global_step"] for p in points]
    for ax, key, title in ((vqa_ax, "vqa", "VQA accuracy, unseen scenes"), (gen_ax, "gen_exact", "generation, exact rule")):
        for name in points[0][key]:
            bold = name == "overall"
            ax.plot(steps, [p[key][name] for p in points], "o-", markersize=3, linewidth=2.5 if bold else 1,
                    color="black" if bold else None, label=name)  # fmt: skip
        for index in range(1, len(points)):
            if points[index]["stage"] != points[index - 1]["stage"]:
                stage_start = points[index]["global_step"] - points[index]["step"]
                ax.axvline(stage_start, color="gray", linestyle="--", linewidth=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training step (all stages)")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    return _figure_data_uri(fig)


def _table(rows: list[tuple[str, object]]) -> str:
    cells = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def write_report(out: Path, report: dict, gen_samples: list[dict], vqa_examples: list[dict], metrics_path: Path,
                 alignment_png: Path, failures: list[dict] = (), curve: list[dict] = ()) -> None:  # fmt: skip
    """Write out/report.json (numbers only) and out/report.html (numbers, samples, curves)."""
    (out / "report.json").write_text(json.dumps(report, indent=2))
    metric_rows = [("wall time (s)", report["wall_seconds"]), ("VQA accuracy (test scenes)", report["vqa"]["accuracy"])]
    metric_rows += [(f"VQA {k}", v) for k, v in report["vqa"]["by_type"].items()]
    metric_rows += [("VQA accuracy (held-out compositions)", report["vqa_heldout"]["accuracy"])]
    if "cfg_scale" in report["gen"]:
        metric_rows += [("generation: classifier-free guidance scale", report["gen"]["cfg_scale"])]
    metric_rows += [(f"generation exact {k}", v) for k, v in report["gen"]["exact"]["accuracy"].items()]
    metric_rows += [(f"generation (GenEval rules) {k}", v) for k, v in report["gen"]["accuracy"].items()]
    metric_rows += [("generation overall (held-out compositions)", report["gen_heldout"]["accuracy"]["overall"])]
    metric_rows += [(f"tokenizer {k}", v) for k, v in report["tokenizer"].items()]
    if "tokenizer_ceiling" in report:  # the exact rule on true scenes after a round trip through the tokenizer
        metric_rows += [(f"tokenizer ceiling, exact {k}", v) for k, v in report["tokenizer_ceiling"]["accuracy"].items()]
    metric_rows += [(f"parameters {k}", f"{v:,}") for k, v in report["parameters"].items()]

    by_category: dict[str, list[dict]] = {}
    for sample in gen_samples:
        by_category.setdefault(sample["category"], []).append(sample)
    gen_html = ""
    for category, samples in by_category.items():
        figures = "".join(
            f'<figure class="{"ok" if s["correct"] else "bad"}"><img src="{_png_data_uri(s["image"])}">'
            f'<figcaption>{html.escape(s["prompt"])} {"✓" if s["correct"] else "✗"}</figcaption></figure>'
            for s in samples
        )
        gen_html += f"<h3>{html.escape(category)}</h3><div class='grid'>{figures}</div>"
    failures_html = ""
    for category in dict.fromkeys(f["category"] for f in failures):
        figures = "".join(
            f'<figure class="bad"><img src="{_png_data_uri(f["image"])}"><figcaption>{html.escape(f["prompt"])}<br>'
            f'found: {html.escape(f["found"])}</figcaption></figure>'
            for f in failures if f["category"] == category
        )
        failures_html += f"<h3>{html.escape(category)}</h3><div class='grid'>{figures}</div>"
    vqa_html = "".join(
        f'<figure class="{"ok" if e["answer"] == e["truth"] else "bad"}"><img src="{_png_data_uri(e["image"])}">'
        f"<figcaption>Q: {html.escape(e['question'])}<br>A: {html.escape(e['answer'])}<br>"
        f"truth: {html.escape(e['truth'])}</figcaption></figure>"
        for e in vqa_examples
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>unifork quickstart report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} table{{border-collapse:collapse}}
td{{border:1px solid #ccc;padding:2px 8px}} .grid{{display:flex;flex-wrap:wrap;gap:8px}}
figure{{margin:0;width:140px;font-size:11px}} figure.ok{{border-top:3px solid #2a2}} figure.bad{{border-top:3px solid #c22}}</style>
</head><body><h1>unifork quickstart</h1>
<p>A Y-fork UniFork model trained from scratch on the shapes world on this machine's CPU.
Generated images are judged by the world's detector: <i>exact</i> when it finds the prompt's objects and nothing
else, <i>GenEval rules</i> when the prompt's objects are present (extra objects ignored; green = correct by these rules).</p>
<h2>Metrics</h2>{_table(metric_rows)}
<h2>Training loss per task</h2><img src="{loss_curves_png(metrics_path)}">
{f'<h2>Quality against training steps</h2><img src="{learning_curve_png(curve)}">' if curve else ""}
<h2>Image-text alignment per layer</h2><img src="data:image/png;base64,{base64.b64encode(alignment_png.read_bytes()).decode()}">
<h2>Generated samples per category</h2>{gen_html}
<h2>Failures per category: what the detector found instead (exact rule)</h2>{failures_html or "<p>none</p>"}
<h2>Visual question answering (held-out test scenes)</h2><div class="grid">{vqa_html}</div>
</body></html>"""
    (out / "report.html").write_text(page)

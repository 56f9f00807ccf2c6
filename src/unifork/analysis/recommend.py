"""A sharing plan proposed from a model's per-layer curves: split where the tasks pull apart, share elsewhere.

The rule, fixed before the study that tests it (docs/results/study/), for each layer i of a fully shared model:

    per task  if the 95% interval of its gradient cosine (analysis/conflict.py) lies wholly below 0, so the two
              losses measurably push the layer opposite ways (Uni-X's signal), or
              if across it the two paths' image-text alignment (analysis/model_alignment.py; state i -> i + 1)
              moves in opposite directions, each by more than ALIGNMENT_NOISE (UniFork's signal: understanding
              still aligning where generation has begun to separate the modalities again)
    shared    otherwise

On a model that already has per-task layers those stay per task; the rule reads its shared layers only.
"""

from __future__ import annotations

from unifork.model.sharing import PER_TASK, SHARED

# Moves of mutual k-NN alignment smaller than this are not read as a direction: about twice the seed-to-seed spread
# of a one-layer change of the score in the first fork-point study (median std 0.011; 256 scenes, k = 10).
ALIGNMENT_NOISE = 0.02


def recommend_plan(conflict: dict, alignment: dict, noise: float = ALIGNMENT_NOISE) -> dict:
    """{"plan": one letter per layer, "layers": why each layer is what it is} from task_conflict and
    model_alignment results of the same checkpoint."""
    layers = []
    for layer in conflict["layers"]:
        i = layer["layer"]
        if not layer["shared"]:
            layers.append({"layer": i, "plan": PER_TASK, "why": "per task already"})
            continue
        reasons = []
        if layer["cosine"]["ci95"][1] < 0:
            reasons.append(f"gradients conflict (cosine {layer['cosine']['mean']:+.3f}, interval below 0)")
        und, gen = (alignment[path][i + 1] - alignment[path][i] for path in ("und", "gen"))
        if min(abs(und), abs(gen)) > noise and (und > 0) != (gen > 0):
            reasons.append(f"alignment diverges (und {und:+.3f}, gen {gen:+.3f})")
        layers.append({"layer": i, "plan": PER_TASK if reasons else SHARED,
                       "why": "; ".join(reasons) or "gradients and alignment agree"})  # fmt: skip
    return {"plan": "".join(layer["plan"] for layer in layers), "rule": "\n\n".join(__doc__.split("\n\n")[1:3]),
            "alignment_noise": noise, "layers": layers}  # fmt: skip

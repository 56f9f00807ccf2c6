"""Which layers both tasks share: a sharing plan, one letter per layer, s (shared) or t (once per task).

    y           shared [0, fork_layer), per task [fork_layer, L)     UniFork (arXiv 2506.17202)
    inverted_y  per task [0, fork_layer), shared [fork_layer, L)     the mirror
    x           per task first and last max(1, L // 4), shared middle  Uni-X (arXiv 2509.24365)
    shared      every layer shared                                   Emu3-style, one stack and two heads
    separate    no layer shared                                      two task-specific models
    "tsssst"    an explicit plan, one letter per layer

Shared layers live in the trunk and per-task layers in each task's branch, both in layer order, so the y plan
names its tensors as the two-part model always did (trunk.layers.*, und.layers.*, gen.layers.*) and older
checkpoints load unchanged.
"""

from __future__ import annotations

SHARED, PER_TASK = "s", "t"
SHAPES = ("y", "x", "inverted_y", "shared", "separate")
FORKED_SHAPES = ("y", "inverted_y")  # the shapes that split at fork_layer


def sharing_plan(sharing: str, n_layers: int, fork_layer: int) -> str:
    """The plan string of a named shape or an explicit plan; ValueError naming what is wrong."""
    edge = max(1, n_layers // 4)
    named = {
        "y": SHARED * fork_layer + PER_TASK * (n_layers - fork_layer),
        "inverted_y": PER_TASK * fork_layer + SHARED * (n_layers - fork_layer),
        "x": PER_TASK * edge + SHARED * (n_layers - 2 * edge) + PER_TASK * edge if n_layers > 2 else PER_TASK * n_layers,
        "shared": SHARED * n_layers,
        "separate": PER_TASK * n_layers,
    }
    if sharing in named:
        return named[sharing]
    if set(sharing) <= {SHARED, PER_TASK} and len(sharing) == n_layers:
        return sharing
    raise ValueError(
        f"sharing must be one of {', '.join(SHAPES)} or one letter per layer ({n_layers} of s = shared, "
        f"t = per task, e.g. {named['x']!r}), got {sharing!r}"
    )


def layer_modules(plan: str, task: str) -> list[str]:
    """The module name of each layer on `task`'s path, in order: trunk.layers.{k} or {task}.layers.{k}."""
    names, counts = [], {SHARED: 0, PER_TASK: 0}
    for letter in plan:
        owner = "trunk" if letter == SHARED else task
        names.append(f"{owner}.layers.{counts[letter]}")
        counts[letter] += 1
    return names


def describe(plan: str) -> str:
    """A plan in words, e.g. 'layers 0-2 shared, 3-5 per task'."""
    runs, start = [], 0
    for i in range(1, len(plan) + 1):
        if i == len(plan) or plan[i] != plan[start]:
            span = f"{start}" if i - start == 1 else f"{start}-{i - 1}"
            runs.append(f"{span} {'shared' if plan[start] == SHARED else 'per task'}")
            start = i
    return "layers " + ", ".join(runs)

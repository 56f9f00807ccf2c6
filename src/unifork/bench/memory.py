"""Figure 5: peak memory of loading a checkpoint with both branches against task-only loading (task="gen").

Peak RSS only grows, so each load runs in a fresh Python process: it imports everything first, reads its peak
RSS, loads, reads it again. The growth is what loading cost; the ratio compares growths, since the interpreter
and torch's own footprint (hundreds of MB) would otherwise swamp a small model.

The peak is VmHWM from /proc/self/status, not getrusage's ru_maxrss: Linux carries the spawning process's peak
into a child's ru_maxrss across exec (measured: a child of a 1.1 GB bench reported 1.1 GB before loading
anything), while VmHWM belongs to the new process image alone. Without /proc, ru_maxrss is the fallback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

from unifork.bench.timing import pairwise_ratio, spread
from unifork.bench.workload import bench_model
from unifork.checkpoint import save_model
from unifork.model.config import ModelConfig

LOADS = {"full": "None", "gen": "'gen'"}

# Run as `python -c` in a fresh process; prints one JSON line. Both peaks are in KiB.
LOAD_SCRIPT = """
import json, resource, sys
from unifork.checkpoint import load_model

def peak_kib():
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

before = peak_kib()
model = load_model(sys.argv[1], task={task})
after = peak_kib()
print(json.dumps({{"before_kib": before, "after_kib": after, "parameters": model.param_counts()["total"]}}))
"""


def load_in_fresh_process(directory: str, load: str) -> dict:
    script = LOAD_SCRIPT.format(task=LOADS[load])
    done = subprocess.run([sys.executable, "-c", script, directory], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"loading {directory} ({load}) in a fresh process failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_figure(cfg: ModelConfig, repeats: int) -> dict:
    """Peak-RSS growth of full and gen-only loading (alternating fresh processes) and parameters per part."""
    model = bench_model(cfg)
    with tempfile.TemporaryDirectory(prefix="unifork-bench-") as directory:
        save_model(model, directory)
        runs: dict[str, list[dict]] = {load: [] for load in LOADS}
        for _ in range(repeats):
            for load in LOADS:
                runs[load].append(load_in_fresh_process(directory, load))
    growth_mb = {load: [(r["after_kib"] - r["before_kib"]) / 1024 for r in rs] for load, rs in runs.items()}
    peak_mb = {load: [r["after_kib"] / 1024 for r in rs] for load, rs in runs.items()}
    counts = model.param_counts()
    return {
        "ratio": pairwise_ratio(growth_mb["gen"], growth_mb["full"]),
        "peak_rss_growth_mb": {load: spread(v) for load, v in growth_mb.items()},
        "peak_rss_mb": {load: spread(v) for load, v in peak_mb.items()},
        "parameters": {"loaded": {load: rs[0]["parameters"] for load, rs in runs.items()}, "per_part": counts},
        "fp32_weights_mb": {part: 4 * n / 2**20 for part, n in counts.items()},
        "ideal_ratio": (counts["trunk"] + counts["gen"]) / counts["total"],
    }

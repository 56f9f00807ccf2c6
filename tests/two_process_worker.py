"""Run by test_distributed.py under torchrun: several 2-process trainings in one launch (start-up dominates).

The process group is joined here, so train() uses it and leaves it up between runs.
"""

import sys
from pathlib import Path

import torch.distributed as dist

from unifork.train.trainer import train

if __name__ == "__main__":
    recipe, root = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo")
    train(recipe, root / "fsdp", progress=False)  # straight, to compare with one process
    train(recipe, root / "cut2", progress=False, max_steps=3)  # stops mid-stage; one process finishes it
    train(recipe, root / "cut1", resume=True, progress=False)  # one process stopped it; two finish it
    dist.destroy_process_group()

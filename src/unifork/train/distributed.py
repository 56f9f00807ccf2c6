"""The process group of a data-parallel run: who this process is, and the few collectives the trainer needs.

torchrun (or `unifork train --nproc N`) sets RANK, LOCAL_RANK and WORLD_SIZE; without them, or with a world of
one, training is the plain single-process loop and none of this touches torch.distributed.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from unifork.errors import UserError

# Rank 0 may train the tokenizers while the others wait in a barrier; the default 10-30 min timeout is too short.
BARRIER_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # joined by start(), so stop() leaves it; a caller's own group stays up

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks (a copy; the input is left alone)."""
        values = values.detach().clone().to(self.device)
        if self.distributed:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    @contextmanager
    def main_first(self):
        """Rank 0 runs the block (e.g. writes files) before the others run it (e.g. read them)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


def start(device: str | None) -> Ranks:
    """Join the process group torchrun describes (gloo on CPU, NCCL on GPU); a world of one joins nothing."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    kind = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")).type
    if world == 1:
        return Ranks(device=torch.device(device or kind))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if kind == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                            "use --nproc-per-node <= the GPUs per node")  # fmt: skip
        torch.cuda.set_device(local_rank)
        placed = torch.device("cuda", local_rank)
    elif kind == "cpu":
        placed = torch.device("cpu")
    else:
        raise UserError(f"multi-process training runs on cpu or cuda, not {kind}")
    owns_group = not dist.is_initialized()
    if owns_group:
        backend = "nccl" if kind == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=BARRIER_TIMEOUT, device_id=placed if kind == "cuda" else None)
    return Ranks(rank=rank, world=world, device=placed, owns_group=owns_group)


def stop(ranks: Ranks) -> None:
    if ranks.owns_group and dist.is_initialized():
        dist.destroy_process_group()

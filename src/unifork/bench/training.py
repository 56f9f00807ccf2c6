"""Figures 3 and 4: what the fork costs a training step, mixed against per-task batches, and MFU on this machine.

One interleaved run times four things round by round, so each ratio compares neighbours in time:

    y_fork      a training step of the Y-fork model on a mixed und + gen batch
    shared      the same step of the fully shared model (fork_layer = n_layers): same depth, same batch
    separate    the Y-fork model on the same rows as two per-task batches (two backward passes, one update)
    matmul      large square fp32 matmuls: the FLOP/s torch reaches here, the denominator of MFU. As many as
                take about one training step, so both sample the machine's load over the same stretch of time
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from unifork.bench.flops import train_step_flops
from unifork.bench.profiling import top_ops
from unifork.bench.timing import interleaved, pairwise_ratio, spread
from unifork.bench.workload import bench_model, training_examples
from unifork.model.config import ModelConfig
from unifork.model.unifork import Batch, UniFork
from unifork.sequences import SequenceBuilder
from unifork.train.optim import make_optimizer
from unifork.train.recipe import StageConfig

# The trainer's optimizer settings; a tiny learning rate keeps repeated steps from drifting anywhere odd.
BENCH_STAGE = StageConfig(name="bench", steps=1, lr=1e-6, warmup=0)


def train_step(model: UniFork, batches: list[Batch]) -> Callable[[], None]:
    """One optimizer step as the trainer takes it: zero grads, backward of each batch's loss (gradients add up),
    clip, AdamW from train.optim."""
    model.train()
    optimizer = make_optimizer(model, BENCH_STAGE)
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        for batch in batches:
            model(batch)["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, BENCH_STAGE.grad_clip)
        optimizer.step()

    return step


def training_figures(cfg: ModelConfig, builder: SequenceBuilder, rows: int, matmul_size: int, repeats: int,
                     warmup: int) -> tuple[dict, dict]:  # fmt: skip
    """(fork-step figure, MFU figure) from one interleaved run over `rows` rows, half und and half gen."""
    und, gen = training_examples(builder, rows // 2, rows - rows // 2)
    mixed = builder.collate(und + gen)
    y_fork, shared = bench_model(cfg), bench_model(cfg, fork_layer=cfg.n_layers)
    y_fork_step = train_step(y_fork, [mixed])
    separate = [builder.collate(und), builder.collate(gen)]
    matmuls, calls = square_matmuls(matmul_size, seconds=_seconds(y_fork_step))
    t = interleaved(
        {
            "y_fork": y_fork_step,
            "shared": train_step(shared, [mixed]),
            "separate": train_step(bench_model(cfg), separate),
            "matmul": matmuls,
        },
        repeats,
        warmup,
    )
    times = {name: spread(s) for name, s in t.wall.items()}
    fork = {
        "ratio": pairwise_ratio(t.wall["y_fork"], t.wall["shared"]),
        "ratio_cpu_time": pairwise_ratio(t.cpu["y_fork"], t.cpu["shared"]),
        "mixed_vs_separate": pairwise_ratio(t.wall["y_fork"], t.wall["separate"]),
        "rows": rows,
        # positions in the collated batches (padding included) and real tokens
        "tokens_per_step": {"mixed": mixed.tokens.numel(), "separate": sum(b.tokens.numel() for b in separate),
                            "real": int(mixed.valid.sum())},
        "fork_layer": cfg.fork_layer,
        "n_layers": cfg.n_layers,
        "parameters": {"y_fork": y_fork.param_counts()["total"], "shared": shared.param_counts()["total"]},
        "seconds": {k: times[k] for k in ("y_fork", "shared", "separate")},
        # both models still hold the gradients of their last step
        "optimizer_step_s": {
            "y_fork": optimizer_seconds(y_fork, repeats),
            "shared": optimizer_seconds(shared, repeats),
        },
    }
    fork["ratio_with_fused_adamw_estimate"] = _with_fused(fork, "y_fork") / _with_fused(fork, "shared")
    flops = train_step_flops(cfg, mixed)
    matmul_flops = calls * 2 * matmul_size**3
    mfu = {
        # credited on real tokens only: padding is work the machine does, not work the step needs
        "mfu": pairwise_ratio(t.wall["matmul"], t.wall["y_fork"], scale=flops["useful"]["total"] / matmul_flops),
        "mfu_cpu_time": pairwise_ratio(t.cpu["matmul"], t.cpu["y_fork"], scale=flops["useful"]["total"] / matmul_flops),
        "step_flops": flops,
        "step_tflops_per_s": flops["useful"]["total"] / times["y_fork"]["median"] / 1e12,
        "matmul_size": matmul_size,
        "matmuls_per_round": calls,
        "matmul_tflops_per_s": matmul_flops / times["matmul"]["median"] / 1e12,
        "seconds": {"train_step": times["y_fork"], "matmul": times["matmul"]},
        "profile": top_ops(y_fork_step, spans=("Optimizer.step",)),
    }
    return fork, mfu


def square_matmuls(size: int, seconds: float) -> tuple[Callable[[], None], int]:
    """A call running as many (size x size) fp32 matmuls as take about `seconds`, and that count."""
    a, b, product = torch.randn(size, size), torch.randn(size, size), torch.empty(size, size)
    one = min(_seconds(lambda: torch.mm(a, b, out=product)) for _ in range(2))  # the first call is cold
    calls = max(1, min(1000, round(seconds / one)))

    def run() -> None:
        for _ in range(calls):
            torch.mm(a, b, out=product)

    return run, calls


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def optimizer_seconds(model: UniFork, repeats: int) -> dict:
    """optimizer.step alone over the model's current gradients: the trainer's AdamW against fused=True.

    The optimizer's share of a step grows with the parameter count, which the Y-fork raises; this says how much
    of the fork's step cost a fused AdamW would take back.
    """
    trainer = make_optimizer(model, BENCH_STAGE)
    groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in trainer.param_groups]
    fused = torch.optim.AdamW(groups, lr=BENCH_STAGE.lr, betas=trainer.defaults["betas"], fused=True)
    t = interleaved({"trainer": trainer.step, "fused": fused.step}, repeats, warmup=1)
    return {name: spread(s) for name, s in t.wall.items()}


def _with_fused(fork: dict, model: str) -> float:
    """Median step time of `model` with its measured optimizer step swapped for the fused one."""
    opt = fork["optimizer_step_s"][model]
    return fork["seconds"][model]["median"] - opt["trainer"]["median"] + opt["fused"]["median"]

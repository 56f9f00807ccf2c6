"""The flags of `unifork train`, in one place: the CLI's `train` command and each torchrun rank
(`python -m unifork.train`, which must not import the CLI and everything it reaches) parse the same ones."""

from __future__ import annotations

import argparse
import os


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="recipe file, e.g. configs/quickstart.toml, or a packaged recipe's name (quickstart)")
    parser.add_argument("--out", required=True, help="run directory (recipe.toml, stages/, checkpoint/, metrics.jsonl)")
    parser.add_argument("--resume", action="store_true", help="continue a run in --out: skip finished stages, resume the cut one")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop after this many steps (checkpointed; continue later with --resume)")
    parser.add_argument("--nproc", type=int, default=1,
                        help="data-parallel processes on this machine, started through torchrun (batch_size stays the global batch)")
    parser.add_argument("--strategy", default="fsdp", help="with several processes: fsdp (FSDP2, sharded) | ddp (replicated)")
    parser.add_argument("--compile", action="store_true", help="torch.compile each block (for GPUs; falls back to eager if it fails)")


def run_train(args: argparse.Namespace) -> None:
    from unifork.train.launch import launch
    from unifork.train.trainer import train

    settings = dict(resume=args.resume, device=args.device, max_steps=args.max_steps, strategy=args.strategy,
                    compile=args.compile)  # fmt: skip
    if args.nproc > 1:
        return launch(args.nproc, args.config, args.out, **settings)
    final = train(args.config, args.out, **settings)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, one line from rank 0
        return
    if final is None:
        print(f"continue with: unifork train --config {args.config} --out {args.out} --resume", flush=True)
    else:
        print(f"training finished; final checkpoint in {final} (use it as --ckpt)")

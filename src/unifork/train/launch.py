"""`unifork train --nproc N`: start N training processes on this machine through torchrun (docs/scale.md)."""

from __future__ import annotations

import os
import subprocess
import sys

from unifork.errors import UserError, param
from unifork.train.recipe import check_split, load_recipe


def launch(nproc: int, config: str, out: str, resume: bool = False, device: str | None = None,
           max_steps: int | None = None, strategy: str = "fsdp", compile: bool = False) -> None:  # fmt: skip
    """Run `torchrun --standalone --nproc-per-node N -m unifork.train ...` and wait for it.

    --standalone picks a free local port for the rendezvous; a multi-node cluster runs torchrun itself.
    """
    if nproc < 1:
        raise UserError(f"{param('nproc')} must be at least 1, got {nproc}")
    if "WORLD_SIZE" in os.environ:
        raise UserError(f"{param('nproc')} starts processes; under torchrun leave it out (torchrun's --nproc-per-node "
                        "sets the world)")  # fmt: skip
    check_split(load_recipe(config).stages, nproc)  # a bad recipe is one line here, not N tracebacks from torchrun
    args = ["--config", str(config), "--out", str(out), "--strategy", strategy]
    args += ["--resume"] * resume + ["--compile"] * compile
    args += ["--device", device] if device else []
    args += ["--max-steps", str(max_steps)] if max_steps is not None else []
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "unifork.train", *args]  # fmt: skip
    code = subprocess.run(command, check=False).returncode
    if code != 0:
        raise UserError(f"a training process exited with status {code}; its message is above")

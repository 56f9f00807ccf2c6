"""Muon on the transformer blocks' weight matrices, AdamW on everything else, behind one optimizer interface.

Muon (Jordan et al. 2024; "Muon is Scalable for LLM Training", arXiv 2502.16982) orthogonalises each matrix's
momentum with a Newton-Schulz iteration; it is meant for hidden-layer matrices only, so embeddings, output
heads, the projector, norms and biases stay on AdamW. Moonshot's lr scale (0.2 * sqrt(max(rows, cols))) lets
both share a stage's lr and weight decay. On the quickstart (tiny model, 1 CPU thread, same run length) Muon
took the generation loss after 300 pre-training steps from 2.01 (AdamW) to 1.51, and VQA from 0.59-0.77 to 0.88.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

# Keller Jordan's quintic coefficients: the largest slope at zero that still keeps singular values in ~[0.5, 1.5].
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
# Matrices of one shape are orthogonalised in stacks of at most this many elements (2 MiB of float32): batched
# matmuls use both threads better than one matrix at a time, and larger stacks fall out of cache (the tiny model,
# 2 threads: 27 MLP matrices in stacks of 9, 26.7 ms per step; all 27 at once 31.9 ms; one at a time 42.6 ms).
STACK_ELEMENTS = 2**19


def orthogonalize(x: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Newton-Schulz: (k, m, n) matrices with m <= n -> matrices with the same singular vectors and singular
    values in ~[0.5, 1.5] (U S' V^T, approximately U V^T), in float32."""
    a, b, c = NS_COEFFICIENTS
    x = x.float()
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp_min(eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.mT  # (k, m, m): the small side, hence m <= n
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x


class Muon(torch.optim.Optimizer):
    """torch.optim.Muon's update (momentum as a moving average, Nesterov, decoupled weight decay, the
    "match_rms_adamw" lr scale), written here because torch's runs Newton-Schulz in bfloat16, one matrix at a
    time: on this CPU (no bf16 units) a step over the tiny model's 63 matrices took 42 ms that way and 31 ms here,
    in float32 and batched over matrices of one shape (2 threads, the quickstart's; at 1 thread 45 vs 53 ms).
    Float32 also keeps 2 DDP processes equal to 1: weights 3.8e-7 apart after 4 steps, against 4.3e-4 in bf16.
    """

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.95, ns_steps: int = 5):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "ns_steps": ns_steps})

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            for stack in self._momentum_stacks(group):
                ortho = orthogonalize(torch.stack([update for _, update, _ in stack]), group["ns_steps"])
                for (p, _, tall), o in zip(stack, ortho):
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(o.mT if tall else o, alpha=-group["lr"] * 0.2 * math.sqrt(max(p.shape)))

    def _momentum_stacks(self, group: dict):
        """Update the momentum of each parameter with a gradient; yield [(param, Nesterov update laid wide,
        whether it was tall)] in stacks of one shape and at most STACK_ELEMENTS elements."""
        by_shape = defaultdict(list)
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - group["momentum"])
            update = p.grad.lerp(buf, group["momentum"])
            tall = update.shape[0] > update.shape[1]
            by_shape[(min(update.shape), max(update.shape))].append((p, update.mT if tall else update, tall))
        for (m, n), same in by_shape.items():
            size = max(1, STACK_ELEMENTS // (m * n))
            yield from (same[i : i + size] for i in range(0, len(same), size))


class MuonWithAdamW:
    """Two optimizers stepped together; `param_groups` lists both (AdamW's first), so setting a group's lr
    reaches the optimizer that owns it, and the state dict is in the single-optimizer format: ids count
    through AdamW's parameters, then Muon's, so checkpoint code that maps ids to parameters works unchanged.
    """

    def __init__(self, adamw: torch.optim.Optimizer, muon: Muon):
        self.adamw, self.muon = adamw, muon
        self.parts = (adamw, muon)

    @property
    def param_groups(self) -> list[dict]:
        return self.adamw.param_groups + self.muon.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for part in self.parts:
            part.step()

    def state_dict(self) -> dict:
        merged, offset = {"state": {}, "param_groups": []}, 0
        for part in self.parts:
            sd = part.state_dict()
            merged["state"].update({offset + i: s for i, s in sd["state"].items()})
            merged["param_groups"] += [g | {"params": [offset + i for i in g["params"]]} for g in sd["param_groups"]]
            offset += sum(len(g["params"]) for g in sd["param_groups"])
        return merged

    def load_state_dict(self, saved: dict) -> None:
        if len(saved["param_groups"]) != len(self.param_groups):  # as torch's optimizers check
            raise ValueError(f"saved state has {len(saved['param_groups'])} parameter groups, this optimizer {len(self.param_groups)}")
        groups, offset = iter(saved["param_groups"]), 0
        for part in self.parts:
            mine = [next(groups) for _ in part.param_groups]
            n = sum(len(g["params"]) for g in mine)
            state = {i - offset: s for i, s in saved["state"].items() if offset <= i < offset + n}
            part.load_state_dict({"state": state, "param_groups": [g | {"params": [i - offset for i in g["params"]]} for g in mine]})
            offset += n

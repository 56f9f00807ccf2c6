"""Mutual k-nearest-neighbour alignment of two paired feature spaces (Huh et al. 2024, "The Platonic
Representation Hypothesis", Sec. 2): the mean fraction of each sample's k nearest neighbours in one space that are
also among its k nearest neighbours in the other. 1.0 = the same neighbourhoods; k / (N - 1) = chance.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from unifork.errors import UserError

Features = np.ndarray | torch.Tensor


def chance_alignment(n: int, k: int) -> float:
    """Expected alignment of two unrelated spaces: k random neighbours out of N - 1 share k * k / (N - 1)."""
    return k / (n - 1)


def check_sizes(n: int, k: int) -> None:
    """Each sample needs k neighbours other than itself: N > k (callers check before computing features)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UserError(f"k (neighbours per sample) must be a positive integer, got {k!r}")
    if n <= k:
        raise UserError(f"mutual k-NN needs more samples than k: got N={n} samples for k={k}; lower k or add samples")


def _as_matrix(x: Features, name: str) -> torch.Tensor:
    # float64: a rotated or rescaled copy of a space must rank neighbours identically, so rounding must not flip
    # near-equal similarities
    x = torch.as_tensor(x).detach().cpu().double()
    if x.ndim != 2:
        raise UserError(f"{name} features must be a 2-D (samples, dim) array, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise UserError(f"{name} features contain NaN or infinite values")
    return x


def knn_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """(N, k) indices of each row's k most cosine-similar other rows; ties go to the lower index."""
    x = F.normalize(x, dim=1)
    sim = x @ x.T  # (N, N)
    sim.fill_diagonal_(-torch.inf)  # a sample is not its own neighbour
    # a stable sort keeps equal similarities in index order, so results do not depend on the sort kernel
    return torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :k]


def mutual_knn_alignment(a: Features, b: Features, k: int) -> float:
    """Alignment of paired features a (N, Da) and b (N, Db): row i of a and row i of b describe the same sample."""
    a, b = _as_matrix(a, "first"), _as_matrix(b, "second")
    n = a.shape[0]
    if b.shape[0] != n:
        raise UserError(f"paired features need the same number of samples, got {n} and {b.shape[0]}")
    check_sizes(n, k)
    in_a = torch.zeros(n, n, dtype=torch.bool).scatter_(1, knn_indices(a, k), True)
    in_b = torch.zeros(n, n, dtype=torch.bool).scatter_(1, knn_indices(b, k), True)
    shared = (in_a & in_b).sum(dim=1)  # (N,) neighbours common to both spaces
    return float(shared.double().mean() / k)


def layerwise_alignment(a_layers: Sequence[Features] | Features, b_layers: Sequence[Features] | Features,
                        k: int) -> list[float]:  # fmt: skip
    """Alignment per layer of two stacks, each (layers, N, D) or a list of (N, D) or a single (N, D).

    A single (N, D) space is compared with every layer of the other stack (e.g. fixed image features against
    each layer of a language model); two stacks must have the same number of layers.
    """
    a_layers, b_layers = _as_stack(a_layers), _as_stack(b_layers)
    if len(a_layers) == 1:
        a_layers = a_layers * len(b_layers)
    if len(b_layers) == 1:
        b_layers = b_layers * len(a_layers)
    if len(a_layers) != len(b_layers):
        raise UserError(f"feature stacks have {len(a_layers)} and {len(b_layers)} layers; give equal counts or one (N, D) array")
    return [mutual_knn_alignment(a, b, k) for a, b in zip(a_layers, b_layers)]


def _as_stack(x: Sequence[Features] | Features) -> list[Features]:
    if isinstance(x, (np.ndarray, torch.Tensor)):
        if x.ndim == 2:
            return [x]
        if x.ndim == 3:
            return list(x)
        raise UserError(f"features must be (N, D) or (layers, N, D), got shape {tuple(x.shape)}")
    return list(x)

"""Per-layer task conflict: the gradient cosine is right on losses whose answer is known, and `unifork conflict`
measures every shared layer of a checkpoint and says which layers have none to measure."""

import json

import pytest
import torch
from torch import nn

from unifork.analysis.conflict import gradient_agreement
from unifork.analysis.recommend import recommend_plan
from unifork.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def pairs(make_pair, n=4):
    g = torch.Generator().manual_seed(0)
    for _ in range(n):
        yield make_pair(torch.randn(5, generator=g), torch.randn(3, generator=g))


def test_gradient_cosine_on_constructed_losses():
    w1, w2 = nn.Parameter(torch.randn(5)), nn.Parameter(torch.randn(3))
    f = lambda x: ((w1 * x).sum() - 1) ** 2  # noqa: E731 -- reaches w1 only
    g = lambda y: (w2 * y).sum() ** 2  # noqa: E731 -- reaches w2 only

    def identical(x, y):
        loss = f(x) + g(y)
        return loss, loss

    def flipped(x, y):
        loss = f(x) + g(y)
        return loss, -3 * loss  # opposite direction, three times the norm

    for make_pair, cosine, ratio in ((identical, 1.0, 1.0), (flipped, -1.0, 1 / 3)):
        (both,) = gradient_agreement([[w1, w2]], pairs(make_pair))
        assert both["cosine"]["mean"] == pytest.approx(cosine, abs=1e-4)
        assert both["norm_ratio"]["mean"] == pytest.approx(ratio, abs=1e-4)
    # Disjoint parameters: each loss's gradient is zero where the other's is not.
    (disjoint,) = gradient_agreement([[w1, w2]], pairs(lambda x, y: (f(x), g(y))))
    assert disjoint["cosine"]["mean"] == pytest.approx(0.0, abs=1e-6)
    # Groups are measured apart: on w1 the losses agree, on w2 they are opposed.
    agree, oppose = gradient_agreement([[w1], [w2]], pairs(lambda x, y: (f(x) + g(y), f(x) - g(y))))
    assert agree["cosine"]["mean"] == pytest.approx(1.0, abs=1e-4) and oppose["cosine"]["mean"] == pytest.approx(-1.0, abs=1e-4)


def test_cosine_interval_covers_its_batches():
    w = nn.Parameter(torch.randn(5))
    # Random partner directions: cosines vary from batch to batch, so the interval has width and holds the mean.
    (result,) = gradient_agreement([[w]], pairs(lambda x, y: ((w * x).sum(), (w * torch.cat([y, x[:2]])).sum()), n=6))
    lo, hi = result["cosine"]["ci95"]
    assert -1 <= lo < result["cosine"]["mean"] < hi <= 1 + 1e-9


def test_cli_conflict_measures_the_shared_layers_of_a_checkpoint(ckpt, tmp_path, capsys):
    out, plot = tmp_path / "c.json", tmp_path / "c.png"
    assert main(["conflict", "--ckpt", str(ckpt), "--out", str(out), "--plot", str(plot), "--n-batches", "3",
                 "--batch-size", "4", "--align-samples", "16"]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    fork, n_layers = 2, 4  # the debug model: layers 0-1 shared, 2-3 per task
    assert result["shared_layers"] == list(range(fork)) and len(result["layers"]) == n_layers
    for layer in result["layers"]:
        if layer["layer"] < fork:
            assert layer["shared"] and -1 <= layer["cosine"]["mean"] <= 1 and layer["norm_ratio"]["mean"] > 0
        else:
            assert not layer["shared"] and "per-task" in layer["why"] and "cosine" not in layer
    assert -1 <= result["embeddings"]["cosine"]["mean"] <= 1
    printed = capsys.readouterr().out
    assert plot.stat().st_size > 0 and "layer 0: cosine" in printed
    plan = result["recommendation"]["plan"]
    assert plan[fork:] == "tt" and f"recommended sharing plan: {plan}" in printed and "meant for a fully shared" in printed
    assert len(result["alignment"]["und"]) == n_layers + 1
    assert main(["conflict", "--ckpt", str(ckpt), "--out", str(tmp_path / "e.json"), "--n-batches", "1"]) == 2
    err = capsys.readouterr().err
    assert "--n-batches must be at least 2" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "e.json").exists()


def _layer(i, lo, hi):
    return {"layer": i, "shared": True, "cosine": {"mean": (lo + hi) / 2, "ci95": [lo, hi]}}


def test_recommendation_splits_where_gradients_conflict_or_alignment_diverges():
    conflict = {"layers": [_layer(0, -0.1, 0.1), _layer(1, -0.2, -0.05), _layer(2, -0.1, 0.1), _layer(3, 0.1, 0.2),
                           {"layer": 4, "shared": False}]}  # fmt: skip
    # states 0..5: layer 2 moves und up and gen down (beyond noise); layer 3 both up; layer 0 opposite but tiny
    alignment = {"und": [0.10, 0.11, 0.20, 0.30, 0.40, 0.40], "gen": [0.10, 0.095, 0.15, 0.10, 0.20, 0.20]}
    result = recommend_plan(conflict, alignment)
    assert result["plan"] == "sttst"
    why = [layer["why"] for layer in result["layers"]]
    assert "gradients conflict" in why[1] and "alignment diverges" in why[2] and why[4] == "per task already"
    assert recommend_plan(conflict, alignment, noise=0.1)["plan"] == "stsst"  # a larger noise floor reads no move

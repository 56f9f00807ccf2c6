"""The benchmark suite: its references compute what they claim (same draws, same network, exact FLOP count), the
side-by-side timer pairs its rounds, and `unifork bench` writes a complete JSON. Nothing here checks speed."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from unifork.bench import bench_settings
from unifork.bench.flops import train_step_flops
from unifork.bench.kv_cache import recompute_decoding, samplers
from unifork.bench.timing import interleaved, pairwise_ratio
from unifork.bench.workload import bench_config, bench_model, bench_tokenizer, text_prompts, training_examples
from unifork.cli import main
from unifork.errors import UserError
from unifork.inference.answers import sample_text
from unifork.inference.sampler import CodeRequest, sample_codes_per_request, sample_image_codes
from unifork.inference.settings import SamplingSettings
from unifork.sequences import SequenceBuilder

HEADLINES = ("kv_cache_speedup", "hf_generate_speedup", "fork_step_ratio", "mixed_batch_ratio", "mfu",
             "task_only_memory_ratio", "speculative_speedup", "speculative_steps_ratio")  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def builder() -> SequenceBuilder:
    text = bench_tokenizer()
    return SequenceBuilder(text, bench_config("debug", text))


@pytest.fixture(scope="module")
def model(builder):
    model = bench_model(builder.cfg)
    with torch.no_grad():  # larger weights than the init: peaked logits, so greedy draws depend on the prefix
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.1)
    return model


@pytest.mark.parametrize("rope_2d", [False, True])
@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_recompute_decoding_draws_what_the_cached_sampler_draws(model, builder, cfg_scale, rope_2d):
    if rope_2d:  # the same weights under multimodal RoPE: the cache must track each code's row and column
        builder = SequenceBuilder(builder.text, replace(builder.cfg, rope_2d=True))
        twin = type(model)(builder.cfg).eval()
        twin.load_state_dict(model.state_dict())
        model = twin
    prompts = ["a red circle", "two large blue squares to the left of a green circle"]
    greedy = SamplingSettings(cfg_scale=cfg_scale, temperature=0)
    cached = sample_image_codes(model, builder, prompts, greedy)
    recomputed = sample_codes_per_request(model, builder, [CodeRequest(prompts, greedy)], recompute_decoding)[0]
    assert cached.shape == (2, model.cfg.image_tokens)
    assert torch.equal(cached, recomputed)


def test_the_kv_cache_figure_times_the_sampler_users_run(model, builder):
    prompts = ["a red circle", "a blue square"]
    timed = samplers(model, builder, prompts)
    assert torch.equal(timed["kv_cache"](), sample_image_codes(model, builder, prompts, generator=torch.Generator().manual_seed(0)))
    assert timed["recompute"]().shape == (2, model.cfg.image_tokens)


def test_flop_count_equals_torchs_count_of_the_matmuls(model, builder):
    """Every linear layer, head and projector FLOP of forward + backward, exactly; torch does not count CPU SDPA,
    so attention is checked against its formula alone."""
    und, gen = training_examples(builder, 3, 2)
    batch = builder.collate(und + gen)
    model.train()
    with FlopCounterMode(display=False) as counter:
        model(batch)["loss"].backward()
    model.zero_grad(set_to_none=True)
    model.eval()
    flops = train_step_flops(model.cfg, batch)
    assert flops["matmul"] == counter.get_total_flops()
    widths = {task: int(batch.valid[batch.task == task].sum(-1).max()) for task in (0, 1)}  # rows run per task
    squares = sum(int((batch.task == task).sum()) * w**2 for task, w in widths.items())
    assert max(widths.values()) == batch.tokens.shape[1] > min(widths.values())  # so the count means something
    assert flops["attention"] == 12 * model.cfg.n_layers * squares * model.cfg.d_model
    assert flops["total"] == flops["matmul"] + flops["attention"]
    useful = flops["useful"]
    assert useful["attention"] == 12 * model.cfg.n_layers * int((batch.valid.sum(-1) ** 2).sum()) * model.cfg.d_model
    assert useful["layers"] < flops["layers"] and useful["heads"] == flops["heads"]


def test_hf_twin_is_our_und_path_and_generates_the_asked_length(model, builder):
    pytest.importorskip("transformers")
    from unifork.bench.hf_generate import _max_logit_diff, hf_sample_text, hf_twin

    twin = hf_twin(model, builder)
    batch = builder.collate(text_prompts(builder, 3))  # questions of different lengths: left padding
    assert not batch.valid.all()
    assert _max_logit_diff(model, twin, batch) < 1e-4
    assert hf_sample_text(twin, batch, 7).shape == (3, 7)
    assert sample_text(model, batch, 7, temperature=1.0).shape == (3, 7)  # the figure's side: no stop at EOS


def test_interleaved_alternates_the_order_and_pairs_rounds():
    calls = []
    t = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then alternating rounds
    assert len(t.wall["a"]) == len(t.cpu["b"]) == 3
    ratio = pairwise_ratio([2.0, 6.0, 3.0], [1.0, 2.0, 3.0])
    assert (ratio["median"], ratio["min"], ratio["max"]) == (2.0, 1.0, 3.0)


def test_settings_refuse_unknown_sizes_and_no_repeats():
    with pytest.raises(UserError, match="unknown size 'huge'"):
        bench_settings(size="huge")
    with pytest.raises(UserError, match="repeats must be at least 1"):
        bench_settings(repeats=0)
    assert bench_settings(quick=True).size == "small" and bench_settings().size == "base"


@pytest.mark.slow
def test_bench_cli_writes_every_figure(tmp_path, capsys, ckpt):
    pytest.importorskip("transformers")
    out = tmp_path / "bench.json"
    args = ["bench", "--size", "debug", "--repeats", "1", "--threads", "1", "--ckpt", str(ckpt), "--out", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    for name in HEADLINES:
        assert math.isfinite(result[name]) and result[name] > 0, name
    assert set(result["targets"]) == {"kv_cache_speedup", "hf_generate_speedup", "fork_step_ratio", "mfu",
                                      "mixed_batch_ratio", "speculative_speedup"}  # fmt: skip
    assert set(result["details"]) == {"kv_cache", "hf_generate", "fork_step", "mfu", "memory", "speculative"}
    speculative = result["details"]["speculative"]
    assert speculative["weights"] == str(ckpt) and speculative["batch_1"]["forward_passes"]["plain"]["median"] == 16
    assert result["details"]["kv_cache"]["batch_8"]["recompute_s"]["values"]  # raw timings beside the ratio
    assert result["details"]["hf_generate"]["max_logit_diff"] < 1e-4
    loaded = result["details"]["memory"]["parameters"]["loaded"]
    assert loaded["gen"] < loaded["full"]
    assert {"torch", "threads", "cpu_model"} <= set(result["machine"]) and result["machine"]["threads"] == 1
    assert "kv_cache_speedup" in capsys.readouterr().out

"""The UniFork model: fork shapes, task routing, branch isolation, KV-cache decoding, padding, causality, checkpoints.

Every model here is the `debug` size (4 layers, d_model 64) on CPU, built from a fixed seed.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from unifork.checkpoint import load_model, save_model
from unifork.errors import UserError
from unifork.model import CODE, IGNORE, LATENT, TASK_ID, TEXT, Batch, UniFork, named_config
from unifork.model.blocks import Block
from unifork.sequences import SequenceBuilder
from unifork.tokenizers.text import TextTokenizer, world_corpus
from unifork.world import World

N_LAYERS = named_config("debug").n_layers
# Every sharing pattern: two separate stacks, the Y at L/2, one fully shared stack, the X, the inverted Y, and an
# explicit plan that interleaves shared and per-task layers (a shared layer after a per-task one re-joins the rows).
PLANS = ["separate", "y", "shared", "x", "inverted_y", "tsts"]
ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer.train(world_corpus(n_samples=200), vocab_size=300)


@pytest.fixture(scope="module")
def texts() -> dict[str, list]:
    """(question, answer) pairs and captions of a few world samples, longest first so padding is exercised."""
    world = World(0, "train")
    samples = [world.sample(i) for i in range(6)]
    qa = sorted({(q, a) for s in samples for _, q, a in s.qa}, key=lambda p: (-len(p[0]), p))
    captions = sorted({c for s in samples for _, c in s.captions}, key=lambda c: (-len(c), c))
    return {"qa": qa, "captions": captions}


def config(tok, sharing: str = "y", **overrides):
    return named_config("debug", text_vocab_size=tok.vocab_size, sharing=sharing, **overrides)


def build(cfg, seed: int = 0) -> UniFork:
    torch.manual_seed(seed)
    return UniFork(cfg).eval()


def image(cfg, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random stand-ins for one image's tokenizer output: codes (L,), latents (L, latent_dim)."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, cfg.image_vocab_size, (cfg.image_tokens,), generator=g)
    return codes, torch.randn(cfg.image_tokens, cfg.image_latent_dim, generator=g)


def und_examples(builder: SequenceBuilder, texts, rows: list[int]):
    """Understanding examples; a larger r picks a shorter question (every third, so lengths differ)."""
    out = []
    for r in rows:
        codes, latents = image(builder.cfg, seed=100 + r)
        question, answer = texts["qa"][r * 3]
        out.append(builder.understand(question, codes, latents, answer))
    return out


def gen_examples(builder: SequenceBuilder, texts, rows: list[int]):
    out = []
    for r in rows:
        codes, _ = image(builder.cfg, seed=200 + r)
        out.append(builder.generate(texts["captions"][r * 3], codes))
    return out


def examples(builder, texts, task: str, rows: list[int]):
    return (und_examples if task == "und" else gen_examples)(builder, texts, rows)


def columns(batch: Batch, start: int, stop: int) -> Batch:
    """Positions [start, stop) of a batch, as `UniFork.step` takes them (latents only with their slots)."""
    kinds = batch.kinds[:, start:stop]
    has_latents = bool((kinds == LATENT).any())
    # a slice must hold every LATENT slot of a row or none, since latents are scattered per whole image
    assert not has_latents or (kinds == LATENT).sum() == (batch.kinds == LATENT).sum()
    return Batch(
        tokens=batch.tokens[:, start:stop],
        kinds=kinds,
        valid=batch.valid[:, start:stop],
        task=batch.task,
        latents=batch.latents if has_latents else None,
        image_index=batch.grid_cells()[:, start:stop],
    )


def cached_logits(model: UniFork, task: str, batch: Batch, prefill: int) -> torch.Tensor:
    """Prefill the first `prefill` columns in one step, then decode the rest one column at a time."""
    b, t = batch.tokens.shape
    cache = model.new_cache(b)
    positions = model.rope_positions(batch)  # (B, T), or (3, B, T) with rope_2d
    out = [model.step(task, columns(batch, 0, prefill), batch.valid[:, :prefill], positions[..., :prefill], cache)]
    for i in range(prefill, t):
        out.append(model.step(task, columns(batch, i, i + 1), batch.valid[:, : i + 1], positions[..., i : i + 1], cache))
    return torch.cat(out, dim=1)  # (B, T, V)


def has_grad(p: torch.nn.Parameter) -> bool:
    return p.grad is not None and bool(p.grad.abs().sum() > 0)


# ---------------------------------------------------------------- shapes and routing


@pytest.mark.parametrize("sharing", PLANS)
def test_layers_per_part_follow_the_plan(tok, sharing):
    model = build(config(tok, sharing))
    plan = model.cfg.plan
    assert plan == {"separate": "tttt", "y": "sstt", "shared": "ssss", "x": "tsst", "inverted_y": "ttss"}.get(sharing, sharing)
    assert len(model.trunk.layers) == plan.count("s")
    assert len(model.und.layers) == len(model.gen.layers) == plan.count("t")
    # each path runs its layers in plan order: the shared ones are one object on both paths
    und_path, gen_path = model.path_layers("und"), model.path_layers("gen")
    assert "".join("s" if a is b else "t" for a, b in zip(und_path, gen_path, strict=True)) == plan
    assert model.und.head.out_features == tok.vocab_size
    assert model.gen.head.out_features == model.cfg.image_vocab_size
    # every sample passes through n_layers blocks whatever the fork
    assert len(model.new_cache(1)) == N_LAYERS


@pytest.mark.parametrize("sharing", PLANS)
def test_mixed_forward_and_logit_shapes(tok, texts, sharing):
    cfg = config(tok, sharing)
    model, builder = build(cfg), SequenceBuilder(tok, cfg)
    batch = builder.collate([*und_examples(builder, texts, [0, 1]), *gen_examples(builder, texts, [0])])
    losses = model(batch)
    assert set(losses) == {"und", "gen", "loss"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    torch.testing.assert_close(losses["loss"], losses["und"] + losses["gen"])
    # an untrained model is near uniform over each head's vocabulary: the loss is ~ log V
    assert abs(losses["und"].item() - math.log(tok.vocab_size)) < 0.5
    assert abs(losses["gen"].item() - math.log(cfg.image_vocab_size)) < 0.5
    b, t = batch.tokens.shape
    assert model.logits("und", batch).shape == (b, t, tok.vocab_size)
    assert model.logits("gen", batch).shape == (b, t, cfg.image_vocab_size)


@pytest.mark.parametrize("sharing", PLANS)
def test_mixed_batch_routes_each_row_to_its_branch(tok, texts, sharing):
    """Loss of an interleaved mixed batch == losses of the und-only and gen-only batches run on their own."""
    cfg = config(tok, sharing)
    model, builder = build(cfg), SequenceBuilder(tok, cfg)
    und, gen = und_examples(builder, texts, [0, 1, 2]), gen_examples(builder, texts, [0, 1])
    mixed = builder.collate([gen[0], und[0], und[1], gen[1], und[2]])  # latent rows not first, not contiguous
    assert mixed.task.tolist() == [TASK_ID[t] for t in ("gen", "und", "und", "gen", "und")]
    with torch.no_grad():
        together = model(mixed)
        und_alone, gen_alone = model(builder.collate(und)), model(builder.collate(gen))
        assert set(und_alone) == {"und", "loss"} and set(gen_alone) == {"gen", "loss"}
        torch.testing.assert_close(together["und"], und_alone["und"], atol=ATOL, rtol=0)
        torch.testing.assert_close(together["gen"], gen_alone["gen"], atol=ATOL, rtol=0)
        for task, rows in (("und", und), ("gen", gen)):
            # no cross-talk between rows: the loss is the token-weighted mean of each row's loss computed alone
            counts = [sum(t != IGNORE for t in e.targets) for e in rows]
            one_by_one = sum(model(builder.collate([e]))[task] * n for e, n in zip(rows, counts)) / sum(counts)
            torch.testing.assert_close(together[task], one_by_one, atol=ATOL, rtol=0)
            # and it is the cross-entropy of this task's own branch on its rows only
            targets = mixed.targets[mixed.task == TASK_ID[task]]
            logits = model.logits(task, mixed)[mixed.task == TASK_ID[task]][targets != IGNORE]
            expected = torch.nn.functional.cross_entropy(logits, targets[targets != IGNORE])
            torch.testing.assert_close(together[task], expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("sharing", PLANS)
def test_mixed_step_gradients_equal_the_padded_steps(tok, texts, sharing):
    """Each task's rows run at their own width; the gradients equal those of every row padded to the longest."""
    cfg = config(tok, sharing)
    model, builder = build(cfg), SequenceBuilder(tok, cfg)
    mixed = builder.collate([*gen_examples(builder, texts, [0, 1]), *und_examples(builder, texts, [0, 1])])
    gen_width = int(mixed.valid[mixed.task == TASK_ID["gen"]].sum(-1).max())
    assert gen_width < mixed.tokens.shape[1]  # generation rows are shorter: a padded step would pad them

    def gradients(loss):
        model.zero_grad(set_to_none=True)
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    grouped = gradients(model(mixed)["loss"])
    padded_loss = 0
    for task in ("und", "gen"):
        rows = mixed.task == TASK_ID[task]
        targets = mixed.targets[rows]
        logits = model.logits(task, mixed)[rows][targets != IGNORE]
        padded_loss = padded_loss + torch.nn.functional.cross_entropy(logits, targets[targets != IGNORE])
    padded = gradients(padded_loss)
    assert grouped.keys() == padded.keys()
    for name in grouped:
        torch.testing.assert_close(grouped[name], padded[name], atol=1e-5, rtol=1e-4, msg=name)


# ---------------------------------------------------------------- parameter counts


def test_parameter_counts_grow_with_the_unshared_depth(tok):
    per_block = sum(p.numel() for p in Block(config(tok)).parameters())
    totals = {}
    for fork in range(N_LAYERS + 1):
        model = build(config(tok, fork_layer=fork))
        counts = model.param_counts()
        assert counts["total"] == sum(p.numel() for p in model.parameters())
        assert counts["trunk"] + counts["und"] + counts["gen"] == counts["total"]
        totals[fork] = counts["total"]
    shared, forked, separate = totals[N_LAYERS], totals[N_LAYERS // 2], totals[0]
    assert shared < forked < separate
    for fork, total in totals.items():
        # one extra copy of the layers [fork, n_layers) for the second branch
        assert total - shared == (N_LAYERS - fork) * per_block
    for sharing in PLANS:  # any plan: one extra copy of each per-task layer
        model = build(config(tok, sharing))
        assert model.param_counts()["total"] - shared == model.cfg.plan.count("t") * per_block


# ---------------------------------------------------------------- gradients reach only the right branch


@pytest.mark.parametrize("sharing", PLANS)
@pytest.mark.parametrize("task", ["und", "gen"])
def test_gradients_reach_only_the_task_branch(tok, texts, task, sharing):
    cfg = config(tok, sharing)
    model, builder = build(cfg), SequenceBuilder(tok, cfg)
    model(builder.collate(examples(builder, texts, task, [0, 1])))["loss"].backward()
    params = dict(model.named_parameters())
    other = "gen" if task == "und" else "und"
    own = [n for n in params if n.startswith(f"{task}.")]
    trunk_layers = [n for n in params if n.startswith("trunk.layers.")]
    assert len(trunk_layers) == cfg.plan.count("s") * len(list(Block(cfg).parameters()))
    assert own and all(has_grad(params[n]) for n in own + trunk_layers), [
        n for n in own + trunk_layers if not has_grad(params[n])
    ]
    assert not any(has_grad(p) for n, p in params.items() if n.startswith(f"{other}."))
    # embeddings: text feeds both tasks; latents enter und through the projector, codes enter gen
    assert has_grad(params["trunk.text_embed.weight"])
    projector = [p for n, p in params.items() if n.startswith("trunk.projector.")]
    if task == "und":
        assert all(has_grad(p) for p in projector)
    else:
        assert not any(has_grad(p) for p in projector)
    assert has_grad(params["trunk.image_embed.weight"]) == (task == "gen")


# ---------------------------------------------------------------- KV cache, padding, causality


@pytest.mark.parametrize("rope_2d", [False, True])
@pytest.mark.parametrize("sharing", PLANS)
@pytest.mark.parametrize("task", ["und", "gen"])
def test_kv_cache_decoding_equals_full_recompute(tok, texts, task, sharing, rope_2d):
    cfg = config(tok, sharing, rope_2d=rope_2d)
    model, builder = build(cfg), SequenceBuilder(tok, cfg)
    batch = builder.collate(examples(builder, texts, task, [0, 2]))  # two rows of different lengths: left padding
    lengths = batch.valid.sum(1)
    assert lengths[0] != lengths[1]
    # prefill through the last image slot of either row; decode every later column one at a time
    image_columns = (batch.kinds != TEXT).any(0).nonzero()
    prefill = int(image_columns.max()) + 1 if task == "und" else batch.tokens.shape[1] - 20
    assert batch.tokens.shape[1] - prefill >= 10
    with torch.no_grad():
        full = model.logits(task, batch)
        cached = cached_logits(model, task, batch, prefill)
    assert cached.shape == full.shape
    torch.testing.assert_close(cached[batch.valid], full[batch.valid], atol=ATOL, rtol=0)


@pytest.mark.parametrize("sharing", PLANS)
@pytest.mark.parametrize("task", ["und", "gen"])
def test_row_logits_do_not_depend_on_padding(tok, texts, task, sharing):
    cfg = config(tok, sharing)
    model, builder = build(cfg), SequenceBuilder(tok, cfg)
    long, short = examples(builder, texts, task, [0, 2])
    alone = builder.collate([short])
    padded = builder.collate([long, short])
    n = len(short.tokens)
    assert padded.tokens.shape[1] > n and not padded.valid[1, 0]
    with torch.no_grad():
        torch.testing.assert_close(
            model.logits(task, padded)[1, -n:], model.logits(task, alone)[0], atol=ATOL, rtol=0
        )


@pytest.mark.parametrize("task", ["und", "gen"])
def test_changing_a_later_token_leaves_earlier_logits_unchanged(tok, texts, task):
    cfg = config(tok)
    model, builder = build(cfg), SequenceBuilder(tok, cfg)
    batch = builder.collate(examples(builder, texts, task, [0]))
    j = batch.tokens.shape[1] - 5
    changed_tokens = batch.tokens.clone()
    vocab = tok.vocab_size if batch.kinds[0, j] == TEXT else cfg.image_vocab_size
    changed_tokens[0, j] = (changed_tokens[0, j] + 1) % vocab
    changed = Batch(changed_tokens, batch.kinds, batch.valid, batch.task, batch.latents, batch.targets)
    with torch.no_grad():
        before, after = model.logits(task, batch), model.logits(task, changed)
    torch.testing.assert_close(after[:, :j], before[:, :j], atol=1e-6, rtol=0)
    assert (after[:, j:] - before[:, j:]).abs().amax(-1).min() > 1e-4  # every position from j on sees it


def test_und_logits_see_the_image_latents(tok, texts):
    cfg = config(tok)
    model, builder = build(cfg), SequenceBuilder(tok, cfg)
    batch = builder.collate(und_examples(builder, texts, [0]))
    other = Batch(batch.tokens, batch.kinds, batch.valid, batch.task, batch.latents + 1.0, batch.targets)
    first_latent = int((batch.kinds[0] == LATENT).nonzero().min())
    with torch.no_grad():
        before, after = model.logits("und", batch), model.logits("und", other)
    torch.testing.assert_close(after[:, :first_latent], before[:, :first_latent], atol=1e-6, rtol=0)
    assert (after[:, first_latent:] - before[:, first_latent:]).abs().amax(-1).min() > 1e-4


# ---------------------------------------------------------------- checkpoints


@pytest.fixture(params=["y", "x"])
def saved(tok, texts, tmp_path, request):
    cfg = config(tok, request.param)
    model, builder = build(cfg, seed=3), SequenceBuilder(tok, cfg)
    save_model(model, tmp_path)
    batches = {
        "und": builder.collate(und_examples(builder, texts, [0, 2])),
        "gen": builder.collate(gen_examples(builder, texts, [0, 2])),
    }
    return model, tmp_path, batches


def test_checkpoint_round_trip_reproduces_logits_exactly(saved):
    model, directory, batches = saved
    loaded = load_model(directory)
    assert loaded.cfg == model.cfg and not loaded.training
    with torch.no_grad():
        for task, batch in batches.items():
            assert torch.equal(loaded.logits(task, batch), model.logits(task, batch))
            assert torch.equal(loaded(batch)["loss"], model(batch)["loss"])


@pytest.mark.parametrize("task", ["und", "gen"])
def test_task_only_loading_keeps_trunk_and_one_branch(saved, task):
    model, directory, batches = saved
    other = "gen" if task == "und" else "und"
    part = load_model(directory, task=task)
    assert part.tasks == (task,) and getattr(part, other) is None
    assert not any(n.startswith(f"{other}.") for n in part.state_dict())
    assert sum(p.numel() for p in part.parameters()) < sum(p.numel() for p in model.parameters())
    assert part.param_counts()["total"] == model.param_counts()["total"] - model.param_counts()[other]
    with torch.no_grad():
        assert torch.equal(part.logits(task, batches[task]), model.logits(task, batches[task]))
        with pytest.raises(ValueError, match=f"'{other}' branch is not loaded"):
            part.logits(other, batches[other])


def test_a_config_from_before_sharing_plans_loads_as_the_y(tok, texts, tmp_path):
    model = build(config(tok, fork_layer=1), seed=3)
    save_model(model, tmp_path)
    path = tmp_path / "config.json"
    old = json.loads(path.read_text())
    del old["sharing"]
    path.write_text(json.dumps(old))
    loaded = load_model(tmp_path)
    assert loaded.cfg.plan == "sttt"
    builder = SequenceBuilder(tok, model.cfg)
    batch = builder.collate(gen_examples(builder, texts, [0]))
    with torch.no_grad():
        assert torch.equal(loaded.logits("gen", batch), model.logits("gen", batch))


@pytest.mark.parametrize("edit", [{"d_model": 32}, {"sharing": "tttt"}, {"n_layers": 5}])
def test_loading_with_a_mismatched_config_names_the_weights(saved, edit):
    _, directory, _ = saved
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    with pytest.raises(UserError, match=re.escape(str(directory / "model.safetensors"))):
        load_model(directory)


def test_loading_missing_truncated_or_unknown_key_checkpoints(saved, tmp_path_factory):
    _, directory, _ = saved
    with pytest.raises(UserError, match="missing model config"):
        load_model(tmp_path_factory.mktemp("empty") / "nowhere")
    with pytest.raises(UserError, match="unknown task 'both'"):
        load_model(directory, task="both")
    config_path = directory / "config.json"
    good = config_path.read_text()
    config_path.write_text(json.dumps({**json.loads(good), "n_expert": 4}))
    with pytest.raises(UserError, match="unknown key 'n_expert'"):
        load_model(directory)
    config_path.write_text(good)
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UserError, match=f"corrupt model weights {re.escape(str(weights))}"):
        load_model(directory)
    weights.unlink()
    with pytest.raises(UserError, match="missing model weights"):
        load_model(directory)


# ---------------------------------------------------------------- the und_input switch and config checks


def test_und_input_codes_feeds_image_codes_not_latents(tok, texts):
    cfg = config(tok, und_input="codes")
    model, builder = build(cfg), SequenceBuilder(tok, cfg)
    codes, latents = image(cfg, seed=7)
    question, answer = texts["qa"][0]
    example = builder.understand(question, codes, latents, answer)
    assert example.latents is None and LATENT not in example.kinds
    assert example.kinds.count(CODE) == cfg.image_tokens
    code_at = example.kinds.index(CODE)
    assert example.tokens[code_at : code_at + cfg.image_tokens] == codes.tolist()
    batch = builder.collate([example, *und_examples(builder, texts, [1])])
    assert batch.latents is None
    loss = model(batch)["und"]
    assert torch.isfinite(loss)
    loss.backward()
    params = dict(model.named_parameters())
    assert not any(has_grad(p) for n, p in params.items() if n.startswith("trunk.projector."))
    assert has_grad(params["trunk.image_embed.weight"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"fork_layer": 5}, "fork_layer must be in"),
        ({"fork_layer": -1}, "fork_layer must be in"),
        ({"n_heads": 4, "n_kv_heads": 3}, "divisible by n_kv_heads"),
        ({"und_input": "pixels"}, "und_input must be one of"),
        ({"sharing": "z"}, "sharing must be one of y, x, inverted_y, shared, separate or one letter per layer"),
        ({"sharing": "sst"}, r"one letter per layer \(4 of s = shared"),
        ({"sharing": "ssTT"}, "got 'ssTT'"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(UserError, match=message):
        named_config("debug", **overrides)


# ---------------------------------------------------------------- multimodal RoPE


def test_rope_2d_gives_image_tokens_their_row_and_column(tok, texts):
    cfg = config(tok, rope_2d=True)  # an 8 x 8 grid
    model, builder = build(cfg), SequenceBuilder(tok, cfg)
    gen = builder.collate(gen_examples(builder, texts, [0]))
    t, row, col = model.rope_positions(gen)[:, 0]
    codes = (gen.kinds[0] == CODE).nonzero().squeeze(1)
    start = int(t[codes[0]])
    assert start == int(codes[0])  # the prompt's tokens before it count one each
    cells = torch.arange(len(codes))
    assert (t[codes] == start).all()
    assert torch.equal(row[codes], start + cells // 8) and torch.equal(col[codes], start + cells % 8)
    text = gen.kinds[0] == TEXT
    assert torch.equal(t[text], row[text]) and torch.equal(t[text], col[text])
    und = builder.collate(und_examples(builder, texts, [0]))
    t, row, col = model.rope_positions(und)[:, 0]
    latents = (und.kinds[0] == LATENT).nonzero().squeeze(1)
    after = int(latents[-1]) + 1  # </img>: the text resumes one grid side after the image's start
    assert int(t[after]) == int(t[latents[0]]) + 8 and int(row[latents[9]]) == int(t[latents[0]]) + 1


def test_rope_2d_leaves_text_attention_as_1d(tok, texts):
    """Text alone rotates exactly as under 1-D RoPE, so a forked LM keeps its text logits."""
    flat, multimodal = build(config(tok)), build(config(tok, rope_2d=True))
    multimodal.load_state_dict(flat.state_dict())
    builder = SequenceBuilder(tok, config(tok))
    batch = builder.collate([builder.generate(c) for c in texts["captions"][:3]])  # prompts: text only
    with torch.no_grad():
        assert torch.equal(flat.logits("gen", batch), multimodal.logits("gen", batch))
    images = builder.collate(gen_examples(builder, texts, [0]))
    with torch.no_grad():
        assert not torch.allclose(flat.logits("gen", images), multimodal.logits("gen", images))


def test_rope_2d_needs_a_square_grid(tok):
    with pytest.raises(UserError, match="rope_2d needs a square image grid"):
        config(tok, rope_2d=True, image_tokens=48)

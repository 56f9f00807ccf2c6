"""Residual image codes: the residual tokenizer, packed ids, and the depth head that generates them."""

import itertools
import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from unifork.checkpoint import save_pretrained
from unifork.errors import UserError
from unifork.eval.image_quality import reconstruction_metrics
from unifork.inference import Pipeline
from unifork.inference.sampler import CodeRequest, sample_codes_per_request, sample_image_codes
from unifork.inference.settings import SamplingSettings
from unifork.model import UniFork, named_config
from unifork.model.config import ModelConfig
from unifork.model.unifork import CODE, IGNORE, Batch
from unifork.sequences import Example, SequenceBuilder
from unifork.tokenizers.image import ImageTokenizer, ImageTokenizerConfig
from unifork.tokenizers.residual import pack_levels, unpack_levels
from unifork.tokenizers.text import TextTokenizer, world_corpus
from unifork.train.tokenizer_images import world_images

pytestmark = pytest.mark.usefixtures("one_thread")
CAPTIONS = ["two red circles", "a small blue square to the left of a green triangle", ""]


@given(st.integers(2, 600), st.integers(1, 6), st.integers(0, 2**31))
@settings(max_examples=60, deadline=None)
def test_packed_ids_unpack_to_their_levels(num_codes, depth, seed):
    if num_codes**depth >= 2**62:
        return
    levels = torch.randint(0, num_codes, (5, 7, depth), generator=torch.Generator().manual_seed(seed))
    ids = pack_levels(levels, num_codes)
    assert ids.shape == (5, 7) and int(ids.max()) < num_codes**depth
    assert torch.equal(unpack_levels(ids, num_codes, depth), levels)
    assert depth > 1 or torch.equal(ids, levels[..., 0])  # depth 1: the id is the code


@pytest.mark.parametrize("quantizer", ["fsq", "vq"])
def test_residual_tokenizer_round_trip(quantizer, tmp_path):
    torch.manual_seed(0)
    extra = {"codebook_size": 32, "shared_codebook": True} if quantizer == "vq" else {"fsq_levels": (4, 4, 4)}
    cfg = ImageTokenizerConfig(image_size=32, channels=(8, 16), latent_dim=16, quantizer=quantizer, residual_depth=3, **extra)
    tokenizer = ImageTokenizer(cfg).eval()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    codes = tokenizer.encode(x)
    assert codes.shape == (4, 64) and int(codes.max()) < cfg.code_space == cfg.num_codes**3
    assert unpack_levels(codes, cfg.num_codes, 3).max() < cfg.num_codes
    with torch.no_grad():
        reconstruction, forward_codes, _ = tokenizer(x)
    assert torch.equal(forward_codes, codes)
    assert torch.allclose(tokenizer.decode(codes), reconstruction.clamp(-1, 1), atol=1e-5)  # the codes are the image
    tokenizer.save(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["residual_depth"] == 3
    assert torch.equal(ImageTokenizer.load(tmp_path).encode(x), codes)


def test_depth_two_reconstructs_better_than_depth_one():
    """The same tiny tokenizer, the same images, steps and seed: the second level codes what the first left."""
    images = F.interpolate(world_images("train", 64), size=32, mode="area")
    psnr = {}
    for depth in (1, 2):
        torch.manual_seed(0)
        cfg = ImageTokenizerConfig(image_size=32, channels=(8, 16), latent_dim=16, fsq_levels=(4, 4, 4), residual_depth=depth)
        tokenizer = ImageTokenizer(cfg)
        optimizer = torch.optim.Adam(tokenizer.parameters(), 3e-3)
        for _ in range(250):
            batch = images[torch.randint(0, len(images), (16,))]
            quantized, _, aux = tokenizer.quantize(tokenizer.encoder(batch))
            loss = F.mse_loss(tokenizer.decoder(quantized), batch) + aux
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        psnr[depth] = reconstruction_metrics(tokenizer.eval(), images)["psnr"]
    assert psnr[2] > psnr[1] + 0.5, psnr  # measured: 21.7 -> 23.0 dB


def test_bad_residual_configs_name_the_field():
    with pytest.raises(UserError, match="residual_depth"):
        ImageTokenizerConfig.from_dict({"residual_depth": 0})
    with pytest.raises(UserError, match="int64"):
        ImageTokenizerConfig.from_dict({"quantizer": "vq", "codebook_size": 2**20, "residual_depth": 4})
    with pytest.raises(UserError, match="residual_depth"):
        named_config("debug", residual_depth=0)


# --- the depth head -------------------------------------------------------------------------------------------------


def residual_pipeline(depth=3, num_codes=16):
    """A random debug-size model over a random residual tokenizer at 32 px (16 positions of `depth` codes each)."""
    text = TextTokenizer.train(world_corpus(150), vocab_size=320)
    torch.manual_seed(0)
    image = ImageTokenizer(ImageTokenizerConfig(image_size=32, channels=(16, 32, 64), quantizer="vq", codebook_size=num_codes,
                                                residual_depth=depth)).eval()  # fmt: skip
    cfg = named_config("debug", text_vocab_size=text.vocab_size, image_vocab_size=num_codes, residual_depth=depth,
                       image_tokens=image.cfg.grid**2, image_latent_dim=image.cfg.latent_dim)  # fmt: skip
    model = UniFork(cfg).eval()
    with torch.no_grad():  # peaked logits, so the prompt and the earlier levels matter
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.15)
    return Pipeline(model, text, image)


@pytest.fixture(scope="module")
def pipe():
    return residual_pipeline()


def recompute_codes(pipe, prompts, scale, pick):
    """Codes by full recompute: at each position the whole sequence so far, then its levels one by one through
    code_logits, guided at every level; the unconditional twin follows the conditional row's levels."""
    model, builder, k, depth = pipe.model, pipe.builder, pipe.model.cfg.image_vocab_size, pipe.model.cfg.residual_depth
    rows = [builder.generate(p) for p in prompts] + [builder.generate("") for _ in prompts]
    n, chosen = len(prompts), [[] for _ in prompts]
    for _ in range(model.cfg.image_tokens):
        batch = builder.collate([Example(e.task, e.tokens + chosen[i % n], e.kinds + [CODE] * len(chosen[i % n]),
                                         e.targets + [IGNORE] * len(chosen[i % n])) for i, e in enumerate(rows)])  # fmt: skip
        context = model.logits("gen", batch)[:, -1]
        levels = torch.empty(2 * n, 0, dtype=torch.long)
        for _ in range(depth):
            logits = model.code_logits(context, levels)
            guided = logits[n:] + scale * (logits[:n] - logits[n:])
            level = pick(guided)
            levels = torch.cat([levels, level.repeat(2)[:, None]], dim=1)
        for i, code in enumerate(pack_levels(levels[:n], k).tolist()):
            chosen[i].append(code)
    return torch.tensor(chosen)


def test_depth_head_cached_sampling_equals_full_recompute(pipe):
    greedy = SamplingSettings(cfg_scale=3.0, temperature=0)
    with torch.no_grad():
        expected = recompute_codes(pipe, CAPTIONS[:2], 3.0, lambda logits: logits.argmax(-1))
    got = sample_image_codes(pipe.model, pipe.builder, CAPTIONS[:2], greedy)
    assert torch.equal(got, expected)
    levels = unpack_levels(got, 16, 3)
    assert len(set(levels[..., 1].flatten().tolist())) > 1 and not torch.equal(got[0], got[1])


def test_guidance_at_scale_one_is_conditional_sampling_at_every_level(pipe):
    model, builder = pipe.model, pipe.builder
    plain = sample_image_codes(model, builder, CAPTIONS[:2], SamplingSettings(cfg_scale=1.0), torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # the conditional rows alone, drawn level by level from one generator
        from unifork.inference.draws import sample_next

        expected = recompute_codes(pipe, CAPTIONS[:2], 1.0, lambda logits: sample_next(logits, generator=generator))
    assert torch.equal(plain, expected)
    guided = sample_image_codes(model, builder, CAPTIONS[:2], SamplingSettings(cfg_scale=1 + 1e-12), torch.Generator().manual_seed(3))
    assert torch.equal(guided, plain)  # twins in the batch, guidance at every level: the same draws at scale 1


def test_requests_sample_the_same_codes_alone_or_batched(pipe):
    def requests():
        return [CodeRequest(CAPTIONS[:2], SamplingSettings(cfg_scale=2.0, temperature=0.9, top_k=8), torch.Generator().manual_seed(1)),
                CodeRequest(CAPTIONS[2:], SamplingSettings(cfg_scale=1.0, top_p=0.8), torch.Generator().manual_seed(2))]  # fmt: skip

    batched = sample_codes_per_request(pipe.model, pipe.builder, requests())
    alone = [sample_codes_per_request(pipe.model, pipe.builder, [r])[0] for r in requests()]
    assert all(torch.equal(a, b) for a, b in zip(alone, batched))


def test_depth_one_is_todays_linear_head():
    """At residual depth 1 the gen branch is what it always was: no depth head, one K x C head, the same logits; a
    config written before residual codes existed loads as depth 1."""
    cfg = named_config("debug", image_vocab_size=24, image_tokens=4, text_vocab_size=40)
    assert cfg.residual_depth == 1 and ModelConfig.from_dict({k: v for k, v in vars(cfg).items()
                                                              if k not in ("residual_depth", "depth_head_layers")}) == cfg  # fmt: skip
    torch.manual_seed(0)
    model = UniFork(cfg)
    assert model.gen.depth is None and model.gen.head.weight.shape == (24, cfg.d_model)
    assert model.trunk.image_embed.weight.shape == (24, cfg.d_model)
    assert not any(".depth." in name for name in model.state_dict())
    tokens = torch.randint(0, 24, (2, 6))
    batch = Batch(tokens, torch.full((2, 6), CODE), torch.ones(2, 6, dtype=torch.bool), torch.ones(2, dtype=torch.long))
    with torch.no_grad():
        hidden = model.hidden_states("gen", batch)[-1]
        assert torch.equal(model.logits("gen", batch), F.linear(model.gen.norm(hidden), model.gen.head.weight))
        assert torch.equal(model.trunk.embed_codes(tokens), model.trunk.image_embed(tokens))


def test_the_depth_head_trains_on_every_level():
    cfg = named_config("debug", image_vocab_size=8, image_tokens=4, text_vocab_size=40, residual_depth=2)
    torch.manual_seed(0)
    model = UniFork(cfg)
    codes = pack_levels(torch.randint(0, 8, (4, 4, 2)), 8)
    tokens = torch.cat([torch.randint(0, 40, (4, 2)), codes], dim=1)
    kinds = torch.tensor([[0, 0, CODE, CODE, CODE, CODE]] * 4)
    targets = torch.full((4, 6), IGNORE)
    targets[:, 1:5] = codes  # each position predicts the next image position's code
    batch = Batch(tokens, kinds, torch.ones(4, 6, dtype=torch.bool), torch.ones(4, dtype=torch.long), targets=targets)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-2)
    first = model(batch)["gen"].item()
    assert abs(first - torch.log(torch.tensor(8.0)).item()) < 0.3  # chance on each level at the start
    for _ in range(60):
        loss = model(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        assert model.gen.depth.code_embed.weight.grad.abs().sum() > 0  # the fed levels get gradients
        optimizer.step()
    assert model(batch)["gen"].item() < 0.2 * first  # it memorises all levels of the 4 images


def test_a_residual_checkpoint_generates_through_the_pipeline(pipe, tmp_path):
    save_pretrained(tmp_path, pipe.model, pipe.text_tokenizer, pipe.image_tokenizer)
    loaded = Pipeline.from_pretrained(tmp_path)
    images = loaded.generate("two red circles", n=2, seed=0)
    assert len(images) == 2 and images[0].size == (32, 32)
    assert torch.equal(loaded.generate_codes("two red circles", n=2, seed=0), pipe.generate_codes("two red circles", n=2, seed=0))
    assert Pipeline.from_pretrained(tmp_path, task="gen").generate_codes("a", n=1, seed=1).shape == (1, 16)
    assert isinstance(loaded.ask(images[0], "what color is the circle?"), str)  # understanding reads the latents


# --- speculative decoding over positions of residual codes ------------------------------------------------------------


@pytest.mark.parametrize("window", [1, 3, 8])
def test_greedy_speculative_equals_plain_at_depth_three(window):
    pipe = residual_pipeline()
    model = pipe.model.double()
    plain = sample_image_codes(model, pipe.builder, CAPTIONS, SamplingSettings(cfg_scale=3.0, temperature=0))
    fast = sample_image_codes(model, pipe.builder, CAPTIONS, SamplingSettings(cfg_scale=3.0, temperature=0, speculative=window))
    assert torch.equal(fast, plain)


POSITIONS, K, DEPTH = 4, 2, 2  # 4 packed codes per position, 4**4 = 256 images: each one's probability exactly


def exact_residual_distribution(model, builder, caption: str, settings: SamplingSettings) -> torch.Tensor:
    """The probability (K**D,) * POSITIONS of every image under the plain sampler's rule, by full recompute: at each
    position the guided, filtered level distributions, multiplied over the levels."""
    from unifork.inference.draws import token_probs

    vocab = K**DEPTH
    prompts = [builder.generate(caption), builder.generate("")]
    logp = torch.zeros((vocab,) * POSITIONS, dtype=torch.float64)
    for length in range(POSITIONS):
        prefixes = list(itertools.product(range(vocab), repeat=length))
        rows = [Example(p.task, p.tokens + list(s), p.kinds + [CODE] * length, p.targets + [IGNORE] * length, p.latents)
                for s in prefixes for p in prompts]  # fmt: skip
        with torch.no_grad():
            context = model.logits("gen", builder.collate(rows))[:, -1]
            code_p = torch.ones(len(prefixes), vocab, dtype=torch.float64)
            for code in range(vocab):
                levels = unpack_levels(torch.tensor(code), K, DEPTH)
                for d in range(DEPTH):
                    chosen = levels[:d].expand(len(rows), d)
                    logits = model.code_logits(context, chosen).float()
                    guided = logits[1::2] + settings.cfg_scale * (logits[0::2] - logits[1::2])
                    probs = token_probs(guided, settings.temperature, settings.top_k, settings.top_p)
                    code_p[:, code] *= probs[:, levels[d]].double()
        shape = (vocab,) * length + (vocab,) + (1,) * (POSITIONS - length - 1)
        logp = logp + code_p.log().reshape(shape)
    return logp.exp()


@pytest.mark.parametrize("window", [0, 3])
def test_speculative_samples_the_plain_distribution_of_residual_codes(window):
    """As test_speculative's test: the chi-square of sampled images against the exact probability of each pair of
    neighbouring positions, here with the residual drawn by rejection; window 0 checks the exact distribution."""
    from test_speculative import pair_pvalues

    text = TextTokenizer.train(world_corpus(150), vocab_size=320)
    cfg = named_config("debug", text_vocab_size=text.vocab_size, image_vocab_size=K, residual_depth=DEPTH, image_tokens=POSITIONS)
    torch.manual_seed(3)
    model = UniFork(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 1.0)  # spread distributions (0.35 / 0.65 on a position's top two codes): a wrong rule shows
    builder = SequenceBuilder(text, cfg)
    settings = SamplingSettings(cfg_scale=2.0, temperature=1.2, top_p=0.95, speculative=window)
    exact = exact_residual_distribution(model, builder, CAPTIONS[1], settings)
    generator = torch.Generator().manual_seed(0)
    draws = torch.cat([sample_image_codes(model, builder, [CAPTIONS[1]] * 64, settings, generator) for _ in range(40)])
    pvalues = pair_pvalues(draws, exact)
    assert min(pvalues) > 1e-4, f"chi-square p-values of the position pairs: {pvalues}"


# --- everything else at depth > 1 -------------------------------------------------------------------------------------


def test_residual_codes_through_pretokenized_data_training_and_serving(tmp_path):
    """Depth 4 of 512 codes (ids past 2^31): pretokenized shards keep them exactly, a recipe trains a depth-head
    model on them, and the checkpoint generates through the pipeline, speculative decoding and the server's runner."""
    from conftest import noise_folder
    from safetensors.torch import load_file
    from test_data import STAGE, make_pool
    from test_train import write_recipe

    from unifork.data import pretokenize
    from unifork.serve.runner import GenerateWork, ModelRunner
    from unifork.train.trainer import train

    tok = tmp_path / "tok"
    TextTokenizer.train(world_corpus(200)).save(tok)
    torch.manual_seed(0)
    ImageTokenizer(ImageTokenizerConfig(channels=(16, 32, 64), residual_depth=4)).eval().save(tok)
    (tmp_path / "noise").mkdir()
    source = noise_folder(tmp_path / "noise", n=6, size=64)
    pretokenize(source, tok, tmp_path / "pre", progress=False)
    shard = load_file(str(tmp_path / "pre" / "shard-00000.safetensors"))
    assert shard["codes"].dtype == torch.int64 and int(shard["codes"].max()) >= 2**31
    raw, pre = make_pool(source, tok), make_pool(f"pretokenized:{tmp_path / 'pre'}", tok)
    for step in range(2):
        assert torch.equal(raw.batch(STAGE, 0, step).tokens, pre.batch(STAGE, 0, step).tokens)

    final = train(write_recipe(tmp_path / "r.toml", tok, gen_steps=2, joint_steps=3), tmp_path / "run", progress=False)
    pipe = Pipeline.from_pretrained(final)
    assert pipe.model.cfg.residual_depth == 4 and pipe.model.gen.depth is not None
    plain = pipe.generate_codes("two red circles", n=2, seed=0)
    assert unpack_levels(plain, 512, 4).shape == (2, 64, 4)
    assert pipe.generate_codes("two red circles", n=1, seed=0, speculative=8).shape == (1, 64)
    work = GenerateWork("two red circles", 2, SamplingSettings(), 0)
    (images,) = ModelRunner(pipe).generate([work])
    assert [image.size for image in images] == [(64, 64)] * 2


def test_tokenizer_eval_measures_what_the_codes_keep(tmp_path, capsys):
    """On the study's committed tokenizer (trained 2,000 steps): sharp round trips that the judge still reads."""
    from pathlib import Path

    from unifork.cli import main

    committed = Path(__file__).parent.parent / "docs" / "results" / "study" / "tokenizer"
    assert main(["tokenizer", "eval", "--tokenizer", str(committed), "--images", "32", "--prompts", "2",
                 "--out", str(tmp_path / "t.json")]) == 0  # fmt: skip
    assert "64 positions x 1 codes of 512" in capsys.readouterr().out
    result = json.loads((tmp_path / "t.json").read_text())
    assert result["reconstruction"]["test"]["psnr"] > 30 and result["ceiling"]["accuracy"]["overall"] > 0.5
    assert result["ceiling"]["counts"]["overall"]["total"] == 6 * 2 * 4  # 6 categories, 2 prompts, 4 renderings each
    assert main(["tokenizer", "eval", "--tokenizer", str(committed), "--images", "0"]) == 2
    assert "--images" in capsys.readouterr().err

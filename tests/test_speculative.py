"""Speculative Jacobi decoding: greedy it equals plain decoding exactly; sampling, it draws from the same distribution."""

import copy
import itertools

import pytest
import torch
from scipy.stats import chisquare

from unifork.errors import UserError
from unifork.inference import Pipeline
from unifork.inference.draws import token_probs
from unifork.inference.sampler import CodeRequest, sample_codes_per_request, sample_image_codes, sample_speculative
from unifork.inference.settings import SamplingSettings
from unifork.model import UniFork, named_config
from unifork.model.unifork import CODE
from unifork.sequences import Example, SequenceBuilder

pytestmark = pytest.mark.usefixtures("one_thread")

CAPTIONS = ["red", "two large blue squares to the left of a green circle", "a small orange cross"]


@pytest.fixture(scope="module")
def pipe(ckpt):
    return Pipeline.from_pretrained(ckpt)


def random_model(pipe, seed: int = 0, scale: float = 0.1, **overrides) -> UniFork:
    """A random model on the checkpoint's text vocabulary; large weights give peaked, context-dependent logits."""
    cfg = named_config("debug", text_vocab_size=pipe.model.cfg.text_vocab_size, **overrides)
    torch.manual_seed(seed)
    model = UniFork(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, scale)
    return model


@pytest.mark.parametrize("window", [1, 3, 8, 64])
@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_greedy_speculative_equals_greedy_plain(pipe, window, cfg_scale):
    """Float64, so that a window's pass and one-code passes cannot round an argmax apart."""
    model = copy.deepcopy(pipe.model).double()
    greedy = SamplingSettings(cfg_scale=cfg_scale, temperature=0)
    plain = sample_image_codes(model, pipe.builder, CAPTIONS, greedy)
    fast = sample_image_codes(model, pipe.builder, CAPTIONS, SamplingSettings(cfg_scale=cfg_scale, temperature=0, speculative=window))
    assert torch.equal(fast, plain)
    assert len({tuple(row) for row in plain.tolist()}) == len(CAPTIONS)  # the prompts matter


@pytest.mark.parametrize("overrides", [{"rope_2d": True}, {"sharing": "x"}, {"sharing": "separate"}])
def test_greedy_speculative_equals_plain_for_every_layout(pipe, overrides):
    model = random_model(pipe, image_tokens=16, **overrides).double()
    builder = SequenceBuilder(pipe.text_tokenizer, model.cfg)
    plain = sample_image_codes(model, builder, CAPTIONS[:2], SamplingSettings(temperature=0))
    fast = sample_image_codes(model, builder, CAPTIONS[:2], SamplingSettings(temperature=0, speculative=5))
    assert torch.equal(fast, plain)


def test_speculative_takes_fewer_passes_when_drafts_agree(pipe):
    """Greedy, with codes that do not depend on the codes before them (zero code embeddings): the first pass's
    outputs are right at every later place, so the second pass keeps its whole window."""
    model = copy.deepcopy(pipe.model)
    with torch.no_grad():
        model.trunk.image_embed.weight.zero_()
    request = CodeRequest(CAPTIONS[:1], SamplingSettings(temperature=0, speculative=16))
    codes, passes = sample_speculative(model, pipe.builder, request)
    assert passes <= 3, passes  # the prefill, a pass of uniform drafts, a pass that keeps them all
    assert torch.equal(codes, sample_image_codes(model, pipe.builder, CAPTIONS[:1], SamplingSettings(temperature=0)))


def test_speculative_request_samples_the_same_alone_or_batched(pipe):
    spec = SamplingSettings(speculative=4)
    alone = sample_image_codes(pipe.model, pipe.builder, CAPTIONS[:2], spec, torch.Generator().manual_seed(5))
    requests = [CodeRequest(CAPTIONS[2:], SamplingSettings(), torch.Generator().manual_seed(1)),
                CodeRequest(CAPTIONS[:2], spec, torch.Generator().manual_seed(5))]  # fmt: skip
    assert torch.equal(sample_codes_per_request(pipe.model, pipe.builder, requests)[1], alone)


def test_window_out_of_range_is_a_clear_error():
    with pytest.raises(UserError, match="speculative"):
        SamplingSettings(speculative=-1)
    with pytest.raises(UserError, match="speculative"):
        SamplingSettings(speculative=10_000)


# --- the distribution --------------------------------------------------------------------------------------------

CODES, VOCAB = 4, 5  # every image: 5**4 = 625 code sequences, few enough to compute each one's probability exactly


def exact_distribution(model, builder, caption: str, settings: SamplingSettings) -> torch.Tensor:
    """The probability (VOCAB,) * CODES of every code sequence under the plain sampler's rule, by full recompute."""
    prompts = [builder.generate(caption), builder.generate("")]
    logp = torch.zeros((VOCAB,) * CODES, dtype=torch.float64)
    for length in range(CODES):
        prefixes = list(itertools.product(range(VOCAB), repeat=length))
        rows = [Example(p.task, p.tokens + list(s), p.kinds + [CODE] * length, p.targets + [-100] * length, p.latents)
                for s in prefixes for p in prompts]  # fmt: skip
        with torch.no_grad():
            logits = model.logits("gen", builder.collate(rows))[:, -1].float()
        cond, uncond = logits[0::2], logits[1::2]
        guided = uncond + settings.cfg_scale * (cond - uncond)
        probs = token_probs(guided, settings.temperature, settings.top_k, settings.top_p)  # (prefixes, VOCAB)
        shape = (VOCAB,) * length + (VOCAB,) + (1,) * (CODES - length - 1)
        logp = logp + probs.double().log().reshape(shape)
    return logp.exp()


def pair_pvalues(draws: torch.Tensor, exact: torch.Tensor) -> list[float]:
    """Chi-square p-value of each pair of neighbouring codes (a, a + 1) in draws (N, codes) against `exact`, the
    probability (vocab,) * codes of every code sequence."""
    pvalues = []
    codes, vocab = exact.dim(), exact.shape[0]
    for a in range(codes - 1):
        expected = exact.sum(dim=tuple(i for i in range(codes) if i not in (a, a + 1))).flatten() * len(draws)
        observed = torch.bincount(draws[:, a] * vocab + draws[:, a + 1], minlength=vocab**2).double()
        support = expected > 0
        assert observed[~support].sum() == 0, f"codes ({a}, {a + 1}) drew a pair of probability 0"
        # pool the rare cells (expected < 5) into one, as the chi-square approximation needs
        common, rare = support & (expected >= 5), support & (expected < 5)
        obs, exp = [observed[common]], [expected[common]]
        if rare.any():
            obs.append(observed[rare].sum()[None])
            exp.append(expected[rare].sum()[None])
        obs, exp = torch.cat(obs), torch.cat(exp)
        pvalues.append(chisquare(obs.numpy(), (exp * obs.sum() / exp.sum()).numpy()).pvalue)
    return pvalues


@pytest.mark.parametrize("window", [0, 3])
@pytest.mark.parametrize(
    "settings",
    [SamplingSettings(cfg_scale=2.0), SamplingSettings(cfg_scale=1.5, temperature=1.5, top_k=4, top_p=0.9)],
    ids=["cfg", "filtered"],
)
def test_speculative_samples_the_plain_distribution(pipe, settings, window):
    """Chi-square of 2,560 sampled images against the exact probabilities of each pair of neighbouring codes.

    The pairs cover every place a draft is checked: against a uniform draft, a Jacobi draft, and after a rejection.
    A rule that keeps drafts too readily, or that draws a rejected place from p instead of the residual, fails
    this by orders of magnitude. Window 0 is the plain sampler: the check of the exact distribution itself.
    """
    model = random_model(pipe, seed=3, scale=0.2, image_tokens=CODES, image_vocab_size=VOCAB)
    builder = SequenceBuilder(pipe.text_tokenizer, model.cfg)
    caption = CAPTIONS[1]
    settings = SamplingSettings(**{**settings.__dict__, "speculative": window})
    exact = exact_distribution(model, builder, caption, settings)
    generator = torch.Generator().manual_seed(0)
    draws = torch.cat([sample_image_codes(model, builder, [caption] * 64, settings, generator) for _ in range(40)])
    pvalues = pair_pvalues(draws, exact)
    assert min(pvalues) > 1e-4, f"chi-square p-values of the code pairs: {pvalues}"

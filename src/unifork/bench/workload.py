"""What the bench runs on: a named-size model with random weights and sequences shaped like the training data.

Speed does not depend on what the weights learned, so no checkpoint is needed: captions, questions and answers
come from the shapes world (real lengths), image codes and latents are random (fixed lengths anyway).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from unifork.model.config import ModelConfig, named_config
from unifork.model.unifork import IGNORE, TEXT, UniFork
from unifork.sequences import Example, SequenceBuilder
from unifork.tokenizers.text import TextTokenizer, world_corpus
from unifork.world import World

UND_TURNS = 4  # questions packed per understanding example, as the quickstart recipe trains


def bench_tokenizer() -> TextTokenizer:
    """A text tokenizer trained on a little world text (under a second): the vocabulary size is what matters."""
    return TextTokenizer.train(world_corpus(200))


def bench_config(size: str, text: TextTokenizer, **overrides) -> ModelConfig:
    return named_config(size, text_vocab_size=text.vocab_size, **overrides)


def bench_model(cfg: ModelConfig, seed: int = 0, **overrides) -> UniFork:
    """A model of `cfg` (with overrides such as fork_layer) in eval mode; the same seed gives the same weights."""
    torch.manual_seed(seed)
    return UniFork(replace(cfg, **overrides)).eval()


def world_text(n: int, seed: int = 0) -> tuple[list[str], list[tuple[str, str]]]:
    """n captions and n (question, answer) pairs from world samples of the training split."""
    world = World(seed=seed, split="train")
    captions: list[str] = []
    qa: list[tuple[str, str]] = []
    i = 0
    while len(captions) < n or len(qa) < n:
        sample = world.sample(i)
        captions += [caption for _, caption in sample.captions]
        qa += [(q, a) for _, q, a in sample.qa]
        i += 1
    return captions[:n], qa[:n]


def training_examples(builder: SequenceBuilder, n_und: int, n_gen: int,
                      seed: int = 0) -> tuple[list[Example], list[Example]]:  # fmt: skip
    """n_und understanding examples (UND_TURNS questions each) and n_gen generation examples."""
    cfg = builder.cfg
    captions, qa = world_text(max(n_gen, n_und * UND_TURNS), seed)
    g = torch.Generator().manual_seed(seed)
    codes = lambda: torch.randint(0, cfg.image_vocab_size, (cfg.image_tokens,), generator=g)
    und = []
    for i in range(n_und):
        latents = torch.randn(cfg.image_tokens, cfg.image_latent_dim, generator=g)
        und.append(builder.understand_turns(codes(), latents, qa[i * UND_TURNS : (i + 1) * UND_TURNS]))
    gen = [builder.generate(captions[i], codes()) for i in range(n_gen)]
    return und, gen


def text_prompts(builder: SequenceBuilder, n: int, seed: int = 0) -> list[Example]:
    """n text-only und prompts, [BOS] question: what both sides of the Hugging Face comparison decode from."""
    _, qa = world_text(n, seed)
    prompts = []
    for question, _ in qa:
        tokens = [builder.text.bos_id, *builder.text.encode(question)]
        prompts.append(Example("und", tokens, [TEXT] * len(tokens), [IGNORE] * len(tokens)))
    return prompts

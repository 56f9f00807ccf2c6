"""Sequence formats: which tokens carry a loss, where the image sits, and multi-turn packing."""

import pytest
import torch

from unifork.model import CODE, IGNORE, LATENT, TEXT, named_config
from unifork.sequences import SequenceBuilder
from unifork.tokenizers.text import TextTokenizer, world_corpus


@pytest.fixture(scope="module")
def builder():
    tok = TextTokenizer.train(world_corpus(200), vocab_size=300)
    return SequenceBuilder(tok, named_config("debug", text_vocab_size=tok.vocab_size))


def supervised_tokens(example):
    return [t for t in example.targets if t != IGNORE]


def test_understanding_supervises_answers_and_eos_only(builder):
    tok = builder.text
    codes, latents = torch.randint(0, 512, (64,)), torch.randn(64, 64)
    ex = builder.understand_turns(codes, latents, [("what color is the circle?", "red"), ("how many squares are there?", "two")])
    red, two = tok.encode("red"), tok.encode("two")
    assert supervised_tokens(ex) == red + [tok.eos_id] + two + [tok.eos_id]
    assert ex.tokens[-1] != tok.eos_id  # the final EOS is predicted, not fed
    assert ex.tokens.count(tok.eos_id) == 1  # the first turn's EOS is fed so the second turn follows it
    assert ex.kinds[2:66] == [LATENT] * 64 and ex.tokens[:2] == [tok.bos_id, tok.img_start_id]
    assert ex.tokens[66] == tok.img_end_id
    # every target is the next token of the stream
    stream = ex.tokens + [tok.eos_id]
    assert all(t == IGNORE or t == stream[i + 1] for i, t in enumerate(ex.targets))
    single = builder.understand("what color is the circle?", codes, latents, "red")
    assert supervised_tokens(single) == red + [tok.eos_id]
    prompt = builder.understand("what color is the circle?", codes, latents)
    assert supervised_tokens(prompt) == [] and single.tokens[: len(prompt.tokens)] == prompt.tokens


def test_generation_supervises_codes_only_and_null_caption(builder):
    codes = torch.randint(0, 512, (64,))
    ex = builder.generate("a red circle", codes)
    assert supervised_tokens(ex) == codes.tolist()
    assert ex.kinds.count(CODE) == 63 and ex.kinds[: -63] == [TEXT] * (len(ex.tokens) - 63)
    null = builder.generate("", codes)
    assert null.tokens[:2] == [builder.text.bos_id, builder.text.img_start_id]


def test_collate_left_pads_and_rejects_overlong(builder):
    codes = torch.randint(0, 512, (64,))
    batch = builder.collate([builder.generate("a red circle", codes), builder.generate("", codes)])
    assert batch.valid[0].all() and not batch.valid[1, 0] and batch.valid[1, -1]
    assert (batch.positions[1, ~batch.valid[1]] == 0).all() and batch.positions[1, -1] == batch.positions[0, -1] - (~batch.valid[1]).sum()
    from unifork.errors import UserError

    with pytest.raises(UserError, match="exceeds the model's context"):
        builder.collate([builder.generate("a red circle " * 60, codes)])

"""Fixtures shared by the training and quickstart tests."""

import pytest
import torch

from unifork.tokenizers.image import ImageTokenizer, ImageTokenizerConfig
from unifork.tokenizers.text import TextTokenizer, world_corpus


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A text tokenizer trained on a little world text and an untrained image tokenizer: enough for mechanics."""
    out = tmp_path_factory.mktemp("tok")
    TextTokenizer.train(world_corpus(200)).save(out)
    torch.manual_seed(0)
    ImageTokenizer(ImageTokenizerConfig(channels=(16, 32, 64))).save(out)
    return out

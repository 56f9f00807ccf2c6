"""Fixtures shared across test files: tokenizers for training runs, a tiny random checkpoint for inference."""

import pytest
import torch

from unifork.checkpoint import save_pretrained
from unifork.model import UniFork, named_config
from unifork.tokenizers.image import ImageTokenizer, ImageTokenizerConfig
from unifork.tokenizers.text import TextTokenizer, world_corpus


@pytest.fixture(scope="module")
def one_thread():
    """Debug-size tensors gain nothing from intra-op threads; on a busy 2-core machine they cost 10x the time.
    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A text tokenizer trained on a little world text and an untrained image tokenizer: enough for mechanics."""
    out = tmp_path_factory.mktemp("tok")
    TextTokenizer.train(world_corpus(200)).save(out)
    torch.manual_seed(0)
    ImageTokenizer(ImageTokenizerConfig(channels=(16, 32, 64))).save(out)
    return out


def tiny_checkpoint(out):
    """A random debug-size checkpoint with an untrained 32 px image tokenizer (a 4 x 4 grid, 16 codes per image,
    keeps every sampling loop short): inference, serving and evaluation mechanics need no training."""
    text = TextTokenizer.train(world_corpus(150), vocab_size=320)
    torch.manual_seed(0)  # before the image tokenizer too: the same checkpoint on every run
    image = ImageTokenizer(ImageTokenizerConfig(image_size=32, channels=(16, 32, 64))).eval()
    icfg = image.cfg
    cfg = named_config("debug", text_vocab_size=text.vocab_size, image_vocab_size=icfg.num_codes,
                       image_tokens=icfg.grid**2, image_latent_dim=icfg.latent_dim)  # fmt: skip
    torch.manual_seed(0)
    model = UniFork(cfg).eval()
    with torch.no_grad():  # larger weights than the init: peaked logits, so outputs depend on the prompt
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.1)
    save_pretrained(out, model, text, image)
    return out


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def tiny_qwen(directory):
    """A random 2-layer Qwen2 with a byte-level BPE tokenizer, as a local HF checkpoint folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=True), decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=280, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    bpe.train_from_iterator(["what is this?", "noise", "a picture of noise"], trainer=trainer)
    import transformers

    config = transformers.Qwen2Config(vocab_size=bpe.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                      max_position_embeddings=128, tie_word_embeddings=True)  # fmt: skip
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(config).save_pretrained(directory)
    bpe.save(str(directory / "tokenizer.json"))


def noise_folder(directory, n: int = 8, size: int = 16, seed: int = 0) -> str:
    """n random-noise PNGs with a caption and a question each, as a `folder:` source; returns its spec."""
    import json

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    with open(directory / "data.jsonl", "w") as f:
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(directory / f"{i}.png")
            f.write(json.dumps({"image": f"{i}.png", "caption": f"picture {i}", "qa": [["which picture?", str(i)]]}) + "\n")
    return f"folder:{directory}/data.jsonl"

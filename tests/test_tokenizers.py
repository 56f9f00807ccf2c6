"""Text and image tokenizers: round trips, reconstruction quality of a tiny trained tokenizer, loud loading."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from unifork.errors import UserError
from unifork.tokenizers.image import ImageTokenizer, ImageTokenizerConfig, images_to_tensor, tensor_to_images
from unifork.tokenizers.text import SPECIAL_TOKENS, TextTokenizer
from unifork.eval.image_quality import reconstruction_metrics
from unifork.train.image_tokenizer import train_image_tokenizer
from unifork.train.tokenizer_images import world_images


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tokenizer")
    report = train_image_tokenizer(out, size="tiny", progress=False)
    return out, report


def test_text_tokenizer_round_trip_and_specials(trained_dir):
    out, _ = trained_dir
    tok = TextTokenizer.load(out)
    for text in ["a red circle to the left of a blue square", "how many orange crosses are there?"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        # world words are learned as subwords: far fewer tokens than bytes
        assert len(ids) < len(text) / 2
    assert len(set(tok.special_ids.values())) == len(SPECIAL_TOKENS)
    assert tok.decode([tok.bos_id, *tok.encode("a circle"), tok.eos_id]) == "a circle"


def test_text_tokenizer_handles_unknown_words(trained_dir):
    tok = TextTokenizer.load(out := trained_dir[0])
    text = "a zebra-striped dodecahedron, très jolie 🦓"
    assert tok.decode(tok.encode(text)) == text  # byte-level: nothing maps to <unk>
    assert out.exists()


def test_text_tokenizer_missing_and_corrupt(tmp_path):
    with pytest.raises(UserError, match="missing text tokenizer file"):
        TextTokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupt text tokenizer file"):
        TextTokenizer.load(tmp_path)


@pytest.mark.parametrize("quantizer", ["fsq", "vq"])
def test_image_tokenizer_shapes(quantizer):
    cfg = ImageTokenizerConfig(channels=(16, 32, 64), quantizer=quantizer)
    model = ImageTokenizer(cfg).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    recon, codes, aux = model(x)
    assert recon.shape == x.shape and codes.shape == (2, cfg.grid**2) and aux.ndim == 0
    assert codes.min() >= 0 and codes.max() < cfg.num_codes
    assert model.encode_latents(x).shape == (2, cfg.grid**2, cfg.latent_dim)
    decoded = model.decode(model.encode(x))
    assert decoded.shape == x.shape
    # decoding the codes gives exactly what the forward pass reconstructs from them
    torch.testing.assert_close(decoded, recon.clamp(-1, 1), atol=1e-5, rtol=0)


def test_tiny_tokenizer_reconstructs_and_uses_codebook(trained_dir):
    _, report = trained_dir
    # 120 steps on 1k images: far from the default recipe's 30 dB, but clearly past an untrained model (~8 dB)
    assert report["psnr_heldout"] > 17.0, report
    assert report["codebook_usage"] > 0.25, report
    untrained = ImageTokenizer(ImageTokenizerConfig(channels=(16, 32, 64))).eval()
    assert reconstruction_metrics(untrained, world_images("heldout", 32))["psnr"] < 12.0


def test_checkpoint_round_trip_is_exact(trained_dir, tmp_path):
    out, _ = trained_dir
    model = ImageTokenizer.load(out)
    images = world_images("test", 8)
    codes = model.encode(images)
    model.save(tmp_path)
    again = ImageTokenizer.load(tmp_path)
    assert torch.equal(again.encode(images), codes)
    assert torch.equal(again.decode(codes), model.decode(codes))


def test_uint8_conversion_round_trip():
    images = np.random.default_rng(0).integers(0, 256, size=(3, 64, 64, 3), dtype=np.uint8)
    assert np.array_equal(tensor_to_images(images_to_tensor(images)), images)


def test_image_tokenizer_loading_errors(trained_dir, tmp_path):
    out, _ = trained_dir
    with pytest.raises(UserError, match="missing image tokenizer file"):
        ImageTokenizer.load(tmp_path)
    (tmp_path / "config.json").write_text((out / "config.json").read_text())
    weights = (out / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(UserError, match="corrupt image tokenizer weights"):
        ImageTokenizer.load(tmp_path)
    (tmp_path / "config.json").write_text('{"channels": [16, 32, 64], "colour": 1}')
    with pytest.raises(UserError, match="unknown key 'colour'"):
        ImageTokenizer.load(tmp_path)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "unifork.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_reconstruct_and_bad_inputs(trained_dir, tmp_path):
    out, _ = trained_dir
    image = world_images("test", 1)
    Image.fromarray(tensor_to_images(image)[0]).resize((128, 128)).convert("P").save(tmp_path / "in.png")
    result = run_cli("tokenizer", "reconstruct", "--tokenizer", str(out), "--image", str(tmp_path / "in.png"),
                     "--out", str(tmp_path / "rec.png"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "64 codes" in result.stdout and Image.open(tmp_path / "rec.png").size == (64, 64)

    (tmp_path / "notes.png").write_text("this is not an image")
    for tokenizer, image_path, message in [
        (out, tmp_path / "notes.png", "not an image file"),
        (tmp_path / "nowhere", tmp_path / "in.png", "missing image tokenizer file"),
    ]:
        result = run_cli("tokenizer", "reconstruct", "--tokenizer", str(tokenizer), "--image", str(image_path),
                         "--out", str(tmp_path / "x.png"))  # fmt: skip
        assert result.returncode != 0
        assert message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1

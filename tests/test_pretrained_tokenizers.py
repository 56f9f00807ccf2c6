"""Pretrained image tokenizers (`tokenizer from-hf`): our codes are the library's own encode indices, our decode its
decode, for transformers' JanusVQVAE and Emu3VQVAE and diffusers' VQModel, standalone or inside a full model;
every command takes the directory; bad checkpoints are one-line errors that leave nothing behind.

Tiny random networks are built with the libraries themselves (16 px images, 2x downsampling, an 8 x 8 grid).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from unifork.checkpoint import load_pretrained
from unifork.cli import main
from unifork.data.pretokenize import pretokenize
from unifork.data.spec import open_source
from unifork.hf import fork_hf
from unifork.images import fit_image
from unifork.inference import Pipeline
from unifork.tokenizers.from_hf import import_image_tokenizer
from unifork.tokenizers.image import images_to_tensor
from unifork.tokenizers.loading import load_image_tokenizer
from unifork.tokenizers.pretrained import PretrainedImageTokenizer

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

SIZE, GRID, CODES = 16, 8, 64
JANUS_VQ = dict(embed_dim=8, num_embeddings=CODES, latent_channels=32, base_channels=32, channel_multiplier=[1, 2],
                num_res_blocks=1, num_patches=GRID, projection_dim=32, image_token_embed_dim=32)  # fmt: skip
EMU3_VQ = dict(codebook_size=CODES, embed_dim=4, latent_channels=4, base_channels=32, channel_multiplier=[1, 2],
               num_res_blocks=1, attn_resolutions=[], hidden_size=64, num_attention_heads=1)  # fmt: skip
TEXT = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)  # fmt: skip


def images(n=4, seed=0):
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _saved(model, directory):
    """Saved with codebook vectors drawn from the encoder's own outputs on random images (a k-means-style init),
    so every image uses many codes and equal codes mean something."""
    model.eval()
    quantize = next(m for name, m in model.named_modules() if name.split(".")[-1] == "quantize")
    seen = []
    hook = quantize.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        vq = getattr(getattr(model, "model", model), "vqmodel", model)
        x = images(8, seed=1)
        out = vq.encode(x, image_sizes=torch.tensor([[SIZE, SIZE]] * 8)) if "Emu3" in type(vq).__name__ else vq.encode(x)
        if not seen:  # diffusers' encode stops before the quantizer
            vq.quantize(out.latents)
        hook.remove()
        z = seen[0].movedim(-3, -1).reshape(-1, seen[0].shape[-3])  # (..., C, h, w) -> (N, C)
        pick = torch.randperm(len(z), generator=torch.Generator().manual_seed(0))[: quantize.embedding.num_embeddings]
        quantize.embedding.weight.copy_(z[pick])
    model.save_pretrained(directory)
    return model


def janus_vq(directory):
    torch.manual_seed(0)
    return _saved(transformers.JanusVQVAE(transformers.JanusVQVAEConfig(**JANUS_VQ)), directory)


def emu3_vq(directory):
    torch.manual_seed(0)
    return _saved(transformers.Emu3VQVAE(transformers.Emu3VQVAEConfig(**EMU3_VQ)), directory)


def janus_full(directory):
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=SIZE,
                  patch_size=2, projection_dim=32)  # fmt: skip
    torch.manual_seed(0)
    config = transformers.JanusConfig(text_config=dict(TEXT), vision_config=vision, vq_config=dict(JANUS_VQ))
    model = _saved(transformers.JanusForConditionalGeneration(config), directory)
    (directory / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    return model.model.vqmodel


def emu3_full(directory):
    torch.manual_seed(0)
    config = transformers.Emu3Config(vq_config=dict(EMU3_VQ), text_config=dict(TEXT), vocabulary_map={})
    return _saved(transformers.Emu3ForConditionalGeneration(config), directory).model.vqmodel


def diffusers_vq(directory, lookup_from_codebook=False):
    diffusers = pytest.importorskip("diffusers", reason="diffusers is optional (`pip install -e '.[dev]'` installs it)")
    torch.manual_seed(0)
    model = diffusers.VQModel(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
                              up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, num_vq_embeddings=CODES,
                              sample_size=SIZE, lookup_from_codebook=lookup_from_codebook)  # fmt: skip
    return _saved(model, directory)


def diffusers_pipeline(directory):
    """A pipeline folder as aMUSEd ships one: model_index.json naming the vqvae/ component's class."""
    model = diffusers_vq(directory / "vqvae", lookup_from_codebook=True)
    index = {"_class_name": "AmusedPipeline", "vqvae": ["diffusers", "VQModel"], "scheduler": ["diffusers", "AmusedScheduler"]}
    (directory / "model_index.json").write_text(json.dumps(index))
    return model


BUILDERS = {"janus": janus_vq, "janus_full": janus_full, "emu3": emu3_vq, "emu3_full": emu3_full,
            "diffusers": diffusers_vq, "diffusers_pipeline": diffusers_pipeline}  # fmt: skip
IMAGE_SIZE_FLAG = {"emu3": SIZE, "emu3_full": SIZE}  # Emu3's config fixes no image size


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> dict:
    """name -> (the library's network, the checkpoint folder, our tokenizer directory)."""
    out = {}
    for name, build in BUILDERS.items():
        checkpoint, tokenizer = tmp_path_factory.mktemp(f"{name}-ckpt"), tmp_path_factory.mktemp(name) / "tok"
        try:
            network = build(checkpoint)
        except pytest.skip.Exception:
            continue
        import_image_tokenizer(checkpoint, tokenizer, image_size=IMAGE_SIZE_FLAG.get(name))
        out[name] = (network, checkpoint, tokenizer)
    return out


def library_codes(name, network, x):
    with torch.no_grad():
        if name.startswith("janus"):
            return network.encode(x).image_tokens.view(len(x), -1)
        if name.startswith("emu3"):
            return torch.stack(network.encode(x, image_sizes=torch.tensor([[SIZE, SIZE]] * len(x))).image_tokens).flatten(1)
        return network.quantize(network.encode(x).latents)[2][2].view(len(x), -1)


def library_decode(name, network, codes):
    with torch.no_grad():
        if name.startswith("janus"):
            return network.decode(codes)
        if name.startswith("emu3"):
            return network.decode(codes.view(len(codes), GRID, GRID))
        shape = (len(codes), GRID, GRID, network.quantize.vq_embed_dim)
        if network.config.lookup_from_codebook:
            return network.decode(codes, force_not_quantize=True, shape=shape).sample
        return network.decode(network.quantize.get_codebook_entry(codes.flatten(), shape), force_not_quantize=True).sample


@pytest.mark.parametrize("name", BUILDERS)
def test_codes_and_decode_are_the_librarys_own(imported, name):
    if name not in imported:
        pytest.skip("diffusers is not installed (`pip install -e '.[dev]'` installs it)")
    network, _, directory = imported[name]
    tokenizer = load_image_tokenizer(directory)
    assert isinstance(tokenizer, PretrainedImageTokenizer)
    assert (tokenizer.cfg.image_size, tokenizer.cfg.grid, tokenizer.cfg.num_codes) == (SIZE, GRID, CODES)
    x = images()
    codes = tokenizer.encode(x)
    assert codes.shape == (4, GRID * GRID) and torch.equal(codes, library_codes(name, network, x))
    assert len(codes.unique()) > 8  # the check means something: many codes in use
    assert torch.equal(tokenizer.decode(codes), library_decode(name, network, codes).clamp(-1, 1))
    assert tokenizer.encode_latents(x).shape == (4, GRID * GRID, tokenizer.cfg.latent_dim)


def test_diffusers_decode_of_codes_is_its_decode_of_latents(imported):
    """The library's decode(latents) quantises with a straight-through estimator, z + (q - z): equal to the
    codebook vectors up to float rounding, so the two routes agree to ~1e-6."""
    if "diffusers" not in imported:
        pytest.skip("diffusers is not installed (`pip install -e '.[dev]'` installs it)")
    network, _, directory = imported["diffusers"]
    x = images()
    with torch.no_grad():
        theirs = network.decode(network.encode(x).latents).sample.clamp(-1, 1)
    torch.testing.assert_close(load_image_tokenizer(directory).decode(load_image_tokenizer(directory).encode(x)), theirs,
                               atol=1e-5, rtol=0)  # fmt: skip


@pytest.mark.parametrize("full, alone", [("janus_full", "janus"), ("emu3_full", "emu3")])
def test_a_full_checkpoint_gives_its_vq_part(imported, tmp_path, full, alone):
    """Only the VQ tensors are read from the full model, and they are its vqmodel's exactly."""
    network, _, directory = imported[full]
    network.save_pretrained(tmp_path / "alone")
    import_image_tokenizer(tmp_path / "alone", tmp_path / "tok", image_size=IMAGE_SIZE_FLAG.get(alone))
    assert load_image_tokenizer(directory).fingerprint() == load_image_tokenizer(tmp_path / "tok").fingerprint()


def test_reconstruct_cli_reads_an_imported_tokenizer(imported, tmp_path, capsys):
    _, _, directory = imported["janus"]
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    assert main(["tokenizer", "reconstruct", "--tokenizer", str(directory), "--image", str(tmp_path / "in.png"),
                 "--out", str(tmp_path / "out.png")]) == 0  # fmt: skip
    assert f"{GRID * GRID} codes" in capsys.readouterr().out and Image.open(tmp_path / "out.png").size == (SIZE, SIZE)


def test_pretokenized_data_equals_encoding_on_the_fly(imported, tmp_path):
    _, _, directory = imported["emu3"]
    rng = np.random.default_rng(0)
    with open(tmp_path / "data.jsonl", "w") as f:
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
            f.write(json.dumps({"image": f"{i}.png", "caption": "noise"}) + "\n")
    pretokenize(f"folder:{tmp_path}/data.jsonl", directory, tmp_path / "pre", progress=False)
    tokenizer = load_image_tokenizer(directory)
    stored = list(open_source(f"pretokenized:{tmp_path}/pre").read(0))
    pixels = images_to_tensor(np.stack([fit_image(tmp_path / f"{i}.png", SIZE) for i in range(6)]))
    assert torch.equal(torch.stack([torch.as_tensor(r.image.codes) for r in stored]), tokenizer.encode(pixels))
    latents = torch.stack([torch.as_tensor(r.image.latents) for r in stored]).float()
    torch.testing.assert_close(latents, tokenizer.encode_latents(pixels), atol=1e-3, rtol=1e-2)  # stored in fp16


def test_fork_hf_with_an_imported_tokenizer_trains_and_serves(imported, tmp_path):
    from conftest import tiny_qwen

    _, _, directory = imported["janus"]
    hf_dir = tmp_path / "qwen"
    tiny_qwen(hf_dir)
    fork_hf(hf_dir, 2, tmp_path / "fork", image_tokenizer_dir=directory)
    model, _, image = load_pretrained(tmp_path / "fork")
    assert isinstance(image, PretrainedImageTokenizer) and model.cfg.image_vocab_size == CODES
    assert image.fingerprint() == load_image_tokenizer(directory).fingerprint()
    pipe = Pipeline.from_pretrained(tmp_path / "fork")
    assert isinstance(pipe.ask(np.zeros((30, 30, 3), dtype=np.uint8), "what is this?", max_new_tokens=3), str)
    assert pipe.generate_codes("noise", n=1, top_k=5).shape == (1, GRID * GRID)


def test_a_recipe_trains_on_an_imported_tokenizer(imported, tmp_path):
    from unifork.train.trainer import train

    from conftest import noise_folder

    _, _, directory = imported["diffusers" if "diffusers" in imported else "janus"]
    (tmp_path / "recipe.toml").write_text(f"""
[model]
size = "debug"
[data]
source = "{noise_folder(tmp_path)}"
[tokenizer]
image_tokenizer = "{directory}"
[[stages]]
name = "joint"
steps = 2
batch_size = 4
""")
    final = train(tmp_path / "recipe.toml", tmp_path / "run", progress=False)
    _, text, image = load_pretrained(final)
    assert image.fingerprint() == load_image_tokenizer(directory).fingerprint()
    assert text.decode(text.encode("which picture?")) == "which picture?"  # trained on the data's own text


def _qwen_config(directory):
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}))


@pytest.mark.parametrize("case, flags, message", [
    ("unsupported", [], "a qwen2 checkpoint, not an image tokenizer from-hf reads; supported: transformers JanusVQVAE"),
    ("emu3", [], "states no image size; give --image-size (a multiple of its downsampling 2"),
    ("emu3", ["--image-size", "15"], "--image-size 15 is not divisible by the tokenizer's downsampling 2"),
    ("janus", ["--image-size", "32"], "fixes its image size at 16 px"),
    ("no_weights", [], "no safetensors weights in"),
    ("missing", [], "no such checkpoint directory"),
])  # fmt: skip
def test_from_hf_errors_are_one_line_and_write_nothing(imported, tmp_path, capsys, case, flags, message):
    source = tmp_path / "src"
    if case == "unsupported":
        _qwen_config(source)
    elif case == "no_weights":
        shutil.copytree(imported["janus_full"][1], source)
        (source / "model.safetensors").unlink()
    elif case != "missing":
        source = imported[case][1]
    assert main(["tokenizer", "from-hf", "--model", str(source), "--out", str(tmp_path / "out"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_from_hf_refuses_to_overwrite_a_tokenizer(imported, capsys):
    _, checkpoint, directory = imported["janus"]
    assert main(["tokenizer", "from-hf", "--model", str(checkpoint), "--out", str(directory)]) == 2
    assert "already holds a tokenizer" in capsys.readouterr().err


def test_a_recipe_refuses_a_tokenizer_of_another_image_size_before_training(imported, tmp_path):
    from unifork.errors import UserError
    from unifork.train.trainer import train

    from conftest import noise_folder

    _, _, directory = imported["janus"]
    (tmp_path / "recipe.toml").write_text(f"""
[model]
size = "debug"
[data]
source = "{noise_folder(tmp_path, n=1)}"
[tokenizer]
image_tokenizer = "{directory}"
image_size = 32
[[stages]]
name = "joint"
steps = 1
""")
    with pytest.raises(UserError, match=f"encodes {SIZE} px images, but \\[tokenizer\\] image_size is 32"):
        train(tmp_path / "recipe.toml", tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "tokenizer").exists()

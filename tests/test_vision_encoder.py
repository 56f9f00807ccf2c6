"""A pretrained SigLIP / CLIP vision encoder as the understanding input: our features are transformers' hidden state
at the chosen layer, the encoder stays frozen unless named, fork-hf and recipes select it, training lowers the
understanding loss, and bad checkpoints are one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unifork.checkpoint import load_pretrained
from unifork.cli import main
from unifork.errors import UserError
from unifork.hf.vision import read_vision_encoder
from unifork.inference import Pipeline
from unifork.model import UniFork, named_config
from unifork.model.vision import VisionEncoder
from unifork.sequences import SequenceBuilder
from unifork.tokenizers.text import TextTokenizer, world_corpus
from unifork.train.optim import set_trainable
from unifork.und_images import und_inputs

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

SIZE, PATCH, LAYERS, WIDTH = 32, 8, 3, 32  # 16 patch tokens per image
PROCESSOR = {"do_resize": True, "size": {"height": SIZE, "width": SIZE}, "do_normalize": True,
             "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3]}  # fmt: skip


def vision_checkpoint(directory, family: str = "siglip", processor: dict | None = PROCESSOR):
    """A random tiny SigLIP or CLIP vision model saved with its processor settings; returns the library model."""
    common = dict(hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=2,
                  image_size=SIZE, patch_size=PATCH)  # fmt: skip
    torch.manual_seed(0)
    if family == "siglip":
        model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**common))
    else:
        model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**common))
    model.eval().save_pretrained(directory)
    if processor is not None:
        (directory / "preprocessor_config.json").write_text(json.dumps(processor))
    return model


def pixels(n=3, seed=0):
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("family", ["siglip", "clip"])
@pytest.mark.parametrize("layer", [-2, -1, 1])
def test_features_are_the_librarys_hidden_state_at_the_layer(tmp_path, family, layer):
    library = vision_checkpoint(tmp_path, family)
    spec, state = read_vision_encoder(tmp_path, layer)
    ours = VisionEncoder(spec)
    ours.load_state_dict({k.removeprefix("trunk.vision."): v for k, v in state.items()})
    x = pixels()
    mean, std = torch.tensor(PROCESSOR["image_mean"]).view(1, 3, 1, 1), torch.tensor(PROCESSOR["image_std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        hidden = library(pixel_values=((x + 1) / 2 - mean) / std, output_hidden_states=True).hidden_states[layer]
        expected = hidden[:, 1:] if family == "clip" else hidden  # patch tokens only: CLIP's class token dropped
        got = ours(x)
    assert got.shape == (3, (SIZE // PATCH) ** 2, WIDTH)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert spec["config"]["num_hidden_layers"] == (LAYERS + 1 + layer if layer < 0 else layer)  # layers above: not kept


@pytest.fixture(scope="module")
def vision_model(tmp_path_factory):
    """A debug UniFork reading a tiny SigLIP through the projector, its text tokenizer and a 32 px image tokenizer."""
    from unifork.tokenizers.image import ImageTokenizer, ImageTokenizerConfig

    directory = tmp_path_factory.mktemp("siglip")
    vision_checkpoint(directory)
    spec, state = read_vision_encoder(directory)
    text = TextTokenizer.train(world_corpus(100), vocab_size=300)
    torch.manual_seed(0)
    image = ImageTokenizer(ImageTokenizerConfig(image_size=32, channels=(16, 32, 64))).eval()
    cfg = named_config("debug", text_vocab_size=text.vocab_size, image_vocab_size=image.cfg.num_codes,
                       image_tokens=image.cfg.grid**2, image_latent_dim=WIDTH, und_input="vision", vision=spec)  # fmt: skip
    model = UniFork(cfg)
    model.load_state_dict(model.state_dict() | state, strict=True)
    return model, text, image, directory


def understanding_batch(model, text, image, n=4):
    builder = SequenceBuilder(text, model.cfg)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40, 40, 3), dtype=np.uint8) for _ in range(n)]
    codes, inputs = und_inputs(model.cfg, image, images)
    assert codes.shape == (n, 0) and inputs.shape == (n, 3, SIZE, SIZE)  # pixels at the encoder's size
    examples = [builder.understand("what color is the circle?", codes[i], inputs[i], "red") for i in range(n)]
    return builder.collate(examples)


def test_encoder_is_frozen_unless_named_and_training_lowers_the_loss(vision_model):
    model, text, image, _ = vision_model
    vision = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("trunk.vision.")}
    params = set_trainable(model, ("*",))
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("trunk.vision."))
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("trunk.projector."))
    batch = understanding_batch(model, text, image)
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = model(batch)["loss"]
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(torch.equal(p, vision[n]) for n, p in model.named_parameters() if n in vision)  # frozen: untouched
    named = set_trainable(model, ("trunk.vision.net.encoder.layers.1.*", "und.*"))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("trunk.vision.net.encoder.layers.1.") for n in trained)
    assert not any(n.startswith("trunk.vision.net.encoder.layers.0.") for n in trained) and len(named) == len(trained)


def test_fork_hf_with_a_vision_encoder_saves_loads_and_answers(vision_model, tmp_path):
    from conftest import tiny_qwen

    _, _, _, directory = vision_model
    tiny_qwen(tmp_path / "qwen")
    assert main(["fork-hf", "--model", str(tmp_path / "qwen"), "--fork-layer", "1", "--out", str(tmp_path / "fork"),
                 "--vision-encoder", str(directory)]) == 0  # fmt: skip
    model, _, _ = load_pretrained(tmp_path / "fork")
    assert model.cfg.und_input == "vision" and model.cfg.und_image_tokens == (SIZE // PATCH) ** 2
    library = transformers.SiglipVisionModel.from_pretrained(str(directory))
    assert torch.equal(model.trunk.vision.net.encoder.layers[0].mlp.fc1.weight, library.encoder.layers[0].mlp.fc1.weight)
    pipe = Pipeline.from_pretrained(tmp_path / "fork")
    assert isinstance(pipe.ask(np.zeros((50, 70, 3), dtype=np.uint8), "what is this?", max_new_tokens=3), str)


def test_a_recipe_selects_a_vision_encoder(vision_model, tmp_path):
    from unifork.train.trainer import train

    from conftest import noise_folder

    _, _, _, directory = vision_model
    source = noise_folder(tmp_path, size=32)
    (tmp_path / "recipe.toml").write_text(f"""
vision_encoder = "{directory}"
[model]
size = "debug"
[data]
source = "{source}"
[tokenizer]
size = "tiny"
steps = 2
image_size = 32
eval_source = "{source}"
[[stages]]
name = "joint"
steps = 2
batch_size = 4
""")
    final = train(tmp_path / "recipe.toml", tmp_path / "run", progress=False)
    model, _, _ = load_pretrained(final)
    library = transformers.SiglipVisionModel.from_pretrained(str(directory))
    assert model.cfg.und_input == "vision"  # and the pretrained weights, untouched by training ("*" leaves them)
    assert torch.equal(model.trunk.vision.net.encoder.layers[0].mlp.fc1.weight, library.encoder.layers[0].mlp.fc1.weight)
    assert (final / "recipe.toml").is_file()


@pytest.mark.parametrize("case, message", [
    ("no_processor", "the vision encoder's processor config (image size, mean, std) must sit beside its weights"),
    ("not_vision", "is a qwen2 checkpoint; the vision encoder must be SigLIP or CLIP"),
    ("bad_size", "prepares 48 px images but the encoder reads 32 px"),
])  # fmt: skip
def test_bad_vision_checkpoints_are_one_line(tmp_path, capsys, case, message):
    source = tmp_path / "vision"
    source.mkdir()
    if case == "not_vision":
        (source / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    else:
        vision_checkpoint(source, processor=None if case == "no_processor" else PROCESSOR | {"size": {"height": 48, "width": 48}})
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_vision_encoder(source)


def test_a_layer_out_of_range_names_the_flag(tmp_path, capsys):
    vision_checkpoint(tmp_path / "v")
    with pytest.raises(UserError) as err:
        read_vision_encoder(tmp_path / "v", feature_layer=7)
    assert "out of range for a 3-layer encoder" in str(err.value)

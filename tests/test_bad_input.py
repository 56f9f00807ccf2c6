"""Bad input through the real CLI, one table: every mistake is exit code 2 and exactly one `error:` line on stderr
naming what is wrong (a traceback only with --debug); inputs that can be converted (any image mode or size,
extreme but valid sampling settings) work. docs/reliability.md counts the cases."""

import io
import json
import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from unifork.checkpoint import save_pretrained
from unifork.cli import main
from unifork.images import fit_image
from unifork.model.config import named_config
from unifork.model.unifork import UniFork
from unifork.sequences import SequenceBuilder
from unifork.tokenizers.image import ImageTokenizer, ImageTokenizerConfig
from unifork.tokenizers.text import TextTokenizer

NON_UTF8 = os.fsdecode(b"\xff\xfe")  # what Python makes of non-UTF-8 bytes in argv (surrogateescape)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, followed by almost no data: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def scene_image(size=(40, 40)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    image.paste((220, 30, 30), (2, 2, size[0] // 2, size[1] // 2))
    return image


def write_images(d):
    png = io.BytesIO()
    scene_image().save(png, format="PNG")
    (d / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    tiff = io.BytesIO()
    scene_image().save(tiff, format="TIFF")
    (d / "cut.tif").write_bytes(tiff.getvalue()[:46])  # PIL warns "Truncated File Read" and carries on
    (d / "notes.png").write_bytes(b"these are notes, not pixels\n")
    (d / "empty.png").write_bytes(b"")
    (d / "bomb.png").write_bytes(png_header_only(100_000, 100_000))  # PIL's own error: over 2x MAX_IMAGE_PIXELS
    (d / "big.png").write_bytes(png_header_only(10_000, 10_000))  # PIL only warns here, then would decode 300 MB
    (d / "folder.png").mkdir()
    Image.new("RGB", (1, 1), (30, 60, 200)).save(d / "one_pixel.png")
    Image.fromarray(np.full((20, 30), 65535, np.uint16)).save(d / "sixteen_bit.png")  # mode I;16
    scene_image().convert("CMYK").save(d / "cmyk.jpg")
    scene_image().convert("P").save(d / "palette.png")
    Image.new("RGBA", (30, 20), (255, 0, 0, 0)).save(d / "transparent.png")  # fully transparent red
    Image.new("LA", (17, 23), (0, 0)).save(d / "grey_alpha.png")
    scene_image((300, 20)).save(d / "wide.gif")


BASE_RECIPE = """seed = 0
tokenizer_dir = "{tok}"
[model]
size = "debug"
[data]
pool_size = 16
[[stages]]
name = "joint"
steps = 1
batch_size = 2
"""

# name -> (edit of BASE_RECIPE, what the error line must say). tokenizer_dir does not exist: a recipe accepted by
# mistake fails fast there, with a line that does not match.
RECIPES = {
    "unknown top-level key": (lambda r: "colour = 1\n" + r, r"unknown key 'colour'"),
    "unknown [model] key": (lambda r: r.replace('size = "debug"', 'size = "debug"\nd_modle = 64'), r"unknown key 'd_modle'"),
    "unknown [data] key": (lambda r: r.replace("pool_size = 16", "pool_size = 16\nshuffle = true"), r"unknown key 'shuffle'"),
    "unknown stage key": (lambda r: r + "dropout = 0.1\n", r"unknown key 'dropout'"),
    "steps is a string": (lambda r: r.replace("steps = 1", 'steps = "one"'), r"'steps' .*must be int"),
    "lr is a boolean": (lambda r: r + "lr = true\n", r"'lr' .*must be float"),
    "lr is nan": (lambda r: r + "lr = nan\n", r"'lr' .*finite number"),
    "negative weight_decay": (lambda r: r + "weight_decay = -0.1\n", r"'weight_decay' .*>= 0"),
    "seed is a string": (lambda r: r.replace("seed = 0", 'seed = "zero"'), r"'seed' .*integer"),
    "stages is a string": (lambda r: 'stages = "joint"\n' + r.split("[[stages]]")[0], r"'stages' .*array of tables"),
    "data is a number": (lambda r: "data = 5\n" + r.replace("[data]\npool_size = 16\n", ""), r"'data' .*must be a table"),
    "mix weight is a string": (lambda r: r + 'mix = { und = "half" }\n', r"mix must weight"),
    "train holds numbers": (lambda r: r + "train = [1, 2]\n", r"train must be a list of parameter-name patterns"),
    "zero attention heads": (lambda r: r.replace('size = "debug"', 'size = "debug"\nn_heads = 0'), r"n_heads must be at least 1"),
    "invalid TOML": (lambda r: r + "[[[\n", r"invalid TOML"),
}  # fmt: skip


def edit_json(path, **changes):
    cfg = json.loads(path.read_text())
    path.write_text(json.dumps(changes.pop("whole") if "whole" in changes else {**cfg, **changes}))


@pytest.fixture(scope="module")
def paths(tmp_path_factory, tokenizer_dir):
    """A debug-size checkpoint with 32 px images, damaged copies of it, bad images and bad recipes."""
    root = tmp_path_factory.mktemp("bad_input")
    text = TextTokenizer.load(tokenizer_dir)
    torch.manual_seed(0)
    image = ImageTokenizer(ImageTokenizerConfig(image_size=32, channels=(16, 32, 64))).eval()
    icfg = image.cfg
    sizes = {"text_vocab_size": text.vocab_size, "image_vocab_size": icfg.num_codes, "image_tokens": icfg.grid**2,
             "image_latent_dim": icfg.latent_dim}  # fmt: skip
    ckpt = root / "ckpt"
    save_pretrained(ckpt, UniFork(named_config("debug", **sizes)).eval(), text, image)

    def damaged(name, edit):
        shutil.copytree(ckpt, root / name)
        edit(root / name)

    damaged("other_size", lambda d: named_config("tiny", **sizes).save(d))  # debug weights, tiny config
    damaged("unknown_key", lambda d: edit_json(d / "config.json", dropout=0.1))
    damaged("wrong_type", lambda d: edit_json(d / "config.json", d_model="64"))
    damaged("not_an_object", lambda d: edit_json(d / "config.json", whole=[64, 4]))
    damaged("no_heads", lambda d: edit_json(d / "config.json", n_heads=0))
    damaged("tokenizer_wrong_type", lambda d: edit_json(d / "image_tokenizer" / "config.json", image_size="32"))

    inputs = root / "in"
    inputs.mkdir()
    write_images(inputs)
    for name, (edit, _) in RECIPES.items():
        recipe = edit(BASE_RECIPE.format(tok=root / "no_tokenizer"))
        (inputs / f"{name.replace(' ', '_')}.toml").write_text(recipe)
    (inputs / "latin1.toml").write_bytes(BASE_RECIPE.format(tok="t").encode() + "# café\n".encode("latin-1"))
    np.savez(inputs / "nan_features.npz", image=np.full((12, 8), np.nan), text=np.ones((12, 8)))

    # A prompt that fits the context alone but leaves no room for the image codes it asks for.
    builder, cfg = SequenceBuilder(text, named_config("debug", **sizes)), named_config("debug", **sizes)
    k = 1
    while len(builder.generate("red " * k).tokens) < cfg.max_seq_len - cfg.image_tokens + 2:
        k += 1
    assert len(builder.generate("red " * k).tokens) <= cfg.max_seq_len
    return {"{root}": str(root), "{ckpt}": str(ckpt), "{in}": str(inputs), "{near_context}": "red " * k}


def gen(*flags, prompt="a red circle", ckpt="{ckpt}"):
    return ["generate", "--ckpt", ckpt, "--prompt", prompt, "--n", "2", "--out", "{root}/out/grid.png", *flags]


def ask(image="one_pixel.png", question="what color is the square?", ckpt="{ckpt}"):
    return ["ask", "--ckpt", ckpt, "--image", f"{{in}}/{image}", "--question", question]


def evaluate(*flags):
    return ["eval", "--ckpt", "{ckpt}", "--suite", "gen", "--out", "{root}/out/eval.json", *flags]


def train(recipe):
    return ["train", "--config", f"{{in}}/{recipe.replace(' ', '_')}.toml", "--out", "{root}/out/run"]


OK = None  # the input is converted and the command works
CASES = [
    # flags
    ("flag n not a number", gen("--n", "four"), r"argument --n: invalid int value: 'four' \(see unifork generate --help\)"),
    ("flag cfg not a number", gen("--cfg", "high"), r"argument --cfg: invalid float value"),
    ("flag missing", ["generate", "--prompt", "a red circle"], r"required: --ckpt, --out"),
    ("flag unknown", gen("--steps", "5"), r"unrecognized arguments: --steps 5"),
    ("command unknown", ["draw", "--prompt", "a red circle"], r"invalid choice: 'draw'"),
    # prompts
    ("prompt empty", gen(prompt=""), r"--prompt is empty"),
    ("prompt whitespace", gen(prompt=" \t\n "), r"--prompt is empty"),
    ("prompt 100 kB", gen(prompt="red circle " * 10_000), r"prompt sequence of \d+ tokens exceeds the model's context"),
    ("prompt non-UTF-8 bytes", gen(prompt=NON_UTF8), r"--prompt is not valid UTF-8"),
    ("prompt longer than the context", gen(prompt="red circle " * 100), r"prompt .*exceeds the model's context of 192"),
    ("prompt leaves no room for the image", gen(prompt="{near_context}"), r"prompt of \d+ tokens plus 16 generated"),
    ("prompt with marker strings", gen(prompt="<|img|> <|eos|> a red circle"), OK),
    ("prompt with newlines and unknown words", gen(prompt="a zebra\ncircle, très"), OK),
    # sampling settings
    ("temperature negative", gen("--temperature", "-0.5"), r"^error: --temperature "),
    ("temperature nan", gen("--temperature", "nan"), r"^error: --temperature "),
    ("temperature tiny", gen("--temperature", "1e-300"), OK),  # 0 once in float32: used to give NaN probabilities
    ("temperature huge", gen("--temperature", "1e300"), OK),
    ("top_p above 1", gen("--top-p", "1.5"), r"^error: --top-p "),
    ("top_p zero", gen("--top-p", "0"), r"^error: --top-p "),
    ("top_p tiny", gen("--top-p", "1e-300"), OK),  # 0 in float32: used to drop every token
    ("top_k negative", gen("--top-k", "-1"), r"^error: --top-k "),
    ("speculative window negative", gen("--speculative", "-2"), r"^error: --speculative "),
    ("speculative window past the image", gen("--speculative", "64"), OK),  # clamped to the codes left
    ("speculative window not given", gen("--speculative"), OK),  # the measured window
    ("top_k huge", gen("--top-k", str(2**70)), OK),  # at or above the vocabulary: off
    ("n zero", gen("--n", "0"), r"^error: --n \(the number of images\)"),
    ("n huge", gen("--n", "1000000"), r"^error: --n \(the number of images\)"),
    ("cfg negative", gen("--cfg", "-1"), r"^error: --cfg "),
    ("cfg nan", gen("--cfg", "nan"), r"^error: --cfg "),
    ("cfg infinite", gen("--cfg", "inf"), r"^error: --cfg "),
    ("cfg huge", gen("--cfg", "1e300"), OK),  # guided logits overflow to inf: used to give NaN probabilities
    ("seed negative", gen("--seed", "-1"), r"^error: --seed "),
    ("seed past 64 bits", gen("--seed", str(2**70)), r"^error: --seed "),
    # questions
    ("question empty", ask(question=""), r"--question is empty"),
    ("question whitespace", ask(question="   "), r"--question is empty"),
    ("question 100 kB", ask(question="what color? " * 8_400), r"question sequence of \d+ tokens exceeds the model's context"),
    ("question non-UTF-8 bytes", ask(question=NON_UTF8), r"--question is not valid UTF-8"),
    ("question longer than the context", ask(question="what color " * 100), r"shorten the question"),
    # image files
    ("image truncated PNG", ask("truncated.png"), r"not an image file.*truncated\.png"),
    ("image truncated TIFF", ask("cut.tif"), r"not an image file, or a damaged one: .*cut\.tif"),
    ("image non-image bytes", ask("notes.png"), r"not an image file.*notes\.png"),
    ("image 0-byte file", ask("empty.png"), r"not an image file.*empty\.png"),
    ("image is a directory", ask("folder.png"), r"no such image file: .*folder\.png"),
    ("image missing", ask("nowhere.png"), r"no such image file: .*nowhere\.png"),
    ("image path with a newline", ask("two\nlines.png"), r"no such image file: .*two lines\.png"),
    ("image decompression bomb", ask("bomb.png"), r"bomb\.png has more than \d+ pixels"),
    ("image over PIL's warning limit", ask("big.png"), r"big\.png has more than \d+ pixels"),
    ("image bomb to the tokenizer", ["tokenizer", "reconstruct", "--tokenizer", "{ckpt}/image_tokenizer", "--image",
                                     "{in}/bomb.png", "--out", "{root}/out/r.png"], r"bomb\.png has more than"),
    ("image 1x1", ask("one_pixel.png"), OK),
    ("image 16-bit PNG", ask("sixteen_bit.png"), OK),
    ("image CMYK JPEG", ask("cmyk.jpg"), OK),
    ("image palette PNG", ask("palette.png"), OK),
    ("image RGBA with alpha", ask("transparent.png"), OK),
    ("image LA", ask("grey_alpha.png"), OK),
    ("image wide GIF", ask("wide.gif"), OK),
    # checkpoints and their config files
    ("checkpoint missing", gen(ckpt="{root}/nowhere"), r"no such checkpoint directory"),
    ("checkpoint of another size", gen(ckpt="{root}/other_size"), r"weights .*model\.safetensors do not match .*config\.json"),
    ("config unknown key", gen(ckpt="{root}/unknown_key"), r"unknown key 'dropout' in .*config\.json"),
    ("config wrong type", gen(ckpt="{root}/wrong_type"), r"'d_model' in .*config\.json must be int"),
    ("config not an object", ask(ckpt="{root}/not_an_object"), r"config\.json must be a table of keys \(a JSON object\)"),
    ("config zero heads", gen(ckpt="{root}/no_heads"), r"n_heads must be at least 1, got 0 \(in .*config\.json\)"),
    ("image tokenizer config wrong type", ask(ckpt="{root}/tokenizer_wrong_type"), r"'image_size' in image tokenizer config"),
    # training recipes
    *((f"recipe {name}", train(name), message) for name, (_, message) in RECIPES.items()),
    ("recipe not UTF-8", train("latin1"), r"invalid TOML in .*latin1\.toml"),
    ("recipe missing", train("nowhere"), r"no such recipe file"),
    # evaluation and alignment
    ("eval seed past 64 bits", evaluate("--seed", str(2**70)), r"--seed must be"),
    ("eval zero images per prompt", evaluate("--images-per-prompt", "0"), r"--images-per-prompt must be"),
    ("eval cfg nan", evaluate("--cfg", "nan"), r"--cfg must be a finite number"),
    ("eval unknown suite", evaluate("--suite", "everything"), r"unknown --suite 'everything'"),
    ("align k zero", ["align", "--ckpt", "{ckpt}", "--k", "0", "--out", "{root}/out/a.json"], r"k \(neighbours per sample\)"),
    ("align unknown pooling", ["align", "--ckpt", "{ckpt}", "--pooling", "max", "--out", "{root}/out/a.json"], r"unknown --pooling 'max'"),
    ("align NaN features", ["align", "--features", "{in}/nan_features.npz", "--out", "{root}/out/a.json"], r"NaN"),
    ("align one sample", ["align", "--ckpt", "{ckpt}", "--n", "1", "--out", "{root}/out/a.json"], r"N=1 samples"),
]  # fmt: skip


def fill(argv, paths):
    filled = []
    for arg in argv:
        for key, value in paths.items():
            arg = arg.replace(key, value)
        filled.append(arg)
    return filled


@pytest.mark.parametrize("argv, expected", [pytest.param(a, e, id=name) for name, a, e in CASES])
def test_bad_input_is_one_line_naming_the_problem(paths, capsys, argv, expected):
    with warnings.catch_warnings(record=True) as caught:  # pytest keeps warnings off stderr: count them here
        warnings.simplefilter("always")
        try:
            code = main(fill(argv, paths))
        except SystemExit as exit:  # argparse's way out for flag mistakes
            code = exit.code
    captured = capsys.readouterr()
    assert not caught, [str(w.message) for w in caught]  # each would be more lines on stderr
    if expected is OK:
        assert (code, captured.err) == (0, ""), captured.err
        return
    assert code == 2 and captured.out == ""
    assert len(captured.err.splitlines()) == 1 and captured.err.endswith("\n"), captured.err
    assert captured.err.startswith("error: ") and "Traceback" not in captured.err
    assert re.search(expected, captured.err), captured.err
    assert len(captured.err) < 600  # readable, even for a 100 kB prompt


def test_debug_shows_the_traceback(paths, capsys):
    assert main(["--debug", *fill(ask("truncated.png"), paths)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("error: not an image file")


def test_non_utf8_argv_through_a_real_process(paths):
    """Real argv bytes (Python decodes them with surrogateescape): one line, no traceback, exit code 2."""
    argv = [sys.executable, "-m", "unifork.cli", *fill(gen(), paths)]
    argv[argv.index("a red circle")] = b"two red \xff\xfe circles"
    result = subprocess.run(argv, capture_output=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    err = result.stderr.decode("utf-8")
    assert result.returncode == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: --prompt is not valid UTF-8 text: 'two red \\udcff\\udcfe circles'")


def test_image_modes_are_converted_as_documented(paths):
    """Transparency on the white background, 16-bit rescaled, palette and CMYK to RGB, any size to the canvas."""
    d, size = paths["{in}"], 32
    expected = {
        "transparent.png": (255, 255, 255),  # red at alpha 0: the background
        "grey_alpha.png": (255, 255, 255),
        "sixteen_bit.png": (255, 255, 255),  # 65535 -> 255
        "one_pixel.png": (30, 60, 200),  # one pixel fills the canvas
    }
    for name, color in expected.items():
        pixels = fit_image(f"{d}/{name}", size)
        assert pixels.dtype == np.uint8 and pixels.shape == (32, 32, 3)
        assert (pixels == color).all(), name
    for name in ("palette.png", "cmyk.jpg", "wide.gif"):  # lossy or dithered: compare mean colors
        pixels = fit_image(f"{d}/{name}", size).astype(float)
        red, white = pixels[4:12, 4:12].mean((0, 1)), pixels[-8:, -8:].mean((0, 1))
        assert np.abs(red - (220, 30, 30)).max() < 40 and np.abs(white - 255).max() < 10, (name, red, white)


def test_the_library_refuses_what_the_cli_refuses(paths):
    """The checks live in the library, so Python callers get the same UserError as the command line."""
    from unifork.errors import UserError
    from unifork.inference import Pipeline

    pipe = Pipeline.from_pretrained(paths["{ckpt}"])
    with pytest.raises(UserError, match="a question is empty"):
        pipe.ask_batch([np.zeros((8, 8, 3), np.uint8)] * 2, ["what color?", " "])
    with pytest.raises(UserError, match=r"^seed "):
        pipe.generate_codes("a red circle", n=1, seed=2**64)
    with pytest.raises(UserError, match="not valid Unicode"):
        pipe.generate_codes(NON_UTF8, n=1)


class Payload:
    """Unpickling this creates a file: what a malicious checkpoint would do with a shell command instead."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_pickled_payloads_in_checkpoints_never_run(paths, tmp_path, capsys):
    """Weights are read from safetensors only and training state with torch.load(weights_only=True)."""
    from unifork.errors import UserError
    from unifork.train.checkpoints import STATE_FILE, load_train_state

    marker = tmp_path / "payload_ran"
    shutil.copytree(paths["{ckpt}"], ckpt := tmp_path / "ckpt")
    torch.save({"w": Payload(marker)}, ckpt / "model.safetensors")
    assert main(fill(gen(ckpt=str(ckpt)), paths)) == 2
    assert re.match(r"error: corrupt model weights .*model\.safetensors", capsys.readouterr().err)
    torch.save({"step": 3, "optimizer": Payload(marker)}, ckpt / STATE_FILE)
    with pytest.raises(UserError, match=r"corrupt training state .*train_state\.pt"):
        load_train_state(ckpt, torch.device("cpu"))
    assert not marker.exists()

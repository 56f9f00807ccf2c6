"""The image tokenizer trained on a folder of real images (scikit-learn's digit scans): it learns, it resumes
bit-exactly, it skips and counts corrupt images, its report and sheet are written, and bad input is one line."""

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from unifork.data.digits import write_digits
from unifork.errors import UserError
from unifork.eval.image_quality import reconstruction_metrics
from unifork.tokenizers.image import ImageTokenizer
from unifork.train.image_tokenizer import STATE_FILE, TokenizerData, sized_config, train_image_tokenizer
from unifork.train.tokenizer_images import source_eval_images

pytest.importorskip("sklearn", reason="the digit scans ship with scikit-learn (`pip install -e '.[dev]'` installs it)")
pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 40


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits folder, with broken records spread through train.jsonl: files that are no image, and missing ones."""
    out = tmp_path_factory.mktemp("digits")
    write_digits(out, image_size=32)
    (out / "images" / "broken.png").write_bytes(b"not a png at all")
    lines = (out / "train.jsonl").read_text().splitlines()
    for i in range(0, len(lines), 60):
        name = "images/broken.png" if i % 120 else "images/missing.png"
        lines.insert(i, json.dumps({"image": name, "captions": ["a handwritten one"]}))
    (out / "train.jsonl").write_text("\n".join(lines) + "\n")
    return out


def data(digits, **kwargs) -> TokenizerData:
    return TokenizerData(source=f"folder:{digits}/train.jsonl", eval_source=f"folder:{digits}/test.jsonl", image_size=32,
                         downsample=4, **kwargs)  # fmt: skip


@pytest.fixture(scope="module")
def straight(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    report = train_image_tokenizer(out, steps=STEPS, size="tiny", data=data(digits), batch_size=16, progress=False)
    return out, report


def test_training_on_real_images_beats_an_untrained_tokenizer(straight, digits):
    out, report = straight
    held_out = source_eval_images(f"folder:{digits}/test.jsonl", 32, 128, holdout=False)
    torch.manual_seed(0)
    untrained = ImageTokenizer(sized_config(ImageTokenizer().cfg, 32, 4)).eval()
    before = reconstruction_metrics(untrained, held_out)
    assert report["psnr_heldout"] > before["psnr"] + 8, (report, before)
    assert report["ssim_heldout"] > before["ssim"] + 0.3
    assert report["grid"] == 8 and report["image_size"] == 32 and report["n_heldout"] == 128
    assert report["skipped_corrupt"] >= 1  # the broken records are drawn, skipped and counted
    sheet = Image.open(out / "reconstructions.png")
    assert sheet.size == (8 * 128, 4 * 128)  # 16 held-out images: two rows of originals over reconstructions
    assert not (out / STATE_FILE).exists()


def test_tokenizer_training_resumes_bit_exactly(straight, digits, tmp_path):
    out, report = straight
    assert train_image_tokenizer(tmp_path, steps=STEPS, size="tiny", data=data(digits), batch_size=16, progress=False,
                                 max_steps=15) is None  # fmt: skip
    assert (tmp_path / STATE_FILE).is_file() and not (tmp_path / "model.safetensors").exists()
    with pytest.raises(UserError, match="interrupted tokenizer training"):  # never silently restarted
        train_image_tokenizer(tmp_path, steps=STEPS, size="tiny", data=data(digits), batch_size=16, progress=False)
    with pytest.raises(UserError, match="started with another batch_size"):
        train_image_tokenizer(tmp_path, steps=STEPS, size="tiny", data=data(digits), batch_size=8, progress=False, resume=True)
    resumed = train_image_tokenizer(tmp_path, steps=STEPS, size="tiny", data=data(digits), batch_size=16,
                                    progress=False, resume=True)  # fmt: skip
    a, b = load_file(str(out / "model.safetensors")), load_file(str(tmp_path / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    same = {k: v for k, v in report.items() if k != "train_seconds"}
    assert {k: v for k, v in resumed.items() if k != "train_seconds"} == same


def test_without_an_eval_source_one_record_in_fifty_is_held_out(digits, tmp_path):
    report = train_image_tokenizer(tmp_path, steps=3, size="tiny", progress=False,
                                   data=TokenizerData(source=f"folder:{digits}/train.jsonl", image_size=32, downsample=4))  # fmt: skip
    assert 10 <= report["n_heldout"] <= 60 and "1 in 50" in report["eval_data"]  # ~30 of ~1,500 records


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "unifork.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("flags, message", [
    (["--image-size", "30", "--downsample", "4"], "--image-size 30 is not divisible by the encoder's downsampling 4"),
    (["--downsample", "6"], "--downsample must be a power of 2"),
    (["--data", "folder:/nowhere/at/all.jsonl"], "no such file or folder"),
    (["--data", "ftp:x"], "unknown data source 'ftp:x'"),
    (["--steps", "0"], "--steps must be at least 1"),
])  # fmt: skip
def test_bad_tokenizer_training_input_is_one_line(tmp_path, flags, message):
    result = run_cli("tokenizer", "train", "--out", str(tmp_path / "tok"), *flags)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "tok").exists()


def test_a_source_with_no_readable_image_is_one_line(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"garbage")
    (tmp_path / "data.jsonl").write_text("".join(json.dumps({"image": "bad.png", "caption": "x"}) + "\n" for _ in range(3)))
    result = run_cli("tokenizer", "train", "--out", str(tmp_path / "tok"), "--data", f"folder:{tmp_path}/data.jsonl",
                     "--eval-data", f"folder:{tmp_path}/data.jsonl", "--steps", "2", "--size", "tiny")  # fmt: skip
    assert result.returncode != 0 and "has no readable image" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "tok").exists()  # nothing half-written

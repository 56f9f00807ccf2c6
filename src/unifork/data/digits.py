"""A real-data example that needs no download: scikit-learn's handwritten digits as a `folder:` source.

load_digits holds 1,797 real scans from the UCI optical-recognition set, 8x8 pixels of 17 ink levels. Each is
written dark-on-white as a PNG at the tokenizer's size (bicubic upsampling) with captions and questions, in
train.jsonl / test.jsonl: a seeded split by scan, so no test scan is ever trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from unifork.atomic import atomic_write_text
from unifork.errors import UserError, param

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
WHICH_QUESTION = "which digit is this?"
SPLITS = ("train", "test")
INK_LEVELS = 16  # load_digits' pixel values run 0..16


def load_scans() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) ink in 0..16 and the digit of each scan."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError("the digits example needs scikit-learn, which bundles the scans: pip install scikit-learn") from None
    digits = load_digits()
    return digits.images, digits.target


def scan_to_image(scan: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 (size, size, 3): dark ink on white paper, upsampled bicubically from 8x8."""
    paper = np.round(255 * (1 - scan / INK_LEVELS)).astype(np.uint8)
    return np.asarray(Image.fromarray(paper).resize((image_size, image_size), Image.BICUBIC).convert("RGB"))


def is_this(word: str) -> str:
    return f"is this {'an' if word == 'eight' else 'a'} {word}?"


def digit_record(digit: int, name: str, rng: np.random.Generator) -> dict:
    """Captions and questions for one scan: which digit it is, and two yes/no questions, one about its own digit
    (yes) and one about another digit drawn at random (no), so answering them takes the image and the question."""
    word, other = DIGIT_WORDS[digit], DIGIT_WORDS[int(rng.choice([d for d in range(10) if d != digit]))]
    qa = [[WHICH_QUESTION, word], [is_this(word), "yes"], [is_this(other), "no"]]
    return {"image": name, "digit": digit, "captions": [f"a handwritten {word}"], "qa": qa}


def write_digits(out: str | Path, image_size: int = 32, test_fraction: float = 0.2, seed: int = 0) -> dict:
    """Write out/images/*.png, out/train.jsonl and out/test.jsonl; returns the number of scans per split."""
    if image_size < 8:
        raise UserError(f"{param('image_size')} must be at least the scans' 8 pixels, got {image_size}")
    if not 0 < test_fraction < 1:
        raise UserError(f"{param('test_fraction')} must be between 0 and 1, got {test_fraction}")
    scans, targets = load_scans()
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(scans))
    n_test = round(test_fraction * len(scans))
    split_of = {int(i): ("test" if rank < n_test else "train") for rank, i in enumerate(order)}
    lines = {split: [] for split in SPLITS}
    for i, (scan, digit) in enumerate(zip(scans, targets)):
        name = f"images/{i:04d}.png"
        Image.fromarray(scan_to_image(scan, image_size)).save(out / name)
        lines[split_of[i]].append(json.dumps(digit_record(int(digit), name, rng)))
    for split in SPLITS:  # the jsonl last: a folder with both files is complete
        atomic_write_text(out / f"{split}.jsonl", "\n".join(lines[split]) + "\n")
    return {split: len(lines[split]) for split in SPLITS}

"""`unifork eval --digits DIR`: the handwritten-digits example (data/digits.py) scored on scans never trained on.

    und   exact-match VQA on every question of test.jsonl ("which digit is this?", "is this a seven?")
    gen   n images per digit from "a handwritten {digit}", each judged by a classifier fitted only on the
          training scans; the judge's own accuracy on the test scans, and on the tokenizer's reconstructions
          of them (what a perfect generator could score through this tokenizer), are reported beside it

The judge is scikit-learn's RBF support-vector machine on the image shrunk back to 8x8 ink levels, the
classic recipe for this dataset (its accuracy on unseen scans is in the result: ~0.99).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from unifork.data.digits import DIGIT_WORDS, INK_LEVELS, WHICH_QUESTION
from unifork.errors import UserError
from unifork.eval.stats import rates
from unifork.images import fit_image
from unifork.tokenizers.image import images_to_tensor, tensor_to_images

SCAN_SIDE = 8


def digit_features(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) dark-on-white images -> (N, 64) ink levels 0..16 on the scans' 8x8 grid."""
    rows = []
    for image in images:
        gray = Image.fromarray(image).convert("L").resize((SCAN_SIDE, SCAN_SIDE), Image.BOX)
        rows.append(INK_LEVELS * (1 - np.asarray(gray, dtype=np.float64) / 255).reshape(-1))
    return np.stack(rows)


def read_split(directory: Path, split: str, image_size: int) -> tuple[np.ndarray, list[dict]]:
    """The split's images fitted to `image_size` and its records."""
    path = directory / f"{split}.jsonl"
    if not path.is_file():
        raise UserError(f"no {path}; write the digits example with `unifork data digits --out {directory}`")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    images = np.stack([fit_image(directory / r["image"], image_size) for r in records])
    return images, records


class DigitJudge:
    """Which digit an image shows, from a classifier fitted on the training scans only."""

    def __init__(self, train_images: np.ndarray, digits: list[int]):
        from sklearn.svm import SVC

        self.classifier = SVC(gamma="scale", C=10.0).fit(digit_features(train_images), digits)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.classifier.predict(digit_features(images))


def evaluate_digits(pipeline, directory: str | Path, suite: str, images_per_digit: int, sampling, seed: int) -> dict:
    directory = Path(directory)
    size = pipeline.image_tokenizer.cfg.image_size
    test_images, test_records = read_split(directory, "test", size)
    result = {"digits": str(directory), "n_test_scans": len(test_records)}
    if suite in ("und", "all"):
        result["vqa"] = _vqa(pipeline, test_images, test_records)
    if suite in ("gen", "all"):
        train_images, train_records = read_split(directory, "train", size)
        judge = DigitJudge(train_images, [r["digit"] for r in train_records])
        truth = np.array([r["digit"] for r in test_records])
        recon = tensor_to_images(pipeline.image_tokenizer.decode(pipeline.image_tokenizer.encode(images_to_tensor(test_images))))
        result["judge"] = {"accuracy_test_scans": round(float(np.mean(judge(test_images) == truth)), 4),
                           "accuracy_reconstructions": round(float(np.mean(judge(recon) == truth)), 4)}  # fmt: skip
        result["gen"] = _generation(pipeline, judge, images_per_digit, sampling, seed)
    return result


def _question_type(question: str) -> str:
    return "which" if question == WHICH_QUESTION else "yes_no"


def _vqa(pipeline, images: np.ndarray, records: list[dict], batch_size: int = 64) -> dict:
    asks = [(image, q, a) for image, r in zip(images, records) for q, a in r["qa"]]
    correct, total = Counter(), Counter()
    for start in range(0, len(asks), batch_size):
        chunk = asks[start : start + batch_size]
        answers = pipeline.ask_batch([image for image, _, _ in chunk], [q for _, q, _ in chunk])
        for (_, question, truth), answer in zip(chunk, answers):
            kind = _question_type(question)
            total[kind] += 1
            correct[kind] += answer.strip() == truth
    return rates(correct, total, ("which", "yes_no"))


def _generation(pipeline, judge: DigitJudge, images_per_digit: int, sampling, seed: int) -> dict:
    correct, total = Counter(), Counter()
    for digit, word in enumerate(DIGIT_WORDS):
        images = pipeline.generate(f"a handwritten {word}", n=images_per_digit, seed=seed + digit, cfg_scale=sampling.cfg_scale,
                                   temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p)  # fmt: skip
        predicted = judge(np.stack([np.asarray(image) for image in images]))
        total[word] += len(images)
        correct[word] += int(np.sum(predicted == digit))
    return rates(correct, total, DIGIT_WORDS) | {"images_per_digit": images_per_digit}

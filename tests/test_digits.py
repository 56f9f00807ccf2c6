"""The digits example: scikit-learn's real scans split by scan, a judge fitted on training scans only, the recipe
runs through the folder: path and `unifork eval --digits` scores a checkpoint."""

import json
import re

import numpy as np
import pytest

from unifork.cli import main
from unifork.data.digits import DIGIT_WORDS, WHICH_QUESTION, is_this, write_digits
from unifork.eval.digits import DigitJudge, read_split
from unifork.train.recipe import find_recipe, load_recipe

pytest.importorskip("sklearn", reason="the digit scans ship with scikit-learn (`pip install -e '.[dev]'` installs it)")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    assert write_digits(out, image_size=32) == {"train": 1438, "test": 359}
    return out


def records(directory, split):
    return [json.loads(line) for line in (directory / f"{split}.jsonl").read_text().splitlines()]


def test_split_is_by_scan_and_questions_follow_the_digit(digits):
    train, test = records(digits, "train"), records(digits, "test")
    assert not {r["image"] for r in train} & {r["image"] for r in test}  # no scan in both
    for r in train + test:
        word = DIGIT_WORDS[r["digit"]]
        assert r["captions"] == [f"a handwritten {word}"]
        (which, answer), (own, yes), (other, no) = r["qa"]
        assert (which, answer, own, yes, no) == (WHICH_QUESTION, word, is_this(word), "yes", "no")
        assert other != own and re.fullmatch(r"is this an? \w+\?", other)
    assert {r["digit"] for r in test} == set(range(10))


def test_the_judge_fitted_on_training_scans_reads_unseen_scans(digits):
    train_images, train_records = read_split(digits, "train", 32)
    test_images, test_records = read_split(digits, "test", 32)
    judge = DigitJudge(train_images, [r["digit"] for r in train_records])
    accuracy = np.mean(judge(test_images) == np.array([r["digit"] for r in test_records]))
    assert accuracy >= 0.97, accuracy  # measured: 1.000 on the 359 test scans
    blank = np.full((10, 32, 32, 3), 255, dtype=np.uint8)
    assert len(set(judge(blank))) == 1  # an empty page is one answer, not each digit in turn


def test_the_recipe_trains_and_eval_digits_scores_it(digits, tmp_path, monkeypatch, capsys):
    """The packaged recipe, shortened: tokenizers on the folder source, three stages, then `eval --digits`."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "digits").mkdir(parents=True)
    (tmp_path / "runs" / "digits" / "data").symlink_to(digits)
    recipe = load_recipe("digits")
    assert recipe.data.source == "folder:runs/digits/data/train.jsonl" and recipe.tokenizer.downsample == 4
    text = find_recipe("digits").read_text()
    short = re.sub(r"^steps = \d+", "steps = 3", text, flags=re.M)
    (tmp_path / "short.toml").write_text(short)
    assert main(["train", "--config", "short.toml", "--out", "runs/short"]) == 0
    out = tmp_path / "eval.json"
    assert main(["eval", "--ckpt", "runs/short/checkpoint", "--digits", str(digits), "--out", str(out),
                 "--images-per-prompt", "1"]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    assert result["vqa"]["counts"]["overall"]["total"] == 3 * 359
    assert result["gen"]["counts"]["overall"]["total"] == 10 and result["judge"]["accuracy_test_scans"] >= 0.97
    assert "digits VQA on unseen scans" in capsys.readouterr().out

"""Benchmark files: `unifork eval --vqa-file` reads JSONL and VLMEvalKit TSV, scores as POPE and MCQ harnesses do."""

import base64
import csv
import io
import json

import pytest
from PIL import Image

from unifork.cli import main
from unifork.eval.vqa_file import Item, multiple_choice_letter, score
from unifork.world import World

pytestmark = pytest.mark.usefixtures("one_thread")
BLANK = Image.new("RGB", (4, 4))


def png_base64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_yes_no_and_multiple_choice_scores():
    truth = ["yes", "yes", "no", "no", "yes"]
    said = ["Yes.", "no", "no", "yes", "yes"]  # tp 2, fn 1, fp 1, tn 1
    scores = score([Item(i, BLANK, "q", a) for i, a in enumerate(truth)], said)
    yes_no = scores["yes_no"]
    assert yes_no["accuracy"]["value"] == 0.6 and yes_no["precision"]["value"] == pytest.approx(2 / 3, abs=1e-4)
    assert yes_no["recall"]["value"] == pytest.approx(2 / 3, abs=1e-4) and yes_no["f1"] == pytest.approx(2 / 3, abs=1e-4)
    assert yes_no["yes_ratio"]["value"] == 0.6 and scores["exact_match"]["correct"] == 3  # "Yes." normalises to yes
    lo, hi = yes_no["accuracy"]["ci95"]
    assert lo < 0.6 < hi
    options = {"A": "red", "B": "blue", "C": "green"}
    assert multiple_choice_letter("B", options) == "B" and multiple_choice_letter("The answer is C.", options) == "C"
    assert multiple_choice_letter("blue", options) == "B" and multiple_choice_letter("purple", options) is None
    mcq = score([Item(0, BLANK, "q", "B", options), Item(1, BLANK, "q", "A", options)], ["blue", "C"])
    assert mcq["multiple_choice"]["correct"] == 1 and "yes_no" not in mcq


@pytest.fixture(scope="module")
def benchmark_files(tmp_path_factory):
    """A JSONL with image paths and base64, and a VLMEvalKit TSV with options, from world test scenes."""
    root = tmp_path_factory.mktemp("bench")
    world = World(0, "test")
    samples = [world.sample(i) for i in range(4)]
    images = [Image.fromarray(s.image) for s in samples]
    lines = []
    for i, s in enumerate(samples):
        _, question, answer = s.qa[0]
        if i % 2:
            lines.append({"image_base64": png_base64(images[i]), "question": question, "answer": answer})
        else:
            images[i].save(root / f"{i}.png")
            lines.append({"image": f"{i}.png", "text": question, "label": answer})  # POPE's names
    (root / "b.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    with open(root / "b.tsv", "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["index", "image", "question", "A", "B", "answer"])
        for i in range(len(samples)):
            writer.writerow([i, png_base64(images[i]), "what shape is it?", "circle", "square", "A"])
    return root


@pytest.mark.parametrize("name", ["b.jsonl", "b.tsv"])
def test_eval_scores_a_benchmark_file(ckpt, benchmark_files, tmp_path, capsys, name):
    out = tmp_path / "e.json"
    assert main(["eval", "--ckpt", str(ckpt), "--vqa-file", str(benchmark_files / name), "--out", str(out)]) == 0
    scores = json.loads(out.read_text())["vqa_file"]
    assert scores["rows"] == 4 and scores["exact_match"]["total"] == 4 and len(scores["examples"]) == 4
    assert ("multiple_choice" in scores) == (name == "b.tsv")
    assert "exact match" in capsys.readouterr().out


@pytest.mark.parametrize("content, message", [
    ('{"image": "0.png", "answer": "red"}', "row 1: column 'question' is missing"),
    ('{"question": "q", "answer": "a"}\n{"image": "missing.png", "question": "q", "answer": "a"}', "row 1: column 'image'"),
    ('{"image_base64": "%%%", "question": "q", "answer": "a"}', "row 1: column 'image_base64' is not valid base64"),
    ('{"image_base64": "aGVsbG8=", "question": "q", "answer": "a"}', "row 1: column 'image_base64' is not a readable image"),
    ('{"image": "0.png", "question": "q", "answer": "a"}\nnot json', "row 2: not JSON"),
])  # fmt: skip
def test_a_bad_row_names_its_row_and_column(ckpt, benchmark_files, tmp_path, capsys, content, message):
    path = benchmark_files / "bad.jsonl"
    path.write_text(content)
    assert main(["eval", "--ckpt", str(ckpt), "--vqa-file", str(path), "--out", str(tmp_path / "e.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err

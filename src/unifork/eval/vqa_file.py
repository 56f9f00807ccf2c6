"""`unifork eval --vqa-file FILE`: the understanding path scored on a benchmark file in a harness's format.

    JSONL  one object a line: `image` (a path, relative to the file's folder or absolute) or `image_base64`,
           `question` (POPE: `text`), `answer` (POPE: `label`)
    TSV    VLMEvalKit's: a header with `image` (base64), `question`, `answer`, optional options `A`-`D` (then
           `answer` is the letter) and `hint`

Scores: exact match after normalising case, spaces and end punctuation; where every answer is yes or no, also
POPE's figures (precision, recall and F1 with "yes" positive, and the share of "yes" answers); where rows carry
options, multiple-choice accuracy on the letter (the first A-D standing alone in the answer, else the option whose
text the answer is). Every rate carries a Wilson 95% interval.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from unifork.errors import UserError
from unifork.eval.stats import wilson_interval

LETTERS = ("A", "B", "C", "D")
BATCH = 32


@dataclass(frozen=True)
class Item:
    row: int  # 1-based, as a user counts lines (after a TSV's header)
    image: Image.Image
    question: str
    answer: str
    options: dict[str, str] | None = None  # letter -> text, for multiple choice


def read_items(path: str | Path) -> list[Item]:
    """The rows of a JSONL or TSV benchmark file; a bad row is a UserError naming the file, row and column."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such benchmark file: {path}; give a .jsonl or VLMEvalKit .tsv file")
    if path.suffix == ".tsv":
        items = _tsv(path)
    elif path.suffix in (".jsonl", ".json"):
        items = _jsonl(path)
    else:
        raise UserError(f"{path}: unknown benchmark format '{path.suffix}'; give a .jsonl or VLMEvalKit .tsv file")
    if not items:
        raise UserError(f"{path} holds no rows")
    return items


def _jsonl(path: Path) -> list[Item]:
    items = []
    for row, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            raise UserError(f"{path} row {row}: not JSON ({err})") from None
        if not isinstance(record, dict):
            raise UserError(f"{path} row {row}: a row must be a JSON object")
        question = _field(record, ("question", "text"), path, row)
        answer = _field(record, ("answer", "label"), path, row)
        if "image_base64" in record:
            image = _decode(record["image_base64"], path, row, "image_base64")
        else:
            name = _field(record, ("image",), path, row)
            image = _open((path.parent / name) if not Path(name).is_absolute() else Path(name), path, row, "image")
        items.append(Item(row, image, question, answer))
    return items


def _tsv(path: Path) -> list[Item]:
    csv.field_size_limit(2**31 - 1)  # a base64 image is one very long field
    with path.open(newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        items = []
        for row, record in enumerate(reader, start=1):
            question = _field(record, ("question",), path, row)
            answer = _field(record, ("answer",), path, row)
            image = _decode(_field(record, ("image",), path, row), path, row, "image")
            options = {k: record[k] for k in LETTERS if record.get(k) not in (None, "", "nan")}
            hint = record.get("hint")
            if hint not in (None, "", "nan"):
                question = f"{hint}\n{question}"
            items.append(Item(row, image, question, answer, options or None))
    return items


def _field(record: dict, names: tuple[str, ...], path: Path, row: int) -> str:
    for name in names:
        value = record.get(name)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and str(value).strip():
            return str(value)
    raise UserError(f"{path} row {row}: column '{names[0]}' is missing or empty")


def _decode(text: str, path: Path, row: int, column: str) -> Image.Image:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise UserError(f"{path} row {row}: column '{column}' is not valid base64") from None
    return _open(io.BytesIO(data), path, row, column)


def _open(source, path: Path, row: int, column: str) -> Image.Image:
    try:
        with Image.open(source) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise UserError(f"{path} row {row}: column '{column}' is not a readable image ({err})") from None


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(".!?")


def multiple_choice_letter(answer: str, options: dict[str, str]) -> str | None:
    """The option an answer picks: a letter standing alone, else the option whose text it is."""
    found = re.search(r"\b([A-D])\b", answer.strip())
    if found and found.group(1) in options:
        return found.group(1)
    by_text = [k for k, v in options.items() if normalise(v) == normalise(answer)]
    return by_text[0] if len(by_text) == 1 else None


def _prompt(item: Item) -> str:
    if not item.options:
        return item.question
    lines = [item.question, *(f"{k}. {v}" for k, v in item.options.items())]
    return "\n".join(lines + ["Answer with the option's letter."])


def evaluate_vqa_file(pipeline, path: str | Path, max_new_tokens: int = 16) -> dict:
    """Greedy answers to every row of the file, and their scores."""
    items = read_items(path)
    predictions = []
    for start in range(0, len(items), BATCH):
        part = items[start : start + BATCH]
        predictions += pipeline.ask_batch([i.image for i in part], [_prompt(i) for i in part], max_new_tokens)
    return {"file": str(path), "rows": len(items), **score(items, predictions),
            "examples": [{"row": i.row, "question": i.question, "answer": i.answer, "prediction": p}
                         for i, p in list(zip(items, predictions))[:10]]}  # fmt: skip


def score(items: list[Item], predictions: list[str]) -> dict:
    exact = sum(normalise(p) == normalise(i.answer) for i, p in zip(items, predictions))
    result = {"exact_match": _rate(exact, len(items))}
    if all(normalise(i.answer) in ("yes", "no") for i in items):
        result["yes_no"] = _yes_no([normalise(i.answer) == "yes" for i in items],
                                   [normalise(p).startswith("yes") for p in predictions])  # fmt: skip
    chosen = [(i, p) for i, p in zip(items, predictions) if i.options]
    if chosen:
        right = sum(multiple_choice_letter(p, i.options) == i.answer.strip().upper() for i, p in chosen)
        result["multiple_choice"] = _rate(right, len(chosen))
    return result


def _yes_no(truth: list[bool], said_yes: list[bool]) -> dict:
    """POPE's figures with "yes" as the positive class."""
    tp = sum(t and s for t, s in zip(truth, said_yes))
    fp = sum(s and not t for t, s in zip(truth, said_yes))
    fn = sum(t and not s for t, s in zip(truth, said_yes))
    correct = sum(t == s for t, s in zip(truth, said_yes))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": _rate(correct, len(truth)), "precision": _rate(tp, tp + fp), "recall": _rate(tp, tp + fn),
            "f1": round(f1, 4), "yes_ratio": _rate(sum(said_yes), len(truth))}  # fmt: skip


def _rate(correct: int, total: int) -> dict:
    return {"value": round(correct / total, 4) if total else 0.0, "ci95": [round(v, 4) for v in wilson_interval(correct, total)],
            "correct": correct, "total": total}  # fmt: skip

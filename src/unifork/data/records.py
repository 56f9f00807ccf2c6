"""One image-text record, whatever format it came from, and the schema its text fields follow.

A record's text is any of (JSON object, jsonl line, table row, or a WebDataset sample's .json):

    caption:   "a red circle"  or  ["a red circle", "one circle"]       (gen rows)
    captions:  the same, plural spelling; entries may be [category, text] (the world export's meta.jsonl)
    question + answer: one pair                                        (und rows)
    qa:        [{"question": ..., "answer": ...}, ...]  or  [[q, a], ...]  or  [[type, q, a], ...]

A record needs captions for generation rows and question-answer pairs for understanding rows; one with
neither is read and never used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from unifork.errors import UserError


@dataclass(frozen=True)
class Encoded:
    """An image the frozen tokenizer already encoded (pretokenized data): codes (L,), latents (L, D) or None."""

    codes: Any
    latents: Any = None


@dataclass(frozen=True)
class Record:
    key: str  # where it came from, for messages: "shard-00003.tar:000123"
    image: Any  # bytes | a path | a PIL image | Encoded; None: an image pretokenize found corrupt
    captions: tuple[str, ...] = ()
    qa: tuple[tuple[str, str], ...] = ()


def _texts(value, field: str, key: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise UserError(f"record {key}: '{field}' must be a string or a list of strings, got {type(value).__name__}")
    out = []
    for item in items:
        text = item[-1] if isinstance(item, list | tuple) and item else item  # [category, caption]
        if not isinstance(text, str):
            raise UserError(f"record {key}: '{field}' must hold strings, got {item!r}")
        out.append(text)
    return out


def _pair(item, key: str) -> tuple[str, str]:
    if isinstance(item, dict):
        pair = (item.get("question"), item.get("answer"))
    elif isinstance(item, list | tuple) and len(item) >= 2:
        pair = tuple(item[-2:])  # [question, answer] or the world export's [type, question, answer]
    else:
        pair = (None, None)
    if not all(isinstance(text, str) for text in pair):
        raise UserError(f"record {key}: each 'qa' entry needs a string question and answer, got {item!r}")
    return pair


def record_text(fields: dict, key: str) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """(captions, question-answer pairs) of a record's fields; empty strings and missing fields are dropped."""
    captions = []
    for field in ("caption", "captions"):
        if fields.get(field) is not None:
            captions += _texts(fields[field], field, key)
    qa = []
    if fields.get("qa") is not None:
        if not isinstance(fields["qa"], list | tuple):
            raise UserError(f"record {key}: 'qa' must be a list, got {type(fields['qa']).__name__}")
        qa += [_pair(item, key) for item in fields["qa"]]
    if fields.get("question") is not None or fields.get("answer") is not None:
        qa.append(_pair({"question": fields.get("question"), "answer": fields.get("answer")}, key))
    return tuple(c for c in captions if c.strip()), tuple((q, a) for q, a in qa if q.strip() and a.strip())

"""What a chat completion request means to a model that answers one question about one image.

    read_messages      the messages -> (question, image data URL, where it was), or a FieldError naming the part
    check_unsupported  OpenAI fields this model cannot honour, refused by name unless at their neutral value
    stop_sequences     the `stop` field as a list
    shown_text         the part of an answer a stream may show so far: cut at a stop sequence, holding back a
                       tail that may still become one
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from unifork.serve.errors import FieldError
from unifork.serve.images import DATA_URL
from unifork.serve.openai_schemas import MAX_STOP_SEQUENCES, ChatRequest
from unifork.serve.schemas import check_question_text

INSTRUCTION_ROLES = ("system", "developer")  # accepted and not used: the model was trained on questions alone
NO_IMAGE = ("has no image; this model answers questions about one image (an image_url part with a data: URL). "
            "To generate an image, POST /v1/images/generations")  # fmt: skip
MAX_STOP_CHARS = 200


@dataclass(frozen=True)
class Asked:
    question: str  # the user message's text parts, joined
    image_url: str  # its one image, a data: URL
    image_field: str  # where the image was, e.g. messages[0].content[1].image_url.url
    content_field: str  # where the question was, e.g. messages[0].content


def read_messages(messages: list[Any]) -> Asked:
    """The question and image of the one user message."""
    users = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise FieldError(where, "must be an object with 'role' and 'content'")
        for key in message:
            if key not in ("role", "content", "name"):
                raise FieldError(f"{where}.{key}", "is not a field of a message (fields: role, content, name)")
        role = message.get("role")
        if role == "user":
            users.append(i)
        elif role in ("assistant", "tool", "function"):
            raise FieldError(f"{where}.role", f"is '{role}': this model answers one question about one image, with no "
                                              "earlier turns; send one user message")  # fmt: skip
        elif role not in INSTRUCTION_ROLES:
            raise FieldError(f"{where}.role", f"must be 'user' (or 'system' / 'developer', accepted and not used), got {role!r}")
    if len(users) != 1:
        raise FieldError("messages", f"must hold exactly one user message (the question about one image), got {len(users)}")
    where = f"messages[{users[0]}].content"
    content = messages[users[0]].get("content")
    if isinstance(content, str):
        raise FieldError(where, NO_IMAGE)
    if not isinstance(content, list) or not content:
        raise FieldError(where, "must be a list of content parts: text and one image_url")
    texts, images = [], []
    for k, part in enumerate(content):
        read = _read_part(part, f"{where}[{k}]")
        (images if isinstance(read, tuple) else texts).append(read)
    if not images:
        raise FieldError(where, NO_IMAGE)
    if len(images) > 1:
        raise FieldError(where, f"has {len(images)} images; this model reads one image per question")
    question = " ".join(t.strip() for t in texts if t.strip())
    try:
        check_question_text(question)
    except ValueError as err:
        raise FieldError(where, f"the question (its text parts) {err}") from None
    url, url_where = images[0]
    return Asked(question, url, url_where, where)


def _read_part(part: Any, where: str) -> str | tuple[str, str]:
    """A text part's text, or an image part's (data URL, its parameter path)."""
    if not isinstance(part, dict):
        raise FieldError(where, "must be an object with a 'type'")
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise FieldError(f"{where}.text", "must be a string")
        return text
    if kind != "image_url":
        raise FieldError(f"{where}.type", f"must be 'text' or 'image_url', got {kind!r}")
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image  # some clients send the URL as a plain string
    url_where = f"{where}.image_url.url" if isinstance(image, dict) else f"{where}.image_url"
    if not isinstance(url, str):
        raise FieldError(url_where, "must be a string: a data:image/...;base64, URL")
    if not DATA_URL.match(url.strip()):
        scheme = url.split(":", 1)[0] if ":" in url else "none"
        raise FieldError(url_where, f"must be a data:image/...;base64, URL (got scheme '{scheme[:20]}'); this server fetches "
                                    "nothing: send the image inline")  # fmt: skip
    return url, url_where


def check_unsupported(body: ChatRequest) -> None:
    neutral = {"frequency_penalty": (None, 0), "presence_penalty": (None, 0), "logprobs": (None, False), "tools": (None,),
               "tool_choice": (None,)}  # fmt: skip
    for name, allowed in neutral.items():
        if getattr(body, name) not in allowed:
            shown = " or ".join(json.dumps(v) for v in allowed)
            raise FieldError(name, f"is not supported by this model; leave it out (or send {shown})")
    if body.response_format not in (None, {"type": "text"}):
        raise FieldError("response_format", 'only {"type": "text"} is supported; this model answers in plain text')


def stop_sequences(stop: Any) -> list[str]:
    stops = [stop] if isinstance(stop, str) else [] if stop is None else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise FieldError("stop", "must be a string or a list of strings")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise FieldError("stop", f"holds {len(stops)} sequences; at most {MAX_STOP_SEQUENCES}")
    if any(not s or len(s) > MAX_STOP_CHARS for s in stops):
        raise FieldError("stop", f"sequences must be 1 to {MAX_STOP_CHARS} characters")
    return stops


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """The text before the first stop sequence in it, and whether there was one."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def shown_text(text: str, stops: list[str]) -> tuple[str, bool]:
    """What a stream may show of an unfinished answer: cut at a stop sequence (True), else without a tail that a
    later token may complete into one, and without a trailing half of a UTF-8 character."""
    text, stopped = cut_at_stop(text, stops)
    if stopped:
        return text, True
    hold = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return text[: len(text) - hold].rstrip("\ufffd"), False

"""The body of an error answer, in the shape of the API the request came through.

    native routes   {"error": "<field>: what is wrong", "field": "<field>"}, 422 for a bad field
    OpenAI routes   {"error": {"message", "type", "param", "code"}}, 400 for a bad field: what OpenAI answers,
                    so the official client raises BadRequestError with .param naming the field
"""

from __future__ import annotations

CHAT_PATH = "/v1/chat/completions"
OPENAI_PATHS = ("/v1/models", "/v1/images/generations", CHAT_PATH)
OPENAI_TYPES = {404: "invalid_request_error", 429: "rate_limit_error", 503: "server_error", 504: "timeout"}
OPENAI_CODES = {429: "rate_limit_exceeded", 504: "timeout"}


def is_openai(path: str) -> bool:
    return path in OPENAI_PATHS or path.startswith("/v1/models/")


def error_body(path: str, status: int, message: str, field: str | None = None,
               code: str | None = None) -> tuple[int, dict]:  # fmt: skip
    """(status, JSON body) of an error answer to a request for `path`."""
    if not is_openai(path):
        return status, {"error": message, "field": field}
    if status == 422:  # a field out of range or of the wrong type: OpenAI says 400
        status = 400
    kind = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return status, {"error": {"message": message, "type": kind, "param": field, "code": code or OPENAI_CODES.get(status)}}

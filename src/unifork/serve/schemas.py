"""Request and response bodies of the REST API, validated by pydantic (the OpenAPI schema is built from them).

Strict: "3" is not 3 and true is not 1, unknown fields are an error naming the field, NaN and infinities are
refused; a client mistake is a 422 that says which field, never a guess.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from unifork.inference.settings import DEFAULT_IMAGES, DEFAULTS, SamplingSettings
from unifork.serve.limits import (
    MAX_CFG,
    MAX_IMAGE_BYTES,
    MAX_IMAGES_PER_REQUEST,
    MAX_PROMPT_BYTES,
    MAX_QUESTION_BYTES,
    MAX_SEED,
    MAX_TEMPERATURE,
    MAX_TOP_K,
)

STRICT = ConfigDict(strict=True, extra="forbid")


def _sampling_field(name: str, **server_bounds: float):
    """A sampling setting as a request field: default, range and help from unifork.inference.settings, plus the
    server's own upper bound."""
    default = getattr(DEFAULTS, name)
    finite = {"allow_inf_nan": False} if isinstance(default, float) else {}
    bounds = {**SamplingSettings.bounds(name), **server_bounds}
    return Field(default, **bounds, **finite, description=SamplingSettings.help(name))


def _utf8_at_most(text: str, limit: int) -> str:
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    if len(text.encode("utf-8")) > limit:
        raise ValueError(f"must be at most {limit} bytes of UTF-8, got {len(text.encode('utf-8'))}")
    return text


class GenerateRequest(BaseModel):
    model_config = STRICT

    prompt: str = Field(description=f"caption to draw, at most {MAX_PROMPT_BYTES} bytes; \"\" samples unconditionally")
    n: int = Field(DEFAULT_IMAGES, ge=1, le=MAX_IMAGES_PER_REQUEST, description="number of images")
    cfg: float = _sampling_field("cfg_scale", le=MAX_CFG)  # `cfg` in the API, cfg_scale in Python
    temperature: float = _sampling_field("temperature", le=MAX_TEMPERATURE)
    top_k: int = _sampling_field("top_k", le=MAX_TOP_K)
    top_p: float = _sampling_field("top_p")
    speculative: int = _sampling_field("speculative")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="same request and seed, same images; omitted: random")

    @field_validator("prompt")
    @classmethod
    def _prompt_bytes(cls, prompt: str) -> str:
        return _utf8_at_most(prompt, MAX_PROMPT_BYTES)


class GenerateResponse(BaseModel):
    images: list[str] = Field(description="PNG files, base64-encoded")
    seed: int = Field(description="the seed used: send it back to get the same images")
    width: int
    height: int


class AskJSON(BaseModel):
    """The JSON form of POST /v1/ask; the multipart form has the same fields with `image` as a file."""

    model_config = STRICT

    image_base64: str = Field(
        max_length=(MAX_IMAGE_BYTES * 4) // 3 + 100,  # 100: room for a data: URL prefix and line breaks
        description="an image file (PNG, JPEG, ... any mode) as base64, optionally as a data: URL",
    )
    question: str = Field(description=f"at most {MAX_QUESTION_BYTES} bytes")

    @field_validator("question")
    @classmethod
    def _question_bytes(cls, question: str) -> str:
        return check_question_text(question)


def check_question_text(question: str) -> str:
    if not question.strip():
        raise ValueError("must not be empty")
    return _utf8_at_most(question, MAX_QUESTION_BYTES)


class AskResponse(BaseModel):
    answer: str


class ErrorResponse(BaseModel):
    error: str = Field(description="what is wrong and how to fix it")
    field: str | None = Field(None, description="the request field at fault, when one is")


class MaxBatch(BaseModel):
    model_config = STRICT

    max_batch: int = Field(ge=1, description="requests per batch; 1 serves them one at a time")

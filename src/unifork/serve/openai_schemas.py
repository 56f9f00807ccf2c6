"""Request bodies of the OpenAI-compatible routes, validated by pydantic as strictly as the native ones.

The fields are OpenAI's, with their defaults (n = 1 image, temperature 1), plus our sampling settings as extra
fields (the official client sends them with `extra_body=`). Fields OpenAI has and this server cannot honour are
refused by name rather than ignored, so a harness never reports a setting that did not apply.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field

from unifork.serve.limits import MAX_IMAGES_PER_REQUEST, MAX_SEED, MAX_TOP_K
from unifork.serve.schemas import STRICT, GenerateRequest

MAX_CHOICES = 8  # answers per chat request
MAX_STOP_SEQUENCES = 4  # OpenAI's limit
MAX_TOKENS_FIELD = 1 << 31  # max_tokens is a cap: an answer also ends at EOS or at the model's context


class ImagesRequest(GenerateRequest):
    """POST /v1/images/generations: OpenAI's fields beside the native /v1/generate's sampling fields."""

    model: str | None = Field(None, description="the served model's id (GET /v1/models); omitted: that model")
    n: int = Field(1, ge=1, le=MAX_IMAGES_PER_REQUEST, description="number of images")
    size: str | None = Field(None, description="'WxH' of the model's images, or 'auto'; any other size is refused")
    response_format: str | None = Field(None, description="b64_json (the only one: there is no file host)")
    output_format: str | None = Field(None, description="png (the only one)")
    user: str | None = Field(None, description="accepted and not used")


class StreamOptions(BaseModel):
    model_config = STRICT

    include_usage: bool = False


class ChatRequest(BaseModel):
    """POST /v1/chat/completions: one question about one image (chat.read_messages). OpenAI lets a client send null
    for most settings (the official client does, for an argument given as None): null means the default."""

    model_config = STRICT

    model: str = Field(description="the served model's id (GET /v1/models)")
    messages: list[Any] = Field(min_length=1, description="optional system messages and one user message with a "
                                "data: URL image and text")  # fmt: skip
    temperature: Annotated[float, Field(ge=0, le=2, allow_inf_nan=False)] | None = Field(
        None, description="0 = greedy; null or omitted: 1, OpenAI's default")
    top_p: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = None
    top_k: Annotated[int, Field(ge=0, le=MAX_TOP_K)] | None = Field(None, description="extra field: keep the k most likely tokens (0 = off)")
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] | None = Field(None, description="answers to draw (default 1)")
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_FIELD)] | None = Field(None, description="most tokens per answer")
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_FIELD)] | None = Field(None, description="the same, newer name")
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = Field(None, description="same request and seed, same answers; omitted: random")
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: Any = Field(None, description=f"a string or up to {MAX_STOP_SEQUENCES}: the answer ends before the first")
    user: str | None = Field(None, description="accepted and not used")
    # OpenAI fields this model cannot honour: accepted at their neutral value only (chat.check_unsupported)
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logprobs: bool | None = None
    response_format: Any = None
    tools: Any = None
    tool_choice: Any = None

    @property
    def choices(self) -> int:
        return 1 if self.n is None else self.n

"""The REST API (FastAPI) over the engine: routes, and one JSON error shape for everything a client gets wrong.

    POST /v1/generate   prompt + sampling settings -> base64 PNGs and the seed used
    POST /v1/ask        image (multipart upload or base64 JSON) + question -> answer
    GET  /v1/health     liveness, queue depth, counters
    GET  /v1/info       model config, fork point, loaded branches, limits
    OpenAI-compatible: GET /v1/models, POST /v1/images/generations, POST /v1/chat/completions (openai_api.py)
    PUT  /v1/admin/max-batch   only with --admin, only from loopback: switch batching for a load-test baseline

Errors are {"error": "...", "field": "..."} (OpenAI's shape on its routes: error_shapes.py): 4xx for anything the client sent, 429 + Retry-After for a full
queue, 504 past the per-request timeout. A 500 means a bug in the server, never bad input.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

import unifork.serve.limits as limits
from unifork.errors import UserError
from unifork.serve.body_limit import BodyLimit
from unifork.serve.engine import Engine
from unifork.serve.error_shapes import error_body
from unifork.serve.errors import (
    ClientGone,
    EngineStopped,
    FieldError,
    QueueFull,
    RequestTimeout,
)
from unifork.serve.images import decode_base64_image, decode_image, png_base64
from unifork.serve.openai_api import add_openai_routes
from unifork.serve.runner import AskWork, GenerateWork, ModelRunner
from unifork.serve.schemas import (
    AskJSON,
    AskResponse,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    MaxBatch,
    check_question_text,
)

LOOPBACK_CLIENTS = {"127.0.0.1", "::1", "localhost"}
ERRORS = {status: {"model": ErrorResponse} for status in (400, 413, 415, 422, 429, 503, 504)}
ASK_BODY = {  # /v1/ask reads its body itself, to take JSON or a multipart upload on one path
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": AskJSON.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "question"],
                    "properties": {
                        "image": {"type": "string", "format": "binary", "description": "an image file, any mode"},
                        "question": {"type": "string", "description": f"at most {limits.MAX_QUESTION_BYTES} bytes"},
                    },
                }
            },
        },
    }
}


def build_api(engine: Engine, runner: ModelRunner, info: dict[str, Any], admin: bool = False, **fastapi_kwargs) -> FastAPI:
    """The API app, native and OpenAI-compatible routes; `info` is merged into GET /v1/info (checkpoint path,
    alignment plot, ...) and names the model the OpenAI routes serve (`model_id`, `created`)."""
    app = FastAPI(title="UniFork", version="1", description=__doc__, **fastapi_kwargs)
    app.add_middleware(BodyLimit, max_bytes=limits.MAX_BODY_BYTES)
    _add_error_handlers(app)
    add_openai_routes(app, engine, runner, info["model_id"], info.get("created", 0))

    @app.get("/", include_in_schema=False)
    async def root():
        return RedirectResponse("/ui/" if info.get("ui") else "/docs")

    @app.get("/v1/health")
    async def health() -> dict:
        return {"status": "ok", "queued": engine.queued(), "max_batch": engine.max_batch,
                "max_queue": engine.max_queue, "stats": asdict(engine.stats)}  # fmt: skip

    @app.get("/v1/info")
    async def get_info() -> dict:
        engine_settings = {"max_batch": engine.max_batch, "max_queue": engine.max_queue, "timeout_s": engine.timeout}
        static = {k: v for k, v in vars(limits).items() if k.startswith("MAX_")}
        return {**runner.info(), **info, "engine": engine_settings, "limits": static}

    @app.post("/v1/generate", response_model=GenerateResponse, responses=ERRORS)
    async def generate(body: GenerateRequest, request: Request) -> JSONResponse:
        runner.require("gen")
        runner.check_prompt(body.prompt)
        work = GenerateWork.from_request(body)
        job = await engine.run("generate", work, images=body.n, disconnected=request.is_disconnected)
        images = job.future.result()
        encoded = await run_in_threadpool(lambda: [png_base64(image) for image in images])
        w, h = images[0].size
        result = GenerateResponse(images=encoded, seed=work.seed, width=w, height=h)
        return JSONResponse(result.model_dump(), headers={"X-Batch-Size": str(job.batch_size)})

    @app.post("/v1/ask", response_model=AskResponse, responses=ERRORS, openapi_extra=ASK_BODY)
    async def ask(request: Request) -> JSONResponse:
        runner.require("und")
        image, question = await _read_ask(request)
        runner.check_question(question)
        job = await engine.run("ask", AskWork(image, question), disconnected=request.is_disconnected)
        answer = AskResponse(answer=job.future.result()[0].text)
        return JSONResponse(answer.model_dump(), headers={"X-Batch-Size": str(job.batch_size)})

    if admin:

        @app.put("/v1/admin/max-batch", responses=ERRORS)
        async def set_max_batch(body: MaxBatch, request: Request) -> dict:
            if request.client is None or request.client.host not in LOOPBACK_CLIENTS:
                raise HTTPException(403, "admin routes answer loopback clients only")
            if body.max_batch > engine.max_images:
                raise FieldError("max_batch", f"must be at most {engine.max_images}")
            previous = engine.max_batch
            engine.set_max_batch(body.max_batch)
            return {"max_batch": body.max_batch, "previous": previous}

    return app


async def _read_ask(request: Request):
    """(RGB image, question) from a multipart upload or a JSON body with base64."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=1, max_fields=2)
        except HTTPException:
            raise  # the body limit's 413
        except Exception:  # noqa: BLE001 - the multipart parser raises several types on a malformed body
            raise FieldError("body", "is not a valid multipart form with fields 'image' and 'question'") from None
        for name in form:
            if name not in ("image", "question"):
                raise FieldError(name, "is not a field of /v1/ask (fields: image, question)")
        upload, question = form.get("image"), form.get("question")
        if not isinstance(upload, UploadFile):
            raise FieldError("image", "is required, as a file upload")
        if not isinstance(question, str):
            raise FieldError("question", "is required, as a text field")
        try:
            check_question_text(question)
        except ValueError as err:
            raise FieldError("question", str(err)) from None
        data = await upload.read(limits.MAX_IMAGE_BYTES + 1)
        return await run_in_threadpool(decode_image, data, "image"), question
    if content_type.startswith("application/json") or not content_type:
        try:
            body = AskJSON.model_validate_json(await request.body())
        except ValidationError as err:
            raise RequestValidationError(err.errors()) from None
        return await run_in_threadpool(decode_base64_image, body.image_base64, "image_base64"), body.question
    raise FieldError("content-type", f"must be application/json or multipart/form-data, got '{content_type}'", status=415)


def _error(request: Request, status: int, message: str, field: str | None = None, headers: dict | None = None,
           code: str | None = None) -> JSONResponse:  # fmt: skip
    status, body = error_body(request.url.path, status, message, field, code)
    return JSONResponse(body, status_code=status, headers=headers)


def _field_of(loc: tuple) -> str:
    """("body", "messages", 0, "role") -> "messages[0].role"; a body that is not an object at all -> "body"."""
    field = ""
    for part in loc:
        if part == "body" and not field:
            continue
        field += f"[{part}]" if isinstance(part, int) else f".{part}" if field else str(part)
    return field or "body"


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        first = err.errors()[0]
        field = _field_of(tuple(first.get("loc", ())))
        message = first.get("msg", "invalid value")
        if first.get("type") == "json_invalid":
            field, message = "body", "is not valid JSON"
        return _error(request, 422, f"{field}: {message}", field)

    @app.exception_handler(FieldError)
    async def bad_field(request: Request, err: FieldError):
        return _error(request, err.status, str(err), err.field, code=err.code)

    @app.exception_handler(UserError)
    async def user_error(request: Request, err: UserError):
        return _error(request, 400, str(err))

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, err: QueueFull):
        return _error(request, 429, str(err), headers={"Retry-After": str(err.retry_after)})

    @app.exception_handler(RequestTimeout)
    async def timeout(request: Request, err: RequestTimeout):
        return _error(request, 504, str(err))

    @app.exception_handler(ClientGone)
    async def gone(request: Request, err: ClientGone):
        return _error(request, 499, str(err))  # nobody reads it; it keeps the access log honest

    @app.exception_handler(EngineStopped)
    async def stopped(request: Request, err: EngineStopped):
        return _error(request, 503, str(err), headers={"Retry-After": "5"})

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        return _error(request, err.status_code, str(err.detail), headers=err.headers)

    @app.exception_handler(Exception)
    async def bug(request: Request, err: Exception):  # a server bug, never the client's input: the same shape, then the log
        return _error(request, 500, f"internal error ({type(err).__name__}); the server log has the traceback")

"""OpenAI-compatible routes on the same engine as the native API: what the `openai` client and the harnesses built on
it (lmms-eval, VLMEvalKit) call.

    GET  /v1/models, /v1/models/{id}   the served checkpoint as one model, with its loaded tasks
    POST /v1/images/generations        prompt -> base64 PNGs (b64_json), our sampling settings as extra fields
    POST /v1/chat/completions          one question about one image (a data: URL) -> answers; stream: true sends
                                       server-sent events as the tokens are drawn

Requests queue and batch with the native ones (the same kinds of engine work), under the same limits and
timeouts. Errors have OpenAI's shape (serve/error_shapes.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from unifork.serve.chat import check_unsupported, cut_at_stop, read_messages, shown_text, stop_sequences
from unifork.serve.engine import Engine
from unifork.errors import UserError
from unifork.serve.error_shapes import CHAT_PATH, error_body
from unifork.serve.errors import EngineStopped, FieldError, RequestTimeout
from unifork.serve.images import decode_base64_image, png_base64
from unifork.serve.limits import MAX_SEED
from unifork.serve.openai_schemas import ChatRequest, ImagesRequest
from unifork.serve.runner import AskWork, GenerateWork, ModelRunner


def served_name(ckpt: str | Path) -> str:
    """The model id a checkpoint is served as: its directory's name (the run's name for RUN/checkpoint)."""
    path = Path(ckpt).resolve()
    return path.parent.name if path.name == "checkpoint" and path.parent.name else path.name


def add_openai_routes(app: FastAPI, engine: Engine, runner: ModelRunner, model_id: str, created: int) -> None:
    size = runner.pipe.image_tokenizer.cfg.image_size
    card = {"id": model_id, "object": "model", "created": created, "owned_by": "unifork",
            "tasks": list(runner.tasks), "sharing": runner.pipe.model.cfg.plan, "image_size": f"{size}x{size}"}  # fmt: skip

    def check_model(name: str | None) -> None:
        if name is not None and name != model_id:
            raise FieldError("model", f"'{name}' is not served here; this server serves '{model_id}' (GET /v1/models)",
                             status=404, code="model_not_found")  # fmt: skip

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str) -> dict:
        check_model(name)
        return card

    @app.post("/v1/images/generations")
    async def images(body: ImagesRequest, request: Request) -> JSONResponse:
        check_model(body.model)
        if body.size not in (None, "auto", f"{size}x{size}"):
            raise FieldError("size", f"must be '{size}x{size}' (this model's image size) or 'auto', got '{body.size}'")
        if body.response_format not in (None, "b64_json"):
            raise FieldError("response_format", f"must be 'b64_json', got '{body.response_format}': this server keeps no "
                                                "files to link to")  # fmt: skip
        if body.output_format not in (None, "png"):
            raise FieldError("output_format", f"must be 'png', got '{body.output_format}'")
        runner.require("gen")
        runner.check_prompt(body.prompt)
        work = GenerateWork.from_request(body)
        job = await engine.run("generate", work, images=body.n, disconnected=request.is_disconnected)
        encoded = await run_in_threadpool(lambda: [png_base64(image) for image in job.future.result()])
        result = {"created": int(time.time()), "data": [{"b64_json": b} for b in encoded], "output_format": "png",
                  "size": f"{size}x{size}", "seed": work.seed}  # fmt: skip
        return JSONResponse(result, headers={"X-Batch-Size": str(job.batch_size)})

    @app.post(CHAT_PATH)
    async def chat(body: ChatRequest, request: Request):
        check_model(body.model)
        check_unsupported(body)
        stops = stop_sequences(body.stop)
        asked = read_messages(body.messages)
        runner.require("und")
        runner.check_question(asked.question, field=asked.content_field)
        image = await run_in_threadpool(decode_base64_image, asked.image_url, asked.image_field)
        seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED + 1)
        budget = body.max_completion_tokens or body.max_tokens or runner.pipe.model.cfg.max_seq_len
        settings = dict(n=body.choices, max_new_tokens=budget, top_k=body.top_k or 0, seed=seed,
                        temperature=1.0 if body.temperature is None else body.temperature,
                        top_p=1.0 if body.top_p is None else body.top_p)  # fmt: skip
        reply = Reply(model_id, seed, stops, body.choices)
        work = AskWork(image, asked.question, **settings)
        if not body.stream:
            job = await engine.run("ask", work, images=work.n, disconnected=request.is_disconnected)
            return JSONResponse(reply.completion(job.future.result()), headers={"X-Batch-Size": str(job.batch_size)})
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return await _stream(engine, request, work, reply, include_usage, runner)


class Reply:
    """The chat completion objects of one request: the whole answer, or a stream's chunks."""

    def __init__(self, model_id: str, seed: int, stops: list[str], n: int):
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        self.model_id, self.seed, self.stops, self.n = model_id, seed, stops, n

    def final(self, answer) -> tuple[str, str]:
        """(the text a client gets, finish_reason) of a finished answer."""
        text, stopped = cut_at_stop(answer.text, self.stops)
        return text, "stop" if stopped or answer.stopped else "length"

    def usage(self, answers) -> dict:
        completion = sum(len(a.tokens) for a in answers)
        prompt = answers[0].prompt_tokens
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def completion(self, answers) -> dict:
        choices = []
        for index, answer in enumerate(answers):
            text, reason = self.final(answer)
            choices.append({"index": index, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                            "logprobs": None})  # fmt: skip
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model_id,
                "choices": choices, "usage": self.usage(answers), "seed": self.seed}  # fmt: skip

    def chunk(self, choices: list[dict], usage: dict | None = None, with_usage: bool = False) -> str:
        """One server-sent event; with_usage adds the usage key (null until the last chunk), as OpenAI does."""
        body: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                "model": self.model_id, "choices": choices}  # fmt: skip
        if with_usage:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    @staticmethod
    def delta(index: int, content: str | None = None, role: bool = False, finish: str | None = None) -> dict:
        delta = {"role": "assistant"} if role else {}
        if content is not None:
            delta["content"] = content
        return {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}


DIVERGED = UserError("the answer changed when its batch was rerun after another request in it failed; send the request again")


def _error_event(err: Exception) -> str:
    """An error after the stream began, as OpenAI's error object in an event; a server bug says only its type."""
    if isinstance(err, (UserError, RequestTimeout, EngineStopped)):
        status = 504 if isinstance(err, RequestTimeout) else 503 if isinstance(err, EngineStopped) else 400
        message = str(err)
    else:
        traceback.print_exception(err)  # the server log has it; the client gets no internals
        status, message = 500, f"internal error ({type(err).__name__}); the server log has the traceback"
    return f"data: {json.dumps(error_body(CHAT_PATH, status, message)[1])}\n\n"


async def _stream(engine: Engine, request: Request, work: AskWork, reply: Reply, include_usage: bool,
                  runner: ModelRunner) -> StreamingResponse:  # fmt: skip
    """Answer as server-sent events while the worker draws the tokens.

    The response starts once the first token is drawn, so an error before then (queue full, timeout, a bad
    image) is an ordinary error answer with its status; one after it is an `error` event, then the stream ends.
    """
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    finished = object()

    def on_token(index: int, position: int, token: int) -> None:  # in the worker thread; must not raise
        try:
            loop.call_soon_threadsafe(events.put_nowait, (index, position, token))
        except RuntimeError:  # the event loop has closed: the server is stopping, nobody reads the stream
            pass

    work = dataclasses.replace(work, on_token=on_token)
    running = asyncio.ensure_future(engine.run("ask", work, images=work.n, disconnected=request.is_disconnected))
    running.add_done_callback(lambda _: events.put_nowait(finished))
    first = await events.get()
    if first is finished:
        running.result()  # raises the request's error, answered with its status
    decode = runner.pipe.text_tokenizer.decode

    async def body():
        tokens = [[] for _ in range(reply.n)]
        sent = [""] * reply.n
        done = [False] * reply.n
        try:
            for index in range(reply.n):
                yield reply.chunk([reply.delta(index, "", role=True)], with_usage=include_usage)
            event = first
            while event is not finished:
                index, position, token = event
                if position < len(tokens[index]):  # a failed batch is rerun request by request: its tokens again
                    if tokens[index][position] != token:
                        yield _error_event(DIVERGED)
                        return
                elif not done[index]:
                    tokens[index].append(token)
                    text, done[index] = shown_text(decode(tokens[index]), reply.stops)
                    if len(text) > len(sent[index]):
                        yield reply.chunk([reply.delta(index, text[len(sent[index]):])], with_usage=include_usage)
                        sent[index] = text
                event = await events.get()
            try:
                answers = running.result().future.result()
            except Exception as err:  # noqa: BLE001 - past the first byte an error can only be an event
                yield _error_event(err)
                return
            finals = [reply.final(answer) for answer in answers]
            if not all(text.startswith(shown) for (text, _), shown in zip(finals, sent)):
                yield _error_event(DIVERGED)
                return
            for index, (text, reason) in enumerate(finals):
                tail = text[len(sent[index]) :]
                yield reply.chunk([reply.delta(index, tail or None, finish=reason)], with_usage=include_usage)
            if include_usage:
                yield reply.chunk([], usage=reply.usage(answers), with_usage=True)
            yield "data: [DONE]\n\n"
        finally:
            if not running.done():
                running.cancel()

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

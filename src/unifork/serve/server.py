"""`unifork serve`: one process with the REST API at /v1, the web demo at /ui and one engine under both."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
from pathlib import Path

from fastapi import FastAPI

from unifork.errors import UserError, param
from unifork.inference.pipeline import Pipeline
from unifork.serve.api import build_api
from unifork.serve.engine import Engine
from unifork.serve.limits import MAX_IMAGE_BYTES
from unifork.serve.openai_api import served_name
from unifork.serve.runner import ModelRunner

TASKS = {"both": None, "gen": "gen", "und": "und"}


def find_alignment_plot(ckpt: str | Path) -> Path | None:
    """alignment.png in the checkpoint directory or its parent (quickstart writes it beside checkpoint/)."""
    ckpt = Path(ckpt).resolve()
    return next((p for p in (ckpt / "alignment.png", ckpt.parent / "alignment.png") if p.is_file()), None)


def build_app(ckpt: str | Path, task: str = "both", max_batch: int = 16, queue: int = 64, timeout: float = 60.0,
              device: str = "cpu", admin: bool = False, ui: bool = True, served_model_name: str | None = None) -> FastAPI:  # fmt: skip
    """The whole server as an ASGI app; the engine's worker starts and stops with the app's lifespan."""
    if task not in TASKS:
        raise UserError(f"{param('task')} must be one of {', '.join(TASKS)}, got '{task}'")
    if served_model_name is not None and not re.fullmatch(r"[\w.:/@+-]{1,200}", served_model_name):
        raise UserError(f"{param('served_model_name')} must be 1 to 200 letters, digits or . _ - : / @ +, got "
                        f"'{served_model_name}'")  # fmt: skip
    pipe = Pipeline.from_pretrained(ckpt, task=TASKS[task], device=device)
    runner = ModelRunner(pipe)
    try:
        engine = Engine(runner.run_batch, max_batch=max_batch, max_queue=queue, timeout=timeout)
    except ValueError as err:
        raise UserError(str(err)) from None
    plot = find_alignment_plot(ckpt)

    @contextlib.asynccontextmanager
    async def lifespan(_):
        engine.start()
        yield
        engine.stop()

    info = {"checkpoint": str(ckpt), "alignment_plot": None if plot is None else str(plot), "ui": ui,
            "model_id": served_model_name or served_name(ckpt), "created": int(Path(ckpt).stat().st_mtime)}  # fmt: skip
    app = build_api(engine, runner, info, admin=admin, lifespan=lifespan)
    app.state.engine = engine
    if ui:
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no calls home
        import gradio as gr

        from unifork.serve.ui import THEME, build_ui

        demo = build_ui(engine, runner, plot, str(ckpt)).queue(max_size=queue, default_concurrency_limit=None)
        # no allowed_paths: the plot is copied into Gradio's cache, so nothing beside the checkpoint is served
        app = gr.mount_gradio_app(app, demo, path="/ui", theme=THEME, max_file_size=MAX_IMAGE_BYTES, footer_links=["api"])
    return app


def serve(ckpt: str | Path, host: str = "127.0.0.1", port: int = 7860, task: str = "both", max_batch: int = 16,
          queue: int = 64, timeout: float = 60.0, device: str = "cpu", admin: bool = False, ui: bool = True,
          served_model_name: str | None = None) -> None:  # fmt: skip
    import uvicorn

    if not _is_loopback(host):
        print(f"warning: serving on {host}, reachable from other machines; the API has no authentication")
    app = build_app(ckpt, task, max_batch, queue, timeout, device, admin, ui, served_model_name)
    print(f"serving {ckpt} on http://{host}:{port}  (API docs /docs, web demo /ui)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

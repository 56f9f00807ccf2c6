"""Serving: a REST API and a web demo in one process, on one batching inference engine.

    server.py      `unifork serve`: builds the app (API at /v1, Gradio demo at /ui) and runs it under uvicorn
    api.py         the REST routes and their JSON errors        ui.py        the Gradio tabs
    engine.py      bounded queue, batching, timeouts, cancellation, the one worker thread
    runner.py      what the worker runs on the model (inference.sampler.sample_codes_per_request: per-request seeds)
    schemas.py, limits.py, images.py, body_limit.py, errors.py   request validation and its bounds
    loadtest.py    `unifork loadtest`: latency, throughput and the batching speedup
"""

from unifork.serve.loadtest import loadtest
from unifork.serve.server import build_app, serve

__all__ = ["build_app", "loadtest", "serve"]

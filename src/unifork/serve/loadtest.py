"""`unifork loadtest`: fixed load against a running server on this machine; latency, throughput, and what batching buys.

With sequential_baseline the same requests (same prompts, same seeds) run twice against the same warm server:
once as it is configured, once with its max batch set to 1 through the admin route (`unifork serve --admin`),
then the setting is restored. Both runs see the same concurrency, so the ratio of their images/s is what
batching alone is worth on this machine.
"""

from __future__ import annotations

import asyncio
import base64
import io
import ipaddress
import json
import statistics
import time
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image, ImageDraw

from unifork.atomic import atomic_write_text
from unifork.errors import UserError, param
from unifork.inference.settings import DEFAULT_ANSWER_TOKENS

MAX_CONCURRENCY = 256
MAX_REQUESTS = 10_000
MAX_TIME_LIMIT_S = 3600
PROMPTS = ["two red circles", "a blue square to the left of a green triangle", "a small yellow cross",
           "three large purple circles", "an orange square above a red circle", "a green triangle"]  # fmt: skip
QUESTIONS = ["what color is the circle?", "how many shapes are there?", "is there a square?", "what shape is red?"]


ROUTES = {("native", "generate"): "/v1/generate", ("native", "ask"): "/v1/ask",
          ("openai", "generate"): "/v1/images/generations", ("openai", "ask"): "/v1/chat/completions"}  # fmt: skip


def loadtest(url: str, concurrency: int = 16, requests: int = 200, kind: str = "generate", n: int = 1,
             sequential_baseline: bool = False, time_limit: float = 600.0, warmup: int = 2, api: str = "native") -> dict:  # fmt: skip
    """Run the load (twice with sequential_baseline) and return the figures; each run stops at time_limit.

    api="openai" sends the same requests through the OpenAI-compatible routes (greedy chat answers of at most
    DEFAULT_ANSWER_TOKENS tokens, as /v1/ask gives), so the two routes' figures compare the same work."""
    url = check_url(url)
    checks = [
        (1 <= concurrency <= MAX_CONCURRENCY, "concurrency", f"must be between 1 and {MAX_CONCURRENCY}, got {concurrency}"),
        (1 <= requests <= MAX_REQUESTS, "requests", f"must be between 1 and {MAX_REQUESTS}, got {requests}"),
        (0 < time_limit <= MAX_TIME_LIMIT_S, "time_limit", f"must be in (0, {MAX_TIME_LIMIT_S}] seconds, got {time_limit}"),
        (kind in ("generate", "ask"), "kind", f"must be generate or ask, got '{kind}'"),
        (1 <= n <= 16, "n", f"must be between 1 and 16, got {n}"),
        (api in ("native", "openai"), "api", f"must be native or openai, got '{api}'"),
    ]  # fmt: skip
    for ok, name, problem in checks:
        if not ok:
            raise UserError(f"{param(name)} {problem}")
    return asyncio.run(_loadtest(url, concurrency, requests, kind, n, sequential_baseline, time_limit, warmup, api))


def check_url(url: str) -> str:
    """The URL without a trailing slash, if it names this machine; a load test never leaves it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise UserError(f"{param('url')} must look like http://127.0.0.1:7860, got '{url}'")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise UserError(f"{param('url')} must be a loopback address (127.0.0.1, ::1, localhost), got '{host}': "
                        "a load test only runs against a server on this machine")  # fmt: skip
    return url.rstrip("/")


async def _loadtest(url, concurrency, requests, kind, n, sequential_baseline, time_limit, warmup, api) -> dict:
    import httpx

    timeout = httpx.Timeout(time_limit + 30)
    pool = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=pool) as client:
        info = await _server_info(client, url)
        needed = {"generate": "gen", "ask": "und"}[kind]
        if needed not in info["tasks"]:
            raise UserError(f"the server at {url} has no '{needed}' branch loaded (it has {', '.join(info['tasks'])})")
        bodies = _bodies(kind, requests, n, api, info.get("model_id"))
        route = ROUTES[api, kind]
        await _phase(client, route, bodies[:warmup], min(concurrency, warmup), time_limit)  # first forwards are slow
        result = {"url": url, "kind": kind, "api": api, "route": route, "concurrency": concurrency,
                  "requests": requests, "n": n, "max_batch": info["engine"]["max_batch"]}  # fmt: skip
        result["batched"] = await _phase(client, route, bodies, concurrency, time_limit)
        result["sequential"] = None
        if sequential_baseline:
            previous = await _set_max_batch(client, 1)
            try:
                result["sequential"] = await _phase(client, route, bodies, concurrency, time_limit)
            finally:
                await _set_max_batch(client, previous)
            rates = result["batched"]["items_per_s"], result["sequential"]["items_per_s"]
            result["batching_speedup"] = rates[0] / rates[1] if rates[1] > 0 else None
    return result


async def _server_info(client, url: str) -> dict:
    import httpx

    try:
        response = await client.get("/v1/info")
    except httpx.HTTPError as err:
        raise UserError(f"no unifork server answers at {url} ({type(err).__name__}); start one with `unifork serve`") from None
    if response.status_code != 200:
        raise UserError(f"{url}/v1/info answered {response.status_code}; is that a unifork server?")
    return response.json()


async def _set_max_batch(client, max_batch: int) -> int:
    response = await client.put("/v1/admin/max-batch", json={"max_batch": max_batch})
    if response.status_code in (404, 405):
        raise UserError(f"{param('sequential_baseline')} switches the server's batching off for its second run; "
                        "start the server with `unifork serve --admin`")  # fmt: skip
    if response.status_code != 200:
        raise UserError(f"setting the server's max batch failed: {response.status_code} {response.text}")
    return response.json()["previous"]


def _bodies(kind: str, requests: int, n: int, api: str = "native", model: str | None = None) -> list[dict]:
    """The same list every run: request i has prompt (or question) i mod len(PROMPTS) and seed i."""
    served = {"model": model} if api == "openai" else {}
    if kind == "generate":
        return [{**served, "prompt": PROMPTS[i % len(PROMPTS)], "n": n, "seed": i} for i in range(requests)]
    image = _test_image()
    if api == "native":
        return [{"image_base64": image, "question": QUESTIONS[i % len(QUESTIONS)]} for i in range(requests)]
    return [{**served, "temperature": 0, "max_tokens": DEFAULT_ANSWER_TOKENS, "messages": [{"role": "user", "content": [
        {"type": "text", "text": QUESTIONS[i % len(QUESTIONS)]},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}}]}]} for i in range(requests)]  # fmt: skip


def _test_image() -> str:
    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).ellipse((10, 10, 40, 40), fill=(220, 30, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


async def _phase(client, path: str, bodies: list[dict], concurrency: int, time_limit: float) -> dict:
    """`concurrency` clients send the bodies in order, each starting its next as soon as its last returns."""
    import httpx

    pending = iter(bodies)
    latencies, errors, items, batch_sizes = [], {}, 0, []
    start = time.monotonic()

    async def client_loop():
        nonlocal items
        for body in pending:
            if time.monotonic() - start > time_limit:
                return
            sent = time.monotonic()
            try:
                response = await client.post(path, json=body)
                status = str(response.status_code)
            except httpx.HTTPError as err:
                response, status = None, type(err).__name__
            if status != "200":
                errors[status] = errors.get(status, 0) + 1
                continue
            latencies.append(time.monotonic() - sent)
            answer = response.json()
            items += len(answer["images"]) if "images" in answer else len(answer["data"]) if "data" in answer else 1
            batch_sizes.append(int(response.headers.get("x-batch-size", "1")))

    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    wall = time.monotonic() - start
    ms = sorted(1000 * t for t in latencies)
    return {
        "sent": len(latencies) + sum(errors.values()),
        "ok": len(latencies),
        "errors": errors,
        "wall_s": round(wall, 3),
        "p50_ms": round(_percentile(ms, 50), 1) if ms else None,
        "p95_ms": round(_percentile(ms, 95), 1) if ms else None,
        "mean_ms": round(statistics.fmean(ms), 1) if ms else None,
        "items_per_s": round(items / wall, 3) if wall > 0 else 0.0,  # images/s for generate, answers/s for ask
        "mean_batch_size": round(statistics.fmean(batch_sizes), 2) if batch_sizes else None,
        "stopped_at_time_limit": len(latencies) + sum(errors.values()) < len(bodies),
    }


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    position = (len(sorted_values) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def summary_lines(result: dict) -> list[str]:
    unit = "images/s" if result["kind"] == "generate" else "answers/s"
    lines = [f"POST {result['route']} ({result['api']} API), concurrency {result['concurrency']}"]
    for name, label in (("batched", f"max batch {result['max_batch']}"), ("sequential", "max batch 1")):
        phase = result.get(name)
        if phase is None:
            continue
        errors = ", ".join(f"{k}: {v}" for k, v in phase["errors"].items()) or "none"
        cut = " (stopped at the time limit)" if phase["stopped_at_time_limit"] else ""
        lines.append(f"{name:<10} ({label}): {phase['ok']}/{phase['sent']} ok, errors {errors}; "
                     f"p50 {phase['p50_ms']} ms, p95 {phase['p95_ms']} ms; {phase['items_per_s']} {unit}; "
                     f"mean batch {phase['mean_batch_size']}{cut}")  # fmt: skip
    if result.get("batching_speedup") is not None:
        lines.append(f"batching speedup: {result['batching_speedup']:.2f}x {unit} at concurrency {result['concurrency']}")
    return lines


def write_json(result: dict, path: str | Path) -> None:
    atomic_write_text(Path(path), json.dumps(result, indent=2) + "\n")

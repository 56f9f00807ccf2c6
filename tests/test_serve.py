"""The server over real HTTP: a subprocess on a free loopback port with a tiny checkpoint, called as clients would."""

import base64
import io
import json
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from unifork.cli import main
from unifork.errors import UserError
from unifork.inference import Pipeline
from unifork.serve.loadtest import loadtest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class running_server:
    """`unifork serve` as a subprocess; `with running_server(ckpt, *flags) as url:` waits until it answers."""

    def __init__(self, ckpt, *flags, startup_s=90):
        self.port = free_port()
        self.args = [sys.executable, "-m", "unifork.cli", "serve", "--ckpt", str(ckpt), "--port", str(self.port), *flags]
        self.startup_s = startup_s

    def __enter__(self) -> str:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        self.process = subprocess.Popen(self.args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited at startup:\n{self.process.stdout.read()}")
            try:
                if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                    return url
            except httpx.HTTPError:
                time.sleep(0.2)
        self.__exit__()
        raise RuntimeError("the server did not answer within its startup time")

    def __exit__(self, *_):
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="module")
def url(ckpt):
    with running_server(ckpt, "--admin", "--max-batch", "8") as url:
        yield url


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def generate(url, **body):
    return httpx.post(f"{url}/v1/generate", json=body, timeout=60)


# --- the routes ----------------------------------------------------------------------------------------------------


def test_health_info_and_openapi(url):
    health = httpx.get(f"{url}/v1/health").json()
    assert health["status"] == "ok" and health["max_batch"] == 8 and "completed" in health["stats"]
    info = httpx.get(f"{url}/v1/info").json()
    assert info["tasks"] == ["und", "gen"] and info["sharing"] == "sstt" and info["n_layers"] == 4
    assert info["config"]["image_tokens"] == 16 and info["engine"]["max_queue"] == 64
    assert info["limits"]["MAX_IMAGES_PER_REQUEST"] == 16 and info["alignment_plot"] is None
    schema = httpx.get(f"{url}/openapi.json").json()
    assert {"/v1/generate", "/v1/ask", "/v1/health", "/v1/info"} <= set(schema["paths"])
    assert set(schema["paths"]["/v1/ask"]["post"]["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert httpx.get(f"{url}/ui/").status_code == 200


def test_generate_returns_pngs_and_the_seed(url):
    response = generate(url, prompt="two red circles", n=3, cfg=2.0, temperature=0.9, top_k=50, top_p=0.95, seed=11)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["seed"] == 11 and (body["width"], body["height"]) == (32, 32) and len(body["images"]) == 3
    assert all(pixels(b).shape == (32, 32, 3) for b in body["images"])
    # no seed: the server picks one and returns it; sending it back gives the same images
    first = generate(url, prompt="a blue square", n=2).json()
    again = generate(url, prompt="a blue square", n=2, seed=first["seed"]).json()
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(first["images"], again["images"]))


def test_ask_by_upload_and_by_base64_give_the_pipelines_answer(url, ckpt):
    image = Image.new("RGBA", (100, 37), (255, 0, 0, 128))  # odd size and mode: converted on the way in
    data = png_bytes(image)
    upload = httpx.post(f"{url}/v1/ask", files={"image": ("x.png", data, "image/png")},
                        data={"question": "what color is the circle?"}, timeout=60)  # fmt: skip
    as_json = httpx.post(f"{url}/v1/ask", json={"image_base64": base64.b64encode(data).decode(),
                                                "question": "what color is the circle?"}, timeout=60)  # fmt: skip
    data_url = "data:image/png;base64," + base64.b64encode(data).decode()
    as_data_url = httpx.post(f"{url}/v1/ask", json={"image_base64": data_url, "question": "what color is the circle?"})
    assert upload.status_code == as_json.status_code == as_data_url.status_code == 200, upload.text
    expected = Pipeline.from_pretrained(ckpt, task="und").ask(image, "what color is the circle?", max_new_tokens=32)
    assert upload.json()["answer"] == as_json.json()["answer"] == as_data_url.json()["answer"] == expected


def test_the_alignment_plot_beside_the_checkpoint_is_found_and_shown(ckpt, tmp_path):
    import shutil

    from fastapi.testclient import TestClient

    from unifork.serve import build_app

    shutil.copytree(ckpt, tmp_path / "checkpoint")
    Image.new("RGB", (60, 40), "white").save(tmp_path / "alignment.png")  # where quickstart writes it
    with TestClient(build_app(tmp_path / "checkpoint", task="gen")) as client:
        assert client.get("/v1/info").json()["alignment_plot"] == str((tmp_path / "alignment.png").resolve())
        assert "alignment-plot" in client.get("/ui/config").text


# --- bad input: 4xx naming the field, never a 500 ------------------------------------------------------------------


def _noise_png(size=64) -> bytes:
    rng = np.random.default_rng(0)
    return png_bytes(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))


def _png_claiming(width, height) -> bytes:
    """A valid 1x1 PNG whose header claims width x height: a decompression bomb's opening move."""
    data = bytearray(png_bytes(Image.new("RGB", (1, 1))))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _upload(image: bytes, question="what is it?"):
    return {"files": {"image": ("x.png", image, "image/png")}, "data": {"question": question}}


B64_PNG = base64.b64encode(png_bytes(Image.new("RGB", (8, 8)))).decode()
BAD_REQUESTS = {
    # name: (path, request kwargs, status, field)
    "n zero": ("generate", {"json": {"prompt": "a", "n": 0}}, 422, "n"),
    "n too many": ("generate", {"json": {"prompt": "a", "n": 17}}, 422, "n"),
    "n as a string": ("generate", {"json": {"prompt": "a", "n": "2"}}, 422, "n"),
    "cfg negative": ("generate", {"json": {"prompt": "a", "cfg": -1}}, 422, "cfg"),
    "cfg huge": ("generate", {"json": {"prompt": "a", "cfg": 1e9}}, 422, "cfg"),
    "temperature NaN": ("generate", {"content": '{"prompt": "a", "temperature": NaN}',
                                     "headers": {"content-type": "application/json"}}, 422, "temperature"),
    "top_p zero": ("generate", {"json": {"prompt": "a", "top_p": 0}}, 422, "top_p"),
    "top_p over one": ("generate", {"json": {"prompt": "a", "top_p": 1.5}}, 422, "top_p"),
    "top_k negative": ("generate", {"json": {"prompt": "a", "top_k": -1}}, 422, "top_k"),
    "speculative window too large": ("generate", {"json": {"prompt": "a", "speculative": 65}}, 422, "speculative"),
    "seed negative": ("generate", {"json": {"prompt": "a", "seed": -1}}, 422, "seed"),
    "seed beyond 2^53": ("generate", {"json": {"prompt": "a", "seed": 2**60}}, 422, "seed"),
    "prompt missing": ("generate", {"json": {"n": 1}}, 422, "prompt"),
    "prompt over the byte limit": ("generate", {"json": {"prompt": "é" * 600}}, 422, "prompt"),
    "prompt over the context": ("generate", {"json": {"prompt": "red circle " * 90}}, 422, "prompt"),
    "prompt with NUL": ("generate", {"json": {"prompt": "a\x00b"}}, 422, "prompt"),
    "unknown field": ("generate", {"json": {"prompt": "a", "steps": 5}}, 422, "steps"),
    "not JSON": ("generate", {"content": "{nope", "headers": {"content-type": "application/json"}}, 422, "body"),
    "JSON not an object": ("generate", {"json": [1, 2]}, 422, "body"),
    "not an image": ("ask", _upload(b"just some text"), 422, "image"),
    "truncated image": ("ask", _upload(_noise_png()[:2000]), 422, "image"),
    "bomb header": ("ask", _upload(_png_claiming(20000, 20000)), 413, "image"),
    "image too wide": ("ask", _upload(_png_claiming(9000, 2)), 413, "image"),
    "empty image": ("ask", _upload(b""), 422, "image"),
    "image missing": ("ask", {"data": {"question": "what?"}, "files": {"other": ("x", b"1")}}, 422, "other"),
    "empty question": ("ask", _upload(png_bytes(Image.new("RGB", (8, 8))), "   "), 422, "question"),
    "question over the byte limit": ("ask", {"json": {"image_base64": B64_PNG, "question": "why " * 200}}, 422, "question"),
    "bad base64": ("ask", {"json": {"image_base64": "!!notbase64", "question": "what?"}}, 422, "image_base64"),
    "base64 of text": ("ask", {"json": {"image_base64": base64.b64encode(b"hello").decode(), "question": "what?"}},
                       422, "image_base64"),
    "wrong content type": ("ask", {"content": "hi", "headers": {"content-type": "text/plain"}}, 415, "content-type"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_is_a_4xx_naming_the_field(url, case):
    path, kwargs, status, field = BAD_REQUESTS[case]
    response = httpx.post(f"{url}/v1/{path}", timeout=30, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field and field in body["error"]


def test_a_body_over_the_limit_is_413(url):
    response = httpx.post(f"{url}/v1/generate", content=b"x" * (17 * 1024 * 1024),
                          headers={"content-type": "application/json"}, timeout=30)  # fmt: skip
    assert response.status_code == 413 and "limit" in response.json()["error"]
    assert httpx.get(f"{url}/v1/health").json()["status"] == "ok"


# --- batching ------------------------------------------------------------------------------------------------------

REQUESTS = [
    {"prompt": "two red circles", "n": 2, "cfg": 3.0, "seed": 1},
    {"prompt": "a small blue square", "n": 1, "cfg": 1.0, "temperature": 0.7, "top_k": 20, "seed": 2},
    {"prompt": "", "n": 3, "cfg": 5.0, "top_p": 0.9, "seed": 3},
]


def test_same_request_and_seed_same_images_alone_or_batched(url):
    alone = []
    for body in REQUESTS:
        response = generate(url, **body)
        assert response.headers["x-batch-size"] == "1"
        alone.append(response.json()["images"])
    blocker = {"prompt": "a green triangle", "n": 16, "cfg": 3.0, "seed": 0}
    for _ in range(5):  # the blocker keeps the worker busy while the others queue up behind it, together
        with ThreadPoolExecutor(len(REQUESTS) + 1) as pool:
            pending = pool.submit(generate, url, **blocker)
            time.sleep(0.02)
            responses = list(pool.map(lambda body: generate(url, **body), REQUESTS))
            pending.result()
        if all(int(r.headers["x-batch-size"]) > 1 for r in responses):
            break
    assert all(int(r.headers["x-batch-size"]) > 1 for r in responses), "the requests were never batched together"
    for images_alone, response in zip(alone, responses):
        batched = response.json()["images"]
        assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(images_alone, batched))


def test_a_request_whose_client_left_is_never_computed(url):
    before = httpx.get(f"{url}/v1/health").json()["stats"]
    httpx.put(f"{url}/v1/admin/max-batch", json={"max_batch": 1}).raise_for_status()
    try:
        blocker = {"prompt": "a green triangle", "n": 16, "cfg": 3.0, "seed": 0}
        with ThreadPoolExecutor(10) as pool:
            blockers = [pool.submit(generate, url, **blocker) for _ in range(8)]  # about a second of work, one by one
            deadline = time.monotonic() + 10
            while httpx.get(f"{url}/v1/health").json()["queued"] < 6:  # "gone" must queue behind them
                assert time.monotonic() < deadline and not all(b.done() for b in blockers)
                time.sleep(0.01)
            with pytest.raises(httpx.TimeoutException):  # the client gives up and closes its connection
                httpx.post(f"{url}/v1/generate", json={"prompt": "gone", "n": 1}, timeout=0.1)
            assert all(b.result().status_code == 200 for b in blockers)
    finally:
        httpx.put(f"{url}/v1/admin/max-batch", json={"max_batch": 8}).raise_for_status()
    after = httpx.get(f"{url}/v1/health").json()["stats"]
    assert after["disconnected"] == before["disconnected"] + 1 and after["dropped"] == before["dropped"] + 1
    assert after["completed"] == before["completed"] + 8  # the blockers only


def test_full_queue_is_429_with_retry_after(ckpt):
    with running_server(ckpt, "--task", "gen", "--max-batch", "1", "--queue", "1", "--no-ui") as url:
        body = {"prompt": "two red circles", "n": 16, "cfg": 3.0, "seed": 0}
        with ThreadPoolExecutor(10) as pool:
            responses = list(pool.map(lambda _: httpx.post(f"{url}/v1/generate", json=body, timeout=60), range(10)))
        statuses = sorted(r.status_code for r in responses)
        assert statuses.count(200) >= 2 and statuses.count(429) >= 1 and set(statuses) == {200, 429}
        refused = next(r for r in responses if r.status_code == 429)
        assert int(refused.headers["retry-after"]) >= 1 and "queue is full" in refused.json()["error"]
        assert httpx.get(f"{url}/v1/health").json()["stats"]["rejected"] == statuses.count(429)
        # a gen-only server says which branch is missing, as a client error
        ask = httpx.post(f"{url}/v1/ask", json={"image_base64": B64_PNG, "question": "what?"})
        assert ask.status_code == 400 and "'und' branch is not loaded" in ask.json()["error"]


# --- the web demo's API and the load test ----------------------------------------------------------------------------


def test_gradio_client_generates_through_the_same_engine(url):
    from gradio_client import Client

    client = Client(f"{url}/ui/", verbose=False, download_files=True)
    try:
        gallery, seed = client.predict("two red circles", 2, 3.0, 1.0, 0, 1.0, 0, 7, api_name="/generate")
    finally:
        client.close()  # its heartbeat stream would hold the server's shutdown
    assert seed == 7 and len(gallery) == 2
    rest = generate(url, prompt="two red circles", n=2, cfg=3.0, seed=7).json()["images"]
    for item, b64 in zip(gallery, rest):  # the UI and the API share the engine: same seed, same pixels
        assert np.array_equal(np.asarray(Image.open(item["image"]).convert("RGB")), pixels(b64))


def test_loadtest_reports_latency_throughput_and_speedup(url, tmp_path, capsys):
    out = tmp_path / "load.json"
    assert main(["loadtest", "--url", url, "--concurrency", "4", "--requests", "8", "--sequential-baseline",
                 "--json", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "p50" in printed and "p95" in printed and "images/s" in printed and "batching speedup" in printed
    result = json.loads(out.read_text())
    for phase in ("batched", "sequential"):
        figures = result[phase]
        assert figures["ok"] == 8 and figures["errors"] == {}
        assert figures["p50_ms"] <= figures["p95_ms"] and figures["items_per_s"] > 0
    assert result["sequential"]["mean_batch_size"] == 1.0 and result["batching_speedup"] > 0
    assert httpx.get(f"{url}/v1/health").json()["max_batch"] == 8  # restored after the baseline
    asked = loadtest(url, concurrency=2, requests=2, kind="ask")
    assert asked["batched"]["ok"] == 2 and asked["sequential"] is None


@pytest.mark.parametrize("bad", ["http://10.1.2.3:7860", "http://example.com", "ftp://127.0.0.1:1"])
def test_loadtest_refuses_other_machines(bad):
    with pytest.raises(UserError, match="url must"):
        loadtest(bad, requests=1)

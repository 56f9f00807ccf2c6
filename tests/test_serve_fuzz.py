"""A bounded fuzz of the running API: random bodies never get a 500 and the server stays up."""

import json

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_serve import running_server

from unifork.serve.openai_api import served_name

FIELDS = ["prompt", "n", "cfg", "temperature", "top_k", "top_p", "seed", "image", "question", "extra",
          "model", "messages", "size", "response_format", "stream", "stop", "max_tokens", "stream_options"]  # fmt: skip
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
)  # fmt: skip
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)
# Mostly-valid generate bodies reach the model, so a crash past validation shows up too.
NEAR_VALID = st.fixed_dictionaries(
    {"prompt": st.text(max_size=60)},
    optional={"n": st.integers(-2, 20), "cfg": st.floats(allow_nan=True, allow_infinity=True),
              "temperature": st.floats(-1, 3), "top_k": st.integers(-5, 1000), "top_p": st.floats(-0.5, 1.5),
              "seed": st.integers(-5, 2**64)},
)  # fmt: skip
PNG_URL = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGNgYGAAAAAEAAH2FzhVAAAAAElFTkSuQmCC"
PART = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(st.text(max_size=30), VALUES)}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.one_of(VALUES, st.fixed_dictionaries(
        {"url": st.sampled_from([PNG_URL, PNG_URL[:40], "data:image/png;base64,", "https://example.com/a.png"])}))}),
    VALUES,
)  # fmt: skip
MESSAGE = st.fixed_dictionaries({"role": st.one_of(st.sampled_from(["user", "system", "assistant", "tool"]), VALUES),
                                 "content": st.one_of(st.text(max_size=20), st.lists(PART, max_size=3), VALUES)})  # fmt: skip
ASKING = st.tuples(st.text(min_size=1, max_size=30), st.sampled_from([PNG_URL, PNG_URL, PNG_URL[:40]])).map(lambda t: [{"role": "user", "content": [
    {"type": "text", "text": t[0]}, {"type": "image_url", "image_url": {"url": t[1]}}]}])  # fmt: skip
# Mostly-valid chat bodies: some reach the model, streamed or not.
NEAR_VALID_CHAT = st.fixed_dictionaries(
    {"model": st.sampled_from(["MODEL", "MODEL", "gpt-4o"]), "messages": st.one_of(ASKING, st.lists(MESSAGE, max_size=3))},
    optional={"n": st.integers(0, 9), "temperature": st.floats(-0.1, 2.1), "max_tokens": st.integers(0, 20),
              "stream": st.booleans(), "stop": st.one_of(st.text(max_size=3), VALUES), "seed": st.integers(-1, 2**54)},
)  # fmt: skip
BODIES = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=6).map(lambda d: json.dumps(d, allow_nan=True).encode()),
    NEAR_VALID.map(lambda d: json.dumps(d, allow_nan=True).encode()),
    NEAR_VALID_CHAT.map(lambda d: json.dumps(d, allow_nan=True).encode()),
    st.binary(max_size=200),  # not JSON at all
)
PATHS = ["/v1/generate", "/v1/ask", "/v1/images/generations", "/v1/chat/completions"]
seen_statuses: list[int] = []


def test_random_bodies_never_get_a_500_and_the_server_stays_up(ckpt):
    model = served_name(ckpt)
    with running_server(ckpt, "--max-batch", "8") as url, httpx.Client(base_url=url, timeout=60) as client:

        @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(path=st.sampled_from(PATHS), body=BODIES)
        def post_random_body(path, body):
            body = body.replace(b'"MODEL"', json.dumps(model).encode())
            response = client.post(path, content=body, headers={"content-type": "application/json"})
            seen_statuses.append(response.status_code)
            assert response.status_code < 500, (path, body[:200], response.text[:300])
            if response.status_code >= 400:
                assert "error" in response.json()  # a JSON error naming the problem, not an HTML page

        post_random_body()
        assert client.get("/v1/health").status_code == 200
    assert len(seen_statuses) >= 200 and any(400 <= s < 500 for s in seen_statuses) and 200 in seen_statuses

"""The OpenAI-compatible routes, called with the official `openai` client against a server on a loopback port."""

import base64
import io

import httpx
import numpy as np
import openai
import pytest
from PIL import Image
from test_serve import running_server

from unifork.inference import Pipeline
from unifork.serve.chat import shown_text
from unifork.serve.openai_api import served_name

MODEL = "unifork-tiny"
QUESTION = "what color is the circle?"


@pytest.fixture(scope="module")
def url(ckpt):
    with running_server(ckpt, "--max-batch", "8", "--no-ui", "--served-model-name", MODEL) as url:
        yield url


@pytest.fixture(scope="module")
def client(url):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-unused", max_retries=0, timeout=60)
    yield client
    client.close()


def data_url(image: Image.Image, kind="png") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=kind.upper())
    return f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode()


IMAGE = Image.new("RGB", (50, 40), (200, 30, 30))


def ask(question=QUESTION, image=IMAGE, system=None):
    messages = [{"role": "system", "content": system}] if system else []
    content = [{"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": data_url(image), "detail": "low"}}]
    return messages + [{"role": "user", "content": content}]


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def test_models_lists_the_served_checkpoint(client):
    (model,) = client.models.list().data
    assert model.id == MODEL and model.owned_by == "unifork" and model.model_extra["tasks"] == ["und", "gen"]
    assert client.models.retrieve(MODEL).model_extra["image_size"] == "32x32"
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("gpt-4o")
    assert err.value.code == "model_not_found"


def test_served_name_is_the_runs_name(tmp_path):
    (tmp_path / "quickstart" / "checkpoint").mkdir(parents=True)
    assert served_name(tmp_path / "quickstart" / "checkpoint") == "quickstart"
    assert served_name(tmp_path / "quickstart") == "quickstart"


def test_images_are_the_native_routes_images(client, url):
    result = client.images.generate(model=MODEL, prompt="two red circles", n=2, size="32x32", response_format="b64_json",
                                    extra_body={"seed": 5, "cfg": 2.0, "top_k": 40})  # fmt: skip
    assert len(result.data) == 2 and result.model_extra["seed"] == 5 and result.size == "32x32"
    native = httpx.post(f"{url}/v1/generate", json={"prompt": "two red circles", "n": 2, "seed": 5, "cfg": 2.0, "top_k": 40},
                        timeout=60).json()["images"]  # fmt: skip
    assert all(np.array_equal(pixels(a.b64_json), pixels(b)) for a, b in zip(result.data, native))
    one = client.images.generate(prompt="a blue square")  # OpenAI's defaults: the served model, one image
    assert len(one.data) == 1 and pixels(one.data[0].b64_json).shape == (32, 32, 3)


def test_chat_with_an_image_answers_as_the_pipeline_does(client, ckpt):
    response = client.chat.completions.create(model=MODEL, messages=ask(system="Answer briefly."), temperature=0, max_tokens=32)
    expected = Pipeline.from_pretrained(ckpt, task="und").ask(IMAGE, QUESTION, max_new_tokens=32)
    (choice,) = response.choices
    assert choice.message.role == "assistant" and choice.message.content == expected
    assert choice.finish_reason in ("stop", "length") and response.model == MODEL
    assert response.usage.prompt_tokens > 16 and response.usage.completion_tokens <= 32  # 16 image codes + question
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    jpeg = client.chat.completions.create(model=MODEL, temperature=0, max_tokens=32, messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(IMAGE, "jpeg")}},
                                     {"type": "text", "text": QUESTION}]}])  # fmt: skip
    assert jpeg.choices[0].message.content  # any order of parts, any image type PIL reads


def test_null_settings_mean_the_defaults(client, url):
    body = {"model": MODEL, "messages": ask(), "temperature": None, "top_p": None, "n": None, "stream": None,
            "max_tokens": 6, "seed": 4, "frequency_penalty": None, "logprobs": None}  # fmt: skip
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    defaults = client.chat.completions.create(model=MODEL, messages=ask(), max_tokens=6, seed=4)  # temperature 1, n 1
    assert [c["message"]["content"] for c in response.json()["choices"]] == [defaults.choices[0].message.content]


def test_sampled_answers_follow_the_seed(client):
    def answers(seed):
        response = client.chat.completions.create(model=MODEL, messages=ask(), temperature=1.0, n=3, seed=seed, max_tokens=10)
        return [c.message.content for c in response.choices]

    first = answers(5)
    assert answers(5) == first and answers(6) != first and len(set(first)) > 1


def test_a_stream_sends_the_same_answers_token_by_token(client):
    kwargs = dict(model=MODEL, messages=ask(), temperature=1.0, n=2, seed=11, max_tokens=12)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    for choice in whole.choices:
        deltas = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == choice.index]
        assert deltas[0].delta.role == "assistant"
        assert "".join(d.delta.content or "" for d in deltas) == choice.message.content
        assert sum(bool(d.delta.content) for d in deltas) > 1  # sent as it was drawn, not in one piece
        assert [d.finish_reason for d in deltas if d.finish_reason] == [choice.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_stop_sequences_end_the_answer_before_them(client):
    kwargs = dict(model=MODEL, messages=ask(), temperature=1.0, seed=3, max_tokens=16)
    text = client.chat.completions.create(**kwargs).choices[0].message.content
    stop = next(text[i : i + 2] for i in range(1, len(text) - 1) if "\ufffd" not in text[i : i + 2])
    cut = client.chat.completions.create(**kwargs, stop=[stop, "never in it \u2603"]).choices[0]
    assert cut.message.content == text[: text.index(stop)] and cut.finish_reason == "stop"
    streamed = client.chat.completions.create(**kwargs, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == text[: text.index(stop)]


def test_a_stream_holds_back_what_may_become_a_stop_sequence():
    assert shown_text("the red ci", ["circle"]) == ("the red ", False)
    assert shown_text("the red circle is", ["circle"]) == ("the red ", True)
    assert shown_text("caf\ufffd", []) == ("caf", False)  # half a UTF-8 character waits for its other half


CHAT_ERRORS = {
    # name: (create() arguments over the defaults, error class, param, words in the message)
    "unknown model": ({"model": "gpt-4o"}, openai.NotFoundError, "model", "unifork-tiny"),
    "n zero": ({"n": 0}, openai.BadRequestError, "n", ""),
    "n over the limit": ({"n": 9}, openai.BadRequestError, "n", ""),
    "temperature over 2": ({"temperature": 2.5}, openai.BadRequestError, "temperature", ""),
    "no messages": ({"messages": []}, openai.BadRequestError, "messages", ""),
    "draw in chat": ({"messages": [{"role": "user", "content": "draw a red circle"}]}, openai.BadRequestError,
                     "messages[0].content", "/v1/images/generations"),
    "remote image": ({"messages": [{"role": "user", "content": [{"type": "text", "text": "what?"}, {
        "type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}, openai.BadRequestError,
        "messages[0].content[1].image_url.url", "fetches nothing"),
    "unknown part": ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
                     openai.BadRequestError, "messages[0].content[0].type", "image_url"),
    "bad base64": ({"messages": [{"role": "user", "content": [{"type": "text", "text": "what?"}, {
        "type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}]}, openai.BadRequestError,
        "messages[0].content[1].image_url.url", "base64"),
    "base64 of text": ({"messages": [{"role": "user", "content": [{"type": "text", "text": "what?"}, {
        "type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"hi").decode()}}]}]},
        openai.BadRequestError, "messages[0].content[1].image_url.url", "not an image"),
    "two images": ({"messages": [{"role": "user", "content": ask()[0]["content"] + ask()[0]["content"][1:]}]},
                   openai.BadRequestError, "messages[0].content", "one image"),
    "an earlier turn": ({"messages": ask() + [{"role": "assistant", "content": "red"}] + ask()},
                        openai.BadRequestError, "messages[1].role", "one user message"),
    "only a question": ({"messages": [{"role": "user", "content": [ask()[0]["content"][1]]}]},
                        openai.BadRequestError, "messages[0].content", "must not be empty"),
    "question over the context": ({"messages": ask("why " * 100)}, openai.BadRequestError, "messages[0].content", ""),
    "penalty": ({"frequency_penalty": 0.5}, openai.BadRequestError, "frequency_penalty", "send null or 0"),
    "tools": ({"tools": [{"type": "function", "function": {"name": "f"}}]}, openai.BadRequestError, "tools", ""),
    "five stops": ({"stop": ["a", "b", "c", "d", "e"]}, openai.BadRequestError, "stop", "at most 4"),
    "unknown field": ({"extra_body": {"beams": 4}}, openai.BadRequestError, "beams", ""),
    "image over the pixel limit": ({"messages": ask(image=Image.new("RGB", (9000, 8)))}, openai.APIStatusError,
                                   "messages[0].content[1].image_url.url", "limit"),
    "body over the limit": ({"messages": ask() + [{"role": "system", "content": "x" * (17 << 20)}]},
                            openai.APIStatusError, "body", "limit"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CHAT_ERRORS))
def test_chat_mistakes_raise_the_clients_error_naming_the_parameter(client, case):
    changes, error, param, words = CHAT_ERRORS[case]
    with pytest.raises(error) as raised:
        client.chat.completions.create(**{"model": MODEL, "messages": ask(), "max_tokens": 4, **changes})
    assert 400 <= raised.value.status_code < 500 and raised.value.param == param, raised.value.message
    assert param in raised.value.message and words in raised.value.message
    assert raised.value.type == "invalid_request_error"


IMAGE_ERRORS = {
    "unsupported size": ({"size": "1024x1024"}, "size", "32x32"),
    "url format": ({"response_format": "url"}, "response_format", "b64_json"),
    "n over the limit": ({"n": 17}, "n", ""),
    "unknown model": ({"model": "dall-e-3"}, "model", "unifork-tiny"),
    "prompt over the context": ({"prompt": "red circle " * 90}, "prompt", "tokens"),
    "sampling setting out of range": ({"extra_body": {"cfg": -1}}, "cfg", ""),
}


@pytest.mark.parametrize("case", list(IMAGE_ERRORS))
def test_image_mistakes_raise_the_clients_error_naming_the_parameter(client, case):
    changes, param, words = IMAGE_ERRORS[case]
    with pytest.raises(openai.APIStatusError) as raised:
        client.images.generate(**{"prompt": "two red circles", **changes})
    assert raised.value.status_code in (400, 404) and raised.value.param == param and words in raised.value.message


def test_a_missing_branch_is_a_bad_request_streamed_or_not(ckpt):
    with running_server(ckpt, "--task", "gen", "--no-ui") as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-unused", max_retries=0, timeout=60)
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError, match="'und' branch is not loaded"):
                client.chat.completions.create(model=served_name(ckpt), messages=ask(), stream=stream)
        client.close()


def test_loadtest_through_the_openai_routes(url):
    from unifork.serve.loadtest import loadtest, summary_lines

    for kind in ("generate", "ask"):
        result = loadtest(url, concurrency=2, requests=4, kind=kind, api="openai")
        assert result["batched"]["ok"] == 4 and result["batched"]["errors"] == {} and result["batched"]["items_per_s"] > 0
        assert result["route"] in summary_lines(result)[0]


def test_native_errors_keep_their_shape(url):
    response = httpx.post(f"{url}/v1/generate", json={"prompt": "a", "n": 0})
    assert response.status_code == 422 and response.json()["field"] == "n"

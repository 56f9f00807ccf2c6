"""The serving engine in-process, with a stand-in model: batching rules, the bounded queue, timeouts, cancellation;
each request's images in one batch as the pipeline draws them; untrusted image decoding."""

import asyncio
import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from unifork.inference import Pipeline
from unifork.inference.settings import DEFAULT_CFG_SCALE, DEFAULT_IMAGES
from unifork.serve.engine import Engine
from unifork.serve.errors import ClientGone, FieldError, QueueFull, RequestTimeout
from unifork.serve.images import decode_image
from unifork.serve.runner import GenerateWork, ModelRunner
from unifork.serve.schemas import GenerateRequest


class StandIn:
    """run_batch for the engine: records each batch; a batch holding "block" waits until release()."""

    def __init__(self):
        self.batches, self.gate = [], threading.Event()

    def __call__(self, kind, works):
        self.batches.append((kind, list(works)))
        if "block" in works:
            assert self.gate.wait(10)
        if "bad" in works:
            raise ValueError("bad request")
        return [f"{kind}:{w}" for w in works]

    def release(self):
        self.gate.set()

    def wait_for(self, count):
        deadline = time.monotonic() + 5
        while len(self.batches) < count:
            assert time.monotonic() < deadline, f"the worker ran {len(self.batches)} batches, expected {count}"
            time.sleep(0.005)


@pytest.fixture
def stand_in():
    return StandIn()


def engine_with(stand_in, **settings):
    return Engine(stand_in, **settings).start()


def test_batches_the_oldest_kind_up_to_max_batch(stand_in):
    engine = engine_with(stand_in, max_batch=3)
    first = engine.submit("generate", "block")
    stand_in.wait_for(1)  # the worker is busy: everything below queues
    jobs = [engine.submit(kind, w) for kind, w in [("generate", "b"), ("generate", "c"), ("generate", "d"),
                                                   ("generate", "e"), ("ask", "f"), ("generate", "g")]]  # fmt: skip
    stand_in.release()
    assert [job.future.result(5) for job in [first, *jobs]] == ["generate:block", "generate:b", "generate:c",
                                                                "generate:d", "generate:e", "ask:f", "generate:g"]  # fmt: skip
    assert [works for _, works in stand_in.batches] == [["block"], ["b", "c", "d"], ["e", "g"], ["f"]]
    assert [job.batch_size for job in jobs] == [3, 3, 3, 2, 1, 2]
    engine.stop()


def test_a_batch_never_holds_more_than_max_images(stand_in):
    engine = engine_with(stand_in, max_batch=4, max_images=4)
    engine.submit("generate", "block", images=1)
    stand_in.wait_for(1)
    jobs = [engine.submit("generate", w, images=k) for w, k in [("three", 3), ("two", 2), ("one", 1)]]
    stand_in.release()
    [job.future.result(5) for job in jobs]
    assert [works for _, works in stand_in.batches[1:]] == [["three", "one"], ["two"]]
    with pytest.raises(ValueError, match="never fit"):
        engine.submit("generate", "huge", images=5)
    engine.stop()


def test_a_full_queue_refuses_with_retry_after(stand_in):
    engine = engine_with(stand_in, max_batch=1, max_queue=2)
    engine.submit("generate", "block")
    stand_in.wait_for(1)  # running, so no longer queued
    queued = [engine.submit("generate", w) for w in "ab"]
    with pytest.raises(QueueFull) as refused:
        engine.submit("generate", "c")
    assert refused.value.retry_after >= 1 and engine.stats.rejected == 1
    stand_in.release()
    assert [job.future.result(5) for job in queued] == ["generate:a", "generate:b"]
    engine.submit("generate", "d").future.result(5)  # room again
    engine.stop()


def test_timeouts_answer_504_and_expired_requests_are_never_computed(stand_in):
    engine = engine_with(stand_in, timeout=0.3)

    async def scenario():
        running = asyncio.create_task(engine.run("generate", "block"))
        await asyncio.sleep(0.05)  # "block" is computing; "late" waits behind it past its deadline
        late = asyncio.create_task(engine.run("generate", "late"))
        return await asyncio.gather(running, late, return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, RequestTimeout) for o in outcomes)
    stand_in.release()
    engine.submit("generate", "after").future.result(5)
    assert [works for _, works in stand_in.batches] == [["block"], ["after"]]
    assert engine.stats.timed_out == 2 and engine.stats.dropped == 1
    engine.stop()


def test_a_client_that_goes_away_is_dropped_before_computing(stand_in):
    engine = engine_with(stand_in)

    async def scenario():
        blocker = engine.submit("generate", "block")
        await asyncio.sleep(0.05)
        polls = []

        async def disconnected():
            polls.append(1)
            return len(polls) >= 2  # present at the first check, gone at the second

        with pytest.raises(ClientGone):
            await engine.run("generate", "gone", disconnected=disconnected)
        return blocker

    blocker = asyncio.run(scenario())
    stand_in.release()
    blocker.future.result(5)
    engine.submit("generate", "next").future.result(5)
    assert [works for _, works in stand_in.batches] == [["block"], ["next"]]
    assert engine.stats.disconnected == 1 and engine.stats.dropped == 1
    engine.stop()


def test_a_failing_request_fails_only_itself(stand_in):
    engine = engine_with(stand_in)
    engine.submit("ask", "block")
    stand_in.wait_for(1)
    jobs = [engine.submit("ask", w) for w in ("ok1", "bad", "ok2")]
    stand_in.release()
    assert jobs[0].future.result(5) == "ask:ok1" and jobs[2].future.result(5) == "ask:ok2"
    with pytest.raises(ValueError, match="bad request"):
        jobs[1].future.result(5)
    assert engine.stats.failed == 1 and engine.stats.completed == 3  # block, ok1, ok2
    engine.stop()


# --- the model runner: each request's images as the pipeline draws them, whatever shares its batch ----------------


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from conftest import tiny_checkpoint

    return Pipeline.from_pretrained(tiny_checkpoint(tmp_path_factory.mktemp("engine_ckpt")))


BODIES = [
    {"prompt": "two red circles", "seed": 5},  # every sampling setting at the API's defaults
    {"prompt": "a blue square to the left of a green triangle", "n": 1, "cfg": 1.0, "temperature": 0.8, "top_k": 50,
     "top_p": 0.9, "seed": 7},
    {"prompt": "", "n": 3, "cfg": 5.0, "temperature": 1.2, "top_p": 0.95, "seed": 9},
    {"prompt": "a small orange cross", "n": 2, "speculative": 6, "seed": 3},
]  # fmt: skip


def test_batched_requests_get_the_images_the_pipeline_draws(pipe):
    works = [GenerateWork.from_request(GenerateRequest(**body)) for body in BODIES]
    batched = ModelRunner(pipe).generate(works)
    for body, images in zip(BODIES, batched):
        settings = {"cfg_scale": body.get("cfg", DEFAULT_CFG_SCALE)}  # an omitted cfg is the library default
        settings.update({k: body[k] for k in ("n", "temperature", "top_k", "top_p", "speculative") if k in body})
        reference = pipe.generate(body["prompt"], seed=body["seed"], **settings)
        assert len(images) == len(reference) == body.get("n", DEFAULT_IMAGES)
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, reference))


# --- untrusted images ----------------------------------------------------------------------------------------------


def encoded(image: Image.Image, fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "image, fmt",
    [
        (Image.new("RGBA", (30, 20), (255, 0, 0, 0)), "PNG"),
        (Image.new("P", (16, 16), 3), "GIF"),
        (Image.new("L", (9, 40), 128), "PNG"),
        (Image.new("1", (17, 17), 1), "BMP"),
        (Image.new("CMYK", (12, 12), (0, 255, 0, 0)), "JPEG"),
        (Image.new("LA", (8, 8), (10, 200)), "PNG"),
        (Image.fromarray(np.full((5, 6), 40000, np.uint16)), "PNG"),
        (Image.new("F", (7, 7), 0.5), "TIFF"),
        (Image.new("RGB", (33, 21), (1, 2, 3)), "WEBP"),
    ],
)
def test_any_readable_mode_becomes_rgb(image, fmt):
    decoded = decode_image(encoded(image, fmt), "image")
    assert decoded.mode == "RGB" and decoded.size == image.size


def test_transparency_lands_on_white():
    decoded = decode_image(encoded(Image.new("RGBA", (4, 4), (255, 0, 0, 0))), "image")
    assert decoded.getpixel((0, 0)) == (255, 255, 255)


def test_a_damaged_file_names_the_field():
    with pytest.raises(FieldError, match="^photo: ") as err:
        decode_image(encoded(Image.new("RGB", (64, 64), "red"), "JPEG")[:-300], "photo")
    assert err.value.field == "photo" and err.value.status == 422

"""Fuzzing (hypothesis, bounded): whatever comes in, the parsers and validators either accept it or raise a
UserError naming the problem; no other exception ever escapes. docs/reliability.md counts the examples."""

import io
import math
import os
import re
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from unifork.errors import UserError
from unifork.images import fit_image
from unifork.inference.draws import sample_next
from unifork.inference.sampler import MAX_IMAGES, check_images
from unifork.inference.settings import SamplingSettings
from unifork.tokenizers.text import SPECIAL_TOKENS, TextTokenizer
from unifork.world.captions import RELATION_PHRASES
from unifork.world.prompts import ObjectGroup, PromptSpec, Relation, parse_prompt
from unifork.world.spec import COLORS, MAX_OBJECTS, SHAPES, SIZES

# 200 examples per property keeps the file at a few seconds; UNIFORK_FUZZ_EXAMPLES=5000 digs deeper locally.
FUZZ = settings(max_examples=int(os.environ.get("UNIFORK_FUZZ_EXAMPLES", "200")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])  # fmt: skip


# --- the world's prompt parser -------------------------------------------------------------------------------------

WORDS = ["a", "an", "one", "two", "three", "four", "five", "zero", "0", "7", "and", ",", ".", "of", "to", "the",
         "left", "right", "above", "below", "a photo of", *SHAPES, *(s + "s" for s in SHAPES), *COLORS, *SIZES,
         "pink", "hexagon", "crosses", ""]  # fmt: skip


def group(count=None):
    """ObjectGroup(count, color or None, shape, size or None); count: a strategy, 1..MAX_OBJECTS by default."""
    count = st.integers(1, MAX_OBJECTS) if count is None else count
    return st.builds(ObjectGroup, count, st.sampled_from([None, *COLORS]), st.sampled_from(SHAPES),
                     st.sampled_from([None, *SIZES]))  # fmt: skip


@st.composite
def prompt_specs(draw) -> PromptSpec:
    """Any spec the grammar can state: up to MAX_OBJECTS objects in groups, or one object related to another."""
    if draw(st.booleans()):
        a, b = draw(group(st.just(1))), draw(group(st.just(1)))
        return PromptSpec((a, b), Relation(0, draw(st.sampled_from(list(RELATION_PHRASES))), 1))
    groups = [draw(group())]
    while (left := MAX_OBJECTS - sum(g.count for g in groups)) > 0 and draw(st.booleans()):
        groups.append(draw(group(st.integers(1, left))))
    return PromptSpec(tuple(draw(st.permutations(groups))))


def parse_or_user_error(text):
    try:
        return parse_prompt(text)
    except UserError as err:
        assert str(err) and "\n" not in str(err) and len(str(err)) < 400  # one readable line, even for huge text
        return None


@FUZZ
@given(prompt_specs())
def test_valid_prompts_round_trip(spec):
    assert parse_prompt(spec.text()) == spec
    assert parse_prompt(f"  A photo of {spec.text().upper()}.  ") == spec  # case, spacing, prefix, period ignored


@FUZZ
@given(st.text(max_size=200))
@example("x" * 100_000)
@example("\udcff\udcfe")
@example("²")  # str.isdigit() but not int()
@example("٣ red circles")  # an Arabic-Indic three
@example("1" * 5000 + " red circles")  # int() of over 4300 digits raises ValueError
def test_random_text_parses_or_is_a_user_error(text):
    parse_or_user_error(text)


@FUZZ
@given(st.lists(st.sampled_from(WORDS), max_size=12))
def test_word_salad_parses_or_is_a_user_error(words):
    spec = parse_or_user_error(" ".join(words))
    assert spec is None or 1 <= spec.n_objects <= MAX_OBJECTS


@FUZZ
@given(prompt_specs(), st.data())
def test_mutated_prompts_parse_or_are_user_errors(spec, data):
    text = spec.text()
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(text)))
        j = data.draw(st.integers(i, min(len(text), i + 12)))
        insert = data.draw(st.sampled_from(["", " ", ",", " and ", " above ", "s", "two ", "red ", "\x00", "é", *WORDS]))
        text = text[:i] + insert + text[j:]  # delete, replace or insert a piece
    spec = parse_or_user_error(text)
    assert spec is None or 1 <= spec.n_objects <= MAX_OBJECTS


# --- the text tokenizer --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_tokenizer(tokenizer_dir):
    return TextTokenizer.load(tokenizer_dir)


def any_text():
    """Any code points, lone surrogates included (st.text leaves those out by default)."""
    return st.text(st.characters(exclude_categories=()), max_size=200)


@FUZZ
@given(text=any_text())
@example(text="\udcff\udcfe")
@example(text="a red circle\ud800")
def test_text_tokenizer_round_trips_valid_text_and_refuses_surrogates(text_tokenizer, text):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        with pytest.raises(UserError, match="not valid Unicode"):
            text_tokenizer.encode(text)
        return
    ids = text_tokenizer.encode(text)
    assert all(0 <= i < text_tokenizer.vocab_size for i in ids)
    assert text_tokenizer.decode(ids) == text.strip()  # byte-level: lossless up to the documented strip


@FUZZ
@given(parts=st.lists(st.one_of(st.sampled_from(list(SPECIAL_TOKENS.values())), st.text(max_size=8)), max_size=8))
@example(parts=["a red circle ", "<|img|>", "<|eos|>"])
def test_marker_strings_in_text_are_text_not_markers(text_tokenizer, parts):
    text = "".join(parts)
    ids = text_tokenizer.encode(text)
    assert not set(ids) & set(text_tokenizer.special_ids.values())  # a prompt cannot inject BOS, EOS or <img>
    assert text_tokenizer.decode(ids) == text.strip()


# --- sampling settings ---------------------------------------------------------------------------------------------

NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**70), 2**70),
                    st.sampled_from([0, 1, -1, 0.0, 1.0, -0.0, 1e-300, 5e-324, 2**63, math.nan, math.inf]),
                    st.booleans(), st.none(), st.just("1"))  # fmt: skip


def first_invalid(n, cfg_scale, temperature, top_k, top_p) -> str | None:
    """The documented ranges, restated independently of check_images and SamplingSettings."""
    integer = lambda x: type(x) is int  # bool is not a count
    finite = lambda x: type(x) in (int, float) and math.isfinite(x)
    for name, ok in [
        ("n", integer(n) and 1 <= n <= MAX_IMAGES),
        ("cfg_scale", finite(cfg_scale) and cfg_scale >= 0),
        ("temperature", finite(temperature) and temperature >= 0),
        ("top_k", integer(top_k) and top_k >= 0),
        ("top_p", finite(top_p) and 0 < top_p <= 1),
    ]:
        if not ok:
            return name
    return None


@FUZZ
@given(NUMBERS, NUMBERS, NUMBERS, NUMBERS, NUMBERS)
@example(4, math.nan, 1.0, 0, 1.0)
@example(True, 3.0, 1.0, 0, 1.0)
def test_sampling_settings_are_valid_or_a_user_error_naming_the_field(n, cfg_scale, temperature, top_k, top_p):
    field = first_invalid(n, cfg_scale, temperature, top_k, top_p)

    def validate():
        check_images(n)
        SamplingSettings(cfg_scale, temperature, top_k, top_p)

    if field is None:
        validate()
    else:
        with pytest.raises(UserError, match=rf"^{re.escape(field)} "):
            validate()


@FUZZ
@given(
    logits=st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=2, max_size=40),
    temperature=st.one_of(st.just(0.0), st.floats(1e-300, 1e300), st.sampled_from([5e-324, 1e-45, 1.0, 1e308])),
    top_k=st.integers(0, 50),
    top_p=st.one_of(st.floats(5e-324, 1.0, exclude_min=False), st.sampled_from([1e-300, 1e-46, 1.0])),
)
@example(logits=[1.0, 2.0, 3.0], temperature=1e-300, top_k=0, top_p=1.0)  # overflows to inf without the clamp
@example(logits=[1.0, 2.0, 3.0], temperature=1.0, top_k=0, top_p=1e-300)  # top_p rounds to 0 in float32
def test_valid_settings_always_sample_a_token(logits, temperature, top_k, top_p):
    x = torch.tensor([logits, logits[::-1]])  # (2, V)
    SamplingSettings(1.0, temperature, top_k, top_p)
    token = sample_next(x, temperature, top_k, top_p, torch.Generator().manual_seed(0))
    assert token.shape == (2,) and ((0 <= token) & (token < len(logits))).all()


# --- image loading -------------------------------------------------------------------------------------------------


def encoded(fmt: str, mode: str) -> bytes:
    image = Image.new("RGB", (24, 16), "white")
    image.paste((220, 30, 30), (2, 2, 12, 10))
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


VALID_FILES = [encoded("PNG", "RGB"), encoded("PNG", "P"), encoded("PNG", "RGBA"), encoded("JPEG", "RGB"),
               encoded("GIF", "P"), encoded("BMP", "RGB"), encoded("TIFF", "CMYK"), encoded("WEBP", "RGB")]  # fmt: skip


@st.composite
def image_file_bytes(draw) -> bytes:
    """Random bytes, or a valid image file with bytes flipped, cut off, inserted or its header garbled."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=512))
    data = bytearray(draw(st.sampled_from(VALID_FILES)))
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["flip", "cut", "insert", "header"]))
        i = draw(st.integers(0, len(data) - 1)) if data else 0
        if action == "flip" and data:
            data[i] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del data[i:]
        elif action == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif data:
            j = draw(st.integers(0, min(len(data), 40) - 1))  # headers hold the sizes and the format
            data[j] = draw(st.integers(0, 255))
    return bytes(data)


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "image"


@FUZZ
@given(data=image_file_bytes())
@example(data=b"")
@example(data=VALID_FILES[0][:40])
@example(data=VALID_FILES[6][:46])  # a TIFF cut there: PIL warns "Truncated File Read" and carries on
def test_image_loading_gives_pixels_or_a_user_error(image_path, data):
    image_path.write_bytes(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pixels = fit_image(image_path, 64)
        except UserError as err:
            pixels = None
            assert "\n" not in str(err)
    assert not caught, [str(w.message) for w in caught]  # a PIL warning would be a second line on the CLI's stderr
    if pixels is None:
        return
    assert isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.shape == (64, 64, 3)

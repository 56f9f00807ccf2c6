"""Inference: KV-cache decoding equals full recompute, guidance and sampling invariants, the pipeline and the CLI."""

import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from unifork.cli import main
from unifork.errors import UserError
from unifork.inference import Pipeline, answer_questions, sample_image_codes
from unifork.inference.decoding import decode_one, prefill
from unifork.inference.draws import filter_logits, sample_next
from unifork.inference.sampler import CodeRequest, sample_codes_per_request
from unifork.inference.settings import DEFAULT_CFG_SCALE, SamplingSettings
from unifork.model.unifork import CODE, IGNORE, TEXT
from unifork.sequences import Example
from unifork.tokenizers.image import ImageTokenizer, ImageTokenizerConfig

CAPTIONS = ["red", "two large blue squares to the left of a green circle", "a small orange cross"]
QUESTIONS = ["how many?", "what color is the large square on the left?", "is there a cross?"]


@pytest.fixture(scope="session")
def pipe(ckpt):
    return Pipeline.from_pretrained(ckpt)


def image_inputs(pipe, n, seed=0):
    """Random images through the pipeline's image tokenizer: codes (n, L) and latents (n, L, D)."""
    size = pipe.image_tokenizer.cfg.image_size
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return pipe.image_tokenizer.encode(x), pipe.image_tokenizer.encode_latents(x).detach()


def extend(example: Example, tokens: list[int], kind: int) -> Example:
    """`example` with tokens of one kind appended (no loss): the full sequence the cache has seen."""
    n = len(tokens)
    return Example(example.task, example.tokens + tokens, example.kinds + [kind] * n,
                   example.targets + [IGNORE] * n, example.latents)  # fmt: skip


# --- KV cache == full recompute -----------------------------------------------------------------------------------


def test_gen_cache_logits_match_full_recompute(pipe):
    model, builder, length = pipe.model, pipe.builder, pipe.model.cfg.image_tokens
    codes = torch.randint(0, model.cfg.image_vocab_size, (len(CAPTIONS), length), generator=torch.Generator().manual_seed(0))
    prompts = [builder.generate(c) for c in CAPTIONS]
    with torch.no_grad():
        logits, state = prefill(model, "gen", builder.collate(prompts), length)
        steps = [logits]
        for i in range(length - 1):
            steps.append(decode_one(model, state, codes[:, i], CODE))
        full_batch = builder.collate([extend(p, codes[i, :-1].tolist(), CODE) for i, p in enumerate(prompts)])
        full = model.logits("gen", full_batch)  # (B, T, V)
    # left padding aligns every row: the prompt's last column predicts code 0, the next column code 1, ...
    width = max(len(p.tokens) for p in prompts)
    torch.testing.assert_close(torch.stack(steps, dim=1), full[:, width - 1 :], atol=1e-5, rtol=0)


def test_und_cache_logits_match_full_recompute(pipe):
    model, builder = pipe.model, pipe.builder
    codes, latents = image_inputs(pipe, len(QUESTIONS))
    answer = torch.randint(0, pipe.text_tokenizer.vocab_size, (len(QUESTIONS), 6), generator=torch.Generator().manual_seed(1))
    prompts = [builder.understand(q, codes[i], latents[i]) for i, q in enumerate(QUESTIONS)]
    with torch.no_grad():
        logits, state = prefill(model, "und", builder.collate(prompts), answer.shape[1] + 1)
        steps = [logits]
        for i in range(answer.shape[1]):
            steps.append(decode_one(model, state, answer[:, i], TEXT))
        full = model.logits("und", builder.collate([extend(p, answer[i].tolist(), TEXT) for i, p in enumerate(prompts)]))
    width = max(len(p.tokens) for p in prompts)
    torch.testing.assert_close(torch.stack(steps, dim=1), full[:, width - 1 :], atol=1e-5, rtol=0)


def recompute_image_codes(model, builder, captions, cfg_scale, sample):
    """Reference sampler: no cache, the whole sequence recomputed for every code."""
    n = len(captions)
    prompts = [builder.generate(c) for c in captions] + [builder.generate("")] * n
    codes = torch.zeros(n, 0, dtype=torch.long)
    for _ in range(model.cfg.image_tokens):
        fed = torch.cat([codes, codes]).tolist()
        batch = builder.collate([extend(p, fed[i], CODE) for i, p in enumerate(prompts)])
        logits = model.logits("gen", batch)[:, -1].float()
        cond, uncond = logits[:n], logits[n:]
        codes = torch.cat([codes, sample(uncond + cfg_scale * (cond - uncond))[:, None]], dim=1)
    return codes


def test_greedy_gen_with_cache_equals_greedy_recompute(pipe):
    with torch.no_grad():
        expected = recompute_image_codes(pipe.model, pipe.builder, CAPTIONS[:2], 3.0, lambda lg: lg.argmax(-1))
    got = sample_image_codes(pipe.model, pipe.builder, CAPTIONS[:2], SamplingSettings(cfg_scale=3.0, temperature=0))
    assert torch.equal(got, expected)


def test_greedy_answers_with_cache_equal_greedy_recompute(pipe):
    model, builder, eos = pipe.model, pipe.builder, pipe.text_tokenizer.eos_id
    codes, latents = image_inputs(pipe, 2)
    prompts = [builder.understand(q, codes[i], latents[i]) for i, q in enumerate(QUESTIONS[:2])]
    answers = [[], []]
    with torch.no_grad():
        for _ in range(8):
            batch = builder.collate([extend(p, answers[i], TEXT) for i, p in enumerate(prompts)])
            for i, token in enumerate(model.logits("und", batch)[:, -1].argmax(-1).tolist()):
                answers[i].append(token)
    expected = [builder.text.decode(a[: a.index(eos)] if eos in a else a) for a in answers]
    assert answer_questions(model, builder, codes, latents, QUESTIONS[:2], max_new_tokens=8) == expected


def test_sampled_answers_are_the_same_alone_or_batched_and_reported_token_by_token(pipe):
    """Each request draws from its own generator with its own settings; on_token sees every token, in order."""
    from unifork.inference.answers import AnswerRequest, sample_answers

    codes, latents = image_inputs(pipe, 3)
    reported = {}

    def requests():
        return [AnswerRequest(QUESTIONS[0], n=2, max_new_tokens=9, temperature=1.0, generator=torch.Generator().manual_seed(1),
                              on_token=lambda i, pos, tok: reported.setdefault(i, []).append((pos, tok))),
                AnswerRequest(QUESTIONS[1], max_new_tokens=4),  # greedy, a smaller budget
                AnswerRequest(QUESTIONS[2], n=3, max_new_tokens=6, temperature=0.8, top_k=50, top_p=0.9,
                              generator=torch.Generator().manual_seed(2))]  # fmt: skip

    batched = sample_answers(pipe.model, pipe.builder, codes, latents, requests())
    streamed = {i: [tok for _, tok in events] for i, events in reported.items()}
    assert streamed == {0: batched[0][0].tokens, 1: batched[0][1].tokens}
    assert all(pos == k for events in reported.values() for k, (pos, _) in enumerate(events))
    for j, request in enumerate(requests()):
        request.on_token = None
        alone = sample_answers(pipe.model, pipe.builder, codes[j : j + 1], latents[j : j + 1], [request])[0]
        assert [a.tokens for a in alone] == [a.tokens for a in batched[j]]
        assert [a.text for a in alone] == [a.text for a in batched[j]]
    budgets = [9, 9, 4, 6, 6, 6]
    for answer, budget in zip([a for answers in batched for a in answers], budgets):
        assert len(answer.tokens) <= budget and (answer.stopped or len(answer.tokens) == budget)
    assert len({tuple(a.tokens) for a in batched[2]}) > 1  # sampled: the draws differ between answers
    greedy = answer_questions(pipe.model, pipe.builder, codes[1:2], latents[1:2], QUESTIONS[1:2], max_new_tokens=4)
    assert greedy == [batched[1][0].text]


# --- sampling invariants -------------------------------------------------------------------------------------------


def test_cfg_scale_one_equals_conditional_sampling(pipe):
    model, builder = pipe.model, pipe.builder
    got = sample_image_codes(model, builder, CAPTIONS[:2], SamplingSettings(cfg_scale=1.0), torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        expected = recompute_image_codes(model, builder, CAPTIONS[:2], 1.0, lambda lg: sample_next(lg, generator=generator))
    assert torch.equal(got, expected)
    # the 2N-row guided batch (cond rows padded beside the "" rows) at a scale that is 1 in float32: same codes
    guided = sample_image_codes(model, builder, CAPTIONS[:2], SamplingSettings(cfg_scale=1 + 1e-12),
                                torch.Generator().manual_seed(3))  # fmt: skip
    assert torch.equal(guided, got)


def test_batched_equals_unbatched(pipe):
    greedy = SamplingSettings(cfg_scale=3.0, temperature=0)
    batched = sample_image_codes(pipe.model, pipe.builder, CAPTIONS, greedy)
    alone = torch.cat([sample_image_codes(pipe.model, pipe.builder, [c], greedy) for c in CAPTIONS])
    assert torch.equal(batched, alone)
    assert len({tuple(row) for row in batched.tolist()}) == len(CAPTIONS)  # the captions matter, so this means something


def test_batched_answers_equal_unbatched(pipe):
    images = [np.full((64, 64, 3), v, np.uint8) for v in (0, 128, 255)]
    batched = pipe.ask_batch(images, QUESTIONS, max_new_tokens=6)
    assert batched == [pipe.ask(img, q, max_new_tokens=6) for img, q in zip(images, QUESTIONS)]


def test_same_seed_same_images_different_seed_differs(pipe):
    a, b = pipe.generate("two red circles", n=2, seed=0), pipe.generate("two red circles", n=2, seed=0)
    c = pipe.generate("two red circles", n=2, seed=1)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))
    assert a[0].size == (32, 32) and a[0].mode == "RGB"


def test_top_k_one_equals_greedy(pipe):
    greedy = sample_image_codes(pipe.model, pipe.builder, CAPTIONS[:2], SamplingSettings(temperature=0))
    top1 = sample_image_codes(pipe.model, pipe.builder, CAPTIONS[:2], SamplingSettings(top_k=1), torch.Generator().manual_seed(0))
    assert torch.equal(top1, greedy)


def test_filter_logits_top_k_and_nucleus():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = lambda lg: torch.isfinite(lg)[0].tolist()  # noqa: E731
    assert kept(filter_logits(logits, top_k=2)) == [True, True, False, False]
    # 0.5 alone is short of 0.7, 0.5 + 0.3 covers it: the rest go
    assert kept(filter_logits(logits, top_p=0.7)) == [True, True, False, False]
    assert kept(filter_logits(logits, top_p=0.1)) == [True, False, False, False]
    assert kept(filter_logits(logits, top_k=0, top_p=1.0)) == [True] * 4


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"cfg_scale": -1.0}, "cfg_scale"),
        ({"cfg_scale": math.inf}, "cfg_scale"),
        ({"n": 0}, "n"),
        ({"n": 65}, "n"),
    ],
)
def test_validation_names_the_field(pipe, kwargs, field):
    with pytest.raises(UserError, match=rf"^{field} "):
        pipe.generate_codes("a red circle", **kwargs)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"cfg_scale": math.nan}, "cfg_scale"),
        ({"cfg_scale": 10**400}, "cfg_scale"),  # an int beyond float range
        ({"temperature": "1"}, "temperature"),
        ({"top_k": 2.0}, "top_k"),
        ({"top_k": True}, "top_k"),
        ({"top_p": 0}, "top_p"),
    ],
)
def test_a_bad_setting_is_one_user_error_naming_the_field(kwargs, field):
    with pytest.raises(UserError, match=rf"^{field} must be ") as err:
        SamplingSettings(**kwargs)
    assert len(str(err.value).splitlines()) == 1


# --- one sampling loop: a request samples the same codes alone, batched, or through the pipeline -------------------

REQUESTS = [  # prompt, n, settings, seed
    ("two red circles", 2, SamplingSettings(cfg_scale=3.0), 5),
    ("a blue square to the left of a green triangle", 1, SamplingSettings(1.0, 0.8, 50, 0.9), 7),
    ("", 3, SamplingSettings(5.0, 1.2, 0, 0.95), 9),
]


def code_request(prompt, n, settings, seed):
    return CodeRequest([prompt] * n, settings, torch.Generator().manual_seed(seed))


def test_batched_requests_sample_what_each_samples_alone(pipe):
    batched = sample_codes_per_request(pipe.model, pipe.builder, [code_request(*r) for r in REQUESTS])
    for request, codes in zip(REQUESTS, batched):
        prompt, n, settings, seed = request
        alone = sample_codes_per_request(pipe.model, pipe.builder, [code_request(*request)])[0]
        single = sample_image_codes(pipe.model, pipe.builder, [prompt] * n, settings, torch.Generator().manual_seed(seed))
        piped = pipe.generate_codes(prompt, n, settings.cfg_scale, settings.temperature, settings.top_k, settings.top_p, seed)
        assert torch.equal(codes, alone) and torch.equal(alone, single) and torch.equal(single, piped)
    assert not torch.equal(batched[0][:1], batched[2][:1])  # the prompts and seeds matter


def test_a_request_draws_its_rows_in_order_from_its_generator(pipe):
    """What keeps a seed's images: at each step the request's n guided rows draw, in row order, from its one
    generator, as one sample_next call over the stacked rows does (the reference, without a cache)."""
    model, builder = pipe.model, pipe.builder
    got = sample_image_codes(model, builder, CAPTIONS, SamplingSettings(cfg_scale=3.0), torch.Generator().manual_seed(4))
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        expected = recompute_image_codes(model, builder, CAPTIONS, 3.0, lambda lg: sample_next(lg, generator=generator))
    assert torch.equal(got, expected)


def test_prompt_too_long_is_a_user_error(pipe):
    with pytest.raises(UserError, match="context"):
        pipe.generate_codes("red circle " * 100, n=1)


# --- pipeline ------------------------------------------------------------------------------------------------------


def test_task_only_pipelines(ckpt, tmp_path):
    gen = Pipeline.from_pretrained(ckpt, task="gen")
    assert gen.model.und is None and len(gen.generate("a blue square", n=1, temperature=0)) == 1
    with pytest.raises(UserError, match="cannot answer questions: the 'und' branch is not loaded"):
        gen.ask(np.zeros((64, 64, 3), np.uint8), "what is it?")
    und = Pipeline.from_pretrained(ckpt, task="und")
    with pytest.raises(UserError, match="cannot generate images"):
        und.generate("a blue square", n=1)
    # any size and mode, as a path, a PIL image or an array
    Image.new("RGBA", (100, 37), (255, 0, 0, 128)).save(path := tmp_path / "odd.png")
    images = [path, str(path), Image.new("L", (10, 90)), Image.new("P", (64, 64)), np.zeros((17, 23, 4), np.uint8)]
    assert all(isinstance(a, str) for a in und.ask_batch(images, ["what color?"] * len(images), max_new_tokens=3))


def test_loading_errors(ckpt, tmp_path):
    with pytest.raises(UserError, match="no such checkpoint directory"):
        Pipeline.from_pretrained(tmp_path / "nope")
    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    shutil.rmtree(broken / "image_tokenizer")
    with pytest.raises(UserError, match="image_tokenizer"):
        Pipeline.from_pretrained(broken)
    ImageTokenizer(ImageTokenizerConfig(image_size=32, channels=(16, 32))).save(broken / "image_tokenizer")
    with pytest.raises(UserError, match="image_tokens=16"):
        Pipeline.from_pretrained(broken)


# --- CLI -----------------------------------------------------------------------------------------------------------


def test_cli_generate_writes_grid_and_images(ckpt, tmp_path, capsys):
    out, save_dir = tmp_path / "grid.png", tmp_path / "each"
    args = ["generate", "--ckpt", str(ckpt), "--prompt", "two red circles", "--n", "3", "--top-k", "50",
            "--top-p", "0.9", "--out", str(out), "--save-dir", str(save_dir)]  # fmt: skip
    assert main(args) == 0
    assert Image.open(out).size == (2 * 32 + 2, 2 * 32 + 2)  # 3 images in a 2 x 2 grid, 2 px gaps
    assert sorted(p.name for p in save_dir.iterdir()) == ["000.png", "001.png", "002.png"]
    assert str(out) in capsys.readouterr().out


def test_cli_generate_without_cfg_draws_the_default_guidance(ckpt, tmp_path):
    save_dir = tmp_path / "each"
    args = ["generate", "--ckpt", str(ckpt), "--prompt", "two red circles", "--n", "2", "--out", str(tmp_path / "g.png"),
            "--save-dir", str(save_dir)]  # fmt: skip
    assert main(args) == 0
    written = [np.asarray(Image.open(save_dir / f"00{i}.png")) for i in range(2)]
    pipe = Pipeline.from_pretrained(ckpt, task="gen")
    default = [np.asarray(img) for img in pipe.generate("two red circles", n=2, cfg_scale=DEFAULT_CFG_SCALE, seed=0)]
    other = [np.asarray(img) for img in pipe.generate("two red circles", n=2, cfg_scale=DEFAULT_CFG_SCALE + 1, seed=0)]
    assert all(np.array_equal(w, d) for w, d in zip(written, default))
    assert not all(np.array_equal(w, o) for w, o in zip(written, other))  # the scale shows in the pixels


def test_cli_ask_prints_one_line(ckpt, tmp_path, capsys):
    Image.new("RGB", (64, 64), "white").save(image := tmp_path / "x.png")
    assert main(["ask", "--ckpt", str(ckpt), "--image", str(image), "--question", "what color is the circle?"]) == 0
    # the answer alone (a random model's answer may hold any text, newlines included, or nothing)
    assert capsys.readouterr().out == Pipeline.from_pretrained(ckpt).ask(image, "what color is the circle?") + "\n"


@pytest.mark.parametrize("case", ["missing checkpoint", "not an image"])
def test_cli_errors_are_one_line(ckpt, tmp_path, capsys, case):
    (bad := tmp_path / "notes.png").write_text("not a picture")
    ckpt_arg, image_arg = (str(tmp_path / "nope"), str(bad)) if case == "missing checkpoint" else (str(ckpt), str(bad))
    assert main(["ask", "--ckpt", ckpt_arg, "--image", image_arg, "--question", "what?"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith("error: ") and "Traceback" not in captured.err


@pytest.mark.parametrize("mode, size", [("RGBA", (128, 128)), ("P", (20, 40)), ("L", (64, 64)), ("CMYK", (33, 33))])
def test_ask_accepts_any_image_mode_and_size(pipe, mode, size):
    image = Image.new("RGB", size, (255, 255, 255))
    image.paste((220, 30, 30), (2, 2, size[0] // 2, size[1] // 2))
    answer = pipe.ask(image.convert(mode), "what color is the square?")
    assert isinstance(answer, str)
    assert answer == pipe.ask(image.convert(mode), "what color is the square?")  # greedy: deterministic


def test_unknown_words_in_prompts_still_generate(pipe):
    images = pipe.generate("a zebra-striped dodecahedron, très jolie", n=1, seed=0)
    assert len(images) == 1 and images[0].size == (pipe.image_tokenizer.cfg.image_size,) * 2

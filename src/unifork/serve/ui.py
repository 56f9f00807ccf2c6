"""The web demo (Gradio): Generate, Ask and Alignment tabs over the same engine as the REST API.

The handlers are async and await the engine, so a click queues like an API request and is batched with them;
Gradio's own queue runs events without a concurrency limit, so it never serializes what the engine could batch.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
from pydantic import ValidationError

from unifork.inference.settings import DEFAULT_IMAGES, DEFAULTS, MAX_SPECULATIVE_WINDOW
from unifork.model.sharing import describe
from unifork.serve.engine import Engine
from unifork.serve.errors import (
    ClientGone,
    EngineStopped,
    FieldError,
    QueueFull,
    RequestTimeout,
)
from unifork.serve.limits import MAX_IMAGES_PER_REQUEST
from unifork.serve.runner import AskWork, GenerateWork, ModelRunner
from unifork.serve.schemas import GenerateRequest, check_question_text

# System fonts: the default theme fetches Google Fonts, which a machine without internet waits on
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
SERVING_ERRORS = (FieldError, QueueFull, RequestTimeout, ClientGone, EngineStopped)


def build_ui(engine: Engine, runner: ModelRunner, alignment_plot: Path | None, checkpoint: str) -> gr.Blocks:
    info = runner.info()
    with gr.Blocks(title="UniFork", analytics_enabled=False) as demo:
        gr.Markdown(
            f"## UniFork\n`{checkpoint}`: {info['n_layers']} layers, {describe(info['sharing'])} "
            f"(branches loaded: {', '.join(info['tasks'])}); {info['image_size']} px images."
        )
        generated = gr.State([])  # the gallery's PIL images, for the Ask tab to pick from
        gallery = ask_image = None
        with gr.Tab("Generate"):
            if "gen" in runner.tasks:
                gallery = _generate_tab(engine, runner, generated)
            else:
                gr.Markdown("The generation branch is not loaded; restart with `--task gen` or `--task both`.")
        with gr.Tab("Ask"):
            if "und" in runner.tasks:
                ask_image = _ask_tab(engine, runner)
            else:
                gr.Markdown("The understanding branch is not loaded; restart with `--task und` or `--task both`.")
        with gr.Tab("Alignment"):
            if alignment_plot is not None:
                gr.Image(value=str(alignment_plot), label=f"Image-text alignment per layer ({alignment_plot})",
                         interactive=False, elem_id="alignment-plot")  # fmt: skip
            else:
                gr.Markdown("No alignment plot next to this checkpoint (looked for `alignment.png` in the checkpoint "
                            "directory and its parent; `unifork align --ckpt ... --plot alignment.png` writes one).")  # fmt: skip
        if gallery is not None and ask_image is not None:
            gallery.select(_pick, inputs=generated, outputs=ask_image, api_visibility="private")
    return demo


def _generate_tab(engine: Engine, runner: ModelRunner, generated: gr.State) -> gr.Gallery:
    prompt = gr.Textbox(label="Prompt", placeholder="two red circles to the left of a blue square", elem_id="prompt")
    with gr.Row():
        n = gr.Slider(1, MAX_IMAGES_PER_REQUEST, value=DEFAULT_IMAGES, step=1, label="Images")
        cfg = gr.Slider(0, 15, value=DEFAULTS.cfg_scale, step=0.5, label="Guidance scale (1 = off)")
        temperature = gr.Slider(0, 2, value=DEFAULTS.temperature, step=0.05, label="Temperature (0 = greedy)")
    with gr.Row():
        vocab = runner.info()["config"]["image_vocab_size"]
        top_k = gr.Slider(0, vocab, value=DEFAULTS.top_k, step=1, label="Top-k (0 = off)")
        top_p = gr.Slider(0.05, 1, value=DEFAULTS.top_p, step=0.05, label="Top-p (1 = off)")
        speculative = gr.Slider(0, MAX_SPECULATIVE_WINDOW, value=DEFAULTS.speculative, step=1,
                                label="Speculative window (0 = off)")
        seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)", elem_id="seed")
    button = gr.Button("Generate", variant="primary", elem_id="generate-button")
    gallery = gr.Gallery(label="Images", columns=4, format="png", elem_id="gallery", interactive=False)
    gr.Markdown("Click an image to ask about it in the Ask tab.")
    seed_used = gr.Number(label="Seed used", precision=0, interactive=False, elem_id="seed-used")

    async def generate(prompt, n, cfg, temperature, top_k, top_p, speculative, seed):
        try:
            body = GenerateRequest(prompt=prompt or "", n=int(n), cfg=float(cfg), temperature=float(temperature),
                                   top_k=int(top_k), top_p=float(top_p), speculative=int(speculative),
                                   seed=None if seed is None or seed < 0 else int(seed))  # fmt: skip
        except ValidationError as err:
            first = err.errors()[0]
            raise gr.Error(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        work = GenerateWork.from_request(body)
        try:
            runner.check_prompt(body.prompt)
            job = await engine.run("generate", work, images=body.n)
        except SERVING_ERRORS as err:
            raise gr.Error(str(err)) from None
        images = job.future.result()
        return images, images, work.seed

    inputs, outputs = [prompt, n, cfg, temperature, top_k, top_p, speculative, seed], [gallery, generated, seed_used]
    button.click(generate, inputs, outputs, api_name="generate", concurrency_limit=None)
    prompt.submit(generate, inputs, outputs, api_visibility="private", concurrency_limit=None)
    return gallery


def _ask_tab(engine: Engine, runner: ModelRunner) -> gr.Image:
    image = gr.Image(label="Image (upload one, or click a generated one)", type="pil", sources=["upload", "clipboard"],
                     image_mode="RGB", elem_id="ask-image")  # fmt: skip
    question = gr.Textbox(label="Question", placeholder="what color is the circle?", elem_id="question")
    button = gr.Button("Ask", variant="primary", elem_id="ask-button")
    answer = gr.Textbox(label="Answer", interactive=False, elem_id="answer")

    async def ask(image, question):
        if image is None:
            raise gr.Error("image: upload an image or click a generated one first")
        try:
            check_question_text(question or "")
        except ValueError as err:
            raise gr.Error(f"question: {err}") from None
        try:
            runner.check_question(question)
            job = await engine.run("ask", AskWork(image.convert("RGB"), question))
        except SERVING_ERRORS as err:
            raise gr.Error(str(err)) from None
        return job.future.result()[0].text

    button.click(ask, [image, question], answer, api_name="ask", concurrency_limit=None)
    question.submit(ask, [image, question], answer, api_visibility="private", concurrency_limit=None)
    return image


def _pick(images: list, evt: gr.SelectData):
    return images[evt.index] if 0 <= evt.index < len(images) else None

"""The web demo in a real browser: headless Chromium loads the UI, a prompt goes in, Generate is clicked, images appear;
an image is uploaded in the Ask tab and the pipeline's answer appears."""

import pytest
from PIL import Image

from unifork.serve.screenshot import ask_in_browser, chromium_paths, generate_in_browser

selenium = pytest.importorskip("selenium", reason="the browser test needs selenium (pip install selenium)")
if chromium_paths() is None:
    pytest.skip("the browser test needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
                allow_module_level=True)


def test_prompt_generate_and_images_appear(tmp_path):
    from conftest import tiny_checkpoint
    from test_serve import running_server

    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    with running_server(ckpt, "--task", "gen") as url:
        shown = generate_in_browser(url, "two red circles", screenshot=tmp_path / "ui.png", seed=3)
    assert shown == 4  # the Images slider's default
    assert Image.open(tmp_path / "ui.png").size[0] >= 800


def test_upload_ask_and_the_pipelines_answer_appears(tmp_path):
    from conftest import tiny_checkpoint
    from test_serve import running_server

    from unifork.inference import Pipeline

    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    image = tmp_path / "scene.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(image)
    question = "what color is the square?"
    with running_server(ckpt) as url:
        shown = ask_in_browser(url, image, question)
    assert shown == Pipeline.from_pretrained(ckpt).ask(Image.open(image), question)

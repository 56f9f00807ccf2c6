"""The web demo in a real browser: headless Chromium loads the UI, a prompt goes in, Generate is clicked, images appear."""

import pytest
from PIL import Image

from unifork.serve.screenshot import chromium_paths, generate_in_browser

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

"""Drive the web demo in headless Chromium: type a prompt, click Generate, wait for the images, take a screenshot;
or upload an image in the Ask tab, ask a question and read the answer.

The browser test runs this against a tiny checkpoint; docs/serve_screenshot.png comes from the same steps on a
trained one:

    unifork serve --ckpt runs/quickstart/checkpoint --port 7860 &
    python -m unifork.serve.screenshot --url http://127.0.0.1:7860 --out docs/serve_screenshot.png

Needs selenium (pip) and Debian's chromium + chromium-driver; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

# A browser that only talks to the server under test: no sandbox (containers run as root), no GPU, no
# first-run, sync, update or background traffic to other hosts.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1280,1100"]  # fmt: skip


def chromium_paths() -> tuple[str, str] | None:
    """(browser, driver) when both are installed, else None."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@contextmanager
def chromium():
    """A headless Chromium driven by selenium, with a fresh profile that is deleted afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    paths = chromium_paths()
    if paths is None:
        raise RuntimeError("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    with tempfile.TemporaryDirectory(prefix="unifork-chromium-") as profile:
        for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(executable_path=paths[1]))
        try:
            yield driver
        finally:
            driver.quit()


def generate_in_browser(url: str, prompt: str, screenshot: str | Path | None = None, seed: int | None = 0,
                        wait_s: float = 60.0) -> int:  # fmt: skip
    """Load url/ui/, generate images for `prompt`; returns how many images the gallery shows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with chromium() as driver:
        driver.get(f"{url.rstrip('/')}/ui/")
        wait = WebDriverWait(driver, wait_s)
        box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#prompt textarea"))
        box.send_keys(prompt)
        if seed is not None:
            seed_box = driver.find_element(By.CSS_SELECTOR, "#seed input")
            seed_box.clear()
            seed_box.send_keys(str(seed))
        driver.find_element(By.CSS_SELECTOR, "#generate-button").click()
        loaded = "return [...document.querySelectorAll('#gallery img')].filter(i => i.complete && i.naturalWidth > 0).length"
        count = wait.until(lambda d: d.execute_script(loaded) or False)
        if screenshot is not None:
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(screenshot))
        return count


def ask_in_browser(url: str, image: str | Path, question: str, wait_s: float = 60.0) -> str:
    """Load url/ui/, open the Ask tab, upload `image`, ask `question`; returns the answer the page shows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with chromium() as driver:
        driver.get(f"{url.rstrip('/')}/ui/")
        wait = WebDriverWait(driver, wait_s)
        tabs = lambda d: [b for b in d.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text.strip() == "Ask"]  # noqa: E731
        wait.until(tabs)[0].click()
        upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#ask-image input[type=file]"))
        upload.send_keys(str(Path(image).resolve()))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#ask-image img"))  # the upload reached the component
        driver.find_element(By.CSS_SELECTOR, "#question textarea").send_keys(question)
        driver.find_element(By.CSS_SELECTOR, "#ask-button").click()
        return wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#answer textarea").get_attribute("value") or False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:7860", help="a running `unifork serve`")
    parser.add_argument("--prompt", default="two red circles to the left of a blue square", help="prompt to type")
    parser.add_argument("--seed", type=int, default=0, help="seed to type (same seed, same screenshot)")
    parser.add_argument("--out", default="docs/serve_screenshot.png", help="screenshot PNG")
    args = parser.parse_args()
    count = generate_in_browser(args.url, args.prompt, args.out, args.seed)
    print(f"the gallery shows {count} images; wrote {args.out}")


if __name__ == "__main__":
    main()

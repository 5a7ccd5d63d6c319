"""Screenshot of the ``gpt2clf serve`` web page for the README (``docs/serve.png``).

Serves a model folder on a loopback port in this process, opens the page in headless
Chromium (the system ``chromium`` through Playwright), classifies two example texts and
saves the page. Without ``--model-dir`` it uses a small random model with the 20
Newsgroups label names: the page looks as it will, the probabilities mean nothing.

Usage::

    python benchmarks/screenshot_serve.py                       # writes docs/serve.png
    python benchmarks/screenshot_serve.py --model-dir runs/20ng/model --output docs/serve.png
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from serve_load import build_model  # noqa: E402 - the benchmark's random-model builder

EXAMPLE = ("My X server crashes whenever I resize an xterm. Does anyone know which driver works best?\n"
           "---\n"
           "The shuttle launch was delayed by weather again; the next window opens on Tuesday.")


def find_chromium() -> str:
    for candidate in (os.environ.get("GPT2CLF_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser",
                      shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    raise SystemExit("no chromium found: install Debian's 'chromium' package or set GPT2CLF_CHROMIUM")


def wait_until_ready(url: str, timeout_s: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while httpx.get(f"{url}/readyz", timeout=10).status_code != 200:
        if time.monotonic() > deadline:
            raise SystemExit(f"the model at {url} did not become ready within {timeout_s:.0f} s")
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="a model folder (default: a small random demo model)")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "serve.png")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from gpt2clf.serve.app import create_app, running_in_thread

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="gpt2clf-screenshot-") as scratch:
        model_dir = args.model_dir or build_model("tiny", Path(scratch) / "demo")
        with running_in_thread(create_app(model_dir, predictor_kwargs={"device": "cpu"})) as url, \
                sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=find_chromium(), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 820, "height": 640})
            wait_until_ready(url)
            page.goto(url)
            page.wait_for_function("document.getElementById('model-summary').textContent.includes('labels')",
                                   timeout=120_000)
            page.fill("#texts", EXAMPLE)
            page.press("#texts", "Control+Enter")
            page.wait_for_selector(".result >> nth=1")
            args.output.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.output), full_page=True)
            browser.close()
    print(f"wrote {args.output} ({args.output.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

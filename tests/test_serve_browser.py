"""The web page of ``gpt2clf serve`` in a real headless Chromium against a real uvicorn server."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from gpt2clf.serve.app import ServeSettings, create_app, running_in_thread

# Waits use expect(), never page.wait_for_function("..."): when the condition is not yet true, the
# latter polls by evaluating the string inside the page, which needs 'unsafe-eval', and the page's
# Content-Security-Policy (default-src 'self') rightly refuses it, so such a wait fails on a slow machine.


@pytest.fixture(scope="module")
def server_url(tiny_model_dir: Path) -> Iterator[str]:
    from gpt2clf.infer.predictor import Predictor

    predictor = Predictor.from_folder(tiny_model_dir, device="cpu")
    with running_in_thread(create_app(predictor, ServeSettings(), model_dir=tiny_model_dir)) as url:
        yield url


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 900, "height": 700})
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.problems = problems
    yield page
    context.close()


def test_page_classifies_typed_text_and_draws_bars(page, server_url: str, tmp_path: Path) -> None:
    from PIL import Image, ImageStat

    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(server_url)
    expect(page.locator("#model-summary")).to_contain_text("3 labels")

    box = page.get_by_label("Text to classify")  # the text box has an accessible name
    box.fill("My X server crashes when I resize an xterm\n---\nThe shuttle launch was delayed again")
    page.fill("#top-k", "2")
    box.press("Control+Enter")  # keyboard submit
    page.wait_for_selector(".result >> nth=1")

    results = page.locator(".result")
    assert results.count() == 2
    assert page.locator(".bar-row").count() == 4  # two texts x top 2
    assert results.nth(0).locator(".bar-row").count() == 2
    labels = page.locator(".bar-label").all_inner_texts()
    assert set(labels) <= {"a", "b", "c"} and len(labels) == 4
    first_label = results.nth(0).locator(".bar-label").first.inner_text()
    assert results.nth(0).locator("h2").inner_text() == f"Text 1: {first_label}"
    meter = results.nth(0).locator("[role=meter]").first
    assert 0 <= float(meter.get_attribute("aria-valuenow")) <= 100
    assert page.locator("#status").inner_text().startswith("Done: 2 results")
    # POST /v1/explain shades each text's tokens by their attribution toward its label
    assert page.evaluate("window.gpt2clf.state.explainAvailable") is True
    page.wait_for_selector(".result >> nth=1 >> .token")
    tokens = results.nth(0).locator(".token").all_inner_texts()
    assert "".join(tokens) == "My X server crashes when I resize an xterm"
    assert first_label in results.nth(0).locator(".highlights-legend").inner_text()

    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    with Image.open(io.BytesIO(shot.read_bytes())) as image:
        spread = ImageStat.Stat(image.convert("L")).stddev[0]
    assert spread > 5, "the screenshot is blank"

    assert page.problems == []
    assert all(url.startswith(server_url) or url.startswith("data:") for url in requests), requests


def test_a_dropped_text_file_fills_the_box(page, server_url: str, tmp_path: Path) -> None:
    document = tmp_path / "post.txt"
    document.write_text("Which GPU drivers work with X11?\nThanks in advance.", encoding="utf-8")
    page.goto(server_url)
    page.set_input_files("#file-input", str(document))
    expect(page.locator("#texts")).to_have_value(re.compile("GPU drivers"))
    assert page.input_value("#texts") == document.read_text(encoding="utf-8")
    assert "post.txt" in page.locator("#status").inner_text()
    page.click("#submit")
    page.wait_for_selector(".result")
    assert page.locator(".result").count() == 1
    assert page.locator(".bar-row").count() == 3
    assert page.problems == []


def test_errors_are_shown_and_focus_is_visible(page, server_url: str) -> None:
    page.goto(server_url)
    expect(page.locator("#model-summary")).to_contain_text("labels")
    page.focus("#texts")
    page.keyboard.press("Control+Enter")  # nothing typed
    assert "Type or drop some text first" in page.locator("#status").inner_text()
    assert page.locator("#status").get_attribute("role") == "status"
    page.keyboard.press("Tab")  # keyboard reaches the file drop zone, which shows a focus ring
    assert page.evaluate("document.activeElement.id") == "drop-zone"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"
    assert page.problems == []


PAGE_KEY = "page-key-5b1e0c9a7d3f2468"


@pytest.fixture(scope="module")
def keyed_server_url(tiny_model_dir: Path) -> Iterator[str]:
    from gpt2clf.infer.predictor import Predictor

    predictor = Predictor.from_folder(tiny_model_dir, device="cpu")
    app = create_app(predictor, ServeSettings(), model_dir=tiny_model_dir, api_key=PAGE_KEY)
    with running_in_thread(app) as url:
        yield url


def test_page_asks_for_the_key_keeps_it_for_the_session_and_explains_a_401(page, keyed_server_url: str) -> None:
    sent: dict[str, str | None] = {}
    page.on("request", lambda request: sent.__setitem__(request.url, request.headers.get("authorization")))
    page.goto(keyed_server_url)
    page.wait_for_selector("#key-form:not([hidden])")  # the 401 on /v1/model opens the key form
    assert "needs an API key" in page.locator("#key-status").inner_text()
    assert page.locator("#model-summary").inner_text() == "Model information needs the API key."
    assert page.evaluate("document.activeElement.id") == "api-key"
    assert page.get_by_label("API key").get_attribute("type") == "password"

    page.fill("#api-key", PAGE_KEY[:-3])  # a wrong key, shorter than the right one
    page.click("#key-submit")
    expect(page.locator("#key-status")).to_contain_text("refused")
    assert "401" in page.locator("#key-status").inner_text()
    assert page.evaluate("sessionStorage.length") == 0  # a refused key is not kept

    page.fill("#api-key", PAGE_KEY)
    page.keyboard.press("Enter")
    expect(page.locator("#model-summary")).to_contain_text("3 labels")
    assert page.locator("#key-form").is_hidden()
    assert page.evaluate("sessionStorage.getItem('gpt2clf.apiKey')") == PAGE_KEY
    assert page.evaluate("localStorage.length") == 0 and page.context.cookies() == []  # this tab's session only
    assert PAGE_KEY not in page.content()  # not left in the page: the box was emptied

    page.fill("#texts", "My X server crashes when I resize an xterm")
    page.click("#submit")
    page.wait_for_selector(".result")
    assert page.locator(".bar-row").count() == 3
    assert sent[f"{keyed_server_url}/v1/classify"] == f"Bearer {PAGE_KEY}"

    # the server's key changed (or the stored one was wrong): a clear message, and the form again
    page.evaluate("sessionStorage.setItem('gpt2clf.apiKey', 'an-outdated-key')")
    page.click("#submit")
    expect(page.locator("#status")).to_contain_text("401")
    assert page.locator("#status").inner_text() == ("Could not classify: The server refused this API key "
                                                    "(401 Unauthorized). Enter the right key.")
    assert page.locator("#key-form").is_visible() and page.evaluate("sessionStorage.length") == 0
    # Chromium logs each 401 as a failed resource load; nothing else went wrong
    assert [p for p in page.problems if "status of 401" not in p] == []


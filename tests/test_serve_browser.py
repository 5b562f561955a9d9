"""The page of `imgcls serve`, used as a person would: the system Chromium, driven by Playwright, against a
real uvicorn server on loopback. Screenshots are kept in tests/artifacts/ to look at."""
from __future__ import annotations

import base64
import re
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; a browser is never downloaded
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).parent / "artifacts"
TIMEOUT_MS = 20_000

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no system Chromium at {CHROMIUM}")
expect = pytest.importorskip("playwright.sync_api").expect


@contextmanager
def running(app):
    """`app` under uvicorn on 127.0.0.1 at a port the OS picked; yields its URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound here and handed over: no race for a 'free' port
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def server(run_copy):
    """The app under uvicorn, stopped after the module."""
    from imgcls.serve.app import create_app

    with running(create_app(run_copy, device="cpu")) as url:
        yield url


@pytest.fixture(scope="module")
def strict_server(run_copy):
    """A server with small limits: 50 kB per request, 1 Mpx per image."""
    from imgcls.serve.app import create_app
    from imgcls.serve.config import ServeConfig

    with running(create_app(run_copy, ServeConfig(max_upload_mb=0.05, max_megapixels=1), device="cpu")) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def three(digits_dir):
    return sorted((digits_dir / "test" / "3").glob("*.png"))[0]


def open_page(browser, server, **context_options):
    page = browser.new_context(**context_options).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server)
    expect(page.locator("#model-summary")).to_contain_text("classes", timeout=TIMEOUT_MS)
    return page


def wait_for_answer(page):
    expect(page.locator("#prediction-label")).not_to_be_empty(timeout=TIMEOUT_MS)
    expect(page.locator("#results")).not_to_have_class(re.compile("busy"), timeout=TIMEOUT_MS)


def test_uploading_an_image_shows_the_label_bars_and_overlay(browser, server, three, trained_run):
    from imgcls.predict.predictor import Predictor

    expected = Predictor.load(trained_run.bundle_dir, device="cpu").predict([three])[0]
    page = open_page(browser, server, viewport={"width": 1280, "height": 900})
    page.set_input_files("#file-input", str(three))
    wait_for_answer(page)
    assert page.text_content("#prediction-label") == expected["labels"][0]
    bars = page.locator(".bar")
    assert bars.count() == 5
    assert bars.first.get_attribute("data-label") == expected["predictions"][0]["label"]
    assert bars.first.locator(".pct").text_content() == f"{100 * expected['predictions'][0]['score']:.1f}%"
    # a function, not an expression: the page's Content-Security-Policy forbids eval of strings
    page.wait_for_function("() => document.getElementById('overlay').naturalWidth > 0")
    expect(page.locator("#overlay-caption")).to_have_text(f"gradcam for “{expected['labels'][0]}” "
                                                          f"({100 * expected['predictions'][0]['score']:.1f}%)")
    thumbnails = page.locator("#similar img")
    expect(thumbnails).to_have_count(6)
    page.wait_for_function("() => [...document.querySelectorAll('#similar img')].every((img) => img.naturalWidth > 0)")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)
    assert page.is_hidden("#error")


def test_the_page_fits_a_phone_screen(browser, server, three):
    page = open_page(browser, server, viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
    page.set_input_files("#file-input", str(three))
    wait_for_answer(page)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    page.screenshot(path=str(ARTIFACTS / "serve-page-phone.png"), full_page=True)


@pytest.mark.parametrize("event", ["drop", "paste"])
def test_dropping_or_pasting_an_image_works_like_choosing_one(browser, server, three, event):
    page = open_page(browser, server)
    page.evaluate("""([kind, b64]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], `${kind}ped.png`, { type: "image/png" }));
        const target = kind === "drop" ? document.getElementById("drop") : document;
        const init = { bubbles: true, cancelable: true };
        target.dispatchEvent(kind === "drop" ? new DragEvent("drop", { ...init, dataTransfer: data })
                                             : new ClipboardEvent("paste", { ...init, clipboardData: data }));
    }""", [event, base64.b64encode(three.read_bytes()).decode()])
    wait_for_answer(page)
    assert page.text_content("#preview-name") == f"{event}ped.png" and page.locator(".bar").count() == 5


def test_a_file_that_is_not_an_image_shows_the_servers_message(browser, server):
    page = open_page(browser, server)
    page.set_input_files("#file-input", {"name": "notes.png", "mimeType": "image/png", "buffer": b"just text"})
    page.wait_for_selector("#error:not([hidden])")
    assert "not an image" in page.text_content("#error") and page.is_hidden("#results")


def test_before_any_upload_the_page_shows_the_classes_and_links_to_the_api(browser, server, trained_run):
    from imgcls.models.bundle import read_bundle_config

    classes = read_bundle_config(trained_run.bundle_dir).classes
    page = open_page(browser, server)
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    expect(page.locator("#classes li")).to_have_text(classes)
    assert page.is_visible("#classes") and page.is_hidden("#results")
    expect(page.locator("#limits")).to_contain_text("40 megapixels; up to 16 MB and 16 files per request")
    links = {page.locator("#api-links a").nth(i).text_content(): page.locator("#api-links a").nth(i).get_attribute("href")
             for i in range(page.locator("#api-links a").count())}
    assert set(links) == {"API docs", "/model", "/health", "/openapi.json"}
    for name, href in links.items():
        assert page.request.get(f"{server}/{href}").ok, name
    page.click("text=API docs")
    expect(page.locator("h2", has_text="/predict")).to_be_visible()
    assert page.url == f"{server}/docs" and "curl -F files=@photo.jpg" in page.text_content("body")
    assert all(url.startswith(server) for url in requests)  # the docs fetch nothing from a CDN


@pytest.mark.parametrize("name, mime, data, message", [
    ("notes.txt", "text/plain", b"shopping list", "'notes.txt' was sent as text/plain, not an image"),
    ("notes.png", "image/png", b"just text", "not an image"),
])
def test_a_file_that_is_not_an_image_shows_the_servers_message(browser, server, name, mime, data, message):
    page = open_page(browser, server)
    page.set_input_files("#file-input", {"name": name, "mimeType": mime, "buffer": data})
    page.wait_for_selector("#error:not([hidden])")
    assert message in page.text_content("#error") and page.is_hidden("#results")


def _png(image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_image_over_the_servers_limits_shows_its_message_not_a_generic_failure(browser, strict_server, three):
    import numpy as np
    from PIL import Image

    noise = _png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), np.uint8)))  # ~120 kB
    wide = _png(Image.new("L", (2000, 1000), 255))  # 2 Mpx in a few kB
    page = open_page(browser, strict_server)
    for name, data, message in (("noise.png", noise, "over the 0.05 MB limit; send a smaller image"),
                                ("wide.png", wide, "is 2000x1000 = 2.0 Mpx, over the 1 Mpx limit")):
        page.set_input_files("#file-input", {"name": name, "mimeType": "image/png", "buffer": data})
        expect(page.locator("#error")).to_contain_text(message)
        assert page.is_hidden("#results")
    page.set_input_files("#file-input", str(three))  # the page recovers: a good image is answered
    wait_for_answer(page)
    assert page.is_hidden("#error")

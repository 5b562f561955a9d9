"""The page of `imgcls serve`, used as a person would: the system Chromium, driven by Playwright, against a
real uvicorn server on loopback. Screenshots are kept in tests/artifacts/ to look at."""
from __future__ import annotations

import base64
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; a browser is never downloaded
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).parent / "artifacts"
TIMEOUT_MS = 20_000

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no system Chromium at {CHROMIUM}")
expect = pytest.importorskip("playwright.sync_api").expect


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    """The app under uvicorn on 127.0.0.1 at a port the OS picked, stopped after the module."""
    import uvicorn

    from imgcls.serve.app import create_app

    run = tmp_path_factory.mktemp("served")  # the server keeps its look-alike index beside the bundle
    shutil.copytree(trained_run.bundle_dir, run / "model")
    shutil.copy(trained_run.run_dir / "data.json", run / "data.json")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound here and handed over: no race for a 'free' port
    config = uvicorn.Config(create_app(run, device="cpu"), log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


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

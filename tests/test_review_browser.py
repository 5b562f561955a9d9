"""The review page of `imgcls audit --labels`: what the written file holds (tests that run everywhere), and the page
used as a person would in the system Chromium driven by Playwright, from file:// as a user opens it.
A screenshot is kept in tests/artifacts/ to look at."""
from __future__ import annotations

import base64
import csv
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from imgcls.clean.review import THUMBNAIL_SIDE_PX, write_review_page

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; a browser is never downloaded
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).parent / "artifacts"
TIMEOUT_MS = 20_000
HOSTILE_CLASS = "<script>alert(1)</script>"
ODD_NAME = 'g, "3".png'  # a comma and quotes: the CSV must quote it

needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no system Chromium at {CHROMIUM}")


def solid(path: Path, colour: str, size=(48, 48)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return str(path)


@pytest.fixture
def report(tmp_path):
    """An audit report over solid-colour images: two label issues, an outlier, and quality problems on one of the
    label issues (so it must merge into one card) and on a file that is not an image."""
    root = tmp_path / "data"
    red = [solid(root / "train" / "red" / f"r{i}.png", "red") for i in range(3)]
    green = [solid(root / "train" / "green" / f"g{i}.png", "green") for i in range(2)]
    odd = solid(root / "train" / "green" / ODD_NAME, "green")
    wide_blue = solid(root / "train" / "blue" / "b0.png", "blue", size=(300, 200))
    blue = solid(root / "train" / "blue" / "b1.png", "blue")
    broken = root / "val" / "blue" / "broken.jpg"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a jpeg at all")
    return {
        "root": str(root),
        "classes": ["red", "green", "blue", HOSTILE_CLASS],
        "label_issues": [
            {"path": odd, "split": "train", "given": "green", "suggested": "blue", "score": 0.81,
             "lookalikes": {"given": green, "suggested": [blue]}},
            {"path": red[0], "split": "train", "given": "red", "suggested": "green", "score": 0.93,
             "lookalikes": {"given": red[1:], "suggested": green}},
        ],
        "outliers": [{"path": wide_blue, "split": "train", "given": "blue", "score": 0.99,
                      "lookalikes": {"given": [blue]}}],
        "quality": [{"path": red[0], "split": "train", "given": "red", "problems": ["blurry", "dark"], "score": 0.8},
                    {"path": str(broken), "split": "val", "given": "blue", "problems": ["unreadable"], "score": 1.0}],
    }


def page_data(html: str) -> dict:
    blob = re.search(r'<script id="review-data" type="application/json">(.*?)</script>', html, re.S)
    return json.loads(blob.group(1))


# --- the written file -------------------------------------------------------------------------------------------


def test_cards_follow_label_issues_outliers_then_quality_and_an_image_in_two_lists_is_one_card(report, tmp_path):
    data = page_data(write_review_page(report, tmp_path / "review.html").read_text(encoding="utf-8"))
    assert [card["path"] for card in data["cards"]] == [
        "train/red/r0.png", f"train/green/{ODD_NAME}", "train/blue/b0.png", "val/blue/broken.jpg"]
    assert data["cards"][0]["reasons"] == ["label issue: looks like green (score 0.93)", "quality: blurry, dark"]
    assert data["cards"][2]["reasons"] == ["outlier (0.99)"] and data["not_shown"] == 0


def test_the_page_loads_nothing_from_a_network(report, tmp_path):
    html = write_review_page(report, tmp_path / "review.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "http://" not in html and "https://" not in html
    assert "default-src 'none'" in html  # the browser itself refuses anything the page might try to fetch


def test_every_thumbnail_is_a_small_embedded_jpeg(report, tmp_path):
    data = page_data(write_review_page(report, tmp_path / "review.html").read_text(encoding="utf-8"))
    uris = [uri for uri in data["images"] if uri is not None] + [data["placeholder"]]
    assert len(uris) == 9  # 8 distinct readable images, each once however many cards show it, and the placeholder
    for uri in uris:
        assert uri.startswith("data:image/jpeg;base64,")
        thumbnail = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
        assert max(thumbnail.size) <= THUMBNAIL_SIDE_PX
    wide = data["images"][data["cards"][2]["image"]]
    assert Image.open(io.BytesIO(base64.b64decode(wide.split(",", 1)[1]))).size == (128, 85)  # aspect kept


def test_a_hostile_class_name_is_data_never_markup(report, tmp_path):
    html = write_review_page(report, tmp_path / "review.html").read_text(encoding="utf-8")
    assert "<script>alert" not in html and "</script>alert" not in html
    assert html.count("<script") == 2  # the page's own JSON blob and script, nothing injected
    assert page_data(html)["classes"][-1] == HOSTILE_CLASS


def test_an_unreadable_image_still_gets_a_card_with_the_placeholder(report, tmp_path):
    data = page_data(write_review_page(report, tmp_path / "review.html").read_text(encoding="utf-8"))
    card = data["cards"][-1]
    assert card["path"] == "val/blue/broken.jpg" and card["reasons"] == ["quality: unreadable"]
    assert data["images"][card["image"]] is None and data["placeholder"].startswith("data:image/jpeg")


def test_the_page_is_written_atomically_over_an_old_one(report, tmp_path):
    target = tmp_path / "out" / "review.html"
    target.parent.mkdir()
    target.write_text("old page")
    assert write_review_page(report, target) == target
    assert sorted(path.name for path in target.parent.iterdir()) == ["review.html"]  # no temporary file left
    assert target.read_text(encoding="utf-8").startswith("<!doctype html>")


def test_max_items_caps_the_cards_and_counts_the_rest(report, tmp_path):
    data = page_data(write_review_page(report, tmp_path / "review.html", max_items=2).read_text(encoding="utf-8"))
    assert len(data["cards"]) == 2 and data["not_shown"] == 2
    with pytest.raises(ValueError, match="max_items must be 0 or more, got -1"):
        write_review_page(report, tmp_path / "review.html", max_items=-1)


# --- the page in a browser --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser, report, tmp_path, **context_options):
    """The written page opened from file://, failing the test on any script error or dialog (an injected alert)."""
    expect = pytest.importorskip("playwright.sync_api").expect
    url = write_review_page(report, tmp_path / "review.html").as_uri()
    page = browser.new_context(**context_options).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    problems = []
    page.on("pageerror", lambda err: problems.append(f"script error: {err}"))
    page.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    page.goto(url)
    expect(page.locator(".card")).to_have_count(4)
    return page, problems


def saved_csv(page, tmp_path) -> list[dict]:
    with page.expect_download() as download:
        page.click("#save")
    assert download.value.suggested_filename == "decisions.csv"
    saved = tmp_path / "decisions.csv"
    download.value.save_as(saved)
    with open(saved, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@needs_chromium
def test_relabel_by_click_and_drop_by_key_are_saved_as_csv_and_survive_a_reload(browser, report, tmp_path):
    expect = pytest.importorskip("playwright.sync_api").expect
    page, problems = open_page(browser, report, tmp_path, viewport={"width": 1200, "height": 900})
    cards = page.locator(".card")
    first, second = cards.nth(0), cards.nth(1)
    expect(first).to_have_class(re.compile(r"\bcurrent\b"))
    expect(first.locator(".reasons li")).to_have_text(["label issue: looks like green (score 0.93)",
                                                       "quality: blurry, dark"])
    expect(first.locator(".row-label")).to_have_text(["given: red", "suggested: green"])
    expect(first.locator("select.label option")).to_have_text(["red", "green", "blue", HOSTILE_CLASS])
    expect(first.locator("select.label")).to_have_value("green")  # the suggested class by default

    first.locator("select.label").select_option("blue")
    first.locator(".relabel").click()
    expect(second).to_have_class(re.compile(r"\bcurrent\b"))  # a decision moves on to the next card
    page.keyboard.press("d")
    expect(first).to_have_class(re.compile(r"\bdecided-relabel\b"))
    expect(second).to_have_class(re.compile(r"\bdecided-drop\b"))
    expect(page.locator("#counter")).to_have_text("2 of 4 decided")
    assert saved_csv(page, tmp_path) == [
        {"path": "train/red/r0.png", "action": "relabel", "label": "blue"},
        {"path": f"train/green/{ODD_NAME}", "action": "drop", "label": ""},
    ]

    page.reload()
    expect(page.locator("#counter")).to_have_text("2 of 4 decided")
    expect(first).to_have_class(re.compile(r"\bdecided-relabel\b"))
    expect(first.locator(".decision")).to_have_text("relabel → blue")
    expect(second).to_have_class(re.compile(r"\bdecided-drop\b"))
    expect(cards.nth(3).locator(".unreadable")).to_be_visible()  # the broken file's card, with its grey square
    expect(cards.nth(2)).to_have_class(re.compile(r"\bcurrent\b"))  # back at the first undecided card
    assert page.evaluate("() => [...document.images].every((img) => img.src.startsWith('data:') && img.naturalWidth > 0)")
    ARTIFACTS.mkdir(exist_ok=True)
    page.evaluate("() => window.scrollTo(0, 0)")  # the sticky header would otherwise land mid-screenshot
    page.screenshot(path=str(ARTIFACTS / "review-page.png"), full_page=True)
    assert problems == []


@needs_chromium
def test_keys_move_between_cards_undo_and_stay_out_of_the_select_on_a_phone_sized_page(browser, report, tmp_path):
    expect = pytest.importorskip("playwright.sync_api").expect
    page, problems = open_page(browser, report, tmp_path, viewport={"width": 390, "height": 844}, is_mobile=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # fits a phone: no sideways scrolling
    cards = page.locator(".card")
    page.keyboard.press("j")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowUp")
    expect(cards.nth(1)).to_have_class(re.compile(r"\bcurrent\b"))
    page.keyboard.press("k")
    expect(cards.nth(1)).to_have_class(re.compile(r"\bdecided-keep\b"))
    page.keyboard.press("u")  # on the next, undecided card: takes back the decision just made
    expect(cards.nth(1)).not_to_have_class(re.compile(r"\bdecided-"))
    expect(cards.nth(1)).to_have_class(re.compile(r"\bcurrent\b"))
    cards.nth(1).locator("select.label").focus()
    page.keyboard.press("d")  # typed into the select: no decision
    expect(page.locator("#counter")).to_have_text("0 of 4 decided")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "review-page-phone.png"))
    assert saved_csv(page, tmp_path) == [] and problems == []

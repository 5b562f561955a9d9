"""Open a run's report.html in headless Chromium (Debian's package) as a person would: count images that
failed to load, check every section is visible, and keep a full-page screenshot.

    python bench/report_check.py RUN_DIR/report.html bench/results/report.png
"""
from __future__ import annotations

import sys

from playwright.sync_api import sync_playwright

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SECTIONS = ("audit", "curves", "confusion", "report", "confused-pairs", "mistakes", "calibration", "correct")


def main(report: str, screenshot: str) -> int:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        page.goto(f"file://{report}", wait_until="load")
        loaded = page.evaluate("Array.from(document.images, i => i.complete && i.naturalWidth > 0)")
        missing = [s for s in SECTIONS if not page.is_visible(f"section#{s}")]
        page.screenshot(path=screenshot, full_page=True)
        browser.close()
    print(f"{len(loaded)} images, {loaded.count(False)} not loaded; sections missing: {missing or 'none'}; screenshot {screenshot}")
    return 1 if missing or not all(loaded) else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))

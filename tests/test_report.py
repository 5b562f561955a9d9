"""report.html of a real training run (digits): every section, every image embedded, and what a
person sees when the page is opened in a browser."""
from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from imgcls.cli.main import main
from imgcls.errors import ImgclsError
from imgcls.explain.report import MISTAKES_SHOWN, write_report

SECTIONS = ("audit", "curves", "confusion", "report", "confused-pairs", "mistakes", "suspect-labels", "calibration", "correct")
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def report(trained_run, tmp_path_factory) -> Path:
    return write_report(trained_run.run_dir, tmp_path_factory.mktemp("report") / "report.html")


def _section(html: str, section_id: str) -> str:
    return re.search(rf'<section id="{section_id}">(.*?)</section>', html, re.S).group(1)


def test_report_has_every_section_in_order(report):
    html = report.read_text(encoding="utf-8")
    positions = [html.find(f'<section id="{s}">') for s in SECTIONS]
    assert -1 not in positions and positions == sorted(positions)


def test_every_image_is_an_embedded_png_and_nothing_is_fetched(report):
    html = report.read_text(encoding="utf-8")
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) >= 4 + MISTAKES_SHOWN  # curves, confusion, reliability, mistakes, correct samples
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))).verify()
    assert not re.search(r'(src|href)="(https?:)?//', html) and "<script" not in html


def test_mistakes_are_the_validation_images_whose_true_class_scored_lowest(report, trained_run):
    with open(trained_run.run_dir / "evaluation" / "predictions.csv", newline="") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda row: float(row["true_score"]))[:MISTAKES_SHOWN]
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", _section(report.read_text(encoding="utf-8"), "mistakes"))
    assert [caption.split(":")[0] for caption in captions] == [Path(row["path"]).name for row in rows]
    assert all(f"true {row['true']}, predicted {row['predicted']}" in caption for caption, row in zip(captions, rows))


def test_suspect_labels_are_validation_images_another_class_claims_as_surely_as_its_own(report, trained_run):
    with open(trained_run.run_dir / "evaluation" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    own = {name: [float(r["true_score"]) for r in rows if r["true"] == name] for name in {r["true"] for r in rows}}
    claimed = [r for r in rows if r["predicted"] != r["true"]
               and float(r["score"]) >= sum(own[r["predicted"]]) / len(own[r["predicted"]])]
    claimed.sort(key=lambda r: float(r["true_score"]) - float(r["score"]))  # the widest margin first
    section = _section(report.read_text(encoding="utf-8"), "suspect-labels")
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", section)
    assert [caption.split(":")[0] for caption in captions] == [Path(r["path"]).name for r in claimed[:6]]
    assert f"{len(claimed)} of {len(rows)} validation images" in section or not claimed
    assert "imgcls audit" in section and "--labels" in section


def test_audit_metrics_and_calibration_numbers_come_from_the_run(report, trained_run):
    html = report.read_text(encoding="utf-8")
    metrics = json.loads((trained_run.run_dir / "evaluation" / "metrics.json").read_text())
    assert f"{metrics['accuracy']:.3f}" in _section(html, "report")
    assert f"{metrics['ece']:.3f}" in _section(html, "calibration")
    audit = _section(html, "audit")
    assert "corrupt files" in audit and "leakage" in audit and "<td>train</td>" not in audit
    assert all(f"<td>{digit}</td>" in audit for digit in range(10))


def test_a_missing_data_folder_is_said_in_the_audit_section(trained_run, tmp_path):
    run = shutil.copytree(trained_run.run_dir, tmp_path / "run")
    summary = json.loads((run / "data.json").read_text())
    (run / "data.json").write_text(json.dumps({**summary, "data_dir": str(tmp_path / "gone")}))
    html = write_report(run).read_text(encoding="utf-8")
    assert "is not available here, so it was not audited" in _section(html, "audit")
    assert (run / "report.html").is_file()


def test_a_folder_that_is_not_a_finished_run_is_refused(tmp_path):
    with pytest.raises(ImgclsError, match="has no evaluation/metrics.json"):
        write_report(tmp_path)


def test_cli_report_writes_the_page_and_prints_its_path(capsys, trained_run, tmp_path):
    out = tmp_path / "page.html"
    code = main(["report", str(trained_run.run_dir), "--out", str(out)])
    assert code == 0 and capsys.readouterr().out.strip() == str(out) and out.stat().st_size > 10_000


def test_report_opens_in_chromium_with_every_image_loaded_and_every_section_shown(report, tmp_path):
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is not installed (Debian package 'chromium')")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})  # a laptop screen
            requests = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(report.as_uri(), wait_until="load")
            images = page.evaluate("Array.from(document.images, i => [i.complete, i.naturalWidth, i.alt])")
            visible = {s: page.is_visible(f"section#{s}") for s in SECTIONS}
            widest = page.evaluate("document.documentElement.scrollWidth")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert images and all(complete and width > 0 for complete, width, _ in images), images
    assert all(visible.values()), visible
    assert widest <= 1366  # no sideways scrolling on a laptop
    assert all(url.startswith(("file:", "data:")) for url in requests)

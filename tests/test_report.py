"""report.html of a real training run (digits): every section, every image embedded, and what a
person sees when the page is opened in a browser."""
from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
from html import escape, unescape
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from imgcls.cli.main import main
from imgcls.data.digits import write_digits_folder
from imgcls.errors import ImgclsError
from imgcls.evaluate.metrics import reliability_bins
from imgcls.evaluate.plots import MIN_BIN_IMAGES, SPARSE_FILL, reliability_figure
from imgcls.report.builder import MISTAKES_SHOWN, report_run

SECTIONS = ("summary", "audit", "curves", "confusion", "report", "confused-pairs", "mistakes", "suspect-labels", "calibration", "correct")
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def report(trained_run) -> Path:
    """The page training wrote, from what it held in memory."""
    return trained_run.run_dir / "report.html"


def _section(html: str, section_id: str) -> str:
    return re.search(rf'<section id="{section_id}">(.*?)</section>', html, re.S).group(1)


def _file_names(section: str) -> list[str]:
    """The file name each tile of a gallery is captioned with."""
    return [unescape(name) for name in re.findall(r'<span class="file" title="([^"]*)">', section)]


def _predictions(run_dir: Path) -> list[dict]:
    with open(run_dir / "evaluation" / "predictions.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _write_predictions(run_dir: Path, rows: list[dict]) -> None:
    with open(run_dir / "evaluation" / "predictions.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_report_has_every_section_in_order(report):
    html = report.read_text(encoding="utf-8")
    positions = [html.find(f'<section id="{s}">') for s in SECTIONS]
    assert -1 not in positions and positions == sorted(positions)


def test_every_image_is_an_embedded_png_and_nothing_is_fetched(report):
    html = report.read_text(encoding="utf-8")
    sources = re.findall(r'<img src="([^"]+)"', html)
    tiles = html.count('<figure class="tile">')  # mistakes, suspect labels, correct samples
    assert tiles and len(sources) == 3 + tiles  # + curves, confusion, reliability
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))).verify()
    assert not re.search(r'(src|href)="(https?:)?//', html) and "<script" not in html


def test_summary_opens_the_report_with_task_accuracy_data_and_model(report, trained_run):
    html = report.read_text(encoding="utf-8")
    summary = _section(html, "summary")
    metrics = json.loads((trained_run.run_dir / "evaluation" / "metrics.json").read_text())
    data = json.loads((trained_run.run_dir / "data.json").read_text())
    assert html.find('<section id="summary">') < html.find('<section id="audit">')
    assert "single-label" in summary and f"<b>{metrics['accuracy']:.3f}</b>accuracy" in summary
    assert all(f"<b>{v:.3f}</b>top-{k} accuracy" in summary for k, v in metrics["top_k_accuracy"].items())
    assert escape(data["data_dir"]) in summary and "10: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in summary
    sizes = {split: sum(per_class.values()) for split, per_class in data["counts"].items()}
    assert f"train {sizes['train']}, validation {sizes['validation']}, test {sizes['test']}" in summary
    assert "cnn-bn at 32 px" in summary and "<dd>scratch</dd>" in summary and "none (random initialisation)" in summary
    assert "<dt>training time</dt>" in summary


def _with_bundle_config(trained_run, folder: Path, **fields) -> Path:
    """A copy of the run whose model/config.json has `fields` (None: removed)."""
    run = shutil.copytree(trained_run.run_dir, folder)
    config = json.loads((run / "model" / "config.json").read_text())
    config = {key: value for key, value in {**config, **fields}.items() if not (key in fields and value is None)}
    (run / "model" / "config.json").write_text(json.dumps(config))
    return run


def test_summary_shows_the_settings_and_wall_time_the_bundle_stores(trained_run, tmp_path):
    settings = {"model": "cnn-bn", "epochs": 3, "batch_size": 32, "lr": 0.002, "augment": "standard",
                "weights": None, "compile": False}
    run = _with_bundle_config(trained_run, tmp_path / "run", settings=settings, wall_time_s=83.4)
    summary = _section(report_run(run).read_text(encoding="utf-8"), "summary")
    assert "1 min 23 s from start to saved model, 3 epochs" in summary
    assert "<dt>lr</dt><dd>0.002</dd>" in summary and "<dt>batch_size</dt><dd>32</dd>" in summary
    assert "<summary>the other 2 settings</summary>" in summary and "<dt>weights</dt><dd>null</dd>" in summary


def test_a_bundle_without_settings_or_wall_time_gets_the_epoch_times_and_says_what_is_missing(trained_run, tmp_path):
    run = _with_bundle_config(trained_run, tmp_path / "run", settings=None, wall_time_s=None)
    summary = _section(report_run(run).read_text(encoding="utf-8"), "summary")
    with open(run / "history.csv", newline="") as handle:
        seconds = [float(row["seconds"]) for row in csv.DictReader(handle)]
    assert f"{sum(seconds):.1f} s in {len(seconds)} epochs (the sum of the epoch times in history.csv" in summary
    assert "does not store the settings" in summary and "seed 0" in summary  # said, not silently left out


def test_worst_mistakes_are_wrong_predictions_whose_true_class_scored_lowest(report, trained_run):
    rows = _predictions(trained_run.run_dir)
    wrong = sorted((r for r in rows if r["predicted"] != r["true"]), key=lambda r: float(r["true_score"]))
    section = _section(report.read_text(encoding="utf-8"), "mistakes")
    assert wrong, "the fixture's 3-epoch model should still make a few mistakes"
    assert _file_names(section) == [Path(r["path"]).name for r in wrong[:MISTAKES_SHOWN]]
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", section)
    assert all(f"true {r['true']}, predicted {r['predicted']} (" in c for c, r in zip(captions, wrong))
    which = f"all {len(wrong)}" if len(wrong) <= MISTAKES_SHOWN else f"the {MISTAKES_SHOWN} worst of {len(wrong)}"
    assert which in section


def test_a_run_without_mistakes_says_so_and_shows_no_correct_image_as_one(trained_run, tmp_path):
    run = shutil.copytree(trained_run.run_dir, tmp_path / "run")
    rows = _predictions(run)
    _write_predictions(run, [{**r, "predicted": r["true"], "score": r["true_score"]} for r in rows])
    section = _section(report_run(run).read_text(encoding="utf-8"), "mistakes")
    assert f"No mistakes: the predicted class of every one of the {len(rows)} validation images" in section
    assert "<figure" not in section


def test_suspect_labels_are_validation_images_another_class_claims_as_surely_as_its_own(report, trained_run):
    with open(trained_run.run_dir / "evaluation" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    own = {name: [float(r["true_score"]) for r in rows if r["true"] == name] for name in {r["true"] for r in rows}}
    claimed = [r for r in rows if r["predicted"] != r["true"]
               and float(r["score"]) >= sum(own[r["predicted"]]) / len(own[r["predicted"]])]
    claimed.sort(key=lambda r: float(r["true_score"]) - float(r["score"]))  # the widest margin first
    section = _section(report.read_text(encoding="utf-8"), "suspect-labels")
    assert _file_names(section) == [Path(r["path"]).name for r in claimed[:6]]
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
    html = report_run(run).read_text(encoding="utf-8")
    assert "is not available here, so it was not audited" in _section(html, "audit")
    assert (run / "report.html").is_file()


def test_a_folder_that_is_not_a_finished_run_is_refused(tmp_path):
    with pytest.raises(ImgclsError, match="has no evaluation/metrics.json"):
        report_run(tmp_path)


def test_cli_report_writes_the_page_and_prints_its_path(capsys, trained_run, tmp_path):
    out = tmp_path / "page.html"
    code = main(["report", str(trained_run.run_dir), "--out", str(out)])
    assert code == 0 and capsys.readouterr().out.strip() == str(out) and out.stat().st_size > 10_000


def test_the_report_rebuilt_from_the_run_folder_says_what_the_one_training_wrote(report, trained_run, tmp_path):
    rebuilt = report_run(trained_run.run_dir, tmp_path / "page.html").read_text(encoding="utf-8")
    written = report.read_text(encoding="utf-8")
    for section in ("summary", "audit", "report", "confused-pairs", "calibration"):
        assert _section(rebuilt, section) == _section(written, section), section
    for section in ("mistakes", "suspect-labels", "correct"):  # the same images, in the same order
        assert _file_names(_section(rebuilt, section)) == _file_names(_section(written, section)), section


def _in_chromium(page_path: Path, viewport: dict, measure: str, screenshot: Path):
    """Open the page in the system Chromium, record every request, and return (measure's result, requests)."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is not installed (Debian package 'chromium')")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=viewport)
            requests = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(page_path.as_uri(), wait_until="load")
            result = page.evaluate(measure)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return result, requests


def test_report_opens_in_chromium_with_every_image_loaded_and_every_section_shown(report, tmp_path):
    measure = """() => ({
        images: Array.from(document.images, (i) => [i.complete, i.naturalWidth]),
        hidden: %s.filter((id) => !document.getElementById(id).checkVisibility()),
        widest: document.documentElement.scrollWidth })""" % json.dumps(SECTIONS)
    seen, requests = _in_chromium(report, {"width": 1366, "height": 900}, measure, tmp_path / "report.png")  # a laptop
    assert seen["images"] and all(complete and width > 0 for complete, width in seen["images"]), seen["images"]
    assert seen["hidden"] == []
    assert seen["widest"] <= 1366  # no sideways scrolling on a laptop
    assert all(url.startswith(("file:", "data:")) for url in requests)


TILE_MEASURE = """() => Array.from(document.querySelectorAll("figure.tile"), (tile) => {
    const image = tile.querySelector("img"), name = tile.querySelector(".file");
    return { shrunk: image.width / image.naturalWidth, nameFits: name.scrollWidth <= name.clientWidth,
             inside: tile.getBoundingClientRect().right <= document.documentElement.clientWidth,
             fontPx: parseFloat(getComputedStyle(name).fontSize), hover: name.title }; })"""


@pytest.mark.parametrize("width", [1366, 390])  # a laptop and a phone
def test_tile_captions_stay_readable_and_long_file_names_are_shortened_not_spilled(trained_run, tmp_path, width):
    run = shutil.copytree(trained_run.run_dir, tmp_path / "run")
    rows = _predictions(run)
    wrong = min((r for r in rows if r["predicted"] != r["true"]), key=lambda r: float(r["true_score"]))
    long_name = "scraped_" + "very_long_descriptive_file_name_" * 5 + "0001.png"
    shutil.copy(wrong["path"], tmp_path / long_name)
    _write_predictions(run, [{**r, "path": str(tmp_path / long_name)} if r is wrong else r for r in rows])
    tiles, _ = _in_chromium(report_run(run), {"width": width, "height": 900}, TILE_MEASURE,
                            tmp_path / f"tiles-{width}.png")
    assert tiles and all(tile["inside"] and tile["fontPx"] >= 14 for tile in tiles)
    assert long_name in [tile["hover"] for tile in tiles]  # the whole name on hover ...
    assert [tile["nameFits"] for tile in tiles].count(False) >= 1  # ... and an ellipsis, not a spill, on the page
    if width > 1000:  # the panels' own captions are drawn at their size, not shrunk below it
        assert all(tile["shrunk"] >= 0.99 for tile in tiles)


# --- what the report shows: the reliability figure, and the demo data it audits -----------------

def test_reliability_diagram_pales_bins_with_too_few_images_and_says_how_many():
    rng = np.random.default_rng(0)
    probs = np.concatenate([np.tile([0.97, 0.01, 0.01, 0.01], (60, 1)),  # a well-filled top bin
                            np.tile([0.55, 0.15, 0.15, 0.15], (3, 1)), np.tile([0.35, 0.3, 0.2, 0.15], (1, 1))])
    bins = reliability_bins(rng.integers(0, 4, len(probs)), probs)
    sparse = [i for i, n in enumerate(bins["count"]) if 0 < n < MIN_BIN_IMAGES]
    top = reliability_figure(bins).axes[0]
    legend = [text.get_text() for text in top.get_legend().get_texts()]
    assert f"under {MIN_BIN_IMAGES} images, too few to judge (2 bins, 4 images)" in legend
    pale = [bar for bar in top.patches if bar.get_facecolor()[:3] == to_rgb(SPARSE_FILL)]
    assert sorted(round(bar.get_x(), 6) for bar in pale) == [round(bins["bin_edges"][i], 6) for i in sparse]
    hatched = [bar for bar in top.patches if bar.get_hatch()]  # the gap to confidence, only where it means something
    assert len(hatched) == 1


def test_the_demo_data_holds_no_image_twice_so_nothing_leaks(capsys, tmp_path):
    root = write_digits_folder(tmp_path / "digits")
    assert main(["audit", str(root), "--format", "json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["exact_duplicates"] == [] and found["leakage"] == 0
    assert not [w for w in found["warnings"] if "leakage" in w or "duplicate" in w]
    per_split = {split: sum(per_class.values()) for split, per_class in found["counts"].items()}
    assert per_split["train"] > 1150 and min(per_split.values()) > 240  # the whole dataset, less 74 near copies


def test_per_class_caps_each_digit_over_all_splits(tmp_path):
    root = write_digits_folder(tmp_path / "digits", per_class=30)
    for digit in range(10):
        files = [path.name for split in ("train", "validation", "test")
                 for path in (root / split / str(digit)).glob("*.png")]
        assert len(files) == len(set(files)) == 30

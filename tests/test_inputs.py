"""Every named input is accounted for, and decoding one is bounded: huge images, broken and looping links,
files without read permission, classes that cannot be read, labels CSV rows, and --resume from elsewhere."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imgcls.data.images as images
from conftest import FAST_CONFIG
from imgcls.cli.main import main
from imgcls.data.audit import find_leakage
from imgcls.data.folders import discover, find_inputs
from imgcls.data.images import decode_image
from imgcls.errors import ImgclsError
from imgcls.train.config import TrainConfig
from imgcls.train.run import train


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _unreadable(path: Path) -> Path:
    """chmod 000, or skip the test where that does not stop reading (root reads anything)."""
    path.chmod(0)
    if os.access(path, os.R_OK):
        path.chmod(0o644)
        pytest.skip("running as root: a chmod 000 file stays readable")
    return path


def _dangling(path: Path) -> Path:
    path.symlink_to(path.parent / "gone.png")
    return path


def _loop(path: Path) -> Path:
    path.symlink_to(path.name)
    return path


def _smooth(width: int, height: int, seed: int = 0) -> Image.Image:
    """Photo-like RGB: random colours blended over a few dozen pixels, plus a little grain."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8))
    pixels = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.int16)
    grain = rng.integers(-8, 9, pixels.shape)
    return Image.fromarray(np.clip(pixels + grain, 0, 255).astype(np.uint8))


def _class_folders(root: Path, classes=("cat", "dog"), per_class: int = 6) -> Path:
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            _smooth(48, 40, seed=100 * index + i).save(root / name / f"{i:02d}.png")
    return root


# --- pixels are bounded ----------------------------------------------------------------------

PEAK_SCRIPT = textwrap.dedent("""
    import re, sys
    import numpy as np
    from imgcls.data.images import decode_image

    def peak_mb():
        return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) / 1024

    decode_image(np.zeros((64, 64, 3), np.uint8), 32)  # torch's resize kernels, loaded before the baseline
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # the peak resident memory starts again from here
    before = peak_mb()
    pixels = decode_image(sys.argv[1], 224)
    print(peak_mb() - before, pixels[:, :100].mean(), pixels[:, 124:].mean())
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="measures peak memory the Linux way")
def test_a_huge_png_decodes_to_the_model_size_without_full_size_copies(tmp_path):
    # 81 Mpx in 30 KB, under the bomb limit: its RGB copies took 850 MB; now the 1-bit decode itself (81 MB) dominates.
    image = Image.new("1", (9000, 9000), 1)
    image.paste(0, (0, 0, 4500, 9000))  # left half black
    image.save(tmp_path / "huge.png")
    assert (tmp_path / "huge.png").stat().st_size < 50_000  # tiny on disk, huge in memory

    # A fresh process, so that its peak resident memory is this decode's alone.
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(tmp_path / "huge.png")],
                         capture_output=True, text=True, check=True).stdout.split()
    peak_mb, left, right = map(float, out)

    assert peak_mb < 200, f"decoding took {peak_mb:.0f} MB"
    assert left == 0 and right == 255


@pytest.mark.parametrize("mode", ["RGB", "1", "P", "RGBA", "LA", "I;16"])
def test_a_shrunk_decode_shows_the_same_picture_as_a_full_one(tmp_path, mode, monkeypatch):
    source = _smooth(1200, 900)
    image = source.convert(mode) if mode != "I;16" else Image.fromarray(np.asarray(source.convert("L"), np.uint16) * 257)
    if mode in ("RGBA", "LA"):
        image.putalpha(Image.fromarray(np.linspace(0, 255, 1200, dtype=np.uint8)[None].repeat(900, 0)))
    path = tmp_path / f"big {mode.replace(';', '')}.png"
    image.save(path)

    shrunk = decode_image(path, 64)  # 900 px >= 4 x 64: box-averaged down by 7 first
    monkeypatch.setattr(images, "SHRINK_FROM", 10**9)
    full = decode_image(path, 64)

    difference = np.abs(shrunk.astype(int) - full)
    assert shrunk.shape == full.shape == (64, 64, 3)
    assert difference.mean() < 1.0 and difference.max() <= 12


def test_strips_do_not_change_the_shrunk_picture(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    _smooth(1000, 700).convert("P").save(path)
    whole = decode_image(path, 48)
    monkeypatch.setattr(images, "STRIP_ROWS", 5)  # one strip per 7 rows: factor 7 (700 // 96)

    np.testing.assert_array_equal(decode_image(path, 48), whole)


# --- every named input is accounted for ------------------------------------------------------

def test_inputs_keep_broken_links_and_say_which_were_named(tmp_path):
    folder = _class_folders(tmp_path / "photos", classes=("shots",), per_class=2)
    _dangling(folder / "shots" / "broken.png")
    _loop(folder / "shots" / "loop.png")
    named = _dangling(tmp_path / "named-broken.jpg")

    inputs = find_inputs([str(named), str(folder), str(folder / "shots" / "00.png"), str(tmp_path / "photos/*/loop.png")])

    by_name = {entry.path.name: entry.named for entry in inputs}
    assert by_name == {"named-broken.jpg": True, "00.png": True, "01.png": False, "broken.png": False, "loop.png": True}


def test_predict_gives_each_named_broken_link_a_row_with_its_error_and_exits_1(capsys, trained_run, digits_dir, tmp_path):
    good = shutil.copy(next((digits_dir / "predict").glob("*.png")), tmp_path / "a.png")
    dangling, loop = _dangling(tmp_path / "dangling-link.jpg"), _loop(tmp_path / "loop-link.jpg")

    code, out, err = run_cli(capsys, "predict", trained_run.run_dir, good, dangling, loop, "--format", "json")

    rows = {Path(r["path"]).name: r for r in json.loads(out)}
    assert code == 1 and list(rows) == ["a.png", "dangling-link.jpg", "loop-link.jpg"]
    assert rows["a.png"]["error"] is None and rows["a.png"]["predictions"]
    assert "broken symbolic link" in rows["dangling-link.jpg"]["error"] and "gone.png" in rows["dangling-link.jpg"]["error"]
    assert "symbolic link loop" in rows["loop-link.jpg"]["error"]
    assert "2 of 3 images could not be read (2 named on the command line)" in err


def test_predict_gives_a_named_unreadable_file_a_table_line_and_exits_1(capsys, trained_run, digits_dir, tmp_path):
    good = shutil.copy(next((digits_dir / "predict").glob("*.png")), tmp_path / "a.png")
    locked = _unreadable(Path(shutil.copy(good, tmp_path / "unreadable.jpg")))

    code, out, _ = run_cli(capsys, "predict", trained_run.run_dir, good, locked)

    assert code == 1
    assert any("unreadable.jpg" in line and "error: cannot read" in line and "Permission denied" in line
               for line in out.splitlines())


def test_predict_exits_0_when_every_named_file_is_read(capsys, trained_run, digits_dir):
    named = sorted((digits_dir / "predict").glob("*.png"))[:2]
    code, out, _ = run_cli(capsys, "predict", trained_run.run_dir, *named, "--format", "json")
    assert code == 0 and [r["error"] for r in json.loads(out)] == [None, None]


def test_predict_lists_a_folders_unreadable_files_as_error_rows_and_exits_1(capsys, trained_run, digits_dir, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for image in sorted((digits_dir / "predict").glob("*.png"))[:2]:
        shutil.copy(image, folder / image.name)
    _dangling(folder / "broken.png")
    _loop(folder / "loop.png")

    code, out, err = run_cli(capsys, "predict", trained_run.run_dir, folder, "--format", "json")

    errors = {Path(r["path"]).name: r["error"] for r in json.loads(out)}
    assert code == 1, "the readable images get their rows, and the exit status says some could not be read"
    assert len(errors) == 4 and sum(e is None for e in errors.values()) == 2
    assert "broken symbolic link" in errors["broken.png"] and "symbolic link loop" in errors["loop.png"]
    assert "2 of 4 images could not be read" in err and "named" not in err


def test_audit_lists_broken_links_and_unreadable_files_with_the_corrupt_ones(capsys, tmp_path):
    root = _class_folders(tmp_path / "data")
    _dangling(root / "cat" / "broken.png")
    _unreadable(root / "dog" / "00.png")

    code, out, _ = run_cli(capsys, "audit", root, "--format", "json")

    reasons = {Path(item["path"]).name: item["reason"] for item in json.loads(out)["corrupt"]}
    assert code == 0 and set(reasons) == {"broken.png", "00.png"}
    assert "broken symbolic link" in reasons["broken.png"] and "Permission denied" in reasons["00.png"]


# --- training skips what it cannot read --------------------------------------------------------

@pytest.fixture
def digits_copy(digits_dir, tmp_path) -> Path:
    return Path(shutil.copytree(digits_dir, tmp_path / "digits"))


def test_the_leakage_check_passes_over_an_unreadable_file(tmp_path):
    root = _class_folders(tmp_path / "data")
    _unreadable(root / "cat" / "00.png")
    assert find_leakage(discover(root, seed=0)) == []


def test_train_skips_unreadable_and_broken_training_files_and_reports_them(digits_copy, tmp_path):
    locked = _unreadable(sorted((digits_copy / "train" / "3").glob("*.png"))[0])
    broken = _dangling(digits_copy / "train" / "4" / "broken.png")

    result = train(digits_copy, tmp_path / "run", TrainConfig.from_options(**{**FAST_CONFIG, "epochs": 1}), progress=False)

    skipped = {Path(item["path"]).name: item["reason"] for item in result.skipped}
    assert "Permission denied" in skipped[locked.name] and "broken symbolic link" in skipped[broken.name]
    summary = json.loads((result.run_dir / "data.json").read_text())
    assert {Path(item["path"]).name for item in summary["skipped"]} == {locked.name, broken.name}


def test_a_class_with_no_readable_training_image_stops_training_naming_it(digits_copy, tmp_path):
    for image in (digits_copy / "train" / "3").glob("*.png"):
        image.unlink()
        _dangling(image)

    with pytest.raises(ImgclsError, match=r"no training image of class '3' could be read \(\d+ files, e\.g\. .*train/3/.*broken symbolic link"):
        train(digits_copy, tmp_path / "run", TrainConfig.from_options(**{**FAST_CONFIG, "epochs": 1}), progress=False)


def test_resume_finds_the_data_from_another_working_directory(capsys, digits_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(digits_dir.parent)
    train(digits_dir.name, tmp_path / "run", TrainConfig.from_options(**{**FAST_CONFIG, "epochs": 1}), progress=False)
    assert json.loads((tmp_path / "run/data.json").read_text())["data_dir"] == str(digits_dir.resolve())

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, out, err = run_cli(capsys, "train", "--resume", tmp_path / "run", "--no-progress")

    assert code == 0, err
    assert "accuracy" in out


# --- labels CSV rows -------------------------------------------------------------------------

def _labels_csv(root: Path, *rows: str) -> Path:
    _class_folders(root / "pool", classes=("a",), per_class=4)
    path = root / "labels.csv"
    path.write_text("\n".join(["path,labels", *rows]) + "\n")
    return path


@pytest.mark.parametrize("labels", ["cat;;dog", "cat;", ";cat", " ; "])
def test_an_empty_label_name_is_an_error_naming_the_line(tmp_path, labels):
    csv_path = _labels_csv(tmp_path, "pool/a/00.png,cat", "pool/a/01.png,dog", f'pool/a/02.png,"{labels}"')

    with pytest.raises(ImgclsError, match=rf"labels\.csv:4: empty label in '{labels}'"):
        discover(tmp_path, labels_csv=csv_path)


def test_an_empty_labels_cell_is_an_image_of_none_of_the_classes(tmp_path):
    csv_path = _labels_csv(tmp_path, "pool/a/00.png,cat", "pool/a/01.png,dog", "pool/a/02.png,", "pool/a/03.png,cat;dog")
    dataset = discover(tmp_path, labels_csv=csv_path)
    labels = {s.path.name: s.labels for split in dataset.splits.values() for s in split}
    assert labels["02.png"] == () and labels["03.png"] == (0, 1)


@pytest.mark.parametrize("row, message", [
    ("pool/a/02.png", "no labels field"),
    ("pool/a/02.png,cat,dog", "more fields than the header names; separate labels with ';'"),
])
def test_a_row_without_its_labels_field_or_with_extra_fields_is_an_error(tmp_path, row, message):
    csv_path = _labels_csv(tmp_path, "pool/a/00.png,cat", "pool/a/01.png,dog", row)
    with pytest.raises(ImgclsError, match=rf"labels\.csv:4: {message}"):
        discover(tmp_path, labels_csv=csv_path)


@pytest.mark.parametrize("outside", ["../elsewhere.png", "ABSOLUTE"])
def test_an_image_outside_the_data_folder_is_refused_naming_the_line(tmp_path, outside):
    elsewhere = tmp_path / "elsewhere.png"
    _smooth(48, 40).save(elsewhere)
    data = tmp_path / "data"
    csv_path = _labels_csv(data, "pool/a/00.png,cat", f"{elsewhere if outside == 'ABSOLUTE' else outside},dog")

    with pytest.raises(ImgclsError, match=rf"labels\.csv:3: image '.*elsewhere\.png' is outside the data folder"):
        discover(data, labels_csv=csv_path)


def test_a_link_inside_the_data_folder_to_an_image_elsewhere_is_accepted(tmp_path):
    # As in class folders: datasets are often links into a shared store; the row names a path in the folder.
    elsewhere = tmp_path / "store" / "x.png"
    elsewhere.parent.mkdir()
    _smooth(48, 40).save(elsewhere)
    data = tmp_path / "data"
    csv_path = _labels_csv(data, "pool/a/00.png,cat", "pool/a/01.png,dog", "pool/link.png,dog")
    (data / "pool" / "link.png").symlink_to(elsewhere)

    dataset = discover(data, labels_csv=csv_path)

    assert data.resolve() / "pool" / "link.png" in {s.path for split in dataset.splits.values() for s in split}

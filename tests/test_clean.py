"""Label cleaning: planted wrong labels, an off-topic image and poor images are found, the audit's JSON
says so in order, and a manifest of decisions drops and relabels in training without touching a file."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from imgcls.cli.main import main
from imgcls.clean.confident import rank_label_issues
from imgcls.clean.labels import audit_labels
from imgcls.data.folders import discover
from imgcls.errors import ImgclsError
from imgcls.train.config import TrainConfig
from imgcls.train.run import train

from conftest import FAST_CONFIG

COLOURS = {"blue": (30, 60, 220), "green": (40, 200, 60), "red": (220, 40, 40)}
PLANTED = [("red", 0, "green"), ("red", 1, "blue"), ("green", 2, "blue")]  # (true colour, index, folder it is filed in)


def _photo(rgb, rng, size=(48, 48)) -> Image.Image:
    """A colour lit from one side (a gradient of +-40 levels), with sensor noise."""
    light = np.linspace(-40, 40, size[0])[None, :, None] * rng.choice([-1, 1])
    noise = rng.normal(0, 12, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.array(rgb) + light + noise, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def colours_dir(tmp_path_factory):
    """ROOT/train/<colour>/ with 24 noisy photos of each colour, and planted problems: three photos filed
    under the wrong colour, a grey-and-white striped image that is no colour, one dark, one tiny, one banner."""
    root, rng = tmp_path_factory.mktemp("colours"), np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        (root / "train" / name).mkdir(parents=True)
        for i in range(24):
            _photo(rgb, rng).save(root / "train" / name / f"{name}{i:02d}.png")
    for colour, index, folder in PLANTED:
        _photo(COLOURS[colour], rng).save(root / "train" / folder / f"mislabelled-{colour}-{index}.png")
    stripes = np.zeros((48, 48, 3), np.uint8) + 128
    stripes[::4] = 255
    Image.fromarray(stripes).save(root / "train" / "blue" / "off-topic.png")
    Image.fromarray((np.asarray(_photo(COLOURS["red"], rng)) * 0.1).astype(np.uint8)).save(root / "train" / "red" / "dark.png")
    _photo(COLOURS["green"], rng, (10, 10)).save(root / "train" / "green" / "tiny.png")
    _photo(COLOURS["blue"], rng, (200, 40)).save(root / "train" / "blue" / "banner.png")
    return root


@pytest.fixture(scope="module")
def found(colours_dir):
    return audit_labels(colours_dir, pretrained=False)


def _names(items) -> list[str]:
    return [item["path"].rsplit("/", 1)[1] for item in items]


def test_confident_learning_flags_the_images_another_class_clearly_owns():
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.1, 0.9], [0.2, 0.8], [0.95, 0.05]])
    labels = np.array([0, 0, 0, 1, 1, 1])  # the last is filed under 1 but looks like 0
    ranking = rank_label_issues(probabilities, labels)
    assert ranking.issues.tolist() == [5] and ranking.suggested[5] == 0
    assert ranking.scores[5] == pytest.approx((1 - (0.05 - 0.95)) / 2)
    # thresholds: 0.8 for class 0, 0.55 for class 1; the third image (0.7 < 0.8) is confidently neither
    assert ranking.confident_joint.tolist() == [[2, 0], [1, 2]]


def test_planted_wrong_labels_top_the_ranking_with_their_true_class(found):
    issues = found["label_issues"]
    planted = {f"mislabelled-{colour}-{index}.png": colour for colour, index, _ in PLANTED}
    assert set(_names(issues[:3])) == set(planted)
    for item in issues[:3]:
        assert item["suggested"] == planted[item["path"].rsplit("/", 1)[1]] and item["score"] > 0.5
        assert len(item["lookalikes"]["suggested"]) == 5
        assert all(f"/{item['suggested']}/" in path for path in item["lookalikes"]["suggested"])
    assert [item["score"] for item in issues] == sorted((item["score"] for item in issues), reverse=True)


def test_the_image_of_no_class_is_the_top_outlier(found):
    assert _names(found["outliers"])[0] == "off-topic.png"
    assert found["outliers"][0]["score"] == 1.0  # the furthest of all from its neighbours


def test_dark_tiny_and_banner_images_are_flagged_for_quality(found):
    problems = {name: item["problems"] for name, item in zip(_names(found["quality"]), found["quality"])}
    assert "dark" in problems["dark.png"]
    assert problems["tiny.png"] == ["tiny (10x10)"]
    assert problems["banner.png"] == ["extreme shape (200x40)"]
    assert not any(name.startswith(("red", "green", "blue")) for name in problems)  # the ordinary photos pass


def test_cli_labels_json_lists_suspects_and_writes_the_review_page(colours_dir, tmp_path, capsys):
    page = tmp_path / "review.html"
    code = main(["audit", str(colours_dir), "--labels", "--no-pretrained", "--format", "json", "--review", str(page)])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and page.is_file() and report["review_page"] == str(page)
    assert {"label_issues", "outliers", "quality", "counts", "exact_duplicates"} <= set(report)
    assert set(report["label_issues"][0]) == {"path", "split", "given", "suggested", "score", "lookalikes"}
    assert report["label_check"]["features"].startswith("pixels")
    assert "mislabelled-red-0.png" in page.read_text(encoding="utf-8")


def test_cli_labels_table_names_each_suspect(colours_dir, tmp_path, capsys):
    code = main(["audit", str(colours_dir), "--labels", "--no-pretrained", "--review", str(tmp_path / "r.html")])
    out = capsys.readouterr().out
    assert code == 0
    assert "Label issues (" in out and "train/green/mislabelled-red-0.png  given 'green', looks like 'red'" in out
    assert "train/blue/off-topic.png" in out and "--manifest decisions.csv" in out


def _tree_digest(root) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path).encode() + (path.read_bytes() if path.is_file() else b""))
    return digest.hexdigest()


def test_a_manifest_drops_and_relabels_in_training_and_leaves_the_files_alone(colours_dir, tmp_path):
    manifest = tmp_path / "decisions.csv"
    manifest.write_text("path,action,label\n"
                        "train/green/mislabelled-red-0.png,relabel,red\n"
                        "train/blue/off-topic.png,drop,\n"
                        f"{colours_dir}/train/red/dark.png,drop,\n"
                        "train/red/red00.png,keep,\n")
    before = _tree_digest(colours_dir)
    plain = discover(colours_dir, val_split=0.25)
    decided = discover(colours_dir, val_split=0.25, manifest=manifest)
    assert sum(map(len, plain.splits.values())) - sum(map(len, decided.splits.values())) == 2
    relabelled = [s for split in decided.splits.values() for s in split if s.path.name == "mislabelled-red-0.png"]
    assert [decided.classes[i] for i in relabelled[0].labels] == ["red"]
    assert not any(s.path.name in ("off-topic.png", "dark.png") for split in decided.splits.values() for s in split)

    run = train(colours_dir, tmp_path / "run", TrainConfig.from_options(**{**FAST_CONFIG, "epochs": 1, "val_split": 0.25,
                                                              "manifest": str(manifest)}), progress=False)
    summary = json.loads((run.run_dir / "data.json").read_text())
    assert summary["manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert summary["counts"] == decided.counts()
    assert _tree_digest(colours_dir) == before


@pytest.mark.parametrize("rows, message", [
    ("train/red/red00.png,delete,", r"decisions.csv:2: unknown action 'delete'; use one of keep, relabel, drop"),
    ("train/red/red00.png,relabel,", r"decisions.csv:2: relabel needs the new label"),
    ("../outside.png,drop,", r"decisions.csv:2: '../outside.png' is outside the data folder"),
    ("train/red/red00.png,relabel,purple", r"decisions.csv:2: relabel to 'purple', which is not a class"),
    ("train/red/red00.png,drop,\ntrain/red/red00.png,keep,", r"decisions.csv:3: .* already decided differently at line 2"),
])
def test_a_bad_manifest_line_is_an_error_naming_the_file_and_line(colours_dir, tmp_path, rows, message):
    manifest = tmp_path / "decisions.csv"
    manifest.write_text("path,action,label\n" + rows + "\n")
    with pytest.raises(ImgclsError, match=message):
        discover(colours_dir, manifest=manifest)


def test_a_manifest_that_empties_a_class_is_refused_naming_it(colours_dir, tmp_path):
    manifest = tmp_path / "decisions.csv"
    rows = [f"train/blue/{p.name},drop," for p in (colours_dir / "train" / "blue").iterdir()]
    manifest.write_text("path,action,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(ImgclsError, match="leaves class 'blue' with no training images"):
        discover(colours_dir, manifest=manifest)


def test_with_imagenet_weights_the_features_are_the_backbones_and_find_the_same_errors(colours_dir, with_imagenet_weights):
    found = audit_labels(colours_dir)
    assert found["label_check"]["features"].startswith("efficientnet_lite0")
    planted = {f"mislabelled-{colour}-{index}.png" for colour, index, _ in PLANTED}
    assert set(_names(found["label_issues"][:3])) == planted

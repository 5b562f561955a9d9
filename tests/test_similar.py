"""Look-alikes on real digits: the nearest training images in the model's embedding space."""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls.cli.main import main
from imgcls.errors import UsageError
from imgcls.explain.similar import INDEX_FILE, INDEX_META, embed, find_similar
from imgcls.predict.predictor import Predictor


@pytest.fixture
def bundle(trained_run, tmp_path) -> Path:
    """A copy of the session's run, so the index written into it stays within this test."""
    run = shutil.copytree(trained_run.run_dir, tmp_path / "run")
    return run / "model"


def _test_images(digits_dir: Path) -> list[Path]:
    return sorted((digits_dir / "test").rglob("*.png"))


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_the_index_files_get_the_mode_of_a_new_file_like_the_bundle_config(bundle, digits_dir, tmp_path):
    find_similar(Predictor.load(bundle), _test_images(digits_dir)[:1], k=1, bundle_dir=bundle)
    (tmp_path / "ordinary").write_bytes(b"")

    for name in (INDEX_FILE, INDEX_META):
        assert (bundle / name).stat().st_mode == (tmp_path / "ordinary").stat().st_mode, name


def test_neighbours_mostly_share_the_query_digit(bundle, digits_dir):
    queries = _test_images(digits_dir)
    results = find_similar(Predictor.load(bundle), queries, k=5, bundle_dir=bundle)
    majority = [max({m["label"] for m in matches}, key=[m["label"] for m in matches].count) for matches in results]
    agreement = np.mean([label == query.parent.name for label, query in zip(majority, queries)])
    assert agreement > 0.6  # chance is 0.1; the trained model itself scores ~0.8 on these digits


def test_results_are_k_training_images_best_first_with_cosine_scores(bundle, digits_dir):
    (matches,) = find_similar(Predictor.load(bundle), [_test_images(digits_dir)[0]], k=4, bundle_dir=bundle)
    scores = [m["score"] for m in matches]
    assert len(matches) == 4 and scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    for match in matches:
        path = Path(match["path"])
        assert path.is_file() and path.parent.parent.name == "train" and match["label"] == path.parent.name


def test_a_training_image_finds_itself_first(bundle, digits_dir):
    image = sorted((digits_dir / "train" / "3").glob("*.png"))[0]
    (matches,) = find_similar(Predictor.load(bundle), [image], k=1, bundle_dir=bundle)
    assert matches[0]["path"] == str(image) and matches[0]["score"] == pytest.approx(1, abs=1e-5)


def test_embeddings_are_unit_length_penultimate_features(bundle, digits_dir):
    predictor = Predictor.load(bundle)
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in _test_images(digits_dir)[:3]])
    vectors = embed(predictor, pixels)
    assert vectors.shape == (3, predictor.model.net.head[-1].in_features)  # cnn-bn: the input of its final Linear
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_index_is_built_once_and_rebuilt_when_the_training_data_changes(bundle, digits_dir, tmp_path, caplog):
    data = shutil.copytree(digits_dir, tmp_path / "digits")
    predictor, query = Predictor.load(bundle), _test_images(data)[:1]
    with caplog.at_level(logging.INFO, logger="imgcls"):
        find_similar(predictor, query, data_dir=data, bundle_dir=bundle)
        assert (bundle / INDEX_FILE).is_file() and "indexing" in caplog.text
        caplog.clear()
        find_similar(predictor, query, data_dir=data, bundle_dir=bundle)
        assert "indexing" not in caplog.text  # reused
        added = data / "train" / "7" / "added.png"
        shutil.copy(query[0], added)
        (matches,) = find_similar(predictor, [added], k=1, data_dir=data, bundle_dir=bundle)
        assert "rebuilding" in caplog.text and matches[0]["path"] == str(added)
    assert json.loads((bundle / INDEX_META).read_text())["paths"].count(str(added)) == 1


def test_training_data_comes_from_the_run_unless_given(bundle, tmp_path):
    lone = shutil.copytree(bundle, tmp_path / "lone")  # no data.json beside it
    with pytest.raises(UsageError, match="pass --data TRAIN_DIR"):
        find_similar(Predictor.load(lone), [np.zeros((32, 32, 3), np.uint8)], bundle_dir=lone)


def test_cli_similar_prints_json_and_writes_a_side_by_side_png(capsys, bundle, digits_dir, tmp_path):
    query = _test_images(digits_dir)[0]
    code = main(["similar", str(bundle.parent), str(query), "--k", "3", "--out", str(tmp_path / "out")])
    out, _ = capsys.readouterr()
    (result,) = json.loads(out)
    assert code == 0 and result["path"] == str(query) and len(result["similar"]) == 3
    png = Image.open(tmp_path / "out" / f"{query.stem}_similar.png")
    assert png.width > 3 * png.height  # the query and its three matches side by side
    assert json.loads((tmp_path / "out" / "similar.json").read_text())[0]["similar"] == result["similar"]


def test_cli_similar_rejects_k_below_one(capsys, bundle, digits_dir):
    code = main(["similar", str(bundle.parent), str(_test_images(digits_dir)[0]), "--k", "0"])
    assert code == 2 and "k must be at least 1, got 0" in capsys.readouterr().err


def test_cli_similar_writes_under_the_run_folder_and_never_over_earlier_results(capsys, bundle, digits_dir):
    run, queries = bundle.parent, _test_images(digits_dir)[:2]
    assert main(["similar", str(bundle), str(queries[0]), "--k", "2"]) == 0  # the model/ folder: RUN_DIR/similar
    capsys.readouterr()
    first = json.loads((run / "similar" / "similar.json").read_text())
    assert (run / "similar" / f"{queries[0].stem}_similar.png").is_file() and first[0]["path"] == str(queries[0])

    assert main(["similar", str(run), str(queries[1]), "--k", "2"]) == 0
    err = capsys.readouterr().err
    assert f"{run / 'similar'} holds earlier results, kept; writing to {run / 'similar-2'}" in err
    assert json.loads((run / "similar" / "similar.json").read_text()) == first
    assert json.loads((run / "similar-2" / "similar.json").read_text())[0]["path"] == str(queries[1])

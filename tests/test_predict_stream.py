"""`imgcls predict` over folders too large for one pass: results a chunk at a time, the same as all at once;
shards that concatenate to the whole output; a killed --out file that --resume completes exactly."""
from __future__ import annotations

import json
import shutil

import pytest

from imgcls.cli.main import main
from imgcls.errors import UsageError
from imgcls.predict.batch import Shard, resume_from
from imgcls.predict.predictor import Predictor

# In these tests the model runs 3 images at a time, 6 per chunk: the 26 images make 5 chunks and 9 batches, the
# last ones short, and 3 shards hold 3, 3 and 3 batches.
BATCH, CHUNK = 3, 6
IMAGES = 26


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr("imgcls.predict.predictor.BATCH_SIZE", BATCH)
    monkeypatch.setattr("imgcls.predict.predictor.CHUNK_IMAGES", CHUNK)


EMPTY = "0000-empty.png"
SOME_UNREADABLE = 1  # the exit status of a run over the photos, one of which is empty


@pytest.fixture(scope="module")
def photos(digits_dir, tmp_path_factory):
    """25 digit scans in class folders, and an empty file among them: a folder's unreadable file."""
    folder = tmp_path_factory.mktemp("photos") / "photos"
    for digit in "01234":
        shutil.copytree(digits_dir / "test" / digit, folder / digit)
    (folder / "3" / EMPTY).write_bytes(b"")
    assert len(list(folder.rglob("*.png"))) == IMAGES
    return folder


@pytest.fixture(scope="module")
def whole(trained_run, photos, tmp_path_factory):
    """The output of one unsharded, uninterrupted run, per format (written in 5 chunks)."""
    outputs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("imgcls.predict.predictor.BATCH_SIZE", BATCH)
        patch.setattr("imgcls.predict.predictor.CHUNK_IMAGES", CHUNK)
        for fmt in ("csv", "jsonl", "json", "table"):
            out = tmp_path_factory.mktemp("whole") / f"all.{fmt}"
            assert main(["--quiet", "predict", str(trained_run.run_dir), str(photos), "--format", fmt, "--out", str(out)]) == SOME_UNREADABLE
            outputs[fmt] = out.read_bytes()
    return outputs


def test_streaming_in_small_chunks_gives_the_results_of_predict(trained_run, photos):
    predictor = Predictor.load(trained_run.bundle_dir)
    predictor.batch_size = BATCH
    paths = sorted(photos.rglob("*.png"))
    chunks = list(predictor.predict_chunks(paths, top_k=3, chunk=CHUNK))
    assert [len(c) for c in chunks] == [6, 6, 6, 6, 2]
    assert [r for c in chunks for r in c] == predictor.predict(paths, top_k=3)
    assert sum(r["error"] is not None for c in chunks for r in c) == 1
    one_at_a_time = predictor.predict_stream(paths, top_k=3, chunk=1)  # rounded up to a whole batch
    assert list(one_at_a_time) == predictor.predict(paths, top_k=3)


def test_chunks_decoded_by_worker_processes_while_the_model_runs_give_the_same_results(trained_run, photos, monkeypatch):
    monkeypatch.setattr("imgcls.data.cache.PROCESS_MIN_IMAGES", 4)  # fork decode workers for every chunk
    predictor = Predictor.load(trained_run.bundle_dir)
    predictor.batch_size = 5
    paths = sorted(photos.rglob("*.png"))
    assert list(predictor.predict_stream(paths, chunk=10)) == predictor.predict(paths)


def _refuse_to_decode(*args, **kwargs):
    raise AssertionError("decoded an image that the cache holds")


def test_a_folder_that_fits_in_one_chunk_maps_the_decode_of_predict(trained_run, photos, monkeypatch):
    predictor = Predictor.load(trained_run.bundle_dir)
    paths = sorted(photos.rglob("*.png"))
    first = predictor.predict(paths)
    monkeypatch.setattr("imgcls.data.cache.decode_image", _refuse_to_decode)
    assert list(predictor.predict_stream(paths)) == first


def test_bad_arguments_are_refused_before_the_first_chunk(trained_run):
    predictor = Predictor.load(trained_run.bundle_dir)
    with pytest.raises(UsageError, match="top_k must be at least 1, got 0"):
        predictor.predict_chunks(["a.png"], top_k=0)
    with pytest.raises(UsageError, match="chunk must be at least 1 image, got 0"):
        predictor.predict_stream(["a.png"], chunk=0)


def test_shards_are_whole_batches_of_the_inputs_in_order():
    items = list(range(IMAGES))
    blocks = [Shard(k, 3).block(items, BATCH) for k in range(3)]
    assert sum(blocks, []) == items and [len(b) for b in blocks] == [9, 9, 8]
    assert [Shard(k, 4).block(items[:5], BATCH) for k in range(4)] == [[], [0, 1, 2], [], [3, 4]]


def test_resume_starts_again_at_the_batch_of_the_first_image_without_rows(tmp_path):
    paths = [tmp_path / f"{i}.png" for i in range(10)]
    assert resume_from(paths, {str(p): None for p in paths[:7]}, tmp_path / "out.csv", BATCH) == 6
    assert resume_from(paths, {str(p): None for p in paths}, tmp_path / "out.csv", BATCH) == 10
    assert resume_from(paths, {}, tmp_path / "out.csv", BATCH) == 0


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "table"])
def test_shards_concatenated_equal_the_unsharded_output(capsys, trained_run, photos, whole, small_chunks, tmp_path, fmt):
    parts = []
    for k in range(3):
        code, out, _ = run_cli(capsys, "predict", trained_run.run_dir, photos, "--format", fmt, "--shard", f"{k}/3",
                               "--out", tmp_path / f"part{k}.{fmt}")
        parts.append((tmp_path / f"part{k}.{fmt}").read_bytes())
        assert code == (SOME_UNREADABLE if EMPTY.encode() in parts[-1] else 0) and f"part{k}.{fmt}" in out
    assert all(parts) and b"".join(parts) == whole[fmt]
    if fmt == "csv":
        assert [p.startswith(b"path,labels,rank,") for p in parts] == [True, False, False]


def test_each_json_shard_is_a_whole_array_and_together_they_are_the_unsharded_one(capsys, trained_run, photos, whole):
    merged, codes = [], []
    for k in range(3):
        code, out, _ = run_cli(capsys, "predict", trained_run.run_dir, photos, "--format", "json", "--shard", f"{k}/3")
        merged += json.loads(out)
        codes.append(code)
    assert sorted(codes) == [0, 0, SOME_UNREADABLE] and merged == json.loads(whole["json"]) and len(merged) == IMAGES


def test_rows_on_stdout_are_those_of_the_out_file(capsys, trained_run, photos, whole, small_chunks):
    for fmt in ("csv", "jsonl", "json"):
        code, out, err = run_cli(capsys, "predict", trained_run.run_dir, photos, "--format", fmt)
        assert code == SOME_UNREADABLE and out.encode() == whole[fmt]
        assert f"1 of {IMAGES} images could not be read" in err


def test_json_output_is_the_whole_result_list_as_predict_returns_it(trained_run, photos, whole):
    results = Predictor.load(trained_run.bundle_dir).predict(sorted(photos.rglob("*.png")))
    assert whole["json"].decode() == json.dumps(results, indent=2, ensure_ascii=False) + "\n"
    assert [json.loads(line) for line in whole["jsonl"].decode().splitlines()] == results


def _cuts(data: bytes) -> dict[str, int]:
    """Where a kill may leave the file: empty, mid-line early and late, right after a complete line."""
    lines = data.splitlines(keepends=True)
    return {"empty": 0, "inside the first line": len(lines[0]) // 2, "mid-line": len(data) // 2,
            "at a line's end": sum(map(len, lines[:len(lines) * 2 // 3])), "all but the newline": len(data) - 1}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_resume_after_a_kill_mid_write_gives_exactly_the_full_output(capsys, trained_run, photos, whole, small_chunks,
                                                                       tmp_path, fmt):
    for where, size in _cuts(whole[fmt]).items():
        out = tmp_path / f"{where}.{fmt}"
        out.write_bytes(whole[fmt][:size])
        code, summary, _ = run_cli(capsys, "predict", trained_run.run_dir, photos, "--format", fmt, "--out", out, "--resume")
        assert code == SOME_UNREADABLE and out.read_bytes() == whole[fmt], where
        assert f"predictions of {IMAGES} images to {out} (1 unreadable;" in summary


def test_resume_on_a_complete_file_leaves_it_as_it_is(capsys, trained_run, photos, whole, tmp_path):
    out = tmp_path / "all.jsonl"
    out.write_bytes(whole["jsonl"])
    code, summary, _ = run_cli(capsys, "predict", trained_run.run_dir, photos, "--format", "jsonl", "--out", out, "--resume")
    assert code == SOME_UNREADABLE and out.read_bytes() == whole["jsonl"] and f"{IMAGES} were there before --resume" in summary


def test_resume_refuses_a_file_written_for_other_inputs(capsys, trained_run, photos, whole, tmp_path):
    out = tmp_path / "all.csv"
    out.write_bytes(whole["csv"])
    code, _, err = run_cli(capsys, "predict", trained_run.run_dir, photos / "3", "--format", "csv", "--out", out, "--resume")
    assert code == 2 and "images not among these inputs" in err and "--shard" in err
    assert out.read_bytes() == whole["csv"], "a refused file is left as it was"


@pytest.mark.parametrize("shard", ["3/3", "-1/3", "1/0", "a/b", "2", "1/2/3", ""])
def test_bad_shard_values_give_exit_2_and_one_line_naming_the_value(capsys, trained_run, photos, shard):
    code, out, err = run_cli(capsys, "predict", trained_run.run_dir, photos, f"--shard={shard}")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert f"got {shard!r}" in err and "--shard" in err


def test_out_refuses_to_overwrite_an_existing_file_without_resume(capsys, trained_run, photos, tmp_path):
    out = tmp_path / "predictions.csv"
    out.write_text("precious\n")
    code, _, err = run_cli(capsys, "predict", trained_run.run_dir, photos, "--format", "csv", "--out", out)
    assert code == 2 and "already exists" in err and "--resume" in err and err.count("\n") == 1
    assert out.read_text() == "precious\n"


@pytest.mark.parametrize("argv, message", [
    (["--resume", "--format", "csv"], "give it with --out FILE"),
    (["--resume", "--format", "json", "--out", "{tmp}/p.json"], "continues --format csv or jsonl files only"),
    (["--resume", "--out", "{tmp}/p.txt"], "got --format table"),
])
def test_resume_needs_out_and_a_line_format(capsys, trained_run, photos, tmp_path, argv, message):
    argv = [a.format(tmp=tmp_path) for a in argv]
    code, _, err = run_cli(capsys, "predict", trained_run.run_dir, photos, *argv)
    assert code == 2 and message in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_a_named_unreadable_file_gets_its_error_row_the_others_theirs_and_exit_1(capsys, trained_run, photos, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    out = tmp_path / "rows.jsonl"
    code, summary, err = run_cli(capsys, "predict", trained_run.run_dir, photos / "2", broken, "--format", "jsonl", "--out", out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert code == 1 and len(rows) == 6
    assert [r["path"] for r in rows][-1] == str(broken) and "not an image" in rows[-1]["error"]
    assert all(r["error"] is None and r["predictions"] for r in rows[:-1])
    assert "1 of 6 images could not be read (1 named on the command line)" in err
    assert summary == f"wrote the predictions of 6 images to {out} (1 unreadable)\n"


def test_a_shard_with_no_images_writes_no_rows_and_succeeds(capsys, trained_run, digits_dir):
    image = next((digits_dir / "predict").glob("*.png"))
    code, out, _ = run_cli(capsys, "predict", trained_run.run_dir, image, "--format", "jsonl", "--shard", "0/2")
    assert code == 0 and out == ""
    code, out, _ = run_cli(capsys, "predict", trained_run.run_dir, image, "--format", "jsonl", "--shard", "1/2")
    assert code == 0 and json.loads(out)["path"] == str(image)

"""`imgcls serve`: the API answers like `imgcls predict`, batches concurrent requests, and turns every
kind of bad upload into a clear 4xx while staying up."""
from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from imgcls.cli.main import build_parser, main
from imgcls.predict.predictor import Predictor
from imgcls.serve.app import create_app
from imgcls.serve.config import ServeConfig
from imgcls.serve.batching import DynamicBatcher


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def upload(name: str, data: bytes, content_type: str = "image/png"):
    return ("files", (name, data, content_type))


@pytest.fixture(scope="module")
def predictor(trained_run):
    return Predictor.load(trained_run.bundle_dir, device="cpu")


@pytest.fixture(scope="module")
def digit(digits_dir):
    """A real test-split scan of a 3, and its bytes."""
    path = sorted((digits_dir / "test" / "3").glob("*.png"))[0]
    return path, path.read_bytes()


# --- answers ------------------------------------------------------------------------------------

def test_health_and_model_describe_the_bundle(client, predictor):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/model").json()
    assert info["classes"] == predictor.classes and info["img_size"] == 32 and info["task"] == "single-label"
    assert info["metrics"]["accuracy"] == predictor.config.metrics["accuracy"]
    assert info["limits"] == {"max_upload_mb": ServeConfig.max_upload_mb, "max_files": ServeConfig.max_files,
                              "max_megapixels": ServeConfig.max_megapixels}


def test_predict_gives_the_same_answer_as_the_library(client, predictor, digit):
    path, data = digit
    response = client.post("/predict", params={"top_k": 3}, files=[upload("three.png", data)])
    assert response.status_code == 200
    (result,) = response.json()["results"]
    expected = predictor.predict([path], top_k=3)[0]
    assert result["filename"] == "three.png" and result["error"] is None
    assert result["labels"] == expected["labels"] and result["predictions"] == expected["predictions"]
    scores = [p["score"] for p in result["predictions"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True) and sum(scores) <= 1.0 + 1e-6


def test_predict_answers_many_images_in_order(client, predictor, digits_dir):
    paths = sorted((digits_dir / "predict").glob("*.png"))[:4]
    response = client.post("/predict", files=[upload(p.name, p.read_bytes()) for p in paths])
    results = response.json()["results"]
    assert response.status_code == 200 and [r["filename"] for r in results] == [p.name for p in paths]
    assert [r["labels"] for r in results] == [r["labels"] for r in predictor.predict(paths)]


def test_predict_says_unknown_below_the_asked_confidence(client, digit):
    response = client.post("/predict", params={"unknown_below": 1.0}, files=[upload("three.png", digit[1])])
    assert response.json()["results"][0]["labels"] == ["unknown"]


def test_a_bundle_with_a_calibrated_unknown_threshold_applies_it_unless_asked_otherwise(trained_run, digit, tmp_path):
    bundle = shutil.copytree(trained_run.bundle_dir, tmp_path / "model")
    config = json.loads((bundle / "config.json").read_text())
    (bundle / "config.json").write_text(json.dumps({**config, "unknown_below": 1.0}))
    with TestClient(create_app(bundle, device="cpu")) as client:
        default = client.post("/predict", files=[upload("three.png", digit[1])]).json()["results"][0]
        lowered = client.post("/predict", params={"unknown_below": 0}, files=[upload("three.png", digit[1])]).json()["results"][0]
    assert default["labels"] == ["unknown"]
    assert lowered["labels"] == [lowered["predictions"][0]["label"]]


def test_multi_label_bundles_answer_every_class_over_its_threshold(trained_run, digit, tmp_path):
    bundle = shutil.copytree(trained_run.bundle_dir, tmp_path / "model")
    config = json.loads((bundle / "config.json").read_text())
    thresholds = [0.0] * 5 + [1.0] * 5  # sigmoid scores are in (0, 1): classes 0-4 always on, 5-9 never
    (bundle / "config.json").write_text(json.dumps({**config, "task": "multi-label", "thresholds": thresholds}))
    with TestClient(create_app(bundle, device="cpu")) as client:
        assert client.get("/model").json()["task"] == "multi-label"
        result = client.post("/predict", params={"top_k": 2}, files=[upload("three.png", digit[1])]).json()["results"][0]
    assert sorted(result["labels"]) == ["0", "1", "2", "3", "4"]
    assert len(result["predictions"]) == 5  # top_k grows to show every label that is on


def test_a_bad_upload_among_good_ones_gets_its_own_error(client, digit):
    response = client.post("/predict", files=[upload("../../etc/passwd.png", digit[1]), upload("junk.png", b"not a picture")])
    good, bad = response.json()["results"]
    assert response.status_code == 200
    assert good["error"] is None and good["predictions"] and good["filename"] == "../../etc/passwd.png"
    assert bad["predictions"] == [] and "not an image" in bad["error"]


def test_explain_returns_the_panel_as_png(client, digit):
    response = client.post("/explain", files=[("file", ("three.png", digit[1], "image/png"))])
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).format == "PNG"


def test_explain_json_maps_the_named_class_and_carries_the_overlay(client, digit):
    response = client.post("/explain", params={"method": "gradcam++", "class_name": "7", "format": "json"},
                           files=[("file", ("three.png", digit[1], "image/png"))])
    body = response.json()
    (result,) = body["results"]
    heatmap = np.asarray(result["heatmap"])
    assert response.status_code == 200 and body["method"] == "gradcam++" and result["label"] == "7"
    assert heatmap.shape == (32, 32) and 0 <= heatmap.min() and heatmap.max() <= 1
    prefix = "data:image/png;base64,"
    assert result["overlay"].startswith(prefix)
    assert Image.open(io.BytesIO(base64.b64decode(result["overlay"][len(prefix):]))).size == (32, 32)


@pytest.mark.parametrize("params, message", [
    ({"class_name": "seven"}, "unknown class 'seven'"),
    ({"method": "gradcm"}, "did you mean 'gradcam'"),
    ({"method": "filters"}, "use `imgcls explain --method filters`"),
])
def test_explain_refuses_unknown_classes_and_methods_with_the_fix(client, digit, params, message):
    response = client.post("/explain", params=params, files=[("file", ("three.png", digit[1], "image/png"))])
    assert response.status_code == 422 and message in response.json()["detail"]


def test_a_bundle_with_an_onnx_export_is_served_by_onnx_runtime(trained_run, predictor, digit, tmp_path):
    from imgcls.export.onnx import export_onnx
    from imgcls.predict.session import OnnxModel

    bundle = shutil.copytree(trained_run.bundle_dir, tmp_path / "model")
    export_onnx(bundle, images=[digit[0]])
    app = create_app(bundle, device="cpu")
    with TestClient(app) as client:
        (result,) = client.post("/predict", files=[upload("three.png", digit[1])]).json()["results"]
        explained = client.post("/explain", files=[("file", ("three.png", digit[1], "image/png"))])
    assert isinstance(app.state.service.backend.model, OnnxModel)
    expected = predictor.predict([digit[0]])[0]["predictions"]
    assert [p["label"] for p in result["predictions"]] == [p["label"] for p in expected]
    assert np.allclose([p["score"] for p in result["predictions"]], [p["score"] for p in expected], atol=1e-4)
    assert explained.status_code == 200  # explanations still run on PyTorch


def test_similar_finds_a_training_image_itself_first_with_a_thumbnail(client, digits_dir):
    image = sorted((digits_dir / "train" / "5").glob("*.png"))[0]
    response = client.post("/similar", params={"k": 3}, files=[("file", ("query.png", image.read_bytes(), "image/png"))])
    results = response.json()["results"]
    assert response.status_code == 200 and len(results) == 3
    assert results[0]["path"] == f"train/5/{image.name}" and results[0]["label"] == "5" and results[0]["score"] > 0.999
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    assert all(str(digits_dir) not in r["path"] for r in results)  # relative to the training folder: the server's stay private
    prefix = "data:image/jpeg;base64,"
    assert results[0]["thumbnail"].startswith(prefix)
    assert Image.open(io.BytesIO(base64.b64decode(results[0]["thumbnail"][len(prefix):]))).format == "JPEG"


def test_without_training_images_similar_is_404_and_the_rest_still_works(trained_run, digit, tmp_path):
    bundle = shutil.copytree(trained_run.bundle_dir, tmp_path / "model")  # no data.json beside it
    with TestClient(create_app(bundle, device="cpu")) as client:
        info = client.get("/model").json()
        similar = client.post("/similar", files=[("file", ("three.png", digit[1], "image/png"))])
        predicted = client.post("/predict", files=[upload("three.png", digit[1])])
    assert info["similar"] is False and "no training data known" in info["similar_note"]
    assert similar.status_code == 404 and "--data TRAIN_DIR" in similar.json()["detail"]
    assert predicted.status_code == 200


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("files, status, message", [
    ([upload("notes.txt", b"hello", "text/plain")], 415, "'notes.txt' was sent as text/plain, not an image"),
    ([upload("fake.png", b"hello")], 422, "not an image Pillow can read"),
    ([upload("cut.png", png_bytes(Image.new("RGB", (64, 64), "red"))[:60])], 422, "not a usable image: 'cut.png'"),
    ([upload("bomb.png", png_bytes(Image.new("1", (10_000, 10_000))))], 422, "decompression bomb refused"),
    ([upload(f"{i}.png", b"x") for i in range(ServeConfig.max_files + 1)], 413, "the limit is 16"),
    ([("other", (None, b"just a form field", None))], 422, "no image in the request"),
])
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # imgcls's own filter, reset by pytest
def test_bad_uploads_get_a_4xx_that_says_what_to_change(client, files, status, message):
    response = client.post("/predict", files=files)
    assert response.status_code == status and message in response.json()["detail"]
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize("endpoint", ["/explain", "/similar"])
def test_explain_and_similar_refuse_what_is_not_an_image_with_422(client, endpoint):
    response = client.post(endpoint, files=[("file", ("fake.png", b"hello", "image/png"))])
    assert response.status_code == 422 and "not a usable image: not an image Pillow can read" in response.json()["detail"]


def test_a_body_that_is_not_multipart_gets_415_with_the_fix(client, digit):
    response = client.post("/predict", content=digit[1], headers={"content-type": "image/png"})
    assert response.status_code == 415 and "multipart/form-data" in response.json()["detail"]


def test_bad_parameters_get_422(client, digit):
    for params in ({"top_k": 0}, {"unknown_below": 1.5}, {"top_k": "three"}):
        assert client.post("/predict", params=params, files=[upload("three.png", digit[1])]).status_code == 422


def test_oversized_uploads_get_413_whether_or_not_they_declare_their_size(run_copy, digit):
    config = ServeConfig(max_upload_mb=0.01)  # about 10 kB
    big = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 100, 3), np.uint8)))
    with TestClient(create_app(run_copy, config, device="cpu")) as client:
        declared = client.post("/predict", files=[upload("big.png", big)])
        request = client.build_request("POST", "/predict", files=[upload("big.png", big)])
        body = request.read()
        chunked = client.post("/predict", content=iter([body[i: i + 4096] for i in range(0, len(body), 4096)]),
                              headers={"content-type": request.headers["content-type"]})
        small = client.post("/predict", files=[upload("three.png", digit[1])])
    assert declared.status_code == 413 and "over the 0.01 MB limit" in declared.json()["detail"]
    assert chunked.status_code == 413 and "--max-upload-mb" in chunked.json()["detail"]
    assert small.status_code == 200


def test_uploads_stay_in_memory_and_never_touch_disk(client, monkeypatch):
    def no_disk(*args, **kwargs):
        raise AssertionError("an upload was spooled to a temporary file")

    monkeypatch.setattr(tempfile, "TemporaryFile", no_disk)
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 255, (800, 800, 3), np.uint8))
    data = png_bytes(photo)
    assert len(data) > 1024 * 1024  # past the 1 MB at which Starlette would spool to disk
    assert client.post("/predict", files=[upload("photo.png", data)]).status_code == 200


def test_a_failing_model_is_a_500_for_that_request_and_the_server_stays_up(run_copy, predictor, digit):
    class Flaky:
        calls = 0

        def probabilities(self, pixels):
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise RuntimeError("out of memory")
            return predictor.probabilities(pixels)

    with TestClient(create_app(run_copy, device="cpu", backend=Flaky()), raise_server_exceptions=False) as client:
        failed = client.post("/predict", files=[upload("three.png", digit[1])])
        retried = client.post("/predict", files=[upload("three.png", digit[1])])
    assert failed.status_code == 500 and "RuntimeError" in failed.json()["detail"]
    assert retried.status_code == 200 and retried.json()["results"][0]["predictions"]


# --- page and docs ------------------------------------------------------------------------------

def test_the_page_loads_nothing_from_the_internet(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    html = response.text
    assert 'name="viewport"' in html and 'id="file-input"' in html
    assert "http://" not in html and "https://" not in html


def test_the_page_links_to_the_api_docs_and_json_endpoints_that_answer(client):
    links = re.findall(r'<a href="([^"]+)">', client.get("/").text)
    assert links == ["docs", "model", "health", "openapi.json"]
    assert all(client.get(f"/{link}").status_code == 200 for link in links)


def test_docs_describe_every_endpoint_without_fetching_anything(client):
    response = client.get("/docs")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == "default-src 'none'; style-src 'unsafe-inline'"
    html = response.text
    assert "<script" not in html and "<link" not in html and "src=" not in html and "cdn" not in html
    for method, path in (("GET", "/health"), ("GET", "/model"), ("POST", "/predict"), ("POST", "/explain"),
                         ("POST", "/similar")):
        assert f'<span class="method">{method}</span>{path}</h2>' in html
    assert "curl -F files=@photo.jpg http://testserver/predict" in html and "curl -F file=@photo.jpg" in html
    assert "<code>top_k</code></td><td>integer, 1-1000, default 5</td>" in html
    assert client.get("/redoc").status_code == 404  # FastAPI's, which loads ReDoc from a CDN


def test_openapi_docs_list_every_endpoint(client):
    spec = client.get("/openapi.json").json()
    assert {"/health", "/model", "/predict", "/explain", "/similar"} <= set(spec["paths"])
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body


# --- batching -----------------------------------------------------------------------------------

class Recorder:
    """A backend that returns each image's first pixel as its 'scores' and records its batch sizes."""

    def __init__(self):
        self.batches: list[int] = []

    def probabilities(self, pixels):
        self.batches.append(len(pixels))
        return pixels[:, 0, 0, :1].astype(np.float32)


def run_concurrently(batcher_kwargs, sizes):
    recorder = Recorder()

    async def scenario():
        with ThreadPoolExecutor(1) as executor:
            async with DynamicBatcher(recorder, executor, **batcher_kwargs) as batcher:
                requests = [np.full((n, 2, 2, 3), i, np.uint8) for i, n in enumerate(sizes)]
                return await asyncio.gather(*(batcher(r) for r in requests))

    return asyncio.run(scenario()), recorder.batches


def test_requests_arriving_together_share_one_model_call_and_get_their_own_rows():
    answers, batches = run_concurrently(dict(max_batch=32, window_ms=20), sizes=[1, 2, 1, 3])
    assert batches == [7]
    assert [a[:, 0].tolist() for a in answers] == [[0], [1, 1], [2], [3, 3, 3]]


def test_batches_stop_at_max_batch_and_batching_can_be_turned_off():
    _, batches = run_concurrently(dict(max_batch=4, window_ms=20), sizes=[1] * 10)
    assert batches == [4, 4, 2]
    _, batches = run_concurrently(dict(max_batch=1, window_ms=20), sizes=[1] * 3)
    assert batches == [1, 1, 1]


# --- command line -------------------------------------------------------------------------------

def test_serve_binds_to_this_machine_only_by_default():
    args = build_parser().parse_args(["serve", "runs/x"])
    assert (args.host, args.port, args.workers) == ("127.0.0.1", 8000, 1)


def test_serve_refuses_a_folder_without_a_bundle_in_one_line(capsys, tmp_path):
    assert main(["serve", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("imgcls: error:") and "is not a model bundle" in err and err.count("\n") == 1

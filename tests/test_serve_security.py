"""`imgcls serve` (issue 14): pixels per image are bounded before decoding and decodes run a few at a
time; only its own Host names are answered (DNS rebinding); no CORS unless asked; and no answer names
a folder of the server."""
from __future__ import annotations

import io
import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from imgcls.cli.main import main
from imgcls.errors import ImgclsError
from imgcls.serve import server, service
from imgcls.serve.app import create_app
from imgcls.serve.config import ServeConfig
from imgcls.serve.hosts import answers, host_name, trusted_hosts


def png_bytes(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save)
    return buffer.getvalue()


def upload(name: str, data: bytes, field: str = "files"):
    return (field, (name, data, "image/png"))


@pytest.fixture(scope="module")
def digit(digits_dir):
    return sorted((digits_dir / "test" / "3").glob("*.png"))[0].read_bytes()


@pytest.fixture(scope="module")
def huge_png():
    """Issue 14's upload: 9.9 kB of 1-bit PNG that decodes to 9000 x 9000 (81 Mpx, under Pillow's bomb limit)."""
    return png_bytes(Image.new("1", (9000, 9000)), optimize=True)


@pytest.fixture
def decodes(monkeypatch):
    """The images the server decodes, by their size in pixels."""
    seen = []
    real = service.decode_image

    def recording(source, size=None):
        seen.append(Image.open(io.BytesIO(source)).size)
        return real(source, size)

    monkeypatch.setattr(service, "decode_image", recording)
    return seen


# --- pixels -------------------------------------------------------------------------------------

def test_a_small_png_of_81_megapixels_gets_413_naming_the_limit_and_is_never_decoded(client, huge_png, decodes):
    assert len(huge_png) < 20_000
    response = client.post("/predict", files=[upload("huge.png", huge_png)])
    detail = response.json()["detail"]
    assert response.status_code == 413
    assert "'huge.png' is 9000x9000 = 81.0 Mpx, over the 40 Mpx limit per image" in detail and "--max-megapixels" in detail
    assert decodes == [] and client.get("/health").status_code == 200


def test_one_image_over_the_limit_refuses_the_request_before_any_image_is_decoded(run_copy, digit, decodes):
    big = png_bytes(Image.new("RGB", (400, 400)))  # 0.16 Mpx
    with TestClient(create_app(run_copy, ServeConfig(max_megapixels=0.1), device="cpu")) as client:
        mixed = client.post("/predict", files=[upload("three.png", digit), upload("big.png", big)])
        alone = client.post("/predict", files=[upload("three.png", digit)])
        for endpoint in ("/explain", "/similar"):
            assert client.post(endpoint, files=[upload("big.png", big, "file")]).status_code == 413
    assert mixed.status_code == 413 and "'big.png' is 400x400 = 0.2 Mpx, over the 0.1 Mpx limit" in mixed.json()["detail"]
    assert alone.status_code == 200 and len(decodes) == 1


def test_the_pixel_limit_can_be_raised_and_is_published_in_model(run_copy):
    image = png_bytes(Image.new("RGB", (400, 400), "white"))
    with TestClient(create_app(run_copy, ServeConfig(max_megapixels=0.2), device="cpu")) as client:
        assert client.get("/model").json()["limits"]["max_megapixels"] == 0.2
        assert client.post("/predict", files=[upload("big.png", image)]).status_code == 200


def test_no_more_images_are_decoded_at_once_than_decode_threads(run_copy, digit, monkeypatch):
    running, most = 0, 0
    lock = threading.Lock()
    real = service.decode_image

    def slow(source, size=None):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return real(source, size)

    monkeypatch.setattr(service, "decode_image", slow)
    with TestClient(create_app(run_copy, ServeConfig(decode_threads=2), device="cpu")) as client:
        with ThreadPoolExecutor(8) as pool:
            requests = [pool.submit(client.post, "/predict", files=[upload("three.png", digit)] * 2) for _ in range(8)]
            statuses = [r.result().status_code for r in requests]
    assert statuses == [200] * 8 and most == 2


# --- Host header (DNS rebinding) ----------------------------------------------------------------

@pytest.mark.parametrize("host, named, expected", [
    ("127.0.0.1", (), ("127.0.0.1", "localhost", "[::1]")),
    ("localhost", ("box.lan",), ("localhost", "127.0.0.1", "[::1]", "box.lan")),
    ("::1", (), ("[::1]", "localhost", "127.0.0.1")),
    ("192.168.1.5", (), ("192.168.1.5",)),
    ("0.0.0.0", (), ()),  # any Host, with a warning at start
    ("0.0.0.0", ("box.lan", "*.example.com"), ("localhost", "127.0.0.1", "[::1]", "box.lan", "*.example.com")),
])
def test_the_server_answers_to_its_own_address_and_the_names_given(host, named, expected):
    assert sorted(trusted_hosts(host, named)) == sorted(expected)


def test_a_request_for_another_host_name_is_refused_with_400(run_copy):
    config = ServeConfig(allowed_hosts=trusted_hosts("127.0.0.1"))
    with TestClient(create_app(run_copy, config, device="cpu"), base_url="http://127.0.0.1:8000") as client:
        rebound = client.get("/model", headers={"host": "attacker.example:8000"})
        answered = [client.get("/model", headers={"host": host}).status_code
                    for host in ("127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000")]
    assert rebound.status_code == 400 and "host" in rebound.text.lower()
    assert answered == [200] * 4


class Started(Exception):
    """Raised instead of running uvicorn: what `serve` would have served is in its args."""


@pytest.fixture
def started(monkeypatch):
    """`serve` builds apps from their ServeConfig alone and stops where uvicorn would start."""
    def run(app, **kwargs):
        raise Started(app, kwargs)

    monkeypatch.setattr(server, "create_app", lambda bundle, config, *args: config)
    monkeypatch.setattr(server.uvicorn, "run", run)


def serve_runs(argv: list[str]):
    """What `imgcls serve ARGV` hands uvicorn: the app (here, the config it was built with) or its import string."""
    with pytest.raises(Started) as started:
        main(["--debug", "serve", *argv])
    return started.value.args[0]


def test_serve_on_every_address_accepts_any_host_unless_names_are_given_and_warns(run_copy, started, capsys):
    config = serve_runs([str(run_copy), "--host", "0.0.0.0"])
    assert config.allowed_hosts == () and "any Host header is accepted" in capsys.readouterr().err
    named = serve_runs([str(run_copy), "--host", "0.0.0.0", "--allowed-host", "box.lan", "--allowed-host", "10.0.0.7"])
    assert {"box.lan", "10.0.0.7", "localhost"} <= set(named.allowed_hosts)


def test_serve_on_loopback_answers_only_loopback_names(run_copy, started):
    config = serve_runs([str(run_copy)])
    assert set(config.allowed_hosts) == {"127.0.0.1", "localhost", "[::1]"} and config.cors_origins == ()


def test_worker_processes_get_the_same_access_settings(run_copy, started, monkeypatch):
    import torch

    monkeypatch.setenv(server.SETTINGS_ENV, "")  # restored after the test
    monkeypatch.setattr(torch, "set_num_threads", lambda threads: None)  # the test process keeps its own
    parent = serve_runs([str(run_copy), "--workers", "2", "--allowed-host", "box.lan", "--cors", "https://app.example"])
    assert parent == "imgcls.serve.server:app_from_env"  # what uvicorn imports in each worker
    worker = server.app_from_env()
    assert "box.lan" in worker.allowed_hosts and "localhost" in worker.allowed_hosts
    assert worker.cors_origins == ("https://app.example",) and worker.max_megapixels == ServeConfig.max_megapixels


@pytest.mark.parametrize("argv, message", [
    (["--allowed-host", "box*.lan"], "--allowed-host takes a name, '*.example.com' or '*', got 'box*.lan'"),
    (["--cors", "example.com"], "--cors takes an origin like https://example.com:8080"),
    (["--cors", "https://example.com/"], "no path), got 'https://example.com/'"),
    (["--max-megapixels", "0"], "max_megapixels must be positive, got 0.0"),
])
def test_serve_refuses_bad_access_settings_with_the_fix(run_copy, argv, message, capsys):
    assert main(["serve", str(run_copy), *argv]) == 2
    assert message in capsys.readouterr().err


# --- CORS ---------------------------------------------------------------------------------------

def test_no_cors_headers_by_default(client):
    response = client.get("/model", headers={"origin": "https://attacker.example"})
    preflight = client.options("/predict", headers={"origin": "https://attacker.example",
                                                    "access-control-request-method": "POST"})
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_only_for_the_origins_named(run_copy, digit):
    config = ServeConfig(cors_origins=("https://app.example",))
    with TestClient(create_app(run_copy, config, device="cpu")) as client:
        allowed = client.post("/predict", files=[upload("three.png", digit)], headers={"origin": "https://app.example"})
        preflight = client.options("/predict", headers={"origin": "https://app.example", "access-control-request-method": "POST"})
        other = client.get("/model", headers={"origin": "https://attacker.example"})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert preflight.status_code == 200 and "POST" in preflight.headers["access-control-allow-methods"]
    assert "access-control-allow-origin" not in other.headers


# --- no server paths in answers -----------------------------------------------------------------

def test_similar_names_training_images_relative_to_the_training_folder(client, digits_dir, tmp_path_factory):
    image = sorted((digits_dir / "train" / "7").glob("*.png"))[0]
    response = client.post("/similar", params={"k": 5}, files=[upload("query.png", image.read_bytes(), "file")])
    text = response.text
    assert response.status_code == 200 and response.json()["results"][0]["path"] == f"train/7/{image.name}"
    assert str(tmp_path_factory.getbasetemp()) not in text and str(digits_dir) not in text


@pytest.mark.parametrize("recorded, message", [
    (False, "no look-alikes: no training data known for 'model'"),
    (True, "no look-alikes: the training data 'train-data' recorded in data.json is gone"),
])
def test_missing_training_data_is_explained_without_the_servers_folders(trained_run, digit, tmp_path, recorded, message):
    run = tmp_path / "run"
    shutil.copytree(trained_run.bundle_dir, run / "model")
    if recorded:
        (run / "data.json").write_text(json.dumps({"data_dir": str(tmp_path / "gone" / "train-data")}))
    with TestClient(create_app(run, device="cpu")) as client:
        note = client.get("/model").json()["similar_note"]
        similar = client.post("/similar", files=[upload("three.png", digit, "file")])
    assert similar.status_code == 404
    for text in (note, similar.json()["detail"]):
        assert str(tmp_path) not in text and "/model" not in text
    assert note.startswith(message)


def test_an_error_that_names_a_server_file_reaches_the_client_by_file_name_only(run_copy, digit, tmp_path):
    class Damaged:
        def probabilities(self, pixels):
            raise ImgclsError(f"the model file '{tmp_path / 'bundle' / 'model.onnx'}' is damaged; export it again")

    with TestClient(create_app(run_copy, device="cpu", backend=Damaged())) as client:
        response = client.post("/predict", files=[upload("three.png", digit)])
    assert response.status_code == 422
    assert response.json()["detail"] == "the model file 'model.onnx' is damaged; export it again"


@pytest.mark.parametrize("header, answered", [
    ("LocalHost:8000", True), ("[::1]:8000", True), ("api.example.com", True),
    ("example.com", False), ("evil.com:80", False), ("[::1", False), ("", False),
])
def test_a_host_header_is_read_as_a_name_and_a_port(header, answered):
    assert answers(host_name(header), ("localhost", "[::1]", "*.example.com")) is answered

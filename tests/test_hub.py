"""Specification of sharing on the Hugging Face Hub: `imgcls push` and hf:// bundles.

No network here: push is checked through --dry-run (the files it would upload) and through its errors,
which come before any upload or from a port nothing listens on; hf:// loading is checked on the
dry-run files laid out as an offline Hugging Face cache, as `snapshot_download` leaves them.
"""
from __future__ import annotations

import json
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
import yaml

import imgcls
from imgcls.cli.main import main
from imgcls.errors import ImgclsError
from imgcls.export.hub import CARD_FILE, model_card, push
from imgcls.models.bundle import read_bundle_config, update_bundle_config

REPO = "someone/digits"
REVISION = "0123456789abcdef0123456789abcdef01234567"  # the commit the cached snapshot is of
EXPECTED_FILES = ["README.md", "model/config.json", "model/labels.txt", "model/model.safetensors"]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def front_matter(card: str) -> dict:
    _, yaml_text, _ = card.split("---\n", 2)
    return yaml.safe_load(yaml_text)


def all_strings(value):
    if isinstance(value, dict):
        yield from (s for item in value.values() for s in all_strings(item))
    elif isinstance(value, list):
        yield from (s for item in value for s in all_strings(item))
    elif isinstance(value, str):
        yield value


@pytest.fixture(scope="module")
def staged(trained_run, tmp_path_factory):
    """What `imgcls push RUN someone/digits --license mit` would upload, written by --dry-run."""
    out = tmp_path_factory.mktemp("push") / "staged"
    result = push(trained_run.run_dir, REPO, dry_run=out, license="mit")
    assert result.url is None and result.folder == out
    return out


def lay_out_cache(hub: Path, repo_id: str, files: Path, refs: tuple[str, ...] = ("main",)) -> None:
    """HF_HUB_CACHE/models--OWNER--NAME/{refs/<ref>, snapshots/<commit>/...}, as install-hf-cache.sh lays it out."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(REVISION)
    shutil.copytree(files, repo / "snapshots" / REVISION)


@pytest.fixture(scope="module")
def hub_home(staged, tmp_path_factory):
    """An offline Hugging Face home whose cache holds the staged repo (at main and at branch v2), a repo
    whose config.json asks for a download, and a repo with no bundle."""
    home = tmp_path_factory.mktemp("hf-home-pushed")
    lay_out_cache(home / "hub", REPO, staged, refs=("main", "v2"))
    doctored = tmp_path_factory.mktemp("doctored") / "repo"
    shutil.copytree(staged, doctored)
    config = json.loads((doctored / "model" / "config.json").read_text())
    config["img_size"] = 100_000  # ~30 GB per decoded image
    (doctored / "model" / "config.json").write_text(json.dumps(config))
    lay_out_cache(home / "hub", "someone/doctored", doctored)
    card_only = tmp_path_factory.mktemp("card-only") / "repo"
    card_only.mkdir()
    shutil.copy(staged / CARD_FILE, card_only / CARD_FILE)
    lay_out_cache(home / "hub", "someone/card-only", card_only)
    return home


@pytest.fixture
def hub_cache(hub_home, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(hub_home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_home / "hub"))  # read once at import
    return hub_home / "hub"


@pytest.fixture
def online_to_nowhere(monkeypatch, tmp_path):
    """Offline mode off, but every Hub request goes to a local port nothing listens on, and no saved token."""
    from huggingface_hub import constants

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)


# --- push: what is uploaded ---------------------------------------------------------------------


def test_dry_run_writes_exactly_the_bundle_and_a_card(capsys, trained_run, tmp_path):
    code, out, _ = run_cli(capsys, "push", trained_run.run_dir, REPO, "--dry-run", tmp_path / "out")
    assert code == 0
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert written == EXPECTED_FILES
    assert all(name in out for name in EXPECTED_FILES) and "nothing uploaded" in out
    bundle = trained_run.bundle_dir
    assert (tmp_path / "out/model/model.safetensors").read_bytes() == (bundle / "model.safetensors").read_bytes()
    assert (tmp_path / "out/model/labels.txt").read_text() == (bundle / "labels.txt").read_text()
    assert read_bundle_config(tmp_path / "out").classes == read_bundle_config(bundle).classes


def test_card_front_matter_is_what_the_hub_indexes(staged):
    meta = front_matter((staged / CARD_FILE).read_text(encoding="utf-8"))
    assert meta["library_name"] == "imgcls"
    assert meta["tags"] == ["image-classification", "imgcls", "timm"]
    assert meta["license"] == "mit"


def test_card_states_no_license_unless_told(trained_run):
    card = model_card(read_bundle_config(trained_run.run_dir), REPO)
    assert "license" not in front_matter(card)


def test_card_names_the_classes_the_data_the_metrics_and_how_to_use_it(staged, trained_run):
    card = (staged / CARD_FILE).read_text(encoding="utf-8")
    summary = json.loads((trained_run.run_dir / "data.json").read_text())
    assert all(f"`{name}`" in card for name in read_bundle_config(trained_run.run_dir).classes)
    assert "`cnn-bn`" in card and "32 x 32 px" in card
    assert f"`{Path(summary['data_dir']).name}`" in card
    for split, per_class in summary["counts"].items():
        assert f"{sum(per_class.values())} {split}" in card
    assert f"| accuracy | {trained_run.metrics['accuracy']:.3f} (95% interval" in card
    assert f"| macro-F1 | {trained_run.metrics['macro_avg']['f1']:.3f} |" in card
    assert "## Intended use and limitations" in card
    assert "pip install imgcls" in card and f"imgcls predict hf://{REPO} photo.jpg" in card
    assert f'imgcls.load("hf://{REPO}").predict("photo.jpg")' in card


def test_nothing_pushed_names_a_folder_of_this_machine(staged, trained_run):
    local = [str(Path.home()), tempfile.gettempdir(), str(trained_run.run_dir), str(Path.cwd())]
    for name in ("README.md", "model/config.json"):
        text = (staged / name).read_text(encoding="utf-8")
        assert not [folder for folder in local if folder in text], name
    config = json.loads((staged / "model/config.json").read_text())
    assert not [s for s in all_strings(config) if s.startswith(("/", "~"))]


def test_recorded_paths_are_pushed_as_names_only(trained_run, tmp_path):
    bundle = tmp_path / "run" / "model"
    shutil.copytree(trained_run.bundle_dir, bundle)
    weights = tmp_path / "secret-place" / "start.safetensors"
    update_bundle_config(bundle, weights_source=f"file:{weights}",
                         settings={"data": str(tmp_path / "secret-place" / "flowers"), "weights": str(weights),
                                   "model": "cnn-bn", "epochs": 3})
    push(bundle, REPO, dry_run=tmp_path / "out")
    config = read_bundle_config(tmp_path / "out")
    assert config.weights_source == "file:start.safetensors"
    assert config.settings == {"data": "flowers", "weights": "start.safetensors", "model": "cnn-bn", "epochs": 3}
    card = (tmp_path / "out" / CARD_FILE).read_text(encoding="utf-8")
    assert "secret-place" not in card and "`file:start.safetensors`" in card and "| epochs | 3 |" in card


def test_dry_run_keeps_a_folder_that_has_files(capsys, trained_run, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, "push", trained_run.run_dir, REPO, "--dry-run", tmp_path)
    assert code == 2 and "not empty" in err and err.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


# --- push: errors, each one line with its fix, before anything is uploaded ----------------------


@pytest.mark.parametrize("repo_id", ["digits", "someone/digits/extra", "some--one/digits", "someone/"])
def test_push_refuses_a_malformed_repo_id(capsys, trained_run, repo_id):
    code, _, err = run_cli(capsys, "push", trained_run.run_dir, repo_id, "--dry-run", "unused")
    assert code == 2 and "OWNER/NAME" in err and repr(repo_id) in err and err.count("\n") == 1


def test_push_offline_says_so_and_points_to_dry_run(capsys, trained_run):
    code, _, err = run_cli(capsys, "push", trained_run.run_dir, REPO)
    assert code == 1 and "HF_HUB_OFFLINE" in err and "--dry-run DIR" in err and err.count("\n") == 1


def test_push_without_a_token_says_how_to_log_in(capsys, trained_run, online_to_nowhere):
    code, _, err = run_cli(capsys, "push", trained_run.run_dir, REPO)
    assert code == 1 and "not logged in" in err and "hf auth login" in err and err.count("\n") == 1


def test_push_with_the_hub_unreachable_says_so(capsys, trained_run, online_to_nowhere, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    code, _, err = run_cli(capsys, "push", trained_run.run_dir, REPO, "--token", "hf_not_a_real_token_either")
    assert code == 1 and "cannot reach the Hugging Face Hub" in err and err.count("\n") == 1


# --- hf:// loading ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [f"hf://{REPO}", f"hf://{REPO}@v2", f"hf://{REPO}@{REVISION}"])
def test_hub_bundle_predicts_as_the_local_one(hub_cache, trained_run, digits_dir, path):
    images = sorted((digits_dir / "predict").glob("*.png"))[:8]
    assert imgcls.load(path).predict(images) == imgcls.load(trained_run.run_dir).predict(images)


def test_predict_command_takes_an_hf_path(capsys, hub_cache, trained_run, digits_dir):
    image = sorted((digits_dir / "predict").glob("*.png"))[0]
    code, out, _ = run_cli(capsys, "predict", f"hf://{REPO}", image, "--format", "json")
    _, local, _ = run_cli(capsys, "predict", trained_run.run_dir, image, "--format", "json")
    assert code == 0 and json.loads(out) == json.loads(local)


def test_what_commands_derive_from_a_hub_bundle_goes_to_a_run_folder_here_not_into_the_cache(
        capsys, hub_cache, digits_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = sorted((digits_dir / "predict").glob("*.png"))[0]
    assert run_cli(capsys, "explain", f"hf://{REPO}@v2", image)[0] == 0
    assert run_cli(capsys, "evaluate", f"hf://{REPO}", digits_dir)[0] == 0
    run = tmp_path / "runs" / REPO.replace("/", "--")
    assert (run / "explanations").is_dir() and list(run.glob("evaluation-*-test"))
    assert not [p for p in hub_cache.rglob("*") if p.name in ("explanations", "similar") or p.name.startswith("evaluation")]


def test_uncached_repo_offline_is_one_line_error(capsys, hub_cache, digits_dir):
    image = sorted((digits_dir / "predict").glob("*.png"))[0]
    code, out, err = run_cli(capsys, "predict", "hf://someone/absent", image)
    assert code == 1 and out == ""
    assert "hf://someone/absent" in err and "HF_HUB_OFFLINE" in err and err.count("\n") == 1


def test_uncached_repo_with_the_hub_unreachable_is_one_line_error(capsys, hub_cache, digits_dir, online_to_nowhere):
    image = sorted((digits_dir / "predict").glob("*.png"))[0]
    code, _, err = run_cli(capsys, "predict", "hf://someone/absent", image)
    assert code == 1 and "check the network" in err and err.count("\n") == 1


def test_cached_repo_loads_with_the_hub_unreachable(hub_cache, online_to_nowhere, digits_dir):
    image = sorted((digits_dir / "predict").glob("*.png"))[0]
    assert imgcls.load(f"hf://{REPO}").predict(image)[0]["error"] is None


def test_hub_bundle_is_checked_as_a_local_one(hub_cache):
    with pytest.raises(ImgclsError, match="img_size must be a whole number of pixels in .8, 4096., got 100000"):
        imgcls.load("hf://someone/doctored")


@pytest.mark.parametrize("path, message", [("hf://someone/card-only", "holds no imgcls bundle"),
                                           ("hf://digits", "hf://OWNER/NAME"),
                                           ("hf://some--one/digits", "not a Hub model name")])
def test_hf_path_errors_say_what_to_write(hub_cache, path, message):
    with pytest.raises(ImgclsError, match=message) as caught:
        imgcls.load(path)
    assert "\n" not in str(caught.value)

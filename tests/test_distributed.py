"""Several processes on one machine (gloo on the CPU): `imgcls train --nproc N`, as torchrun runs it."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from imgcls.cli.main import main
from imgcls.data.loader import Batches
from imgcls.distributed import Ranks, shard_rows, without_option

from conftest import FAST_CONFIG

TRAIN_ARGS = ["--model", "cnn-bn", "--batch-size", "32", "--img-size", "32", "--early-stopping", "0", "--no-report",
              "--no-progress"]
JOB_LIMIT_S = 180  # a generous bound on a few seconds of work: a hang fails the test instead of the suite


def _imgcls(*args: str, **popen) -> subprocess.Popen:
    """`python -m imgcls ARGS` in a fresh interpreter, as a user (or torchrun) starts it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "imgcls", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, **popen)


def _history(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_each_process_takes_its_part_of_every_global_batch():
    images = torch.arange(102, dtype=torch.uint8).view(102, 1, 1, 1).expand(102, 2, 2, 3).contiguous()
    targets = torch.eye(4)[torch.arange(102) % 4]

    def batches(ranks):
        return [rows[:, 0, 0, 0] for rows, _ in Batches(images, targets, 32, shuffle=True, seed=3, ranks=ranks,
                                                        transform=lambda rows, device: rows)]

    alone = batches(Ranks())
    parts = [batches(Ranks(rank, 3)) for rank in range(3)]
    assert {len(p) for p in parts} == {len(alone)}  # every process takes as many steps as one process would
    for step, whole in enumerate(alone):
        assert torch.equal(torch.cat([p[step] for p in parts]), whole)


def test_row_blocks_cover_every_row_once():
    blocks = [shard_rows(10, Ranks(rank, 3)) for rank in range(3)]
    assert [list(range(10))[b] for b in blocks] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    assert without_option(["train", "d", "--nproc", "2", "--nproc=3", "--out", "r"], "--nproc") == ["train", "d", "--out", "r"]


def test_two_processes_write_one_run_whose_validation_equals_a_single_process_evaluation(digits_dir, trained_run, tmp_path):
    run = tmp_path / "run"
    job = _imgcls("train", str(digits_dir), "--out", str(run), "--epochs", str(FAST_CONFIG["epochs"]), "--nproc", "2",
                  *TRAIN_ARGS, cwd=tmp_path)
    out, err = job.communicate(timeout=JOB_LIMIT_S)
    assert job.returncode == 0, err
    assert out.count("model:") == 1 and "error" not in err  # one process tells
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # one run folder
    history = _history(run)
    assert len(history) == FAST_CONFIG["epochs"]
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    # The validation gathered from both processes is what one process finds on the saved weights...
    assert float(history[-1]["val_accuracy"]) == pytest.approx(metrics["accuracy"])
    # ...and the global batch trains as one process with the same batch does (within the noise of 40 images).
    assert abs(metrics["accuracy"] - trained_run.metrics["accuracy"]) <= 0.15
    assert metrics["accuracy"] > 0.5


def test_a_killed_process_ends_the_job_in_one_line_and_the_run_resumes_with_another_count(digits_dir, tmp_path):
    run = tmp_path / "run"
    job = _imgcls("train", str(digits_dir), "--out", str(run), "--epochs", "8", "--nproc", "2", *TRAIN_ARGS)
    _wait_for_checkpoint(job, run)
    os.kill(_worker_of_rank(job.pid, 1), signal.SIGKILL)
    killed = time.monotonic()
    out, err = job.communicate(timeout=60)
    assert time.monotonic() - killed < 30  # no hang on the dead peer
    assert job.returncode == 1
    last = err.strip().splitlines()[-1]
    assert last == f"imgcls: error: process 1 of 2 failed (signal SIGKILL), so the job stopped; continue it with: " \
                   f"imgcls train --resume {run} --nproc 2"
    done = len(_history(run))
    assert 1 <= done < 8
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # one process continues what two began
    assert [int(row["epoch"]) for row in _history(run)] == list(range(1, 9))
    assert (run / "model" / "model.safetensors").is_file()


def test_with_max_restarts_a_killed_process_is_started_again_and_the_run_finishes(digits_dir, tmp_path):
    run = tmp_path / "run"
    job = _imgcls("train", str(digits_dir), "--out", str(run), "--epochs", "6", "--nproc", "2", "--max-restarts", "1",
                  *TRAIN_ARGS)
    _wait_for_checkpoint(job, run)
    os.kill(_worker_of_rank(job.pid, 1), signal.SIGKILL)
    out, err = job.communicate(timeout=JOB_LIMIT_S)
    assert job.returncode == 0, err
    assert "resuming" in err and out.count("model:") == 1
    assert [int(row["epoch"]) for row in _history(run)] == list(range(1, 7))  # each epoch once, in order


def _wait_for_checkpoint(job: subprocess.Popen, run: Path) -> None:
    deadline = time.monotonic() + JOB_LIMIT_S
    while not (run / "checkpoint.pt").exists():
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()
        time.sleep(0.05)


def _worker_of_rank(launcher_pid: int, rank: int) -> int:
    """The pid of the job's process of this rank, among the launcher's children (torchrun's workers)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == launcher_pid and f"RANK={rank}".encode() in environ:
                return pid
        time.sleep(0.05)
    raise AssertionError(f"no process of rank {rank} under {launcher_pid}")


def test_nproc_under_torchrun_is_a_usage_error(digits_dir, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["train", str(digits_dir), "--nproc", "2"]) == 2
    assert "under torchrun leave it out" in capsys.readouterr().err

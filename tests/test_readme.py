"""The README's quick start works as written: its commands, then its Python block, in a fresh folder."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
QUICK_START_MARK = "<!-- tests/test_readme.py runs the commands of this block"
PYTHON_MARK = "<!-- tests/test_readme.py runs this block"
LONG_RUNNING = ("serve",)  # a server does not end; its page and API have their own tests


def _block_after(mark: str) -> str:
    """The fenced code block that follows `mark` in the README."""
    text = README.read_text(encoding="utf-8")
    assert mark in text, f"the README lost its marker {mark!r}"
    found = re.search(r"```\w*\n(.*?)```", text[text.index(mark):], re.S)
    return found[1]


def _commands(block: str) -> list[list[str]]:
    """Each `imgcls ...` line of a shell block, without its comment."""
    commands = []
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "imgcls":
            commands.append(words)
    return commands


def test_the_quick_start_runs_as_written(tmp_path):
    commands = _commands(_block_after(QUICK_START_MARK))
    assert [words[1] for words in commands] == ["demo", "predict", "explain", "audit", "serve"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for words in commands:
        if words[1] in LONG_RUNNING:
            continue
        done = subprocess.run([sys.executable, "-m", "imgcls", *words[1:]], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{shlex.join(words)}: {done.stderr[-2000:]}"
        assert "error" not in done.stderr.lower(), done.stderr
    assert (tmp_path / "demo" / "run" / "report.html").is_file()

    script = _block_after(PYTHON_MARK)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()
    assert len(rows) == 3 and all(re.fullmatch(r"demo/digits/predict/\S+\.png \['\d'\] \{'label': '\d', 'score': .+\}", row)
                                  for row in rows), rows

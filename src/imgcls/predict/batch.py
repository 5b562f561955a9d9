"""Predicting a folder too large for one sitting: split it over machines (`Shard`), and write the rows to a
file that a killed run continues (`open_rows`).

Only line-per-image formats continue: jsonl (a line per image) and csv (a line per rank of each image). A
kill may cut the file anywhere, so it is trusted up to its last complete line only, and for csv not even
that line's image, whose other ranks may be missing: that tail is cut off and predicted again, which makes
the finished file the same, byte for byte, as one written in a single run.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TextIO, TypeVar

from ..errors import ImgclsError, UsageError

RESUMABLE_FORMATS = ("csv", "jsonl")
# Paths are written as the OS gives them: a name that is not UTF-8 round-trips rather than failing the run.
ENCODING = dict(encoding="utf-8", errors="surrogateescape")

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Block `index` (from 0) of `count` contiguous blocks of the inputs, in their order."""
    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """'K/N', as --shard takes it: shard K of N, 0 <= K < N."""
        match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
        if match is None:
            raise UsageError(f"--shard takes K/N, shard K of N counted from 0 (e.g. 0/4 ... 3/4); got {text!r}")
        index, count = map(int, match.groups())
        if not index < count:
            raise UsageError(f"--shard K/N needs 0 <= K < N (shards count from 0: 0/{max(count, 1)} is the first); got {text!r}")
        return cls(index, count)

    def block(self, items: Sequence[T], batch: int = 1) -> list[T]:
        """This shard's items, whole batches of `batch` items (as many in each shard as can be): the blocks of
        shards 0..count-1 concatenated are `items` again, and their batches those of `items` (see
        predictor.BATCH_SIZE: every shard's scores are those of one run over all the items)."""
        batches = -(-len(items) // batch)
        start, stop = (min(len(items), k * batches // self.count * batch) for k in (self.index, self.index + 1))
        return list(items[start:stop])


def check_rows_file(path: Path | None, fmt: str, resume: bool) -> None:
    """The --out/--resume usage errors, before any work is done."""
    if resume and path is None:
        raise UsageError("--resume continues an output file: give it with --out FILE")
    if resume and fmt not in RESUMABLE_FORMATS:
        raise UsageError(f"--resume continues --format {' or '.join(RESUMABLE_FORMATS)} files only, got --format {fmt} "
                         "(a json array or a table cannot be appended to)")
    if path is not None and not resume and path.exists():
        raise UsageError(f"'{path}' already exists; continue it with --resume, or remove it, or choose another --out")


def finished_rows(path: Path, fmt: str, columns: list[str], header: bool) -> tuple[dict[str, str | None], int]:
    """The images whose rows a csv or jsonl file of an interrupted run holds (path -> its error, None when it
    was read), and how many of its leading bytes to keep (see the module docstring). csv: `columns` are its
    columns, and `header` says whether its first line names them. Reads only: open_rows cuts."""
    if not path.exists():
        return {}, 0
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]  # a last line cut short by the kill is dropped
    return _finished_jsonl(complete, path) if fmt == "jsonl" else _finished_csv(complete, path, columns, header)


def open_rows(path: Path, keep: int | None = None) -> TextIO:
    """The file to append rows to: a new one (`keep` None), which must not exist yet, or an interrupted
    run's, cut to its first `keep` bytes (from finished_rows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if keep is None:
        try:
            return open(path, "x", newline="", **ENCODING)
        except FileExistsError:  # made since check_rows_file looked
            raise UsageError(f"'{path}' already exists; continue it with --resume, or remove it, or choose another --out") from None
    with open(path, "ab") as handle:  # made if it is not there; cut only after every check passed
        handle.truncate(keep)
    return open(path, "a", newline="", **ENCODING)


def _finished_jsonl(data: bytes, path: Path) -> tuple[dict[str, str | None], int]:
    finished = {}
    for number, line in enumerate(data.decode(**ENCODING).splitlines(), 1):
        try:
            row = json.loads(line)
            finished[row["path"]] = row["error"]
        except (ValueError, TypeError, KeyError):
            raise _not_ours(path, f"line {number}", line, "jsonl") from None
    return finished, len(data)


def _finished_csv(data: bytes, path: Path, columns: list[str], header: bool) -> tuple[dict[str, str | None], int]:
    """Each image's error from its first row, and the length of the file up to its last image's first row."""
    consumed, at_path, at_error = 0, columns.index("path"), columns.index("error")

    def lines():  # counts the bytes the reader has taken, to know where each row ends (a quoted newline spans two)
        nonlocal consumed
        for line in io.StringIO(data.decode(**ENCODING), newline=""):
            consumed += len(line.encode(**ENCODING))
            yield line

    finished: dict[str, str | None] = {}
    end = last_start = 0  # last_start: where the last image's rows begin (they are cut off and predicted again)
    for number, row in enumerate(csv.reader(lines()), 1):
        start, end = end, consumed
        if number == 1 and header:
            if row != columns:
                raise _not_ours(path, f"row {number}", row, "csv")
            last_start = end
        elif len(row) != len(columns):
            raise _not_ours(path, f"row {number}", row, "csv")
        elif row[at_path] not in finished:
            finished[row[at_path]], last_start = row[at_error] or None, start
    if finished:
        del finished[next(reversed(finished))]
    return finished, last_start


def resume_from(paths: Sequence[Path], finished: dict[str, str | None], rows_file: Path, batch: int = 1) -> int:
    """Where to start predicting `paths` again: at the batch of `batch` paths that holds the first one without rows
    (the batches of the first run, so the scores are its scores; the rows already there are not written again).
    A row for a path not among them means the file was written for other inputs, or by another shard."""
    strangers = finished.keys() - set(map(str, paths))
    if strangers:
        raise UsageError(f"'{rows_file}' holds rows for {len(strangers)} images not among these inputs (such as "
                         f"'{min(strangers)}'); was it written for other inputs or another --shard? "
                         "Give the same inputs and --shard as the run that wrote it, or another --out")
    first = next((index for index, path in enumerate(paths) if str(path) not in finished), None)
    return len(paths) if first is None else first - first % batch


def _not_ours(path: Path, where: str, row, fmt: str) -> ImgclsError:
    return ImgclsError(f"{where} of '{path}' is not a row of `imgcls predict --format {fmt}` ({str(row)[:80]}); "
                       "--resume continues only a file that command wrote")

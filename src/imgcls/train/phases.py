"""Where a training run's wall time goes, phase by phase, so that the time outside the epochs is seen.

`imgcls train` logs one line at the end (INFO) and returns the seconds in TrainResult.phase_seconds;
bench/overhead.py tabulates them. A phase entered twice adds up.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

# The phases of one run, in the order they happen; "other" is the rest of the wall time (settings, run folder).
PHASES = ("discover", "model", "decode", "hashes", "epochs", "evaluation", "report")


class PhaseTimer:
    """Seconds per phase (time.perf_counter), and the wall time since the timer was made."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        assert name in PHASES, name
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def wall_seconds(self) -> float:
        return time.perf_counter() - self.started

    def summary(self) -> dict[str, float]:
        """Seconds of each phase that ran, in PHASES order, then "other" and "total", rounded to 0.01 s."""
        total = self.wall_seconds()
        found = {name: round(self.seconds[name], 2) for name in PHASES if name in self.seconds}
        return {**found, "other": round(max(0.0, total - sum(self.seconds.values())), 2), "total": round(total, 2)}

    def line(self) -> str:
        """The summary in one line: 'decode 3.1s (12%), epochs 20.4s (80%), ...'."""
        summary = self.summary()
        total = summary["total"] or 1.0
        return ", ".join(f"{name} {seconds:.1f}s ({100 * seconds / total:.0f}%)"
                         for name, seconds in summary.items() if name != "total") + f"; total {summary['total']:.1f}s"

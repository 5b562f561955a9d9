"""User-facing errors: one class the CLI turns into a one-line message and an exit code."""
from __future__ import annotations

import difflib
from enum import IntEnum


class ExitStatus(IntEnum):
    OK = 0
    ERROR = 1  # the input could not be used (data, bundle, weights)
    USAGE = 2  # the command line itself was wrong
    INTERRUPTED = 130
    BROKEN_PIPE = 141  # 128 + SIGPIPE: stdout's reader went away (`imgcls models | head`), as a shell reports it


class ImgclsError(Exception):
    """An error the user can act on; its message says what was wrong and how to fix it."""

    exit_status = ExitStatus.ERROR


class UsageError(ImgclsError):
    exit_status = ExitStatus.USAGE


def did_you_mean(name: str, choices) -> str:
    """A ' did you mean ...?' suffix, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""

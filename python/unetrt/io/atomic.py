"""Atomic outputs: write under a hidden partial name, rename onto the output when complete.

A reader (Fiji, a pipeline watching the folder) never sees a half-written file, and a
failed or interrupted run leaves an existing output untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import OutputError

__all__ = ["atomic_output", "output_error", "partial_path", "resumable_partial_path"]


def partial_path(path: Path) -> Path:
    """The hidden name an output is written under until it is complete.

    ``.<stem>.partial-<pid><suffix>`` beside `path`: hidden, unique per process, and
    with the suffix kept for writers that check it (Keras wants ``.keras``).
    """
    return path.parent / f".{path.stem}.partial-{os.getpid()}{path.suffix}"


def resumable_partial_path(path: Path) -> Path:
    """The hidden name of a mask output being written: ``.<stem>.partial<suffix>``.

    Stable, unlike `partial_path`, so that a run killed partway (SIGKILL, a reboot)
    leaves a partial output the next run finds and continues (``--resume``); two runs
    writing the same output at once are kept apart by `unetrt.io.runrecord.RunRecord`.
    """
    return path.parent / f".{path.stem}.partial{path.suffix}"


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield `partial_path(path)` to write; rename it onto `path` when the block ends.

    If the block raises (Ctrl-C included), the partial file is deleted and an existing
    file at `path` is left untouched. An `OSError` (full disk, no permission) becomes
    an `OutputError` naming `path`.
    """
    partial = partial_path(path)
    try:
        yield partial
        os.replace(partial, path)
    except OSError as exc:
        # Not output_error(): these messages keep the system's wording ("No space left
        # on device"), which training's users (and tests) see today.
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        partial.unlink(missing_ok=True)


def output_error(path: Path, exc: OSError) -> OutputError:
    """The `OutputError` to raise for an `OSError` met while writing `path`.

    A full disk is named as such: it is the usual failure when the masks of a long
    video are written, and the message says that the output was discarded.
    """
    if exc.errno == errno.ENOSPC:
        return OutputError(f"disk full while writing {path}; nothing was written")
    return OutputError(f"cannot write to {path}: {exc.strerror or exc}")

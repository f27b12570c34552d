"""`RunRecord`: what a resumable mask output is being written with, and by whom.

A mask output is written under a stable hidden name (`resumable_partial_path`) so that
a run killed partway can be continued. Beside the partial output lies its run record,
``<partial name>.run``: the settings the frames were made with (the model, the input,
the options that change masks), as JSON. A later run with ``resume`` continues the
partial output only if it would make the same masks; any other run replaces it.

While a run writes the output it holds an exclusive lock on the record (``flock``, on
systems that have it), so a second run aimed at the same output fails at once with a
clear message instead of both writing the same partial file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..closeable import Closeable
from ..errors import OutputError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: no lock, the rest works
    fcntl = None  # type: ignore[assignment]

__all__ = ["ResumableOutput", "RunRecord", "record_path"]


def record_path(partial: Path) -> Path:
    """The run record beside the partial output `partial` (hidden, as it is)."""
    return partial.with_name(partial.name + ".run")


class RunRecord:
    """The locked run record of one output.

    Args:
        output: The output being written (for messages).
        partial: Its partial (hidden) name.
        settings: What the masks depend on, as JSON values.

    Attributes:
        matches: Whether an earlier run's record says the same settings, i.e. whether
            its partial output may be continued.
        differs: Whether an earlier run's record says other settings.

    Raises:
        OutputError: If another run is writing the same output now, or the record
            cannot be created.
    """

    def __init__(self, output: Path, partial: Path, settings: Mapping[str, Any]) -> None:
        self.path = record_path(partial)
        self._output = output
        self._text = json.dumps(settings, sort_keys=True, default=str)
        try:
            self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot write to {output}: {exc.strerror or exc}") from exc
        try:
            _lock(self._fd, output)
            with open(self._fd, closefd=False, encoding="utf-8", errors="replace") as handle:
                earlier = handle.read()
            self.matches = earlier == self._text
            #: An earlier run's record with other settings (its partial output is replaced).
            self.differs = bool(earlier) and not self.matches
        except BaseException:
            os.close(self._fd)
            self._fd = None
            raise

    @property
    def held(self) -> bool:
        """Whether this run still holds the record (not yet released)."""
        return self._fd is not None

    def start(self) -> None:
        """Record this run's settings: the partial output is begun anew.

        Raises:
            OutputError: If the record cannot be written (the record is released).
        """
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)
            os.write(self._fd, self._text.encode())
        except OSError as exc:
            self.release()
            raise OutputError(f"cannot write to {self._output}: {exc.strerror or exc}") from exc

    def release(self, *, keep: bool = False) -> None:
        """Unlock; delete the record unless `keep` (a partial output left to resume)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if keep:
            os.close(fd)
            return
        # Deleted while still locked, so that no other run takes a record on its way
        # out; Windows deletes no open file, so there it is closed first.
        if os.name == "nt":
            os.close(fd)
        with contextlib.suppress(OSError):
            self.path.unlink()
        if os.name != "nt":
            os.close(fd)


#: flock errors of file systems that do not lock (Lustre without -o flock, some NFS and
#: FUSE mounts): the run goes on without the guard against a second writer.
_NO_LOCKING = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}


def _lock(fd: int, output: Path) -> None:
    if fcntl is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OutputError(
            f"another unetrt run is writing {output} now; wait for it to end or "
            "choose another output"
        ) from None
    except OSError as exc:
        if exc.errno not in _NO_LOCKING:
            raise OutputError(f"cannot lock {output}: {exc.strerror or exc}") from exc


class ResumableOutput(Closeable):
    """A mask output that a later run may continue: in a ``with`` block, Ctrl-C
    keeps its partial output (`suspend`) when it was opened to resume; any other
    failure discards it (`abort`), as for every output."""

    path: Path
    _resumable: bool = False
    _record: RunRecord
    #: Frames kept from the earlier run.
    resumed: int = 0

    @property
    def replaced_other_settings(self) -> bool:
        """Whether resuming found a partial output made with other settings (replaced)."""
        return self._resumable and self._record.differs

    def missing(self) -> list[range]:
        """The frames still to write, as ranges."""
        raise NotImplementedError

    def write(self, frame: np.ndarray, index: int | None = None) -> None:
        """Write frame `index` (default: the next one)."""
        raise NotImplementedError

    def suspend(self) -> None:
        """Stop writing but keep the partial output and its record for a later resume."""
        raise NotImplementedError

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt) and self._resumable:
            self.suspend()
        else:
            super().__exit__(exc_type, exc, tb)

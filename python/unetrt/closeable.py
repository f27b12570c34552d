"""`Closeable`: the context-manager protocol for objects that hold a resource.

Frame sources, models and backends all release something in ``close()`` and are used in
``with`` blocks; they inherit ``__enter__`` / ``__exit__`` from here instead of each
writing them again.
"""

from __future__ import annotations

from types import TracebackType
from typing import TypeVar

_Self = TypeVar("_Self", bound="Closeable")


class Closeable:
    """Mixin: ``with obj:`` returns ``obj``; on the way out it calls ``obj.close()``, or
    ``obj.abort()`` when the block failed."""

    def close(self) -> None:
        """Release what the object holds; subclasses override."""

    def abort(self) -> None:
        """Called instead of `close` when the ``with`` block raised: the same by default;
        an output that would be incomplete (a mask stack cut short) discards itself."""
        self.close()

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

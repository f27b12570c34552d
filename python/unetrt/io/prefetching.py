"""Background prefetch: produce the next frames while the caller works on the current one."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

__all__ = ["prefetch"]

T = TypeVar("T")

_ITEM, _DONE, _FAILED = range(3)


def prefetch(iterable: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Produce the items of `iterable` in a background thread, `depth` ahead.

    Reading and decoding the next frames overlaps with the caller's work on the
    current one. Memory stays bounded: at most `depth` items wait in the queue. The
    producer's exception is re-raised in the caller. When the caller stops early
    (``break``, an exception, Ctrl-C) the producer is told to stop and is not waited
    for beyond a short grace period; it is a daemon thread, so it never keeps the
    interpreter alive.

    Args:
        iterable: The items to produce, e.g. a `FrameSource`.
        depth: How many items may be produced ahead of the caller (>= 1).

    Yields:
        The items of `iterable`, in order.
    """
    if depth < 1:
        raise ValueError(f"prefetch depth must be >= 1, got {depth}")
    items: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[int, Any]) -> bool:
        # Time out regularly so a consumer that went away is noticed.
        while not stop.is_set():
            try:
                items.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = iter(iterable)
        try:
            for item in iterator:
                if not put((_ITEM, item)):
                    return
            put((_DONE, None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put((_FAILED, exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name="unetrt-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            # A timed get keeps Ctrl-C responsive on every platform.
            try:
                kind, value = items.get(timeout=0.1)
            except queue.Empty:
                continue
            if kind == _DONE:
                return
            if kind == _FAILED:
                raise value
            yield value
    finally:
        stop.set()
        worker.join(timeout=1.0)

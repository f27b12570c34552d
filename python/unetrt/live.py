"""Live segmentation: frames submitted one by one, segmented by one worker thread.

`unetrt.Segmenter.submit` hands a frame to a `LiveQueue` and returns a
`concurrent.futures.Future` at once; the queue's worker segments frames in submission
order on the Segmenter's live `unetrt.pipeline.VideoStream` (so a temporal model keeps
its state across submitted frames), taking as many waiting frames per engine call as the
Segmenter batches, and resolves each future with the mask (or the probabilities).

A producer faster than the engine meets a bounded queue: ``when_full="block"`` makes
`submit` wait for room; ``"drop_oldest"`` drops the oldest waiting frame (its future is
cancelled and counted in `LiveStats.dropped`) so that the newest frames keep flowing,
as a microscope that must react to what it sees now wants.

Frames are copied at `submit` into slots reused frame after frame (a camera driver may
reuse its buffer as soon as the call returns); the masks and probabilities handed to
the futures are new arrays owned by the caller.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError

WHEN_FULL = ("block", "drop_oldest")


@dataclass(frozen=True)
class LiveStats:
    """What the live queue did so far.

    Attributes:
        submitted: Frames `submit` accepted.
        completed: Frames whose future got a result.
        dropped: Frames dropped unsegmented (``when_full="drop_oldest"``).
        failed: Frames whose future got an exception.
        cancelled: Frames whose future the caller cancelled before they were taken.

    Once the queue is closed, ``completed + dropped + failed + cancelled == submitted``.
    """

    submitted: int = 0
    completed: int = 0
    dropped: int = 0
    failed: int = 0
    cancelled: int = 0

    def __str__(self) -> str:
        text = (
            f"live: {self.submitted} frames submitted, {self.completed} segmented, "
            f"{self.dropped} dropped, {self.failed} failed"
        )
        return f"{text}, {self.cancelled} cancelled" if self.cancelled else text


@dataclass(eq=False)
class _Item:
    frame: np.ndarray
    future: Future[np.ndarray]
    probabilities: bool


class LiveQueue:
    """A bounded queue of submitted frames and the thread that segments them.

    Args:
        predict: Runs frames through the pipeline: ``predict(frames)`` yields their
            probabilities in order, or in place of a refused frame its exception (the
            Segmenter's live stream is bound in).
        to_mask: Turns probabilities into a mask.
        batch: Frames the worker takes per run when several are waiting.
        queue_size: Frames that may wait.
        when_full: ``"block"`` or ``"drop_oldest"``.
    """

    def __init__(
        self,
        predict: Callable[[Iterable[np.ndarray]], Iterator[np.ndarray | Exception]],
        to_mask: Callable[[np.ndarray], np.ndarray],
        *,
        batch: int,
        queue_size: int,
        when_full: str,
    ) -> None:
        check_queue(queue_size, when_full)
        self._predict = predict
        self._to_mask = to_mask
        self._batch = batch
        self._size = queue_size
        self._when_full = when_full
        self._waiting: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._slots: dict[tuple[tuple[int, ...], np.dtype[Any]], list[np.ndarray]] = {}
        self._stats = LiveStats()
        self._thread: threading.Thread | None = None

    @property
    def stats(self) -> LiveStats:
        """Counts of submitted, completed, dropped and failed frames."""
        with self._cond:
            return self._stats

    def submit(self, frame: np.ndarray, probabilities: bool = False) -> Future[np.ndarray]:
        """Queue a frame; see `unetrt.Segmenter.submit`."""
        frame = np.asarray(frame)
        future: Future[np.ndarray] = Future()
        with self._cond:
            self._check_open()
            slot = self._slot(frame)
        np.copyto(slot, frame)  # outside the lock: the worker keeps going meanwhile
        with self._cond:
            if len(self._waiting) >= self._size:
                if self._when_full == "drop_oldest":
                    self._drop_oldest()
                elif threading.current_thread() is self._thread:
                    self._free(slot)
                    raise ConfigError(
                        "submit() from a result callback would wait for itself: the queue is "
                        "full and only this thread empties it (use when_full='drop_oldest', "
                        "or submit from another thread)"
                    )
                else:
                    while len(self._waiting) >= self._size and not self._closing:
                        self._cond.wait()
            if self._closing:  # closed while this call waited for room
                self._free(slot)
                self._check_open()
            self._count(submitted=1)
            self._waiting.append(_Item(slot, future, probabilities))
            self._cond.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="unetrt-live", daemon=True)
                self._thread.start()
        return future

    def close(self) -> None:
        """Segment what is waiting, then stop the worker (from a result callback: stop
        taking new frames; the worker ends once the queue is empty)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _check_open(self) -> None:
        if self._closing:
            raise ConfigError("this Segmenter is closed; submit frames to an open one")

    def _drop_oldest(self) -> None:
        """Make room: the oldest waiting frame goes (ones the user cancelled go first,
        counted as cancelled, not dropped)."""
        while len(self._waiting) >= self._size:
            oldest = self._waiting.popleft()
            self._free(oldest.frame)
            if oldest.future.cancelled():  # the user had cancelled it already
                self._count(cancelled=1)
                continue
            oldest.future.cancel()
            self._count(dropped=1)
            return

    # ------------------------------------------------------------------ worker side
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closing:
                    self._cond.wait()
                if not self._waiting:
                    return
                take = min(len(self._waiting), self._batch)
                items = [self._waiting.popleft() for _ in range(take)]
                self._cond.notify_all()  # room for a blocked producer
            running = []
            for item in items:
                if item.future.set_running_or_notify_cancel():
                    running.append(item)
                else:
                    with self._cond:
                        self._count(cancelled=1)  # cancelled by the user while waiting
            try:
                self._run(running)
            except BaseException as exc:  # not an engine error: nothing can go on
                self._abandon(exc)
                raise
            finally:
                with self._cond:
                    for item in items:
                        self._free(item.frame)

    def _abandon(self, exc: BaseException) -> None:
        """The worker is dying: fail every frame still waiting, refuse new ones."""
        with self._cond:
            self._closing = True
            waiting = list(self._waiting)
            self._waiting.clear()
            self._cond.notify_all()
        for item in waiting:
            if item.future.set_running_or_notify_cancel():
                self._fail(item, RuntimeError(f"the live worker stopped: {exc!r}"))

    def _run(self, items: list[_Item]) -> None:
        done = 0
        try:
            # A refused frame comes back as its exception, in its place (isolating
            # executor): it fails its own future only.
            for item, result in zip(items, self._predict([i.frame for i in items]), strict=True):
                done += 1
                if isinstance(result, Exception):
                    self._fail(item, result)
                else:
                    self._resolve(item, result)
        except BaseException as exc:  # the engine failed: the frames of this run with it
            for item in items[done:]:
                self._fail(item, exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
            if not isinstance(exc, Exception):
                raise

    def _resolve(self, item: _Item, probabilities: np.ndarray) -> None:
        try:
            result = probabilities if item.probabilities else self._to_mask(probabilities)
        except Exception as exc:  # post-processing
            self._fail(item, exc)
            return
        item.future.set_result(result)
        with self._cond:
            self._count(completed=1)

    def _fail(self, item: _Item, exc: Exception) -> None:
        item.future.set_exception(exc)
        with self._cond:
            self._count(failed=1)

    # ------------------------------------------------------------------ helpers
    def _count(self, **changes: int) -> None:
        s = self._stats
        self._stats = LiveStats(**{k: getattr(s, k) + changes.get(k, 0) for k in vars(s)})

    def _slot(self, frame: np.ndarray) -> np.ndarray:
        free = self._slots.setdefault((frame.shape, frame.dtype), [])
        return free.pop() if free else np.empty(frame.shape, frame.dtype)

    def _free(self, slot: np.ndarray) -> None:
        self._slots.setdefault((slot.shape, slot.dtype), []).append(slot)


def check_queue(queue_size: int, when_full: str) -> None:
    """Raises ConfigError for a queue size below 1 or an unknown full-queue policy."""
    if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
        raise ConfigError(f"queue_size must be a positive integer, got {queue_size!r}")
    if when_full not in WHEN_FULL:
        raise ConfigError(f"when_full must be one of {WHEN_FULL}, got {when_full!r}")

"""Live segmentation: submit() futures, submission order, the full-queue policies."""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import CancelledError
from pathlib import Path

import numpy as np
import pytest

from unetrt import Segmenter
from unetrt.contract import ModelContract
from unetrt.errors import ConfigError, InputError
from unetrt.normalize import Normalization

POOLS = 2


def _frames(n: int, shape=(48, 64), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 4000, shape, dtype=np.uint16) for _ in range(n)]


def _threshold(unet_path: Path, frame: np.ndarray) -> float:
    """A threshold that splits this random network's output: masks are not all zero."""
    with Segmenter(unet_path) as seg:
        return float(np.median(seg.predict_frame(frame)))


def test_block_completes_every_frame_in_order(unet_path: Path) -> None:
    frames = _frames(12)
    threshold = _threshold(unet_path, frames[0])
    with Segmenter(unet_path, batch=3, queue_size=2, when_full="block", threshold=threshold) as seg:
        expected = [seg.segment_frame(f) for f in frames]
        futures = [seg.submit(f) for f in frames]
        masks = [f.result(timeout=30) for f in futures]
        probs = seg.submit(frames[0], probabilities=True).result(timeout=30)
        assert seg.dropped == 0
        stats = seg.live_stats
    for got, want in zip(masks, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert 0 < sum(np.count_nonzero(m) for m in masks) < sum(m.size for m in masks)
    with Segmenter(unet_path) as again:
        np.testing.assert_array_equal(probs, again.predict_frame(frames[0]))
    assert (stats.submitted, stats.completed, stats.dropped, stats.failed) == (13, 13, 0, 0)


def test_results_complete_in_submission_order(unet_path: Path) -> None:
    finished: list[int] = []
    lock = threading.Lock()
    with Segmenter(unet_path, batch=2, queue_size=16) as seg:
        futures = [seg.submit(f) for f in _frames(10, seed=1)]
        for i, fut in enumerate(futures):
            fut.add_done_callback(
                lambda _, i=i: (lock.acquire(), finished.append(i), lock.release())
            )
        for fut in futures:
            fut.result(timeout=30)
    assert finished == sorted(finished) == list(range(10))


def test_drop_oldest_keeps_up_with_a_fast_producer(unet_path: Path, monkeypatch) -> None:
    frames = _frames(40, seed=2)
    with Segmenter(unet_path, queue_size=2, when_full="drop_oldest") as seg:
        expected = [seg.segment_frame(f) for f in frames]
        real = seg.model.backend.run

        def slow(feeds, out=None):  # an engine slower than the camera
            time.sleep(0.02)
            return real(feeds, out)

        monkeypatch.setattr(seg.model.backend, "run", slow)
        futures = [seg.submit(f) for f in frames]  # as fast as Python goes
        for fut in futures:
            with contextlib.suppress(CancelledError):
                fut.result(timeout=30)
        dropped = [i for i, f in enumerate(futures) if f.cancelled()]
        done = [i for i, f in enumerate(futures) if not f.cancelled()]
        assert seg.dropped == len(dropped) > 0
        assert len(dropped) + len(done) == len(frames)
        assert seg.live_stats.completed == len(done)
        for i in done:
            np.testing.assert_array_equal(futures[i].result(), expected[i])
        assert done[-1] == len(frames) - 1  # the newest frame is never the one dropped


def test_the_caller_may_reuse_its_buffer(unet_path: Path) -> None:
    frames = _frames(6, seed=3)
    buffer = np.empty_like(frames[0])
    with Segmenter(unet_path, queue_size=8) as seg:
        expected = [seg.segment_frame(f) for f in frames]
        futures = []
        for f in frames:
            buffer[...] = f  # a camera driver refilling one buffer
            futures.append(seg.submit(buffer))
        for fut, want in zip(futures, expected, strict=True):
            np.testing.assert_array_equal(fut.result(timeout=30), want)


def test_a_bad_frame_fails_only_its_own_future(tmp_path: Path) -> None:
    from onnx import helper

    from unetrt import testing

    model = testing.affine_model(1.0, 0.0)
    contract = ModelContract(normalization=Normalization(method="none"))
    helper.set_model_props(model, {"unetrt": contract.to_json()})
    path = tmp_path / "identity.onnx"
    testing.save(model, path)
    frames = [np.full((8, 8), 0.25, np.float32) for _ in range(4)]
    frames[1] = frames[1].copy()
    frames[1][0, 0] = np.nan
    with Segmenter(path, batch=4) as seg:
        futures = [seg.submit(f, probabilities=True) for f in frames]
        with pytest.raises(InputError, match="NaN"):
            futures[1].result(timeout=30)
        for i in (0, 2, 3):
            np.testing.assert_array_equal(futures[i].result(timeout=30), frames[i])
        assert seg.live_stats.failed == 1
        # Frames keep their numbers in messages, the refused one included.
        nan = np.full((8, 8), np.nan, np.float32)
        with pytest.raises(InputError, match="^frame 4 of frames holds"):
            seg.submit(nan).result(timeout=30)


def test_submit_checks_the_shape_at_once(unet_path: Path) -> None:
    with Segmenter(unet_path) as seg, pytest.raises(InputError, match=r"\(H, W\)"):
        seg.submit(np.zeros((8, 8, 3), np.uint8))


def test_submit_from_several_threads(unet_path: Path) -> None:
    frames = _frames(8, seed=4)
    with Segmenter(unet_path, queue_size=4) as seg:
        expected = [seg.segment_frame(f) for f in frames]
        results: dict[int, np.ndarray] = {}

        def producer(indices: range) -> None:
            for i in indices:
                results[i] = seg.submit(frames[i]).result(timeout=30)

        threads = [threading.Thread(target=producer, args=(range(k, 8, 2),)) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i, want in enumerate(expected):
        np.testing.assert_array_equal(results[i], want)


def test_close_finishes_what_is_waiting_and_refuses_more(unet_path: Path) -> None:
    seg = Segmenter(unet_path, queue_size=16)
    futures = [seg.submit(f) for f in _frames(5, seed=5)]
    seg.close()
    assert all(f.done() and not f.cancelled() for f in futures)
    with pytest.raises(ConfigError, match="closed"):
        seg.submit(_frames(1)[0])


@pytest.mark.parametrize(
    ("options", "match"),
    [({"queue_size": 0}, "queue_size"), ({"when_full": "drop_newest"}, "when_full")],
)
def test_bad_queue_options(unet_path: Path, options, match) -> None:
    with pytest.raises(ConfigError, match=match):
        Segmenter(unet_path, **options)


def test_close_wakes_blocked_producers_and_accounts_for_every_frame(
    unet_path: Path, monkeypatch
) -> None:
    seg = Segmenter(unet_path, queue_size=1, when_full="block")
    real = seg.model.backend.run

    def slow(feeds, out=None):
        time.sleep(0.05)
        return real(feeds, out)

    monkeypatch.setattr(seg.model.backend, "run", slow)
    outcomes: list[str] = []
    lock = threading.Lock()

    def producer() -> None:
        for frame in _frames(6, seed=6):
            try:
                future = seg.submit(frame)
            except ConfigError:
                with lock:
                    outcomes.append("refused")
                continue
            future.result(timeout=30)  # every accepted frame completes: none hangs
            with lock:
                outcomes.append("done")

    threads = [threading.Thread(target=producer) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.15)
    seg.close()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive()
    stats = seg.live_stats
    assert len(outcomes) == 18 and outcomes.count("done") == stats.completed
    assert stats.submitted == stats.completed + stats.dropped + stats.failed + stats.cancelled


def test_cancelled_futures_are_counted_and_skipped(unet_path: Path, monkeypatch) -> None:
    with Segmenter(unet_path, queue_size=2, when_full="drop_oldest") as seg:
        gate = threading.Event()
        real = seg.model.backend.run

        def held(feeds, out=None):
            gate.wait(10)
            return real(feeds, out)

        monkeypatch.setattr(seg.model.backend, "run", held)
        frames = _frames(4, seed=7)
        first = seg.submit(frames[0])  # taken by the worker, held in the engine
        time.sleep(0.1)
        second, third = seg.submit(frames[1]), seg.submit(frames[2])
        assert second.cancel()  # the user changes their mind
        fourth = seg.submit(frames[3])  # full: the cancelled one goes, not `third`
        gate.set()
        for fut in (first, third, fourth):
            fut.result(timeout=30)
    stats = seg.live_stats
    assert (stats.submitted, stats.completed, stats.dropped, stats.cancelled) == (4, 3, 0, 1)


def test_submit_from_a_result_callback_never_waits_for_itself(unet_path: Path) -> None:
    errors: list[BaseException] = []
    with Segmenter(unet_path, queue_size=1, when_full="block") as seg:
        frames = _frames(3, seed=8)

        def resubmit(_fut) -> None:
            try:
                for f in frames:
                    seg.submit(f)  # the queue fills: this thread must not block on it
            except ConfigError as exc:
                errors.append(exc)

        seg.submit(frames[0]).add_done_callback(resubmit)
        deadline = time.monotonic() + 30
        while not errors and time.monotonic() < deadline:
            time.sleep(0.01)
    assert errors and "would wait for itself" in str(errors[0])

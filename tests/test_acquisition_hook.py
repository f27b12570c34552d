"""The pymmcore-plus acquisition hook of ``examples/pymmcore_plus_live.py``.

These tests run the real pymmcore-plus: a multi-dimensional acquisition on
pymmcore-plus's ``UniMMCore`` with the example's `SimulatedCamera`, a pure-Python camera
device emitting 64 x 64 uint16 frames at 50 Hz (no Micro-Manager installation or binary
device adapter is involved), whose frames reach the hook through the real
``core.mda.events.frameReady`` signal. They skip when pymmcore-plus (0.18 or later, for
``SimpleCameraDevice``) is not installed.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "pymmcore_plus", minversion="0.18", reason="needs pymmcore-plus>=0.18 (pure-Python cameras)"
)
import useq  # noqa: E402  (installed with pymmcore-plus)

from unetrt import Segmenter  # noqa: E402

POOLS = 2
FPS = 50.0
FRAMES = 50  # one second of acquisition
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pymmcore_plus_live.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("pymmcore_plus_live", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would: its classes name their module
    spec.loader.exec_module(module)
    return module


example = _load_example()


@pytest.fixture
def camera():
    return example.SimulatedCamera(shape=(64, 64), fps=FPS, cells=3, radius=8.0, seed=1)


@pytest.fixture
def core(camera):
    core = example.simulated_core(camera)
    yield core
    core.unloadAllDevices()


@pytest.fixture(scope="module")
def threshold(unet_path: Path) -> float:
    """A threshold that splits this random network's output: masks are not all zero."""
    twin = example.SimulatedCamera(shape=(64, 64), fps=1000.0, cells=3, radius=8.0, seed=1)
    buffer = np.empty((64, 64), np.uint16)
    twin.snap(buffer)  # the first frame the test camera will emit
    with Segmenter(unet_path) as seg:
        return float(np.median(seg.predict_frame(buffer)))


def _acquire(core, frames: int) -> None:
    """A time-lapse at the camera's own rate (interval 0: a sequence acquisition)."""
    core.mda.run(useq.MDASequence(time_plan={"interval": 0, "loops": frames}))


def _run_hooked(core, segmenter: Segmenter, on_mask, frames: int = FRAMES):
    """Acquire with the hook connected, then disconnect it.

    Returns:
        Every frame the acquisition emitted, by time point (recorded through the same
        signal, just before the hook sees it), and the seconds the acquisition took.
    """
    seen: dict[int, np.ndarray] = {}

    def keep(image: np.ndarray, event: useq.MDAEvent, metadata: dict) -> None:
        seen[event.index["t"]] = image.copy()

    signal = core.mda.events.frameReady
    listeners = len(signal)
    signal.connect(keep)
    disconnect = example.connect(core, segmenter, on_mask)
    assert len(signal) == listeners + 2
    started = time.perf_counter()
    try:
        _acquire(core, frames)
    finally:
        disconnect()
        signal.disconnect(keep)
    assert len(signal) == listeners  # the hook is gone
    return seen, time.perf_counter() - started


def _check_masks(unet_path: Path, threshold: float, seen, delivered) -> None:
    """Masks in acquisition order, each equal to a synchronous run on the same frame."""
    times = [t for t, _ in delivered]
    assert times == sorted(set(times)), "masks out of acquisition order"
    with Segmenter(unet_path, threshold=threshold) as reference:
        for t, mask in delivered:
            np.testing.assert_array_equal(mask, reference.segment_frame(seen[t]))
    masks = [mask for _, mask in delivered]
    assert 0 < sum(np.count_nonzero(m) for m in masks) < sum(m.size for m in masks)


def test_every_frame_is_segmented_or_dropped_in_order(
    unet_path: Path, core, camera, threshold: float
) -> None:
    delivered: list[tuple[int, np.ndarray]] = []

    def on_mask(mask: np.ndarray, event: useq.MDAEvent) -> None:
        delivered.append((event.index["t"], mask))

    with Segmenter(
        unet_path, queue_size=8, when_full="drop_oldest", threshold=threshold
    ) as segmenter:
        seen, elapsed = _run_hooked(core, segmenter, on_mask)
        # A second acquisition after disconnecting submits nothing.
        submitted = segmenter.live_stats.submitted
        _acquire(core, 5)
        assert segmenter.live_stats.submitted == submitted
    stats = segmenter.live_stats

    assert camera.frames_emitted == FRAMES + 5
    assert len(seen) == FRAMES
    assert elapsed >= (FRAMES - 1) / FPS * 0.9  # the camera really paced its frames
    assert stats.submitted == FRAMES
    assert stats.completed + stats.dropped == FRAMES
    assert stats.failed == 0
    assert len(delivered) == stats.completed > 0
    _check_masks(unet_path, threshold, seen, delivered)


def test_a_slow_consumer_drops_the_oldest_frames(
    unet_path: Path, core, camera, threshold: float
) -> None:
    """on_mask slower than the camera: the queue drops frames, the camera never waits."""
    delivered: list[tuple[int, np.ndarray]] = []

    def slow_on_mask(mask: np.ndarray, event: useq.MDAEvent) -> None:
        time.sleep(4 / FPS)  # 12.5 masks/s for a 50 Hz camera
        delivered.append((event.index["t"], mask))

    with Segmenter(
        unet_path, queue_size=2, when_full="drop_oldest", threshold=threshold
    ) as segmenter:
        seen, elapsed = _run_hooked(core, segmenter, slow_on_mask)
    stats = segmenter.live_stats

    # The acquisition kept its pace (about 1 s): waiting for on_mask would take 4 s.
    assert elapsed < 2.5
    assert len(seen) == FRAMES
    assert stats.submitted == camera.frames_emitted == FRAMES
    assert stats.completed + stats.dropped == FRAMES
    assert stats.dropped > 0
    assert stats.failed == 0
    assert len(delivered) == stats.completed
    _check_masks(unet_path, threshold, seen, delivered)

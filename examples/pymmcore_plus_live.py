"""Segment every frame of a pymmcore-plus acquisition as it is acquired.

pymmcore-plus emits ``core.mda.events.frameReady(image, event, metadata)`` for every
frame of a multi-dimensional acquisition (MDA), on the thread running it. `connect`
hands each frame to `unetrt.Segmenter.submit`, which copies it and returns at once, and
calls ``on_mask(mask, event)`` when the frame's mask is ready, in acquisition order. With
``when_full="drop_oldest"`` a camera faster than the engine never waits: the oldest
waiting frame is dropped instead (counted in ``segmenter.dropped``), so the masks keep up
with what the microscope sees now.

Run it (``pip install "pymmcore-plus>=0.18"``)::

    python examples/pymmcore_plus_live.py                     # simulated camera
    python examples/pymmcore_plus_live.py --model model.onnx --frames 200 --fps 50
    python examples/pymmcore_plus_live.py --config MMConfig_demo.cfg   # Micro-Manager

Without ``--config`` the camera is `SimulatedCamera`, a pure-Python camera device
(pymmcore-plus's experimental ``UniMMCore``) that emits drifting cells at a fixed frame
rate, so the example runs without a Micro-Manager installation.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING

import numpy as np
import useq
from pymmcore_plus import CMMCorePlus
from pymmcore_plus.experimental.unicore import SimpleCameraDevice, UniMMCore

from unetrt import Segmenter

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

log = logging.getLogger(__name__)

#: ``on_mask(mask, event)``: the frame's mask (uint8 0 / 255) and its MDA event
#: (``event.index`` holds its ``t``, ``p``, ``c``, ``z`` position in the acquisition).
OnMask = Callable[[np.ndarray, useq.MDAEvent], None]


def connect(core: CMMCorePlus, segmenter: Segmenter, on_mask: OnMask) -> Callable[[], None]:
    """Segment every frame that ``core``'s acquisitions emit.

    ``on_mask`` runs on the Segmenter's worker thread (or, for a frame segmented before
    its callback was attached, on the acquisition thread), one frame at a time, in
    acquisition order. Keep it short: while it runs, frames wait (and, with
    ``when_full="drop_oldest"``, the oldest are dropped). A GUI should hand the mask
    over to its own thread (e.g. a Qt signal) instead of drawing from here.

    Args:
        core: The pymmcore-plus core whose MDA frames to segment.
        segmenter: The Segmenter the frames are submitted to. All frames go to its one
            live stream: for a temporal model, acquire one position per Segmenter.
        on_mask: Called with ``(mask, event)`` for every segmented frame; dropped
            frames are skipped, frames that fail are logged and skipped.

    Returns:
        A function that disconnects the hook; frames already submitted still reach
        ``on_mask`` until ``segmenter.close()`` returns.
    """

    def deliver(future: Future[np.ndarray], event: useq.MDAEvent) -> None:
        if future.cancelled():  # dropped: the camera was faster than the engine
            return
        error = future.exception()
        if error is not None:  # e.g. a frame holding NaN: one bad frame, not the run
            log.warning("frame %s not segmented: %s", dict(event.index), error)
            return
        on_mask(future.result(), event)

    def frame_ready(image: np.ndarray, event: useq.MDAEvent, metadata: dict) -> None:
        future = segmenter.submit(image)  # copies the frame; returns at once
        future.add_done_callback(lambda done: deliver(done, event))

    core.mda.events.frameReady.connect(frame_ready)
    return lambda: core.mda.events.frameReady.disconnect(frame_ready)


class SimulatedCamera(SimpleCameraDevice):
    """A camera emitting frames at a fixed rate: cells drifting on a noisy background.

    Each cell is drawn as the bright ring that phase contrast puts around a cell, which
    the default model (trained on phase contrast) picks up.

    Args:
        shape: Frame height and width.
        fps: Frames per second of a sequence acquisition.
        cells: Number of cells.
        radius: Cell radius in pixels.
        seed: Seed of the cells' positions and of the noise.
    """

    def __init__(
        self,
        shape: tuple[int, int] = (256, 256),
        fps: float = 30.0,
        cells: int = 8,
        radius: float = 20.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self._shape = shape
        self._period = 1.0 / fps
        self._radius = radius
        self._exposure = 10.0
        self._rng = np.random.default_rng(seed)
        self._cells = self._rng.uniform((0, 0), shape, size=(cells, 2))
        self._velocity = self._rng.normal(0.0, 1.0, size=(cells, 2))
        self._yy, self._xx = np.mgrid[: shape[0], : shape[1]]
        self._due = 0.0  # when the next frame is due (perf_counter seconds)
        self.frames_emitted = 0

    def get_exposure(self) -> float:
        return self._exposure

    def set_exposure(self, exposure: float) -> None:
        self._exposure = exposure

    def sensor_shape(self) -> tuple[int, int]:
        return self._shape

    def dtype(self) -> DTypeLike:
        return np.uint16

    def snap(self, buffer: np.ndarray) -> Mapping:
        # Pace frames at a fixed rate (a late frame does not make the next one early).
        now = time.perf_counter()
        if now < self._due:
            time.sleep(self._due - now)
        self._due = max(now, self._due) + self._period
        self._cells = (self._cells + self._velocity) % self._shape
        image = self._rng.normal(1000.0, 30.0, self._shape)
        for y, x in self._cells:
            distance = np.hypot(self._yy - y, self._xx - x)
            image += 600.0 * np.exp(-(((distance - self._radius) / 2.5) ** 2))
        buffer[:] = np.clip(image, 0, 65535)
        self.frames_emitted += 1
        return {}


def simulated_core(camera: SimulatedCamera) -> UniMMCore:
    """A pymmcore-plus core whose only device is ``camera``, labelled ``"Camera"``."""
    # A Python camera needs no Micro-Manager installation; naming an adapter folder
    # skips pymmcore-plus's search for one (which logs an error when it finds none).
    core = UniMMCore(mm_path=tempfile.gettempdir())
    core.loadPyDevice("Camera", camera)
    core.initializeDevice("Camera")
    core.setCameraDevice("Camera")
    return core


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="ONNX model or built-in name")
    parser.add_argument("--config", help="Micro-Manager configuration (default: simulated)")
    parser.add_argument("--frames", type=int, default=100, help="frames to acquire")
    parser.add_argument("--fps", type=float, default=30.0, help="simulated camera rate")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(message)s")
    log.setLevel(logging.INFO)

    if args.config:
        core = CMMCorePlus()
        core.loadSystemConfiguration(args.config)
    else:
        core = simulated_core(SimulatedCamera(fps=args.fps))

    masks: dict[int, np.ndarray] = {}  # time point -> mask
    cells_found = threading.Event()

    def on_mask(mask: np.ndarray, event: useq.MDAEvent) -> None:
        t = event.index.get("t", 0)
        masks[t] = mask
        covered = np.count_nonzero(mask) / mask.size
        if covered > 0.02 and not cells_found.is_set():
            # The event-driven decision goes here: e.g. core.mda.cancel(), or queue a
            # high-resolution acquisition of this field.
            cells_found.set()
            log.info("frame %d: cells found (%.0f%% of the field)", t, 100 * covered)

    with Segmenter(args.model, queue_size=4, when_full="drop_oldest") as segmenter:
        disconnect = connect(core, segmenter, on_mask)
        try:
            # interval 0: a sequence acquisition at the camera's own frame rate.
            core.mda.run(useq.MDASequence(time_plan={"interval": 0, "loops": args.frames}))
        finally:
            disconnect()  # no new frames; closing the Segmenter finishes the waiting ones
    log.info("%s; %d masks kept", segmenter.live_stats, len(masks))


if __name__ == "__main__":
    main()

"""`unetrt segment --follow`: masks of a growing TIFF or folder, as acquisition writes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from unetrt import Segmenter
from unetrt.contract import ModelContract
from unetrt.errors import ConfigError
from unetrt.normalize import Normalization
from unetrt.testing import save, unet_model, unet_receptive_radius

FRAMES = 12
SHAPE = (40, 52)
RATE = 0.05  # seconds between frames, as a camera writing 20 frames/s
IDLE = 1.0


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    contract = ModelContract(
        alignment=4, halo=unet_receptive_radius(pools=2), normalization=Normalization("range")
    )
    path = tmp_path_factory.mktemp("m") / "unet.onnx"
    save(unet_model(filters=4, pools=2, contract=contract), path)
    # A threshold that splits this random network's output, so masks are not all empty.
    with Segmenter(path) as seg:
        threshold = float(np.median(seg.predict_frame(_frames()[0])))
    save(unet_model(filters=4, pools=2, contract=contract.replace(threshold=threshold)), path)
    return path


def _frames(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65535, (FRAMES, *SHAPE), dtype=np.uint16)


def _expected(model: Path, frames: np.ndarray) -> np.ndarray:
    with Segmenter(model) as seg:
        masks = np.stack([seg.segment_frame(f) for f in frames])
    assert 0 < np.count_nonzero(masks) < masks.size
    return masks


def _start(model: Path, source: Path, out: Path, idle: float = IDLE) -> subprocess.Popen:
    args = ["segment", source, "--model", model, "-o", out, "--follow", "--idle-timeout", idle]
    return subprocess.Popen(
        [sys.executable, "-m", "unetrt", *map(str, args), "-q"],
        stderr=subprocess.PIPE,
        text=True,
    )


def _append_pages(path: Path, frames: np.ndarray, stop_after: int | None = None) -> float:
    """Write pages one by one at `RATE`; returns when the last one was written."""
    with tifffile.TiffWriter(path) as tw:
        for i, frame in enumerate(frames):
            if stop_after is not None and i == stop_after:
                return time.monotonic()
            tw.write(frame, contiguous=False, metadata=None)
            tw.filehandle.flush()
            time.sleep(RATE)
        return time.monotonic()


def test_follow_a_growing_tiff(model: Path, tmp_path: Path) -> None:
    frames = _frames()
    src, out = tmp_path / "acq.tif", tmp_path / "acq_mask.tif"
    tifffile.TiffWriter(src).close()  # the acquisition has opened its file
    proc = _start(model, src, out)
    last = _append_pages(src, frames)
    assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    ended = time.monotonic()
    assert IDLE <= ended - last < IDLE + 8  # ends soon after the idle timeout
    np.testing.assert_array_equal(tifffile.imread(out), _expected(model, frames))
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no partial file


def test_follow_a_folder_receiving_files(model: Path, tmp_path: Path) -> None:
    frames = _frames(1)
    folder = tmp_path / "frames"
    folder.mkdir()
    out = tmp_path / "frames_mask.tif"
    proc = _start(model, folder, out)

    def writer() -> None:
        for i, frame in enumerate(frames):
            tmp = folder / f".t{i:03d}.tif.partial"
            tifffile.imwrite(tmp, frame)
            os.replace(tmp, folder / f"t{i:03d}.tif")  # complete files are renamed in
            time.sleep(RATE)

    thread = threading.Thread(target=writer)
    thread.start()
    thread.join()
    assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    np.testing.assert_array_equal(tifffile.imread(out), _expected(model, frames))
    # ...and equal to the offline run of the finished folder.
    with Segmenter(model) as seg:
        seg.segment(folder, tmp_path / "offline.tif", progress=False)
    np.testing.assert_array_equal(tifffile.imread(out), tifffile.imread(tmp_path / "offline.tif"))


def test_ctrl_c_is_the_normal_end_of_following(model: Path, tmp_path: Path) -> None:
    frames = _frames(2)
    src, out = tmp_path / "acq.tif", tmp_path / "acq_mask.tif"
    with tifffile.TiffWriter(src) as tw:
        for frame in frames[:5]:
            tw.write(frame, contiguous=False, metadata=None)
    proc = _start(model, src, out, idle=60)
    # The hidden partial mask file appears once the run follows (Ctrl-C handled from then).
    deadline = time.monotonic() + 30
    while not any(p.name.startswith(".acq_mask") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.0)  # frames are being segmented; the run waits for more
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # pressed twice, as users do: still the normal end
    assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    kept = tifffile.imread(out).reshape(-1, *SHAPE)
    assert 1 <= len(kept) <= 5  # on a busy machine not all five may have been read
    np.testing.assert_array_equal(kept, _expected(model, frames[: len(kept)]))


def test_a_writer_killed_mid_page_gives_one_line_and_keeps_the_masks(
    model: Path, tmp_path: Path
) -> None:
    frames = _frames(3)
    src, out = tmp_path / "acq.tif", tmp_path / "acq_mask.tif"
    with tifffile.TiffWriter(src) as tw:
        for frame in frames[:5]:
            tw.write(frame, contiguous=False, metadata=None)
    # The writer died while writing the fifth page's pixels: half of them are missing.
    last_page_bytes = frames[4].nbytes
    with open(src, "r+b") as f:
        f.truncate(src.stat().st_size - last_page_bytes // 2)
    proc = _start(model, src, out)
    stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode == 1
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("unetrt: error:"), stderr
    assert "Traceback" not in stderr
    assert "the masks of the 4 frames before were kept" in lines[0]
    np.testing.assert_array_equal(tifffile.imread(out), _expected(model, frames[:4]))


def test_idle_timeout_goes_with_follow(model: Path, tmp_path: Path) -> None:
    src = tmp_path / "a.tif"
    tifffile.imwrite(src, _frames()[:2], photometric="minisblack")
    args = ["segment", src, "--model", model, "--idle-timeout", "3"]
    result = subprocess.run(
        [sys.executable, "-m", "unetrt", *map(str, args)], capture_output=True, text=True
    )
    assert result.returncode == 1 and "--idle-timeout goes with --follow" in result.stderr


def test_follow_refuses_what_it_cannot_do(model: Path, tmp_path: Path) -> None:
    src = tmp_path / "a.tif"
    tifffile.imwrite(src, _frames()[:2], photometric="minisblack")
    with Segmenter(model) as seg, pytest.raises(ConfigError, match="frame selection"):
        seg.segment(src, follow=True, frames=slice(0, 1), progress=False)
    stack = Normalization(method="mean", scope="stack")
    with (
        Segmenter(model, normalization=stack) as seg,
        pytest.raises(ConfigError, match="per stack"),
    ):
        seg.segment(src, follow=True, progress=False)

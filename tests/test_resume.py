"""Resumable runs: a killed run leaves nothing complete-looking; --resume finishes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from unetrt import Segmenter
from unetrt.contract import ModelContract
from unetrt.errors import OutputError
from unetrt.io import StackWriter, open_frames, resumable_partial_path
from unetrt.testing import save, unet_model, unet_receptive_radius

FRAMES, SIZE = 120, 192


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A U-Net slow enough (tens of ms a frame) to be killed partway through a run."""
    contract = ModelContract(alignment=8, halo=unet_receptive_radius(pools=3, kernel=3))
    path = tmp_path_factory.mktemp("m") / "unet.onnx"
    save(unet_model(filters=16, pools=3, contract=contract), path)
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("v") / "video.tif"
    frames = np.random.default_rng(0).integers(0, 4000, (FRAMES, SIZE, SIZE), dtype=np.uint16)
    tifffile.imwrite(path, frames, photometric="minisblack")
    return path


@pytest.fixture(scope="module")
def expected(slow_model: Path, video: Path, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    out = tmp_path_factory.mktemp("e") / "full.tif"
    with Segmenter(slow_model) as seg:
        seg.segment(video, out, progress=False)
    return tifffile.imread(out)


def _command(model: Path, video: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "unetrt",
        "segment",
        str(video),
        "--model",
        str(model),
        "-o",
        str(out),
        *extra,
    ]


def _done(out: Path) -> int:
    """Frames the partial output of `out` holds now (approximately, for TIFF)."""
    partial = resumable_partial_path(out)
    if out.name.endswith(".zarr"):
        done = partial / ".unetrt-done"
        return len(os.listdir(done)) if done.is_dir() else 0
    return partial.stat().st_size // (SIZE * SIZE) if partial.exists() else 0


def _kill_partway(command: list[str], out: Path, frames: int) -> None:
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _done(out) < frames:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("name", ["masks.tif", "masks.ome.zarr"])
def test_a_killed_run_is_resumed_to_the_uninterrupted_result(
    slow_model: Path, video: Path, expected: np.ndarray, tmp_path: Path, name: str
) -> None:
    if name.endswith(".zarr"):
        pytest.importorskip("zarr", reason="OME-Zarr needs unetrt[zarr]")
    out = tmp_path / name
    command = _command(slow_model, video, out)
    _kill_partway(command, out, FRAMES // 3)
    assert not out.exists()  # nothing that looks complete...
    assert all(p.name.startswith(".") for p in tmp_path.iterdir())  # ...only hidden partials
    result = subprocess.run([*command, "--resume"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    segmented = int(result.stdout.split("segmented ")[1].split()[0])
    assert 0 < segmented <= FRAMES - FRAMES // 3 + 1  # only the missing frames (and a torn one)
    assert f"({FRAMES - segmented} frames kept from the interrupted run)" in result.stdout
    with open_frames(out) as masks:
        np.testing.assert_array_equal(np.stack(list(masks)), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # partial and record gone


def test_without_resume_an_earlier_partial_is_replaced(
    slow_model: Path, video: Path, expected: np.ndarray, tmp_path: Path
) -> None:
    out = tmp_path / "masks.tif"
    _kill_partway(_command(slow_model, video, out), out, 10)
    result = subprocess.run(_command(slow_model, video, out), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"segmented {FRAMES} frames" in result.stdout
    np.testing.assert_array_equal(tifffile.imread(out), expected)


def test_ctrl_c_of_a_resumable_run_keeps_its_frames(
    slow_model: Path, video: Path, expected: np.ndarray, tmp_path: Path
) -> None:
    out = tmp_path / "masks.tif"
    command = _command(slow_model, video, out, "--resume")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while _done(out) < 20:
        assert proc.poll() is None
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "--resume" in err and "Traceback" not in err
    assert not out.exists() and resumable_partial_path(out).exists()
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"segmented {FRAMES} frames" not in result.stdout  # it did not start over
    np.testing.assert_array_equal(tifffile.imread(out), expected)


def _stack_writer(path: Path, **options: object) -> StackWriter:
    return StackWriter(path, frame_shape=(16, 16), dtype=np.uint8, n_frames=6, **options)


def test_a_torn_last_page_is_dropped_and_rewritten(tmp_path: Path) -> None:
    frames = np.random.default_rng(1).integers(0, 256, (6, 16, 16), dtype=np.uint8)
    out = tmp_path / "m.tif"
    writer = _stack_writer(out, run={"k": 1}, resume=True)
    for frame in frames[:4]:
        writer.write(frame)
    writer.suspend()  # the run stops: the partial file and its record stay
    partial = resumable_partial_path(out)
    with open(partial, "r+b") as f:  # the 4th page torn, as by a kill mid-write
        f.truncate(partial.stat().st_size - 100)
    with _stack_writer(out, run={"k": 1}, resume=True) as again:
        assert again.resumed == 3 and again.missing() == [range(3, 6)]
        for i in range(3, 6):
            again.write(frames[i], i)
    np.testing.assert_array_equal(tifffile.imread(out), frames)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tif"]


def test_other_settings_start_anew(tmp_path: Path) -> None:
    out = tmp_path / "m.tif"
    writer = _stack_writer(out, run={"model": "a"})
    writer.write(np.ones((16, 16), np.uint8))
    writer.suspend()
    again = _stack_writer(out, run={"model": "b"}, resume=True)  # another model
    assert again.resumed == 0 and again.replaced_other_settings
    again.abort()
    assert not resumable_partial_path(out).exists()


def test_a_second_run_on_the_same_output_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "m.tif"
    with _stack_writer(out) as first:
        with pytest.raises(OutputError, match="another unetrt run is writing"):
            _stack_writer(out)
        for _ in range(6):
            first.write(np.zeros((16, 16), np.uint8))
    _stack_writer(out).abort()  # the lock went with the first writer


def test_resumed_tiff_continues_in_order(tmp_path: Path) -> None:
    out = _stack_writer(tmp_path / "m.tif")
    with pytest.raises(ValueError, match="after 0"):
        out.write(np.zeros((16, 16), np.uint8), 2)
    out.abort()


def test_ctrl_c_while_resuming_keeps_the_earlier_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames = np.random.default_rng(2).integers(0, 256, (6, 16, 16), dtype=np.uint8)
    out = tmp_path / "m.tif"
    writer = _stack_writer(out, run={"k": 1}, resume=True)
    for frame in frames[:4]:
        writer.write(frame)
    writer.suspend()
    import unetrt.io.writer as writer_module

    def interrupted(path: Path):  # Ctrl-C after the first frame is copied
        yield from list(complete_frames(path))[:1]
        raise KeyboardInterrupt

    from unetrt.io.follow import complete_frames

    monkeypatch.setattr(writer_module, "complete_frames", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _stack_writer(out, run={"k": 1}, resume=True)
    monkeypatch.undo()
    with _stack_writer(out, run={"k": 1}, resume=True) as again:
        assert again.resumed == 4  # nothing lost to the interrupted copy
        for i in range(4, 6):
            again.write(frames[i], i)
    np.testing.assert_array_equal(tifffile.imread(out), frames)


def test_an_output_that_fails_to_open_leaves_the_other_resumable(
    slow_model: Path, video: Path, tmp_path: Path
) -> None:
    out = tmp_path / "masks.tif"
    _kill_partway(_command(slow_model, video, out), out, 10)
    partial = resumable_partial_path(out)
    size = partial.stat().st_size
    with Segmenter(slow_model) as seg, pytest.raises(OutputError, match="does not exist"):
        seg.segment(video, out, probabilities=tmp_path / "typo" / "p.tif", resume=True)
    assert partial.stat().st_size >= size  # still there to resume
    with Segmenter(slow_model) as seg:
        summary = seg.segment(video, out, resume=True, progress=False)
    assert summary.frames < FRAMES


def test_a_zarr_partial_killed_while_being_created_starts_anew(tmp_path: Path) -> None:
    pytest.importorskip("zarr", reason="OME-Zarr needs unetrt[zarr]")
    from unetrt.io import ZarrWriter

    out = tmp_path / "m.ome.zarr"
    first = ZarrWriter(out, frame_shape=(8, 8), dtype=np.uint8, n_frames=2, run={"k": 1})
    first.suspend()
    (resumable_partial_path(out) / "0" / ".zarray").write_text('{"half')  # torn metadata
    frames = np.arange(128, dtype=np.uint8).reshape(2, 8, 8)
    with ZarrWriter(
        out, frame_shape=(8, 8), dtype=np.uint8, n_frames=2, run={"k": 1}, resume=True
    ) as again:
        assert again.resumed == 0
        for frame in frames:
            again.write(frame)
    with open_frames(out) as masks:
        np.testing.assert_array_equal(np.stack(list(masks)), frames)

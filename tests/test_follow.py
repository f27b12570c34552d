"""Following inputs that are still being written: real writers in threads, bounded in time.

The oracle is `open_frames` on the finished input: the followed frames must equal it
(arrays, dtype, shape, order), and no frame may be yielded before it is complete.
"""

from __future__ import annotations

import os
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile

from unetrt.errors import ConfigError, InputError
from unetrt.io import FollowedFrames, follow_frames, open_frames
from unetrt.io import follow as follow_module

IDLE = 0.8  # idle timeout of most tests: short, but many polls long (and a busy CI)
POLL = 0.01


def make_frames(n: int, h: int = 12, w: int = 10, dtype: str = "uint16") -> np.ndarray:
    """Frames whose every pixel differs (within the dtype), so a wrong or partial frame shows."""
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else None
    values = np.arange(n * h * w, dtype=np.int64) * 7919
    if info is not None:
        values %= int(info.max) + 1
    return values.reshape(n, h, w).astype(dtype)


def read_finished(path: Path) -> list[np.ndarray]:
    with open_frames(path) as frames:
        return list(frames)


def assert_same_frames(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(got) == len(expected)
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert a.shape == b.shape and a.dtype == b.dtype, f"frame {i}"
        assert a.flags.c_contiguous and a.dtype.isnative
        np.testing.assert_array_equal(a, b, err_msg=f"frame {i}")


class Writer:
    """Runs a writer function in a thread; `join` re-raises what it raised."""

    def __init__(self, target: Callable[[], None]) -> None:
        self.error: BaseException | None = None
        self.finished_at = 0.0

        def run() -> None:
            try:
                target()
            except BaseException as exc:  # handed to the test thread
                self.error = exc
            finally:
                self.finished_at = time.monotonic()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


def follow_all(source: Path, **kwargs: float) -> tuple[list[np.ndarray], list[float], float]:
    """All frames, the time each arrived, and when the iteration ended."""
    frames, times = [], []
    with follow_frames(source, idle_timeout=IDLE, poll_interval=POLL, **kwargs) as followed:
        for frame in followed:
            frames.append(frame)
            times.append(time.monotonic())
        assert followed.frames_read == len(frames)
    return frames, times, time.monotonic()


# --- a growing multi-page TIFF ------------------------------------------------------------


@pytest.mark.parametrize(
    ("bigtiff", "dtype", "compression"),
    [
        (False, "uint8", None),
        (False, "uint16", "zlib"),
        (True, "uint16", None),
        (True, "uint8", "zlib"),
    ],
)
def test_pages_are_yielded_as_a_tiff_writer_appends_them(
    tmp_path: Path, bigtiff: bool, dtype: str, compression: str | None
) -> None:
    path = tmp_path / "growing.tif"
    stack = make_frames(12, dtype=dtype)

    def write() -> None:
        # tifffile flushes after each page; metadata=None so that the finished file is
        # one series of pages, which is what open_frames reads.
        with tifffile.TiffWriter(path, bigtiff=bigtiff) as tw:
            for frame in stack:
                tw.write(frame, contiguous=False, metadata=None, compression=compression)
                time.sleep(0.02)

    path.touch()  # the follower opens it empty: the header is not there yet
    writer = Writer(write)
    frames, times, ended = follow_all(path)
    writer.join()
    assert_same_frames(frames, read_finished(path))
    assert_same_frames(frames, list(stack))
    assert times[0] < writer.finished_at  # frames arrive while the file is written
    assert ended - writer.finished_at < IDLE + 1.0


def test_a_contiguous_series_is_complete_only_when_the_writer_closes(tmp_path: Path) -> None:
    # tifffile writes the IFDs of a contiguous series' later pages, and its shape, on
    # closing; before that only the first page exists. The writer takes longer than the
    # idle timeout: the data it appends meanwhile counts as activity.
    path = tmp_path / "contiguous.tif"
    stack = make_frames(8, dtype="float32")
    closing = threading.Event()

    def write() -> None:
        with tifffile.TiffWriter(path) as tw:
            for frame in stack:
                tw.write(frame, contiguous=True)
                time.sleep(IDLE / 5)
            closing.set()

    writer = Writer(write)
    with follow_frames(path, idle_timeout=IDLE, poll_interval=POLL) as followed:
        followed.wait_first()
        assert followed.frame_shape == (12, 10)
        assert followed.dtype == np.float32
        frames = list(followed)
    writer.join()
    assert closing.is_set()
    assert_same_frames(frames, read_finished(path))


@pytest.mark.parametrize("bigtiff", [False, True])
def test_any_cut_through_the_file_is_never_read_as_a_frame(tmp_path: Path, bigtiff: bool) -> None:
    # Append a finished file's bytes in small pieces of varying size, so that the end of
    # the file falls inside IFDs, tag values and compressed strips alike.
    finished = tmp_path / "finished.tif"
    stack = make_frames(8, h=20, w=16)
    with tifffile.TiffWriter(finished, bigtiff=bigtiff) as tw:
        for frame in stack:
            tw.write(frame, metadata=None, compression="zlib", rowsperstrip=5)
    data = finished.read_bytes()
    path = tmp_path / "copy.tif"
    rng = np.random.default_rng(0)

    def write() -> None:
        with path.open("wb") as fh:
            position = 0
            while position < len(data):
                step = int(rng.integers(1, 150))
                fh.write(data[position : position + step])
                fh.flush()
                position += step
                time.sleep(0.001)

    path.touch()
    writer = Writer(write)
    frames, _, _ = follow_all(path)
    writer.join()
    assert_same_frames(frames, read_finished(finished))


def test_imagej_channels_stored_as_pages_make_one_frame(tmp_path: Path) -> None:
    finished = tmp_path / "hyperstack.tif"
    stack = make_frames(10, h=8, w=6).reshape(5, 2, 8, 6)
    tifffile.imwrite(finished, stack, imagej=True, metadata={"axes": "TCYX"})
    data = finished.read_bytes()
    path = tmp_path / "copy.tif"

    def write() -> None:
        with path.open("wb") as fh:
            for position in range(0, len(data), 200):
                fh.write(data[position : position + 200])
                fh.flush()
                time.sleep(0.002)

    path.touch()
    writer = Writer(write)
    frames, _, _ = follow_all(path)
    writer.join()
    expected = read_finished(finished)
    assert expected[0].shape == (8, 6, 2)
    assert_same_frames(frames, expected)


def test_rgb_and_tiled_big_endian_pages_match_open_frames(tmp_path: Path) -> None:
    rgb = make_frames(4 * 3, h=16, w=16, dtype="uint8").reshape(4, 3, 16, 16)
    planar = tmp_path / "planar.tif"
    tifffile.imwrite(planar, rgb, photometric="rgb", planarconfig="separate")
    tiled = tmp_path / "tiled.tif"
    tifffile.imwrite(
        tiled, make_frames(3, h=32, w=32), photometric="minisblack", byteorder=">", tile=(16, 16)
    )
    for path in (planar, tiled):
        frames, _, _ = follow_all(path)
        assert_same_frames(frames, read_finished(path))


def test_a_page_is_complete_only_once_it_reads_the_same_in_two_polls(tmp_path: Path) -> None:
    # A half-written IFD can look valid; only a page read identically twice is a frame.
    path = tmp_path / "s.tif"
    stack = make_frames(2)
    write_pages(path, stack, compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[1].offset
    follower = follow_module._StackFollower(path)
    try:
        follower.poll()
        assert follower.take() is None  # both pages seen once
        with path.open("r+b") as fh:  # the writer changes page 1's second entry meanwhile
            fh.seek(offset + 2 + 12 + 8)
            (width,) = struct.unpack("<I", fh.read(4))
            fh.seek(offset + 2 + 12 + 8)
            fh.write(struct.pack("<I", width + 1))
        follower.poll()
        first = follower.take()
        assert first is not None and [page.index for page in first] == [0]
        assert follower.take() is None  # page 1 changed: not confirmed yet
        assert "page 1 of" in (follower.problem() or "")
        follower.poll()
        second = follower.take()
        assert second is not None and [page.index for page in second] == [1]
        np.testing.assert_array_equal(follower.read(first, 0)[0], stack[0])
    finally:
        follower.close()


# --- writers that stop, truncate or corrupt -----------------------------------------------


def write_pages(path: Path, stack: np.ndarray, **kwargs: object) -> None:
    with tifffile.TiffWriter(path) as tw:
        for frame in stack:
            tw.write(frame, metadata=None, **kwargs)


def last_next_ifd_pointer(path: Path) -> int:
    """Where the last page's next-IFD offset is stored (classic little-endian TIFF)."""
    data = path.read_bytes()
    pointer = 4
    while True:
        (offset,) = struct.unpack_from("<I", data, pointer)
        if offset == 0:
            return pointer
        (count,) = struct.unpack_from("<H", data, offset)
        pointer = offset + 2 + 12 * count


def test_a_writer_killed_mid_page_never_yields_the_half_page(tmp_path: Path) -> None:
    # What tifffile's writer leaves when killed while writing page 3: the chain already
    # points at the new IFD, whose place is still a hole, and half the image data is there.
    # The follower yields the complete pages, then reports the incomplete one: open_frames
    # rejects such a file, and ending quietly would hide a broken acquisition.
    path = tmp_path / "killed.tif"
    stack = make_frames(4)
    write_pages(path, stack[:3])
    pointer = last_next_ifd_pointer(path)
    frames: list[np.ndarray] = []

    def die_mid_page() -> None:
        time.sleep(0.1)
        with path.open("r+b") as fh:
            end = fh.seek(0, os.SEEK_END)
            fh.seek(pointer)
            fh.write(struct.pack("<I", end))
            fh.seek(end + 200)  # the hole where the IFD would go
            fh.write(stack[3].tobytes()[:100])

    writer = Writer(die_mid_page)
    with (
        follow_frames(path, idle_timeout=IDLE, poll_interval=POLL) as followed,
        pytest.raises(InputError, match=r"page 3 of .*killed.tif is incomplete.*3 frames before"),
    ):
        for frame in followed:
            frames.append(frame)
    writer.join()
    assert_same_frames(frames, list(stack[:3]))
    assert time.monotonic() - writer.finished_at < IDLE + 1.0


def test_a_chain_pointing_past_the_end_is_reported_at_the_idle_timeout(tmp_path: Path) -> None:
    path = tmp_path / "dangling.tif"
    stack = make_frames(3)
    write_pages(path, stack)
    with path.open("r+b") as fh:
        end = fh.seek(0, os.SEEK_END)
        fh.seek(last_next_ifd_pointer(path))
        fh.write(struct.pack("<I", end + 1000))
    frames: list[np.ndarray] = []
    with (
        follow_frames(path, idle_timeout=IDLE, poll_interval=POLL) as followed,
        pytest.raises(InputError, match="page 3 .* beyond the end of the file"),
    ):
        frames.extend(followed)
    assert_same_frames(frames, list(stack))


def test_data_appended_without_a_page_ends_quietly(tmp_path: Path) -> None:
    # A writer that appends image data before linking its IFD (as libtiff does) and dies
    # leaves bytes no page refers to: open_frames reads the complete pages, and so do we.
    path = tmp_path / "unlinked.tif"
    stack = make_frames(3)
    write_pages(path, stack)
    with path.open("ab") as fh:
        fh.write(b"\x01" * 300)
    frames, _, _ = follow_all(path)
    assert_same_frames(frames, read_finished(path))


def test_a_truncated_file_is_an_input_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "shrinking.tif"
    stack = make_frames(6)
    write_pages(path, stack[:4])
    frames: list[np.ndarray] = []
    with (
        follow_frames(path, idle_timeout=IDLE, poll_interval=POLL) as followed,
        pytest.raises(InputError, match=r"shrinking.tif shrank from \d+ to \d+ bytes"),
    ):
        for frame in followed:
            frames.append(frame)
            if len(frames) == 4:
                os.truncate(path, path.stat().st_size // 2)
    assert_same_frames(frames, list(stack[:4]))


def test_corrupt_image_data_is_an_input_error_naming_the_frame(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.tif"
    stack = make_frames(4)
    write_pages(path, stack, compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[2].dataoffsets[0]
    with path.open("r+b") as fh:
        fh.seek(offset)
        fh.write(b"not zlib data at all")
    frames: list[np.ndarray] = []
    with (
        follow_frames(path, idle_timeout=IDLE, poll_interval=POLL) as followed,
        pytest.raises(InputError, match="frame 2 of .*corrupt.tif could not be read"),
    ):
        frames.extend(followed)
    assert_same_frames(frames, list(stack[:2]))


def test_a_file_replaced_while_followed_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "replaced.tif"
    write_pages(path, make_frames(2))
    other = tmp_path / "other.tif"
    write_pages(other, make_frames(3))
    with (
        follow_frames(path, idle_timeout=IDLE, poll_interval=POLL) as followed,
        pytest.raises(InputError, match="replaced.tif was replaced by another file"),
    ):
        for _ in followed:
            if other.exists():
                os.replace(other, path)


# --- stopping and waiting -----------------------------------------------------------------


def test_stop_ends_the_iteration_promptly(tmp_path: Path) -> None:
    path = tmp_path / "slow.tif"
    write_pages(path, make_frames(2))
    with follow_frames(path, idle_timeout=30, poll_interval=0.05) as followed:
        frames = iter(followed)
        next(frames)
        next(frames)
        stopped_at: list[float] = []

        def stop() -> None:
            time.sleep(0.2)
            stopped_at.append(time.monotonic())
            followed.stop()

        stopper = Writer(stop)
        assert list(frames) == []
        ended = time.monotonic()
        stopper.join()
    assert ended - stopped_at[0] < 1.0


def test_wait_first_on_a_file_that_never_gets_a_frame(tmp_path: Path) -> None:
    path = tmp_path / "empty.tif"
    path.touch()
    started = time.monotonic()
    with (
        follow_frames(path, idle_timeout=IDLE, poll_interval=POLL) as followed,
        pytest.raises(InputError, match=rf"no frame arrived in {IDLE} s from .*empty.tif"),
    ):
        followed.wait_first()
    assert IDLE <= time.monotonic() - started < IDLE + 1.0


def test_waiting_for_an_input_that_never_appears(tmp_path: Path) -> None:
    with (
        follow_frames(tmp_path / "later.tif", idle_timeout=IDLE, poll_interval=POLL) as followed,
        pytest.raises(
            InputError, match=rf"no such file or folder: .*later.tif \(waited {IDLE} s\)"
        ),
    ):
        list(followed)


def test_an_input_created_after_following_began(tmp_path: Path) -> None:
    path = tmp_path / "later.tif"
    stack = make_frames(3)

    def write() -> None:
        time.sleep(0.1)
        write_pages(path, stack)

    writer = Writer(write)
    frames, _, _ = follow_all(path)
    writer.join()
    assert_same_frames(frames, list(stack))


def test_wait_first_gives_the_frame_shape_and_the_frame_is_still_yielded(tmp_path: Path) -> None:
    path = tmp_path / "s.tif"
    stack = make_frames(3)
    write_pages(path, stack)
    with follow_frames(path, idle_timeout=IDLE, poll_interval=POLL) as followed:
        assert followed.frame_shape is None
        followed.wait_first()
        followed.wait_first()  # a no-op once the shape is known
        assert followed.describe_frame(0) == "frame 0 of s.tif"
        assert (followed.frame_shape, followed.dtype, followed.frames_read) == (
            (12, 10),
            np.uint16,
            0,
        )
        frames = list(followed)
        assert followed.describe_frame(2) == "frame 2 of s.tif"
        assert followed.describe_frame(-1) == "frame 2 of s.tif"
        with pytest.raises(IndexError):
            followed.describe_frame(3)
        with pytest.raises(RuntimeError, match="already being iterated"):
            iter(followed)
    assert_same_frames(frames, list(stack))


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="idle timeout must be a positive number"):
        follow_frames(tmp_path, idle_timeout=0)
    with pytest.raises(ConfigError, match="poll interval"):
        follow_frames(tmp_path, poll_interval=-1)
    with pytest.raises(InputError, match="not a pattern"):
        follow_frames(tmp_path / "t*.tif")
    with pytest.raises(InputError, match="no such folder"):
        follow_frames(tmp_path / "missing" / "s.tif")
    png = tmp_path / "one.png"
    png.write_bytes(imagecodecs.png_encode(make_frames(1, dtype="uint8")[0]))
    with (
        follow_frames(png, idle_timeout=IDLE) as followed,
        pytest.raises(InputError, match="PNG image, which holds one frame"),
    ):
        followed.wait_first()


# --- a folder receiving one file per frame ------------------------------------------------


def test_files_renamed_into_a_folder_are_frames_in_natural_order(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    stack = make_frames(11, dtype="uint8")

    def write() -> None:
        for i, frame in enumerate(stack):
            partial = folder / f".t{i}.png.partial"  # hidden and partial: never a frame
            partial.write_bytes(imagecodecs.png_encode(frame))
            os.replace(partial, folder / f"t{i}.png")  # t9 before t10: natural order
            time.sleep(0.02)

    writer = Writer(write)
    frames, times, ended = follow_all(folder)
    writer.join()
    assert_same_frames(frames, read_finished(folder))
    assert times[0] < writer.finished_at
    assert ended - writer.finished_at < IDLE + 1.0


def test_files_written_in_place_slowly_are_read_only_when_complete(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    stack = make_frames(4, h=40, w=30)
    encoded = []
    for i, frame in enumerate(stack):
        if i % 2:
            encoded.append((f"t{i}.png", imagecodecs.png_encode(frame)))
        else:
            scratch = tmp_path / f"t{i}.tif"
            tifffile.imwrite(scratch, frame, compression="zlib")
            encoded.append((f"t{i}.tif", scratch.read_bytes()))

    def write() -> None:
        for name, data in encoded:
            with (folder / name).open("wb") as fh:
                # Pauses longer than a poll: size checks alone would read a partial file.
                for part in np.array_split(np.frombuffer(data, np.uint8), 3):
                    fh.write(part.tobytes())
                    fh.flush()
                    time.sleep(0.05)
        (folder / "notes.txt").write_text("not an image")
        (folder / "t9.tif.tmp").write_bytes(b"partial")
        (folder / "t9.partial.tif").write_bytes(b"partial")

    writer = Writer(write)
    frames, _, _ = follow_all(folder)
    writer.join()
    assert_same_frames(frames, list(stack))
    with follow_frames(folder, idle_timeout=IDLE, poll_interval=POLL) as followed:
        list(followed)
        assert followed.describe_frame(1) == "frame 1 (t1.png) of frames"


def test_a_folder_frame_of_another_shape_is_an_input_error_naming_the_file(
    tmp_path: Path,
) -> None:
    for i, frame in enumerate([make_frames(1)[0], make_frames(1)[0], make_frames(1, h=5)[0]]):
        tifffile.imwrite(tmp_path / f"t{i}.tif", frame)
    frames: list[np.ndarray] = []
    with (
        follow_frames(tmp_path, idle_timeout=IDLE, poll_interval=POLL) as followed,
        pytest.raises(InputError, match=r"t2.tif holds a \(5, 10\) uint16 image but .*t0.tif"),
    ):
        frames.extend(followed)
    assert len(frames) == 2


def test_a_file_arriving_out_of_order_is_an_input_error(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "t5.tif", make_frames(1)[0])
    with (
        follow_frames(tmp_path, idle_timeout=IDLE, poll_interval=POLL) as followed,
        pytest.raises(InputError, match="t3.tif appeared after t5.tif was already read"),
    ):
        for _ in followed:
            tifffile.imwrite(tmp_path / "t3.tif", make_frames(1)[0])


def test_a_file_that_never_completes_is_named_even_while_others_arrive(tmp_path: Path) -> None:
    (tmp_path / "t0.png").write_bytes(
        imagecodecs.png_encode(make_frames(1, dtype="uint8")[0])[:-30]
    )
    stop = threading.Event()

    def keep_writing() -> None:
        for i in range(1, 200):
            if stop.is_set():
                return
            tifffile.imwrite(tmp_path / f"t{i}.tif", make_frames(1, dtype="uint8")[0])
            time.sleep(0.02)

    writer = Writer(keep_writing)
    try:
        with (
            follow_frames(tmp_path, idle_timeout=IDLE, poll_interval=POLL) as followed,
            pytest.raises(InputError, match=r"t0.png is not a complete TIFF or PNG image"),
        ):
            list(followed)
    finally:
        stop.set()
        writer.join()


# --- scale ---------------------------------------------------------------------------------


def test_a_poll_reads_a_constant_amount_however_long_the_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Re-reading the chain from the start on every poll would be quadratic over a long
    # acquisition: count the reads a poll makes once all pages are known.
    reads: list[int] = []
    raw_reader = follow_module._raw_reader

    def counting_reader(raw: object) -> Callable[[int, int], bytes]:
        read = raw_reader(raw)  # type: ignore[arg-type]

        def counted(offset: int, size: int) -> bytes:
            reads.append(size)
            return read(offset, size)

        return counted

    monkeypatch.setattr(follow_module, "_raw_reader", counting_reader)
    for pages in (10, 1000):
        path = tmp_path / f"{pages}.tif"
        write_pages(path, np.zeros((pages, 4, 4), np.uint8))
        with follow_frames(path, idle_timeout=IDLE, poll_interval=POLL) as followed:
            frames: Iterator[np.ndarray] = iter(followed)
            for _ in range(pages):
                next(frames)
            follower = followed._follower
            reads.clear()
            for _ in range(20):
                assert not follower.poll()
            assert len(reads) <= 2 * 20  # the header check and the next-IFD offset
            assert sum(reads) <= 8 * 20


@pytest.mark.skipif(not os.environ.get("UNETRT_SLOW"), reason="slow: set UNETRT_SLOW=1")
def test_a_long_acquisition_is_followed_at_camera_rate(tmp_path: Path) -> None:
    path = tmp_path / "long.tif"
    stack = make_frames(3000, h=64, w=64)

    def write() -> None:
        with tifffile.TiffWriter(path, bigtiff=True) as tw:
            for i, frame in enumerate(stack):
                tw.write(frame, metadata=None)
                if i % 10 == 0:
                    time.sleep(0.005)

    path.touch()
    writer = Writer(write)
    frames, _, ended = follow_all(path)
    writer.join()
    assert_same_frames(frames, list(stack))
    assert ended - writer.finished_at < IDLE + 2.0


def test_followed_frames_is_closeable_twice(tmp_path: Path) -> None:
    path = tmp_path / "s.tif"
    write_pages(path, make_frames(1))
    followed = follow_frames(path, idle_timeout=IDLE)
    assert isinstance(followed, FollowedFrames)
    followed.close()
    followed.close()
    assert list(followed) == []
    shutil.rmtree(tmp_path)

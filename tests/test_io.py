"""Frame reading, prefetch and the atomic stack writer, on small synthetic files."""

from __future__ import annotations

import errno
import json
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile

from unetrt.errors import ConfigError, InputError, OutputError
from unetrt.io import StackWriter, atomic_output, frame_number, open_frames, prefetch


def make_stack(n: int = 6, h: int = 8, w: int = 10, dtype: str = "uint16") -> np.ndarray:
    """A stack whose every pixel differs, so misplaced frames or pixels are caught."""
    return np.arange(n * h * w).reshape(n, h, w).astype(dtype)


def read_all(source: object, **kwargs: object) -> np.ndarray:
    with open_frames(source, **kwargs) as frames:  # type: ignore[arg-type]
        return np.stack(list(frames))


# --- multi-page TIFF flavours ---------------------------------------------------------


@pytest.mark.parametrize("compression", [None, "lzw", "zlib", "zstd"])
@pytest.mark.parametrize("bigtiff", [False, True])
def test_plain_multipage_round_trip(tmp_path: Path, compression: str | None, bigtiff: bool) -> None:
    stack = make_stack()
    path = tmp_path / "s.tif"
    tifffile.imwrite(
        path, stack, photometric="minisblack", compression=compression, bigtiff=bigtiff
    )
    with open_frames(path) as frames:
        assert len(frames) == 6
        assert frames.frame_shape == (8, 10)
        assert frames.dtype == np.uint16
        assert frames.name == "s.tif"
        out = list(frames)
    assert all(f.flags.c_contiguous for f in out)
    np.testing.assert_array_equal(np.stack(out), stack)


def test_pages_without_metadata_are_frames(tmp_path: Path) -> None:
    stack = make_stack(dtype="float32")
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tw:
        for frame in stack:
            tw.write(frame, metadata=None)
    with open_frames(path) as frames:
        assert frames.axes == "IYX"
        np.testing.assert_array_equal(np.stack(list(frames)), stack)


def test_big_endian_file_gives_native_frames(tmp_path: Path) -> None:
    stack = make_stack()
    path = tmp_path / "be.tif"
    tifffile.imwrite(path, stack, byteorder=">", photometric="minisblack")
    out = read_all(path)
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, stack)


def test_imagej_time_series_with_channels_puts_channels_last(tmp_path: Path) -> None:
    data = make_stack(n=4 * 2, dtype="uint8").reshape(4, 2, 8, 10)  # TCYX
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TCYX"})
    with open_frames(path) as frames:
        assert frames.axes == "TCYX"
        assert frames.frame_shape == (8, 10, 2)
        np.testing.assert_array_equal(frames.read(3), data[3].transpose(1, 2, 0))


def test_imagej_hyperstack_with_a_single_ifd_is_read_by_offset(tmp_path: Path) -> None:
    # ImageJ writes stacks > 4 GB like this: only the first IFD, data contiguous.
    stack = make_stack()
    path = tmp_path / "virtual.tif"
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "TYX"}, truncate=True)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 1
    np.testing.assert_array_equal(read_all(path), stack)


def test_truncated_single_ifd_imagej_stack_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, make_stack(), imagej=True, metadata={"axes": "TYX"}, truncate=True)
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(InputError, match=r"cut\.tif is truncated or corrupt"):
        open_frames(path)


def test_ome_channel_axis_before_time(tmp_path: Path) -> None:
    data = make_stack(n=2 * 3, dtype="uint8").reshape(2, 3, 8, 10)  # CTYX
    path = tmp_path / "ome.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "CTYX"}, compression="zlib")
    with open_frames(path) as frames:
        assert len(frames) == 3
        assert frames.frame_shape == (8, 10, 2)
        for t, frame in enumerate(frames):
            np.testing.assert_array_equal(frame, data[:, t].transpose(1, 2, 0))


def test_rgb_stack_and_single_frame(tmp_path: Path) -> None:
    rgb = (np.arange(3 * 8 * 10 * 3) % 251).astype(np.uint8).reshape(3, 8, 10, 3)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    np.testing.assert_array_equal(read_all(tmp_path / "rgb.tif"), rgb)
    tifffile.imwrite(tmp_path / "one.tif", rgb[0, :, :, 0])
    with open_frames(tmp_path / "one.tif") as frames:
        assert len(frames) == 1
        assert frames.frame_shape == (8, 10)


@pytest.mark.parametrize(
    ("axes", "shape", "match"),
    [
        ("ZYX", (3, 8, 10), r"Z stack of shape \(3, 8, 10\) \(axes ZYX\).*Re-order"),
        ("TZYX", (2, 3, 8, 10), r"shape \(2, 3, 8, 10\) \(axes TZYX\); unetrt segments 2D"),
        ("TCYX", (2, 5, 8, 10), r"5 channels.*at most 4"),
    ],
)
def test_stacks_that_are_not_2d_plus_time_are_refused(
    tmp_path: Path, axes: str, shape: tuple[int, ...], match: str
) -> None:
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, np.zeros(shape, np.uint8), imagej=True, metadata={"axes": axes})
    with pytest.raises(InputError, match=match):
        open_frames(path)


# --- folders, globs and PNG -----------------------------------------------------------


def write_png(path: Path, image: np.ndarray) -> None:
    path.write_bytes(imagecodecs.png_encode(image))


def test_folder_is_sorted_naturally_and_skips_other_files(tmp_path: Path) -> None:
    stack = make_stack(n=3)
    for t, frame in zip((1, 2, 10), stack, strict=True):
        tifffile.imwrite(tmp_path / f"t{t}.tif", frame)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".t0.tif").write_bytes(b"hidden, e.g. a partial output")
    with open_frames(tmp_path) as frames:
        assert [f.name for f in frames.files] == ["t1.tif", "t2.tif", "t10.tif"]
        np.testing.assert_array_equal(np.stack(list(frames)), stack)


def test_png_folder_glob_and_single_png(tmp_path: Path) -> None:
    stack = make_stack(n=3)
    for t, frame in enumerate(stack):
        write_png(tmp_path / f"f{t}.png", frame)
    np.testing.assert_array_equal(read_all(tmp_path), stack)
    np.testing.assert_array_equal(read_all(str(tmp_path / "f[12].png")), stack[1:])
    with open_frames(tmp_path / "f0.png") as frames:
        assert len(frames) == 1
        np.testing.assert_array_equal(frames.read(0), stack[0])


def test_folder_with_mismatched_frames_fails_at_that_frame(tmp_path: Path) -> None:
    write_png(tmp_path / "a1.png", np.zeros((8, 10), np.uint8))
    write_png(tmp_path / "a2.png", np.zeros((8, 12), np.uint8))
    with open_frames(tmp_path) as frames, pytest.raises(InputError, match=r"a2\.png holds"):
        list(frames)


def test_folder_with_a_multipage_file_is_refused(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "s.tif", make_stack(), photometric="minisblack")
    with pytest.raises(InputError, match="holds 6 frames"):
        open_frames(tmp_path)


@pytest.mark.parametrize("what", ["missing", "empty folder", "empty glob"])
def test_missing_sources(tmp_path: Path, what: str) -> None:
    source = {
        "missing": tmp_path / "nope.tif",
        "empty folder": tmp_path,
        "empty glob": str(tmp_path / "*.tif"),
    }[what]
    with pytest.raises(InputError, match=str(tmp_path)):
        open_frames(source)


# --- broken files -------------------------------------------------------------------------


def test_text_file_named_tif(tmp_path: Path) -> None:
    path = tmp_path / "fake.tif"
    path.write_text("hello")
    with pytest.raises(InputError, match=r"fake\.tif is not a TIFF or PNG image"):
        open_frames(path)


def test_broken_ifd_chain_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "cut.tif"
    with tifffile.TiffWriter(path) as tw:
        for frame in make_stack(n=20):
            tw.write(frame, metadata=None)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        open_frames(path)


def test_corrupt_compressed_page_fails_naming_the_frame(tmp_path: Path) -> None:
    path = tmp_path / "bad.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(
        path,
        rng.integers(0, 255, (6, 16, 16), np.uint8),
        compression="zlib",
        photometric="minisblack",
    )
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[4]
        start, size = page.dataoffsets[0], page.databytecounts[0]
    data = bytearray(path.read_bytes())
    data[start : start + size] = rng.integers(0, 255, size, np.uint8).tobytes()
    path.write_bytes(bytes(data))
    with open_frames(path) as frames:
        frames.read(3)
        with pytest.raises(InputError, match=r"frame 4 of .*bad\.tif could not be read"):
            frames.read(4)


def test_complex_pixels_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.tif"
    tifffile.imwrite(path, np.zeros((2, 4, 4), np.complex64), photometric="minisblack")
    with pytest.raises(InputError, match="complex64"):
        open_frames(path)


# --- frame selection ------------------------------------------------------------------


def test_frame_selection_is_lazy_and_indexable(tmp_path: Path) -> None:
    stack = make_stack(n=10)
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, stack, photometric="minisblack")
    with open_frames(path, frames=slice(2, 9, 3)) as frames:
        assert len(frames) == 3
        np.testing.assert_array_equal(np.stack(list(frames)), stack[2:9:3])
        np.testing.assert_array_equal(frames.read(-1), stack[8])
        with pytest.raises(IndexError):
            frames.read(3)
    np.testing.assert_array_equal(read_all(path, frames=slice(-2, None)), stack[-2:])


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        (slice(0, 11), "0:11 is out of range for s.tif, which has 10 frames"),
        (slice(10, None), "selects no frames"),
        (slice(5, 2), "selects no frames"),
        (slice(None, None, -1), "step must be positive"),
    ],
)
def test_bad_frame_selection(tmp_path: Path, frames: slice, match: str) -> None:
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, make_stack(n=10), photometric="minisblack")
    with pytest.raises(InputError, match=match):
        open_frames(path, frames=frames)


def test_reads_from_two_threads_do_not_interfere(tmp_path: Path) -> None:
    stack = make_stack(n=30)
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, stack, photometric="minisblack", compression="zlib")
    with open_frames(path) as frames:
        sampled: list[np.ndarray] = []
        sampler = threading.Thread(target=lambda: sampled.extend(frames.read(i) for i in range(30)))
        sampler.start()
        streamed = list(prefetch(frames))
        sampler.join()
    np.testing.assert_array_equal(np.stack(streamed), stack)
    np.testing.assert_array_equal(np.stack(sampled), stack)


def test_describe_frame_of_a_stack_counts_in_the_source(tmp_path: Path) -> None:
    path = tmp_path / "video.tif"
    tifffile.imwrite(path, make_stack(n=10), photometric="minisblack")
    with open_frames(path) as frames:
        assert frames.describe_frame(3) == "frame 3 of video.tif"
    with open_frames(path, frames=slice(5, 10, 2)) as frames:
        assert [frames.describe_frame(i) for i in range(3)] == [
            "frame 5 of video.tif",
            "frame 7 of video.tif",
            "frame 9 of video.tif",
        ]
        assert frames.describe_frame(-1) == "frame 9 of video.tif"
        with pytest.raises(IndexError):
            frames.describe_frame(3)


def test_describe_frame_of_files_names_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for t, frame in enumerate(make_stack(n=13)):
        tifffile.imwrite(folder / f"t{t:03d}.tif", frame)
    with open_frames(folder, frames=slice(10, None)) as frames:
        assert frames.describe_frame(2) == "frame 12 (t012.tif) of frames"
    pattern = str(folder / "t01*.tif")
    with open_frames(pattern) as frames:
        assert frames.describe_frame(0) == f"frame 0 (t010.tif) of {pattern}"
    write_png(tmp_path / "cell.png", make_stack(n=1, dtype="uint8")[0])
    with open_frames(tmp_path / "cell.png") as frames:
        assert frames.describe_frame(0) == "frame 0 of cell.png"


def test_frame_number_is_the_last_digit_group_of_the_stem() -> None:
    assert frame_number("t010.tif") == 10
    assert frame_number(Path("seq02") / "man_seg_2_017.tif") == 17
    assert frame_number("2024-cells.v3.tif") == 3  # the stem is "2024-cells.v3"
    assert frame_number("cell.png") is None


# --- atomic outputs -------------------------------------------------------------------


def test_atomic_output_appears_only_when_complete(tmp_path: Path) -> None:
    path = tmp_path / "scores.csv"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(path) as partial:
        partial.write_text("half")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old"
    with atomic_output(path) as partial:
        assert partial.parent == tmp_path and partial.name.startswith(".")
        partial.write_text("new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]


def test_atomic_output_turns_os_errors_into_output_errors(tmp_path: Path) -> None:
    path = tmp_path / "scores.csv"
    full = pytest.raises(OutputError, match=r"cannot write .*scores\.csv: No space left")
    with full, atomic_output(path) as partial:
        partial.write_text("x")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


# --- prefetch -------------------------------------------------------------------------


def test_prefetch_yields_everything_in_order() -> None:
    assert list(prefetch(range(50), depth=3)) == list(range(50))
    assert list(prefetch([])) == []


def test_prefetch_reraises_the_producer_error() -> None:
    def produce() -> Iterator[int]:
        yield 1
        raise InputError("frame 1 could not be read")

    it = prefetch(produce())
    assert next(it) == 1
    with pytest.raises(InputError, match="frame 1"):
        next(it)


def counting_producer(counter: list[int], closed: threading.Event) -> Iterator[int]:
    try:
        while True:
            counter[0] += 1
            yield counter[0]
    finally:
        closed.set()


def test_prefetch_stays_at_most_depth_ahead() -> None:
    counter, closed = [0], threading.Event()
    it = prefetch(counting_producer(counter, closed), depth=2)
    next(it)
    time.sleep(0.2)
    # one consumed, two queued, one held by the producer waiting for room
    assert counter[0] <= 4
    it.close()
    assert closed.wait(2.0)


@pytest.mark.parametrize("stop", ["break", "KeyboardInterrupt"])
def test_prefetch_stops_the_producer_when_the_consumer_stops(stop: str) -> None:
    counter, closed = [0], threading.Event()

    def consume() -> None:
        for item in prefetch(counting_producer(counter, closed)):
            if item == 3:
                if stop == "break":
                    break
                raise KeyboardInterrupt

    if stop == "break":
        consume()
    else:
        with pytest.raises(KeyboardInterrupt):
            consume()
    assert closed.wait(2.0), "producer did not stop"
    assert not any(t.name == "unetrt-prefetch" and t.is_alive() for t in threading.enumerate())


def test_prefetch_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth"):
        list(prefetch([1], depth=0))


# --- StackWriter ----------------------------------------------------------------------


def test_writer_round_trip_is_an_imagej_time_series(tmp_path: Path) -> None:
    masks = (make_stack(n=5) % 2 * 255).astype(np.uint8)
    path = tmp_path / "masks.tif"
    with StackWriter(path, frame_shape=(8, 10), dtype=np.uint8, n_frames=5) as out:
        for mask in masks:
            out.write(mask)
    assert not out.bigtiff
    np.testing.assert_array_equal(tifffile.imread(path), masks)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej
        assert tif.imagej_metadata is not None
        assert tif.imagej_metadata["frames"] == 5
        assert tif.series[0].axes == "TYX"
    np.testing.assert_array_equal(read_all(path), masks)
    assert [p.name for p in tmp_path.iterdir()] == ["masks.tif"]


@pytest.mark.parametrize("compression", ["zlib", "zstd", "lzw"])
def test_writer_compressed_float_probabilities(tmp_path: Path, compression: str) -> None:
    probs = make_stack(n=4, dtype="float32") / 1000
    path = tmp_path / "p.tif"
    with StackWriter(
        path,
        frame_shape=(8, 10),
        dtype=np.float32,
        compression=compression,
        metadata={"finterval": 2.0},
    ) as out:
        for frame in probs:
            out.write(frame)
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].axes == "TYX"
        assert tif.imagej_metadata is not None
        assert tif.imagej_metadata["finterval"] == 2.0
        np.testing.assert_array_equal(tif.asarray(), probs)


def test_writer_non_imagej_dtype_and_channels(tmp_path: Path) -> None:
    frames = make_stack(n=3 * 2, dtype="uint32").reshape(3, 8, 10, 2)
    path = tmp_path / "c.tif"
    with StackWriter(path, frame_shape=(8, 10, 2), dtype=np.uint32, n_frames=3) as out:
        for frame in frames:
            out.write(frame)
    assert not out.imagej
    with tifffile.TiffFile(path) as tif:
        assert json.loads(tif.pages.first.description)["axes"] == "TCYX"
        np.testing.assert_array_equal(tif.asarray(), frames.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(read_all(path), frames)


def test_writer_bigtiff_choice(tmp_path: Path) -> None:
    def writer(**kwargs: object) -> StackWriter:
        return StackWriter(tmp_path / "b.tif", frame_shape=(4096, 4096), dtype=np.uint16, **kwargs)  # type: ignore[arg-type]

    for kwargs, expected in [
        ({"n_frames": 100}, False),  # 3.1 GiB
        ({"n_frames": 130}, True),  # 4.1 GiB
        ({}, True),  # unknown length
        ({"n_frames": 130, "bigtiff": False}, False),
    ]:
        w = writer(**kwargs)
        assert w.bigtiff is expected, kwargs
        w.abort()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_writer_failure_leaves_existing_output_untouched(
    tmp_path: Path, error: type[BaseException]
) -> None:
    path = tmp_path / "out.tif"
    path.write_bytes(b"previous result")
    with pytest.raises(error), StackWriter(path, frame_shape=(8, 10), dtype=np.uint8) as out:
        out.write(np.zeros((8, 10), np.uint8))
        raise error
    assert path.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]


def test_writer_disk_full_raises_output_error_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out.tif"
    with StackWriter(path, frame_shape=(8, 10), dtype=np.uint8) as out:
        out.write(np.zeros((8, 10), np.uint8))

        def full(*args: object, **kwargs: object) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(tifffile.TiffWriter, "write", full)
        with pytest.raises(OutputError, match=r"disk full while writing .*out\.tif"):
            out.write(np.zeros((8, 10), np.uint8))
        assert not list(tmp_path.iterdir())
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("where", ["missing folder", "a folder", "file as folder"])
def test_writer_unwritable_destinations(tmp_path: Path, where: str) -> None:
    (tmp_path / "file").write_text("x")
    path = {
        "missing folder": tmp_path / "no" / "out.tif",
        "a folder": tmp_path,
        "file as folder": tmp_path / "file" / "out.tif",
    }[where]
    with pytest.raises(OutputError, match="cannot write to"):
        StackWriter(path, frame_shape=(8, 10), dtype=np.uint8)


def test_writer_rejects_mismatched_frames_and_extra_frames(tmp_path: Path) -> None:
    with StackWriter(tmp_path / "o.tif", frame_shape=(8, 10), dtype=np.uint8, n_frames=1) as out:
        with pytest.raises(ValueError, match=r"shape \(10, 8\) differs"):
            out.write(np.zeros((10, 8), np.uint8))
        with pytest.raises(ValueError, match="dtype float32 differs"):
            out.write(np.zeros((8, 10), np.float32))
        out.write(np.zeros((8, 10), np.uint8))
        with pytest.raises(ValueError, match="n_frames=1"):
            out.write(np.zeros((8, 10), np.uint8))
    assert tifffile.imread(tmp_path / "o.tif").shape == (8, 10)


def test_writer_with_no_frames_writes_nothing(tmp_path: Path) -> None:
    with (
        pytest.raises(ValueError, match="no frames"),
        StackWriter(tmp_path / "o.tif", frame_shape=(8, 10), dtype=np.uint8),
    ):
        pass
    assert not list(tmp_path.iterdir())


def test_writer_option_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="compression must be one of"):
        StackWriter(tmp_path / "o.tif", frame_shape=(8, 10), dtype=np.uint8, compression="jpeg")
    with pytest.raises(ConfigError, match="ImageJ files hold"):
        StackWriter(tmp_path / "o.tif", frame_shape=(8, 10), dtype=np.uint32, imagej=True)
    assert not list(tmp_path.iterdir())


# --- memory -----------------------------------------------------------------------------


def peak_bytes(path: Path, n: int) -> tuple[int, int]:
    """Peak traced memory for writing, then reading back, n frames of 256 x 256."""
    frame = (np.indices((256, 256)).sum(axis=0) % 7 == 0).astype(np.uint8) * 255
    tracemalloc.start()
    try:
        with StackWriter(path, frame_shape=frame.shape, dtype=np.uint8, n_frames=n) as out:
            for _ in range(n):
                out.write(frame)
        write_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        with open_frames(path) as frames:
            count = sum(1 for _ in frames)
        read_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == n
    return write_peak, read_peak


def test_memory_does_not_grow_with_frame_count(tmp_path: Path) -> None:
    small = peak_bytes(tmp_path / "20.tif", 20)
    large = peak_bytes(tmp_path / "200.tif", 200)
    # 180 extra frames are 11.5 MB of pixels; only per-page bookkeeping may grow.
    slack = 1 << 20
    assert large[0] < small[0] + slack, (small, large)
    assert large[1] < small[1] + slack, (small, large)


def test_frames_written_one_call_each_are_one_stack(tmp_path: Path) -> None:
    # tifffile's writer with its default metadata stores every write() as its own series;
    # a stack written frame by frame that way must not read as its first frame alone.
    path = tmp_path / "loop.tif"
    frames = [np.full((6, 7), i, np.uint16) for i in range(5)]
    with tifffile.TiffWriter(path) as tw:
        for frame in frames:
            tw.write(frame)
    assert len(tifffile.TiffFile(path).series) == 5  # what tifffile sees
    with open_frames(path) as stack:
        assert (len(stack), stack.frame_shape) == (5, (6, 7))
        for got, want in zip(stack, frames, strict=True):
            np.testing.assert_array_equal(got, want)
    # Series of different shapes are something else: the first series, as before.
    mixed = tmp_path / "mixed.tif"
    with tifffile.TiffWriter(mixed) as tw:
        tw.write(np.zeros((6, 7), np.uint16))
        tw.write(np.zeros((4, 4), np.uint16))
    with open_frames(mixed) as stack:
        assert (len(stack), stack.frame_shape) == (1, (6, 7))


@pytest.mark.parametrize("axes", ["YXC", "TYXC"])
def test_rows_spread_over_pages_are_read_whole(tmp_path: Path, axes: str) -> None:
    # tifffile writes a (Y, X, C) array with photometric="minisblack" as one page per row.
    frame = np.arange(5 * 6 * 3, dtype=np.uint16).reshape(5, 6, 3)
    data = frame if axes == "YXC" else np.stack([frame, frame + 1000])
    tifffile.imwrite(tmp_path / "rows.tif", data, photometric="minisblack", metadata={"axes": axes})
    with open_frames(tmp_path / "rows.tif") as source:
        assert source.frame_shape == (5, 6, 3)
        frames = [source.read(i) for i in range(len(source))]
    np.testing.assert_array_equal(np.stack(frames), data.reshape(-1, 5, 6, 3))

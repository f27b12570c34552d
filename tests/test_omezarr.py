"""OME-Zarr output and input: NGFF metadata, chunk per frame, equal to the TIFF output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from unetrt import Segmenter
from unetrt.errors import InputError, OutputError
from unetrt.io import ZarrWriter, open_frames, write_frames

zarr = pytest.importorskip("zarr", reason="OME-Zarr needs unetrt[zarr]")
pytest.importorskip("ome_zarr", reason="OME-Zarr needs unetrt[zarr]")


def _frames(n: int = 5, shape: tuple[int, ...] = (24, 36)) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (n, *shape), dtype=np.uint8)


def _write(path: Path, frames: np.ndarray, **options: object) -> None:
    with ZarrWriter(
        path, frame_shape=frames.shape[1:], dtype=frames.dtype, n_frames=len(frames), **options
    ) as out:
        for frame in frames:
            out.write(frame)


def test_masks_are_an_ngff_image_with_a_time_axis_chunked_per_frame(tmp_path: Path) -> None:
    frames = _frames()
    path = tmp_path / "m.ome.zarr"
    _write(path, frames)
    attrs = json.loads((path / ".zattrs").read_text())
    (image,) = attrs["multiscales"]
    assert image["version"] == "0.4"
    assert [a["name"] for a in image["axes"]] == ["t", "y", "x"]
    assert image["axes"][0]["type"] == "time"
    assert [d["path"] for d in image["datasets"]] == ["0"]
    array = zarr.open_array(path / "0", mode="r")
    assert array.shape == frames.shape and array.chunks == (1, 24, 36)
    np.testing.assert_array_equal(array[:], frames)
    # Read back by ome-zarr-py's own reader, as napari does:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    (node,) = list(Reader(parse_url(str(path)))())
    np.testing.assert_array_equal(np.asarray(node.data[0]), frames)
    # Nothing of the writer's bookkeeping is left in the finished image.
    assert sorted(p.name for p in path.iterdir()) == [".zattrs", ".zgroup", "0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ome.zarr"]


def test_probabilities_of_several_classes_are_t_c_y_x(tmp_path: Path) -> None:
    probs = np.random.default_rng(2).random((3, 16, 20, 4), dtype=np.float32)
    path = tmp_path / "p.ome.zarr"
    _write(path, probs, name="probabilities")
    attrs = json.loads((path / ".zattrs").read_text())
    assert [a["name"] for a in attrs["multiscales"][0]["axes"]] == ["t", "c", "y", "x"]
    np.testing.assert_array_equal(zarr.open_array(path / "0")[:], np.moveaxis(probs, -1, 1))
    with open_frames(path) as src:  # and unetrt reads it back as (H, W, C) frames
        assert src.frame_shape == (16, 20, 4)
        np.testing.assert_array_equal(np.stack(list(src)), probs)


def test_an_image_is_only_there_when_complete(tmp_path: Path) -> None:
    path = tmp_path / "m.ome.zarr"
    _write(path, _frames(2))
    before = zarr.open_array(path / "0")[:]
    with (
        pytest.raises(RuntimeError),
        ZarrWriter(path, frame_shape=(24, 36), dtype=np.uint8, n_frames=5) as out,
    ):
        out.write(np.ones((24, 36), np.uint8))
        raise RuntimeError("the run fails")
    np.testing.assert_array_equal(zarr.open_array(path / "0")[:], before)  # old one kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ome.zarr"]  # no partial left
    with (
        pytest.raises(ValueError, match="4 frames"),
        ZarrWriter(path, frame_shape=(24, 36), dtype=np.uint8, n_frames=5) as out,
    ):
        out.write(np.ones((24, 36), np.uint8))  # closed with 4 of 5 frames missing


def test_frames_written_by_other_processes_are_found_at_close(tmp_path: Path) -> None:
    frames = _frames(6)
    path = tmp_path / "m.ome.zarr"
    with ZarrWriter(path, frame_shape=(24, 36), dtype=np.uint8, n_frames=6) as out:
        write_frames(out.partial, 3, list(frames[3:]))  # as a Dask worker does
        write_frames(out.partial, 0, list(frames[:3]))
    np.testing.assert_array_equal(zarr.open_array(path / "0")[:], frames)


def test_resume_keeps_the_recorded_frames_only(tmp_path: Path) -> None:
    frames = _frames(6)
    path = tmp_path / "m.ome.zarr"
    run = {"model": "m", "input": "v"}
    out = ZarrWriter(path, frame_shape=(24, 36), dtype=np.uint8, n_frames=6, run=run)
    write_frames(out.partial, 0, list(frames[:2]))
    write_frames(out.partial, 4, list(frames[4:5]))
    out.suspend()  # as if killed: the partial image and its record stay
    with ZarrWriter(
        path, frame_shape=(24, 36), dtype=np.uint8, n_frames=6, run=run, resume=True
    ) as again:
        assert again.resumed == 3
        assert again.missing() == [range(2, 4), range(5, 6)]
        for i in (2, 3, 5):
            again.write(frames[i], i)
    np.testing.assert_array_equal(zarr.open_array(path / "0")[:], frames)
    # Other settings: the partial image is not continued but replaced.
    out = ZarrWriter(path, frame_shape=(24, 36), dtype=np.uint8, n_frames=6, run=run)
    write_frames(out.partial, 0, list(frames[:2]))
    out.suspend()
    other = ZarrWriter(
        path, frame_shape=(24, 36), dtype=np.uint8, n_frames=6, run={"model": "x"}, resume=True
    )
    assert other.resumed == 0 and other.missing() == [range(6)]
    other.abort()


def test_two_writers_of_one_output_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.ome.zarr"
    with ZarrWriter(path, frame_shape=(8, 8), dtype=np.uint8, n_frames=1) as first:
        with pytest.raises(OutputError, match="another unetrt run is writing"):
            ZarrWriter(path, frame_shape=(8, 8), dtype=np.uint8, n_frames=1)
        first.write(np.zeros((8, 8), np.uint8))


def test_ome_zarr_input_written_by_ome_zarr_py(tmp_path: Path) -> None:
    """An image written by another tool (ome-zarr-py, NGFF 0.5 on Zarr 3, t c z y x)."""
    from ome_zarr.writer import write_image

    data = np.random.default_rng(3).integers(0, 4000, (4, 2, 1, 30, 40), dtype=np.uint16)
    path = tmp_path / "in.ome.zarr"
    group = zarr.open_group(path, mode="w")
    write_image(data, group, axes="tczyx", scale_factors=())
    with open_frames(path) as src:
        assert len(src) == 4 and src.frame_shape == (30, 40, 2) and src.dtype == np.uint16
        np.testing.assert_array_equal(src.read(2), np.moveaxis(data[2, :, 0], 0, -1))
    with open_frames(path, slice(1, 3)) as src:
        assert src.describe_frame(0) == "frame 1 of in.ome.zarr"


def test_unreadable_zarr_inputs_are_clear_errors(tmp_path: Path) -> None:
    plain = tmp_path / "plain.zarr"
    zarr.open_group(plain, mode="w").create_array("0", shape=(2, 8, 8), dtype="uint8")
    with pytest.raises(InputError, match="without OME-Zarr"):
        open_frames(plain)
    from ome_zarr.writer import write_image

    volume = tmp_path / "volume.ome.zarr"
    write_image(np.zeros((2, 5, 8, 8), np.uint8), zarr.open_group(volume, mode="w"), axes="tzyx")
    with pytest.raises(InputError, match="5 z planes"):
        open_frames(volume)


def test_segmenting_to_ome_zarr_equals_the_tiff_output(unet_path: Path, tmp_path: Path) -> None:
    frames = np.random.default_rng(4).integers(0, 4000, (4, 40, 52), dtype=np.uint16)
    src = tmp_path / "v.tif"
    tifffile.imwrite(src, frames, photometric="minisblack")
    with Segmenter(unet_path) as seg:
        seg.segment(src, tmp_path / "v.tif.mask.tif", progress=False)
        seg.segment(src, format="ome-zarr", progress=False)  # default name: v_mask.ome.zarr
        seg.segment(tmp_path / "v_mask.ome.zarr", tmp_path / "again.tif", progress=False)
    tiff = tifffile.imread(tmp_path / "v.tif.mask.tif")
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "v_mask.ome.zarr" / "0")[:], tiff)
    assert tifffile.imread(tmp_path / "again.tif").shape == tiff.shape  # zarr input reads


def test_an_image_of_unknown_length_grows_frame_by_frame(tmp_path: Path) -> None:
    """A followed input: the number of frames is known only at the end."""
    frames = _frames(3)
    path = tmp_path / "grown.ome.zarr"
    with ZarrWriter(path, frame_shape=(24, 36), dtype=np.uint8, n_frames=None) as out:
        for frame in frames:
            out.write(frame)
    np.testing.assert_array_equal(zarr.open_array(path / "0")[:], frames)

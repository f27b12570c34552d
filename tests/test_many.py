"""Several inputs in one run: a folder of masks, one bar, a bad video does not stop the rest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from unetrt import Segmenter
from unetrt.contract import ModelContract
from unetrt.errors import OutputError
from unetrt.testing import save, unet_model, unet_receptive_radius


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    contract = ModelContract(alignment=4, halo=unet_receptive_radius(pools=2))
    path = tmp_path_factory.mktemp("m") / "unet.onnx"
    save(unet_model(filters=4, pools=2, contract=contract), path)
    with Segmenter(path) as seg:  # a threshold that splits this random network's output
        threshold = float(np.median(seg.predict_frame(_videos(path.parent)[0][1][0])))
    save(unet_model(filters=4, pools=2, contract=contract.replace(threshold=threshold)), path)
    return path


def _videos(folder: Path) -> list[tuple[Path, np.ndarray]]:
    """Three videos of different frame sizes and lengths."""
    rng = np.random.default_rng(0)
    videos = []
    for name, shape in (("a", (3, 40, 52)), ("b", (2, 33, 70)), ("c", (4, 48, 48))):
        frames = rng.integers(0, 4000, shape, dtype=np.uint16)
        path = folder / f"{name}.tif"
        tifffile.imwrite(path, frames, photometric="minisblack")
        videos.append((path, frames))
    return videos


def _segment(*args: object) -> subprocess.CompletedProcess[str]:
    """``unetrt segment ARGS`` in a subprocess, as a user runs it."""
    command = [sys.executable, "-m", "unetrt", "segment", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True)


def _masks(model: Path, frames: np.ndarray) -> np.ndarray:
    with Segmenter(model) as seg:
        return np.stack([seg.segment_frame(f) for f in frames])


def test_several_inputs_into_a_folder(model: Path, tmp_path: Path) -> None:
    videos = _videos(tmp_path)
    out = tmp_path / "masks"  # created by the run
    result = _segment(*[p for p, _ in videos], "--model", model, "-o", out)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a_mask.tif", "b_mask.tif", "c_mask.tif"]
    for path, frames in videos:
        got = tifffile.imread(out / f"{path.stem}_mask.tif").reshape(frames.shape)
        want = _masks(model, frames)
        assert 0 < np.count_nonzero(want) < want.size
        np.testing.assert_array_equal(got, want)
    assert result.stdout.count("segmented") == 3  # a summary per video


def test_a_corrupt_video_among_three(model: Path, tmp_path: Path) -> None:
    videos = _videos(tmp_path)
    broken = tmp_path / "b.tif"
    broken.write_bytes(broken.read_bytes()[:300])  # truncated
    out = tmp_path / "masks"
    result = _segment(*[p for p, _ in videos], "--model", model, "-o", out, "-q")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("unetrt: error:")]
    assert len(errors) == 1 and "b.tif" in errors[0], result.stderr
    assert "1 of 3 videos failed" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a_mask.tif", "c_mask.tif"]
    for path, frames in (videos[0], videos[2]):
        got = tifffile.imread(out / f"{path.stem}_mask.tif").reshape(frames.shape)
        np.testing.assert_array_equal(got, _masks(model, frames))


def test_segment_many_api_and_name_clashes(model: Path, tmp_path: Path) -> None:
    videos = _videos(tmp_path)
    with Segmenter(model) as seg:
        run = seg.segment_many([p for p, _ in videos], progress=False)  # beside each input
        assert [v.output.name for v in run.videos] == ["a_mask.tif", "b_mask.tif", "c_mask.tif"]
        assert run.failed == () and "3 of 3 videos segmented (9 frames)" in str(run)
        other = tmp_path / "other"
        other.mkdir()
        tifffile.imwrite(other / "a.tif", videos[0][1], photometric="minisblack")
        with pytest.raises(OutputError, match="same mask file"):
            seg.segment_many([videos[0][0], other / "a.tif"], tmp_path / "out", progress=False)


def test_one_input_flags_refuse_several(model: Path, tmp_path: Path) -> None:
    videos = _videos(tmp_path)
    for flag in (["--frames", "0:1"], ["--probabilities", str(tmp_path / "p.tif")]):
        result = _segment(videos[0][0], videos[1][0], "--model", model, *flag)
        assert result.returncode == 1 and "takes one input; got 2 inputs" in result.stderr


def test_an_output_that_is_another_input_is_refused(model: Path, tmp_path: Path) -> None:
    (a, _), (b, _), _ = _videos(tmp_path)
    other = tmp_path / "a_mask.tif"  # an input named like a's mask output
    other.write_bytes(b.read_bytes())
    with Segmenter(model) as seg, pytest.raises(OutputError, match="would overwrite the input"):
        seg.segment_many([a, other], progress=False)
    assert other.read_bytes() == b.read_bytes()

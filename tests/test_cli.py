"""The command line: happy paths, and bad input that ends in one readable line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types

import numpy as np
import onnx
import pytest
import tifffile
from scipy import ndimage

from unetrt import __version__
from unetrt.cli import main, parse_frames
from unetrt.contract import CONTRACT_KEY, ModelContract
from unetrt.errors import ConfigError
from unetrt.normalize import Normalization
from unetrt.testing import affine_model, save, unet_model, unet_receptive_radius

# The affine "network" y = 16 x: on range-normalized frames of values in [0, 4000) its
# output is a probability in [0, 0.98), so every mask below is known exactly.
SCALE = 16.0
UINT16_RANGE = 65535.0
UINT8_RANGE = 255.0


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "unet.onnx"
    contract = ModelContract(alignment=4, halo=unet_receptive_radius(pools=2, kernel=3))
    save(unet_model(filters=4, pools=2, contract=contract), path)
    return path


def save_affine(path, contract):
    proto = affine_model(SCALE, 0.0)
    onnx.helper.set_model_props(proto, {CONTRACT_KEY: contract.to_json()})
    save(proto, path)
    return path


@pytest.fixture(scope="module")
def affine(tmp_path_factory):
    """``y = 16 x`` on range-normalized frames, threshold 0.5, tiles with a 4-pixel halo."""
    contract = ModelContract(
        alignment=4, halo=4, normalization=Normalization(method="range"), threshold=0.5
    )
    return save_affine(tmp_path_factory.mktemp("affine") / "affine.onnx", contract)


def expected_probabilities(frames, full_range=UINT16_RANGE):
    """What the engine computes for the affine model: range normalization, then 16 x."""
    normalized = frames.astype(np.float32) * np.float32(1 / full_range)
    return normalized * np.float32(SCALE)


def expected_masks(probabilities, threshold=0.5):
    # No probability lies within rounding of the threshold, so the masks are exact.
    assert np.abs(probabilities - np.float32(threshold)).min() > 1e-6
    masks = np.where(probabilities > threshold, 255, 0).astype(np.uint8)
    for mask in masks.reshape(-1, *masks.shape[-2:]):  # foreground and background in each
        assert 0 < np.count_nonzero(mask) < mask.size
    return masks


def read_stack(path, frame_shape=(40, 52)):
    """A written TIFF as (T, H, W), also when it holds a single frame."""
    return tifffile.imread(path).reshape(-1, *frame_shape)


@pytest.fixture()
def stack(tmp_path):
    path = tmp_path / "video.tif"
    data = np.random.default_rng(0).integers(0, 4000, (4, 40, 52), dtype=np.uint16)
    tifffile.imwrite(path, data, photometric="minisblack")
    return path


def run_cli(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "unetrt", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_user_error(result, *needles):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    # tqdm redraws with carriage returns and clears itself; what remains besides it is one line.
    lines = [line for line in result.stderr.splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("unetrt: error:")
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_segment_writes_masks_and_prints_summary(affine, stack, capsys):
    out = stack.parent / "masks.tif"
    assert (
        main(["segment", str(stack), "-o", str(out), "--model", str(affine), "--tile", "16"]) == 0
    )
    masks = tifffile.imread(out)
    assert masks.shape == (4, 40, 52) and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 255}
    np.testing.assert_array_equal(
        masks, expected_masks(expected_probabilities(tifffile.imread(stack)))
    )
    summary = capsys.readouterr().out
    assert "segmented 4 frames" in summary and "frames/s" in summary


@pytest.mark.parametrize(
    ("frames", "indices"), [("1:3", [1, 2]), ("::2", [0, 2]), ("-1", [3]), ("2", [2])]
)
def test_segment_default_output_and_frames(affine, stack, capsys, frames, indices):
    assert main(["segment", str(stack), "--model", str(affine), "--frames", frames, "-q"]) == 0
    masks = read_stack(stack.parent / "video_mask.tif")
    assert masks.shape == (len(indices), 40, 52)
    expected = expected_masks(expected_probabilities(tifffile.imread(stack)))
    # Every frame has its own mask, so taking the wrong frames cannot pass.
    assert all(not np.array_equal(expected[i], expected[j]) for i in range(4) for j in range(i))
    np.testing.assert_array_equal(masks, expected[indices])
    assert capsys.readouterr().out == ""


def test_segment_writes_probabilities(affine, stack, tmp_path):
    masks_path, probs_path = tmp_path / "m.tif", tmp_path / "p.tif"
    args = ["segment", str(stack), "-o", str(masks_path), "--model", str(affine)]
    assert main([*args, "--tile", "24", "--probabilities", str(probs_path), "-q"]) == 0
    expected = expected_probabilities(tifffile.imread(stack))
    probabilities = tifffile.imread(probs_path)
    assert probabilities.shape == (4, 40, 52) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(tifffile.imread(masks_path), expected_masks(expected))


def test_segment_threshold_and_normalization_flags_override_the_model(stack, tmp_path):
    # The model asks for mean normalization and threshold 0.9; the flags win.
    model = save_affine(
        tmp_path / "mean.onnx",
        ModelContract(normalization=Normalization(method="mean"), threshold=0.9),
    )
    out = tmp_path / "m.tif"
    args = ["segment", str(stack), "-o", str(out), "--model", str(model), "-q"]
    assert main([*args, "--normalize", "range", "--threshold", "0.25"]) == 0
    expected = expected_masks(expected_probabilities(tifffile.imread(stack)), threshold=0.25)
    np.testing.assert_array_equal(tifffile.imread(out), expected)


def test_segment_label_numbers_the_objects(affine, tmp_path):
    # Dim background below the threshold and bright rectangles above it, other ones in
    # each frame; two of them touch only at a corner and are one (8-connected) object.
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 1800, (3, 40, 52), dtype=np.uint16)
    for t in range(3):
        for y, x, h, w in [(2, 3, 5, 6), (7, 9, 4, 4), (20, 30 - 4 * t, 8, 5 + t), (30, 2, 6, 40)]:
            frames[t, y + t : y + t + h, x : x + w] = rng.integers(2300, 4000, (h, w))
        frames[t, 12 + 2 * t, 44] = 3000  # a one-pixel object
    src = tmp_path / "blobs.tif"
    tifffile.imwrite(src, frames, photometric="minisblack")
    out = tmp_path / "labels.tif"
    assert main(["segment", str(src), "-o", str(out), "--model", str(affine), "--label", "-q"]) == 0
    labels = tifffile.imread(out)
    assert labels.shape == (3, 40, 52) and labels.dtype == np.uint16
    for got, mask in zip(labels, expected_masks(expected_probabilities(frames)), strict=True):
        expected, count = ndimage.label(mask > 0, structure=np.ones((3, 3), bool))
        assert count == 4
        np.testing.assert_array_equal(got, expected)


def test_info_and_version(model, capsys):
    assert main(["info", str(model)]) == 0
    out = capsys.readouterr().out
    assert "alignment" in out and "halo" in out and "model metadata" in out
    halo = unet_receptive_radius(pools=2, kernel=3)
    values = {words[0]: words[1] for words in map(str.split, out.splitlines()) if len(words) > 1}
    assert values["alignment"] == "4" and values["halo"] == str(halo)  # the model's contract
    assert main(["info", str(model), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["contract"] == ModelContract(alignment=4, halo=halo).to_dict()
    assert report["model"] == str(model)
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    version = capsys.readouterr().out
    assert "unetrt" in version
    assert version.startswith(f"unetrt {__version__} (cuda: ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2:5", slice(2, 5)),
        (":10", slice(None, 10)),
        ("3:", slice(3, None)),
        ("4", slice(4, 5)),
        ("-1", slice(-1, None)),
        ("-2", slice(-2, -1)),
    ],
)
def test_parse_frames(text, expected):
    assert parse_frames(text) == expected


@pytest.mark.parametrize("text", ["a:b", "1:2:3:4", "1:5:0"])
def test_parse_frames_rejects(text):
    with pytest.raises(ConfigError, match="--frames"):
        parse_frames(text)


def test_missing_input(model, tmp_path):
    assert_user_error(run_cli("segment", tmp_path / "nope.tif", "--model", model), "nope.tif")


def test_missing_model(stack, tmp_path):
    assert_user_error(run_cli("segment", stack, "--model", tmp_path / "none.onnx"), "none.onnx")


def test_not_a_tiff(model, tmp_path):
    bogus = tmp_path / "notes.tif"
    bogus.write_text("these are my notes, not an image\n")
    assert_user_error(run_cli("segment", bogus, "--model", model), "notes.tif")
    assert not (tmp_path / "notes_mask.tif").exists()


def test_truncated_tiff_leaves_no_output(model, tmp_path):
    src = tmp_path / "cut.tif"
    tifffile.imwrite(src, np.random.default_rng(1).integers(0, 255, (6, 64, 64), dtype=np.uint8))
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    result = run_cli("segment", src, "--model", model)
    assert_user_error(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.tif"]


def test_uninterpretable_shape(model, tmp_path):
    src = tmp_path / "zc.tif"
    tifffile.imwrite(
        src, np.zeros((3, 2, 5, 16, 16), np.uint8), imagej=True, metadata={"axes": "TZCYX"}
    )
    assert_user_error(run_cli("segment", src, "--model", model), "(3, 2, 5, 16, 16)")


def test_channels_do_not_fit_model(model, tmp_path):
    src = tmp_path / "rgb.tif"
    tifffile.imwrite(src, np.zeros((2, 16, 16, 3), np.uint8), photometric="rgb")
    assert_user_error(run_cli("segment", src, "--model", model), "channel")


def test_unwritable_output(model, stack, tmp_path):
    result = run_cli("segment", stack, "--model", model, "-o", tmp_path / "no" / "dir" / "m.tif")
    assert_user_error(result)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_read_only_folder(model, stack, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    assert_user_error(run_cli("segment", stack, "--model", model, "-o", ro / "m.tif"))


def test_bad_option_value(model, stack):
    assert_user_error(run_cli("segment", stack, "--model", model, "--batch", "0"), "batch")


def test_interrupt_leaves_nothing(tmp_path):
    model = tmp_path / "big.onnx"
    contract = ModelContract(alignment=8, halo=unet_receptive_radius(pools=3, kernel=3))
    save(unet_model(filters=16, pools=3, contract=contract), model)
    src = tmp_path / "long.tif"
    with tifffile.TiffWriter(src) as tw:
        for _ in range(400):
            tw.write(np.zeros((256, 256), np.uint8), contiguous=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "unetrt", "segment", str(src), "--model", str(model)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Wait until the run has started writing (its temporary file exists), then Ctrl-C.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(tmp_path.iterdir())) < 3:
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert "interrupted" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "long.tif"]


def test_interrupt_during_start_up_is_one_line(monkeypatch, capsys):
    from unetrt.__main__ import run

    class Interrupted(types.ModuleType):  # Ctrl-C while the command line is imported
        def __getattr__(self, name):
            raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "unetrt.cli", Interrupted("unetrt.cli"))
    with pytest.raises(SystemExit) as exit_info:
        run()
    assert exit_info.value.code == 130
    assert capsys.readouterr().err == "unetrt: interrupted; no output was written\n"


def test_import_is_light():
    # `import unetrt` (and so the start of the command) loads no heavy module
    code = "import sys, unetrt; print(sorted({'numpy', 'onnxruntime', 'scipy'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr
    code = "import unetrt; print(unetrt.Segmenter.__module__, 'Segmenter' in dir(unetrt))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split() == ["unetrt.segmenter", "True"], result.stderr


def test_bad_probabilities_path_leaves_no_partial_mask(model, stack, tmp_path):
    result = run_cli(
        "segment", stack, "--model", model, "--probabilities", tmp_path / "no" / "p.tif"
    )
    assert_user_error(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["video.tif"]


def test_glob_input_writes_beside_the_folder(affine, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    y, x = np.mgrid[0:24, 0:24]
    # uint8 ramps in [0, 16): 16 * v / 255 > 0.5 exactly where v >= 8; shifted per frame.
    data = np.stack([(x + 2 * y + 3 * t) % 16 for t in range(3)]).astype(np.uint8)
    for t in range(3):
        tifffile.imwrite(frames / f"t{t:03d}.tif", data[t])
    assert main(["segment", str(frames / "t*.tif"), "--model", str(affine), "-q"]) == 0
    masks = tifffile.imread(tmp_path / "frames_mask.tif")
    assert masks.shape == (3, 24, 24)
    expected = expected_masks(expected_probabilities(data, UINT8_RANGE))
    np.testing.assert_array_equal(expected, np.where(data >= 8, 255, 0))
    np.testing.assert_array_equal(masks, expected)  # in file-name order
    assert sorted(p.name for p in frames.iterdir()) == ["t000.tif", "t001.tif", "t002.tif"]


# --- built-in models and bad values inside good files ----------------------------------


def test_model_default_by_name(tmp_path):
    from unetrt import Segmenter

    # Phase-contrast-like cells: dark bodies with a bright halo on a noisy grey background.
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:96, :128]
    frames = []
    for shift in (0, 6):
        frame = 120.0 + rng.normal(0, 5, yy.shape)
        for r, (cy, cx) in ((14, (40, 50 + shift)), (10, (60, 95 - shift))):
            d = np.hypot(yy - cy, xx - cx)
            frame += np.where(d < r, -30, 0) + np.where((d >= r) & (d < r + 3), 60, 0)
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    frames = np.stack(frames)
    src = tmp_path / "cells.tif"
    tifffile.imwrite(src, frames, photometric="minisblack")
    named = run_cli("segment", src, "--model", "default", "-o", tmp_path / "named.tif", "-q")
    assert named.returncode == 0, named.stderr
    implicit = run_cli("segment", src, "-o", tmp_path / "implicit.tif", "-q")
    assert implicit.returncode == 0, implicit.stderr
    with Segmenter() as seg:
        expected = np.stack([seg.segment_frame(f) for f in frames])
    assert 0 < np.count_nonzero(expected) < expected.size
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "named.tif"), expected)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "implicit.tif"), expected)


def test_info_default_and_the_list_of_builtin_models():
    from unetrt.contract import load_contract
    from unetrt.models import builtin_path

    listed = run_cli("info")
    assert listed.returncode == 0, listed.stderr
    assert "default" in listed.stdout and "built-in models" in listed.stdout
    info = run_cli("info", "default", "--json")
    assert info.returncode == 0, info.stderr
    report = json.loads(info.stdout)
    assert report["model"] == str(builtin_path("default"))
    stored = load_contract(builtin_path("default"))
    assert stored is not None and stored.version == 1  # a version-1 contract still reads
    assert report["contract"] == {**stored.to_dict(), "version": 2}
    assert set(report["inferred"].values()) == {"model contract"}


def test_nan_frame_is_one_line_naming_the_frame_and_no_output(affine, tmp_path):
    frames = np.random.default_rng(4).random((4, 40, 52)).astype(np.float32)
    frames[2, 5, 7] = np.nan
    src = tmp_path / "float.tif"
    tifffile.imwrite(src, frames, photometric="minisblack")
    result = run_cli("segment", src, "--model", affine, "-o", tmp_path / "out.tif")
    assert_user_error(result, "frame 2 of float.tif", "NaN", "--nan")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["float.tif"]
    ok = run_cli("segment", src, "--model", affine, "-o", tmp_path / "out.tif", "--nan", "0", "-q")
    assert ok.returncode == 0, ok.stderr
    read_as_zero = np.nan_to_num(frames, nan=0.0)
    expected = expected_masks(expected_probabilities(read_as_zero, full_range=1.0))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out.tif"), expected)

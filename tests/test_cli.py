"""The command line: happy paths, and bad input that ends in one readable line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import tifffile

from unetrt.cli import main, parse_frames
from unetrt.contract import ModelContract
from unetrt.errors import ConfigError
from unetrt.testing import save, unet_model, unet_receptive_radius


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "unet.onnx"
    contract = ModelContract(alignment=4, halo=unet_receptive_radius(pools=2, kernel=3))
    save(unet_model(filters=4, pools=2, contract=contract), path)
    return path


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


def test_segment_writes_masks_and_prints_summary(model, stack, capsys):
    out = stack.parent / "masks.tif"
    assert main(["segment", str(stack), "-o", str(out), "--model", str(model), "--tile", "56"]) == 0
    masks = tifffile.imread(out)
    assert masks.shape == (4, 40, 52) and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 255}
    summary = capsys.readouterr().out
    assert "segmented 4 frames" in summary and "frames/s" in summary


def test_segment_default_output_and_frames(model, stack, capsys):
    assert main(["segment", str(stack), "--model", str(model), "--frames", "1:3", "-q"]) == 0
    assert tifffile.imread(stack.parent / "video_mask.tif").shape == (2, 40, 52)
    assert capsys.readouterr().out == ""


def test_info_and_version(model, capsys):
    assert main(["info", str(model)]) == 0
    out = capsys.readouterr().out
    assert "alignment" in out and "halo" in out and "model metadata" in out
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert "unetrt" in capsys.readouterr().out


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


def test_glob_input_writes_beside_the_folder(model, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for t in range(3):
        tifffile.imwrite(frames / f"t{t:03d}.tif", np.full((24, 24), 10 * t, np.uint8))
    assert main(["segment", str(frames / "t*.tif"), "--model", str(model), "-q"]) == 0
    assert tifffile.imread(tmp_path / "frames_mask.tif").shape == (3, 24, 24)
    assert sorted(p.name for p in frames.iterdir()) == ["t000.tif", "t001.tif", "t002.tif"]

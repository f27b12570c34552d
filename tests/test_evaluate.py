"""Tests for unetrt.evaluate: exact scores with an identity "network", pairing, CSV, CLI.

The model is ONNX identity with a contract that normalizes uint8 frames by 255 and
thresholds at 0.5, so a frame of 0 / 255 pixels is its own predicted mask and every
score is known exactly. The last test runs the shipped default model on the real
U373 gold truth (``@pytest.mark.data``).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

import unetrt.models
from unetrt.cli import main
from unetrt.contract import CONTRACT_KEY, ModelContract
from unetrt.errors import ConfigError, InputError
from unetrt.evaluate import evaluate
from unetrt.normalize import Normalization

onnx = pytest.importorskip("onnx")
from unetrt import testing  # noqa: E402  (needs onnx)

U373_GOLD = (10, 17, 19, 20, 22, 26, 35, 36, 41, 49, 51, 52, 59, 74, 77, 85, 92, 106, 112)


@pytest.fixture()
def identity_model(tmp_path: Path) -> Path:
    contract = ModelContract(normalization=Normalization(method="range"), output="sigmoid")
    model = testing.affine_model(1.0, 0.0)
    onnx.helper.set_model_props(model, {CONTRACT_KEY: contract.to_json()})
    path = tmp_path / "identity.onnx"
    testing.save(model, path)
    return path


def _frames_and_masks() -> tuple[np.ndarray, np.ndarray]:
    """Three 10 x 10 frames (their own predictions) and hand-made truth masks."""
    frames = np.zeros((3, 10, 10), np.uint8)
    truths = np.zeros((3, 10, 10), np.uint16)
    frames[0, 0:4, 0:5] = 255  # 20 predicted pixels
    truths[0, 2:6, 0:5] = 7  # 20 true pixels (an instance label), 10 shared
    frames[1, :, :] = 255  # everything predicted ...
    truths[1, :5, :] = 1  # ... half of it true
    truths[1, 5:, :] = 2  # second instance: the other half, so all of it is true
    # frame 2: nothing predicted, nothing true
    return frames, truths


def _write_stack(path: Path, stack: np.ndarray) -> None:
    tifffile.imwrite(path, stack, photometric="minisblack")


# (dice, iou, pixel difference %) of the three frames above
EXPECTED = [(0.5, 1 / 3, 20.0), (1.0, 1.0, 0.0), (1.0, 1.0, 0.0)]


def _check_scores(report, names: list[str]) -> None:  # type: ignore[no-untyped-def]
    assert [f.image for f in report.frames] == names
    for score, (dice, iou, diff) in zip(report.frames, EXPECTED, strict=True):
        assert score.dice == pytest.approx(dice, abs=1e-12)
        assert score.iou == pytest.approx(iou, abs=1e-12)
        assert score.pixel_difference == pytest.approx(diff, abs=1e-12)
    assert report.mean_dice == pytest.approx(2.5 / 3)
    assert report.mean_iou == pytest.approx((1 / 3 + 2) / 3)
    assert report.mean_pixel_difference == pytest.approx(20.0 / 3)


def test_scores_are_exact_on_stacks(identity_model: Path, tmp_path: Path) -> None:
    frames, truths = _frames_and_masks()
    _write_stack(tmp_path / "frames.tif", frames)
    _write_stack(tmp_path / "truth.tif", truths)
    report = evaluate(identity_model, tmp_path / "frames.tif", tmp_path / "truth.tif")
    _check_scores(report, ["frames.tif[0]", "frames.tif[1]", "frames.tif[2]"])
    assert report.model == str(identity_model)


def test_pairs_folders_by_frame_number(identity_model: Path, tmp_path: Path) -> None:
    """Masks for some frames of a video (the Cell Tracking Challenge gold truth layout)."""
    frames, truths = _frames_and_masks()
    (tmp_path / "frames").mkdir()
    (tmp_path / "gold").mkdir()
    numbers = [3, 8, 12]
    for n in range(15):  # frames without a mask are not scored
        index = numbers.index(n) if n in numbers else 2
        tifffile.imwrite(tmp_path / "frames" / f"t{n:03d}.tif", frames[index])
    for index, n in enumerate(numbers):
        tifffile.imwrite(tmp_path / "gold" / f"man_seg{n:03d}.tif", truths[index])
    report = evaluate(identity_model, tmp_path / "frames", tmp_path / "gold")
    _check_scores(report, ["t003.tif", "t008.tif", "t012.tif"])
    assert [f.mask for f in report.frames] == [f"man_seg{n:03d}.tif" for n in numbers]


def test_pairs_in_order_when_asked(identity_model: Path, tmp_path: Path) -> None:
    frames, truths = _frames_and_masks()
    (tmp_path / "frames").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(3):  # numbers that do not match: in order they still pair
        tifffile.imwrite(tmp_path / "frames" / f"img{i + 1}.tif", frames[i])
        tifffile.imwrite(tmp_path / "masks" / f"mask{i}.tif", truths[i])
    with pytest.raises(InputError, match="no frame with their number"):
        evaluate(identity_model, tmp_path / "frames", tmp_path / "masks")
    report = evaluate(identity_model, tmp_path / "frames", tmp_path / "masks", pair="order")
    _check_scores(report, ["img1.tif", "img2.tif", "img3.tif"])


def test_count_mismatch_names_both_counts(identity_model: Path, tmp_path: Path) -> None:
    frames, truths = _frames_and_masks()
    _write_stack(tmp_path / "frames.tif", frames)
    _write_stack(tmp_path / "truth.tif", truths[:2])
    with pytest.raises(InputError, match=r"has 3 frames but truth.tif has 2 masks"):
        evaluate(identity_model, tmp_path / "frames.tif", tmp_path / "truth.tif")


def test_mask_shape_mismatch_names_files(identity_model: Path, tmp_path: Path) -> None:
    frames, _ = _frames_and_masks()
    _write_stack(tmp_path / "frames.tif", frames)
    _write_stack(tmp_path / "truth.tif", np.zeros((3, 10, 12), np.uint8))
    with pytest.raises(InputError, match=r"mask truth.tif\[0\] has shape \(10, 12\)"):
        evaluate(identity_model, tmp_path / "frames.tif", tmp_path / "truth.tif")


def test_pair_by_number_needs_numbers(identity_model: Path, tmp_path: Path) -> None:
    frames, truths = _frames_and_masks()
    _write_stack(tmp_path / "frames.tif", frames)
    _write_stack(tmp_path / "truth.tif", truths)
    with pytest.raises(InputError, match="cannot pair by frame number: frames.tif"):
        evaluate(identity_model, tmp_path / "frames.tif", tmp_path / "truth.tif", pair="number")
    with pytest.raises(ConfigError, match="pair must be one of"):
        evaluate(identity_model, tmp_path / "frames.tif", tmp_path / "truth.tif", pair="name")


def test_csv_rows_and_mean(identity_model: Path, tmp_path: Path) -> None:
    frames, truths = _frames_and_masks()
    _write_stack(tmp_path / "frames.tif", frames)
    _write_stack(tmp_path / "truth.tif", truths)
    out = tmp_path / "scores.csv"
    report = evaluate(identity_model, tmp_path / "frames.tif", tmp_path / "truth.tif", csv=out)
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["frame"] for r in rows] == ["0", "1", "2", "mean"]
    assert float(rows[0]["dice"]) == pytest.approx(0.5)
    assert float(rows[0]["pixel_difference_percent"]) == pytest.approx(20.0)
    assert float(rows[-1]["dice"]) == pytest.approx(report.mean_dice)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "frames.tif",
        "identity.onnx",
        "scores.csv",
        "truth.tif",
    ]  # no temporary file left behind


def test_cli_prints_table_and_writes_csv(
    identity_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames, truths = _frames_and_masks()
    _write_stack(tmp_path / "frames.tif", frames)
    _write_stack(tmp_path / "truth.tif", truths)
    args = ["evaluate", "--model", str(identity_model), "--images", str(tmp_path / "frames.tif")]
    code = main([*args, "--masks", str(tmp_path / "truth.tif"), "--csv", str(tmp_path / "s.csv")])
    out = capsys.readouterr().out
    assert code == 0
    # The probabilities of the identity model are 0 or 1 here: both differences agree.
    mean = ["mean", "(3)", "0.8333", "0.7778", "6.667", "6.667"]
    assert out.splitlines()[4].split() == mean
    assert (tmp_path / "s.csv").is_file()
    code = main([*args, "--masks", str(tmp_path / "missing.tif")])
    assert code == 1
    assert "missing.tif" in capsys.readouterr().err


# ----------------------------------------------------------------------- real data
def _data_root() -> Path:
    env = os.environ.get("UNETRT_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def _u373_and_builtin(name: str) -> Path:
    """The U373 folder, skipping when the data or the built-in model `name` is absent."""
    from unetrt.models import BUILTIN_MODELS

    u373 = _data_root() / "ctc-u373-02"
    if not (u373 / "gold_truth").is_dir():
        pytest.skip(f"U373 data not found at {u373} (set UNETRT_DATA to the shared data folder)")
    if not (Path(unetrt.models.__file__).parent / BUILTIN_MODELS[name][0]).is_file():
        pytest.skip(f"this build ships no {name} model")
    return u373


@pytest.mark.data
def test_default_model_reaches_dice_090_on_u373_gold_truth() -> None:
    u373 = _u373_and_builtin("default")
    report = evaluate(None, u373 / "frames", u373 / "gold_truth")
    assert [int(f.image[1:4]) for f in report.frames] == list(U373_GOLD)
    assert report.mean_dice >= 0.90, report.table()


@pytest.mark.data
@pytest.mark.parametrize("mode", ["stream", "window"])
def test_default_temporal_model_reaches_dice_090_over_the_whole_video(mode: str) -> None:
    u373 = _u373_and_builtin("default-temporal")
    report = evaluate("default-temporal", u373 / "frames", u373 / "gold_truth", temporal=mode)
    assert [int(f.image[1:4]) for f in report.frames] == list(U373_GOLD)
    assert report.mean_dice >= 0.90, report.table()

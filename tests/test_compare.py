"""Tests for unetrt.train.compare and ``unetrt compare``.

Two tiny configurations (2 filters, 1 pool, three steps on 16 x 16 patches of six
32 x 32 frames) are trained once for the module and compared on three held-out frames;
the expected scores come from exporting and evaluating each trained model independently.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402

import unetrt.train.run  # noqa: E402
from unetrt.cli import main  # noqa: E402
from unetrt.errors import ConfigError  # noqa: E402
from unetrt.evaluate import EvaluationReport, evaluate  # noqa: E402
from unetrt.export import export  # noqa: E402
from unetrt.train.compare import ComparisonResult, _names, compare  # noqa: E402


def _write_frames(folder: Path, count: int, seed: int) -> None:
    """`count` 32 x 32 frames of bright disks on noise, and their instance masks."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:32, :32]
    (folder / "frames").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i in range(count):
        labels = np.zeros((32, 32), np.uint8)
        for label in (1, 2):
            r, c = rng.integers(6, 26, 2)
            labels[(rows - r) ** 2 + (cols - c) ** 2 < rng.integers(9, 36)] = label
        frame = 60 + 120 * (labels > 0) + rng.normal(0, 10, labels.shape)
        tifffile.imwrite(folder / "frames" / f"t{i:03d}.tif", frame.clip(0, 255).astype(np.uint8))
        tifffile.imwrite(folder / "masks" / f"man_seg{i:03d}.tif", labels)


def _config(root: Path, **changes: Any) -> dict[str, Any]:
    return {
        "data_train_images": str(root / "train" / "frames"),
        "data_train_masks": str(root / "train" / "masks"),
        "model_pools": 1,
        "model_n_filters": 2,
        "model_lr": 0.01,
        "datagen_dim_size": [16, 16],
        "datagen_batch_size": 2,
        "train_max_epochs": 1,
        "train_steps_per_epoch": 3,
        "augmentation": False,
        "output_dir": "run",  # relative to the configuration file
        **changes,
    }


def _write_config(path: Path, config: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))
    return path


@dataclass
class Compared:
    root: Path
    configs: list[Path]
    images: Path
    masks: Path
    result: ComparisonResult
    trained: list[Any]  # the configurations `train` was called with


class _Trains:
    """Stands in for `unetrt.train.run.train`: counts the calls, and trains or refuses."""

    def __init__(self, really: bool) -> None:
        self.calls: list[Any] = []
        self.really = really
        self.real = unetrt.train.run.train

    def __call__(self, config: Any, **kwargs: Any) -> Path:
        self.calls.append(config)
        if not self.really:
            raise AssertionError("nothing should have been trained")
        return self.real(config, **kwargs)


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compared]:
    """Two configurations, both named ``tiny`` (in two folders), trained and compared."""
    root = tmp_path_factory.mktemp("compare")
    _write_frames(root / "train", 6, seed=0)
    _write_frames(root / "held", 3, seed=1)
    configs = [
        _write_config(root / "a" / "tiny.json", _config(root)),
        _write_config(
            root / "b" / "tiny.json",
            _config(root, model_lossfunction="dice", model_lr=0.05, seed=3),
        ),
    ]
    trains = _Trains(really=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(unetrt.train.run, "train", trains)
        result = compare(
            configs, root / "held" / "frames", root / "held" / "masks", output_dir=root / "out"
        )
    yield Compared(
        root, configs, root / "held" / "frames", root / "held" / "masks", result, trains.calls
    )


@pytest.fixture()
def no_training(monkeypatch: pytest.MonkeyPatch) -> _Trains:
    trains = _Trains(really=False)
    monkeypatch.setattr(unetrt.train.run, "train", trains)
    return trains


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _independent(model_keras: Path, onnx: Path, c: Compared) -> EvaluationReport:
    export(model_keras, onnx)
    return evaluate(onnx, c.images, c.masks)


def test_one_row_per_configuration_scored_as_an_independent_evaluation(
    compared: Compared, tmp_path: Path
) -> None:
    c = compared
    assert len(c.trained) == 2  # neither run existed
    rows = _rows(c.root / "out" / "comparison.csv")
    assert [r["name"] for r in rows] == ["tiny", "tiny-2"]
    frame_rows = _rows(c.root / "out" / "comparison_frames.csv")
    assert [(r["name"], r["frame"]) for r in frame_rows] == [
        (name, str(i)) for name in ("tiny", "tiny-2") for i in range(3)
    ]
    reports = []
    for row, config in zip(rows, c.configs, strict=True):
        run = config.parent / "run"
        assert row["config"] == str(config)
        assert row["model"] == str(run / "model.keras")
        assert row["onnx"] == str(c.root / "out" / f"{row['name']}.onnx")
        assert row["reused"] == "False"
        report = _independent(run / "model.keras", tmp_path / f"{row['name']}.onnx", c)
        reports.append(report)
        assert int(row["frames"]) == len(report.frames) == 3
        assert float(row["mean_dice"]) == report.mean_dice
        assert float(row["mean_iou"]) == report.mean_iou
        assert float(row["mean_pixel_difference_percent"]) == report.mean_pixel_difference
        assert float(row["mean_probability_difference_percent"]) == (
            report.mean_probability_difference
        )
        summary = json.loads((run / "summary.json").read_text())
        assert summary["steps"] == 3
        for key in ("epochs", "steps", "minutes", "best_epoch", "train_dice"):
            assert row[key] == str(summary[key])
        assert row["val_dice"] == ""  # no validation data: null in the summary
        ours = [r for r in frame_rows if r["name"] == row["name"]]
        for r, f in zip(ours, report.frames, strict=True):
            assert (r["image"], r["mask"]) == (f.image, f.mask)
            assert float(r["dice"]) == f.dice and float(r["iou"]) == f.iou
            assert float(r["pixel_difference_percent"]) == f.pixel_difference
            assert float(r["probability_difference_percent"]) == f.probability_difference
    # The two models differ, so a row showing the other model's scores would be caught.
    assert reports[0].mean_probability_difference != reports[1].mean_probability_difference
    assert [m.report.frames for m in c.result.models] == [r.frames for r in reports]


def test_the_table_has_a_row_per_configuration_and_names_the_best(compared: Compared) -> None:
    lines = compared.result.table().splitlines()
    assert lines[0].split() == [
        *("name", "frames", "dice", "iou", "pixdiff%", "steps", "minutes", "model")
    ]
    models = compared.result.models
    for line, m in zip(lines[1:3], models, strict=True):
        assert line.split() == [
            m.name,
            "3",
            f"{m.report.mean_dice:.4f}",
            f"{m.report.mean_iou:.4f}",
            f"{m.report.mean_pixel_difference:.3f}",
            "3",
            f"{m.summary['minutes']:.2f}",
            "trained",
        ]
    best = max(models, key=lambda m: m.report.mean_dice)
    assert lines[3] == f"best mean Dice: {best.name} ({best.report.mean_dice:.4f})"
    assert len(lines) == 4


def test_the_plot_is_a_png(compared: Compared) -> None:
    path = compared.root / "out" / "comparison.png"
    assert path == compared.result.plot
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (800, 600)
        image.verify()
    assert not [p.name for p in path.parent.iterdir() if p.name.startswith(".")]


def test_finished_runs_are_reused_not_retrained(
    compared: Compared, tmp_path: Path, no_training: _Trains
) -> None:
    c = compared
    models = [config.parent / "run" / "model.keras" for config in c.configs]
    before = [p.stat().st_mtime_ns for p in models]
    again = compare(c.configs, c.images, c.masks, output_dir=tmp_path)
    assert no_training.calls == []
    assert [p.stat().st_mtime_ns for p in models] == before
    assert [m.reused for m in again.models] == [True, True]
    assert [m.report.frames for m in again.models] == [m.report.frames for m in c.result.models]
    assert [r["reused"] for r in _rows(tmp_path / "comparison.csv")] == ["True", "True"]


def test_an_unfinished_run_trains_and_retrain_trains_again(
    compared: Compared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = compared
    config = _write_config(tmp_path / "half" / "tiny.json", _config(c.root))
    run = tmp_path / "half" / "run"
    run.mkdir()
    shutil.copy(c.configs[0].parent / "run" / "model.keras", run)  # no summary.json: unfinished
    trains = _Trains(really=True)
    monkeypatch.setattr(unetrt.train.run, "train", trains)

    first = compare([config], c.images, c.masks, output_dir=tmp_path / "out")
    assert len(trains.calls) == 1 and not first.models[0].reused
    assert (run / "summary.json").is_file()
    written = (run / "model.keras").stat().st_mtime_ns

    second = compare([config], c.images, c.masks, output_dir=tmp_path / "out", retrain=True)
    assert len(trains.calls) == 2 and not second.models[0].reused
    assert (run / "model.keras").stat().st_mtime_ns != written


def test_a_run_trained_with_another_configuration_is_not_reused(
    compared: Compared, tmp_path: Path, no_training: _Trains
) -> None:
    c = compared
    run = c.configs[0].parent / "run"
    edited = _write_config(
        tmp_path / "tiny.json", _config(c.root, model_lr=0.2, output_dir=str(run))
    )
    with pytest.raises(ConfigError, match=r"differs in model_lr\); pass --retrain"):
        compare([edited], c.images, c.masks, output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_names_are_file_stems_made_unique() -> None:
    paths = [Path(p) for p in ("a/u.json", "b/u.json", "u-2.json", "c/u.json", "v.json")]
    assert _names(paths) == ["u", "u-2", "u-2-2", "u-3", "v"]


def test_cli_compare_prints_the_table(
    compared: Compared, tmp_path: Path, no_training: _Trains, capsys: pytest.CaptureFixture[str]
) -> None:
    c = compared
    flags = ["--images", str(c.images), "--masks", str(c.masks), "-o", str(tmp_path), "-q"]
    assert main(["compare", *map(str, c.configs), *flags]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:3]] == ["tiny", "tiny-2"]
    assert all(line.endswith("reused") for line in lines[1:3])
    assert lines[-1] == (
        f"comparison written to {tmp_path / 'comparison.csv'}, comparison_frames.csv and "
        f"comparison.png"
    )
    assert (tmp_path / "comparison.csv").read_text() != ""


def _cli_error_cases(root: Path, c: Compared) -> dict[str, tuple[list[str], str]]:
    fresh = _write_config(root / "fresh" / "tiny.json", _config(c.root))  # would train
    twin = _write_config(
        root / "twin" / "other.json", _config(c.root, output_dir=str(fresh.parent / "run"))
    )
    (root / "broken.json").write_text("{")
    (root / "few").mkdir()
    shutil.copy(c.masks / "man_seg000.tif", root / "few" / "man_seg007.tif")
    held = ["--images", str(c.images), "--masks", str(c.masks)]
    return {
        "missing config": (
            ["compare", str(root / "missing.json"), *held],
            "cannot read training config",
        ),
        "broken config": (["compare", str(root / "broken.json"), *held], "is not valid JSON"),
        "shared output_dir": (["compare", str(fresh), str(twin), *held], "both train into"),
        "masks without frames": (
            ["compare", str(fresh), "--images", str(c.images), "--masks", str(root / "few")],
            "have no frame with their number",
        ),
        "missing images": (
            ["compare", str(fresh), "--images", str(root / "none"), "--masks", str(c.masks)],
            f"no such file or folder: {root / 'none'}",
        ),
        "config given twice": (["compare", str(fresh), str(fresh), *held], "is given twice"),
    }


@pytest.mark.parametrize(
    "case",
    ["missing config", "broken config", "shared output_dir", "config given twice",
     "masks without frames", "missing images"],
)  # fmt: skip
def test_cli_errors_are_one_line_before_any_training(
    case: str,
    compared: Compared,
    tmp_path: Path,
    no_training: _Trains,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv, message = _cli_error_cases(tmp_path, compared)[case]
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("unetrt: error: ") and message in err[0]
    assert no_training.calls == []
    assert not (tmp_path / "unetrt-comparison").exists()


def test_cli_needs_masks_with_images_and_a_config(
    compared: Compared, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (
        ["compare", str(compared.configs[0]), "--images", str(compared.images)],
        ["compare", "--images", str(compared.images), "--masks", str(compared.masks)],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "the following arguments are required: --masks" in err
    assert "the following arguments are required: config" in err

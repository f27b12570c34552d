"""Tests for unetrt.train.run: a tiny U-Net trains for a few steps on synthetic frames.

Each run is a 2-pool, 4-filter U-Net on six 64 x 64 frames of bright disks with 32 x 32
patches, a few seconds on two CPU cores.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

pytest.importorskip("tensorflow")
from PIL import Image  # noqa: E402

from unetrt.cli import main  # noqa: E402
from unetrt.errors import ConfigError, ModelError, OutputError  # noqa: E402
from unetrt.train.config import load_config  # noqa: E402
from unetrt.train.run import train  # noqa: E402


@pytest.fixture()
def config(tmp_path: Path) -> dict[str, Any]:
    """Six annotated frames (instance masks of a few disks) and a tiny training config."""
    rng = np.random.default_rng(0)
    (tmp_path / "frames").mkdir()
    (tmp_path / "masks").mkdir()
    rows, cols = np.mgrid[:64, :64]
    for i in range(6):
        labels = np.zeros((64, 64), np.uint16)
        for label in range(1, 4):
            r, c = rng.integers(10, 54, 2)
            labels[(rows - r) ** 2 + (cols - c) ** 2 < rng.integers(25, 100)] = label
        frame = 60 + 120 * (labels > 0) + rng.normal(0, 10, labels.shape)
        tifffile.imwrite(tmp_path / "frames" / f"t{i:03d}.tif", frame.clip(0, 255).astype(np.uint8))
        tifffile.imwrite(tmp_path / "masks" / f"man_seg{i:03d}.tif", labels)
    return {
        "data_train_images": str(tmp_path / "frames"),
        "data_train_masks": str(tmp_path / "masks"),
        "data_val_fraction": 0.34,
        "model_pools": 2,
        "model_n_filters": 4,
        "batch_norm": True,
        "model_lossfunction": "bce_dice",
        "model_lr": 0.01,
        "datagen_dim_size": [32, 32],
        "datagen_batch_size": 2,
        "train_max_epochs": 2,
        "output_dir": str(tmp_path / "run"),
    }


def _log(run: Path) -> list[dict[str, str]]:
    with (run / "log.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_train_writes_model_config_log_checkpoints_and_montages(
    config: dict[str, Any], tmp_path: Path
) -> None:
    path = train(config, verbose=0)
    run = (tmp_path / "run").resolve()
    assert path == run / "model.keras" and path.is_file()

    stored = load_config(run / "config.json")
    assert stored == load_config({**config, "output_dir": str(run)})

    log = _log(run)
    assert [row["epoch"] for row in log] == ["0", "1"]
    assert {"loss", "val_loss", "dice_coefficient", "val_dice_coefficient"} <= set(log[0])
    assert all(np.isfinite(float(row["loss"])) for row in log)

    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "epoch0001.keras",
        "epoch0002.keras",
    ]
    montages = sorted((run / "montages").iterdir())
    assert [p.name for p in montages] == ["epoch0001.png", "epoch0002.png"]
    # Three validation frames (ceil(0.34 * 6)), each a row of image | truth | prediction.
    assert Image.open(montages[-1]).size == (3 * 64, 3 * 64)


def test_resume_continues_from_the_checkpoint_epoch(config: dict[str, Any], tmp_path: Path) -> None:
    train(config, epochs=1, verbose=0)
    checkpoint = tmp_path / "run" / "checkpoints" / "epoch0001.keras"
    train(config, resume=checkpoint, epochs=2, verbose=0)
    run = tmp_path / "run"
    assert [row["epoch"] for row in _log(run)] == ["0", "1"]  # appended, not restarted
    assert (run / "checkpoints" / "epoch0002.keras").is_file()
    assert sorted(p.name for p in (run / "montages").iterdir()) == [
        "epoch0001.png",
        "epoch0002.png",
    ]
    with pytest.raises(ConfigError, match="already has 2 epochs"):
        train(config, resume=run / "checkpoints" / "epoch0002.keras", epochs=2, verbose=0)


def test_failed_model_save_leaves_no_model(
    config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import keras

    real_save = keras.Model.save

    def fill_the_disk_at_the_end(self: Any, path: Any, *args: Any, **kwargs: Any) -> None:
        if "checkpoints" in Path(path).parts:  # checkpoints still fit
            return real_save(self, path, *args, **kwargs)
        Path(path).write_bytes(b"half a model")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(keras.Model, "save", fill_the_disk_at_the_end)
    config["output_dir"] = str(tmp_path / "full")
    with pytest.raises(OutputError, match="No space left on device"):
        train(config, verbose=0)
    assert not (tmp_path / "full" / "model.keras").exists()
    assert not [p.name for p in (tmp_path / "full").iterdir() if p.name.startswith(".")]


def test_pruning_keeps_the_newest_and_the_best_checkpoint(tmp_path: Path) -> None:
    from unetrt.train.run import _PruneCheckpoints

    prune = _PruneCheckpoints(tmp_path, keep=2, monitor="val_loss")
    for epoch, val_loss in enumerate([0.5, 0.2, 0.4, 0.3, 0.6]):
        (tmp_path / f"epoch{epoch + 1:04d}.keras").write_bytes(b"")
        prune.on_epoch_end(epoch, {"val_loss": val_loss})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["epoch0002.keras", "epoch0004.keras", "epoch0005.keras"]


def test_resume_needs_a_named_checkpoint(config: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such file"):
        train(config, resume=tmp_path / "epoch0001.keras", verbose=0)
    (tmp_path / "weights.keras").write_bytes(b"")
    with pytest.raises(ConfigError, match="cannot tell which epoch checkpoint weights.keras"):
        train(config, resume=tmp_path / "weights.keras", verbose=0)
    with pytest.raises(ConfigError, match="epochs must be a positive integer"):
        train(config, epochs=0, verbose=0)


def test_cli_train_export_evaluate(
    config: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole loop a microscopist runs: train, export, evaluate."""
    pytest.importorskip("tf2onnx")
    (tmp_path / "config.json").write_text(json.dumps(config))
    out = tmp_path / "cli-run"
    code = main(["train", str(tmp_path / "config.json"), "--output-dir", str(out), "--epochs", "1"])
    assert code == 0
    assert f"trained model written to {out / 'model.keras'}" in capsys.readouterr().out

    onnx_path = tmp_path / "model.onnx"
    code = main(["export", str(out / "model.keras"), "-o", str(onnx_path), "-q"])
    assert code == 0 and onnx_path.is_file()

    args = ["--images", str(tmp_path / "frames"), "--masks", str(tmp_path / "masks")]
    assert main(["evaluate", "--model", str(onnx_path), *args]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 1 + 6 + 1 and table[-1].startswith("mean (6)")

    assert main(["train", str(tmp_path / "missing.json")]) == 1
    assert "cannot read training config" in capsys.readouterr().err

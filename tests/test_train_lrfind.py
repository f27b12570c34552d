"""Tests for unetrt.train.lrfind: the learning-rate range test on a tiny U-Net.

The model is a 1-pool, 2-filter U-Net on four 16 x 16 frames of one bright disk; a
range test of 100 batches takes about 3 s on two CPU cores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

pytest.importorskip("tensorflow")
from PIL import Image  # noqa: E402

from unetrt.cli import main  # noqa: E402
from unetrt.errors import ConfigError  # noqa: E402
from unetrt.train.lrfind import (  # noqa: E402
    DIVERGENCE_FACTOR,
    SMOOTHING,
    LRFinderResult,
    find_lr,
    valley,
)

#: A range over which the tiny model learns, then diverges (Adam at 1e3 kills it: its
#: loss jumps to that of a constant prediction, above 4x the minimum).
DIVERGING = {"start": 1e-4, "stop": 1e4, "steps": 100}


@pytest.fixture()
def config(tmp_path: Path) -> dict[str, Any]:
    """Four annotated 16 x 16 frames (one disk each, about 30 % of the frame)."""
    rng = np.random.default_rng(0)
    (tmp_path / "frames").mkdir()
    (tmp_path / "masks").mkdir()
    rows, cols = np.mgrid[:16, :16]
    for i in range(4):
        r, c = rng.integers(4, 12, 2)
        labels = ((rows - r) ** 2 + (cols - c) ** 2 < 30).astype(np.uint16)
        frame = 60 + 120 * labels + rng.normal(0, 5, labels.shape)
        tifffile.imwrite(tmp_path / "frames" / f"t{i:03d}.tif", frame.clip(0, 255).astype(np.uint8))
        tifffile.imwrite(tmp_path / "masks" / f"man_seg{i:03d}.tif", labels)
    return {
        "data_train_images": str(tmp_path / "frames"),
        "data_train_masks": str(tmp_path / "masks"),
        "model_pools": 1,
        "model_n_filters": 2,
        "datagen_dim_size": [16, 16],
        "datagen_batch_size": 2,
        "augmentation": False,
        "output_dir": str(tmp_path / "run"),
    }


def _smoothed(losses: tuple[float, ...]) -> np.ndarray:
    """The bias-corrected moving average in closed form (the finder computes it step by
    step): s_i = sum_j (1 - b) b^(i - j) x_j / (1 - b^(i + 1))."""
    x = np.asarray(losses)
    i = np.arange(len(x))
    weights = (1 - SMOOTHING) * SMOOTHING ** (i[:, None] - i[None, :]) * (i[:, None] >= i[None, :])
    return (weights @ x) / (1 - SMOOTHING ** (i + 1))


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _valley(losses: list[float]) -> int:
    """fastai's valley, from the length of the longest decreasing subsequence ending at
    each point (found here by a search of each point's predecessors)."""
    length: list[int] = []
    for i, loss in enumerate(losses):
        length.append(1 + max((length[j] for j in range(i) if losses[j] > loss), default=0))
    end = length.index(max(length))  # the first point where the longest run ends
    start = end - length[end]  # fastai's start (one before the run's first point)
    third = (end - start) / 3
    return max(start + int(third) + int(third / 2), 0)


def test_valley_on_known_curves() -> None:
    # Falling all the way (10 points): the run spans 0..9, the suggestion near its middle.
    assert valley([10.0 - i for i in range(10)]) == _valley([10.0 - i for i in range(10)]) == 3
    bumpy = [5.0, 4.0, 4.5, 3.0, 3.5, 2.0, 6.0, 1.0, 7.0, 8.0]
    assert valley(bumpy) == _valley(bumpy)
    # Rising from the start: no valley, the first rate (the range should start lower).
    assert valley([1.0, 2.0, 3.0]) == 0


def test_the_suggestion_lies_below_the_divergence(config: dict[str, Any]) -> None:
    result = find_lr(config, **DIVERGING)
    assert isinstance(result, LRFinderResult)
    assert result.diverged_at is not None
    trained = len(result.rates)
    assert trained < DIVERGING["steps"]  # stopped early
    assert result.diverged_at == result.rates[-1]
    np.testing.assert_allclose(result.rates, np.geomspace(1e-4, 1e4, 100)[:trained], rtol=1e-12)

    smoothed = _smoothed(result.losses)
    np.testing.assert_allclose(result.smoothed, smoothed, rtol=1e-9)
    # It stopped at the first batch whose smoothed loss passed 4x the minimum so far.
    passed = smoothed > DIVERGENCE_FACTOR * np.minimum.accumulate(smoothed)
    assert list(passed) == [False] * (trained - 1) + [True]
    # The suggestion is half-way along the longest decreasing run, so below the divergence.
    assert result.suggested == result.rates[_valley(list(smoothed))]
    assert result.suggested < result.rates[int(np.argmin(smoothed))] < result.diverged_at


def test_a_range_without_divergence_trains_every_rate_and_writes_only_its_files(
    config: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "elsewhere" / "lr"  # created, with its parents
    result = find_lr(config, output_dir=out, start=1e-6, stop=1e-5, steps=20)

    assert result.diverged_at is None
    # 20 batches go round the 16 training batches of an epoch (the minimum) once more.
    assert result.rates[0] == 1e-6 and result.rates[-1] == pytest.approx(1e-5, rel=1e-12)
    np.testing.assert_allclose(result.rates, np.geomspace(1e-6, 1e-5, 20), rtol=1e-12)
    ratios = np.asarray(result.rates[1:]) / np.asarray(result.rates[:-1])
    np.testing.assert_allclose(ratios, 10 ** (1 / 19), rtol=1e-12)
    assert all(np.isfinite(result.losses))

    assert (result.plot, result.table) == (out / "lr_finder.png", out / "lr_finder.json")
    assert _files(out) == ["lr_finder.json", "lr_finder.png"]  # no partial files left
    assert not (tmp_path / "run").exists()  # the configuration's output_dir is untouched
    assert Image.open(result.plot).format == "PNG"
    table = json.loads(result.table.read_text())
    assert table == {
        "rates": list(result.rates),
        "losses": list(result.losses),
        "smoothed_losses": list(result.smoothed),
        "suggested_rate": result.suggested,
        "diverged_at": None,
    }


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"steps": 1}, "at least 2 steps, got 1"),
        ({"steps": True}, "at least 2 steps, got True"),
        ({"start": 0.0}, "0 < low < high, got low 0.0, high 1.0"),
        ({"start": 1e-3, "stop": 1e-3}, "0 < low < high, got low 0.001, high 0.001"),
        ({"stop": float("inf")}, "0 < low < high, got low 1e-07, high inf"),
    ],
)
def test_a_bad_range_is_a_config_error_before_anything_is_built(
    config: dict[str, Any], tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    config["data_train_images"] = str(tmp_path / "missing")  # never read
    with pytest.raises(ConfigError, match=message):
        find_lr(config, **options)
    assert not (tmp_path / "run").exists()


def test_cli_prints_the_suggestion_and_the_plot(
    config: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    argv = ["train", str(path), "--find-lr", "--lr-range", "1e-4", "1e4", "--lr-steps", "100"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    run = tmp_path / "run"
    table = json.loads((run / "lr_finder.json").read_text())
    assert lines == [
        f"suggested learning rate (model_lr): {table['suggested_rate']:.2g} "
        f"(the loss diverged at {table['diverged_at']:.2g})",
        f"plot written to {run / 'lr_finder.png'} (rates and losses in lr_finder.json)",
    ]
    assert _files(run) == ["lr_finder.json", "lr_finder.png"]  # no model, config or logs


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--find-lr", "--resume", "checkpoints/epoch0001.keras"], "cannot go with --resume"),
        (["--find-lr", "--epochs", "3"], "cannot go with --epochs"),
        (["--find-lr", "--minutes", "1"], "cannot go with --minutes"),
        (["--find-lr", "--lr-steps", "1"], "at least 2 steps, got 1"),
        (["--find-lr", "--lr-range", "1", "0.1"], "0 < low < high, got low 1.0, high 0.1"),
        (["--lr-steps", "50"], "--lr-steps goes with --find-lr"),
        (["--lr-range", "1e-6", "1"], "--lr-range goes with --find-lr"),
    ],
)
def test_cli_refuses_flags_that_do_not_fit(
    config: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert main(["train", str(path), *flags]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()

"""Few-frame training: start from the default model, step-based epochs, a time budget,
the one-line command, and warnings when the data look wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from unetrt.errors import ConfigError
from unetrt.train.config import load_config

keras = pytest.importorskip("keras", reason="training needs the train extra")
pytest.importorskip("tensorflow", reason="training needs the train extra")

from unetrt.cli import main  # noqa: E402
from unetrt.train.run import train  # noqa: E402

SIDE = 96


def _frames(folder: Path, n: int, *, empty: tuple[int, ...] = ()) -> tuple[Path, Path]:
    """`n` phase-contrast-like frames of dark-rimmed bright disks, and their masks."""
    rng = np.random.default_rng(n)
    images, masks = folder / "frames", folder / "masks"
    images.mkdir()
    masks.mkdir()
    rows, cols = np.mgrid[:SIDE, :SIDE]
    for i in range(n):
        labels = np.zeros((SIDE, SIDE), np.uint16)
        if i not in empty:
            for label in range(1, 6):
                r, c = rng.integers(12, SIDE - 12, 2)
                labels[(rows - r) ** 2 + (cols - c) ** 2 < rng.integers(40, 120)] = label
        frame = 3000 + 1500 * (labels > 0) + rng.normal(0, 200, labels.shape)
        tifffile.imwrite(images / f"t{i:03d}.tif", frame.clip(0, 65535).astype(np.uint16))
        tifffile.imwrite(masks / f"man_seg{i:03d}.tif", labels)
    return images, masks


def _config(tmp_path: Path, images: Path, masks: Path, **extra: Any) -> dict[str, Any]:
    return {
        "data_train_images": str(images),
        "data_train_masks": str(masks),
        "output_dir": str(tmp_path / "run"),
        "train_pretrained_weights": "default",
        "model_lr": 3e-4,
        "datagen_dim_size": [64, 64],
        "datagen_batch_size": 2,
        "train_steps_per_epoch": 4,
        "train_max_epochs": 2,
        **extra,
    }


def _default_keras() -> Any:
    from unetrt.models import builtin_weights
    from unetrt.train.models import build_model

    weights, keys = builtin_weights("default")
    model = build_model(load_config({"data_train_images": ".", **keys}).model_config())
    model.load_weights(weights)
    return model


def test_the_shipped_weights_are_the_default_model() -> None:
    """Keras with the shipped weights computes what default.onnx computes."""
    from unetrt import Segmenter
    from unetrt.normalize import normalize_frame

    frame = np.random.default_rng(0).integers(2000, 6000, (64, 80)).astype(np.uint16)
    with Segmenter("default") as seg:
        want = seg.predict_frame(frame)
        x = normalize_frame(frame, seg.contract.normalization)
    got = np.asarray(_default_keras()(x[None, ..., None], training=False))[0, ..., 0]
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_fine_tuning_keeps_the_architecture_and_lowers_the_loss(tmp_path: Path) -> None:
    images, masks = _frames(tmp_path, 2)
    config = _config(tmp_path, images, masks, train_max_epochs=5)
    cfg = load_config(config)
    assert cfg.model_n_filters == 16 and cfg.model_pools == 3  # taken from the model
    assert cfg.normalization.method == "percentile"
    before = _default_keras()
    trained = keras.models.load_model(train(config, verbose=0), compile=False)
    assert [w.shape for w in trained.weights] == [w.shape for w in before.weights]
    # Batch norm keeps the model's statistics (inference mode); convolutions learned.
    for layer in before.layers:
        mine = trained.get_layer(layer.name)
        same = [
            np.array_equal(a, b)
            for a, b in zip(layer.get_weights(), mine.get_weights(), strict=True)
        ]
        if isinstance(layer, keras.layers.BatchNormalization):
            assert all(same)
        elif layer.name == "enc0_conv1":
            assert not all(same)
    from unetrt.train.data import FrameDataset, load_annotated

    frames = FrameDataset(
        load_annotated("folders", str(images), str(masks)),
        alignment=8,
        normalization=cfg.normalization,
    )
    loss = cfg.loss()
    for model in (before, trained):
        model.compile(loss=loss)

    def score(model: Any) -> float:
        return float(np.mean([model.evaluate(*frames[i], verbose=0) for i in range(2)]))

    assert score(trained) < score(before)


def test_an_architecture_the_weights_do_not_have_is_refused(tmp_path: Path) -> None:
    images, masks = _frames(tmp_path, 2)
    with pytest.raises(ConfigError, match=r"filters 32 \(the default model has 16\)"):
        load_config(_config(tmp_path, images, masks, model_n_filters=32))
    with pytest.raises(ConfigError, match="normalization"):
        load_config(_config(tmp_path, images, masks, newinfer_normalization="mean"))


def test_steps_per_epoch_do_not_depend_on_the_frames(tmp_path: Path) -> None:
    images, masks = _frames(tmp_path, 2)
    train(_config(tmp_path, images, masks, train_steps_per_epoch=5, train_max_epochs=1), verbose=0)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 5 and summary["epochs"] == 1
    # Without the key: one pass over 2 frames is 1 batch, but an epoch is never that short.
    from unetrt.train.config import MIN_STEPS_PER_EPOCH

    cfg = load_config({**_config(tmp_path, images, masks), "train_steps_per_epoch": None})
    assert cfg.steps_per_epoch(2) == MIN_STEPS_PER_EPOCH


def test_a_time_budget_stops_cleanly_with_a_loadable_model(tmp_path: Path) -> None:
    images, masks = _frames(tmp_path, 2)
    config = _config(tmp_path, images, masks, train_max_epochs=500, train_max_minutes=0.05)
    path = train(config, verbose=0)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stopped_by_time"] and summary["steps"] < 500 * 4
    assert summary["minutes"] < 1.0
    model = keras.models.load_model(path, compile=False)
    assert model(np.zeros((1, 64, 64, 1), np.float32)).shape == (1, 64, 64, 1)


def test_decoder_only_keeps_the_encoder(tmp_path: Path) -> None:
    images, masks = _frames(tmp_path, 2)
    trained = keras.models.load_model(
        train(_config(tmp_path, images, masks, model_train_decoder_only=True), verbose=0),
        compile=False,
    )
    before = _default_keras()
    for name, changes in (("enc0_conv1", False), ("enc2_conv2", False), ("dec0_conv1", True)):
        same = np.array_equal(before.get_layer(name).kernel, trained.get_layer(name).kernel)
        assert same != changes, name
    with pytest.raises(ConfigError, match="pretrained encoder"):
        load_config({**_config(tmp_path, images, masks), "train_pretrained_weights": None,
                     "model_train_decoder_only": True})  # fmt: skip


def test_a_convlstm_model_starts_from_the_default_frame_model(tmp_path: Path) -> None:
    images, masks = _frames(tmp_path, 6)
    clip = {
        "cnn_name": "lstm_unet",
        "convlstm_position": "bottleneck",
        "time_steps": 2,
        "model_train_decoder_only": True,
    }
    trained = keras.models.load_model(
        train(_config(tmp_path, images, masks, **clip), verbose=0), compile=False
    )
    before = _default_keras()
    # The layers both have: the frozen encoder kept, the decoder trained on from the
    # default model's; the ConvLSTM that replaces the bottleneck's first convolution new.
    for name in ("enc0_conv1", "enc2_conv2"):
        np.testing.assert_array_equal(before.get_layer(name).kernel, trained.get_layer(name).kernel)
    dec = before.get_layer("dec0_conv1").kernel, trained.get_layer("dec0_conv1").kernel
    assert 0 < float(np.abs(np.asarray(dec[0]) - np.asarray(dec[1])).max()) < 0.1
    assert trained.get_layer("bottleneck_convlstm").kernel.shape == (3, 3, 64, 4 * 128)
    # A residual ConvLSTM started from the frame model computes the frame model (its
    # projection starts at zero): temporal context is added by training, not guessed.
    from unetrt.train.models import build_model
    from unetrt.train.run import _load_pretrained

    residual = load_config(_config(tmp_path, images, masks, **clip, convlstm_residual=True))
    model = build_model(residual.model_config())
    _load_pretrained(model, residual)
    frames = np.random.default_rng(0).random((1, 2, 64, 96, 1), dtype=np.float32)
    np.testing.assert_allclose(model(frames), before(frames[:, -1]), atol=1e-5)
    # Only the temporal keys may differ from the frame model's architecture.
    with pytest.raises(ConfigError, match="filters 32"):
        load_config(_config(tmp_path, images, masks, **clip, model_n_filters=32))


def test_empty_masks_are_warned_about_in_the_summary(tmp_path: Path) -> None:
    images, masks = _frames(tmp_path, 3, empty=(1,))
    with pytest.warns(UserWarning, match="1 training masks are empty"):
        train(_config(tmp_path, images, masks, train_max_epochs=1), verbose=0)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert any("t001" in w or "frame 1" in w for w in summary["warnings"])


def test_the_one_line_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images, masks = _frames(tmp_path, 3)
    run = tmp_path / "run"
    args = ["train", "--images", str(images), "--masks", str(masks), "-o", str(run)]
    assert main([*args, "--from", "default", "--minutes", "0.05", "-q"]) == 0
    written = json.loads((run / "config.json").read_text())
    assert written["train_pretrained_weights"] == "default"
    assert written["train_max_minutes"] == 0.05
    assert written["data_val_fraction"] == pytest.approx(1 / 3)  # one frame held out
    assert written["datagen_dim_size"] == [96, 96]  # the frames are smaller than a patch
    assert (run / "model.keras").is_file()
    again = load_config(run / "config.json")  # the written config runs again as it is
    assert again.builtin_weights == "default"
    assert main([*args[:1], "--images", str(images)]) == 1
    assert "--masks" in capsys.readouterr().err


def test_the_template_is_a_valid_configuration(tmp_path: Path) -> None:
    template = tmp_path / "train.json"
    assert main(["train", "--write-config", str(template), "-q"]) == 0
    data = json.loads(template.read_text())
    assert any(key.startswith("//") for key in data)  # commented
    cfg = load_config(template)
    assert cfg.builtin_weights == "default" and cfg.train_max_minutes == 10
    assert cfg.data_train_images == str(tmp_path / "frames")

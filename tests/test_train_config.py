"""Training configuration: seed keys load, bad keys and values are named, keys reach
the model, the loss and the normalization."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest

# Validating a configuration builds its loss (Keras); tests/test_train_imports.py checks
# that the module itself imports without the train extra.
pytest.importorskip("keras", reason="validating a training configuration needs the train extra")

from unetrt.errors import ConfigError  # noqa: E402
from unetrt.normalize import Normalization  # noqa: E402
from unetrt.train.augment import AugmentConfig  # noqa: E402
from unetrt.train.config import (  # noqa: E402
    SEED_ILLUMINATION_SIGMA,
    TrainConfig,
    load_config,
)

BASE = {"data_train_images": "frames", "data_train_masks": "masks"}

#: The seed suite's own template (examples/config/config_template.json), minus its
#: MobileNet model name, which we do not support.
SEED_TEMPLATE: dict[str, Any] = {
    "cnn_name": "lstm_unet",
    "OUTPUTPATH": "/content/mobilenet_lstm_masks_experiment",
    "TRAINPATH": "/content/HT1080WT_PHASECONTRAST/train",
    "TESTPATH": "/content/HT1080WT_PHASECONTRAST/test",
    "VALPATH": "/content/HT1080WT_PHASECONTRAST/val",
    "model_n_filters": 16,
    "model_pools": 3,
    "model_kernel_size": [3, 3],
    "model_dilation_rate": 2,
    "model_mobile_alpha": 0.35,
    "model_time_windows": 5,
    "model_lr": 0.0001,
    "model_dropout": 0.01,
    "model_activation": "elu",
    "model_last_activation": "softmax",
    "model_padding": "same",
    "model_kernel_initializer": "glorot_uniform",
    "model_lossfunction": "sparse_cce",
    "model_loss_tips": "L1L2",
    "model_metrics": "accuracy",
    "model_train_decoder_only": 0,
    "model_category_weights": [1, 10],
    "model_seed_initializer": 10,
    "train_seed_initializer": 17,
    "train_max_epochs": 100,
    "train_pretrained_weights": "None",
    "train_load_from_frozen": 0,
    "callbacks_save_best_only": 0,
    "callbacks_save_freq": 100,
    "callbacks_patience": 2001,
    "callbacks_tb_update_freq": 100,
    "datagen_type": "segmentation",
    "datagen_tips_factor": 10,
    "datagen_sigma": 1,
    "datagen_patch_batch": 1,
    "datagen_batch_size": 2,
    "datagen_dim_size": [512, 512],
    "datagen_sampling_pdf": 500000,
    "normalization": "PERCENTILE",
    "newinfer_uneven_illumination": "False",
    "newinfer_epoch_process_test": "/content/my_fine_tuned_model/checkpoints/weights_best.hdf5",
    "newinfer_padding": [115, 115],
    "newinfer_data": "/content/HT1080WT_PHASECONTRAST/test",
    "newinfer_output_folder_name": "test_output_keep1130_keep_01010",
    "PATH2VIDEOS": "/content/HT1080WT_PHASECONTRAST/test/videos2im_relation.csv",
}


def test_defaults() -> None:
    config = load_config({"data_train_images": "frames"})
    assert config.data_format == "folders" and config.time_steps == 1
    assert config.target_encoding == "mask" and config.classes == ("background", "foreground")
    assert config.normalization == Normalization()
    assert config.augmentation == AugmentConfig()
    model = config.model_config()
    assert (model.pools, model.filters, model.output, model.temporal) == (3, 16, "sigmoid", "none")


def test_the_seed_template_loads_and_warns_about_what_it_ignores() -> None:
    with pytest.warns(UserWarning, match="TESTPATH") as record:
        config = load_config(SEED_TEMPLATE)
    message = str(record[0].message)
    for key in ("model_mobile_alpha", "callbacks_tb_update_freq", "PATH2VIDEOS"):
        assert key in message
    assert config.data_format == "seed_csv"  # TRAINPATH is the seed's layout
    assert config.data_train_images == "/content/HT1080WT_PHASECONTRAST/train"
    assert config.data_val_images == "/content/HT1080WT_PHASECONTRAST/val"
    assert config.output_dir == "/content/mobilenet_lstm_masks_experiment"
    assert config.time_steps == 5 and config.model_kernel_size == 3
    assert config.train_pretrained_weights is None
    assert config.newinfer_uneven_illumination is False  # the string "False" is false
    assert config.normalization == Normalization(method="percentile")
    assert (config.data_seed, config.weights_seed) == (17, 10)
    assert config.halo == 115 and config.datagen_dim_size == (512, 512)
    assert config.target_encoding == "sparse"
    model = config.model_config()
    assert model.temporal == "convlstm" and model.time_steps == 5
    assert (model.filters, model.pools, model.dilation, model.activation) == (16, 3, 2, "elu")
    assert model.kernel_initializer == "glorot_uniform" and model.output == "softmax"
    assert config.loss().params == {"class_weights": (1, 10)}  # type: ignore[union-attr]


def test_a_seed_model_config_keeps_model_pools() -> None:
    # the seed's "unet" was fixed at 4 levels whatever model_pools said
    model = load_config({**BASE, "cnn_name": "unet", "model_pools": 2}).model_config()
    assert model.pools == 2


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("model_n_filter", "model_n_filters"),
        ("datagen_batchsize", "datagen_batch_size"),
        ("DATAGEN_DIM_SIZE", "datagen_dim_size"),
        ("data_exclude_frame", "data_exclude_frames"),
        ("newinfer_normalisation", "newinfer_normalization"),
    ],
)
def test_misspelled_keys_name_the_right_one(key: str, suggestion: str) -> None:
    with pytest.raises(
        ConfigError, match=f"unknown config key '{key}'; did you mean '{suggestion}'"
    ):
        load_config({**BASE, key: 1})


def test_unknown_key_without_a_close_match() -> None:
    with pytest.raises(ConfigError, match="unknown config key 'zzz'$"):
        load_config({**BASE, "zzz": 1})


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"model_lr": "fast"}, "'model_lr' must be a number, got 'fast'"),
        ({"model_n_filters": 16.5}, "'model_n_filters' must be an integer, got 16.5"),
        ({"batch_norm": "yes"}, "'batch_norm' must be true or false, got 'yes'"),
        ({"datagen_dim_size": 256}, "'datagen_dim_size' must be \\[rows, cols\\]"),
        ({"data_exclude_frames": [1, -2]}, "'data_exclude_frames' must be a list of frame"),
        ({"callbacks_save_freq": "often"}, "'callbacks_save_freq' must be \"epoch\""),
        ({"model_kernel_size": [3, 5]}, "'model_kernel_size' must be one odd integer"),
        ({"data_train_images": 3}, "'data_train_images' must be a string, got 3"),
    ],
)
def test_wrong_types_name_key_and_value(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config({**BASE, **changes})


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"model_dropout": 1.0}, "'model_dropout' must be in \\[0, 1\\), got 1.0"),
        ({"model_pools": 0}, "'model_pools' must be in \\[1, 8\\], got 0"),
        ({"model_kernel_size": 4}, "'model_kernel_size' must be an odd integer"),
        ({"datagen_batch_size": 0}, "'datagen_batch_size' must be >= 1, got 0"),
        ({"datagen_dim_size": [250, 256]}, "multiples of 2\\*\\*model_pools = 8, got \\[250"),
        ({"datagen_sampling_pdf": 0.5}, "datagen_sampling_pdf .* must be >= 1"),
        ({"datagen_foreground_probability": 2}, "must be in \\[0, 1\\], got 2"),
        ({"data_format": "tiff"}, "'data_format' must be one of .*'ctc'.*, got 'tiff'"),
        ({"data_val_mode": "all"}, "'data_val_mode' must be one of"),
        ({"model_padding": "valid"}, "'model_padding' must be one of \\('same',\\)"),
        ({"model_last_activation": "tanh"}, "'model_last_activation' must be \"sigmoid\""),
        ({"newinfer_normalization": "HE"}, "'newinfer_normalization' must be one of"),
        ({"newinfer_uneven_illumination": -3}, "true, false or a blur sigma"),
        ({"cnn_name": "unett"}, "'cnn_name' must be one of .*got 'unett'; did you mean 'unet'"),
        ({"augmentation": {"p_flip": 2}}, "p_flip is a probability"),
    ],
)
def test_out_of_range_values_name_key_and_value(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config({**BASE, **changes})


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"datagen_type": "contours"}, "'contours' needs a categorical loss"),
        ({"model_lossfunction": "multiple_output"}, "set datagen_type to 'contours'"),
        ({"datagen_border_weights": True}, "datagen_border_weights feeds a weight map"),
        (
            {"model_lossfunction": "sparse_cce", "model_last_activation": "sigmoid"},
            "needs 'softmax'",
        ),
        ({"time_steps": 3}, "time_steps 3 needs a ConvLSTM model"),
        ({"cnn_name": "lstm_unet", "time_steps": 1}, "'time_steps' must be >= 2"),
        ({"model_category_weights": [1, 2]}, "need a categorical loss or multiple_output"),
        (
            {"model_lossfunction": "categorical_crossentropy", "model_category_weights": [1]},
            "'model_category_weights' must be 2 numbers",
        ),
        (
            {"datagen_sampling_pdf": 10, "datagen_foreground_probability": 0.5},
            "either datagen_sampling_pdf .* or datagen_foreground_probability",
        ),
        ({"data_val_images": "v", "data_val_fraction": 0.1}, "not both"),
        ({"OUTPUTPATH": "a", "output_dir": "b"}, "'output_dir' is given twice"),
        ({"model_lossfunction": "hinge"}, "unknown loss 'hinge'"),
        ({"model_loss_params": {"smoth": 1}}, "has no parameter smoth"),
        (
            {"newinfer_uneven_illumination": True,
             "newinfer_normalization": {"method": "mean", "illumination_sigma": 30}},
            "illumination correction is set twice",
        ),
    ],
)  # fmt: skip
def test_contradicting_keys_are_rejected(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config({**BASE, **changes})


def test_missing_training_data_is_named() -> None:
    with pytest.raises(ConfigError, match="'data_train_images' .*TRAINPATH.* is missing"):
        load_config({"data_format": "ctc"})


def test_contours_with_a_categorical_loss_give_three_classes() -> None:
    config = load_config(
        {**BASE, "datagen_type": "contours", "model_lossfunction": "categorical_crossentropy",
         "model_category_weights": [1, 1, 5], "cnn_name": "categorical_unet"}
    )  # fmt: skip
    assert config.classes == ("background", "cell", "contour")
    assert config.target_encoding == "one_hot"
    model = config.model_config()
    assert (model.output, model.classes) == ("softmax", 3)
    two_heads = load_config(
        {**BASE, "datagen_type": "contours", "model_lossfunction": "multiple_output",
         "model_category_weights": [1, 0.5]}
    )  # fmt: skip
    assert two_heads.target_encoding == "two_heads"
    assert two_heads.model_config().output == "two_heads"


def test_our_model_keys_reach_the_model() -> None:
    config = load_config(
        {**BASE, "batch_norm": True, "upsampling": "transpose", "downsampling": "strided",
         "model_dropout": 0.1, "model_n_filters": 8, "model_pools": 2}
    )  # fmt: skip
    model = config.model_config()
    assert model.batch_norm and model.upsampling == "transpose"
    assert model.downsampling == "strided" and model.filters == 8 and model.pools == 2
    assert config.alignment == 4


def test_normalization_keys() -> None:
    spec = {"method": "percentile", "low": 0.1, "high": 99.1, "scope": "stack"}
    config = load_config({**BASE, "newinfer_normalization": spec})
    assert config.normalization == Normalization(**spec)
    seed_light = load_config({**BASE, "newinfer_uneven_illumination": "True"})
    assert seed_light.normalization.illumination_sigma == SEED_ILLUMINATION_SIGMA
    sigma = load_config({**BASE, "newinfer_normalization": "MEDIAN",
                         "newinfer_uneven_illumination": 40})  # fmt: skip
    assert sigma.normalization == Normalization(method="median", illumination_sigma=40.0)


def test_sampler_and_augmentation_keys() -> None:
    config = load_config(
        {**BASE, "datagen_foreground_probability": 0.7, "augmentation": {"p_elastic": 1}}
    )
    assert config.sampler.foreground_probability == 0.7
    assert config.augmentation.p_elastic == 1
    assert load_config({**BASE, "augmentation": False}).augmentation == AugmentConfig.off()


def test_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "train.json"
    path.write_text(
        json.dumps({"data_format": "ctc", "data_train_images": "../data/01",
                    "data_exclude_frames": "../data/01_GT/SEG", "output_dir": "runs/a"})
    )  # fmt: skip
    config = load_config(path)
    base = tmp_path / "cfg"
    assert config.data_train_images == str(base / "../data/01")
    assert config.data_exclude_frames == str(base / "../data/01_GT/SEG")
    assert config.output_dir == str(base / "runs/a")


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read training config"):
        load_config(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json is not valid JSON"):
        load_config(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ConfigError, match="must hold a JSON object"):
        load_config(tmp_path / "list.json")


def test_to_dict_round_trips() -> None:
    config = load_config(
        {**BASE, "data_exclude_frames": [10, 17], "cnn_name": "lstm_unet",
         "model_lossfunction": "sparse_cce", "augmentation": {"zoom_range": [0.5, 2]}}
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # our own keys never warn
        again = load_config(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert isinstance(again, TrainConfig)


def test_every_key_is_documented_once() -> None:
    import dataclasses
    import re

    from unetrt.train.config import ALIASES

    doc = Path(__file__).resolve().parents[1] / "docs" / "training-config.md"
    rows = [line for line in doc.read_text().splitlines() if line.startswith("| `")]
    documented = [re.match(r"\| `([\w.]+)`", row).group(1) for row in rows]  # type: ignore[union-attr]
    keys = [f.name for f in dataclasses.fields(TrainConfig)]
    keys += [f"augmentation.{f.name}" for f in dataclasses.fields(AugmentConfig)]
    assert sorted(documented) == sorted(keys)
    table = "\n".join(rows)
    for seed_key, key in ALIASES.items():
        assert re.search(rf"`{key}` \(seed[^)]*`{seed_key}`\)", table), seed_key

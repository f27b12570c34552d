"""Keras U-Net / ConvLSTM-U-Net builders, receptive field, seed presets, a training smoke."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from unetrt.errors import ConfigError  # noqa: E402
from unetrt.train import losses  # noqa: E402
from unetrt.train.models import (  # noqa: E402
    SEED_MODEL_NAMES,
    BilinearUpsampling2D,
    ConvLSTM2DUnrolled,
    UNetConfig,
    alignment,
    build_convlstm_unet,
    build_model,
    build_unet,
    config_from_seed_name,
    receptive_field,
)

TINY = {"pools": 2, "filters": 4}


def predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    # Direct call: no tf.function retracing for every new input size.
    return keras.ops.convert_to_numpy(model(x, training=False))


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"pools": 0}, "0"),
        ({"filters": 2.5}, "2.5"),
        ({"kernel_size": 4}, "4"),
        ({"downsampling": "avgpool"}, "avgpool"),
        ({"upsampling": "nearest"}, "nearest"),
        ({"output": "linear"}, "linear"),
        ({"activation": "swishy"}, "swishy"),
        ({"dilation": (1, 2)}, "(1, 2)"),
        ({"dilation": 0}, "0"),
        ({"dropout": 1.0}, "1.0"),
        ({"dropout": (0.1, 0.2)}, "(0.1, 0.2)"),
        ({"output": "softmax", "classes": 1}, "1"),
        ({"classes": 3}, "classes=3"),
        ({"time_steps": 3}, "3"),
        ({"temporal": "convlstm", "time_steps": 1}, "1"),
        ({"convlstm_position": "decoder"}, "decoder"),
        ({"batch_norm": "yes"}, "yes"),
    ],
)
def test_config_errors_name_the_bad_value(changes: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace(")", r"\)")):
        UNetConfig(**changes)


def test_config_round_trips_through_json_form() -> None:
    cfg = UNetConfig(pools=2, dilation=(1, 2), dropout=(0.0, 0.1, 0.2), batch_norm=True)
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["dropout"] == [0.0, 0.1, 0.2]
    with pytest.raises(ConfigError, match="depth"):
        UNetConfig.from_dict({"depth": 3})


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"downsampling": "strided", "batch_norm": True},
        {"upsampling": "interpolation", "dropout": 0.1, "activation": "elu"},
        {"dilation": (2, 1), "channels_in": 2},
    ],
)
def test_unet_takes_any_aligned_size_and_gives_a_probability(changes: dict) -> None:
    cfg = UNetConfig(**TINY, **changes)
    model = build_unet(cfg)
    assert model.inputs[0].name == "frame"
    assert model.output_names == ["mask"]
    for h, w in ((32, 32), (48, 64)):
        y = predict(model, np.random.default_rng(0).random((2, h, w, cfg.channels_in), "float32"))
        assert y.shape == (2, h, w, 1)
        assert ((y > 0) & (y < 1)).all()


def test_softmax_and_two_head_outputs() -> None:
    x = np.random.default_rng(0).random((1, 32, 32, 1), "float32")
    softmax = build_unet(UNetConfig(**TINY, output="softmax", classes=3))
    y = predict(softmax, x)
    assert y.shape == (1, 32, 32, 3)
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-5)
    two = build_unet(UNetConfig(**TINY, output="two_heads"))
    assert two.output_names == ["mask", "target"]
    mask, target = (keras.ops.convert_to_numpy(t) for t in two(x))
    assert mask.shape == target.shape == (1, 32, 32, 1)


def test_builders_reject_the_other_kind() -> None:
    with pytest.raises(ConfigError, match="convlstm"):
        build_unet(UNetConfig(**TINY, temporal="convlstm", time_steps=2))
    with pytest.raises(ConfigError, match="none"):
        build_convlstm_unet(UNetConfig(**TINY))


def test_alignment() -> None:
    assert alignment(UNetConfig(pools=3)) == 8
    assert alignment(UNetConfig(pools=4)) == 16


def impulse_reach(cfg: UNetConfig, size: int = 160) -> int:
    """Farthest output pixel (Chebyshev distance) that an input impulse moves."""
    keras.utils.set_random_seed(0)
    model = build_model(cfg)
    rng = np.random.default_rng(1)
    clip = (cfg.time_steps,) if cfg.temporal == "convlstm" else ()
    x = rng.normal(size=(1, *clip, size, size, cfg.channels_in)).astype("float32")
    base = predict(model, x)
    reach = 0
    for centre in (size // 2, size // 2 + 1, size // 2 + 3):  # both pooling parities
        moved = x.copy()
        moved[(0,) + (0,) * len(clip) + (centre, centre, 0)] += (
            50.0  # first frame: reaches farthest
        )
        changed = np.abs(predict(model, moved) - base).max(axis=(0, 3)) > 0
        rows, cols = np.nonzero(changed)
        reach = max(reach, np.abs(rows - centre).max(), np.abs(cols - centre).max())
    return int(reach)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"downsampling": "strided"},
        {"upsampling": "interpolation"},
        {"downsampling": "strided", "dilation": 2},
        {"kernel_size": 5},
        {"temporal": "convlstm", "time_steps": 3, "convlstm_position": "bottleneck"},
        {"temporal": "convlstm", "time_steps": 3, "convlstm_position": "input"},
        {"temporal": "convlstm", "time_steps": 3, "convlstm_position": "encoder"},
    ],
)
def test_receptive_field_bounds_an_impulse_response(changes: dict) -> None:
    cfg = UNetConfig(**TINY, activation="elu", **changes)
    radius = receptive_field(cfg)
    reach = impulse_reach(cfg)
    assert reach <= radius
    # The bound is tight for plain stacks; bilinear upsampling and stacked ConvLSTMs
    # leave some slack (one side of the interpolation, paths through fewer frames).
    assert reach >= radius - 2 * alignment(cfg)
    if not changes or "kernel_size" in changes or changes.get("downsampling") == "strided":
        assert reach == radius


@pytest.mark.parametrize(
    "changes",
    [
        {"convlstm_position": "bottleneck"},
        {"convlstm_position": "encoder"},
        {"convlstm_position": "input", "convlstm_residual": True, "dilation": 2},
    ],
)
def test_one_step_field_bounds_impulses_into_the_frame_and_the_states(changes: dict) -> None:
    """The step model's halo: impulses into the frame or any state input move the mask
    and the new states (a state pixel counted as the frame pixels it covers) no farther
    than `receptive_field(cfg, steps=1)`."""
    from unetrt.train.models import build_convlstm_step

    cfg = UNetConfig(**TINY, activation="elu", temporal="convlstm", time_steps=3, **changes)
    keras.utils.set_random_seed(0)
    model, states = build_convlstm_step(cfg)
    for layer in model.layers:  # nonzero projections, so the ConvLSTM path counts
        if layer.name.endswith("_proj"):
            layer.kernel.assign(np.full(layer.kernel.shape, 0.1, np.float32))
    size, rng = 128, np.random.default_rng(1)
    strides = [1] + [s.stride for s in states]
    inputs = [rng.normal(size=(1, size, size, 1)).astype("float32")] + [
        rng.normal(size=(1, size // s.stride, size // s.stride, s.channels)).astype("float32")
        for s in states
    ]
    base = [np.asarray(y) for y in model(inputs)]
    radius, reach = receptive_field(cfg, steps=1), 0
    for k, stride in enumerate(strides):
        for centre in (size // 2, size // 2 + 8):
            c = centre // stride
            moved = [x.copy() for x in inputs]
            moved[k][0, c, c, :] += 50.0
            for out, ref, s_out in zip(model(moved), base, [1] + strides[1:], strict=True):
                changed = np.abs(np.asarray(out) - ref).max(axis=(0, 3)) > 0
                rows, cols = np.nonzero(changed)
                if rows.size == 0:
                    continue
                # Frame-pixel extent of the changed output pixels and of the impulse.
                lo = min(rows.min(), cols.min()) * s_out
                hi = (max(rows.max(), cols.max()) + 1) * s_out - 1
                reach = max(reach, c * stride - lo, hi - (c * stride + stride - 1))
    assert 0 < reach <= radius
    assert radius < receptive_field(cfg)  # a clip reaches farther than one step


def test_receptive_field_by_hand() -> None:
    # 3x3 convs, maxpool, transposed convs. Bottleneck: two convs, radius 2. Each level
    # wraps the one below as encoder (2) + pool (1) + 2 * inner + decoder (2).
    bottleneck = 2
    level2 = 2 + 1 + 2 * bottleneck + 2
    level1 = 2 + 1 + 2 * level2 + 2
    level0 = 2 + 1 + 2 * level1 + 2
    assert receptive_field(UNetConfig(pools=2)) == level1 == 23
    assert receptive_field(UNetConfig(pools=3)) == level0 == 51
    # A ConvLSTM convolves its state once per frame: T times the reach of a conv.
    lstm = UNetConfig(pools=3, temporal="convlstm", time_steps=4, convlstm_position="input")
    assert receptive_field(lstm) == 51 + (4 - 1)


def test_unrolled_convlstm_matches_keras_convlstm2d() -> None:
    keras.utils.set_random_seed(3)
    x = np.random.default_rng(3).normal(size=(2, 4, 12, 12, 3)).astype("float32")
    for sequences in (False, True):
        reference = keras.layers.ConvLSTM2D(5, 3, padding="same", return_sequences=sequences)
        ours = ConvLSTM2DUnrolled(5, 3, return_sequences=sequences)
        expected = keras.ops.convert_to_numpy(reference(x))
        ours.build(x.shape)
        ours.set_weights(reference.get_weights())
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(ours(x)), expected, rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize("position", ["input", "encoder", "bottleneck"])
def test_convlstm_unet_segments_the_last_frame_at_any_size(position: str) -> None:
    cfg = UNetConfig(**TINY, temporal="convlstm", time_steps=3, convlstm_position=position)
    model = build_convlstm_unet(cfg)
    assert model.inputs[0].name == "clip"
    assert tuple(model.inputs[0].shape) == (None, 3, None, None, 1)
    rng = np.random.default_rng(0)
    for h, w in ((32, 32), (32, 48)):
        clip = rng.random((2, 3, h, w, 1), "float32")
        y = predict(model, clip)
        assert y.shape == (2, h, w, 1)
        # The clip's frames matter, not only the last one.
        changed = clip.copy()
        changed[:, 0] = 0.0
        assert not np.allclose(predict(model, changed), y)


def test_saved_model_reloads_with_the_same_output(tmp_path) -> None:
    cfg = UNetConfig(**TINY, temporal="convlstm", time_steps=2, convlstm_position="encoder")
    model = build_model(cfg)
    model.compile(optimizer="adam", loss=losses.get_loss("bce_dice"))
    model.optimizer.build(model.trainable_variables)
    path = tmp_path / "model.keras"
    model.save(path)
    again = keras.saving.load_model(path)
    clip = np.random.default_rng(0).random((1, 2, 32, 32, 1), "float32")
    np.testing.assert_allclose(predict(again, clip), predict(model, clip), rtol=1e-6)


@pytest.mark.parametrize("name", SEED_MODEL_NAMES)
def test_every_seed_name_builds(name: str) -> None:
    cfg = config_from_seed_name(name, filters=2)
    model = build_model(cfg)
    size = 2 * alignment(cfg)
    clip = (cfg.time_steps,) if cfg.temporal == "convlstm" else ()
    y = predict(model, np.zeros((1, *clip, size, size, 1), "float32"))
    assert y.shape == (1, size, size, 1 if cfg.output == "sigmoid" else cfg.classes)


def test_seed_presets_and_dropout_schedules() -> None:
    assert config_from_seed_name("unet").output == "sigmoid"
    fc_dil = config_from_seed_name("categorical_unet_fc_dil")
    assert (fc_dil.downsampling, fc_dil.dilations, fc_dil.output) == (
        "strided",
        (2, 2, 2),
        "softmax",
    )
    assert config_from_seed_name("categorical_unet", dropout=0.1).dropout == pytest.approx(
        (0.1, 0.1, 0.2, 0.2, 0.3)
    )
    assert config_from_seed_name("categorical_unet_fc", dropout=0.1, pools=2).dropout == (
        pytest.approx((0.1, 0.2, 0.2))
    )
    lstm = config_from_seed_name("lstm_unet", dropout=0.1)
    assert (lstm.temporal, lstm.convlstm_position, lstm.time_steps) == ("convlstm", "encoder", 5)
    assert lstm.dropout == pytest.approx((0.0, 0.1, 0.2, 0.2))
    explicit = (0.0, 0.0, 0.1, 0.1)
    assert config_from_seed_name("categorical_unet_fc", dropout=explicit).dropout == explicit


def test_seed_name_errors_list_the_valid_names() -> None:
    with pytest.raises(ConfigError, match="categorical_unet_fc_dil") as info:
        config_from_seed_name("mobilenet_mobileunet_lstm")
    assert "mobilenet_mobileunet_lstm" in str(info.value)
    with pytest.raises(ConfigError, match="n_filters"):
        config_from_seed_name("unet", n_filters=8)


def synthetic_masks(rng: np.random.Generator, n: int, size: int = 32) -> np.ndarray:
    """Bright discs on a noisy background: frames and masks."""
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size, 1), "float32")
    for i in range(n):
        cy, cx = rng.integers(8, size - 8, 2)
        masks[i, ..., 0] = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(16, 40)
    return masks


@pytest.mark.parametrize("temporal", ["none", "convlstm"])
def test_tiny_models_learn_on_synthetic_discs(temporal: str) -> None:
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    masks = synthetic_masks(rng, 8)
    frames = masks + 0.3 * rng.normal(size=masks.shape).astype("float32")
    if temporal == "convlstm":
        cfg = UNetConfig(**TINY, temporal="convlstm", time_steps=2)
        noise = 0.3 * rng.normal(size=frames.shape).astype("float32")
        x = np.stack([masks + noise, frames], axis=1)  # two noisy views of the same discs
    else:
        cfg = UNetConfig(**TINY)
        x = frames
    model = build_model(cfg)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=losses.get_loss("bce_dice"))
    before = float(model.evaluate(x, masks, verbose=0))
    model.fit(x, masks, batch_size=4, epochs=8, verbose=0)
    after = float(model.evaluate(x, masks, verbose=0))
    assert after < 0.8 * before


def test_bilinear_upsampling_matches_keras_resize() -> None:
    x = np.random.default_rng(5).normal(size=(2, 5, 7, 3)).astype("float32")
    expected = keras.layers.UpSampling2D(2, interpolation="bilinear")(x)
    got = BilinearUpsampling2D()(x)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(expected), atol=1e-6
    )

"""Channel loading codes: parsing, the exact inputs they make in training (seeded) and at
inference, the contract field, and the engine fed raw multi-channel frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from unetrt.channels import (
    ChannelCode,
    blanked,
    check_raw_shape,
    draw,
    is_random,
    parse_codes,
    select_channels,
)
from unetrt.contract import CONTRACT_KEY, ModelContract
from unetrt.errors import ConfigError, InputError, ModelError
from unetrt.normalize import Normalization

CODES = [
    2,
    {"channel": 0, "dropout": 0.5},
    {"random": [0, 1], "inference": 1},
    {"merge": "mean", "channels": [0, 2]},
    {"merge": "max", "channels": [1, 2], "dropout": 0.4},
]


def _frame(rng: np.random.Generator, channels: int = 3) -> np.ndarray:
    return rng.integers(0, 60000, (6, 7, channels), dtype=np.uint16)


def test_codes_round_trip_their_configuration_form() -> None:
    codes = parse_codes(CODES)
    assert [c.kind for c in codes] == ["channel", "channel", "random", "merge", "merge"]
    assert [c.to_json() for c in codes] == CODES
    assert parse_codes([c.to_json() for c in codes]) == codes
    assert parse_codes([{"random": [3]}])[0].inference == 3
    assert parse_codes(None) == parse_codes([]) == ()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0", "a list of channel codes"),
        ([-1], r"data_channels\[0\]: a channel is an index >= 0, got -1"),
        ([True], "index >= 0"),
        ([{"channel": 0, "dropout": 1.0}], r"dropout must be a probability in \[0, 1\)"),
        ([{"random": []}], "non-empty list"),
        ([{"random": [0, 0]}], "listed twice"),
        ([{"random": [0, 1], "inference": 2}], "'inference' channel 2 is not among"),
        ([{"merge": "median", "channels": [0]}], "'merge' must be one of"),
        ([{"merge": "mean"}], "non-empty list"),
        ([{"merge": "mean", "channels": [0], "weights": 1}], r"unknown key\(s\) 'weights'"),
        ([{"channel": 0, "random": [1]}], "one of the keys"),
    ],
)
def test_bad_codes_are_named(spec: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_codes(spec)


def test_inference_form_selects_exactly() -> None:
    frame = _frame(np.random.default_rng(0))
    x = select_channels(frame, parse_codes(CODES))
    assert x.shape == (6, 7, 5) and x.dtype == np.float32  # the mean promotes the rest
    np.testing.assert_array_equal(x[..., 0], frame[..., 2])
    np.testing.assert_array_equal(x[..., 1], frame[..., 0])  # dropout only in training
    np.testing.assert_array_equal(x[..., 2], frame[..., 1])  # the inference channel
    np.testing.assert_array_equal(x[..., 3], (frame[..., [0, 2]]).mean(-1, dtype=np.float32))
    np.testing.assert_array_equal(x[..., 4], frame[..., [1, 2]].max(-1))
    one = select_channels(frame, parse_codes([{"merge": "max", "channels": [0, 1, 2]}]))
    assert one.shape == (6, 7) and one.dtype == np.uint16  # one code: (H, W), dtype kept
    np.testing.assert_array_equal(one, frame.max(-1))
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(select_channels(grey, parse_codes([0, 0])), np.dstack([grey] * 2))


def test_training_draws_are_the_seeded_ones() -> None:
    codes = parse_codes(CODES)
    assert is_random(codes) and not is_random(parse_codes([0, {"channel": 1, "dropout": 0.3}]))
    drawn = draw(codes, np.random.default_rng(7))
    # The same draws by hand: random pick first, then the merge's per-channel dropout.
    rng = np.random.default_rng(7)
    pick = (0, 1)[rng.integers(2)]
    kept = rng.random(2) >= 0.4
    if not kept.any():
        kept[rng.integers(2)] = True
    assert drawn[:2] == codes[:2] and drawn[3] == codes[3]
    assert drawn[2] == ChannelCode("channel", (pick,))
    assert drawn[4] == ChannelCode("merge", tuple(np.array([1, 2])[kept].tolist()), merge="max")
    assert blanked(codes, np.random.default_rng(3)) == (
        [1] if np.random.default_rng(3).random() < 0.5 else []
    )


def test_merge_dropout_keeps_one_channel() -> None:
    code = parse_codes([{"merge": "mean", "channels": [0, 1, 2], "dropout": 0.99}])[0]
    sizes = {len(code.draw(np.random.default_rng(s)).channels) for s in range(50)}
    assert sizes == {1}  # almost always all dropped: one drawn back
    picks = {code.draw(np.random.default_rng(s)).channels for s in range(50)}
    assert picks == {(0,), (1,), (2,)}


def test_raw_frames_need_the_channels_read() -> None:
    codes = parse_codes([0, {"merge": "mean", "channels": [1, 3]}])
    check_raw_shape((5, 5, 4), codes, "frame 0")
    with pytest.raises(InputError, match=r"frame 0 has shape \(5, 5, 3\) \(3 channels\).*C >= 4"):
        check_raw_shape((5, 5, 3), codes, "frame 0")
    with pytest.raises(InputError, match="1 channel\\)"):
        check_raw_shape((5, 5), codes, "frame 0")


def test_contract_carries_the_codes() -> None:
    codes = parse_codes([2, {"merge": "max", "channels": [0, 1]}])
    contract = ModelContract(channels=2, input_channels=codes)
    data = contract.to_dict()
    assert data["input_channels"] == [2, {"merge": "max", "channels": [0, 1]}]
    assert ModelContract.from_json(contract.to_json()) == contract
    plain = ModelContract().to_dict()
    assert "input_channels" not in plain  # older readers see the contract they know
    assert ModelContract.from_dict(plain).input_channels == ()
    with pytest.raises(ModelError, match="one code per model input channel"):
        ModelContract(channels=3, input_channels=codes)
    with pytest.raises(ModelError, match="input_channels"):
        ModelContract.from_dict({**data, "input_channels": [{"merge": "sum", "channels": [0]}]})


def test_the_engine_selects_before_normalizing(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from unetrt.segmenter import Segmenter
    from unetrt.testing import affine_model, save

    codes = parse_codes([2, {"merge": "mean", "channels": [0, 1]}])
    spec = Normalization(method="percentile", low=1.0, high=99.0)
    for name, contract in (
        ("codes", ModelContract(channels=2, normalization=spec, input_channels=codes)),
        ("plain", ModelContract(channels=2, normalization=spec)),
    ):
        model = affine_model(scale=1.0, offset=0.0, channels=2)
        model.metadata_props.add(key=CONTRACT_KEY, value=contract.to_json())
        save(model, tmp_path / f"{name}.onnx")
    raw = _frame(np.random.default_rng(4))
    with Segmenter(tmp_path / "codes.onnx") as seg, Segmenter(tmp_path / "plain.onnx") as ref:
        got = seg.predict_frame(raw)
        np.testing.assert_array_equal(got, ref.predict_frame(select_channels(raw, codes)))
        with pytest.raises(InputError, match="C >= 3"):
            seg.predict_frame(raw[..., :2])
    assert got.shape == (6, 7, 2)


# --------------------------------------------------------------------------- training
def _multichannel_folders(root: Path, frames: int = 4) -> tuple[Path, Path]:
    """Frames (16, 16, 3) whose channels are constant 10, 20, 30 plus a bright square,
    and the square as the mask."""
    (root / "frames").mkdir(parents=True)
    (root / "masks").mkdir()
    for t in range(frames):
        image = np.zeros((16, 16, 3), np.uint8) + np.array([10, 20, 30], np.uint8)
        image[4:10, 3 + t : 9 + t] += 100
        mask = np.zeros((16, 16), np.uint8)
        mask[4:10, 3 + t : 9 + t] = 1
        tifffile.imwrite(root / "frames" / f"t{t:03d}.tif", image, photometric="rgb")
        tifffile.imwrite(root / "masks" / f"t{t:03d}.tif", mask)
    return root / "frames", root / "masks"


def _config(root: Path, codes: list[object], **more: object) -> dict[str, object]:
    images, masks = _multichannel_folders(root)
    return {
        "data_train_images": str(images), "data_train_masks": str(masks),
        "output_dir": str(root / "run"), "data_channels": codes, "model_pools": 1,
        "model_n_filters": 2, "datagen_dim_size": [16, 16], "datagen_batch_size": 4,
        "augmentation": False, "newinfer_normalization": "none", **more,
    }  # fmt: skip


def test_training_batches_hold_the_coded_channels(tmp_path: Path) -> None:
    pytest.importorskip("keras", reason="training batches need the train extra")
    from unetrt.train.config import load_config
    from unetrt.train.data import build_datasets

    codes = [1, {"random": [0, 2]}, {"channel": 2, "dropout": 0.5}, {"merge": "max",
             "channels": [0, 1]}]  # fmt: skip
    config = load_config(_config(tmp_path, codes, train_steps_per_epoch=8))
    assert config.model_config().channels_in == 4
    train, _ = build_datasets(config)
    background = []
    for i in range(len(train)):
        x, _ = train[i]
        assert x.shape == (4, 16, 16, 4)
        background.append(x[:, 0, 0, :])  # a background pixel of every patch
    values = np.concatenate(background)
    assert set(values[:, 0]) == {20.0}  # channel 1
    assert set(values[:, 1]) == {10.0, 30.0}  # channel 0 or 2, drawn per patch
    assert set(values[:, 2]) == {0.0, 30.0}  # channel 2, blanked about half the time
    assert set(values[:, 3]) == {20.0}  # the max of channels 0 and 1
    again, _ = build_datasets(config)
    np.testing.assert_array_equal(again[3][0], train[3][0])  # seeded


def test_train_and_export_record_the_codes(tmp_path: Path) -> None:
    pytest.importorskip("tf2onnx", reason="export needs the train extra")
    from unetrt.export import export
    from unetrt.segmenter import Segmenter
    from unetrt.train.run import train

    codes = [{"merge": "mean", "channels": [0, 1, 2], "dropout": 0.3}, 2]
    model = train(_config(tmp_path, codes, train_steps_per_epoch=2, train_max_epochs=1), verbose=0)
    assert json.loads((model.parent / "config.json").read_text())["data_channels"] == codes
    contract = export(model, tmp_path / "model.onnx")
    assert contract.channels == 2 and contract.input_channels == parse_codes(codes)
    raw = tifffile.imread(tmp_path / "frames" / "t000.tif")
    with Segmenter(tmp_path / "model.onnx") as seg:
        assert seg.predict_frame(raw).shape == (16, 16)

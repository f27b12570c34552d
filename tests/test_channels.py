"""Channel loading codes (``data_channels``): each code's model channel, the seeded
training draws, the contract's ``input_channels``, the engine on raw multi-channel
frames, and a short train + export on 3-channel TIFF frames."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from unetrt import Segmenter
from unetrt.channels import (
    ChannelCode,
    blanked,
    check_raw_shape,
    draw,
    inference_codes,
    parse_codes,
    select_channels,
)
from unetrt.contract import ModelContract
from unetrt.errors import ConfigError, InputError, ModelError
from unetrt.normalize import Normalization, normalize_frame
from unetrt.testing import save, unet_model, unet_receptive_radius

#: One code of each kind, reading raw channels 0-3.
CODES: list[Any] = [
    2,
    {"random": [0, 3], "inference": 3},
    {"channel": 1, "dropout": 0.5},
    {"merge": "mean", "channels": [0, 2]},
    {"merge": "max", "channels": [1, 3], "dropout": 0.3},
]


def _frame(shape: tuple[int, ...] = (5, 6, 4), dtype: Any = np.uint16) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 60000, shape).astype(dtype)


# ---------------------------------------------------------------- the codes themselves
def test_each_code_makes_its_channel() -> None:
    f = _frame()
    got = select_channels(f, parse_codes(CODES))
    wide = f.astype(np.float64)
    expected = np.stack(
        [
            f[..., 2],
            f[..., 3],  # the random code's inference channel
            f[..., 1],
            np.rint((wide[..., 0] + wide[..., 2]) / 2).astype(np.uint16),
            np.maximum(f[..., 1], f[..., 3]),
        ],
        axis=-1,
    )
    assert got.dtype == np.uint16  # the raw dtype, which the normalization's scale reads
    np.testing.assert_array_equal(got, expected)


def test_merges_equal_numpy_and_keep_the_dtype() -> None:
    f = _frame(dtype=np.float32)
    mean, peak = parse_codes(
        [{"merge": "mean", "channels": [0, 1, 3]}, {"merge": "max", "channels": [0, 2, 3]}]
    )
    np.testing.assert_array_equal(select_channels(f, [mean]), np.mean(f[..., [0, 1, 3]], axis=-1))
    np.testing.assert_array_equal(select_channels(f, [peak]), np.max(f[..., [0, 2, 3]], axis=-1))
    # Integer means round to the nearest, halves to even: 1.5 -> 2, 2.5 -> 2, 4 -> 4.
    ints = np.array([[[1, 2], [2, 3], [3, 5]]], np.uint8)
    got = select_channels(ints, parse_codes([{"merge": "mean", "channels": [0, 1]}]))
    assert got.dtype == np.uint8 and got.tolist() == [[2, 2, 4]]


def test_one_code_gives_a_grey_frame() -> None:
    f = _frame()
    got = select_channels(f, parse_codes([1]))
    assert got.shape == (5, 6) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, f[..., 1])
    grey = f[..., 0]  # a grey frame is channel 0
    np.testing.assert_array_equal(select_channels(grey, parse_codes([0])), grey)


def test_inference_form_is_the_training_form_without_randomness() -> None:
    codes = parse_codes(CODES)
    plain = inference_codes(codes)
    assert [c.to_json() for c in plain] == [
        2,
        3,
        1,
        {"merge": "mean", "channels": [0, 2]},
        {"merge": "max", "channels": [1, 3]},
    ]
    f = _frame()
    np.testing.assert_array_equal(select_channels(f, plain), select_channels(f, codes))
    assert inference_codes(plain) == plain


def test_codes_read_back_from_their_json() -> None:
    codes = parse_codes(CODES)
    assert [c.to_json() for c in codes] == CODES
    assert parse_codes([c.to_json() for c in codes]) == codes
    # Defaults are written out, and a channel without dropout is its index.
    short = parse_codes([{"random": [1, 2]}, {"channel": 3}, {"channel": 0, "dropout": 0}])
    assert [c.to_json() for c in short] == [{"random": [1, 2], "inference": 1}, 3, 0]
    assert parse_codes(None) == ()


# ---------------------------------------------------------------- seeded training draws
def test_random_code_draws_one_listed_channel_per_seed() -> None:
    (code,) = parse_codes([{"random": [0, 2, 3]}])
    seen = set()
    for seed in range(30):
        expected = [0, 2, 3][np.random.default_rng(seed).integers(3)]
        assert draw([code], np.random.default_rng(seed)) == (ChannelCode("channel", (expected,)),)
        seen.add(expected)
    assert seen == {0, 2, 3}


def test_merge_dropout_merges_the_channels_it_kept() -> None:
    (code,) = parse_codes([{"merge": "max", "channels": [0, 1, 2, 3], "dropout": 0.5}])
    f = _frame()
    all_dropped = 0
    for seed in range(40):
        ref = np.random.default_rng(seed)
        kept = [c for c, u in zip([0, 1, 2, 3], ref.random(4), strict=True) if u >= 0.5]
        if not kept:  # one is always kept: drawn among all
            all_dropped += 1
            kept = [[0, 1, 2, 3][ref.integers(4)]]
        (drawn,) = draw([code], np.random.default_rng(seed))
        assert drawn == ChannelCode("merge", tuple(kept), merge="max")
        np.testing.assert_array_equal(select_channels(f, [drawn]), f[..., kept].max(axis=-1))
    assert all_dropped  # the seeds above cover the all-dropped case


def test_channel_dropout_blanks_the_drawn_channels() -> None:
    codes = parse_codes([{"channel": 0, "dropout": 0.25}, 1, {"channel": 2, "dropout": 0.75}])
    outcomes = set()
    for seed in range(60):
        ref = np.random.default_rng(seed)
        u0, u2 = ref.random(), ref.random()
        expected = [i for i, u, p in ((0, u0, 0.25), (2, u2, 0.75)) if u < p]
        assert blanked(codes, np.random.default_rng(seed)) == expected
        outcomes.add(tuple(expected))
    assert outcomes == {(), (0,), (2,), (0, 2)}


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([-1], r"data_channels\[0\]: a channel is an index >= 0, got -1"),
        ([0, "1"], r"data_channels\[1\]: a channel is an index >= 0, got '1'"),
        ([True], r"index >= 0, got True"),
        ([{"chanel": 1}], r"one of the keys 'channel', 'random', 'merge', got \{'chanel': 1\}"),
        (
            [{"channel": 1, "p": 0.1}],
            r"unknown key\(s\) 'p' in .*a 'channel' code has channel, dropout",
        ),
        ([{"channel": 1, "merge": "max"}], r"one of the keys"),
        ([{"channel": 1, "dropout": 1.0}], r"dropout must be a probability in \[0, 1\), got 1.0"),
        ([{"channel": 1, "dropout": -0.1}], r"in \[0, 1\), got -0.1"),
        ([{"random": []}], r"data_channels\[0\]: expected a non-empty list of channel indices"),
        ([{"random": [0, 0]}], r"channels \[0, 0\] list a channel twice"),
        ([{"random": [0, 1], "inference": 2}], r"'inference' channel 2 is not among \[0, 1\]"),
        ([{"random": [0, 1], "dropout": 0.1}], r"unknown key\(s\) 'dropout'"),
        (
            [{"merge": "sum", "channels": [0, 1]}],
            r"'merge' must be one of \('mean', 'max'\), got 'sum'",
        ),
        ([{"merge": "mean"}], r"expected a non-empty list of channel indices, got None"),
        ([{"merge": "mean", "channels": [0, 1], "dropout": 2}], r"got 2"),
        ([], r"data_channels must be a non-empty list of channel codes or null, got \[\]"),
        (3, r"data_channels must be a non-empty list of channel codes or null, got 3"),
    ],
)
def test_bad_codes_are_named(spec: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_codes(spec)


def test_frames_without_the_channels_read_are_an_input_error() -> None:
    codes = parse_codes([0, {"merge": "max", "channels": [1, 2]}])
    check_raw_shape((8, 8, 3), codes, "frame 0")
    check_raw_shape((8, 8, 4), codes, "frame 0")
    with pytest.raises(InputError, match=r"frame 4: shape \(8, 8, 2\), 2 channels; .* C >= 3"):
        check_raw_shape((8, 8, 2), codes, "frame 4")
    with pytest.raises(InputError, match=r"shape \(8, 8\), 1 channel; "):
        check_raw_shape((8, 8), codes, "frame 4")


# ---------------------------------------------------------------- the model contract
def test_contract_round_trip_with_codes() -> None:
    codes = inference_codes(parse_codes([2, {"merge": "mean", "channels": [0, 1]}]))
    contract = ModelContract(channels=2, input_channels=codes)
    assert contract.to_dict()["input_channels"] == [2, {"merge": "mean", "channels": [0, 1]}]
    assert ModelContract.from_json(contract.to_json()) == contract
    assert ModelContract.from_json(contract.to_json()).input_channels == codes


def test_contracts_without_codes_read_as_before() -> None:
    old = ModelContract(channels=3)
    assert "input_channels" not in old.to_dict()  # the JSON of a model without codes
    data = json.loads(old.to_json())
    assert ModelContract.from_dict(data) == old and old.input_channels == ()


def test_bad_contract_codes_are_model_errors() -> None:
    with pytest.raises(
        ModelError, match=r"input_channels must be one code per input channel \(1\)"
    ):
        ModelContract(channels=1, input_channels=parse_codes([0, 1]))
    for training_only in ({"random": [0, 1]}, {"channel": 0, "dropout": 0.5}):
        with pytest.raises(ModelError, match=r"input_channels must be inference codes"):
            ModelContract(input_channels=parse_codes([training_only]))
    data = {**ModelContract().to_dict(), "input_channels": [{"merge": "sum", "channels": [0]}]}
    with pytest.raises(ModelError, match=r"model contract: input_channels\[0\]: 'merge' must be"):
        ModelContract.from_dict(data)


# ---------------------------------------------------------------- the engine
POOLS = 2


def _two_channel_unet(path: Path, codes: tuple[ChannelCode, ...]) -> Path:
    """The same 2-channel U-Net (seeded weights), with or without channel codes."""
    contract = ModelContract(
        alignment=2**POOLS,
        halo=unet_receptive_radius(pools=POOLS),
        channels=2,
        normalization=Normalization(method="percentile"),
        input_channels=codes,
    )
    save(unet_model(filters=4, pools=POOLS, channels_in=2, contract=contract), path)
    return path


ENGINE_CODES = inference_codes(parse_codes([2, {"merge": "max", "channels": [0, 1]}]))


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("channel-models")
    coded = _two_channel_unet(folder / "coded.onnx", ENGINE_CODES)
    plain = _two_channel_unet(folder / "plain.onnx", ())
    return coded, plain


def test_engine_on_raw_frames_equals_engine_on_selected_frames(engines: tuple[Path, Path]) -> None:
    coded, plain = engines
    raw = _frame((70, 93, 3))  # several 56-pixel tiles
    selected = select_channels(raw, ENGINE_CODES)
    with Segmenter(coded, tile=56) as seg, Segmenter(plain, tile=56) as ref:
        np.testing.assert_array_equal(seg.predict_frame(raw), ref.predict_frame(selected))
        # The same through a stream of frames (the queue's shape check, then prepare).
        got = list(seg.predict_frames([raw, raw[::-1].copy()]))
        want = list(ref.predict_frames([selected, selected[::-1].copy()]))
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)


def test_engine_segments_a_raw_stack_as_the_selected_stack(
    engines: tuple[Path, Path], tmp_path: Path
) -> None:
    coded, plain = engines
    raw = _frame((3, 24, 28, 3))  # (time, rows, cols, channels)
    tifffile.imwrite(tmp_path / "raw.tif", raw, photometric="rgb")
    selected = np.stack([select_channels(f, ENGINE_CODES) for f in raw])
    with Segmenter(coded, normalization=Normalization("percentile", scope="stack")) as seg:
        seg.segment(tmp_path / "raw.tif", tmp_path / "coded.tif")
    with Segmenter(plain, normalization=Normalization("percentile", scope="stack")) as ref:
        want = list(
            ref.segment_frames(selected, ref.stream(stats=ref.stack_statistics(list(selected))))
        )
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "coded.tif"), np.stack(want))


def test_engine_names_the_channels_a_frame_lacks(engines: tuple[Path, Path]) -> None:
    coded, _ = engines
    with Segmenter(coded) as seg:
        with pytest.raises(InputError, match=r"shape \(16, 16, 2\), 2 channels; .* C >= 3"):
            seg.predict_frame(_frame((16, 16, 2)))
        with pytest.raises(InputError, match=r"shape \(16, 16\), 1 channel"):
            seg.submit(_frame((16, 16)))


def test_info_shows_the_codes(
    engines: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from unetrt.cli import main

    coded, plain = engines
    assert main(["info", str(coded)]) == 0
    out = capsys.readouterr().out
    codes = '[2, {"merge": "max", "channels": [0, 1]}]'
    assert f"channels     {codes}: the model's channels of each raw frame" in out
    assert main(["info", str(plain)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert not any(line.startswith("channels") for line in lines)


# ---------------------------------------------------------------- training
def _keras() -> None:
    pytest.importorskip("keras", reason="training data needs the train extra (keras)")


def _video(frame: np.ndarray) -> Any:
    from unetrt.train.data import AnnotatedVideo

    mask = np.zeros(frame.shape[:2], np.uint16)
    mask[4:10, 4:10] = 1
    return AnnotatedVideo("video", (frame,), (0,), {0: mask})


#: Channel k of the raw frame is 10 * (k + 1) everywhere: a patch's values say which
#: raw channels made each model channel.
LEVELS = np.broadcast_to(10 * np.arange(1, 5, dtype=np.uint8), (16, 16, 4)).copy()
TRAIN_CODES = parse_codes(
    [
        {"random": [0, 1, 2]},
        {"channel": 3, "dropout": 0.5},
        {"merge": "max", "channels": [0, 1, 2, 3], "dropout": 0.5},
    ]
)


def _patches(**options: Any) -> Any:
    from unetrt.train.augment import AugmentConfig
    from unetrt.train.data import PatchDataset

    return PatchDataset(
        [_video(LEVELS)],
        patch_shape=(16, 16),
        batch_size=6,
        normalization=Normalization(method="none"),
        augment=AugmentConfig.off(),
        seed=5,
        steps=3,
        codes=TRAIN_CODES,
        **options,
    )


def _expected_patches(seed: int, epoch: int, index: int, count: int) -> np.ndarray:
    """Each patch's three channel values, drawn as documented: per patch, the random
    pick, then the merge's kept channels, then the channel dropout."""
    from unetrt.train.data import CHANNEL_DRAWS

    ref = np.random.default_rng((seed, epoch, index, CHANNEL_DRAWS))
    rows = []
    for _ in range(count):
        pick = [0, 1, 2][ref.integers(3)]
        kept = [c for c, u in zip(range(4), ref.random(4), strict=True) if u >= 0.5]
        if not kept:
            kept = [ref.integers(4)]
        blank = ref.random() < 0.5
        rows.append([10 * (pick + 1), 0 if blank else 40, 10 * (max(kept) + 1)])
    return np.array(rows, np.float32)


def test_training_patches_take_the_seeded_draws() -> None:
    _keras()
    data = _patches()
    seen = []
    for epoch in range(2):
        for index in (2, 0, 1):  # any order: a batch depends on (seed, epoch, index) only
            x, _ = data[index]
            assert x.shape == (6, 16, 16, 3) and x.dtype == np.float32
            # Every pixel of a patch channel holds the value of its raw channel(s).
            assert (x == x[:, :1, :1, :]).all()
            want = _expected_patches(5, epoch, index, 6)
            np.testing.assert_array_equal(x[:, 0, 0, :], want)
            seen.append(want)
        data.on_epoch_end()
    values = np.concatenate(seen)
    assert set(values[:, 0]) == {10, 20, 30} and set(values[:, 1]) == {0, 40}
    x_again, _ = _patches()[1]
    np.testing.assert_array_equal(x_again[:, 0, 0, :], _expected_patches(5, 0, 1, 6))


def test_validation_data_take_the_inference_form() -> None:
    _keras()
    from unetrt.train.data import FrameDataset

    inference = [10, 40, 40]  # channel 0, channel 3 kept, the max of all
    x, _ = _patches(fixed=True)[0]
    assert (x == np.array(inference, np.float32)).all()
    spec = Normalization(method="percentile")
    frame = _frame((16, 16, 4))
    x, _ = FrameDataset([_video(frame)], alignment=4, normalization=spec, codes=TRAIN_CODES)[0]
    want = normalize_frame(select_channels(frame, inference_codes(TRAIN_CODES)), spec)
    np.testing.assert_array_equal(x[0], want)


def test_patches_are_normalized_after_the_draw() -> None:
    """Per-frame statistics of the drawn channels, not of the raw frame."""
    _keras()
    from unetrt.train.augment import AugmentConfig
    from unetrt.train.data import PatchDataset

    frame = _frame((16, 16, 3))
    spec = Normalization(method="percentile")
    codes = parse_codes([{"random": [0, 1, 2]}])
    data = PatchDataset(
        [_video(frame)],
        patch_shape=(16, 16),
        batch_size=4,
        normalization=spec,
        augment=AugmentConfig.off(),
        codes=codes,
    )
    x, _ = data[0]
    candidates = [normalize_frame(frame[..., k], spec) for k in range(3)]
    for patch in x[..., 0]:
        assert any(np.array_equal(patch, c) for c in candidates)


def _three_channel_frames(folder: Path, count: int = 4, channels_first: bool = False) -> np.ndarray:
    """Frames whose cells are bright in channel 1 only, and their masks."""
    rng = np.random.default_rng(0)
    (folder / "frames").mkdir()
    (folder / "masks").mkdir()
    rows, cols = np.mgrid[:32, :32]
    frames = []
    for i in range(count):
        labels = np.zeros((32, 32), np.uint16)
        for label in (1, 2):
            r, c = rng.integers(8, 24, 2)
            labels[(rows - r) ** 2 + (cols - c) ** 2 < 30] = label
        frame = rng.integers(40, 80, (32, 32, 3)).astype(np.uint8)
        frame[..., 1][labels > 0] = 200
        frames.append(frame)
        path = folder / "frames" / f"t{i:03d}.tif"
        if channels_first:
            tifffile.imwrite(
                path, np.moveaxis(frame, -1, 0), photometric="minisblack", metadata={"axes": "CYX"}
            )
        else:
            tifffile.imwrite(path, frame, photometric="rgb")
        tifffile.imwrite(folder / "masks" / f"man_seg{i:03d}.tif", labels)
    return np.stack(frames)


@pytest.mark.parametrize("channels_first", [False, True])
def test_loading_keeps_the_channels_as_the_engine_reads_them(
    tmp_path: Path, channels_first: bool
) -> None:
    _keras()
    from unetrt.train.data import PatchDataset, load_annotated

    written = _three_channel_frames(tmp_path, count=2, channels_first=channels_first)
    (video,) = load_annotated("folders", tmp_path / "frames", tmp_path / "masks", multichannel=True)
    np.testing.assert_array_equal(np.stack(video.frames), written)
    assert all(m.shape == (32, 32) for m in video.masks.values())  # masks stay grey
    with pytest.raises(
        InputError, match=r"frames frame 0: shape \(32, 32, 3\), 3 channels; .*channel 3"
    ):
        PatchDataset(
            [video],
            patch_shape=(16, 16),
            codes=parse_codes([{"merge": "mean", "channels": [0, 3]}]),
        )
    with pytest.raises(InputError, match="colour"):
        load_annotated(
            "folders", tmp_path / "frames", tmp_path / "masks"
        )  # grey only without codes


def test_config_to_training_batches(tmp_path: Path) -> None:
    """From the configuration: frames read with their channels, coded, drawn, seeded."""
    _keras()
    from unetrt.train.config import load_config
    from unetrt.train.data import build_datasets

    frames = _three_channel_frames(tmp_path)
    config = load_config(
        {
            "data_train_images": str(tmp_path / "frames"),
            "data_train_masks": str(tmp_path / "masks"),
            "data_channels": [1, {"random": [0, 2]}, {"channel": 2, "dropout": 0.5}],
            "data_val_fraction": 0.25,
            "newinfer_normalization": "none",
            "augmentation": False,
            "datagen_dim_size": [16, 16],
            "train_steps_per_epoch": 3,
        }
    )
    train, val = build_datasets(config)
    values = [set(np.unique(frames[..., c])) for c in range(3)]
    for i in range(len(train)):
        x, _ = train[i]
        assert x.shape[1:] == (16, 16, 3)
        for patch in x:  # crops of channel 1, of channel 0 or 2, of channel 2 or blank
            seen = [set(np.unique(patch[..., k])) for k in range(3)]
            assert seen[0] <= values[1]
            assert seen[1] <= values[0] or seen[1] <= values[2]
            assert seen[2] <= values[2] or seen[2] == {0.0}
    np.testing.assert_array_equal(build_datasets(config)[0][2][0], train[2][0])  # seeded
    x, _ = val[0]  # the held-out last frame, whole, in the inference form
    np.testing.assert_array_equal(x[0], frames[3][..., [1, 0, 2]].astype(np.float32))


def test_config_sets_the_model_channels(tmp_path: Path) -> None:
    _keras()
    from unetrt.train.config import load_config

    base = {"data_train_images": "frames", "data_train_masks": "masks"}
    assert load_config(base).model_config().channels_in == 1
    config = load_config({**base, "data_channels": [0, {"merge": "max", "channels": [1, 2]}]})
    assert config.model_config().channels_in == 2
    assert load_config(config.to_dict()) == config
    with pytest.raises(ConfigError, match=r"data_channels\[1\]: dropout must be a probability"):
        load_config({**base, "data_channels": [0, {"channel": 1, "dropout": 1.5}]})


def test_train_and_export_record_the_codes(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    from unetrt.export import _contract_from_config, load_keras_model
    from unetrt.train.config import load_config
    from unetrt.train.run import train

    frames = _three_channel_frames(tmp_path)
    data_channels = [
        {"random": [1, 2], "inference": 1},
        {"merge": "mean", "channels": [0, 1, 2], "dropout": 0.3},
    ]
    config = {
        "data_train_images": str(tmp_path / "frames"),
        "data_train_masks": str(tmp_path / "masks"),
        "data_channels": data_channels,
        "model_pools": 2,
        "model_n_filters": 4,
        "datagen_dim_size": [16, 16],
        "datagen_batch_size": 2,
        "train_max_epochs": 1,
        "train_steps_per_epoch": 2,
        "output_dir": str(tmp_path / "run"),
    }
    path = train(config, verbose=0)
    model = load_keras_model(path)
    assert tuple(model.inputs[0].shape[1:]) == (None, None, 2)
    contract = _contract_from_config(model, load_config(path.parent / "config.json"), window=False)
    recorded = [1, {"merge": "mean", "channels": [0, 1, 2]}]
    assert contract.channels == 2 and [c.to_json() for c in contract.input_channels] == recorded

    pytest.importorskip("tf2onnx")
    from unetrt.export import export

    onnx_path = tmp_path / "model.onnx"
    exported = export(path, onnx_path, check_frames=frames)
    assert exported == contract.replace(halo=exported.halo)
    with Segmenter(onnx_path) as seg:
        assert seg.contract.input_channels == contract.input_channels
        assert seg.segment_frame(frames[0]).shape == (32, 32)

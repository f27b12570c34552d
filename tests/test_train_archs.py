"""The attention U-Net, UNet3+, the ResNet34 U-Net and pixel-shuffle upsampling: they
build, learn, export within 1e-4, carry a contract whose halo tiles them exactly."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

keras = pytest.importorskip("keras", reason="the architectures need the train extra")
pytest.importorskip("tf2onnx", reason="export needs the train extra")

from unetrt import onnxgraph  # noqa: E402
from unetrt.contract import CONFIG_NAME  # noqa: E402
from unetrt.errors import ConfigError, ModelError  # noqa: E402
from unetrt.export import export  # noqa: E402
from unetrt.segmenter import Segmenter  # noqa: E402
from unetrt.train import losses  # noqa: E402
from unetrt.train.config import load_config  # noqa: E402
from unetrt.train.models import (  # noqa: E402
    ICNR,
    PixelShuffle2D,
    UNetConfig,
    build_model,
    config_from_seed_name,
    receptive_field,
)
from unetrt.train.run import load_encoder  # noqa: E402

#: Training-config keys of each case (tiny models: 4 filters).
CASES: dict[str, dict[str, Any]] = {
    "attention_unet": {"cnn_name": "attention_unet", "model_pools": 2, "batch_norm": True},
    "unet3plus": {"cnn_name": "unet3plus", "model_pools": 3, "batch_norm": True},
    "unet3plus_transpose": {"cnn_name": "unet3plus", "model_pools": 2, "upsampling": "transpose"},
    "unet3plus_shuffle": {"cnn_name": "unet3plus", "model_pools": 2, "upsampling": "pixel_shuffle"},
    "resnet34_unet": {"cnn_name": "resnet34_unet", "model_pools": 3},
    "resnet34_unet_softmax": {
        "cnn_name": "resnet34_unet",
        "model_pools": 2,
        "model_lossfunction": "sparse_cce",
        "datagen_type": "contours",
        "upsampling": "interpolation",
    },
    "unet_pixel_shuffle": {"cnn_name": "unet", "model_pools": 2, "upsampling": "pixel_shuffle"},
    "multires_unet": {"cnn_name": "multires_unet", "model_pools": 2},
}
BASE = {
    "data_train_images": "frames",
    "data_train_masks": "masks",
    "model_n_filters": 4,
    "datagen_dim_size": [32, 32],
    "newinfer_normalization": "range",
}


def _config(case: str) -> Any:
    return load_config({**BASE, **CASES[case]})


def _predict(model: Any, x: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(x, training=False))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each case built with perturbed weights (batch-norm statistics included), saved with
    its training config and exported."""
    out = {}
    for case in CASES:
        cfg = _config(case)
        model = build_model(cfg.model_config())
        rng = np.random.default_rng(1)
        model.set_weights(
            [w + rng.normal(0, 0.1, w.shape).astype(np.float32) ** 2 for w in model.get_weights()]
        )
        folder = tmp_path_factory.mktemp(case)
        model.save(folder / "model.keras")
        (folder / CONFIG_NAME).write_text(json.dumps(cfg.to_dict()))
        export(folder / "model.keras", folder / "model.onnx", atol=1e-4)
        out[case] = folder
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_each_architecture_learns(case: str) -> None:
    cfg = _config(case)
    keras.utils.set_random_seed(0)
    model = build_model(cfg.model_config())
    rng = np.random.default_rng(0)
    x = rng.random((4, 32, 32, 1), "float32")
    truth = (x > 0.5).astype("float32")
    if cfg.target_encoding == "sparse":
        truth = truth.astype("int32")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=cfg.loss())
    history = model.fit(x, truth, batch_size=4, epochs=12, verbose=0).history["loss"]
    assert history[-1] < 0.9 * history[0], history


@pytest.mark.parametrize("case", list(CASES))
def test_export_matches_keras_and_tiles_are_exact(case: str, exported: dict[str, Path]) -> None:
    folder = exported[case]
    cfg = _config(case)
    keras_model = keras.saving.load_model(folder / "model.keras", compile=False)
    with Segmenter(folder / "model.onnx") as probe:
        contract = probe.contract
    assert contract.alignment == 2**cfg.model_pools
    # Tiles much smaller than the frame (with the contract's halo), and a frame size that
    # is no multiple of the alignment.
    halo = -(-contract.halo // contract.alignment) * contract.alignment
    tile = 2 * halo + contract.alignment * 2
    height, width = max(200, tile + tile // 2), max(200, tile + tile // 2) + 61
    frame = np.random.default_rng(2).integers(0, 256, (height, width), dtype=np.uint8)
    with Segmenter(folder / "model.onnx") as whole:
        assert whole.plan_for(*frame.shape).n_tiles == 1
        full = whole.predict_frame(frame)
    # The engine computes what Keras computes (on the frame padded to the alignment).
    pad = (-height % contract.alignment, -width % contract.alignment)
    padded = np.pad(frame, ((0, pad[0]), (0, pad[1])), mode="reflect")
    expected = _predict(keras_model, padded[None, :, :, None].astype(np.float32) / 255.0)[0]
    expected = expected[:height, :width]
    expected = expected[..., 0] if expected.shape[-1] == 1 else expected
    np.testing.assert_allclose(full, expected, rtol=0, atol=1e-4)
    with Segmenter(folder / "model.onnx", tile=tile) as seg:
        assert seg.plan_for(*frame.shape).n_tiles > 1
        tiled = seg.predict_frame(frame)
    np.testing.assert_allclose(tiled, full, rtol=0, atol=1e-4)


@pytest.mark.parametrize("case", list(CASES))
def test_the_halo_is_the_graph_bound(case: str, exported: dict[str, Path]) -> None:
    graph = onnxgraph.read_graph(exported[case] / "model.onnx")
    bound = onnxgraph.receptive_field(graph, "frame", outputs=graph.outputs[:1])
    with Segmenter(exported[case] / "model.onnx") as seg:
        assert seg.contract.halo == bound.radius


def test_attention_gates_and_pixel_shuffle_add_no_context(exported: dict[str, Path]) -> None:
    # The gates and the shuffle's convolution are 1x1 and read one coarse pixel per fine
    # pixel, so the field is the plain U-Net's (closed form, transposed convolutions).
    plain = receptive_field(UNetConfig(pools=2, filters=4))
    for case in ("attention_unet", "unet_pixel_shuffle"):
        with Segmenter(exported[case] / "model.onnx") as seg:
            assert seg.contract.halo == plain
    assert receptive_field(UNetConfig(pools=2, upsampling="pixel_shuffle")) == plain


def test_a_tile_without_the_halo_differs(exported: dict[str, Path]) -> None:
    # The halo is needed, not just safe: half of it changes the result.
    folder = exported["resnet34_unet"]
    frame = np.random.default_rng(3).integers(0, 256, (300, 364), dtype=np.uint8)
    with Segmenter(folder / "model.onnx") as whole:
        full = whole.predict_frame(frame)
        halo = whole.contract.halo
    with Segmenter(folder / "model.onnx", tile=160, halo=halo // 2) as seg:
        assert np.abs(seg.predict_frame(frame) - full).max() > 1e-3


def test_pixel_shuffle_is_depth_to_space() -> None:
    x = np.arange(2 * 3 * 4 * 8, dtype=np.float32).reshape(2, 3, 4, 8)
    y = _predict(PixelShuffle2D(2), x)
    assert y.shape == (2, 6, 8, 2)
    for i in range(2):
        for j in range(2):
            # sub-pixel (i, j) holds channels (i * 2 + j) * C .. + C
            np.testing.assert_array_equal(y[:, i::2, j::2, :], x[..., (i * 2 + j) * 2 :][..., :2])


def test_icnr_starts_the_shuffle_as_nearest_upsampling() -> None:
    conv = keras.layers.Conv2D(3 * 4, 1, kernel_initializer=ICNR(2))
    x = np.random.default_rng(0).random((1, 5, 6, 2), "float32")
    y = _predict(PixelShuffle2D(2), _predict(conv, x))
    np.testing.assert_array_equal(y, np.repeat(np.repeat(y[:, ::2, ::2], 2, axis=1), 2, axis=2))
    assert np.abs(y).max() > 0


def test_resnet34_layout() -> None:
    model = build_model(config_from_seed_name("resnet34_unet", filters=2))
    names = [layer.name for layer in model.layers]
    # 3, 4, 6, 3 basic blocks; a projection where a stage starts smaller and wider
    for stage, blocks in enumerate((3, 4, 6, 3), start=1):
        assert sum(n.startswith(f"stage{stage}_") and n.endswith("_add") for n in names) == blocks
        assert (f"stage{stage}_block1_proj" in names) == (stage > 1)
    widths = {n: model.get_layer(n).filters for n in names if n.endswith("block1_conv1")}
    assert widths == {f"stage{s}_block1_conv1": 2 * 2 ** (s - 1) for s in (1, 2, 3, 4)}
    assert model.get_layer("stem_conv").kernel_size == (7, 7)
    assert model.get_layer("stem_conv").strides == (2, 2)


def test_resnet_encoder_weights_from_a_local_file(tmp_path: Path) -> None:
    source = build_model(config_from_seed_name("resnet34_unet", filters=4, pools=3))
    source.save(tmp_path / "source.keras")
    # Another depth and another output: the shared encoder layers are copied exactly.
    target = build_model(
        config_from_seed_name("resnet34_unet", filters=4, pools=2, output="softmax", classes=3)
    )
    load_encoder(target, tmp_path / "source.keras")
    for layer in target.layers:
        if layer.name.startswith(("stem_", "stage")) and layer.weights:
            for got, want in zip(
                layer.get_weights(), source.get_layer(layer.name).get_weights(), strict=True
            ):
                np.testing.assert_array_equal(got, want)
    wider = build_model(config_from_seed_name("resnet34_unet", filters=8, pools=2))
    with pytest.raises(ModelError, match="stem_conv.*another model_n_filters"):
        load_encoder(wider, tmp_path / "source.keras")
    unet = build_model(config_from_seed_name("unet", filters=4, pools=2))
    unet.save(tmp_path / "unet.keras")
    with pytest.raises(ModelError, match="no encoder layer"):
        load_encoder(target, tmp_path / "unet.keras")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"architecture": "resnet34_unet", "pools": 6}, "2 to 5 downsamplings"),
        ({"architecture": "resnet34_unet", "kernel_size": 5}, "kernel_size"),
        ({"architecture": "resnet34_unet", "dropout": 0.1}, "no dropout"),
        ({"architecture": "multires_unet", "dropout": 0.1}, "multires_unet has no dropout"),
        ({"architecture": "multires_unet", "dilation": 2}, "no dilated convolutions"),
        ({"architecture": "resnet34_unet", "downsampling": "strided"}, "downsampling"),
        ({"architecture": "unet3plus", "temporal": "convlstm", "time_steps": 3}, "temporal"),
        ({"attention_filters": 4}, "attention_filters is for 'attention_unet'"),
        ({"unet3plus_filters": 4}, "unet3plus_filters is for 'unet3plus'"),
        ({"architecture": "attention_unet", "attention_filters": 0}, "positive integer"),
        ({"architecture": "vnet"}, "architecture"),
    ],
)
def test_architecture_fields_are_checked(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        UNetConfig(**changes)
    with pytest.raises(ConfigError, match="closed-form"):
        receptive_field(UNetConfig(architecture="unet3plus"))


def test_training_keys_reach_the_architecture() -> None:
    cfg = load_config(
        {**BASE, "cnn_name": "attention_unet", "model_attention_filters": 3}
    ).model_config()
    assert (cfg.architecture, cfg.attention_filters, cfg.pools) == ("attention_unet", 3, 3)
    cfg = load_config(
        {**BASE, "cnn_name": "unet3plus", "model_unet3plus_filters": 5}
    ).model_config()
    assert (cfg.architecture, cfg.unet3plus_filters, cfg.upsampling) == (
        "unet3plus",
        5,
        "interpolation",
    )
    cfg = load_config({**BASE, "cnn_name": "resnet34_unet"}).model_config()
    assert (cfg.architecture, cfg.upsampling) == ("resnet34_unet", "pixel_shuffle")
    with pytest.raises(ConfigError, match="model_encoder_weights"):
        load_config({**BASE, "model_encoder_weights": "encoder.keras"})
    # An encoder from a file is a pretrained encoder: the decoder alone may learn.
    decoder_only = load_config(
        {**BASE, "cnn_name": "resnet34_unet", "model_encoder_weights": "encoder.keras",
         "model_train_decoder_only": True}
    )  # fmt: skip
    assert decoder_only.model_encoder_weights == "encoder.keras"
    with pytest.raises(ConfigError, match="model_unet3plus_filters"):
        load_config({**BASE, "cnn_name": "unet3plus", "model_unet3plus_filters": "many"})


def test_two_heads_on_a_new_architecture() -> None:
    two_heads = {"model_lossfunction": "multiple_output", "datagen_type": "contours"}
    cfg = load_config({**BASE, "cnn_name": "unet3plus", "model_pools": 2, **two_heads})
    model = build_model(cfg.model_config())
    model.compile(optimizer="adam", loss=losses.get_loss("multiple_output"))
    mask, target = model(np.zeros((1, 16, 16, 1), "float32"))
    assert mask.shape == target.shape == (1, 16, 16, 1)


def _u373() -> Path:
    env = os.environ.get("UNETRT_DATA")
    root = (Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data") / (
        "ctc-u373-02"
    )
    if not (root / "frames").is_dir():
        pytest.skip(f"U373 frames not found at {root} (set UNETRT_DATA to the shared data)")
    return root


@pytest.mark.data
@pytest.mark.parametrize("name", ["attention_unet", "unet3plus", "resnet34_unet"])
def test_trained_on_real_frames_tiles_equal_the_whole_frame(name: str, tmp_path: Path) -> None:
    import tifffile

    from unetrt.train.run import train

    root = _u373()
    gold = root / "gold_truth"
    config = {
        "data_train_images": str(root), "data_format": "ctc", "data_exclude_frames": str(gold),
        "output_dir": str(tmp_path / "run"), "cnn_name": name, "model_n_filters": 4,
        "model_pools": 3, "batch_norm": True, "datagen_dim_size": [128, 128],
        "datagen_batch_size": 2, "train_steps_per_epoch": 4, "train_max_epochs": 1,
        "newinfer_normalization": {"method": "percentile", "low": 1.0, "high": 99.8},
    }  # fmt: skip
    model = train(config, verbose=0)
    export(model, tmp_path / "model.onnx")
    frame = tifffile.imread(root / "frames" / "t060.tif")
    with Segmenter(tmp_path / "model.onnx") as whole:
        full = whole.predict_frame(frame)
        c = whole.contract
    halo = -(-c.halo // c.alignment) * c.alignment
    with Segmenter(tmp_path / "model.onnx", tile=2 * halo + 2 * c.alignment) as seg:
        assert seg.plan_for(*frame.shape).n_tiles > 1
        np.testing.assert_allclose(seg.predict_frame(frame), full, rtol=0, atol=1e-4)

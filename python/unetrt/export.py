"""Keras -> ONNX export with the model contract and a numeric check.

`export` converts a trained Keras model (``model.keras``) with tf2onnx into an ONNX
model the engine can run: one float32 input named ``"frame"`` with dynamic batch,
height and width (NHWC, as Keras computes), opset 17, and the `ModelContract` as JSON
in ``metadata_props["unetrt"]``. The contract comes from the training configuration
stored next to the model by ``unetrt train`` (``config.json``, found beside the model or,
for a checkpoint, in the run folder above ``checkpoints/``): alignment ``2**pools``,
halo = the receptive-field radius of the architecture (in closed form for the U-Net
family, bounded from the exported graph for the attention U-Net, UNet3+ and the ResNet34
U-Net), normalization, output kind and class names. Without that file, a frame model's
contract is measured from the exported graph (`unetrt.model.infer_contract`: alignment
by probing, halo from the graph's receptive-field bound, cross-checked by an impulse
probe).

Before the file appears, ONNX Runtime runs the exported graph on random frames (and on
real ones, if given) and must agree with Keras to ``atol``; otherwise `ExportError` is
raised and nothing is written at the output path.

ConvLSTM-U-Nets are exported as *step* models (contract ``temporal="stateful"``): one
time step with inputs ``frame`` and, per ConvLSTM layer, its state ``<layer>_h`` and
``<layer>_c``; outputs the mask, then the new states ``<layer>_h_next`` and
``<layer>_c_next`` (`unetrt.train.models.build_convlstm_step`: a few convolutions and
gates, no Loop or Scan op). The numeric check runs ``time_steps`` steps of the ONNX step
model from zero state and compares the last mask with the Keras clip model's. With
``window=True`` a ConvLSTM model is exported as the clip model itself: input
``(batch, time_steps, H, W, C)``, output the mask of the last frame (``"window"``).

tf2onnx is used (``from_function`` on a traced call of the model) rather than
``keras.Model.export(format="onnx")``: with Keras 3.15 / TensorFlow 2.21 both convert a
U-Net exactly, but Keras's route fixes opset 15 and names the output ``Identity:0``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .contract import CONFIG_NAME, CONTRACT_KEY, INPUT_NAME, ModelContract
from .errors import ConfigError, ModelError, OutputError, require
from .io import atomic_output

if TYPE_CHECKING:
    from .train.config import TrainConfig

OPSET = 17
#: Frames of the numeric check cut from real frames are at most this large (pixels per side).
MAX_CHECK_SIZE = 512
#: Real frames (or clips) used by the numeric check.
MAX_CHECK_FRAMES = 4

FrameInput = str | os.PathLike[str] | np.ndarray | Sequence[np.ndarray]


class ExportError(ModelError):
    """A Keras model cannot be exported, or its ONNX version does not compute the same."""


def export(
    model_keras_path: str | os.PathLike[str],
    onnx_path: str | os.PathLike[str],
    *,
    config: TrainConfig | str | os.PathLike[str] | None = None,
    check_frames: FrameInput | None = None,
    atol: float = 1e-4,
    window: bool = False,
) -> ModelContract:
    """Export a Keras model to ONNX for the engine.

    Args:
        model_keras_path: The trained model (``.keras``).
        onnx_path: Where to write the ONNX model; replaced only when the export passed
            its numeric check.
        config: The training configuration (a `TrainConfig` or the path of its JSON);
            default: ``config.json`` next to the model, if there is one.
        check_frames: Real frames for the numeric check as well as random ones: a stack
            or folder path, an array (one frame (H, W[, C]) or a stack (T, H, W[, C])),
            or a list of frames. They are normalized as the contract says and cut to at
            most 512 x 512 pixels (a multiple of the alignment).
        atol: Largest absolute difference allowed between ONNX Runtime and Keras.
        window: Export a ConvLSTM model as its clip (window) model, not as a step model.

    Returns:
        The contract written into the model.

    Raises:
        ModelError: If the Keras model cannot be loaded.
        ConfigError: If the training configuration cannot be read.
        ExportError: If conversion fails or ONNX Runtime disagrees with Keras by more
            than ``atol`` (no file is left at ``onnx_path``).
        OutputError: If the output cannot be written.
        MissingDependencyError: If TensorFlow, tf2onnx or onnx is not installed.
    """
    for module in ("tensorflow", "tf2onnx", "onnx"):
        require(module, "train")
    source, target = Path(model_keras_path), Path(onnx_path)
    if not atol > 0:
        raise ConfigError(f"atol must be positive, got {atol!r}")
    if not source.is_file():
        raise ModelError(f"cannot export {source}: no such file")
    if target.resolve() == source.resolve():
        raise OutputError(f"output {target} would overwrite the Keras model")
    if not target.parent.is_dir():
        raise OutputError(f"cannot write {target}: folder {target.parent} does not exist")
    train_config = _training_config(source, config)
    model = load_keras_model(source)
    contract = _contract_from_config(model, train_config, window) if train_config else None
    exported = model
    if contract is not None and contract.temporal == "stateful":
        assert train_config is not None
        exported = _step_model(model, train_config)
    proto = _convert(exported, source)

    with atomic_output(target) as tmp:
        _save(proto, tmp)
        if contract is None:
            contract = _measured_contract(model, tmp)
        elif train_config is not None and _halo_from_graph(train_config):
            contract = contract.replace(halo=_graph_halo(tmp))
        proto.metadata_props.add(key=CONTRACT_KEY, value=contract.to_json())
        _save(proto, tmp)
        _check(model, tmp, contract, check_frames, atol)
    return contract


def _step_model(model: Any, config: TrainConfig) -> Any:
    """The step model of a trained ConvLSTM clip model, with its weights."""
    from .train.models import build_convlstm_step, copy_weights

    step, _ = build_convlstm_step(config.model_config())
    copy_weights(model, step)
    return step


def load_keras_model(path: str | os.PathLike[str]) -> Any:
    """Load a ``.keras`` model (with unetrt's custom layers) for inference.

    Raises:
        ModelError: If the file is not a loadable Keras model.
    """
    keras = require("keras", "train")
    from .train import models  # noqa: F401  (registers unetrt's custom layers with Keras)

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises ValueError, OSError, zipfile errors, ...
        raise ModelError(f"cannot load Keras model {path}: {exc}") from exc


# ------------------------------------------------------------------------- contract
def _training_config(
    model_path: Path, config: TrainConfig | str | os.PathLike[str] | None
) -> TrainConfig | None:
    from .train.config import TrainConfig, load_config

    if isinstance(config, TrainConfig):
        return config
    if config is None:
        # a checkpoint (``run/checkpoints/epochNNNN.keras``) belongs to the run above it
        for folder in (model_path.parent, model_path.parent.parent):
            if (folder / CONFIG_NAME).is_file():
                return load_config(folder / CONFIG_NAME)
        return None
    return load_config(Path(config))


def _input_shape(model: Any) -> tuple[int | None, ...]:
    inputs = model.inputs
    if len(inputs) != 1:
        raise ExportError(f"the model has {len(inputs)} inputs; unetrt exports one-input models")
    shape = tuple(inputs[0].shape)
    if len(shape) not in (4, 5):
        raise ExportError(
            f"the model input has shape {shape}; unetrt exports frame models "
            f"(batch, H, W, C) and clip models (batch, T, H, W, C)"
        )
    return shape


def _contract_from_config(model: Any, config: TrainConfig, window: bool) -> ModelContract:
    from .channels import inference_codes
    from .contract import StateSpec
    from .train.unet_config import alignment, receptive_field

    cfg = config.model_config()
    shape = _input_shape(model)
    if shape[-1] != cfg.channels_in or (len(shape) == 5) != (cfg.temporal == "convlstm"):
        raise ExportError(
            f"the training config describes a {cfg.temporal!r} model with "
            f"{cfg.channels_in} input channel(s), but the Keras model takes {shape}; "
            f"is the config next to the model the one it was trained with?"
        )
    if window and cfg.temporal != "convlstm":
        raise ExportError("--window exports ConvLSTM models as clip models; this is a frame model")
    temporal = "none"
    states: tuple[StateSpec, ...] = ()
    if cfg.temporal == "convlstm":
        temporal = "window" if window else "stateful"
    # A step model's halo is one step's field over all its inputs (`receptive_field`).
    steps = 1 if temporal == "stateful" else None
    if config.halo is not None:
        halo = config.halo
    elif _halo_from_graph(config):
        halo = 0  # replaced by the exported graph's bound (`_graph_halo`)
    else:
        halo = receptive_field(cfg, steps)
    if temporal == "stateful":
        from .train.models import build_convlstm_step

        _, built = build_convlstm_step(cfg)
        states = tuple(StateSpec(x.input, x.output, x.channels, x.stride) for x in built)
    return ModelContract(
        channels=cfg.channels_in,
        layout="NHWC",
        alignment=alignment(cfg),
        halo=int(halo),
        normalization=config.normalization,
        output="softmax" if cfg.output == "softmax" else "sigmoid",
        classes=config.classes,
        temporal=temporal,
        time_steps=cfg.time_steps,
        states=states,
        input_channels=inference_codes(config.channel_codes),
    )


def _halo_from_graph(config: TrainConfig) -> bool:
    """Whether the halo is bounded from the exported graph: the architectures without a
    closed-form receptive field (`unetrt.train.unet_config.receptive_field`), unless the
    configuration sets ``newinfer_padding``."""
    return config.halo is None and config.model_config().architecture != "unet"


def _graph_halo(onnx_file: Path) -> int:
    """The receptive-field bound of an exported frame model's mask output."""
    from .onnxgraph import read_graph, receptive_field

    graph = read_graph(onnx_file)
    bound = receptive_field(graph, INPUT_NAME, layout="NHWC", outputs=graph.outputs[:1])
    if bound.radius is None:
        raise ExportError(
            f"cannot bound the receptive field of the exported model ({bound.reason}); "
            f"set newinfer_padding in the training configuration"
        )
    return bound.radius


def _measured_contract(model: Any, onnx_file: Path) -> ModelContract:
    """The contract of a frame model without a training config, probed from the ONNX file."""
    from .backends.onnxruntime import OnnxRuntimeBackend
    from .model import infer_contract

    shape = _input_shape(model)
    if len(shape) == 5:
        raise ExportError(
            f"a clip model (input {shape}) needs its training config to be exported: "
            f"put the {CONFIG_NAME} written by `unetrt train` next to it or pass --config"
        )
    backend = OnnxRuntimeBackend(onnx_file, layout="NHWC")
    try:
        contract, _ = infer_contract(backend, {"layout": "NHWC"}, graph_source=onnx_file)
    finally:
        backend.close()
    return contract


# ------------------------------------------------------------------------ conversion
def _convert(model: Any, source: Path) -> Any:
    tf = require("tensorflow", "train")
    tf2onnx = require("tf2onnx", "train")
    # The image input is "frame"; a step model's state inputs keep their Keras names.
    names_in = [INPUT_NAME, *(_input_name(t) for t in model.inputs[1:])]
    spec = tuple(
        tf.TensorSpec((None, *t.shape[1:]), tf.float32, name=name)
        for t, name in zip(model.inputs, names_in, strict=True)
    )
    names = _output_names(model)

    @tf.function(input_signature=spec)
    def run(*inputs: Any) -> dict[str, Any]:
        outputs = model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        return dict(zip(names, outputs, strict=True))

    try:
        proto, _ = tf2onnx.convert.from_function(run, input_signature=spec, opset=OPSET)
    except Exception as exc:  # tf2onnx raises plain Exceptions for unsupported ops
        raise ExportError(f"cannot convert {source} to ONNX: {exc}") from exc
    # The graph lists dict outputs sorted by name; the engine reads the first, the mask.
    by_name = {o.name: o for o in proto.graph.output}
    ordered = [by_name[n] for n in names]
    del proto.graph.output[:]
    proto.graph.output.extend(ordered)
    proto.producer_name = "unetrt"
    return proto


def _input_name(tensor: Any) -> str:
    return str(tensor.name).split(":")[0]


def _output_names(model: Any) -> list[str]:
    names = list(getattr(model, "output_names", None) or [])
    if len(names) != len(model.outputs) or len(set(names)) != len(names):
        names = [f"output_{i}" for i in range(len(model.outputs))]
    return names


def _save(proto: Any, path: Path) -> None:
    onnx = require("onnx", "train")
    onnx.save(proto, os.fspath(path))


# --------------------------------------------------------------------- numeric check
def _check(
    model: Any,
    onnx_file: Path,
    contract: ModelContract,
    check_frames: FrameInput | None,
    atol: float,
) -> None:
    """Run Keras and ONNX Runtime on the same inputs; raise `ExportError` if they differ."""
    import onnxruntime as ort

    session = ort.InferenceSession(os.fspath(onnx_file), providers=["CPUExecutionProvider"])
    wanted = [INPUT_NAME, *(x.input for x in contract.states)]
    if [i.name for i in session.get_inputs()] != wanted:
        raise ExportError(f"the exported model's inputs are not {wanted}")
    batches = [("random frames", _random_batch(contract))]
    if check_frames is not None:
        batches.append(("the given frames", _real_batch(check_frames, contract)))
    for what, batch in batches:
        expected = model(batch, training=False)
        if not isinstance(expected, (list, tuple)):
            expected = [expected]
        got = _run_exported(session, batch, contract)
        for index, (keras_out, onnx_out) in enumerate(zip(expected, got, strict=True)):
            keras_out = np.asarray(keras_out)
            if keras_out.shape != onnx_out.shape:
                raise ExportError(
                    f"on {what} {batch.shape}, output {index} of ONNX Runtime has shape "
                    f"{onnx_out.shape} but Keras gives {keras_out.shape}"
                )
            diff = float(np.abs(keras_out - onnx_out).max())
            if not diff <= atol:  # also catches NaN
                raise ExportError(
                    f"the exported model differs from the Keras model by {diff:.3g} "
                    f"(allowed {atol:g}) on {what} {batch.shape}, output {index}; "
                    f"no ONNX file was written"
                )


def _run_exported(session: Any, batch: np.ndarray, contract: ModelContract) -> list[np.ndarray]:
    """The exported model's outputs for a Keras input batch: a step model runs the clip
    step by step from zero state and returns its last step's heads."""
    if contract.temporal != "stateful":
        return list(session.run(None, {INPUT_NAME: batch}))
    from .model import zero_state

    names = [o.name for o in session.get_outputs()]
    state_outputs = {x.output for x in contract.states}
    feeds = {x.input: zero_state(x, contract.layout, batch[:, 0].shape) for x in contract.states}
    for t in range(batch.shape[1]):
        got = dict(zip(names, session.run(None, {INPUT_NAME: batch[:, t], **feeds}), strict=True))
        feeds = {x.input: got[x.output] for x in contract.states}
    return [got[n] for n in names if n not in state_outputs]


def _shape_for(contract: ModelContract, model_shape_hw: tuple[int, int]) -> tuple[int, ...]:
    h, w = model_shape_hw
    if contract.temporal in ("window", "stateful"):
        return (2, contract.time_steps, h, w, contract.channels)
    return (2, h, w, contract.channels)


def _random_batch(contract: ModelContract) -> np.ndarray:
    a = contract.alignment
    # Unequal sides, so a model that mixes up height and width is caught.
    h, w = -(-96 // a) * a, -(-64 // a) * a
    rng = np.random.default_rng(0)
    return rng.random(_shape_for(contract, (h, w)), dtype=np.float32)


def _real_batch(source: FrameInput, contract: ModelContract) -> np.ndarray:
    from .normalize import normalize_frame
    from .pipeline import FrameChecks, check_frame, fit_statistics

    raw = FrameChecks(channels=contract.channels, codes=contract.input_channels)
    frames = [
        check_frame(f, raw, f"check frame {i}")  # the model's channels of raw frames
        for i, f in enumerate(_read_check_frames(source, contract))
    ]
    spec = contract.normalization
    # The statistics step inference uses, so a stack-scope model is checked as it runs.
    stats = fit_statistics(
        frames.__getitem__,
        len(frames),
        contract,
        FrameChecks(channels=contract.channels),
        lambda i: f"check frame {i}",
    )
    normalized = [normalize_frame(f, spec, stats) for f in frames]
    a = contract.alignment
    h = min(normalized[0].shape[0], MAX_CHECK_SIZE) // a * a
    w = min(normalized[0].shape[1], MAX_CHECK_SIZE) // a * a
    if h == 0 or w == 0:
        raise ConfigError(
            f"check frames of {normalized[0].shape[:2]} pixels are smaller than the "
            f"model's alignment {a}"
        )
    cut = np.stack([f[:h, :w].reshape(h, w, contract.channels) for f in normalized])
    if contract.temporal in ("window", "stateful"):
        clips = len(cut) // contract.time_steps
        return np.ascontiguousarray(cut[: clips * contract.time_steps]).reshape(
            clips, contract.time_steps, h, w, contract.channels
        )
    return np.ascontiguousarray(cut, dtype=np.float32)


def _read_check_frames(source: FrameInput, contract: ModelContract) -> list[np.ndarray]:
    """Up to `MAX_CHECK_FRAMES` frames (or clips' worth of frames) from a path or arrays."""
    wanted = MAX_CHECK_FRAMES * contract.time_steps
    if isinstance(source, (str, os.PathLike)):
        from .io import open_frames

        with open_frames(source) as stack:
            count = min(len(stack), wanted)
            frames = [stack.read(i) for i in range(count)]
    else:
        array_or_list = source
        if isinstance(array_or_list, np.ndarray):
            grey = contract.channels == 1
            single = array_or_list.ndim == (2 if grey else 3)
            array_or_list = [array_or_list] if single else list(array_or_list)
        frames = [np.asarray(f) for f in list(array_or_list)[:wanted]]
    if len(frames) < contract.time_steps:
        raise ConfigError(
            f"the numeric check of a {contract.time_steps}-frame clip model needs at least "
            f"{contract.time_steps} check frames, got {len(frames)}"
        )
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise ConfigError(f"check frames must all have one shape, got {sorted(shapes)}")
    return frames


def describe(contract: ModelContract) -> str:
    """One line per contract field, for the command line."""
    return "\n".join(f"  {k:<14} {json.dumps(v)}" for k, v in contract.to_dict().items())

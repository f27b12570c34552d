"""The model contract: how a model wants to be fed and how its output is read.

An ONNX model exported by unetrt carries this contract as JSON in its
``metadata_props`` under the key ``"unetrt"``. The exporter writes it and the engine
reads it; this module is the single definition both sides use. A foreign model
without it gets a contract inferred from its graph (see ``unetrt.model``), which the
user can override with flags.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .channels import ChannelCode, parse_codes
from .errors import ConfigError, ModelError, check_keys
from .normalize import Normalization

#: Names that export, training and the engine share (one definition for all of them).
#: ONNX ``metadata_props`` key holding the contract JSON.
CONTRACT_KEY = "unetrt"
#: Suffix of the contract file beside a compiled engine: ``model.engine.unetrt.json``.
SIDECAR_SUFFIX = ".unetrt.json"
#: ONNX ``metadata_props`` key (in a sidecar: the key ``"engine"``) describing a model
#: that ``unetrt build-engine`` made: the backend and precision it was built for.
ENGINE_KEY = "unetrt.engine"
#: The training configuration `unetrt train` writes beside its model (read by export).
CONFIG_NAME = "config.json"
#: Name of the image input of models exported by unetrt.
INPUT_NAME = "frame"
#: Version 2 added ``states`` (temporal step models); version-1 contracts read as before.
CONTRACT_VERSION = 2

LAYOUTS = ("NHWC", "NCHW")
OUTPUT_KINDS = ("sigmoid", "softmax", "logits")
TEMPORAL_KINDS = ("none", "window", "stateful")
INPUT_DTYPES = ("float32", "float16")


def check_layout(layout: str) -> None:
    """Raises ConfigError unless ``layout`` is one of `LAYOUTS`."""
    if layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {LAYOUTS}, got {layout!r}")


@dataclass(frozen=True)
class StateSpec:
    """One recurrent state of a temporal step model (``temporal: "stateful"``).

    The model reads the state of the previous frame from `input` and writes the state
    after this frame to `output`; both are 4-D in the model's ``layout``, with
    `channels` channels and height and width the frame's divided by `stride`.

    Attributes:
        input: Name of the state input.
        output: Name of the state output.
        channels: Channels of the state tensor.
        stride: Frame pixels per state pixel (a power of two dividing the alignment).
    """

    input: str
    output: str
    channels: int
    stride: int = 1

    def __post_init__(self) -> None:
        for name in ("input", "output"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ModelError(f"model contract: a state's {name} must be a tensor name")
        if isinstance(self.channels, bool) or not isinstance(self.channels, int):
            raise ModelError(f"model contract: state {self.input!r} channels must be an integer")
        if self.channels < 1:
            raise ModelError(f"model contract: state {self.input!r} channels must be >= 1")
        s = self.stride
        if isinstance(s, bool) or not isinstance(s, int) or s < 1 or s & (s - 1):
            raise ModelError(
                f"model contract: state {self.input!r} stride must be a power of two, got {s!r}"
            )

    @classmethod
    def from_dict(cls, data: Any) -> StateSpec:
        """Parse ``{"input", "output", "channels", "stride"}``."""
        if not isinstance(data, dict):
            raise ModelError(f"model contract: each state must be an object, got {data!r}")
        known = (f.name for f in dataclasses.fields(cls))
        try:
            return cls(**check_keys(data, "model contract state", known, ModelError))
        except TypeError as exc:  # a required key left out
            raise ModelError(f"model contract: state {data!r} is invalid: {exc}") from exc


@dataclass(frozen=True)
class ModelContract:
    """How to feed a model and read its output.

    Attributes:
        channels: Input channels per frame (1 for grey microscopy).
        input_dtype: Element type of the model input tensor.
        layout: ``"NHWC"`` (as Keras exports) or ``"NCHW"``.
        alignment: Input height and width must be multiples of this (``2**pools``).
        halo: Receptive-field radius in pixels: the context a tile needs on each side.
        normalization: How raw frames become model input (same code as training).
        output: ``"sigmoid"`` (per-channel foreground probability), ``"softmax"``
            (class probabilities) or ``"logits"`` (raw scores; the engine applies
            sigmoid for one channel, softmax for several).
        threshold: Foreground threshold for one-channel outputs.
        classes: Class names, background first.
        temporal: ``"none"`` for frame models; ``"window"`` for models fed a clip of
            ``time_steps`` frames; ``"stateful"`` for step models carrying a state.
        time_steps: Frames per clip for ``"window"`` models; for ``"stateful"`` models
            the window they were trained on (window mode's default); 1 for frame models.
        states: The recurrent states of a ``"stateful"`` model (`StateSpec`), empty for
            the others. The image input is the one input not named here, the prediction
            the one output not named here. ``halo`` then covers one step over all inputs.
        input_channels: How raw multi-channel frames become the model's ``channels``
            input channels (`unetrt.channels.ChannelCode`, one per channel, the
            inference form of the training configuration's ``data_channels``); empty:
            frames are fed as they are.
        version: Contract schema version.
    """

    channels: int = 1
    input_dtype: str = "float32"
    layout: str = "NHWC"
    alignment: int = 1
    halo: int = 0
    normalization: Normalization = field(default_factory=Normalization)
    output: str = "sigmoid"
    threshold: float = 0.5
    classes: tuple[str, ...] = ("background", "foreground")
    temporal: str = "none"
    time_steps: int = 1
    states: tuple[StateSpec, ...] = ()
    input_channels: tuple[ChannelCode, ...] = ()
    version: int = field(default=CONTRACT_VERSION, compare=False)  # the schema, not meaning

    def __post_init__(self) -> None:
        def bad(name: str, value: object, expected: str) -> ModelError:
            return ModelError(f"model contract: {name} must be {expected}, got {value!r}")

        if not isinstance(self.channels, int) or self.channels < 1:
            raise bad("channels", self.channels, "a positive integer")
        if self.input_dtype not in INPUT_DTYPES:
            raise bad("input_dtype", self.input_dtype, f"one of {INPUT_DTYPES}")
        if self.layout not in LAYOUTS:
            raise bad("layout", self.layout, f"one of {LAYOUTS}")
        a = self.alignment
        if not isinstance(a, int) or a < 1 or a & (a - 1):
            raise bad("alignment", a, "a power of two (2**pools)")
        if not isinstance(self.halo, int) or self.halo < 0:
            raise bad("halo", self.halo, "a non-negative number of pixels")
        if self.output not in OUTPUT_KINDS:
            raise bad("output", self.output, f"one of {OUTPUT_KINDS}")
        if not 0.0 < float(self.threshold) < 1.0:
            raise bad("threshold", self.threshold, "in (0, 1)")
        if len(self.classes) < 2:
            raise bad("classes", self.classes, "at least two names, background first")
        if self.temporal not in TEMPORAL_KINDS:
            raise bad("temporal", self.temporal, f"one of {TEMPORAL_KINDS}")
        if not isinstance(self.time_steps, int) or self.time_steps < 1:
            raise bad("time_steps", self.time_steps, "a positive integer")
        if self.temporal == "none" and self.time_steps != 1:
            raise bad("time_steps", self.time_steps, "1 for a frame model (temporal 'none')")
        if (self.temporal == "stateful") != bool(self.states):
            raise bad(
                "states",
                [dataclasses.asdict(x) for x in self.states],
                "a list of the step model's states for temporal 'stateful', and empty for "
                "other models",
            )
        for state in self.states:
            if self.alignment % state.stride:
                raise bad(
                    f"state {state.input!r} stride", state.stride, "a divisor of the alignment"
                )
        codes = [c.to_json() for c in self.input_channels]
        if self.input_channels and len(self.input_channels) != self.channels:
            raise bad("input_channels", codes, f"one code per input channel ({self.channels})")
        if any(c != c.at_inference() for c in self.input_channels):
            raise bad(
                "input_channels",
                codes,
                "inference codes (channel indices and merges, without dropout or random "
                "draws; export turns a training configuration's data_channels into them)",
            )
        names = [n for x in self.states for n in (x.input, x.output)]
        if len(set(names)) != len(names):
            raise bad("states", names, "distinct tensor names")
        if self.version > CONTRACT_VERSION:
            raise ModelError(
                f"model contract version {self.version} is newer than this unetrt "
                f"understands ({CONTRACT_VERSION}); upgrade unetrt"
            )

    def replace(self, **changes: Any) -> ModelContract:
        """Return a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, as stored in the ONNX metadata."""
        out = dataclasses.asdict(self)
        out["classes"] = list(self.classes)
        out["states"] = [dataclasses.asdict(x) for x in self.states]
        # Left out when empty: contracts without codes read as before.
        del out["input_channels"]
        if self.input_channels:
            out["input_channels"] = [c.to_json() for c in self.input_channels]
        return out

    def to_json(self) -> str:
        """Serialize to the JSON string stored under ``metadata_props["unetrt"]``."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelContract:
        """Build and validate a contract from its plain-JSON form.

        Raises:
            ModelError: On unknown keys or invalid values.
        """
        known = (f.name for f in dataclasses.fields(cls))
        values = dict(check_keys(data, "model contract", known, ModelError))
        if "normalization" in values:
            values["normalization"] = Normalization.from_dict(values["normalization"])
        if "classes" in values:
            values["classes"] = tuple(values["classes"])
        if "states" in values:
            states = values["states"]
            if not isinstance(states, list):
                raise ModelError(f"model contract: states must be a list, got {states!r}")
            values["states"] = tuple(StateSpec.from_dict(x) for x in states)
        if "input_channels" in values:
            try:
                values["input_channels"] = parse_codes(values["input_channels"], "input_channels")
            except ConfigError as exc:
                raise ModelError(f"model contract: {exc}") from exc
        try:
            return cls(**values)
        except TypeError as exc:  # wrong value types that __post_init__ cannot compare
            raise ModelError(f"model contract is invalid: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> ModelContract:
        """Parse the JSON stored in an ONNX model's metadata.

        Raises:
            ModelError: If the text is not valid JSON or not a valid contract.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(f"model contract is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


@dataclass(frozen=True)
class StoredContract:
    """A contract as a model file states it.

    Attributes:
        contract: The contract; fields the file leaves out have their defaults.
        fields: The fields the file states. A model with every field stated opens
            without probe runs; the others are inferred (see `unetrt.model`).
        source: Where it was read from, in words (``"ONNX metadata"`` or the sidecar).
    """

    contract: ModelContract
    fields: frozenset[str]
    source: str

    @property
    def complete(self) -> bool:
        """True when the file states every field (nothing needs inferring)."""
        return self.fields >= CONTRACT_FIELDS - {"states", "input_channels"}


#: The contract fields a model states (all but the schema version). ``states`` and
#: ``input_channels`` are never inferred: a model that has them states them (a contract
#: without them means none).
CONTRACT_FIELDS = frozenset(f.name for f in dataclasses.fields(ModelContract)) - {"version"}


def sidecar_path(model: str | os.PathLike[str]) -> Path:
    """The contract file beside a model or compiled engine: ``<file>.unetrt.json``."""
    path = Path(model)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def read_contract(model: str | os.PathLike[str] | bytes) -> StoredContract | None:
    """Read the contract a model carries, without loading the model into a runtime.

    A sidecar ``<file>.unetrt.json`` (a JSON object whose ``"contract"`` key holds the
    contract; other keys describe a compiled engine and are ignored here) wins; else
    the ONNX ``metadata_props`` entry ``"unetrt"``. The ONNX file is read as protobuf
    wire format (`unetrt.onnxgraph`), not parsed into a session.

    Args:
        model: A model or engine file, or serialized ONNX bytes.

    Returns:
        The stored contract, or None if the model carries none.

    Raises:
        ModelError: If the file is missing or unreadable, or its contract is invalid.
    """
    from .onnxgraph import read_metadata

    if not isinstance(model, bytes):
        sidecar = sidecar_path(model)
        if sidecar.is_file():
            return _read_sidecar(sidecar)
        if not Path(model).is_file():
            raise ModelError(f"cannot load model {os.fspath(model)}: no such file")
        if not is_onnx_file(model):  # an OpenVINO IR without a sidecar: nothing stated
            return None
    label = "<model bytes>" if isinstance(model, bytes) else os.fspath(model)
    try:
        text = read_metadata(model).get(CONTRACT_KEY)
    except ModelError as exc:
        raise ModelError(f"cannot load model {label}: {exc}") from exc
    if text is None:
        return None
    try:
        data = json.loads(text)
        contract = ModelContract.from_dict(data)
    except json.JSONDecodeError as exc:
        raise ModelError(f"model {label}: model contract is not valid JSON: {exc}") from exc
    except ModelError as exc:
        raise ModelError(f"model {label}: {exc}") from exc
    return StoredContract(contract, frozenset(data) & CONTRACT_FIELDS, "ONNX metadata")


def _sidecar_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read the model contract {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"model contract {path} must be a JSON object with a 'contract' object")
    return data


def _read_sidecar(path: Path) -> StoredContract:
    data = _sidecar_json(path)
    if not isinstance(data.get("contract"), dict):
        raise ModelError(f"model contract {path} must be a JSON object with a 'contract' object")
    try:
        contract = ModelContract.from_dict(data["contract"])
    except ModelError as exc:
        raise ModelError(f"model contract {path}: {exc}") from exc
    return StoredContract(contract, frozenset(data["contract"]) & CONTRACT_FIELDS, f"{path.name}")


@dataclass(frozen=True)
class EngineInfo:
    """What ``unetrt build-engine`` built a model file for.

    Attributes:
        backend: The backend it runs on (``"onnxruntime"``, ``"openvino"``).
        precision: ``"fp32"``, ``"bf16"`` or ``"int8"``.
        details: The rest, as JSON values: runtime version, calibration, accuracy.
    """

    backend: str
    precision: str
    details: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, as stored."""
        return {"backend": self.backend, "precision": self.precision, **self.details}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> EngineInfo:
        """Parse the stored form.

        Raises:
            ModelError: If it is not an object with string ``backend`` and ``precision``.
        """
        if not (
            isinstance(data, dict)
            and isinstance(data.get("backend"), str)
            and isinstance(data.get("precision"), str)
        ):
            raise ModelError(
                f"{where}: the engine description must be an object with 'backend' and 'precision'"
            )
        rest = {k: v for k, v in data.items() if k not in ("backend", "precision")}
        return cls(data["backend"], data["precision"], rest)


def read_engine(model: str | os.PathLike[str] | bytes) -> EngineInfo | None:
    """What ``unetrt build-engine`` built a model for (sidecar ``"engine"`` or ONNX
    metadata ``"unetrt.engine"``), or None for a model it did not build.

    Raises:
        ModelError: If the description is unreadable or invalid.
    """
    from .onnxgraph import read_metadata

    if not isinstance(model, bytes):
        sidecar = sidecar_path(model)
        if sidecar.is_file():
            data = _sidecar_json(sidecar)
            return (
                None if "engine" not in data else EngineInfo.from_dict(data["engine"], f"{sidecar}")
            )
        if not is_onnx_file(model):
            return None
    label = "<model bytes>" if isinstance(model, bytes) else os.fspath(model)
    text = read_metadata(model).get(ENGINE_KEY)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(f"model {label}: the engine description is not valid JSON: {exc}") from exc
    return EngineInfo.from_dict(data, f"model {label}")


def is_onnx_file(model: str | os.PathLike[str]) -> bool:
    """Whether a model file is ONNX (anything but an OpenVINO IR ``.xml`` or a compiled
    ``.engine`` / ``.plan``), by its name."""
    return Path(model).suffix.lower() not in (".xml", ".engine", ".plan")


def load_contract(model: str | os.PathLike[str] | bytes) -> ModelContract | None:
    """The contract a model carries (sidecar or ONNX metadata), or None; see `read_contract`."""
    stored = read_contract(model)
    return stored.contract if stored is not None else None

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
from dataclasses import dataclass, field
from typing import Any

from .errors import ModelError
from .normalize import Normalization

CONTRACT_KEY = "unetrt"
CONTRACT_VERSION = 1

LAYOUTS = ("NHWC", "NCHW")
OUTPUT_KINDS = ("sigmoid", "softmax", "logits")
TEMPORAL_KINDS = ("none", "window", "stateful")
INPUT_DTYPES = ("float32", "float16")


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
        time_steps: Frames per clip for ``"window"`` models (1 otherwise).
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
    version: int = CONTRACT_VERSION

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
        if not isinstance(data, dict):
            raise ModelError(f"model contract must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"model contract has unknown keys: {', '.join(unknown)}")
        values = dict(data)
        if "normalization" in values:
            values["normalization"] = Normalization.from_dict(values["normalization"])
        if "classes" in values:
            values["classes"] = tuple(values["classes"])
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

"""The backend protocol: what the engine needs from an inference runtime.

A backend holds one loaded model and runs it on named tensors: a mapping from input
names to arrays in, a mapping from output names to arrays out. It describes every tensor
(`TensorSpec`: name, shape with ``None`` for dynamic dims, dtype, layout) and the batch
and tile sizes it accepts (`ShapeRange`: fixed, or min/opt/max as a TensorRT
optimization profile has them). The engine never knows which runtime is behind it;
choosing one is a value (``backend="onnxruntime"``, ``device="cuda:0"``), see
`create_backend`.

Which input is the frame and which output the prediction is the model's business
(`unetrt.model.Model`), not the backend's: a temporal step model has state tensors
beside them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import ConfigError, ModelError


@dataclass(frozen=True)
class Device:
    """A compute device, parsed from ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Attributes:
        kind: ``"cpu"`` or ``"cuda"``.
        index: GPU ordinal for ``"cuda"`` (0 for ``"cpu"``).
    """

    kind: str
    index: int = 0

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"


def parse_device(spec: str | Device) -> Device:
    """Parse a device string.

    Args:
        spec: ``"cpu"``, ``"cuda"`` (meaning ``"cuda:0"``) or ``"cuda:N"``; case and
            surrounding spaces are ignored. A `Device` is returned as is.

    Returns:
        The parsed device.

    Raises:
        ConfigError: If the string names no device, e.g. ``"gpu"`` or ``"cuda:x"``.
    """
    if isinstance(spec, Device):
        return spec
    text = str(spec).strip().lower()
    if text == "cpu":
        return Device("cpu")
    if text == "cuda":
        return Device("cuda", 0)
    kind, sep, index = text.partition(":")
    if kind == "cuda" and sep and index.isdigit():
        return Device("cuda", int(index))
    raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N' (N = GPU number), got {spec!r}")


#: Precisions a backend may compute in (``int8`` only from a quantized model, ``fp16``
#: only from a TensorRT engine built for it).
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass(frozen=True)
class BackendOptions:
    """How to run a model, independent of the runtime.

    Attributes:
        threads: CPU threads for one inference (``None``: the runtime's default, usually
            one per physical core).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; normalised to ``"cpu"`` / ``"cuda:N"``.
        precision: What the runtime computes in where the model leaves it free:
            ``"fp32"`` (default) or ``"bf16"`` (OpenVINO); a TensorRT engine computes
            as it was built (``"fp16"`` among them). A quantized model's int8 layers
            stay int8 either way.
    """

    threads: int | None = None
    device: str = "cpu"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise ConfigError(f"threads must be a positive integer, got {self.threads!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        # Frozen: normalise through object.__setattr__ so "cuda" and "cuda:0" compare equal.
        object.__setattr__(self, "device", str(parse_device(self.device)))

    @property
    def parsed_device(self) -> Device:
        """The device as a `Device` value."""
        return parse_device(self.device)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor of a model.

    Attributes:
        name: The tensor's name in the model.
        shape: Its shape, ``None`` for dynamic dims.
        dtype: Element type the runtime holds it in (float32 or float16).
        layout: ``"NHWC"`` or ``"NCHW"`` for 4-D image-like tensors, else ``None``.
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype[Any]
    layout: str | None = None

    @property
    def channels(self) -> int | None:
        """The channel dimension of a 4-D tensor, ``None`` if dynamic (or not 4-D)."""
        if self.layout is None or len(self.shape) != 4:
            return None
        return self.shape[channel_axis(self.layout)]

    def __str__(self) -> str:
        return f"{self.name!r} {format_shape(self.shape)}"


@dataclass(frozen=True)
class ShapeRange:
    """The batch and tile sizes a backend accepts for an image input.

    ONNX Runtime takes any size where a dim is dynamic (``max_* = None``) and exactly the
    static size where it is not; a TensorRT engine takes what its optimization profile
    allows, and runs fastest at ``opt``.

    Attributes:
        min_batch: Smallest batch.
        opt_batch: The batch the runtime is tuned for.
        max_batch: Largest batch, ``None`` for no limit.
        min_tile: Smallest (height, width).
        opt_tile: The (height, width) the runtime is tuned for, ``None`` if any.
        max_tile: Largest (height, width), ``None`` for no limit.
    """

    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int | None = None
    min_tile: tuple[int, int] = (1, 1)
    opt_tile: tuple[int, int] | None = None
    max_tile: tuple[int, int] | None = None

    @property
    def fixed_batch(self) -> int | None:
        """The one batch size accepted, or ``None`` if several are."""
        return self.min_batch if self.max_batch == self.min_batch else None

    @property
    def fixed_tile(self) -> tuple[int, int] | None:
        """The one (height, width) accepted, or ``None`` if several are."""
        return self.min_tile if self.max_tile == self.min_tile else None

    @classmethod
    def from_shape(cls, shape: tuple[int | None, ...], layout: str) -> ShapeRange:
        """What a runtime with shape-polymorphic dims (ONNX Runtime) accepts.

        Args:
            shape: The 4-D input shape, ``None`` for dynamic dims.
            layout: Its layout.
        """
        batch = shape[0]
        hw = tuple(shape[a] for a in spatial_axes(layout))
        h, w = hw
        fixed_hw = (h, w) if h is not None and w is not None else None
        return cls(
            min_batch=batch or 1,
            opt_batch=batch or 1,
            max_batch=batch,
            min_tile=fixed_hw or (h or 1, w or 1),
            opt_tile=fixed_hw,
            max_tile=fixed_hw,
        )


def detect_layout(shape: tuple[int | None, ...]) -> tuple[str | None, str]:
    """Guess a 4-D image input's layout from its shape.

    The channel dimension is the small static one among dims 1 and 3: a dynamic dim is
    height or width, and so is the larger of two static ones (tiles are larger than the
    channel count).

    Args:
        shape: The input shape, ``None`` for dynamic dims.

    Returns:
        ``(layout, reason)``; layout is ``None`` when the shape cannot tell (both dims
        dynamic or equal), and the reason says why in words.
    """
    d1, d3 = shape[1], shape[3]
    if d3 is not None and (d1 is None or d3 < d1):
        return "NHWC", f"channels last: input shape {format_shape(shape)}"
    if d1 is not None and (d3 is None or d1 < d3):
        return "NCHW", f"channels first: input shape {format_shape(shape)}"
    return None, f"input shape {format_shape(shape)} does not tell where the channels are"


def check_tensor(
    label: str,
    role: str,
    name: str,
    shape: tuple[int | None, ...],
    float_type: bool,
    type_name: str,
    rank: int | None,
) -> None:
    """Refuse a model tensor unetrt cannot feed or read.

    Args:
        label: The model, in words.
        role: ``"input"`` or ``"output"``.
        name: The tensor's name.
        shape: Its shape, ``None`` for dynamic dims.
        float_type: Whether its element type is float32 or float16.
        type_name: Its element type as the runtime names it.
        rank: The rank it must have, ``None`` for any.

    Raises:
        ModelError: Naming the tensor and what unetrt needs.
    """
    if rank is not None and len(shape) != rank:
        raise ModelError(
            f"model {label}: {role} {name!r} has shape {format_shape(shape)} "
            f"(rank {len(shape)}); unetrt needs a 4-D image {role} "
            f"(batch, height, width, channels or batch, channels, height, width)"
        )
    if not float_type:
        raise ModelError(
            f"model {label}: {role} {name!r} is {type_name}; unetrt needs float32 or float16"
        )


def check_feeds(
    label: str, inputs: Mapping[str, TensorSpec], feeds: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The feeds of one run, checked (every input, nothing else, 4-D) and converted to
    contiguous arrays of each input's dtype.

    Raises:
        ModelError: If a feed is missing, unknown or not 4-D.
    """
    if set(feeds) != set(inputs):
        raise ModelError(f"model {label} takes inputs {sorted(inputs)}, got {sorted(feeds)}")
    converted = {}
    for name, array in feeds.items():
        if array.ndim != 4:
            raise ModelError(f"model {label} takes a 4-D batch, got shape {tuple(array.shape)}")
        converted[name] = np.ascontiguousarray(array, dtype=inputs[name].dtype)
    return converted


def describe_feeds(
    inputs: Mapping[str, TensorSpec], feeds: Mapping[str, np.ndarray], layout: str
) -> str:
    """The feeds of a failed run against the model's inputs, in words."""
    if len(inputs) == 1:
        ((array,), (spec,)) = (feeds.values(), inputs.values())
        return (
            f"a batch of shape {tuple(array.shape)} "
            f"(model input {format_shape(spec.shape)}, {layout})"
        )
    parts = [
        f"{n!r} {tuple(a.shape)} (model {format_shape(inputs[n].shape)})" for n, a in feeds.items()
    ]
    return f"inputs {', '.join(parts)} ({layout})"


def format_shape(shape: tuple[int | None, ...]) -> str:
    """Show a shape with ``?`` for dynamic dims, e.g. ``[?, ?, ?, 1]``."""
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def channel_axis(layout: str) -> int:
    """Axis of the channels in a 4-D array of this layout."""
    return 3 if layout == "NHWC" else 1


def spatial_axes(layout: str) -> tuple[int, int]:
    """Axes of height and width in a 4-D array of this layout."""
    return (1, 2) if layout == "NHWC" else (2, 3)


@runtime_checkable
class Backend(Protocol):
    """An inference runtime holding one loaded model.

    Attributes:
        name: Runtime name, e.g. ``"onnxruntime"``.
        device: Where it runs: ``"cpu"`` or ``"cuda:N"``.
        layout: ``"NHWC"`` or ``"NCHW"``: the layout of its 4-D tensors.
        inputs: The model's inputs, in the model's order.
        outputs: The model's outputs, in the model's order.
    """

    name: str
    device: str
    layout: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def run(
        self,
        feeds: Mapping[str, np.ndarray],
        out: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the model once.

        Args:
            feeds: One float32 array per input name, each in the model's layout, with one
                batch size; height and width must suit the model (`accepted`).
            out: Optional float32 buffers for some outputs, of the exact output shapes:
                the backend writes those outputs into them instead of allocating (host
                memory here; device memory for device backends).

        Returns:
            Every output by name, float32 (the buffers of ``out`` where given). Arrays
            the backend allocated may be buffers it reuses: they are valid until the next
            call to ``run``, so copy them (or consume them) before calling again.

        Raises:
            ModelError: If the model rejects the feeds; the message gives the shapes.
        """
        ...

    def accepted(self, name: str | None = None) -> ShapeRange:
        """The batch and tile sizes accepted for an input (default: the first one)."""
        ...

    def metadata(self) -> dict[str, str]:
        """The model file's custom metadata (ONNX ``metadata_props``)."""
        ...

    def close(self) -> None:
        """Release the runtime's resources; the backend is unusable afterwards."""
        ...

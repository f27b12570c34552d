"""The backend protocol: what the tiler needs from an inference runtime.

A backend runs a float32 batch of tiles in the model's own layout and returns a float32
batch in the same layout. The tiler never knows which runtime is behind it; choosing
one is a value (``backend="onnxruntime"``, ``device="cuda:0"``), see `create_backend`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import ConfigError

LAYOUTS = ("NHWC", "NCHW")


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


@dataclass(frozen=True)
class BackendOptions:
    """How to run a model, independent of the runtime.

    Attributes:
        threads: CPU threads for one inference (``None``: the runtime's default, usually
            one per physical core).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; normalised to ``"cpu"`` / ``"cuda:N"``.
    """

    threads: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise ConfigError(f"threads must be a positive integer, got {self.threads!r}")
        # Frozen: normalise through object.__setattr__ so "cuda" and "cuda:0" compare equal.
        object.__setattr__(self, "device", str(parse_device(self.device)))

    @property
    def parsed_device(self) -> Device:
        """The device as a `Device` value."""
        return parse_device(self.device)


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
        layout: ``"NHWC"`` or ``"NCHW"``, for both input and output.
        input_name: Name of the model's image input.
        input_shape: Input shape in the model's layout, ``None`` for dynamic dims.
        output_shape: Output shape in the model's layout, ``None`` for dynamic dims.
        output_channels: Output channels, ``None`` if the model leaves them dynamic.
    """

    name: str
    device: str
    layout: str
    input_name: str
    input_shape: tuple[int | None, ...]
    output_shape: tuple[int | None, ...]
    output_channels: int | None

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on a batch.

        Args:
            batch: float32, 4-D, in the model's layout; height and width must suit the
                model (multiples of its alignment, or its fixed size).

        Returns:
            float32, 4-D, same layout and spatial size as ``batch``. The array may be a
            buffer the backend reuses: it is valid until the next call to ``run``, so copy
            it (or consume it) before calling again.

        Raises:
            ModelError: If the model rejects the batch; the message gives the shapes.
        """
        ...

    def fixed_tile(self) -> tuple[int, int] | None:
        """The model's static (height, width), or ``None`` if either is dynamic."""
        ...

    def max_batch(self) -> int | None:
        """The model's static batch size, or ``None`` if the batch is dynamic."""
        ...

    def metadata(self) -> dict[str, str]:
        """The model file's custom metadata (ONNX ``metadata_props``)."""
        ...

    def close(self) -> None:
        """Release the runtime's resources; the backend is unusable afterwards."""
        ...

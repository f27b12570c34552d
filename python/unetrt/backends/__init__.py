"""Inference backends behind one protocol; `create_backend` picks one by name."""

from __future__ import annotations

import os

from ..errors import ConfigError
from .base import Backend, BackendOptions, Device, detect_layout, parse_device

BACKENDS = ("auto", "onnxruntime", "tensorrt")


def create_backend(
    model: str | os.PathLike[str] | bytes,
    backend: str = "auto",
    device: str = "cpu",
    threads: int | None = None,
    layout: str | None = None,
) -> Backend:
    """Load a model into an inference backend.

    Args:
        model: Path of an ``.onnx`` file, or the serialized model bytes.
        backend: ``"auto"``, ``"onnxruntime"`` or ``"tensorrt"``. ``"auto"`` picks ONNX
            Runtime in this build (TensorRT on CUDA devices once its backend exists).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        threads: CPU threads per inference (``None``: the runtime's default).
        layout: ``"NHWC"`` / ``"NCHW"`` to override the layout detected from the input shape.

    Returns:
        The loaded backend.

    Raises:
        ConfigError: On an unknown backend or device, or one not available in this build.
        ModelError: If the model cannot be loaded or has an unusable input or output.
    """
    options = BackendOptions(threads=threads, device=device)
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "tensorrt":
        raise ConfigError("backend 'tensorrt' is not available in this build yet")
    from .onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(model, options, layout=layout)


__all__ = [
    "BACKENDS",
    "Backend",
    "BackendOptions",
    "Device",
    "create_backend",
    "detect_layout",
    "parse_device",
]

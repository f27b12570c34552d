"""Inference backends behind one protocol; `create_backend` picks one by name."""

from __future__ import annotations

import importlib.util
import os

from ..contract import EngineInfo
from ..errors import ConfigError
from .base import PRECISIONS, Backend, BackendOptions, Device, detect_layout, parse_device

BACKENDS = ("auto", "onnxruntime", "openvino", "tensorrt")


def openvino_available() -> bool:
    """Whether the ``openvino`` package (``unetrt[openvino]``) is installed."""
    return importlib.util.find_spec("openvino") is not None


def choose_backend(
    backend: str = "auto",
    device: str = "cpu",
    precision: str | None = None,
    built: EngineInfo | None = None,
) -> tuple[str, str]:
    """Which backend runs a model, in which precision.

    ``"auto"`` takes the backend a built model (``unetrt build-engine``) was made for;
    otherwise, on the CPU, OpenVINO when it is installed, else ONNX Runtime. The
    precision defaults to the built model's, else ``"fp32"``; ``"int8"`` needs a model
    quantized by ``build-engine``, and a built model runs only in its own precision.

    Args:
        backend: ``"auto"``, ``"onnxruntime"``, ``"openvino"`` or ``"tensorrt"``.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: ``"fp32"``, ``"bf16"``, ``"int8"``, or None for the default.
        built: What the model file was built for, if ``build-engine`` made it.

    Returns:
        ``(backend, precision)``.

    Raises:
        ConfigError: On an unknown name, or a choice the model or this build cannot run.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if precision is not None and precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if built is not None:
        if precision is not None and precision != built.precision:
            raise ConfigError(
                f"this model was built for {built.backend} in {built.precision}; leave "
                f"--precision out, or build it again for {precision} with unetrt build-engine"
            )
        if backend not in ("auto", built.backend) and built.backend == "openvino":
            raise ConfigError(
                f"this model was built for openvino (an OpenVINO IR); use --backend openvino "
                f"or auto, not {backend!r}"
            )
        return (built.backend if backend == "auto" else backend), built.precision
    if precision == "int8":
        raise ConfigError(
            "precision int8 needs a model quantized on your own frames: unetrt build-engine "
            "MODEL --backend onnxruntime --int8 --calibration STACK (or --backend openvino "
            "--precision int8), then segment with --model OUT"
        )
    if backend == "auto":
        on_cpu = parse_device(device).kind == "cpu"
        backend = "openvino" if on_cpu and openvino_available() else "onnxruntime"
    return backend, precision or "fp32"


def create_backend(
    model: str | os.PathLike[str] | bytes,
    backend: str = "auto",
    device: str = "cpu",
    threads: int | None = None,
    layout: str | None = None,
    precision: str = "fp32",
) -> Backend:
    """Load a model into an inference backend.

    Args:
        model: Path of an ``.onnx`` file (or an OpenVINO IR ``.xml``), or the serialized
            ONNX bytes.
        backend: ``"auto"``, ``"onnxruntime"``, ``"openvino"`` or ``"tensorrt"``;
            ``"auto"`` is `choose_backend`'s choice for ``device``.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        threads: CPU threads per inference (``None``: the runtime's default).
        layout: ``"NHWC"`` / ``"NCHW"`` to override the layout detected from the input shape.
        precision: ``"fp32"`` or ``"bf16"`` (OpenVINO); ``"int8"`` for a quantized model.

    Returns:
        The loaded backend.

    Raises:
        ConfigError: On an unknown backend or device, or one not available in this build.
        MissingDependencyError: If the backend's package is not installed.
        ModelError: If the model cannot be loaded or has an unusable input or output.
    """
    if backend == "auto":
        backend, _ = choose_backend(backend, device)
    elif backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    options = BackendOptions(threads=threads, device=device, precision=precision)
    if backend == "tensorrt":
        raise ConfigError("backend 'tensorrt' is not available in this build yet")
    if backend == "openvino":
        from .openvino import OpenVinoBackend

        return OpenVinoBackend(model, options, layout=layout)
    from .onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(model, options, layout=layout)


__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "Backend",
    "BackendOptions",
    "Device",
    "choose_backend",
    "create_backend",
    "detect_layout",
    "openvino_available",
    "parse_device",
]

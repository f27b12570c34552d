"""Inference backends behind one protocol; `create_backend` picks one by name."""

from __future__ import annotations

import importlib.util
import os

from ..contract import EngineInfo
from ..errors import ConfigError, UnetrtError
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
    otherwise, on a GPU, TensorRT (which runs engines built for it); on the CPU, OpenVINO
    when it is installed, else ONNX Runtime. The precision defaults to the built model's,
    else ``"fp32"``; ``"int8"`` needs a model quantized by ``build-engine`` and ``"fp16"``
    a TensorRT engine built for it, and a built model runs only in its own precision.

    Args:
        backend: ``"auto"``, ``"onnxruntime"``, ``"openvino"`` or ``"tensorrt"``.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: ``"fp32"``, ``"fp16"``, ``"bf16"``, ``"int8"``, or None for the default.
        built: What the model file was built for, if ``build-engine`` made it.

    Returns:
        ``(backend, precision)``.

    Raises:
        ConfigError: On an unknown name, or a choice the model or this machine cannot
            run (one line: on a GPU without TensorRT, what is missing).
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
        kinds = {"openvino": "an OpenVINO IR", "tensorrt": "a TensorRT engine"}
        if backend not in ("auto", built.backend) and built.backend in kinds:
            raise ConfigError(
                f"this model was built for {built.backend} ({kinds[built.backend]}); use "
                f"--backend {built.backend} or auto, not {backend!r}"
            )
        return (built.backend if backend == "auto" else backend), built.precision
    if precision == "int8":
        raise ConfigError(
            "precision int8 needs a model quantized on your own frames: unetrt build-engine "
            "MODEL --backend onnxruntime --int8 --calibration STACK (or --backend openvino "
            "--precision int8), then segment with --model OUT"
        )
    if precision == "fp16":
        raise ConfigError(
            "precision fp16 needs a TensorRT engine built for it: unetrt build-engine MODEL "
            "--backend tensorrt --precision fp16, then segment with --model OUT"
        )
    if backend == "auto":
        spec = parse_device(device)
        if spec.kind == "cuda":
            from .tensorrt import CPU_DEVICE, check_tensorrt

            try:
                check_tensorrt(spec, CPU_DEVICE)
            except UnetrtError as exc:  # TensorRT or the GPU missing: one line, as a choice
                raise ConfigError(str(exc)) from None
            backend = "tensorrt"
        else:
            backend = "openvino" if openvino_available() else "onnxruntime"
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
        model: Path of an ``.onnx`` file (or an OpenVINO IR ``.xml``, or a TensorRT
            ``.engine`` built by ``unetrt build-engine``), or the serialized ONNX bytes.
        backend: ``"auto"``, ``"onnxruntime"``, ``"openvino"`` or ``"tensorrt"``;
            ``"auto"`` is `choose_backend`'s choice for ``device``.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (TensorRT: ``"cpu"`` means cuda:0).
        threads: CPU threads per inference (``None``: the runtime's default).
        layout: ``"NHWC"`` / ``"NCHW"`` to override the layout detected from the input shape.
        precision: ``"fp32"`` or ``"bf16"`` (OpenVINO); ``"int8"`` for a quantized model;
            ``"fp16"`` only for a TensorRT engine (built so).

    Returns:
        The loaded backend.

    Raises:
        ConfigError: On an unknown backend or device, or one not available here (no
            CUDA GPU for TensorRT).
        MissingDependencyError: If the backend's package is not installed.
        ModelError: If the model cannot be loaded or has an unusable input or output.
    """
    if backend == "auto":
        backend, _ = choose_backend(backend, device)
    elif backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    options = BackendOptions(threads=threads, device=device, precision=precision)
    if backend == "tensorrt":
        from .tensorrt import TensorRTBackend

        return TensorRTBackend(model, options, layout=layout)
    if precision == "fp16":
        raise ConfigError(
            f"backend {backend!r} does not compute in fp16; fp16 runs TensorRT engines "
            f"(unetrt build-engine MODEL --backend tensorrt --precision fp16)"
        )
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

"""ONNX Runtime backend: runs an ONNX model on the CPU (or CUDA, where the build has it)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import onnxruntime as ort

from ..errors import ConfigError, ModelError
from .base import LAYOUTS, BackendOptions, channel_axis, detect_layout, format_shape, spatial_axes

_DTYPES: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
}


def _ort_message(exc: BaseException) -> str:
    """ONNX Runtime's message without the prefixes that repeat what ours says."""
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", str(exc).strip())
    return re.sub(r"^Load model from .*? failed: ?", "", text)


def _shape(dims: list[Any]) -> tuple[int | None, ...]:
    # ONNX Runtime reports a dynamic dim as its symbolic name (str) or None.
    return tuple(d if isinstance(d, int) and d > 0 else None for d in dims)


class OnnxRuntimeBackend:
    """A model loaded in an ONNX Runtime inference session.

    The session uses all graph optimizations, runs its nodes sequentially, and spreads
    each node over ``options.threads`` threads (ONNX Runtime's default, one per physical
    core, when ``None``). Outputs come from a plain ``session.run``: binding preallocated
    output buffers (io_binding) measured no faster on the CPU for U-Nets, where the
    convolutions dominate.

    Args:
        model: Path of an ``.onnx`` file, or the serialized model bytes.
        options: Threads and device; default CPU with the runtime's thread count.
        layout: ``"NHWC"`` or ``"NCHW"`` to override the layout detected from the input
            shape (a model's contract knows better than the shape); ``None`` detects it,
            assuming NHWC (the Keras export convention) when the shape cannot tell.

    Raises:
        ModelError: If the file is missing or not a valid model, or the model does not
            have exactly one 4-D float image input and a 4-D float output.
        ConfigError: If the layout is not a known one, or the device is not available.
    """

    name = "onnxruntime"

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        options: BackendOptions | None = None,
        layout: str | None = None,
    ) -> None:
        options = options or BackendOptions()
        if layout is not None and layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.device = options.device
        self.label = "<model bytes>" if isinstance(model, bytes) else os.fspath(model)
        self._session: ort.InferenceSession | None = self._load(model, options)
        session = self._session

        inputs = session.get_inputs()
        if len(inputs) != 1:
            names = ", ".join(repr(i.name) for i in inputs)
            raise ModelError(
                f"model {self.label} has {len(inputs)} inputs ({names}); "
                f"unetrt needs a model with one image input"
            )
        self.input_name: str = inputs[0].name
        self.input_shape = _shape(inputs[0].shape)
        self._input_dtype = self._check_tensor("input", inputs[0])
        # A model may have several outputs (e.g. auxiliary heads); the first is the mask.
        output = session.get_outputs()[0]
        self._output_name: str = output.name
        self.output_shape = _shape(output.shape)
        self._check_tensor("output", output)

        if layout is None:
            layout = detect_layout(self.input_shape)[0] or "NHWC"
        self.layout: str = layout
        self.output_channels: int | None = self.output_shape[channel_axis(layout)]
        # Run errors are re-raised as ModelError with the message; ONNX Runtime would also
        # print them to stderr, which is noise when model.py probes sizes that may fail.
        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = 4

    def _load(
        self, model: str | os.PathLike[str] | bytes, options: BackendOptions
    ) -> ort.InferenceSession:
        if not isinstance(model, bytes) and not Path(model).is_file():
            raise ModelError(f"cannot load model {self.label}: no such file")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = options.threads or 0  # 0: ONNX Runtime's default
        so.inter_op_num_threads = 1
        so.log_severity_level = 3  # errors only: optimizer warnings mean nothing to users
        device = options.parsed_device
        providers: list[Any] = ["CPUExecutionProvider"]
        if device.kind == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ConfigError(
                    f"device {self.device!r} needs ONNX Runtime with CUDA "
                    f"(pip install onnxruntime-gpu); this one has only "
                    f"{', '.join(ort.get_available_providers())}"
                )
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index}))
        try:
            session = ort.InferenceSession(
                model if isinstance(model, bytes) else os.fspath(model), so, providers=providers
            )
        except (
            Exception
        ) as exc:  # ONNX Runtime raises its own types, not Exception subclasses we know
            raise ModelError(f"cannot load model {self.label}: {_ort_message(exc)}") from exc
        # ONNX Runtime falls back to the CPU silently when the CUDA libraries fail to load.
        if device.kind == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
            raise ConfigError(
                f"device {self.device!r}: ONNX Runtime could not start CUDA "
                f"(check the CUDA and cuDNN libraries); use device 'cpu'"
            )
        return session

    def _check_tensor(self, role: str, arg: Any) -> np.dtype[Any]:
        shape = _shape(arg.shape)
        if len(shape) != 4:
            raise ModelError(
                f"model {self.label}: {role} {arg.name!r} has shape {format_shape(shape)} "
                f"(rank {len(shape)}); unetrt needs a 4-D image {role} "
                f"(batch, height, width, channels or batch, channels, height, width)"
            )
        if arg.type not in _DTYPES:
            raise ModelError(
                f"model {self.label}: {role} {arg.name!r} is {arg.type}; "
                f"unetrt needs float32 or float16"
            )
        return _DTYPES[arg.type]

    @property
    def session(self) -> ort.InferenceSession:
        """The underlying ONNX Runtime session."""
        if self._session is None:
            raise RuntimeError(f"backend for {self.label} is closed")
        return self._session

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on a batch (see `Backend.run`).

        Args:
            batch: float32, 4-D, in the model's layout.

        Returns:
            float32 output in the same layout and spatial size. A fresh array here, but
            callers must not rely on that (other backends reuse their buffers).

        Raises:
            ModelError: If the model rejects the batch or returns another spatial size.
        """
        if batch.ndim != 4:
            raise ModelError(
                f"model {self.label} takes a 4-D batch, got shape {tuple(batch.shape)}"
            )
        session = self.session
        feed = np.ascontiguousarray(batch, dtype=self._input_dtype)
        try:
            out = session.run([self._output_name], {self.input_name: feed}, self._run_options)[0]
        except Exception as exc:  # ONNX Runtime's own exception types
            raise ModelError(
                f"model {self.label} failed on a batch of shape {tuple(batch.shape)} "
                f"(model input {format_shape(self.input_shape)}, {self.layout}): "
                f"{_ort_message(exc)}"
            ) from exc
        hw_in = tuple(batch.shape[a] for a in spatial_axes(self.layout))
        hw_out = tuple(out.shape[a] for a in spatial_axes(self.layout)) if out.ndim == 4 else None
        if hw_out != hw_in:
            raise ModelError(
                f"model {self.label} returned shape {tuple(out.shape)} for input "
                f"{tuple(batch.shape)}; unetrt needs an output of the input's height and width"
            )
        return np.asarray(out, dtype=np.float32)

    def fixed_tile(self) -> tuple[int, int] | None:
        """The model's static (height, width), or ``None`` if either is dynamic."""
        h, w = (self.input_shape[a] for a in spatial_axes(self.layout))
        return (h, w) if h is not None and w is not None else None

    def max_batch(self) -> int | None:
        """The model's static batch size, or ``None`` if the batch is dynamic."""
        return self.input_shape[0]

    def metadata(self) -> dict[str, str]:
        """The model's custom metadata (``metadata_props`` in the ONNX file)."""
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def close(self) -> None:
        """Release the session; the backend is unusable afterwards."""
        self._session = None

    def __enter__(self) -> OnnxRuntimeBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"OnnxRuntimeBackend({self.label!r}, device={self.device!r}, layout={self.layout!r}, "
            f"input={format_shape(self.input_shape)})"
        )

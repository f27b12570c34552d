"""ONNX Runtime backend: runs an ONNX model on the CPU (or CUDA, where the build has it)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ..closeable import Closeable
from ..contract import check_layout
from ..errors import ConfigError, ModelError
from .base import (
    BackendOptions,
    ShapeRange,
    TensorSpec,
    check_feeds,
    check_tensor,
    describe_feeds,
    detect_layout,
)

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


class OnnxRuntimeBackend(Closeable):
    """A model loaded in an ONNX Runtime inference session.

    The session uses all graph optimizations, runs its nodes sequentially, and spreads
    each node over ``options.threads`` threads (ONNX Runtime's default, one per physical
    core, when ``None``). A model may have several inputs and outputs (a temporal step
    model has its state tensors beside the frame); every input must be a 4-D float
    tensor, every output a float tensor. Outputs the caller hands buffers for are
    written into them through an I/O binding; the others come back as fresh arrays.

    Args:
        model: Path of an ``.onnx`` file, or the serialized model bytes.
        options: Threads and device; default CPU with the runtime's thread count.
        layout: ``"NHWC"`` or ``"NCHW"`` to override the layout detected from the first
            input's shape (a model's contract knows better than the shape); ``None``
            detects it, assuming NHWC (the Keras export convention) when the shape
            cannot tell.

    Raises:
        ModelError: If the file is missing or not a valid model, or an input is not a
            4-D float tensor, or an output not a float tensor.
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
        if layout is not None:
            check_layout(layout)
        if options.precision == "bf16":
            raise ConfigError(
                "backend 'onnxruntime' computes in float32 on the CPU; precision bf16 needs "
                "--backend openvino (unetrt[openvino])"
            )
        self.precision = options.precision
        self.device = options.device
        self.label = "<model bytes>" if isinstance(model, bytes) else os.fspath(model)
        self._session: ort.InferenceSession | None = self._load(model, options)
        session = self._session
        ins, outs = session.get_inputs(), session.get_outputs()
        for role, args, rank in (("input", ins, 4), ("output", outs, None)):
            for arg in args:
                check_tensor(
                    self.label,
                    role,
                    arg.name,
                    _shape(arg.shape),
                    arg.type in _DTYPES,
                    arg.type,
                    rank,
                )
        if layout is None:
            layout = detect_layout(_shape(ins[0].shape))[0] or "NHWC"
        self.layout: str = layout

        def spec(arg: Any) -> TensorSpec:
            shape = _shape(arg.shape)
            return TensorSpec(
                arg.name, shape, _DTYPES[arg.type], layout if len(shape) == 4 else None
            )

        self.inputs: tuple[TensorSpec, ...] = tuple(spec(i) for i in ins)
        self.outputs: tuple[TensorSpec, ...] = tuple(spec(o) for o in outs)
        self._input_names = {t.name: t for t in self.inputs}
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

    @property
    def session(self) -> ort.InferenceSession:
        """The underlying ONNX Runtime session."""
        if self._session is None:
            raise RuntimeError(f"backend for {self.label} is closed")
        return self._session

    def run(
        self,
        feeds: Mapping[str, np.ndarray],
        out: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the model once (see `Backend.run`).

        Raises:
            ModelError: If a feed is missing, unknown or not 4-D, or the model rejects
                the feeds.
        """
        session = self.session
        converted = check_feeds(self.label, self._input_names, feeds)
        try:
            result = self._run_bound(converted, out) if out else None
            if result is None:
                names = [o.name for o in self.outputs]
                values = session.run(names, converted, self._run_options)
                result = {n: np.asarray(v, np.float32) for n, v in zip(names, values, strict=True)}
        except Exception as exc:  # ONNX Runtime's own exception types
            raise ModelError(
                f"model {self.label} failed on "
                f"{describe_feeds(self._input_names, feeds, self.layout)}: {_ort_message(exc)}"
            ) from exc
        for name, buffer in (out or {}).items():
            # Outputs ONNX Runtime could not write in place (a float16 model's): copied in.
            # One of another shape than its buffer is returned as is, for the caller to name.
            value = result[name]
            if value is not buffer and value.shape == buffer.shape:
                np.copyto(buffer, value)
                result[name] = buffer
        return result

    def _run_bound(
        self, feeds: Mapping[str, np.ndarray], out: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray] | None:
        """One run writing outputs straight into the caller's buffers (an I/O binding).

        Only buffers of the output's own dtype are bound. Returns None when the bound run
        fails (an output of another shape than its buffer), so that `run` runs unbound
        and the caller sees what the model really returned.
        """
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        bound: dict[str, np.ndarray] = {}
        for spec in self.outputs:
            buffer = out.get(spec.name)
            if buffer is not None and buffer.dtype == spec.dtype and buffer.flags.c_contiguous:
                binding.bind_ortvalue_output(spec.name, ort.OrtValue.ortvalue_from_numpy(buffer))
                bound[spec.name] = buffer
            else:
                binding.bind_output(spec.name, "cpu")
        try:
            self.session.run_with_iobinding(binding, self._run_options)
        except Exception:  # ONNX Runtime's own types; the unbound run reports it properly
            return None
        values = binding.get_outputs()  # bound ones are the caller's memory: no copy
        return {
            spec.name: bound[spec.name]
            if spec.name in bound
            else np.asarray(value.numpy(), np.float32)
            for spec, value in zip(self.outputs, values, strict=True)
        }

    def accepted(self, name: str | None = None) -> ShapeRange:
        """The batch and tile sizes accepted for an input: its static dims, or any."""
        spec = self.inputs[0] if name is None else self._input_names[name]
        return ShapeRange.from_shape(spec.shape, self.layout)

    def metadata(self) -> dict[str, str]:
        """The model's custom metadata (``metadata_props`` in the ONNX file)."""
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def close(self) -> None:
        """Release the session; the backend is unusable afterwards."""
        self._session = None

    def __repr__(self) -> str:
        return (
            f"OnnxRuntimeBackend({self.label!r}, device={self.device!r}, layout={self.layout!r}, "
            f"inputs=[{', '.join(map(str, self.inputs))}])"
        )

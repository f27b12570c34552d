"""OpenVINO backend: runs an ONNX model or an OpenVINO IR (``.xml`` + ``.bin``) on the CPU.

OpenVINO compiles the model for the processor it runs on. Its precision is a hint to
the CPU plugin: ``fp32`` computes in float32 (the default here, so that tiled runs equal
whole-frame runs), ``bf16`` in bfloat16 where the processor has bfloat16 instructions
(AVX-512 BF16 or AMX). OpenVINO's own default on such processors is bf16; unetrt always
states the hint. An INT8 model (quantized by ``unetrt build-engine --precision int8``)
runs its quantized layers in int8 whatever the hint.
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..closeable import Closeable
from ..contract import check_layout
from ..errors import ConfigError, ModelError, require
from ..onnxgraph import read_graph, read_metadata
from .base import (
    BackendOptions,
    ShapeRange,
    TensorSpec,
    check_feeds,
    check_tensor,
    describe_feeds,
    detect_layout,
)

#: Input shapes whose compiled model is kept (one per frame size of a video, plus probes).
COMPILED_SHAPES = 4

#: unetrt precision name -> OpenVINO ``INFERENCE_PRECISION_HINT``. An int8 model's
#: quantized layers run in int8; its other layers in float32.
_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def _ov() -> Any:
    return require("openvino", "openvino")


def bf16_supported() -> bool:
    """Whether this processor has bfloat16 instructions OpenVINO's CPU plugin uses."""
    return "BF16" in _ov().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _shape(partial: Any) -> tuple[int | None, ...]:
    # An interval dim (``1..``) counts as dynamic, as ONNX Runtime's symbolic dims do.
    return tuple(d.get_length() if d.is_static else None for d in partial)


def _dtype(element_type: Any) -> np.dtype[Any] | None:
    ov = _ov()
    known: dict[Any, np.dtype[Any]] = {
        ov.Type.f32: np.dtype(np.float32),
        ov.Type.f16: np.dtype(np.float16),
    }
    return known.get(element_type)


class OpenVinoBackend(Closeable):
    """A model compiled by OpenVINO for this machine's CPU.

    The model is compiled once per set of input shapes, with those shapes static: a
    video's tiles share one shape, so that is one compilation per frame size (the last
    `COMPILED_SHAPES` are kept). Static shapes are also what OpenVINO computes right:
    its dynamic-shape mode gave wrong outputs for some graphs and sizes (a 17 x 17
    convolution after element-wise ops, off by 0.5 at 24 x 24, exact once static). Each
    compiled model has one infer request, tuned for latency (one stream), with
    ``options.threads`` threads (OpenVINO's default, every core, when ``None``); calls
    from several threads take turns.

    Tensor names are the ONNX graph's own (OpenVINO may give a tensor several names when
    it folds an Identity; the graph's input and output names are the ones kept).

    Args:
        model: An ``.onnx`` file or its bytes, or an OpenVINO IR ``.xml`` (its ``.bin``
            beside it).
        options: Threads, device (CPU only) and precision (``fp32``, ``bf16``, or
            ``int8`` for a quantized model).
        layout: ``"NHWC"`` or ``"NCHW"`` to override the layout detected from the first
            input's shape.

    Raises:
        MissingDependencyError: Without the ``openvino`` package (``unetrt[openvino]``).
        ConfigError: On a CUDA device, or bf16 on a processor without bfloat16
            instructions.
        ModelError: If the model cannot be read or compiled, or its tensors do not suit.
    """

    name = "openvino"

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        options: BackendOptions | None = None,
        layout: str | None = None,
    ) -> None:
        options = options or BackendOptions()
        if layout is not None:
            check_layout(layout)
        ov = _ov()
        self.device = options.device
        if options.parsed_device.kind != "cpu":
            raise ConfigError(
                f"backend 'openvino' runs on the CPU here, not {self.device!r}; use --device cpu "
                f"(or --backend tensorrt for NVIDIA GPUs)"
            )
        if options.precision == "bf16" and not bf16_supported():
            raise ConfigError(
                "precision bf16 needs a processor with bfloat16 instructions (AVX-512 BF16 or "
                "AMX); this one has none, and emulated bf16 is slower than fp32: use fp32"
            )
        self.precision = options.precision
        self.label = "<model bytes>" if isinstance(model, bytes) else os.fspath(model)
        if not isinstance(model, bytes) and not Path(model).is_file():
            raise ModelError(f"cannot load model {self.label}: no such file")
        self._core = ov.Core()
        self._config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": _HINTS[options.precision],
            "PERFORMANCE_HINT": "LATENCY",
        }
        if options.threads is not None:
            self._config["INFERENCE_NUM_THREADS"] = options.threads
        try:
            self._model: Any = self._core.read_model(
                model if isinstance(model, bytes) else os.fspath(model)
            )
        except Exception as exc:  # OpenVINO raises RuntimeError with its own text
            raise ModelError(f"cannot load model {self.label}: {_first_line(exc)}") from exc
        self._metadata = _metadata(model)
        known = graph_names(model)
        ins, outs = self._model.inputs, self._model.outputs
        self._in_names = [port_name(p, known[0]) for p in ins]
        self._out_names = [port_name(p, known[1]) for p in outs]
        for role, ports, names, rank in (
            ("input", ins, self._in_names, 4),
            ("output", outs, self._out_names, None),
        ):
            for port, name in zip(ports, names, strict=True):
                check_tensor(
                    self.label,
                    role,
                    name,
                    _shape(port.get_partial_shape()),
                    _dtype(port.get_element_type()) is not None,
                    str(port.get_element_type()),
                    rank,
                )
        if layout is None:
            layout = detect_layout(_shape(ins[0].get_partial_shape()))[0] or "NHWC"
        self.layout: str = layout

        def spec(port: Any, name: str) -> TensorSpec:
            shape = _shape(port.get_partial_shape())
            dtype = _dtype(port.get_element_type())
            assert dtype is not None  # checked above
            return TensorSpec(name, shape, dtype, layout if len(shape) == 4 else None)

        self.inputs: tuple[TensorSpec, ...] = tuple(map(spec, ins, self._in_names))
        self.outputs: tuple[TensorSpec, ...] = tuple(map(spec, outs, self._out_names))
        self._input_names = {t.name: t for t in self.inputs}
        self._requests: OrderedDict[tuple[Any, ...], Any] | None = OrderedDict()
        self._lock = threading.Lock()

    def _request_for(self, feeds: Mapping[str, np.ndarray]) -> Any:
        """The infer request of the model compiled for these input shapes."""
        requests = self._requests
        if requests is None:
            raise RuntimeError(f"backend for {self.label} is closed")
        key = tuple(feeds[name].shape for name in self._in_names)
        request = requests.get(key)
        if request is not None:
            requests.move_to_end(key)
            return request
        shapes = {port: list(shape) for port, shape in zip(self._model.inputs, key, strict=True)}
        self._model.reshape(shapes)
        compiled = self._core.compile_model(self._model, "CPU", self._config)
        request = compiled.create_infer_request()
        requests[key] = request
        if len(requests) > COMPILED_SHAPES:
            requests.popitem(last=False)
        return request

    def run(
        self,
        feeds: Mapping[str, np.ndarray],
        out: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the model once (see `Backend.run`). Outputs with a buffer in ``out`` are
        copied into it; the others are views of the request's memory, valid until the
        next run."""
        converted = check_feeds(self.label, self._input_names, feeds)
        for name, array in converted.items():  # static dims: reshaping would overwrite them
            declared = self._input_names[name].shape
            if any(d is not None and d != n for d, n in zip(declared, array.shape, strict=True)):
                raise ModelError(
                    f"model {self.label} failed on "
                    f"{describe_feeds(self._input_names, feeds, self.layout)}: input {name!r} "
                    f"has fixed dims that the batch does not match"
                )
        with self._lock:  # an infer request runs one call at a time
            return self._run(converted, feeds, out)

    def _run(
        self,
        converted: Mapping[str, np.ndarray],
        feeds: Mapping[str, np.ndarray],
        out: Mapping[str, np.ndarray] | None,
    ) -> dict[str, np.ndarray]:
        try:
            request = self._request_for(converted)
            request.infer(
                [converted[n] for n in self._in_names], share_inputs=True, share_outputs=True
            )
        except RuntimeError as exc:  # OpenVINO's errors; also a closed backend
            if self._requests is None:
                raise
            raise ModelError(
                f"model {self.label} failed on "
                f"{describe_feeds(self._input_names, feeds, self.layout)}: {_first_line(exc)}"
            ) from exc
        result: dict[str, np.ndarray] = {}
        for i, spec in enumerate(self.outputs):
            value = request.get_output_tensor(i).data
            buffer = (out or {}).get(spec.name)
            if buffer is not None and buffer.shape == value.shape:
                np.copyto(buffer, value)
                result[spec.name] = buffer
            else:  # no buffer, or one of another shape: returned as is for the caller to name
                result[spec.name] = np.asarray(value, np.float32)
        return result

    def accepted(self, name: str | None = None) -> ShapeRange:
        """The batch and tile sizes accepted for an input: its static dims, or any."""
        spec = self.inputs[0] if name is None else self._input_names[name]
        return ShapeRange.from_shape(spec.shape, self.layout)

    def metadata(self) -> dict[str, str]:
        """The ONNX model's custom metadata (``metadata_props``); empty for an IR."""
        return dict(self._metadata)

    def close(self) -> None:
        """Release the compiled models; the backend is unusable afterwards."""
        self._requests = None

    def __repr__(self) -> str:
        return (
            f"OpenVinoBackend({self.label!r}, precision={self.precision!r}, "
            f"layout={self.layout!r}, inputs=[{', '.join(map(str, self.inputs))}])"
        )


def graph_names(model: str | os.PathLike[str] | bytes) -> tuple[set[str], set[str]]:
    """The ONNX graph's input and output names (none known for an IR)."""
    if not isinstance(model, bytes) and Path(model).suffix.lower() == ".xml":
        return set(), set()
    graph = read_graph(model)
    return set(graph.inputs), set(graph.outputs)


def port_name(port: Any, known: set[str]) -> str:
    """A port's name: the graph's own where OpenVINO knows several."""
    names = port.get_names()
    ours = sorted(names & known)
    return ours[0] if ours else (port.get_any_name() if len(names) <= 1 else sorted(names)[0])


def _metadata(model: str | os.PathLike[str] | bytes) -> dict[str, str]:
    """An ONNX model's ``metadata_props``; none for an OpenVINO IR."""
    if not isinstance(model, bytes) and Path(model).suffix.lower() == ".xml":
        return {}
    return read_metadata(model)


def _first_line(exc: BaseException) -> str:
    """OpenVINO's message without the C++ source locations it starts with."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith("Exception from")]
    text = (useful or lines or [type(exc).__name__])[0]
    return re.sub(r" Check '.*", "", text)

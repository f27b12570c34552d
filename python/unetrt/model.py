"""Open a model and find out how to feed it: read its contract, or infer one.

A model exported by unetrt carries its `ModelContract` as JSON in the ONNX metadata
(key ``"unetrt"``), a compiled engine in a sidecar file; `unetrt.contract.read_contract`
reads either without loading the model, and a model whose contract states every field
opens with no probe runs. For the fields a model leaves out (all of them for a foreign
model), `infer_contract` works them out from the input shape, the graph and a few model
runs:

- layout and channels from the input shape;
- alignment (``2**pools``): the smallest power of two ``a`` for which an input of odd
  multiples of ``a`` runs and keeps its size (an odd multiple of ``a`` is not a multiple
  of ``2a``, so a smaller ``a`` fails wherever pooling needs more);
- halo (receptive-field radius): an upper bound derived from the ONNX graph (kernel,
  stride, dilation and padding of every convolution, pooling and resize along every
  path, `unetrt.onnxgraph.receptive_field`), cross-checked with an impulse probe as
  StarDist measures it: run random images, add a large impulse to one pixel, and see
  how far the output changed. Pooling makes the field depend on a pixel's position
  modulo the alignment, so impulses go at three positions, the worst ones for a pooling
  pyramid included. The probe alone underestimates trained networks, whose ReLUs are
  silent over much of the field; it decides only when the graph cannot be bounded (or
  reaches further than the bound, which would be a bug worth reporting). The radius is
  rounded up to a multiple of the alignment;
- output kind from the value range of the probe output.

That costs about twenty model runs, most of them on a 256 x 256 probe (about a second
for a 32-filter, 3-pool U-Net on two CPU cores); it is done only for models without a
full contract, and only for the fields not given as overrides.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .backends import Backend, choose_backend, create_backend
from .backends.base import (
    ShapeRange,
    TensorSpec,
    channel_axis,
    detect_layout,
    format_shape,
    spatial_axes,
)
from .closeable import Closeable
from .contract import (
    EngineInfo,
    ModelContract,
    StateSpec,
    StoredContract,
    is_onnx_file,
    read_contract,
    read_engine,
)
from .errors import ConfigError, ModelError
from .models import resolve_model
from .normalize import Normalization

FIELDS = tuple(f.name for f in dataclasses.fields(ModelContract) if f.name != "version")
MAX_ALIGNMENT = 128
PROBE_SIZE = 256
MAX_PROBE_SIZE = 1024
#: Random probe images per size for the halo cross-check (the largest radius wins).
PROBE_IMAGES = 3
# A change far above any normalised intensity, so its influence stays visible at the edge
# of the receptive field; piecewise-linear networks scale it proportionally.
IMPULSE = 100.0


@dataclasses.dataclass
class Model(Closeable):
    """A loaded model with the contract the engine feeds it by.

    Attributes:
        path: The model file.
        backend: The inference backend holding it.
        contract: How to feed the model and read its output.
        inferred: Where each contract field came from, in words: ``"model contract"``,
            ``"given"`` (an override), ``"default"``, or how it was inferred.
        image: The input that takes frames (tiles).
        prediction: The output the masks come from (the model's first output).
        precision: What the backend computes in: ``"fp32"``, ``"bf16"``, or ``"int8"``
            for a model quantized by ``unetrt build-engine``.
        built: What ``build-engine`` built the file for, None for a plain model.
    """

    path: Path
    backend: Backend
    contract: ModelContract
    inferred: dict[str, str]
    image: TensorSpec
    prediction: TensorSpec
    precision: str = "fp32"
    built: EngineInfo | None = None

    @property
    def accepted(self) -> ShapeRange:
        """Batch and tile sizes the backend accepts for the image input."""
        return self.backend.accepted(self.image.name)

    @property
    def output_channels(self) -> int | None:
        """Channels of the prediction, ``None`` if the model leaves them dynamic."""
        return self.prediction.channels

    @property
    def stateful(self) -> bool:
        """Whether this is a temporal step model (state tensors in and out)."""
        return self.contract.temporal == "stateful"

    def predict(self, batch: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Run the model on a batch of tiles; see `run_prediction`."""
        return run_prediction(self.backend, self.image, self.prediction, batch, out)

    def step(
        self, batch: np.ndarray, states: Mapping[str, np.ndarray], out: np.ndarray | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One step of a step model on a batch of tiles and their state tiles.

        Args:
            batch: float32 tiles, 4-D in the model's layout.
            states: Per state input name (`unetrt.contract.StateSpec.input`), its tiles
                (the tile's size divided by the state's stride).
            out: Optional buffer for the prediction.

        Returns:
            ``(prediction, new_states)``: the prediction as `predict` returns it, and the
            new state tiles by state *input* name (what the next step reads). Arrays the
            runtime allocated may be reused by its next call: copy what is kept.

        Raises:
            ModelError: If the model rejects the tensors or returns other sizes.
        """
        feeds = {self.image.name: batch, **states}
        outputs = self.backend.run(feeds, None if out is None else {self.prediction.name: out})
        prediction = _checked_prediction(outputs, self.backend.layout, self.prediction, batch)
        new: dict[str, np.ndarray] = {}
        for spec in self.contract.states:
            value = outputs[spec.output]
            if value.shape != states[spec.input].shape:
                raise ModelError(
                    f"step model returned state {spec.output!r} of shape {tuple(value.shape)} "
                    f"for state input {spec.input!r} of shape {tuple(states[spec.input].shape)}"
                    f"; the contract says they have the same shape"
                )
            new[spec.input] = value
        return prediction, new

    @property
    def activation_bytes(self) -> float | None:
        """Peak activation memory per pixel of a tile, in bytes (float32, from the
        graph: `unetrt.onnxgraph.activation_bytes`; for a built OpenVINO IR, as
        ``build-engine`` recorded it), or None where it cannot be known."""
        if self.built is not None and "activation_bytes" in self.built.details:
            return float(self.built.details["activation_bytes"])
        if not is_onnx_file(self.path):
            return None
        from .onnxgraph import activation_bytes, read_graph

        try:
            graph = read_graph(self.path)
        except ModelError:
            return None
        return activation_bytes(graph, self.image.name, layout=self.backend.layout)

    def close(self) -> None:
        """Release the backend."""
        self.backend.close()


def run_prediction(
    backend: Backend,
    image: TensorSpec,
    prediction: TensorSpec,
    batch: np.ndarray,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Run a frame model on a batch of tiles and check the prediction's size.

    Args:
        backend: The runtime.
        image: The image input.
        prediction: The output to return.
        batch: float32 tiles, 4-D in the model's layout.
        out: Optional float32 buffer for the prediction (written in place).

    Returns:
        The prediction, float32, same layout and height and width as ``batch``.

    Raises:
        ModelError: If the model rejects the batch or returns another spatial size.
    """
    outputs = backend.run({image.name: batch}, None if out is None else {prediction.name: out})
    return _checked_prediction(outputs, backend.layout, prediction, batch)


def _checked_prediction(
    outputs: Mapping[str, np.ndarray], layout: str, prediction: TensorSpec, batch: np.ndarray
) -> np.ndarray:
    result = outputs[prediction.name]
    hw_in = tuple(batch.shape[a] for a in spatial_axes(layout))
    hw_out = tuple(result.shape[a] for a in spatial_axes(layout)) if result.ndim == 4 else None
    if hw_out != hw_in:
        raise ModelError(
            f"model returned shape {tuple(result.shape)} (output {prediction.name!r}) for "
            f"input {tuple(batch.shape)}; unetrt needs an output of the input's height and "
            f"width"
        )
    return result


def open_model(
    model: str | os.PathLike[str] | None,
    *,
    backend: str = "auto",
    device: str = "cpu",
    threads: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    precision: str | None = None,
) -> Model:
    """Load a model and settle its contract.

    The contract comes from the model (`read_contract`: sidecar or ONNX metadata) as far
    as it goes; fields it leaves out are inferred (`infer_contract`); overrides are
    applied last.

    Args:
        model: The ``.onnx`` file (or a compiled engine with its sidecar), or the name
            of a built-in model (``"default"``); None is the default model.
        backend: ``"auto"``, ``"onnxruntime"``, ``"openvino"`` or ``"tensorrt"``
            (`choose_backend`: a built model's own, else OpenVINO on the CPU where it is
            installed, else ONNX Runtime).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        threads: CPU threads per inference (``None``: the runtime's default).
        overrides: Contract fields to force, e.g. ``{"halo": 64, "layout": "NCHW"}`` (from
            command-line flags; ``None`` values are ignored). ``normalization`` may be a
            `Normalization`, its dict form, or a method name.
        precision: ``"fp32"``, ``"bf16"`` or ``"int8"``; None: the built model's, else fp32.

    Returns:
        The opened model; close it (or use it as a context manager) when done.

    Raises:
        ModelError: If the model cannot be loaded, its contract is invalid, or the
            contract does not fit the model's input.
        ConfigError: On a bad option or override.
    """
    given = _check_overrides(overrides or {})
    path = resolve_model(model)
    label = os.fspath(path)
    stored = read_contract(path)
    built = read_engine(path)
    backend, precision = choose_backend(backend, device, precision, built)
    stated = stored.fields if stored is not None else frozenset()
    layout = given.get("layout")
    if layout is None and stored is not None and "layout" in stated:
        layout = stored.contract.layout
    be = create_backend(path, backend, device, threads, layout=layout, precision=precision)
    try:
        known = {k: getattr(stored.contract, k) for k in stated} if stored is not None else {}
        known.update(given)
        states = known.get("states", ())
        image, prediction = _frame_tensors(be, label, states)
        if states and "halo" not in known:
            raise ModelError(
                f"model {label} is a temporal step model: its contract must state 'halo', "
                f"the receptive-field radius of one step over all its inputs (frame and "
                f"states), in frame pixels"
            )
        contract, inferred = infer_contract(be, known, graph_source=path, image=image)
        if stored is not None:
            # A contract that names no states (any version-1 one) says there are none,
            # and one without channel codes that frames go in as they are.
            inferred.update(dict.fromkeys(stated | {"states", "input_channels"}, _stated(stored)))
        inferred.update(dict.fromkeys(given, "given"))
        _check_fit(be, image, contract, label)
    except BaseException:
        be.close()
        raise
    return Model(path, be, contract, inferred, image, prediction, precision, built)


def _stated(stored: StoredContract) -> str:
    if stored.source == "ONNX metadata":
        return "model contract"
    return f"model contract ({stored.source})"


def _frame_tensors(
    be: Backend, label: str, states: tuple[StateSpec, ...] = ()
) -> tuple[TensorSpec, TensorSpec]:
    """The image input and the prediction output: for a step model, the input and the
    first output its contract's ``states`` do not name."""
    _check_state_tensors(be, label, states)
    state_inputs = {x.input for x in states}
    state_outputs = {x.output for x in states}
    images = [i for i in be.inputs if i.name not in state_inputs]
    if len(images) != 1:
        names = ", ".join(repr(i.name) for i in be.inputs)
        if states:
            raise ModelError(
                f"model {label} has inputs {names}; a step model needs exactly one image "
                f"input besides the state inputs its contract names"
            )
        hint = (
            "; a temporal step model's contract must name its state inputs ('states')"
            if len(be.inputs) > 1
            else ""
        )
        raise ModelError(
            f"model {label} has {len(be.inputs)} inputs ({names}); "
            f"unetrt needs a model with one image input{hint}"
        )
    # A model may have several outputs (e.g. auxiliary heads); the first is the mask.
    outputs = [o for o in be.outputs if o.name not in state_outputs]
    if not outputs:
        raise ModelError(f"model {label} has no output besides its states")
    prediction = outputs[0]
    if len(prediction.shape) != 4:
        raise ModelError(
            f"model {label}: output {prediction.name!r} has shape "
            f"{format_shape(prediction.shape)} (rank {len(prediction.shape)}); unetrt needs "
            f"a 4-D image output (batch, height, width, channels or batch, channels, "
            f"height, width)"
        )
    return images[0], prediction


def _check_state_tensors(be: Backend, label: str, states: tuple[StateSpec, ...]) -> None:
    """Every state the contract names must be a 4-D input and output of the model."""
    inputs = {i.name: i for i in be.inputs}
    outputs = {o.name: o for o in be.outputs}
    for state in states:
        for name, tensors, kind in (
            (state.input, inputs, "input"),
            (state.output, outputs, "output"),
        ):
            spec = tensors.get(name)
            if spec is None:
                raise ModelError(
                    f"model {label}: the contract names state {kind} {name!r}, but the model "
                    f"has no such {kind} ({', '.join(map(repr, tensors))})"
                )
            if len(spec.shape) != 4:
                raise ModelError(
                    f"model {label}: state {kind} {name!r} has shape {format_shape(spec.shape)}"
                    f"; a state must be 4-D like the frame"
                )


def _check_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(overrides) - set(FIELDS))
    if unknown:
        raise ConfigError(
            f"unknown contract override(s) {', '.join(unknown)}; choose from {', '.join(FIELDS)}"
        )
    given = {k: v for k, v in overrides.items() if v is not None}
    norm = given.get("normalization")
    if isinstance(norm, str):
        given["normalization"] = Normalization(method=norm)
    elif isinstance(norm, dict):
        given["normalization"] = Normalization.from_dict(norm)
    if "classes" in given:
        given["classes"] = tuple(given["classes"])
    # Validate the values now, before any model run depends on them; the temporal pair
    # is checked together with the model's own contract later.
    early = {k: v for k, v in given.items() if k not in ("temporal", "time_steps")}
    try:
        ModelContract().replace(**early)
    except (ModelError, TypeError) as exc:
        raise ConfigError(f"invalid override: {exc}") from exc
    return given


def _check_fit(be: Backend, image: TensorSpec, contract: ModelContract, label: str) -> None:
    """Reject a contract that contradicts the model's input shape."""
    dim = image.shape[channel_axis(contract.layout)]
    # A window model sees its clip stacked along the channels.
    frames = contract.time_steps if contract.temporal == "window" else 1
    if dim is not None and dim != contract.channels * frames:
        stacked = f" x {frames} frames" if frames > 1 else ""
        raise ModelError(
            f"model {label}: the contract says {contract.channels} channel(s){stacked} "
            f"({contract.layout}), but the model input {format_shape(image.shape)} "
            f"has {dim}"
        )
    for state in contract.states:
        spec = next(i for i in be.inputs if i.name == state.input)
        dim = spec.shape[channel_axis(contract.layout)]
        if dim is not None and dim != state.channels:
            raise ModelError(
                f"model {label}: the contract says state {state.input!r} has "
                f"{state.channels} channel(s) ({contract.layout}), but the model input "
                f"{format_shape(spec.shape)} has {dim}"
            )
    fixed = be.accepted(image.name).fixed_tile
    if fixed is not None and any(n % contract.alignment for n in fixed):
        raise ModelError(
            f"model {label}: fixed input size {fixed[0]}x{fixed[1]} is not a multiple of "
            f"the contract's alignment {contract.alignment}"
        )


def infer_contract(
    backend: Backend,
    known: Mapping[str, Any] | None = None,
    *,
    graph_source: str | os.PathLike[str] | bytes | None = None,
    image: TensorSpec | None = None,
) -> tuple[ModelContract, dict[str, str]]:
    """Settle a contract: the fields that are known, and the others worked out.

    See the module docstring for the method and its cost. Fields in ``known`` (stated
    by the model, or given by the user) are taken as they are and not inferred; a known
    ``alignment`` is used by the halo probe.

    Args:
        backend: The loaded model.
        known: Contract fields already settled.
        graph_source: The ONNX file (or bytes) to bound the halo from; None: probe only.
        image: The image input (default: the backend's first input).

    Returns:
        ``(contract, inferred)``: the contract and, per field, how it was obtained
        (``"known"`` for the fields of ``known``; callers say where they came from).

    Raises:
        ModelError: If the model runs on no probe size, or the known fields are invalid.
        ConfigError: If a known field (an override) is invalid.
    """
    known = dict(known or {})
    image = image or backend.inputs[0]
    inferred = dict.fromkeys(FIELDS, "default")
    inferred.update(dict.fromkeys(known, "known"))
    values: dict[str, Any] = {}

    if "layout" not in known:
        layout_guess, why = detect_layout(image.shape)
        values["layout"] = backend.layout
        inferred["layout"] = why if layout_guess else f"assumed {backend.layout}: {why}"

    if "channels" not in known:
        channels = image.shape[channel_axis(backend.layout)]
        if channels is None:
            values["channels"] = 1
            inferred["channels"] = "assumed 1: the channel dimension is dynamic"
        else:
            values["channels"] = channels
            inferred["channels"] = f"input shape {format_shape(image.shape)}"

    probe_fields = {"alignment", "halo", "output", "classes"} - set(known)
    if probe_fields:
        channels = known.get("channels", values.get("channels", 1))
        states = tuple(known.get("states", ()))
        prediction = _frame_tensors(backend, "", states)[1] if states else None
        probe = _Probe(backend, image, channels, prediction, states)
        fixed = backend.accepted(image.name).fixed_tile
        if "alignment" in known:
            alignment = int(known["alignment"])
        elif fixed is not None:
            alignment = 1
            inferred["alignment"] = f"1: fixed input size {fixed[0]}x{fixed[1]}"
        else:
            alignment, inferred["alignment"] = _probe_alignment(probe)
        if "alignment" not in known:
            values["alignment"] = alignment

        sample = None
        if "halo" not in known:
            values["halo"], inferred["halo"], sample = _infer_halo(
                probe, alignment, fixed, graph_source
            )
        output = known.get("output")
        if output is None or "classes" not in known:
            if sample is None:
                sample = probe.run(probe.image(*(fixed or _probe_sizes(alignment)[0])))
            k = sample.shape[2]
            if output is None:
                output, inferred["output"] = _output_kind(sample)
                values["output"] = output
            if "classes" not in known:
                # Softmax and logits outputs have a background channel; sigmoids score
                # each foreground class on its own.
                n = 1 if k == 1 else (k if output == "sigmoid" else k - 1)
                names = ["foreground"] if n == 1 else [f"class{i}" for i in range(1, n + 1)]
                values["classes"] = ("background", *names)
                inferred["classes"] = f"{k} output channel(s), {output}"
    try:
        contract = ModelContract(**{**values, **known})
    except (ModelError, TypeError) as exc:
        raise ConfigError(f"invalid override: {exc}") from exc
    return contract, inferred


class _Probe:
    """Runs a model on seeded random images of any size, in its layout and batch."""

    def __init__(
        self,
        backend: Backend,
        image: TensorSpec,
        channels: int,
        prediction: TensorSpec | None = None,
        states: tuple[StateSpec, ...] = (),
    ) -> None:
        self.backend = backend
        self.input = image
        # The prediction is the first output, as for `Model.prediction`.
        self.output = prediction or backend.outputs[0]
        self.channels = channels
        self.states = states  # a step model is probed from zero state
        self.batch = backend.accepted(image.name).fixed_batch or 1
        self.rng = np.random.default_rng(0)

    def image(self, h: int, w: int, kind: int = 0) -> np.ndarray:
        """A random image of size (h, w, c) with values in [0, 1].

        ``kind`` 0 is uniform noise; 1 smooth blobs (cell-like, mostly dark with bright
        spots), 2 noise around mid-grey: different images wake different units of a
        trained network.
        """
        shape = (h, w, self.channels)
        if kind == 0:
            return self.rng.random(shape, dtype=np.float32)
        if kind == 1:
            from scipy.ndimage import gaussian_filter

            blobs = gaussian_filter(self.rng.random(shape, dtype=np.float32), (4, 4, 0))
            lo, hi = float(blobs.min()), float(blobs.max())
            return ((blobs - lo) / max(hi - lo, 1e-6)).astype(np.float32)
        noise = 0.5 + 0.1 * self.rng.standard_normal(shape, dtype=np.float32)
        return np.clip(noise, 0.0, 1.0)

    def run(self, image: np.ndarray) -> np.ndarray:
        """Run an (h, w, c) image; returns the output of the first batch item as (h, w, k)."""
        x = image if self.backend.layout == "NHWC" else image.transpose(2, 0, 1)
        batch = np.ascontiguousarray(np.broadcast_to(x, (self.batch, *x.shape)))
        feeds = {self.input.name: batch}
        for state in self.states:
            feeds[state.input] = zero_state(state, self.backend.layout, batch.shape)
        outputs = self.backend.run(feeds, None)
        out = _checked_prediction(outputs, self.backend.layout, self.output, batch)[0]
        return np.array(out if self.backend.layout == "NHWC" else out.transpose(1, 2, 0))


def zero_state(state: StateSpec, layout: str, frame_shape: tuple[int, ...]) -> np.ndarray:
    """A zero state tensor for a batch of frame tiles of ``frame_shape`` (4-D, `layout`)."""
    shape = list(frame_shape)
    for axis in spatial_axes(layout):
        shape[axis] //= state.stride
    shape[channel_axis(layout)] = state.channels
    return np.zeros(shape, np.float32)


def _probe_alignment(probe: _Probe) -> tuple[int, str]:
    errors = []
    a = 1
    while a <= MAX_ALIGNMENT:
        # Odd multiples of a, at least 16 pixels and 3a; unequal so a model that swaps
        # height and width fails too.
        k = max(16 // a, 3) | 1
        h, w = a * k, a * (k + 2)
        try:
            probe.run(probe.image(h, w))
        except ModelError as exc:
            errors.append(f"{h}x{w}: {exc}")
            a *= 2
            continue
        return a, f"{a}: smallest power of two a for which {h}x{w} (odd multiples of a) runs"
    raise ModelError(
        f"{probe.backend.name} could not run the model on any probe size up to alignment "
        f"{MAX_ALIGNMENT}; last error: {errors[-1]}"
    )


def _impulse_offsets(alignment: int) -> list[int]:
    """Impulse positions modulo the pooling grid: 0 and the two alternating bit patterns.

    Each pooling level rounds a position down; the field reaches furthest where those
    roundings alternate (binary 0101... and 1010...). A grid of 16 stands in for models
    whose pooling the alignment does not show (fixed input size, resizing to the input).
    """
    grid = max(alignment, 16)
    alternating = sum(2**i for i in range(1, grid.bit_length() - 1, 2))
    return sorted({0, alternating, grid - 1 - alternating})


def _probe_sizes(alignment: int) -> list[tuple[int, int]]:
    """Square probe sizes for the halo, multiples of the alignment, growing x2 to the cap."""
    s = -(-PROBE_SIZE // alignment) * alignment
    sizes = [(s, s)]
    while 2 * s <= MAX_PROBE_SIZE:
        s *= 2
        sizes.append((s, s))
    return sizes


def _probe_halo(
    probe: _Probe, alignment: int, fixed: tuple[int, int] | None
) -> tuple[int, str, np.ndarray, bool]:
    """Measure the influence radius of impulses on `PROBE_IMAGES` random images.

    Returns:
        ``(radius, how, sample, bounded)``: the largest radius seen, how it was found,
        the output of an unchanged probe image (for `_output_kind`), and False when the
        response reached the border of the largest probe (the radius is then only a
        lower bound).
    """
    sizes = [fixed] if fixed is not None else _probe_sizes(alignment)
    offsets = _impulse_offsets(alignment)
    grid = max(alignment, 16)
    radius = 0
    sample = None
    for h, w in sizes:
        radius, reached_border = 0, False
        for kind in range(PROBE_IMAGES):
            image = probe.image(h, w, kind)
            base = probe.run(image)
            sample = base if sample is None else sample
            # Any backend noise between identical runs (none on the CPU) is not influence.
            noise = float(np.abs(probe.run(image) - base).max())
            cy, cx = (h // 2) // grid * grid, (w // 2) // grid * grid
            for i, d in enumerate(offsets):
                y, x = min(cy + d, h - 1), min(cx + d, w - 1)
                hit = image.copy()
                hit[y, x, :] += IMPULSE if i % 2 == 0 else -IMPULSE
                changed = (np.abs(probe.run(hit) - base) > noise).any(axis=2)
                rows = np.nonzero(changed.any(axis=1))[0]
                cols = np.nonzero(changed.any(axis=0))[0]
                if rows.size == 0:
                    continue
                top, bottom, left, right = rows[0], rows[-1], cols[0], cols[-1]
                reached_border |= top == 0 or left == 0 or bottom == h - 1 or right == w - 1
                radius = max(radius, int(max(y - top, bottom - y, x - left, right - x)))
        if not reached_border:
            how = f"impulse response radius {radius} on {PROBE_IMAGES} {h}x{w} probes"
            assert sample is not None
            return radius, how, sample, True
    how = (
        f"halo >= {radius}: the impulse response reached the border of a {h}x{w} probe, "
        f"could not bound it"
    )
    assert sample is not None
    return radius, how, sample, False


def _infer_halo(
    probe: _Probe,
    alignment: int,
    fixed: tuple[int, int] | None,
    graph_source: str | os.PathLike[str] | bytes | None,
) -> tuple[int, str, np.ndarray]:
    """The halo: the graph's upper bound, cross-checked by the impulse probe.

    Returns:
        ``(halo, how, sample)``: the halo rounded up to the alignment, how it was found
        (which of the two decided), and a probe output (for `_output_kind`).
    """
    radius, how_probe, sample, bounded = _probe_halo(probe, alignment, fixed)
    bound, why = _graph_bound(graph_source, probe)
    if bound is None:
        halo = _round_up(radius, alignment)
        return halo, f"{halo}: {how_probe} (no graph bound: {why})", sample
    if radius > bound:
        # The graph analysis missed a path: trust what was measured, and say so.
        halo = _round_up(radius, alignment)
        return (
            halo,
            f"{halo}: {how_probe}, above the graph bound {bound} ({why}): the probe decided",
            sample,
        )
    halo = _round_up(bound, alignment)
    check = how_probe if bounded else f"probe: {how_probe}"
    return (
        halo,
        f"{halo}: {why}, rounded up to a multiple of {alignment}; impulse cross-check: {check}",
        sample,
    )


def _graph_bound(
    source: str | os.PathLike[str] | bytes | None, probe: _Probe
) -> tuple[int | None, str]:
    """The graph's bound for the prediction alone (an auxiliary head that pools over the
    frame does not spoil it), or None and why not."""
    if source is None:
        return None, "no ONNX graph"
    from .onnxgraph import read_graph, receptive_field

    try:
        graph = read_graph(source)
    except ModelError as exc:  # e.g. a compiled engine: only the probe can tell
        return None, str(exc)
    found = receptive_field(
        graph, probe.input.name, layout=probe.backend.layout, outputs=[probe.output.name]
    )
    return found.radius, found.reason


def _round_up(n: int, a: int) -> int:
    return -(-int(n) // a) * a


def _output_kind(sample: np.ndarray) -> tuple[str, str]:
    """Guess the output activation from a probe output of shape (h, w, k)."""
    k = sample.shape[2]
    lo, hi = float(sample.min()), float(sample.max())
    span = f"{k} channel(s), values in [{lo:.3g}, {hi:.3g}]"
    if lo < 0.0 or hi > 1.0:
        return "logits", f"logits: {span}"
    if k > 1 and np.allclose(sample.sum(axis=2), 1.0, atol=1e-3):
        return "softmax", f"softmax: {span}, summing to 1 over channels"
    return "sigmoid", f"sigmoid: {span}"

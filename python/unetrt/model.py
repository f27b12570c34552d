"""Open a model and find out how to feed it: read its contract, or infer one.

A model exported by unetrt carries its `ModelContract` as JSON in the ONNX metadata
(key ``"unetrt"``); opening it costs one session creation. A foreign model has no
contract, so `infer_contract` works it out from the input shape and a few model runs:

- layout and channels from the input shape;
- alignment (``2**pools``): the smallest power of two ``a`` for which an input of odd
  multiples of ``a`` runs and keeps its size (an odd multiple of ``a`` is not a multiple
  of ``2a``, so a smaller ``a`` fails wherever pooling needs more);
- halo (receptive-field radius), as StarDist measures it: run a random image, add a large
  impulse to one pixel, and see how far the output changed. Pooling makes the field
  depend on a pixel's position modulo the alignment, so impulses go at three positions,
  the worst ones for a pooling pyramid included; the radius is rounded up to a multiple
  of the alignment;
- output kind from the value range of the probe output.

That costs about ten model runs, most of them on a 256 x 256 probe (about half a second
for a 32-filter, 3-pool U-Net on two CPU cores); it is done only for models without a
contract, and only for the fields not given as overrides.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from .backends import Backend, create_backend
from .backends.base import channel_axis, detect_layout, format_shape
from .contract import CONTRACT_KEY, ModelContract
from .errors import ConfigError, ModelError
from .normalize import Normalization

FIELDS = tuple(f.name for f in dataclasses.fields(ModelContract) if f.name != "version")
MAX_ALIGNMENT = 128
PROBE_SIZE = 256
MAX_PROBE_SIZE = 1024
# A change far above any normalised intensity, so its influence stays visible at the edge
# of the receptive field; piecewise-linear networks scale it proportionally.
IMPULSE = 100.0


@dataclasses.dataclass
class Model:
    """A loaded model with the contract the engine feeds it by.

    Attributes:
        path: The model file.
        backend: The inference backend holding it.
        contract: How to feed the model and read its output.
        inferred: Where each contract field came from, in words: ``"model contract"``,
            ``"given"`` (an override), ``"default"``, or how it was inferred.
    """

    path: Path
    backend: Backend
    contract: ModelContract
    inferred: dict[str, str]

    def close(self) -> None:
        """Release the backend."""
        self.backend.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_model(
    path: str | os.PathLike[str],
    *,
    backend: str = "auto",
    device: str = "cpu",
    threads: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Model:
    """Load a model and settle its contract.

    The contract comes from the model's metadata if it has one, else from
    `infer_contract` (a few model runs). Overrides are applied last.

    Args:
        path: The ``.onnx`` file.
        backend: ``"auto"``, ``"onnxruntime"`` or ``"tensorrt"``.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        threads: CPU threads per inference (``None``: the runtime's default).
        overrides: Contract fields to force, e.g. ``{"halo": 64, "layout": "NCHW"}`` (from
            command-line flags; ``None`` values are ignored). ``normalization`` may be a
            `Normalization`, its dict form, or a method name.

    Returns:
        The opened model; close it (or use it as a context manager) when done.

    Raises:
        ModelError: If the model cannot be loaded, its contract is invalid, or the
            contract does not fit the model's input.
        ConfigError: On a bad option or override.
    """
    given = _check_overrides(overrides or {})
    label = os.fspath(path)
    be = create_backend(path, backend, device, threads, layout=given.get("layout"))
    try:
        text = be.metadata().get(CONTRACT_KEY)
        if text is not None:
            try:
                contract = ModelContract.from_json(text)
            except ModelError as exc:
                raise ModelError(f"model {label}: {exc}") from exc
            inferred = dict.fromkeys(FIELDS, "model contract")
            if "layout" not in given and contract.layout != be.layout:
                # The shape suggested another layout; the contract knows better.
                be.close()
                be = create_backend(path, backend, device, threads, layout=contract.layout)
        else:
            contract, inferred = infer_contract(be, given)
        if given:
            try:
                contract = contract.replace(**given)
            except ModelError as exc:
                raise ConfigError(f"invalid override: {exc}") from exc
            inferred.update(dict.fromkeys(given, "given"))
        _check_fit(be, contract, label)
    except BaseException:
        be.close()
        raise
    return Model(path=Path(path), backend=be, contract=contract, inferred=inferred)


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


def _check_fit(be: Backend, contract: ModelContract, label: str) -> None:
    """Reject a contract that contradicts the model's input shape."""
    dim = be.input_shape[channel_axis(contract.layout)]
    # A window model sees its clip stacked along the channels.
    frames = contract.time_steps if contract.temporal == "window" else 1
    if dim is not None and dim != contract.channels * frames:
        stacked = f" x {frames} frames" if frames > 1 else ""
        raise ModelError(
            f"model {label}: the contract says {contract.channels} channel(s){stacked} "
            f"({contract.layout}), but the model input {format_shape(be.input_shape)} "
            f"has {dim}"
        )
    fixed = be.fixed_tile()
    if fixed is not None and any(n % contract.alignment for n in fixed):
        raise ModelError(
            f"model {label}: fixed input size {fixed[0]}x{fixed[1]} is not a multiple of "
            f"the contract's alignment {contract.alignment}"
        )


def infer_contract(
    backend: Backend, given: Mapping[str, Any] | None = None
) -> tuple[ModelContract, dict[str, str]]:
    """Work out a contract for a model that carries none, by inspecting and running it.

    See the module docstring for the method and its cost. Fields in ``given`` are not
    inferred (they are still returned as defaults; the caller applies them); a given
    ``alignment`` is used by the halo probe.

    Args:
        backend: The loaded model.
        given: Contract fields the user fixed.

    Returns:
        ``(contract, inferred)``: the contract and, per field, how it was obtained.

    Raises:
        ModelError: If the model runs on no probe size.
    """
    given = given or {}
    inferred = dict.fromkeys(FIELDS, "default")
    values: dict[str, Any] = {"layout": backend.layout}

    layout_guess, why = detect_layout(backend.input_shape)
    inferred["layout"] = why if layout_guess else f"assumed {backend.layout}: {why}"

    channels = backend.input_shape[channel_axis(backend.layout)]
    if "channels" in given:
        values["channels"] = given["channels"]
    elif channels is None:
        values["channels"] = 1
        inferred["channels"] = "assumed 1: the channel dimension is dynamic"
    else:
        values["channels"] = channels
        inferred["channels"] = f"input shape {format_shape(backend.input_shape)}"

    probe = _Probe(backend, values["channels"])
    fixed = backend.fixed_tile()
    if "alignment" in given:
        alignment = int(given["alignment"])
    elif fixed is not None:
        alignment = 1
        inferred["alignment"] = f"1: fixed input size {fixed[0]}x{fixed[1]}"
    else:
        alignment, inferred["alignment"] = _probe_alignment(probe)
    values["alignment"] = alignment

    sample = None
    if "halo" not in given:
        values["halo"], inferred["halo"], sample = _probe_halo(probe, alignment, fixed)

    output = given.get("output")
    if output is None or "classes" not in given:
        if sample is None:
            sample = probe.run(probe.image(*(fixed or _probe_sizes(alignment)[0])))
        k = sample.shape[2]
        if output is None:
            output, inferred["output"] = _output_kind(sample)
            values["output"] = output
        if "classes" not in given:
            # Softmax and logits outputs have a background channel; sigmoids score each
            # foreground class on its own.
            n = 1 if k == 1 else (k if output == "sigmoid" else k - 1)
            names = ["foreground"] if n == 1 else [f"class{i}" for i in range(1, n + 1)]
            values["classes"] = ("background", *names)
            inferred["classes"] = f"{k} output channel(s), {output}"
    return ModelContract(**values), inferred


class _Probe:
    """Runs a model on seeded random images of any size, in its layout and batch."""

    def __init__(self, backend: Backend, channels: int) -> None:
        self.backend = backend
        self.channels = channels
        self.batch = backend.max_batch() or 1
        self.rng = np.random.default_rng(0)

    def image(self, h: int, w: int) -> np.ndarray:
        """A random image in [0, 1), as (h, w, c); see `run`."""
        return self.rng.random((h, w, self.channels), dtype=np.float32)

    def run(self, image: np.ndarray) -> np.ndarray:
        """Run an (h, w, c) image; returns the output of the first batch item as (h, w, k)."""
        x = image if self.backend.layout == "NHWC" else image.transpose(2, 0, 1)
        batch = np.ascontiguousarray(np.broadcast_to(x, (self.batch, *x.shape)))
        out = self.backend.run(batch)[0]
        return np.array(out if self.backend.layout == "NHWC" else out.transpose(1, 2, 0))


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
) -> tuple[int, str, np.ndarray]:
    """Measure the receptive-field radius.

    Returns:
        ``(halo, how, sample)``: the halo rounded up to the alignment, how it was found,
        and the output of the unchanged probe image (for `_output_kind`).
    """
    sizes = [fixed] if fixed is not None else _probe_sizes(alignment)
    offsets = _impulse_offsets(alignment)
    grid = max(alignment, 16)
    radius = 0
    for h, w in sizes:
        image = probe.image(h, w)
        base = probe.run(image)
        # Any backend noise between identical runs (none on the CPU) is not influence.
        noise = float(np.abs(probe.run(image) - base).max())
        cy, cx = (h // 2) // grid * grid, (w // 2) // grid * grid
        radius, reached_border = 0, False
        for i, d in enumerate(offsets):
            y, x = min(cy + d, h - 1), min(cx + d, w - 1)
            hit = image.copy()
            hit[y, x, :] += IMPULSE if i % 2 == 0 else -IMPULSE
            changed = (np.abs(probe.run(hit) - base) > noise).any(axis=2)
            rows, cols = np.nonzero(changed.any(axis=1))[0], np.nonzero(changed.any(axis=0))[0]
            if rows.size == 0:
                continue
            top, bottom, left, right = rows[0], rows[-1], cols[0], cols[-1]
            reached_border |= top == 0 or left == 0 or bottom == h - 1 or right == w - 1
            radius = max(radius, y - top, bottom - y, x - left, right - x)
        if not reached_border:
            halo = -(-int(radius) // alignment) * alignment
            return (
                halo,
                f"{halo}: impulse response radius {radius} on a {h}x{w} probe, "
                f"rounded up to a multiple of {alignment}",
                base,
            )
    halo = -(-int(radius) // alignment) * alignment
    return (
        halo,
        f"{halo}: halo >= {radius}: the impulse response reached the border of a "
        f"{h}x{w} probe, could not bound it",
        base,
    )


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

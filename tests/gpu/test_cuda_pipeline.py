"""The CUDA data path against the CPU reference, on one GPU.

Two kinds of checks:

- Pipeline: `DeviceExecutor` on `CudaDevice(0)` with an engine stand-in that computes on
  the device buffers with CuPy, against `CpuExecutor` running the ONNX model of the same
  network with ONNX Runtime, on the same frames: probabilities (`run`) and masks
  (`run_masks`), frame by frame, in order. The affine stand-in (``y = x * scale +
  offset``, a multiply kernel then an add kernel, as ONNX Runtime runs Mul then Add) is
  bit-exact, so everything the GPU path adds (upload, extract + normalize, stitching,
  blend, masks) must give the CPU's bits. Activation of logits on the device (CUDA
  ``expf``) and the 3x3 convolution stand-in (another summation order than ONNX
  Runtime's) are compared within a tolerance derived from float32 rounding.
- Kernels: each `Device` method (and the state-map kernels of ``unetrt._core.cuda``)
  on `CudaDevice` and on `HostDevice` (the CPU core) with the same random inputs, the
  downloaded results compared bit for bit (`activate`: within CUDA ``expf``'s error).

The whole directory is skipped (tests/gpu/conftest.py) without the CUDA build, a GPU or
CuPy. CuPy is imported inside the engines only, so this module imports anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from unetrt import Segmenter, masks, testing, tiling
from unetrt.contract import CONTRACT_KEY, ModelContract
from unetrt.errors import InputError, ModelError
from unetrt.gpu.device import Buffer, Device, HostDevice
from unetrt.gpu.executor import DeviceExecutor
from unetrt.normalize import Affine
from unetrt.pipeline import CpuExecutor

pytestmark = pytest.mark.gpu

SCALE, OFFSET = 1.7, -0.3  # not exact in float32: both sides round them the same way
#: The CPU reference runs the ONNX models with ONNX Runtime, which computes the affine
#: model's Mul and Add each rounded ("auto" would pick OpenVINO where it is installed,
#: which fuses them into one multiply-add: not the same bits).
REFERENCE: dict[str, Any] = {"backend": "onnxruntime", "threads": 2}
ALIGNMENT, HALO = 8, 8
TILED = 40  # a 40-pixel tile with an 8-pixel halo: 12 tiles for a 70 x 90 frame
#: Logits activated by CUDA expf (at most 2 ulp off) and by SciPy (float32): a few ulp
#: apart, relative; blending averages values that are each within it.
ACTIVATION_RTOL = 5e-6
#: The 3x3 convolution (10 rounded terms) against ONNX Runtime's: each sum is within
#: gamma_10 * sum|w * x| <= 10 * 2**-24 * 1.05 = 6.3e-7 of the exact value (weights with
#: sum|w| = 1, bias 0.05, inputs in [0, 1]), so the two within 1.3e-6; blending adds
#: a rounding or two of values below 1.1. (The kernel's arithmetic in NumPy against ONNX
#: Runtime on the CPU: at most 1.2e-7 apart.)
CONV_ATOL = 2e-6


# ----------------------------------------------------------------------- engine stand-ins
def _cupy() -> Any:
    import cupy

    return cupy


class CupyAffine:
    """``y = x * scale + offset`` on the device buffers, on the scheduler's stream.

    Two kernels (multiply, then add) so nothing fuses them into an FMA: ONNX Runtime runs
    the affine model's Mul then Add, each rounded. ``poison`` maps an engine call (0, 1,
    ...) to a value written into the first output element of that call (NaN, inf).
    Records the input shape of every call.
    """

    def __init__(self, scale: float, offset: float, poison: dict[int, float] | None = None):
        self.scale = np.float32(scale)
        self.offset = np.float32(offset)
        self.poison = dict(poison or {})
        self.shapes: list[tuple[int, ...]] = []

    def enqueue(self, inputs: Buffer, outputs: Buffer, stream: Any) -> None:
        cp = _cupy()
        call = len(self.shapes)
        self.shapes.append(tuple(inputs.shape))
        with cp.cuda.ExternalStream(stream.handle):
            x = cp.asarray(inputs)
            y = cp.asarray(outputs)
            assert x.shape == y.shape and x.dtype == y.dtype == np.float32
            cp.multiply(x, self.scale, out=y)
            cp.add(y, self.offset, out=y)
            if call in self.poison:
                y[(0,) * y.ndim] = np.float32(self.poison[call])


_CONV_SOURCE = r"""
extern "C" __global__ void conv3x3(const float* x, float* y, const float* k, long long items,
                                   int h, int w) {
  // One output pixel per thread; zero padding; taps in row-major order, each product
  // and sum rounded (no FMA); the bias last.
  const long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (i >= items) return;
  const int c = (int)(i % w), r = (int)((i / w) % h);
  const float* img = x + (i / ((long long)h * w)) * (long long)h * w;
  float acc = 0.0f;
  for (int dy = -1; dy <= 1; ++dy) {
    for (int dx = -1; dx <= 1; ++dx) {
      const int rr = r + dy, cc = c + dx;
      if (rr < 0 || rr >= h || cc < 0 || cc >= w) continue;
      acc = __fadd_rn(acc, __fmul_rn(k[(dy + 1) * 3 + dx + 1], img[rr * w + cc]));
    }
  }
  y[i] = __fadd_rn(acc, k[9]);
}
"""


class CupyConv3x3:
    """A fixed one-channel 3x3 convolution (zero padding, bias) as a CuPy RawKernel on
    the device buffers; `conv_model` is the same convolution in ONNX. With one channel
    NHWC and NCHW batches have the same memory order."""

    _kernel: Any = None

    def __init__(self, weights: np.ndarray, bias: float, layout: str) -> None:
        self.params = np.append(np.asarray(weights, np.float32).ravel(), np.float32(bias))
        assert self.params.shape == (10,)
        self.layout = layout
        self.shapes: list[tuple[int, ...]] = []
        self._params_device: Any = None

    def enqueue(self, inputs: Buffer, outputs: Buffer, stream: Any) -> None:
        cp = _cupy()
        self.shapes.append(tuple(inputs.shape))
        n, h, w = _one_channel_dims(inputs.shape, self.layout)
        items = n * h * w
        if CupyConv3x3._kernel is None:
            CupyConv3x3._kernel = cp.RawKernel(_CONV_SOURCE, "conv3x3")
        with cp.cuda.ExternalStream(stream.handle):
            if self._params_device is None:
                self._params_device = cp.asarray(self.params)
            x = cp.asarray(inputs)
            y = cp.asarray(outputs)
            blocks = max(1, (items + 255) // 256)
            CupyConv3x3._kernel(
                (blocks,), (256,), (x, y, self._params_device, np.int64(items), np.int32(h),
                                    np.int32(w)),
            )  # fmt: skip


def _one_channel_dims(shape: tuple[int, ...], layout: str) -> tuple[int, int, int]:
    """(n, h, w) of a one-channel batch."""
    if layout == "NHWC":
        n, h, w, c = shape
    else:
        n, c, h, w = shape
    assert c == 1, f"the convolution stand-in takes one channel, got {shape}"
    return n, h, w


# ----------------------------------------------------------------------- models
def _with_contract(model: Any, contract: ModelContract) -> Any:
    from onnx import helper

    helper.set_model_props(model, {CONTRACT_KEY: contract.to_json()})
    return model


def _classes(channels: int, output: str) -> tuple[str, ...]:
    if channels == 1:
        return ("background", "foreground")
    n = channels if output == "sigmoid" else channels - 1
    return ("background", *(f"class{i}" for i in range(1, n + 1)))


def affine_path(
    folder: Path,
    *,
    channels: int = 1,
    layout: str = "NHWC",
    output: str = "sigmoid",
    fixed_batch: int | None = None,
) -> Path:
    """`testing.affine_model` (SCALE, OFFSET) with its full contract, saved in ``folder``."""
    model = testing.affine_model(SCALE, OFFSET, channels=channels, layout=layout)
    if fixed_batch is not None:  # a model that takes batches of exactly this many tiles
        for port in (*model.graph.input, *model.graph.output):
            port.type.tensor_type.shape.dim[0].dim_value = fixed_batch
    contract = ModelContract(
        channels=channels,
        layout=layout,
        alignment=ALIGNMENT,
        halo=HALO,
        output=output,
        classes=_classes(channels, output),
    )
    name = f"affine_{channels}_{layout}_{output}_{fixed_batch}.onnx"
    testing.save(_with_contract(model, contract), folder / name)
    return folder / name


def conv_weights(seed: int = 0) -> tuple[np.ndarray, float]:
    """A smoothing 3x3 kernel, perturbed so that no weight is a short binary fraction,
    with sum |w| = 1; and the bias."""
    rng = np.random.default_rng(seed)
    base = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float64) / 16
    w = base * rng.uniform(0.8, 1.2, (3, 3))
    return (w / np.abs(w).sum()).astype(np.float32), 0.05


def conv_model(weights: np.ndarray, bias: float, layout: str) -> Any:
    """The ONNX model of `CupyConv3x3`: Conv 1 -> 1 channel, 3x3, zero pads 1, bias."""
    from onnx import TensorProto, helper, numpy_helper

    dims: list[Any] = ["N", "H", "W", 1] if layout == "NHWC" else ["N", 1, "H", "W"]
    nodes = []
    x = testing.INPUT_NAME
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [x], ["x_nchw"], perm=[0, 3, 1, 2]))
        x = "x_nchw"
    nodes.append(
        helper.make_node("Conv", [x, "w", "b"], ["y_nchw"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    )
    if layout == "NHWC":
        nodes.append(
            helper.make_node("Transpose", ["y_nchw"], [testing.OUTPUT_NAME], perm=[0, 2, 3, 1])
        )
    else:
        nodes.append(helper.make_node("Identity", ["y_nchw"], [testing.OUTPUT_NAME]))
    graph = helper.make_graph(
        nodes,
        "conv3x3",
        [helper.make_tensor_value_info(testing.INPUT_NAME, TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(testing.OUTPUT_NAME, TensorProto.FLOAT, dims)],
        initializer=[
            numpy_helper.from_array(np.asarray(weights, np.float32).reshape(1, 1, 3, 3), "w"),
            numpy_helper.from_array(np.array([bias], np.float32), "b"),
        ],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", testing.OPSET)],
        ir_version=testing.IR_VERSION,
    )
    # Raw convolution values read as probabilities (threshold 0.5): no activation to
    # compare, only the convolution.
    contract = ModelContract(layout=layout, alignment=ALIGNMENT, halo=HALO, output="sigmoid")
    return _with_contract(model, contract)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for the test models (built with onnx, the test extra)."""
    pytest.importorskip("onnx", reason="the pipeline tests build ONNX models (pip install onnx)")
    return tmp_path_factory.mktemp("gpu_models")


# ----------------------------------------------------------------------- frames
def make_frame(dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A random frame: smooth blobs plus noise for the integer types, normal floats."""
    if dtype in ("float32", "float64"):
        return rng.normal(0.5, 0.3, shape).astype(dtype)
    h, w = shape[:2]
    yy, xx = np.mgrid[:h, :w]
    blobs = np.zeros((h, w))
    for _ in range(3):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, 12)
        blobs += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    if len(shape) == 3:
        blobs = blobs[..., None] * rng.uniform(0.5, 1.5, shape[2])
    top = {"uint8": 200, "uint16": 40000, "int16": 20000}[dtype]
    noisy = blobs * top + rng.normal(0, top / 20, shape) + (top // 10)
    return np.clip(noisy, np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)


def make_frames(
    dtype: str | Sequence[str], shapes: Sequence[tuple[int, ...]], seed: int = 0
) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    dtypes = [dtype] * len(shapes) if isinstance(dtype, str) else list(dtype)
    return [make_frame(d, s, rng) for d, s in zip(dtypes, shapes, strict=True)]


# ----------------------------------------------------------------------- comparisons
def assert_bits_equal(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Same shape, dtype and bits (NaN equal to NaN whatever its payload)."""
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, expected {want.dtype}"
    unsigned = f"u{got.dtype.itemsize}"
    differ = np.ascontiguousarray(got).view(unsigned) != np.ascontiguousarray(want).view(unsigned)
    if got.dtype.kind == "f":
        differ &= ~(np.isnan(got) & np.isnan(want))
    if differ.any():
        where = tuple(int(i) for i in np.argwhere(differ)[0])
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        raise AssertionError(
            f"{what}: {int(differ.sum())} of {differ.size} values differ; first at {where}: "
            f"got {got[where]!r}, expected {want[where]!r}; max |difference| "
            f"{np.nanmax(np.where(differ, diff, 0)):.3g}"
        )


def near_decision(prob: np.ndarray, contract: ModelContract, margin: float) -> np.ndarray:
    """Pixels whose mask could flip if their probabilities moved by ``margin``."""
    t = contract.threshold
    if prob.ndim == 2:
        return np.abs(prob - t) <= margin
    ordered = np.sort(prob, axis=-1)
    near = ordered[..., -1] - ordered[..., -2] <= 2 * margin
    if contract.output == "sigmoid":
        near |= np.abs(ordered[..., -1] - t) <= margin
    return near


def assert_results(
    got: Sequence[np.ndarray | Exception],
    want: Sequence[np.ndarray | Exception],
    what: str,
    *,
    rtol: float = 0.0,
    atol: float = 0.0,
) -> None:
    """Frame by frame: the same exceptions in the same places, the same arrays (bit for
    bit, or within rtol / atol)."""
    assert len(got) == len(want), f"{what}: {len(got)} results for {len(want)} frames"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        label = f"{what}, frame {i}"
        if isinstance(w, Exception):
            assert type(g) is type(w), f"{label}: got {g!r}, expected {w!r}"
            assert str(g) == str(w)
            continue
        assert isinstance(g, np.ndarray), f"{label}: got {g!r}"
        if rtol == 0.0 and atol == 0.0:
            assert_bits_equal(g, w, label)
        else:
            assert g.shape == w.shape and g.dtype == w.dtype, f"{label}: {g.shape} vs {w.shape}"
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=label)


def assert_masks(
    got: Sequence[np.ndarray | Exception],
    want: Sequence[np.ndarray | Exception],
    probabilities: Sequence[np.ndarray | Exception],
    contract: ModelContract,
    margin: float,
) -> None:
    """Masks equal, except (with a margin) where the reference probabilities are within
    ``margin`` of the mask rule's decision."""
    if margin == 0.0:
        assert_results(got, want, "masks")
        return
    assert len(got) == len(want) == len(probabilities)
    for i, (g, w, p) in enumerate(zip(got, want, probabilities, strict=True)):
        if isinstance(w, Exception):
            assert type(g) is type(w)
            continue
        assert isinstance(g, np.ndarray) and isinstance(p, np.ndarray)
        assert g.shape == w.shape and g.dtype == w.dtype == np.uint8, f"masks, frame {i}"
        differ = (g != w) & ~near_decision(p, contract, margin)
        assert not differ.any(), (
            f"masks, frame {i}: {int(differ.sum())} pixels differ away from the decision "
            f"boundary (first at {tuple(np.argwhere(differ)[0])})"
        )


def arrays(results: Iterable[np.ndarray | Exception]) -> list[np.ndarray]:
    return [r for r in results if isinstance(r, np.ndarray)]


def run_both(
    seg: Segmenter,
    device: Device,
    engine: Any,
    frames: Sequence[np.ndarray],
    *,
    depth: int = 3,
    isolate: bool = False,
    repeats: int = 1,
) -> dict[str, list[Any]]:
    """Probabilities and masks of the frames from `CpuExecutor` ("cpu_*") and
    `DeviceExecutor` ("gpu_*"), each run on a fresh stream; the device runs ``repeats``
    times on the same executor (buffers reused), all runs' results kept in order."""
    cpu = CpuExecutor(seg.model, seg.executor_config)
    executor = DeviceExecutor(seg.model, seg.executor_config, device, engine, depth=depth)
    out: dict[str, list[Any]] = {}
    try:
        out["cpu_probabilities"] = list(cpu.run(seg.stream(), frames, isolate=isolate))
        out["cpu_masks"] = list(cpu.run_masks(seg.stream(), frames, isolate=isolate))
        out["gpu_probabilities"], out["gpu_masks"] = [], []
        for _ in range(repeats):
            out["gpu_probabilities"] += executor.run(seg.stream(), frames, isolate=isolate)
            out["gpu_masks"] += executor.run_masks(seg.stream(), frames, isolate=isolate)
    finally:
        executor.close()
    out["cpu_probabilities"] *= repeats
    out["cpu_masks"] *= repeats
    return out


def check_pipeline(
    seg: Segmenter,
    device: Device,
    engine: Any,
    frames: Sequence[np.ndarray],
    *,
    rtol: float = 0.0,
    atol: float = 0.0,
    **run: Any,
) -> dict[str, list[Any]]:
    """`run_both`, then probabilities and masks compared (exactly without tolerances)."""
    out = run_both(seg, device, engine, frames, **run)
    assert_results(out["gpu_probabilities"], out["cpu_probabilities"], "probabilities",
                   rtol=rtol, atol=atol)  # fmt: skip
    margin = max(atol, rtol)  # probabilities are at most 1 (the conv's a little above)
    assert_masks(out["gpu_masks"], out["cpu_masks"], out["cpu_probabilities"], seg.contract,
                 margin)  # fmt: skip
    masks_ = arrays(out["cpu_masks"])
    assert any(m.any() for m in masks_) and any((m == 0).any() for m in masks_), (
        "a trivial mask (all one value) would not test much"
    )
    return out


def engine_calls(seg: Segmenter, frames: Sequence[np.ndarray]) -> int:
    """Engine calls of one device run: ceil(tiles / batch) per frame."""
    return sum(math.ceil(seg.plan_for(*f.shape[:2]).n_tiles / seg.batch) for f in frames)


# ----------------------------------------------------------------------- pipeline
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("tile", ["auto", TILED], ids=["whole", "tiled"])
@pytest.mark.parametrize("stitch", ["crop", "blend"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_affine_matches_cpu_bit_for_bit(
    gpu: Device, models: Path, dtype: str, stitch: str, tile: Any, batch: int, layout: str
) -> None:
    shape = (70, 90)
    frames = make_frames(dtype, [shape] * 3, seed=1)
    # Float frames: percentiles, not clipped; integer frames: the default mean, clipped.
    normalization = {"method": "percentile"} if dtype == "float32" else None
    path = affine_path(models, layout=layout)
    with Segmenter(
        path, tile=tile, batch=batch, stitch=stitch, normalization=normalization, **REFERENCE
    ) as seg:
        n_tiles = seg.plan_for(*shape).n_tiles
        assert n_tiles == (1 if tile == "auto" else 12)
        engine = CupyAffine(SCALE, OFFSET)
        out = check_pipeline(seg, gpu, engine, frames)
        assert len(engine.shapes) == 2 * engine_calls(seg, frames)  # run + run_masks
    assert all(p.shape == shape and p.dtype == np.float32 for p in out["gpu_probabilities"])
    assert all(m.shape == shape and m.dtype == np.uint8 for m in out["gpu_masks"])


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_mixed_sizes_and_dtypes_in_one_stream_keep_their_order(
    gpu: Device, models: Path, depth: int
) -> None:
    # More sizes than the scheduler keeps plans for (8), tile shapes that change from frame
    # to frame, tiny frames (reflect padding of 1- and 2-pixel extents), and every frame
    # dtype the pipeline takes (int16 and float64 become float32 on the host).
    shapes = [(70, 90), (40, 40), (70, 90), (33, 129), (1, 7), (2, 3), (64, 64), (57, 23),
              (16, 120), (90, 70), (41, 41), (8, 8), (70, 90)]  # fmt: skip
    dtypes = ["uint16", "uint8", "float32", "int16", "uint16", "float64", "uint16", "uint8",
              "uint16", "float32", "uint16", "uint8", "uint16"]  # fmt: skip
    frames = make_frames(dtypes, shapes, seed=2)
    with Segmenter(affine_path(models), tile=TILED, batch=2, stitch="blend", **REFERENCE) as seg:
        out = check_pipeline(seg, gpu, CupyAffine(SCALE, OFFSET), frames, depth=depth, repeats=2)
    assert [p.shape for p in out["gpu_probabilities"]] == shapes * 2


@pytest.mark.parametrize("stitch", ["crop", "blend"])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize(
    ("channels", "output"), [(1, "logits"), (3, "sigmoid"), (3, "softmax"), (3, "logits")]
)
def test_classes_and_logits_match_cpu(
    gpu: Device, models: Path, channels: int, output: str, layout: str, stitch: str
) -> None:
    # Three-channel frames through a three-channel affine model: K = 3 outputs, masks by
    # 1 + argmax over the threshold (independent sigmoids) or argmax (softmax classes,
    # logits softmaxed on the device); one-channel logits get a sigmoid on the device.
    shape = (70, 90, channels) if channels > 1 else (70, 90)
    frames = make_frames("uint16", [shape] * 3, seed=3)
    path = affine_path(models, channels=channels, layout=layout, output=output)
    # Percentiles: inputs spread over [0, 1], so that the one-channel logit 1.7 x - 0.3
    # falls on both sides of 0.
    spec = {"method": "percentile"}
    with Segmenter(
        path, tile=TILED, batch=2, stitch=stitch, normalization=spec, **REFERENCE
    ) as seg:
        assert seg.classes == channels
        rtol = ACTIVATION_RTOL if output == "logits" else 0.0
        out = check_pipeline(seg, gpu, CupyAffine(SCALE, OFFSET), frames, rtol=rtol)
    expected = shape if channels > 1 else shape[:2]
    assert all(p.shape == expected for p in out["gpu_probabilities"])
    assert all(m.shape == shape[:2] for m in out["gpu_masks"])


@pytest.mark.parametrize("stitch", ["crop", "blend"])
def test_fixed_batch_model_gets_padded_batches(gpu: Device, models: Path, stitch: str) -> None:
    path = affine_path(models, fixed_batch=4)
    frames = make_frames("uint16", [(70, 90), (30, 30), (70, 90)], seed=4)  # 12, 1, 12 tiles
    with Segmenter(path, tile=TILED, stitch=stitch, **REFERENCE) as seg:
        assert seg.batch == 4
        engine = CupyAffine(SCALE, OFFSET)
        check_pipeline(seg, gpu, engine, frames)
    assert engine.shapes and all(s[0] == 4 for s in engine.shapes)
    assert len(engine.shapes) == 2 * (3 + 1 + 3)


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("stitch", ["crop", "blend"])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_conv3x3_matches_onnx_runtime_within_rounding(
    gpu: Device, models: Path, layout: str, stitch: str, batch: int
) -> None:
    # Another summation order than ONNX Runtime's (which may also fuse multiply-adds), so
    # not bit for bit: within CONV_ATOL (see there). uint16 frames with the default
    # mean normalization keep the inputs in [0, 1], as the bound assumes.
    weights, bias = conv_weights()
    path = models / f"conv_{layout}.onnx"
    testing.save(conv_model(weights, bias, layout), path)
    frames = make_frames("uint16", [(70, 90), (33, 129), (70, 90)], seed=5)
    with Segmenter(path, tile=TILED, batch=batch, stitch=stitch, **REFERENCE) as seg:
        engine = CupyConv3x3(weights, bias, layout)
        out = check_pipeline(seg, gpu, engine, frames, atol=CONV_ATOL)
    assert all(float(p.std()) > 0.01 for p in out["gpu_probabilities"])


@pytest.mark.parametrize(("value", "output"), [(float("nan"), "sigmoid"), (float("inf"), "logits")])
def test_nonfinite_engine_output_is_a_model_error(
    gpu: Device, models: Path, value: float, output: str
) -> None:
    frames = make_frames("uint16", [(40, 48)] * 3, seed=6)
    path = affine_path(models, output=output)
    with Segmenter(path, **REFERENCE) as seg:  # whole frames: one engine call per frame
        engine = CupyAffine(SCALE, OFFSET, poison={1: value})
        executor = DeviceExecutor(seg.model, seg.executor_config, gpu, engine)
        try:
            results = executor.run(seg.stream(name="v.tif"), frames)
            first = next(results)
            with pytest.raises(ModelError, match="NaN or infinite values for frame 1 of v.tif"):
                next(results)
            results.close()
            # The executor is still usable: the next run (clean) matches the CPU.
            cpu = list(CpuExecutor(seg.model, seg.executor_config).run(seg.stream(), frames))
            again = list(executor.run(seg.stream(), frames))
        finally:
            executor.close()
    rtol = ACTIVATION_RTOL if output == "logits" else 0.0  # sigmoid by CUDA expf or SciPy
    assert_results([first], cpu[:1], "before the error", rtol=rtol)
    assert_results(again, cpu, "after the error", rtol=rtol)


def test_isolate_keeps_refused_frames_in_their_place(gpu: Device, models: Path) -> None:
    frames: list[np.ndarray] = make_frames("uint16", [(40, 48)] * 4, seed=7)
    frames[1] = np.zeros((40, 48, 2), np.uint16)  # two channels for a one-channel model
    nan = np.full((40, 48), 0.5, np.float32)
    nan[3, 4] = np.nan
    frames[3] = nan
    with Segmenter(affine_path(models), tile=TILED, batch=2, **REFERENCE) as seg:
        out = run_both(seg, gpu, CupyAffine(SCALE, OFFSET), frames, isolate=True)
        for kind in ("probabilities", "masks"):
            got, want = out[f"gpu_{kind}"], out[f"cpu_{kind}"]
            assert [type(r) for r in want] == [np.ndarray, InputError, np.ndarray, InputError]
            assert_results(got, want, kind)
        executor = DeviceExecutor(seg.model, seg.executor_config, gpu, CupyAffine(SCALE, OFFSET))
        try:
            with pytest.raises(InputError, match="frames of shape"):
                list(executor.run(seg.stream(), frames))
        finally:
            executor.close()


# ----------------------------------------------------------------------- kernels
def on_device(
    dev: Device,
    inputs: dict[str, np.ndarray],
    op: Callable[[Device, dict[str, Buffer], Any], None],
    read: Sequence[str],
) -> dict[str, np.ndarray]:
    """Upload ``inputs``, enqueue ``op(dev, buffers, stream)``, download ``read``."""
    stream = dev.new_stream()
    # Writeable copies (plan.tiles is read-only; test_upload_from_read_only_memory checks
    # those), kept until the stream is done: the HostDevice reads them at run time.
    held = {name: np.array(a, order="C", copy=True) for name, a in inputs.items()}
    bufs: dict[str, Buffer] = {}
    for name, a in held.items():
        bufs[name] = dev.alloc(a.shape, a.dtype)
        dev.upload(bufs[name], a, stream)
    op(dev, bufs, stream)
    out = {name: np.empty(bufs[name].shape, bufs[name].dtype) for name in read}
    for name in read:
        dev.download(out[name], bufs[name], stream)
    dev.synchronize_stream(stream)
    return out


def on_both(
    gpu: Device,
    inputs: dict[str, np.ndarray],
    op: Callable[[Device, dict[str, Buffer], Any], None],
    read: Sequence[str],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """`on_device` on the GPU and on the `HostDevice` (the CPU core), same inputs."""
    return on_device(gpu, inputs, op, read), on_device(HostDevice(seed=0), inputs, op, read)


def random_plan(height: int = 53, width: int = 77, tile: int = 32) -> tiling.TilePlan:
    """A plan of several tiles with halo 8 and reflect padding past the frame."""
    plan = tiling.plan_tiles(height, width, alignment=ALIGNMENT, halo=HALO, max_tile=tile)
    assert plan.n_tiles > 4 and (plan.padded_h, plan.padded_w) != (height, width)
    return plan


def batch_shape(n: int, plan: tiling.TilePlan, k: int, layout: str) -> tuple[int, int, int, int]:
    return (
        (n, plan.tile_h, plan.tile_w, k) if layout == "NHWC" else (n, k, plan.tile_h, plan.tile_w)
    )


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_extract_kernel(gpu: Device, dtype: str, channels: int, layout: str) -> None:
    rng = np.random.default_rng(10)
    plan = random_plan()
    frame = make_frame(dtype, (plan.height, plan.width, channels), rng)
    if dtype == "float32":
        frame.flat[::97] = np.nan  # passes through, as numpy.clip lets it
        frame.flat[5::101] = -0.0
    affine = Affine(np.float32(1 / 700.3), np.float32(-0.25), np.float32(0.0), np.float32(1.5))
    if dtype == "float32":
        affine = Affine(np.float32(1.37), np.float32(0.11), -np.inf, np.inf)
    n = plan.n_tiles
    first = 1  # a tile table view (pointer offset) and a part of the batch
    inputs = {
        "frame": frame,
        "tiles": plan.tiles,
        "all": np.zeros(batch_shape(n, plan, channels, layout), np.float32),
        "some": np.zeros(batch_shape(n, plan, channels, layout), np.float32),
    }

    def op(dev: Device, b: dict[str, Buffer], stream: Any) -> None:
        th, tw = plan.tile_h, plan.tile_w
        dev.extract(b["frame"], b["tiles"], th, tw, affine, layout, b["all"], stream)
        dev.extract(b["frame"], b["tiles"].rows(first, n), th, tw, affine, layout,
                    b["some"].rows(0, n - first), stream)  # fmt: skip

    got, want = on_both(gpu, inputs, op, ["all", "some"])
    for name in ("all", "some"):
        assert_bits_equal(got[name], want[name], name)
    # And the HostDevice reference is the core's extract through the Python wrapper.
    reference = tiling.extract_tiles(frame, plan, slice(None), affine, layout, threads=1)
    assert_bits_equal(want["all"], reference, "host vs tiling.extract_tiles")
    assert_bits_equal(got["some"][: n - first], got["all"][first:], "tile table view")


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("classes", [1, 3])
def test_activate_kernel(gpu: Device, classes: int, layout: str) -> None:
    rng = np.random.default_rng(11)
    plan = random_plan()
    logits = rng.uniform(-20, 20, batch_shape(5, plan, classes, layout)).astype(np.float32)
    logits.flat[::13] = 0.0
    got, want = on_both(
        gpu, {"x": logits}, lambda dev, b, s: dev.activate(b["x"], layout, s), ["x"]
    )
    np.testing.assert_allclose(got["x"], want["x"], rtol=ACTIVATION_RTOL, atol=0)
    axis = 3 if layout == "NHWC" else 1
    np.testing.assert_array_equal(want["x"], masks.activate(logits, "logits", axis))
    if classes > 1:
        np.testing.assert_allclose(got["x"].sum(axis=axis), 1.0, rtol=1e-6)


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("classes", [1, 3])
def test_stitch_crop_kernel(gpu: Device, classes: int, layout: str) -> None:
    rng = np.random.default_rng(12)
    plan = random_plan()
    n = plan.n_tiles
    inputs = {
        "outputs": rng.random(batch_shape(n, plan, classes, layout), np.float32),
        "tiles": plan.tiles,
        "dst": np.full((plan.height, plan.width, classes), -1.0, np.float32),
    }

    def op(dev: Device, b: dict[str, Buffer], stream: Any) -> None:
        split = n // 2  # two batches, the second through pointer offsets
        dev.stitch_crop(b["outputs"].rows(0, split), b["tiles"].rows(0, split), layout, b["dst"],
                        stream)  # fmt: skip
        dev.stitch_crop(b["outputs"].rows(split, n), b["tiles"].rows(split, n), layout, b["dst"],
                        stream)  # fmt: skip

    got, want = on_both(gpu, inputs, op, ["dst"])
    assert_bits_equal(got["dst"], want["dst"], "dst")
    assert (want["dst"] >= 0).all()  # the cores cover the frame
    reference = tiling.stitch_crop(inputs["outputs"], plan, layout=layout, threads=1)
    assert_bits_equal(want["dst"], reference, "host vs tiling.stitch_crop")


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("classes", [1, 3])
def test_stitch_blend_and_finish_kernels(gpu: Device, classes: int, layout: str) -> None:
    rng = np.random.default_rng(13)
    plan = random_plan()
    n = plan.n_tiles
    h, w = plan.height, plan.width
    inputs = {
        "outputs": rng.random(batch_shape(n, plan, classes, layout), np.float32),
        "tiles": plan.tiles,
        "weights": tiling.taper_weights(plan.tile_h, plan.tile_w),
        "acc": np.zeros((h, w, classes), np.float32),
        "weight_sum": np.zeros((h, w), np.float32),
        "acc2": np.zeros((h, w, classes), np.float32),
    }

    def op(dev: Device, b: dict[str, Buffer], stream: Any) -> None:
        split = n - 2
        for start, stop in ((0, split), (split, n)):  # overlapping windows, two batches
            dev.stitch_blend(b["outputs"].rows(start, stop), b["tiles"].rows(start, stop),
                             b["weights"], layout, b["acc"], b["weight_sum"], stream)  # fmt: skip
        dev.finish_blend(b["acc"], b["weight_sum"], stream)

    got, want = on_both(gpu, inputs, op, ["acc", "weight_sum"])
    assert_bits_equal(got["weight_sum"], want["weight_sum"], "weight_sum")
    assert_bits_equal(got["acc"], want["acc"], "blended")
    acc, ws = np.zeros((h, w, classes), np.float32), np.zeros((h, w), np.float32)
    tiling.stitch_blend(inputs["outputs"], plan, slice(None), inputs["weights"], acc, ws,
                        layout=layout, threads=1)  # fmt: skip
    assert_bits_equal(want["acc"], tiling.finish_blend(acc, ws, threads=1), "host vs tiling")


@pytest.mark.parametrize(("classes", "independent"), [(1, True), (3, False), (3, True), (7, False)])
def test_mask_kernel(gpu: Device, classes: int, independent: bool) -> None:
    rng = np.random.default_rng(14)
    # Quantized so that ties and values exactly at the threshold occur; a few NaN.
    prob = (rng.integers(0, 9, (37, 53, classes)) / 8).astype(np.float32)
    prob.flat[::31] = np.nan
    inputs = {"prob": prob, "mask": np.zeros((37, 53), np.uint8)}

    def op(dev: Device, b: dict[str, Buffer], stream: Any) -> None:
        dev.mask(b["prob"], independent, 0.5, b["mask"], stream)

    got, want = on_both(gpu, inputs, op, ["mask"])
    assert_bits_equal(got["mask"], want["mask"], "mask")
    output = "sigmoid" if independent else "softmax"
    contract = ModelContract(output=output, classes=_classes(classes, output))
    if classes == 1:
        rule = masks.mask_of(prob[..., 0], contract, threads=1)
    else:
        rule = masks.mask_of(prob, contract, threads=1)
    assert_bits_equal(got["mask"], rule, "masks.mask_of")


def test_count_nonfinite_kernel(gpu: Device) -> None:
    rng = np.random.default_rng(15)
    data = rng.normal(size=(6, 33, 41, 2)).astype(np.float32)
    data.flat[::17] = np.nan
    data.flat[3::29] = np.inf
    data.flat[7::31] = -np.inf
    inputs = {"data": data, "count": np.zeros(1, np.uint32)}

    def op(dev: Device, b: dict[str, Buffer], stream: Any) -> None:
        dev.count_nonfinite(b["data"], b["count"], stream)
        dev.count_nonfinite(b["data"].rows(2, 5), b["count"], stream)  # adds up

    got, want = on_both(gpu, inputs, op, ["count"])
    expected = np.count_nonzero(~np.isfinite(data)) + np.count_nonzero(~np.isfinite(data[2:5]))
    assert int(got["count"][0]) == int(want["count"][0]) == expected


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("stride", [1, 2, 4])
def test_state_kernels(gpu: Device, stride: int, layout: str) -> None:
    rng = np.random.default_rng(16)
    plan = random_plan()
    k, n = 5, plan.n_tiles
    rows, cols = plan.padded_h // stride, plan.padded_w // stride
    map_shape = (rows, cols, k) if layout == "NHWC" else (k, rows, cols)
    th, tw = plan.tile_h // stride, plan.tile_w // stride
    window = (n, th, tw, k) if layout == "NHWC" else (n, k, th, tw)
    inputs = {
        "map": rng.random(map_shape, np.float32),
        "tiles": plan.tiles,
        "cut": np.zeros(window, np.float32),
        "states": rng.random(window, np.float32),
        "next": np.full(map_shape, -1.0, np.float32),
    }

    def op(dev: Device, b: dict[str, Buffer], stream: Any) -> None:
        dev.cut_states(b["map"], b["tiles"], plan, stride, layout, b["cut"], stream)
        half = n // 2  # the new map in two batches, the second through pointer offsets
        for start, stop in ((0, half), (half, n)):
            rows = b["tiles"].rows(start, stop)
            dev.stitch_states(b["states"].rows(start, stop), rows, plan, stride, layout,
                              b["next"], stream)  # fmt: skip

    got, want = on_both(gpu, inputs, op, ["cut", "next"])
    assert_bits_equal(got["cut"], want["cut"], "cut_states")
    assert_bits_equal(got["next"], want["next"], "stitch_states")
    assert (want["next"] >= 0).all()  # the state cores cover the whole map


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32", "int64", "uint32"])
def test_copies_and_zero(gpu: Device, dtype: str) -> None:
    rng = np.random.default_rng(17)
    data = rng.integers(0, 200, (5, 7, 3)).astype(dtype)
    staged = gpu.staging(data.shape, data.dtype)  # pinned host memory
    assert staged.shape == data.shape and staged.dtype == data.dtype and staged.flags.writeable
    np.copyto(staged, data)
    stream = gpu.new_stream()
    buf = gpu.alloc(data.shape, data.dtype)
    gpu.upload(buf, staged, stream)
    back = gpu.staging(data.shape, data.dtype)
    gpu.download(back, buf, stream)
    gpu.synchronize_stream(stream)
    assert_bits_equal(back, data, "round trip")
    gpu.zero(buf.rows(1, 3), stream)
    gpu.download(back, buf, stream)
    gpu.synchronize_stream(stream)
    expected = data.copy()
    expected[1:3] = 0
    assert_bits_equal(back, expected, "zeroed rows")


def test_upload_from_read_only_memory(gpu: Device) -> None:
    # The scheduler uploads each plan's tile table, which tiling.plan_tiles makes
    # read-only: an upload only reads its source.
    plan = random_plan()
    assert not plan.tiles.flags.writeable
    stream = gpu.new_stream()
    buf = gpu.alloc(plan.tiles.shape, plan.tiles.dtype)
    gpu.upload(buf, plan.tiles, stream)
    back = np.empty(plan.tiles.shape, plan.tiles.dtype)
    gpu.download(back, buf, stream)
    gpu.synchronize_stream(stream)
    assert_bits_equal(back, plan.tiles, "tile table")

"""GPU data path: the engine alone against the whole pipeline on the device, in frames/s.

For synthetic uint16 stacks (default 32 frames of 1024 x 1024 and 32 of 2048 x 2048: smooth
blobs plus noise, in host memory) on GPU 0, prints frames/s for:

  (a) the engine alone: ``engine.enqueue`` on preallocated device batches of exactly the
      shapes the pipeline feeds it (``ceil(tiles / batch)`` calls a frame), on one
      stream, synchronised once at the end, after a warm-up of every shape;
  (b) end to end: `DeviceExecutor.run_masks` over the whole stack, from the host uint16
      frames to host uint8 masks (checks and normalization on the host, upload,
      extract + normalize, engine, activation, stitch, threshold and download on the
      device, frames in flight), after a warm-up frame;

and (b) / (a), measured in the same process. Target: (b) >= 0.9 x (a).

The engine is a TensorRT engine (``--engine FILE``, built by ``unetrt build-engine``) when
TensorRT is importable; otherwise a PyTorch fp16 stand-in for the seed-default U-Net (32
filters at the first level, 3 poolings, two 3x3 convolutions + ReLU per level, 2x2
transposed convolutions up, one output channel; random weights: speed does not depend on
them), channels-last, ``cudnn.benchmark``, run on the scheduler's device buffers and
stream. Its contract (alignment 8, the U-Net's halo, one channel) comes from a Segmenter on
the ONNX model of the same architecture (`unetrt.testing.unet_model`), or, without the
onnx package, is stated directly.

Without a GPU, or without an engine (PyTorch or TensorRT), it prints one line saying why
and exits 0.

Usage:
    python benchmarks/bench_gpu.py [--frames 32] [--sizes 1024,2048] [--tile 1152]
                                   [--batch 4] [--engine model.engine]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unetrt.contract import ModelContract
from unetrt.gpu.device import Buffer, CudaDevice, cuda_compiled, cuda_device_count
from unetrt.gpu.executor import DeviceExecutor
from unetrt.pipeline import ExecutorConfig, FrameChecks, TilePolicy, VideoStream
from unetrt.testing import unet_receptive_radius

ALIGNMENT_POOLS = 3  # alignment 8


# ----------------------------------------------------------------------- frames
def synthetic_stack(frames: int, size: int, seed: int = 0) -> np.ndarray:
    """uint16 (frames, size, size): smooth bright blobs on a dim background, drifting by
    a few pixels a frame, with Gaussian noise."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    cell = 32
    coarse = rng.random((size // cell + 2, (size + 4 * frames) // cell + 2))
    field = ndimage.zoom(coarse, cell, order=3)[:size, : size + 4 * frames]
    blobs = 1.0 / (1.0 + np.exp(-12.0 * (field - 0.6)))  # soft-edged bright blobs
    stack = np.empty((frames, size, size), np.uint16)
    for t in range(frames):
        frame = 900.0 + 2600.0 * blobs[:, 4 * t : 4 * t + size]
        frame += 60.0 * rng.standard_normal((size, size), dtype=np.float32)
        stack[t] = np.clip(frame, 0, 65535).astype(np.uint16)
    return stack


# ----------------------------------------------------------------------- engines
def torch_unet(torch: Any, filters: int, pools: int, sigmoid: bool) -> Any:
    """The seed-default U-Net in PyTorch (NCHW module; fp16, channels-last, on the GPU)."""
    nn = torch.nn

    def block(c_in: int, c_out: int) -> Any:
        return nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1),
            nn.ReLU(inplace=True),
        )

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            widths = [filters * 2**level for level in range(pools)]
            ins = [1, *widths[:-1]]
            self.down = nn.ModuleList(block(a, b) for a, b in zip(ins, widths, strict=True))
            self.pool = nn.MaxPool2d(2)
            c = filters * 2**pools
            self.bottom = block(widths[-1], c)
            self.up = nn.ModuleList()
            self.decode = nn.ModuleList()
            for skip in reversed(widths):
                self.up.append(nn.ConvTranspose2d(c, skip, 2, stride=2))
                self.decode.append(block(2 * skip, skip))
                c = skip
            self.head = nn.Conv2d(c, 1, 1)

        def forward(self, x: Any) -> Any:
            skips = []
            for down in self.down:
                x = down(x)
                skips.append(x)
                x = self.pool(x)
            x = self.bottom(x)
            for up, decode, skip in zip(self.up, self.decode, reversed(skips), strict=True):
                x = decode(torch.cat([up(x), skip], dim=1))
            x = self.head(x)
            return torch.sigmoid(x) if sigmoid else x

    net = UNet().cuda().half().eval().to(memory_format=torch.channels_last)
    # The casts ran on PyTorch's default stream; the scheduler's streams do not wait for it.
    torch.cuda.synchronize()
    return net


class TorchEngine:
    """A PyTorch module on the scheduler's device buffers and stream (`DeviceEngine`).

    ``inputs`` is the float32 batch in the contract's layout, ``outputs`` the float32
    batch the module's result (fp16, NCHW) is copied into, converted and permuted back.
    """

    def __init__(self, torch: Any, net: Any, layout: str) -> None:
        self.torch = torch
        self.net = net
        self.nhwc = layout == "NHWC"
        self._streams: dict[int, Any] = {}

    def enqueue(self, inputs: Buffer, outputs: Buffer, stream: Any) -> None:
        torch = self.torch
        handle = int(stream.handle)
        external = self._streams.get(handle)
        if external is None:
            external = self._streams[handle] = torch.cuda.ExternalStream(handle)
        with torch.cuda.stream(external), torch.inference_mode():
            x = torch.as_tensor(inputs, device="cuda")
            y = torch.as_tensor(outputs, device="cuda")
            x = x.permute(0, 3, 1, 2) if self.nhwc else x  # an NCHW view, channels last
            x = x.half().contiguous(memory_format=torch.channels_last)
            out = self.net(x)
            y.copy_(out.permute(0, 2, 3, 1) if self.nhwc else out)


@dataclass
class Setup:
    """What a run needs: the executor's model description and options, the engine, and
    where they came from (for the header)."""

    model: Any
    config: ExecutorConfig
    engine: Any
    describe: str
    new_stream: Callable[[], VideoStream]
    close: Callable[[], None]


def tensorrt_setup(args: argparse.Namespace) -> Setup:
    """A TensorRT engine file through a Segmenter (its sidecar holds the contract)."""
    from unetrt import Segmenter
    from unetrt.backends.tensorrt import tensorrt_version
    from unetrt.gpu.executor import BackendEngine

    seg = Segmenter(
        args.engine, backend="tensorrt", device="cuda:0", tile=args.tile, batch=args.batch,
        stitch=args.stitch,
    )  # fmt: skip
    return Setup(
        seg.model,
        seg.executor_config,
        BackendEngine(seg.model),
        f"TensorRT {tensorrt_version()} engine {args.engine} ({seg.model.precision})",
        seg.stream,
        seg.close,
    )


def torch_setup(args: argparse.Namespace, torch: Any) -> Setup:
    """The PyTorch stand-in, with the contract of the ONNX U-Net of the same shape."""
    torch.backends.cudnn.benchmark = True
    output = "logits" if args.logits else "sigmoid"
    net = torch_unet(torch, args.filters, ALIGNMENT_POOLS, sigmoid=not args.logits)
    contract = ModelContract(
        alignment=2**ALIGNMENT_POOLS, halo=unet_receptive_radius(ALIGNMENT_POOLS), output=output
    )
    engine = TorchEngine(torch, net, contract.layout)
    describe = (
        f"PyTorch {torch.__version__} fp16 U-Net stand-in ({args.filters} filters, "
        f"{ALIGNMENT_POOLS} pools, transposed convolutions, {output}), channels-last, "
        f"cudnn.benchmark"
    )
    return contract_setup(args, contract, engine, describe)


def contract_setup(
    args: argparse.Namespace, contract: ModelContract, engine: Any, describe: str
) -> Setup:
    """The executor's model and options for ``contract``: from a Segmenter on the ONNX
    U-Net with that contract, or stated directly without the onnx package."""
    output = contract.output
    try:
        import onnx  # noqa: F401  (unet_model needs it)
    except ImportError:
        return direct_setup(args, contract, engine, describe + "; contract stated (no onnx)")
    from unetrt import Segmenter
    from unetrt.testing import save, unet_model

    folder = tempfile.TemporaryDirectory()
    path = Path(folder.name) / "unet.onnx"
    save(unet_model(filters=args.filters, pools=ALIGNMENT_POOLS, output=output,
                    contract=contract), path)  # fmt: skip
    seg = Segmenter(
        path, backend="onnxruntime", tile=args.tile, batch=args.batch, stitch=args.stitch,
        threads=2,
    )  # fmt: skip
    assert seg.contract.output == output and seg.model.output_channels == 1

    def close() -> None:
        seg.close()
        folder.cleanup()

    describe += "; contract from the ONNX U-Net's Segmenter"
    return Setup(seg.model, seg.executor_config, engine, describe, seg.stream, close)


def direct_setup(
    args: argparse.Namespace, contract: ModelContract, engine: Any, describe: str
) -> Setup:
    """The executor's options stated without a model file: one output channel, any
    batch (what `DeviceExecutor` reads of a `Model`)."""
    from unetrt.backends.base import ShapeRange

    tile = None if args.tile == "auto" else (int(args.tile), int(args.tile))
    policy = TilePolicy(
        alignment=contract.alignment, halo=contract.halo, tile=tile, max_tile_pixels=2048 * 2048
    )
    config = ExecutorConfig(
        contract=contract,
        tiles=policy,
        checks=FrameChecks(channels=contract.channels),
        batch=args.batch,
        stitch=args.stitch,
    )
    model = types.SimpleNamespace(output_channels=1, accepted=ShapeRange())
    return Setup(model, config, engine, describe, lambda: VideoStream("bench"), lambda: None)


# ----------------------------------------------------------------------- measuring
@dataclass
class Result:
    size: int
    tiles: int
    tile: int
    calls: int
    engine_fps: float
    end_to_end_fps: float
    foreground: float


def engine_calls(setup: Setup, height: int, width: int) -> tuple[Any, list[int]]:
    """The plan of a frame and the batch rows of each engine call, as the scheduler
    makes them (a fixed-batch engine always gets full batches)."""
    plan = setup.config.tiles.plan(height, width)
    batch = setup.config.batch
    padded = setup.model.accepted.fixed_batch is not None
    rows = [
        batch if padded else min(batch, plan.n_tiles - s) for s in range(0, plan.n_tiles, batch)
    ]
    return plan, rows


def engine_only(setup: Setup, device: CudaDevice, plan: Any, rows: list[int], frames: int) -> float:
    """(a): frames/s of the engine alone on device batches of the pipeline's shapes."""
    contract = setup.config.contract
    classes = setup.model.output_channels or 1
    stream = device.new_stream()
    rng = np.random.default_rng(1)
    buffers: dict[int, tuple[Buffer, Buffer]] = {}
    for n in sorted(set(rows)):
        th, tw = plan.tile_h, plan.tile_w
        nhwc = contract.layout == "NHWC"
        shape = (n, th, tw, contract.channels) if nhwc else (n, contract.channels, th, tw)
        out = (n, th, tw, classes) if nhwc else (n, classes, th, tw)
        inputs = device.alloc(shape, np.float32)
        host = rng.random(shape, np.float32)  # normalized-looking input
        device.upload(inputs, host, stream)
        device.synchronize_stream(stream)
        buffers[n] = (inputs, device.alloc(out, np.float32))
    for inputs, outputs in buffers.values():  # warm-up: cudnn picks its kernels
        for _ in range(3):
            setup.engine.enqueue(inputs, outputs, stream)
    device.synchronize_stream(stream)
    start = time.perf_counter()
    for _ in range(frames):
        for n in rows:
            setup.engine.enqueue(*buffers[n], stream)
    device.synchronize_stream(stream)
    return frames / (time.perf_counter() - start)


def end_to_end(
    setup: Setup, device: CudaDevice, stack: np.ndarray, depth: int
) -> tuple[float, float]:
    """(b): frames/s of `DeviceExecutor.run_masks` over the stack (host frames in, host
    masks out), and the foreground fraction of the masks."""
    executor = DeviceExecutor(setup.model, setup.config, device, setup.engine, depth=depth)
    try:
        # Warm-up: one frame per slot of the ring, so that every slot has its buffers.
        for _ in executor.run_masks(setup.new_stream(), stack[:depth]):
            pass
        foreground = 0
        start = time.perf_counter()
        for mask in executor.run_masks(setup.new_stream(), stack):
            foreground += int(np.count_nonzero(mask))
        seconds = time.perf_counter() - start
    finally:
        executor.close()
    return len(stack) / seconds, foreground / stack.size


def measure(setup: Setup, device: CudaDevice, size: int, frames: int, depth: int) -> Result:
    stack = synthetic_stack(frames, size, seed=size)
    plan, rows = engine_calls(setup, size, size)
    fps_a = engine_only(setup, device, plan, rows, frames)
    fps_b, foreground = end_to_end(setup, device, stack, depth)
    return Result(size, plan.n_tiles, plan.tile_h, len(rows), fps_a, fps_b, foreground)


# ----------------------------------------------------------------------- main
def unavailable() -> str | None:
    """Why this machine cannot run the benchmark, or None."""
    if not cuda_compiled():
        return "unetrt was built without CUDA (no nvcc at install time)"
    if cuda_device_count() == 0:
        return "no CUDA GPU is visible (no NVIDIA driver or GPU, or CUDA_VISIBLE_DEVICES)"
    return None


def choose_engine(args: argparse.Namespace) -> tuple[str | None, Any, str]:
    """("tensorrt" | "torch" | None, the torch module, a note)."""
    note = ""
    if args.engine:
        from unetrt.backends.tensorrt import tensorrt_available

        if tensorrt_available("cuda:0"):
            return "tensorrt", None, note
        note = f"--engine {args.engine} ignored: TensorRT is not importable here; "
    try:
        import torch
    except ImportError:
        return None, None, note + "no engine: PyTorch is not installed and no --engine (TensorRT)"
    if not torch.cuda.is_available():
        return None, None, note + f"no engine: PyTorch {torch.__version__} sees no CUDA GPU"
    return "torch", torch, note


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=32, help="frames per stack (default 32)")
    parser.add_argument(
        "--sizes", default="1024,2048", help="frame sizes, comma-separated (default 1024,2048)"
    )
    parser.add_argument("--tile", default="1152", help="largest tile, or auto (default 1152)")
    parser.add_argument("--batch", type=int, default=4, help="tiles per engine call (default 4)")
    parser.add_argument("--stitch", choices=["crop", "blend"], default="crop")
    parser.add_argument("--depth", type=int, default=3, help="frames in flight (default 3)")
    parser.add_argument("--filters", type=int, default=32, help="stand-in U-Net's first filters")
    parser.add_argument(
        "--logits", action="store_true", help="stand-in outputs logits (sigmoid on the device)"
    )
    parser.add_argument("--engine", help="a TensorRT engine file (used when TensorRT is here)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.frames < 1 or not sizes or min(sizes) < 1:
        parser.error("--frames and --sizes must be positive")

    why = unavailable()
    kind, torch, note = (None, None, "") if why else choose_engine(args)
    if why or kind is None:
        print(f"bench_gpu: not run: {why or note}")
        return 0
    if note:
        print(f"# {note.rstrip('; ')}")
    device = CudaDevice(0)
    setup = tensorrt_setup(args) if kind == "tensorrt" else torch_setup(args, torch)
    try:
        cfg = setup.config
        print(f"# {device.name}; {setup.describe}")
        print(
            f"# tile {args.tile} (halo {cfg.contract.halo}, alignment {cfg.contract.alignment}),"
            f" batch {cfg.batch}, {cfg.stitch}, {args.depth} frames in flight, "
            f"{args.frames} uint16 frames a stack in host memory"
        )
        print(
            f"{'size':<11} {'tiles':>8} {'calls':>5}  {'(a) engine f/s':>14}  "
            f"{'(b) end-to-end f/s':>18}  {'(b)/(a)':>7}  {'mask fg':>7}"
        )
        results = []
        for size in sizes:
            r = measure(setup, device, size, args.frames, args.depth)
            results.append(r)
            tiles = f"{r.tiles} x {r.tile}"
            print(
                f"{size}x{size:<6} {tiles:>8} {r.calls:>5}  {r.engine_fps:>14.2f}  "
                f"{r.end_to_end_fps:>18.2f}  {r.end_to_end_fps / r.engine_fps:>7.3f}  "
                f"{r.foreground:>7.1%}"
            )
            sys.stdout.flush()
        missed = [f"{r.size}x{r.size}" for r in results if r.end_to_end_fps < 0.9 * r.engine_fps]
        verdict = f"not met at {', '.join(missed)}" if missed else "met at every size"
        print(f"target (b) >= 0.9 x (a): {verdict}")
    finally:
        setup.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

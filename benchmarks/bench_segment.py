"""End-to-end segmentation speed and memory, against the plain alternatives, in one run.

Segments a synthetic uint16 stack (default 200 frames of 1024 x 1024) with a seed-default
U-Net (32 filters, 3 pools, 3x3 kernels, transpose-conv upsampling; random weights: speed
does not depend on them) and prints frames/s for:

  (a) the model alone on whole frames through ONNX Runtime (the ceiling),
  (b) `unetrt segment` end to end (read TIFF, normalize, tile, run, stitch, threshold, write),
  (c) the way users do it today: a NumPy loop over 512-pixel tiles with the seeds'
      default 95-pixel halo,
  (d) Keras `predict` on whole frames (only when TensorFlow is installed),

then, with --memory, the peak resident memory of `unetrt segment` for N and 10 x N frames
(separate processes; a small model so that 10 x N frames finish in minutes: memory growth
comes from the pipeline, not the model).

Usage:
    python benchmarks/bench_segment.py [--frames 200] [--size 1024] [--threads 2] [--memory]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tifffile

from unetrt import Segmenter
from unetrt.contract import ModelContract
from unetrt.testing import save, unet_model, unet_receptive_radius

SEED_TILE = 512
SEED_HALO = 95


def write_stack(path: Path, frames: int, size: int, seed: int = 0) -> None:
    """A synthetic uint16 time-lapse of square frames; see `write_rect_stack`."""
    write_rect_stack(path, frames, (size, size), seed)


def write_rect_stack(path: Path, frames: int, size: tuple[int, int], seed: int = 0) -> None:
    """A synthetic uint16 time-lapse: a moving bright disc on noise, written frame by frame."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    base = rng.integers(800, 1200, (h, w), dtype=np.uint16)
    with tifffile.TiffWriter(path, bigtiff=frames * h * w * 2 > 2**31) as tw:
        for t in range(frames):
            frame = base.copy()
            cy, cx = (h // 2 + 40 * np.sin(t / 10 + seed), w // 2 + 40 * np.cos(t / 10))
            frame[(yy - cy) ** 2 + (xx - cx) ** 2 < (min(h, w) // 8) ** 2] += 3000
            tw.write(frame, contiguous=True)


def session(model_path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])


def model_alone(model_path: Path, frames: int, size: int, threads: int) -> float:
    """(a) Frames/s of the bare model on pre-normalized whole frames."""
    sess = session(model_path, threads)
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(1).random((1, size, size, 1), dtype=np.float32)
    sess.run(None, {name: x})  # warm-up
    start = time.perf_counter()
    for _ in range(frames):
        sess.run(None, {name: x})
    return frames / (time.perf_counter() - start)


def unetrt_segment(model_path: Path, stack: Path, out: Path, threads: int) -> float:
    """(b) Frames/s of Segmenter.segment, the code behind `unetrt segment`."""
    with Segmenter(model_path, backend="onnxruntime", threads=threads) as seg:
        seg.predict_frame(np.zeros((64, 64), np.uint16))  # warm-up, like (a)
        summary = seg.segment(stack, out, progress=False)
    return summary.frames_per_second


def numpy_tiling(model_path: Path, stack: Path, out: Path, threads: int, align: int) -> float:
    """(c) The seeds' way: reflect-pad, loop over 512 tiles with a 95-pixel halo, crop."""
    sess = session(model_path, threads)
    name = sess.get_inputs()[0].name
    start = time.perf_counter()
    frames = tifffile.imread(stack)  # the usual script loads the whole stack
    frames = frames.reshape(-1, *frames.shape[-2:])
    masks = np.zeros(frames.shape, np.uint8)
    for t, frame in enumerate(frames):
        x = frame.astype(np.float32) / 65535.0
        x = np.clip(x + 0.5 - x.mean(), 0, 1)
        h, w = x.shape
        win = -(-(SEED_TILE + 2 * SEED_HALO) // align) * align
        padded = np.pad(x, ((SEED_HALO, win), (SEED_HALO, win)), mode="reflect")
        prob = np.zeros((h, w), np.float32)
        for y0 in range(0, h, SEED_TILE):
            for x0 in range(0, w, SEED_TILE):
                tile = padded[y0 : y0 + win, x0 : x0 + win]
                p = sess.run(None, {name: tile[None, :, :, None]})[0][0, :, :, 0]
                ch, cw = min(SEED_TILE, h - y0), min(SEED_TILE, w - x0)
                prob[y0 : y0 + ch, x0 : x0 + cw] = p[
                    SEED_HALO : SEED_HALO + ch, SEED_HALO : SEED_HALO + cw
                ]
        masks[t] = (prob > 0.5) * 255
    tifffile.imwrite(out, masks)
    return len(frames) / (time.perf_counter() - start)


def keras_predict(frames: int, size: int | tuple[int, int]) -> float | None:
    """(d) Keras predict on whole frames with the same architecture, if TensorFlow is here."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        from unetrt.train.models import UNetConfig, build_unet
    except ImportError:
        return None
    model = build_unet(UNetConfig(pools=3, filters=32, kernel_size=3, upsampling="transpose"))
    hw = (size, size) if isinstance(size, int) else size
    x = np.random.default_rng(1).random((1, *hw, 1), dtype=np.float32)
    model.predict(x, verbose=0)
    start = time.perf_counter()
    for _ in range(frames):
        model.predict(x, verbose=0)
    return frames / (time.perf_counter() - start)


def peak_memory_mib(model_path: Path, stack: Path, out: Path, threads: int, *options: str) -> float:
    """Peak RSS of one `unetrt segment` process (MiB), with more CLI options if given."""
    # VmHWM, not ru_maxrss: Linux carries a parent's ru_maxrss over fork and exec.
    code = (
        "import sys; from unetrt.cli import main; rc = main(sys.argv[1:]); "
        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]);"
        " sys.exit(rc)"
    )
    args = [str(stack), "-o", str(out), "--model", str(model_path), "--threads", str(threads)]
    res = subprocess.run(
        [sys.executable, "-c", code, "segment", *args, *options, "--quiet"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(res.stdout.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--memory", action="store_true", help="also measure N vs 10 x N frames")
    parser.add_argument("--workdir", type=Path, help="where to write stacks (default: a tmp dir)")
    args = parser.parse_args()

    tmp = tempfile.TemporaryDirectory(dir=args.workdir)
    work = Path(tmp.name)
    pools = 3
    contract = ModelContract(alignment=2**pools, halo=unet_receptive_radius(pools=pools, kernel=3))
    model_path = work / "unet32.onnx"
    save(unet_model(filters=32, pools=pools, kernel=3, contract=contract), model_path)
    stack = work / "stack.tif"
    write_stack(stack, args.frames, args.size)
    print(
        f"# {args.frames} frames {args.size}x{args.size} uint16, U-Net 32 filters / 3 pools, "
        f"halo {contract.halo}, {args.threads} threads, onnxruntime {ort.__version__}"
    )

    rows: list[tuple[str, float | None]] = []
    rows.append(
        (
            "(a) model alone, whole frames (ORT)",
            model_alone(model_path, args.frames, args.size, args.threads),
        )
    )
    rows.append(
        (
            "(b) unetrt segment, end to end",
            unetrt_segment(model_path, stack, work / "b.tif", args.threads),
        )
    )
    rows.append(
        (
            "(c) numpy 512-px tiles, 95-px halo",
            numpy_tiling(model_path, stack, work / "c.tif", args.threads, 2**pools),
        )
    )
    rows.append(("(d) keras predict, whole frames", keras_predict(args.frames, args.size)))
    ceiling = rows[0][1] or 1.0
    print(f"{'method':<40} {'frames/s':>10} {'x (a)':>8}")
    for name, fps in rows:
        if fps is None:
            print(f"{name:<40} {'n/a':>10} {'':>8}  (TensorFlow not installed)")
        else:
            print(f"{name:<40} {fps:>10.3f} {fps / ceiling:>8.3f}")
    b = rows[1][1] or 0.0
    print(
        f"target (b) >= 0.9 x (a): {'met' if b >= 0.9 * ceiling else 'NOT met'} ({b / ceiling:.3f})"
    )

    if args.memory:
        small = work / "small.onnx"
        small_contract = ModelContract(alignment=8, halo=unet_receptive_radius(pools=3, kernel=3))
        save(unet_model(filters=4, pools=3, kernel=3, contract=small_contract), small)
        long_stack = work / "long.tif"
        write_stack(long_stack, 10 * args.frames, args.size)
        m1 = peak_memory_mib(small, stack, work / "m1.tif", args.threads)
        m10 = peak_memory_mib(small, long_stack, work / "m10.tif", args.threads)
        print(
            f"peak RSS {args.frames} frames: {m1:.0f} MiB; "
            f"{10 * args.frames} frames: {m10:.0f} MiB; ratio {m10 / m1:.3f} (target <= 1.10)"
        )
    tmp.cleanup()


if __name__ == "__main__":
    main()

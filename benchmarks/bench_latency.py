"""Live latency: `segment_frame`, `submit` under a camera-like producer, the bare model.

For each frame size (520 x 696, a U373 frame; 1024 x 1024) with the default model:

  (a) the bare model: one ONNX Runtime run on the normalized frame (the floor),
  (b) `Segmenter.segment_frame` (normalize, tile, run, stitch, threshold),
  (c) `Segmenter.submit` with a producer at 1x the engine's rate (frames every p50 of (b)),
  (d) the same at 2x, with ``when_full="drop_oldest"`` (a camera faster than the engine),

printing p50 / p99 latency in ms (for (c) and (d): from `submit` until the mask is there)
and, for (d), how many frames were dropped. Ratios are against (a), measured in the same
process. Last, (e): the rate `unetrt segment --follow` keeps up with, measured as its
throughput on a TIFF whose pages are all there (the idle timeout subtracted).

Usage:
    python benchmarks/bench_latency.py [--frames 60] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tifffile

from unetrt import Segmenter
from unetrt.models import builtin_path
from unetrt.normalize import normalize_frame


def phase_contrast_like(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Dark cells with bright halos on a noisy grey background, uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    frame = 120.0 + rng.normal(0, 6, shape)
    for _ in range(shape[0] * shape[1] // 20000):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(8, 20)
        d = np.hypot(yy - cy, xx - cx)
        frame += np.where(d < r, -30, 0) + np.where((d >= r) & (d < r + 3), 60, 0)
    return np.clip(frame, 0, 255).astype(np.uint8)


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def bare_model(seg: Segmenter, frames: list[np.ndarray], threads: int) -> list[float]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(seg.model.path), opts, providers=["CPUExecutionProvider"])
    a = seg.contract.alignment
    times = []
    for frame in frames:
        x = normalize_frame(frame, seg.contract.normalization)
        h, w = x.shape
        x = np.pad(x, ((0, -h % a), (0, -w % a)), mode="reflect")[None, :, :, None]
        start = time.perf_counter()
        session.run(None, {seg.model.image.name: x})
        times.append(time.perf_counter() - start)
    return times


def segment_frame(seg: Segmenter, frames: list[np.ndarray]) -> list[float]:
    times = []
    for frame in frames:
        start = time.perf_counter()
        seg.segment_frame(frame)
        times.append(time.perf_counter() - start)
    return times


def submit_at(seg: Segmenter, frames: list[np.ndarray], interval: float) -> list[float]:
    """Latency of every completed frame with a producer submitting every `interval` s."""
    done: list[float] = []
    lock = threading.Lock()
    futures = []
    next_at = time.perf_counter()
    for frame in frames:
        while time.perf_counter() < next_at:
            time.sleep(max(0.0, min(0.002, next_at - time.perf_counter())))
        submitted = time.perf_counter()
        future = seg.submit(frame)

        def finished(fut, t0=submitted) -> None:
            if not fut.cancelled():
                with lock:
                    done.append(time.perf_counter() - t0)

        future.add_done_callback(finished)
        futures.append(future)
        next_at += interval
    for future in futures:
        if not future.cancelled():
            future.exception()  # wait
    return done


def follow_rate(seg: Segmenter, frames: list[np.ndarray], folder: Path) -> float:
    """Frames/s `Segmenter.segment(follow=True)` sustains: catching up a written TIFF."""
    src = folder / "acq.tif"
    with tifffile.TiffWriter(src) as tw:
        for frame in frames:
            tw.write(frame, contiguous=False, metadata=None)
    idle = 0.5
    start = time.perf_counter()
    summary = seg.segment(
        src, folder / "acq_mask.tif", follow=True, idle_timeout=idle, progress=False
    )
    assert summary.frames == len(frames)
    return len(frames) / (time.perf_counter() - start - idle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(
        f"# default model ({builtin_path('default').name}), {args.threads} threads, "
        f"onnxruntime {ort.__version__}"
    )
    print(f"{'size':<11} {'method':<38} {'p50 ms':>8} {'p99 ms':>8} {'p50 x (a)':>9}  dropped")
    for shape in [(520, 696), (1024, 1024)]:
        frames = [phase_contrast_like(shape, seed=i) for i in range(args.frames)]
        with Segmenter(threads=args.threads) as seg:
            seg.segment_frame(frames[0])  # warm up
            a = percentiles(bare_model(seg, frames, args.threads))
            b = percentiles(segment_frame(seg, frames))
            rows = [("(a) bare model (ORT)", a, ""), ("(b) segment_frame", b, "")]
        with Segmenter(threads=args.threads, queue_size=4) as seg:
            seg.segment_frame(frames[0])
            c = percentiles(submit_at(seg, frames, b[0] / 1e3))
            rows.append(("(c) submit, producer at 1x", c, str(seg.dropped)))
        with Segmenter(threads=args.threads, queue_size=2, when_full="drop_oldest") as seg:
            seg.segment_frame(frames[0])
            d = percentiles(submit_at(seg, frames, b[0] / 2e3))
            rows.append(("(d) submit, producer at 2x, drop_oldest", d, str(seg.dropped)))
        with Segmenter(threads=args.threads) as seg, tempfile.TemporaryDirectory() as tmp:
            rate = follow_rate(seg, frames, Path(tmp))
        size = f"{shape[0]}x{shape[1]}"
        for name, (p50, p99), dropped in rows:
            print(f"{size:<11} {name:<38} {p50:>8.1f} {p99:>8.1f} {p50 / a[0]:>9.3f}  {dropped}")
        print(
            f"{size:<11} {'(e) --follow sustains':<38} {rate:>8.2f} frames/s "
            f"({1e3 / rate:.1f} ms a frame)"
        )
        print(
            f"target: p50 (b) <= 1.1 x p50 (a): {'met' if b[0] <= 1.1 * a[0] else 'NOT met'} "
            f"({b[0] / a[0]:.3f})"
        )


if __name__ == "__main__":
    main()

"""Temporal models: frames/s of a per-frame U-Net, stream mode and window mode, side by side.

Runs, on the same video (default: the first 40 frames of ../shared/data/ctc-u373-02,
520 x 696; a synthetic one with ``--synthetic``):

  (a) the per-frame U-Net (``--frame-model``, default: the built-in ``default``),
  (b) the temporal step model (``--temporal-model``, default: ``default-temporal``) in
      stream mode: one step per frame,
  (c) the same model in window mode (T = the model's time_steps): its frame part once
      per frame, its state part for the T-1 earlier frames of each window
      (`unetrt.stepsplit`),
  (d) window mode without the split: T full steps per frame,

each through `Segmenter.predict_frames` with the same tiles and threads, after one
warm-up frame. It prints frames/s, the ratios against (a) and (b) measured in the same
process, the models' sizes (file size, parameters) and the temporal model's states.

Usage:
    python benchmarks/bench_temporal.py [--frames 40] [--tile auto] [--threads N]
        [--frame-model default] [--temporal-model default-temporal] [--synthetic]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from unetrt import Segmenter, temporal
from unetrt.errors import UnetrtError
from unetrt.io import open_frames
from unetrt.models import resolve_model
from unetrt.onnxgraph import read_graph

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ctc-u373-02" / "frames"


def video(frames: int, synthetic: bool) -> list[np.ndarray]:
    """The frames to segment: U373's first `frames`, or smooth moving noise."""
    if not synthetic and DATA.is_dir():
        with open_frames(DATA) as src:
            return [src.read(i) for i in range(min(frames, len(src)))]
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    base = gaussian_filter(rng.random((520 + frames, 696 + frames)), 3.0)
    scaled = (base - base.min()) / (base.max() - base.min()) * 4000
    return [scaled[t : t + 520, t : t + 696].astype(np.uint16) for t in range(frames)]


def model_size(path: Path) -> str:
    """File size and parameters."""
    graph = read_graph(path)
    params = sum(int(np.prod(v.dims)) for v in graph.initializers.values())
    return f"{path.stat().st_size / 1e6:.2f} MB, {params / 1e6:.3f} M parameters"


def run(model: str, frames: list[np.ndarray], **options: object) -> tuple[float, Segmenter]:
    seg = Segmenter(model, **options)  # type: ignore[arg-type]
    list(seg.predict_frames(frames[:1], seg.stream()))  # warm-up: first calls, arenas
    started = time.perf_counter()
    for _ in seg.predict_frames(frames, seg.stream()):
        pass
    return len(frames) / (time.perf_counter() - started), seg


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--tile", default="auto")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--frame-model", default="default")
    parser.add_argument("--temporal-model", default="default-temporal")
    parser.add_argument("--synthetic", action="store_true")
    args = parser.parse_args()
    try:
        paths = [resolve_model(args.frame_model), resolve_model(args.temporal_model)]
        for path in paths:
            if not path.is_file():
                raise UnetrtError(f"no model file {path}")
    except UnetrtError as exc:
        print(f"bench_temporal: {exc}", file=sys.stderr)
        return 1
    frames = video(args.frames, args.synthetic)
    h, w = frames[0].shape[:2]
    options = {"tile": args.tile, "threads": args.threads}
    print(f"video: {len(frames)} frames of {h} x {w}; tile {args.tile}; threads {args.threads}")
    rows = []
    frame_fps, seg = run(args.frame_model, frames, **options)
    rows.append(("(a) per-frame U-Net", frame_fps, paths[0], seg))
    stream_fps, seg = run(args.temporal_model, frames, temporal="stream", **options)
    rows.append(("(b) temporal, stream", stream_fps, paths[1], seg))
    window_fps, seg = run(args.temporal_model, frames, temporal="window", **options)
    shared = "frame part shared" if seg._executor.shares_frame_work else "not split"
    rows.append((f"(c) window T={seg.contract.time_steps}, {shared}", window_fps, paths[1], seg))
    split, temporal.split_step_model = temporal.split_step_model, lambda *args: None
    try:
        plain_fps, seg = run(args.temporal_model, frames, temporal="window", **options)
    finally:
        temporal.split_step_model = split
    rows.append((f"(d) window T={seg.contract.time_steps}, T full steps", plain_fps, paths[1], seg))
    print(f"{'':<36} {'frames/s':>9} {'vs (a)':>7} {'vs (b)':>7}  model")
    for name, fps, path, seg in rows:
        size = model_size(path)
        print(f"{name:<36} {fps:9.2f} {fps / frame_fps:7.2f} {fps / stream_fps:7.2f}  {size}")
        seg.close()
    states = rows[1][3].contract.states
    print("states: " + ", ".join(f"{s.input} ({s.channels} ch, stride {s.stride})" for s in states))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The CPU engines side by side: model-only ceilings and `unetrt segment`, per backend and
precision, for the default model and a seed-default U-Net, in one run.

For each model and frame size it prints frames/s of

  model alone, whole frames (the ceilings; the runtime's own API on a float32 frame):
    ORT fp32, ORT int8 (the QDQ model `build-engine --int8` made), OV fp32, OV bf16
    (where the processor has bfloat16 instructions), OV int8 (NNCF)
  `unetrt segment` end to end (read TIFF, normalize, tile, run, stitch, threshold,
    write), with each of those engines
  a NumPy loop over 512-pixel tiles with the seeds' 95-pixel halo (ORT fp32)
  Keras `predict` on whole frames (seed-default model, when TensorFlow is installed)

with each rate as a ratio to ORT fp32 model-only and to its own backend's model-only
rate, then (--memory) the peak resident memory of `unetrt segment` with default options
per frame size (separate processes).

Engines are built once per model with `unetrt.engines.build_engine`, calibrated on the
U373 frames in ../shared/data when they are there, else on the synthetic stack.

Usage:
    python benchmarks/bench_cpu_engines.py [--sizes 520x696,1024,2048] [--frames 4]
        [--threads 2] [--seed-model FOREIGN.onnx] [--memory]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_segment import (  # noqa: E402
    keras_predict,
    numpy_tiling,
    peak_memory_mib,
    write_rect_stack,
)

from unetrt import Segmenter  # noqa: E402
from unetrt.backends import openvino_available  # noqa: E402
from unetrt.contract import ModelContract  # noqa: E402
from unetrt.engines import build_engine  # noqa: E402
from unetrt.testing import save, unet_model, unet_receptive_radius  # noqa: E402

U373 = Path(__file__).resolve().parents[2] / "shared" / "data" / "ctc-u373-02" / "frames"


def parse_size(text: str) -> tuple[int, int]:
    h, _, w = text.partition("x")
    return int(h), int(w or h)


def timed(run: Callable[[], Any], frames: int) -> float:
    run()  # warm-up (and OpenVINO's compilation for this shape)
    start = time.perf_counter()
    for _ in range(frames):
        run()
    return frames / (time.perf_counter() - start)


def ort_alone(model: Path, size: tuple[int, int], frames: int, threads: int) -> float:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(1).random((1, *size, 1), dtype=np.float32)
    return timed(lambda: sess.run(None, {name: x}), frames)


def ov_alone(model: Path, size: tuple[int, int], frames: int, threads: int, hint: str) -> float:
    import openvino as ov

    core = ov.Core()
    m = core.read_model(str(model))
    m.reshape([1, *size, 1])
    config = {
        "INFERENCE_PRECISION_HINT": hint,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": threads,
    }
    request = core.compile_model(m, "CPU", config).create_infer_request()
    x = np.random.default_rng(1).random((1, *size, 1), dtype=np.float32)
    return timed(lambda: request.infer([x]), frames)


def segment_rate(
    model: Path, stack: Path, out: Path, threads: int, backend: str, size: tuple[int, int]
) -> float:
    with Segmenter(model, backend=backend, threads=threads) as seg:
        # Warm-up at the stack's frame size, as the model-alone rates have it: OpenVINO
        # compiles once per shape and ONNX Runtime plans its memory once per shape.
        seg.predict_frame(np.zeros(size, np.uint16))
        return seg.segment(stack, out, progress=False).frames_per_second


def build_engines(model: Path, calibration: Path, work: Path, overrides: dict[str, Any]) -> dict:
    """name -> (file, backend) of every engine this machine can run."""
    engines = {"ORT fp32": (model, "onnxruntime")}
    out = build_engine(
        model,
        work / f"{model.stem}-int8.onnx",
        backend="onnxruntime",
        precision="int8",
        calibration=calibration,
        force=True,
        **overrides,
    )
    print(f"  {out.output.name}: {out.accuracy}")
    engines["ORT int8"] = (out.output, "onnxruntime")
    if openvino_available():
        from unetrt.backends.openvino import bf16_supported

        engines["OV fp32"] = (model, "openvino")
        precisions = ["bf16", "int8"] if bf16_supported() else ["int8"]
        for precision in precisions:
            out = build_engine(
                model,
                work / f"{model.stem}-{precision}.xml",
                backend="openvino",
                precision=precision,
                calibration=calibration,
                force=True,
                **overrides,
            )
            print(f"  {out.output.name}: {out.accuracy}")
            engines[f"OV {precision}"] = (out.output, "openvino")
    return engines


def alone(name: str, file: Path, size: tuple[int, int], frames: int, threads: int) -> float:
    if name.startswith("ORT"):
        return ort_alone(file, size, frames, threads)
    hint = "bf16" if name.endswith("bf16") else "f32"
    return ov_alone(file, size, frames, threads, hint)


def bench_model(label: str, model: Path, args: argparse.Namespace, work: Path, **overrides: Any):
    calibration = U373 if U373.is_dir() else work / "calibration.tif"
    if not U373.is_dir():
        write_rect_stack(calibration, 8, (520, 696))
    print(f"\n## {label} ({model.name})\nengines (calibrated on {calibration}):")
    engines = build_engines(model, calibration, work, overrides)
    rows = []
    for size in map(parse_size, args.sizes.split(",")):
        # --frames at 1024 x 1024; as many pixels at other sizes (at least 3 frames)
        frames = max(3, round(args.frames * 1024 * 1024 / (size[0] * size[1])))
        stack = work / f"stack_{size[0]}x{size[1]}.tif"
        write_rect_stack(stack, frames, size)
        ceilings = {n: alone(n, f, size, frames, args.threads) for n, (f, _) in engines.items()}
        base = ceilings["ORT fp32"]
        for n, rate in ceilings.items():
            rows.append((size, f"model alone, {n}", rate, rate / base, None))
        for n, (file, backend) in engines.items():
            # A built model runs as built; the plain one on the backend named.
            rate = segment_rate(file, stack, work / "out.tif", args.threads, backend, size)
            rows.append((size, f"unetrt segment, {n}", rate, rate / base, rate / ceilings[n]))
        rate = numpy_tiling(model, stack, work / "np.tif", args.threads, 8)
        rows.append((size, "NumPy 512-px tiles, 95-px halo (ORT fp32)", rate, rate / base, None))
        if label.startswith("seed"):
            keras = keras_predict(frames, size)
            if keras is not None:
                rows.append((size, "Keras predict, whole frames", keras, keras / base, None))
        if args.memory:
            for backend in (
                ("onnxruntime", "openvino") if openvino_available() else ("onnxruntime",)
            ):
                mib = peak_memory_mib(
                    model, stack, work / "mem.tif", args.threads, "--backend", backend
                )
                rows.append((size, f"peak RSS, segment --backend {backend} (MiB)", mib, None, None))
    print("\n| size | method | frames/s | x ORT fp32 alone | x own model alone |")
    print("| --- | --- | --- | --- | --- |")
    for size, method, rate, vs_base, vs_own in rows:
        value = f"{rate:.0f}" if "MiB" in method else f"{rate:.3f}"
        ratios = ["" if v is None else f"{v:.3f}" for v in (vs_base, vs_own)]
        print(f"| {size[0]} x {size[1]} | {method} | {value} | {' | '.join(ratios)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="520x696,1024,2048")
    parser.add_argument(
        "--frames", type=int, default=4, help="frames at 1024 x 1024 (as many pixels at others)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--seed-model",
        type=Path,
        help="a seed-default U-Net trained elsewhere (ONNX without a contract; fed with "
        "--normalize percentile); default: one with random weights and its contract",
    )
    parser.add_argument("--memory", action="store_true", help="also peak RSS per size")
    parser.add_argument("--models", default="default,seed", help="which of default,seed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "default" in args.models:
            from unetrt.models import builtin_path

            bench_model("default model", builtin_path("default"), args, work)
        if "seed" in args.models:
            if args.seed_model is not None:
                bench_model(
                    "seed-default U-Net, trained (foreign)",
                    args.seed_model,
                    args,
                    work,
                    normalization={"method": "percentile"},
                )
            else:
                path = work / "seed32.onnx"
                contract = ModelContract(alignment=8, halo=unet_receptive_radius(pools=3))
                save(unet_model(filters=32, pools=3, contract=contract), path)
                bench_model("seed-default U-Net, random weights", path, args, work)


if __name__ == "__main__":
    main()

"""The ``unetrt`` command line: a thin layer over `unetrt.Segmenter` and friends.

User mistakes (`UnetrtError`, unreadable files, Ctrl-C) end with one readable line on
stderr and a non-zero exit code, never a traceback; anything else is a bug and keeps it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__, build_info
from .backends import BACKENDS, PRECISIONS
from .errors import ConfigError, UnetrtError, require
from .io.writer import FORMATS
from .normalize import METHODS, SCOPES
from .tensorrt_build import DEFAULT_TILE, OPT_LEVELS

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130

Command = Callable[[argparse.Namespace], int]

#: Subcommand -> (its line in `unetrt --help`, its description in `unetrt NAME --help`).
COMMANDS: dict[str, tuple[str, str | None]] = {
    "segment": (
        "segment a TIFF stack, a folder or a glob of frames into a mask stack",
        "Segment every frame of INPUT and write a uint8 mask stack "
        "(0 background, 255 foreground; class index for multi-class models).",
    ),
    "info": (
        "show a model's contract and what was inferred",
        None,
    ),
    "train": (
        "train a U-Net from a JSON configuration or a few annotated frames (needs unetrt[train])",
        "Train the model CONFIG describes, or (--images DIR --masks DIR) a U-Net for a few "
        "annotated frames, from scratch or --from default; writes model.keras, config.json, "
        "log.csv, summary.json, checkpoints/ and montages/ into the output folder. With "
        "--find-lr, a learning-rate range test instead: lr_finder.png and lr_finder.json.",
    ),
    "export": (
        "export a trained Keras model to ONNX with its contract (needs unetrt[train])",
        "Convert MODEL.keras to ONNX (input 'frame', dynamic batch/height/width, "
        "the model contract in its metadata) and check ONNX Runtime against Keras.",
    ),
    "build-engine": (
        "build a model for an engine: TensorRT on an NVIDIA GPU (fp32, fp16, bf16, int8), "
        "OpenVINO (fp32, bf16, int8) or ONNX Runtime (int8) on the CPU",
        "Build MODEL (an ONNX file or a built-in name) for one backend and precision and "
        "write it with its contract, so that 'unetrt segment --model OUT' runs it without "
        "flags. int8 is calibrated on your own frames (--calibration STACK); with "
        "calibration frames the build reports what the precision costs against float32 "
        "and refuses a model whose masks drop too far (unless --force). A TensorRT engine "
        "runs on the GPU and TensorRT version it was built with (see --version-compatible "
        "and --hardware-compatible), for the batch (--max-batch) and tile sizes (--tile) "
        "it was built for.",
    ),
    "evaluate": (
        "segment annotated frames and report Dice, IoU and pixel difference",
        "Segment IMAGES with the engine and compare with MASKS (foreground: "
        "label > 0) frame by frame.",
    ),
    "compare": (
        "train (or reuse), export and evaluate several configurations on the same "
        "frames (needs unetrt[train])",
        "For each training CONFIG: take the finished model in its output_dir (or train "
        "it), export it to ONNX and evaluate it on IMAGES against MASKS; writes "
        "comparison.csv, comparison_frames.csv, comparison.png and the ONNX models "
        "into OUT_DIR.",
    ),
}


def parse_frames(text: str) -> slice:
    """Parse ``START:STOP[:STEP]`` (each part optional) into a slice of frame indices."""
    parts = text.split(":")
    if len(parts) == 1:  # one frame; -1 is the last one
        stop = int(parts[0]) + 1 if parts[0].lstrip("-").isdigit() else None
        parts = [parts[0], "" if stop in (None, 0) else str(stop)]
    if len(parts) > 3:
        raise ConfigError(f"--frames must be START:STOP[:STEP], got {text!r}")
    try:
        values = [int(p) if p.strip() else None for p in parts]
    except ValueError:
        raise ConfigError(
            f"--frames must be START:STOP[:STEP] with integers, got {text!r}"
        ) from None
    if len(values) == 3 and values[2] is not None and values[2] <= 0:
        raise ConfigError(f"--frames step must be positive, got {text!r}")
    return slice(*values)


def _normalization_changes(args: argparse.Namespace) -> dict[str, object] | None:
    changes: dict[str, object] = {}
    if args.normalize is not None:
        changes["method"] = args.normalize
    if args.normalize_scope is not None:
        changes["scope"] = args.normalize_scope
    if args.percentiles is not None:
        try:
            low, high = (float(v) for v in args.percentiles.split(","))
        except ValueError:
            raise ConfigError(
                f"--percentiles must be LOW,HIGH (e.g. 1,99.8), got {args.percentiles!r}"
            ) from None
        changes.update(low=low, high=high)
    if args.illumination is not None:
        if args.illumination < 0:
            raise ConfigError(f"--illumination must be >= 0 pixels, got {args.illumination}")
        changes["illumination_sigma"] = args.illumination if args.illumination > 0 else None
    return changes or None


def _cmd_segment(args: argparse.Namespace) -> int:
    from .postprocess import PostProcess
    from .segmenter import DEFAULT_IDLE_TIMEOUT, Segmenter

    if args.idle_timeout is not None and not args.follow:
        raise ConfigError("--idle-timeout goes with --follow")
    several = len(args.input) > 1
    for flag, given in (
        ("--follow", args.follow),
        ("--probabilities", args.probabilities),
        ("--frames", args.frames),
    ):
        if given and several:
            raise ConfigError(f"{flag} takes one input; got {len(args.input)} inputs")
        if given and args.scheduler:
            raise ConfigError(f"{flag} cannot be combined with --scheduler")
    postprocess = PostProcess(
        min_size=args.min_size,
        fill_holes=args.fill_holes,
        clear_border=args.clear_border,
        label=args.label,
    )
    with Segmenter(
        args.model,
        **_run_options(args),
        halo=args.halo,
        stitch=args.stitch,
        normalization=_normalization_changes(args),
        postprocess=postprocess,
    ) as segmenter:
        if several or args.scheduler:
            if several:
                run = segmenter.segment_many(
                    args.input,
                    args.output,
                    progress=not args.quiet,
                    resume=args.resume,
                    format=args.format,
                    scheduler=args.scheduler,
                )
            else:
                run = _one_on_cluster(segmenter, args)
            if not args.quiet:
                for video in run.videos:
                    print(video)
            for source, message in run.failed:  # one line each, naming the input
                named = message if Path(source).name in message else f"{source}: {message}"
                print(f"unetrt: error: {named}", file=sys.stderr)
            if run.failed:
                print(
                    f"unetrt: {len(run.failed)} of {len(args.input)} videos failed; the "
                    f"others were segmented",
                    file=sys.stderr,
                )
                return EXIT_ERROR
            return 0
        summary = segmenter.segment(
            args.input[0],
            args.output,
            probabilities=args.probabilities,
            frames=parse_frames(args.frames) if args.frames else None,
            progress=not args.quiet,
            follow=args.follow,
            idle_timeout=DEFAULT_IDLE_TIMEOUT if args.idle_timeout is None else args.idle_timeout,
            resume=args.resume,
            format=args.format,
        )
    if args.follow:  # the masks are kept: a late second Ctrl-C must not look like a failure
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not args.quiet:
        print(summary)
    return 0


def _one_on_cluster(segmenter: Any, args: argparse.Namespace) -> Any:
    """One input with --scheduler: its output named by -o, as without a cluster."""
    from .cluster import segment_on_cluster
    from .segmenter import check_format, default_output

    output = Path(args.output) if args.output else default_output(Path(args.input[0]), args.format)
    check_format(args.format, output)
    return segment_on_cluster(
        segmenter, args.input, [output], args.scheduler, resume=args.resume, progress=not args.quiet
    )


def _cmd_info(args: argparse.Namespace) -> int:
    from .model import open_model
    from .models import BUILTIN_MODELS

    if args.model is None:
        print("built-in models (use the name as MODEL or --model NAME):")
        for name, (_, what) in BUILTIN_MODELS.items():
            print(f"  {name:<14} {what}")
        return 0
    with open_model(
        args.model, backend=args.backend, device=args.device, precision=args.precision
    ) as model:
        backend, image = model.backend, model.image
        report = {
            "model": str(model.path),
            "backend": backend.name,
            "device": backend.device,
            "precision": model.precision,
            "built": None if model.built is None else model.built.to_dict(),
            "input": {"name": image.name, "shape": list(image.shape)},
            "output": {"name": model.prediction.name, "shape": list(model.prediction.shape)},
            "output_channels": model.output_channels,
            "contract": model.contract.to_dict(),
            "inferred": model.inferred,
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"model        {report['model']}")
    print(f"backend      {backend.name} on {backend.device}, {model.precision}")
    if model.built is not None:
        details = ", ".join(f"{k} {json.dumps(v)}" for k, v in model.built.details.items())
        print(f"built        for {model.built.backend} in {model.built.precision}: {details}")
    print(f"input        {image.name} {_shape(image.shape)} ({backend.layout})")
    print(f"output       {model.output_channels} channel(s), {model.contract.output}")
    if model.contract.input_channels:
        codes = json.dumps([c.to_json() for c in model.contract.input_channels])
        print(f"channels     {codes}: the model's channels of each raw frame")
    for state in model.contract.states:
        print(
            f"state        {state.input} -> {state.output}: {state.channels} channel(s) at "
            f"1/{state.stride} of the frame (a step model: --temporal stream, the default, "
            f"or window)"
        )
    print("contract")
    for key, value in model.contract.to_dict().items():
        source = model.inferred.get(key, "model metadata")
        print(f"  {key:<14} {json.dumps(value):<40} [{source}]")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    if args.write_config:
        from .train.quickstart import write_template

        write_template(args.write_config)
        if not args.quiet:
            print(f"wrote a training configuration to start from: {args.write_config}")
        return 0
    require("tensorflow", "train")
    from .train.run import train

    config: Any = args.config
    if args.config is None:
        from .train.quickstart import few_frames_config

        if not (args.images and args.masks):
            raise ConfigError("give a CONFIG file, or --images DIR and --masks DIR")
        config = few_frames_config(
            args.images,
            args.masks,
            args.output_dir or "unetrt-run",
            start_from=args.start_from,
            minutes=args.minutes,
        )
    else:
        for flag, given in (("--images", args.images), ("--masks", args.masks),
                            ("--from", args.start_from)):  # fmt: skip
            if given:
                raise ConfigError(f"{flag} builds a configuration; it cannot go with CONFIG")
        if args.minutes is not None:
            from .train.config import load_config

            config = {**load_config(args.config).to_dict(), "train_max_minutes": args.minutes}
    if args.find_lr:
        return _find_lr(args, config)
    for flag, value in (("--lr-steps", args.lr_steps), ("--lr-range", args.lr_range)):
        if value is not None:
            raise ConfigError(f"{flag} goes with --find-lr")
    path = train(
        config,
        output_dir=args.output_dir,
        resume=args.resume,
        epochs=args.epochs,
        verbose=0 if args.quiet else 2,
    )
    if not args.quiet:
        summary = json.loads((path.parent / "summary.json").read_text())
        stop = "time budget" if summary["stopped_by_time"] else "schedule / early stopping"
        print(
            f"trained {summary['steps']} steps in {summary['minutes']:.1f} min (ended by "
            f"{stop}; best epoch {summary['best_epoch']}, validation Dice "
            f"{summary['val_dice']}, training Dice {summary['train_dice']})"
        )
        for line in summary["warnings"]:
            print(f"warning: {line}")
        print(f"trained model written to {path}")
        onnx = path.with_suffix(".onnx")
        print("next:")
        print(f"  unetrt export {path} -o {onnx}")
        print(f"  unetrt segment VIDEO.tif --model {onnx}")
    return 0


def _find_lr(args: argparse.Namespace, config: Any) -> int:
    """``unetrt train CONFIG --find-lr``: the learning-rate range test instead of a run."""
    from .train.lrfind import find_lr

    for flag, value in (("--resume", args.resume), ("--epochs", args.epochs),
                        ("--minutes", args.minutes)):  # fmt: skip
        if value is not None:
            raise ConfigError(f"--find-lr trains no model to keep; it cannot go with {flag}")
    options: dict[str, Any] = {}
    if args.lr_steps is not None:
        options["steps"] = args.lr_steps
    if args.lr_range is not None:
        options["start"], options["stop"] = args.lr_range
    result = find_lr(config, output_dir=args.output_dir, **options)
    ending = (
        "reached the top of the range"
        if result.diverged_at is None
        else f"diverged at {result.diverged_at:.2g}"
    )
    print(f"suggested learning rate (model_lr): {result.suggested:.2g} (the loss {ending})")
    print(f"plot written to {result.plot} (rates and losses in {result.table.name})")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    require("tensorflow", "train")
    from .export import describe, export

    contract = export(
        args.model,
        args.output,
        config=args.config,
        check_frames=args.check_images,
        atol=args.atol,
        window=args.window,
    )
    if not args.quiet:
        print(f"exported {args.model} -> {args.output} (ONNX Runtime matches Keras)")
        print(describe(contract))
    return 0


def _cmd_build_engine(args: argparse.Namespace) -> int:
    from .engines import build_engine
    from .tensorrt_build import TensorRTOptions

    precision = args.precision or ("int8" if args.int8 else "fp32")
    if args.int8 and precision != "int8":
        raise ConfigError(f"--int8 contradicts --precision {args.precision}")
    report = build_engine(
        args.model,
        args.output,
        backend=args.backend,
        precision=precision,
        calibration=args.calibration,
        calibration_frames=args.calibration_frames,
        method=args.calibrate,
        max_dice_drop=args.max_dice_drop,
        force=args.force,
        tensorrt=TensorRTOptions(
            max_batch=args.max_batch,
            workspace=args.workspace,
            opt_level=args.opt_level,
            timing_cache=args.timing_cache,
            version_compatible=args.version_compatible,
            hardware_compatible=args.hardware_compatible,
        ),
        device=args.device,
        tile=args.tile,
        threads=args.threads,
        nan=args.nan,
        halo=args.halo,
        threshold=args.threshold,
        normalization=_normalization_changes(args),
    )
    if not args.quiet:
        print(report)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate
    from .postprocess import PostProcess

    report = evaluate(
        args.model,
        args.images,
        args.masks,
        csv=args.csv,
        pair=args.pair,
        **_run_options(args),
        halo=args.halo,
        normalization=_normalization_changes(args),
        postprocess=PostProcess(min_size=args.min_size, fill_holes=args.fill_holes),
    )
    print(report.table())
    if args.csv:
        print(f"scores written to {args.csv}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .train.compare import compare

    result = compare(
        args.config,
        args.images,
        args.masks,
        output_dir=args.output_dir,
        retrain=args.retrain,
        pair=args.pair,
        verbose=0 if args.quiet else 2,
        progress=None if args.quiet else print,
    )
    print(result.table())
    print(f"comparison written to {result.csv}, {result.frames_csv.name} and {result.plot.name}")
    return 0


def _shape(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def build_parser() -> argparse.ArgumentParser:
    """The ``unetrt`` argument parser (subcommands register themselves here)."""
    parser = argparse.ArgumentParser(
        prog="unetrt",
        description="Segment microscopy videos with U-Net models (ONNX Runtime / TensorRT).",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    seg = _command(sub, "segment", _cmd_segment)
    seg.add_argument(
        "input",
        nargs="+",
        help="multi-page TIFF, single frame, folder, or glob of frames; several inputs "
        "are segmented one after the other",
    )
    seg.add_argument(
        "-o",
        "--output",
        help="mask output: a TIFF, or an OME-Zarr image for *.zarr (default: "
        "<input>_mask.tif); with several inputs, a folder (created if missing) receiving "
        "<stem>_mask.tif (or .ome.zarr, see --format) for each",
    )
    _add_engine_options(seg)
    _add_run_options(seg)
    _add_model_overrides(seg)
    seg.add_argument(
        "--stitch",
        choices=("crop", "blend"),
        default="crop",
        help="crop: exact (default); blend: Gaussian-weighted overlaps",
    )
    seg.add_argument(
        "--probabilities", metavar="PATH", help="also write float32 probabilities to PATH"
    )
    seg.add_argument("--frames", metavar="START:STOP", help="only these frames (0-based)")
    seg.add_argument(
        "--clear-border", action="store_true", help="drop objects touching the frame border"
    )
    seg.add_argument(
        "--label", action="store_true", help="write uint16 instance labels instead of a binary mask"
    )
    seg.add_argument(
        "--follow",
        action="store_true",
        help="INPUT is still being written (a TIFF getting pages, a folder getting files): "
        "segment frames as they arrive; ends after --idle-timeout or on Ctrl-C, keeping "
        "the masks",
    )
    seg.add_argument(
        "--idle-timeout",
        type=float,
        metavar="SECONDS",
        help="with --follow: stop after this long without a new frame (default 10)",
    )
    seg.add_argument(
        "--format",
        choices=FORMATS,
        help="mask output format (default: from the -o name, *.zarr being OME-Zarr; TIFF "
        "otherwise); ome-zarr needs unetrt[zarr]",
    )
    seg.add_argument(
        "--resume",
        action="store_true",
        help="continue the partial output of a run that was killed or interrupted, "
        "segmenting only the missing frames (started anew if there is none)",
    )
    seg.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on the dask.distributed cluster at ADDRESS (e.g. tcp://head:8786), or "
        "'local' for a new local cluster sized to this machine; needs unetrt[dask]",
    )
    seg.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")

    info = _command(sub, "info", _cmd_info)
    info.add_argument(
        "model", nargs="?", help="ONNX model or built-in model name (none: list the built-in ones)"
    )
    _add_engine_options(info)
    info.add_argument("--json", action="store_true", help="machine-readable output")

    tr = _command(sub, "train", _cmd_train)
    tr.add_argument(
        "config", nargs="?", help="training configuration (JSON); or use --images/--masks"
    )
    tr.add_argument("--images", metavar="DIR", help="without CONFIG: folder of annotated frames")
    tr.add_argument(
        "--masks", metavar="DIR", help="without CONFIG: folder of their masks (same numbers)"
    )
    tr.add_argument(
        "--from",
        dest="start_from",
        metavar="MODEL",
        help="without CONFIG: start from a built-in model ('default') or a weights file",
    )
    tr.add_argument(
        "--minutes", type=float, help="stop after this many minutes, keeping the best weights"
    )
    tr.add_argument(
        "--write-config", metavar="FILE", help="write a commented configuration to start from"
    )
    tr.add_argument(
        "-o",
        "--output-dir",
        help="output folder (default: the config's output_dir; unetrt-run without CONFIG)",
    )
    tr.add_argument(
        "--resume", metavar="CHECKPOINT", help="continue from checkpoints/epochNNNN.keras"
    )
    tr.add_argument("--epochs", type=int, help="total epochs (overrides train_max_epochs)")
    tr.add_argument(
        "--find-lr",
        action="store_true",
        help="instead of training, run a learning-rate range test and suggest model_lr "
        "(writes only lr_finder.png and lr_finder.json)",
    )
    tr.add_argument(
        "--lr-steps",
        type=int,
        metavar="N",
        help="with --find-lr: batches, one per rate (default 100)",
    )
    tr.add_argument(
        "--lr-range",
        nargs=2,
        type=float,
        metavar=("LOW", "HIGH"),
        help="with --find-lr: the lowest and highest rate (default 1e-7 1)",
    )
    tr.add_argument("-q", "--quiet", action="store_true", help="no per-epoch log lines")

    ex = _command(sub, "export", _cmd_export)
    ex.add_argument("model", help="trained Keras model (.keras)")
    ex.add_argument("-o", "--output", required=True, help="ONNX model to write")
    ex.add_argument(
        "--config", help="training configuration (default: config.json next to the model)"
    )
    ex.add_argument(
        "--window",
        action="store_true",
        help="export a ConvLSTM model as its clip model (input: T frames) instead of the "
        "step model (frame and states in, mask and new states out) that segment streams",
    )
    ex.add_argument(
        "--check-images",
        metavar="STACK",
        help="also compare ONNX Runtime and Keras on the first frames of this stack or folder",
    )
    ex.add_argument(
        "--atol",
        type=float,
        default=1e-4,
        help="largest difference allowed between ONNX Runtime and Keras (default 1e-4)",
    )
    ex.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")

    be = _command(sub, "build-engine", _cmd_build_engine)
    be.add_argument("model", help="ONNX model or built-in model name ('default')")
    be.add_argument(
        "-o",
        "--output",
        help="file to write: OUT.engine or OUT.plan (tensorrt), OUT.onnx (onnxruntime) or "
        "OUT.xml (openvino, with OUT.bin); default <model>.<backend>-<precision>.engine|onnx|xml "
        "here",
    )
    be.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "onnxruntime", "openvino", "tensorrt"),
        help="engine to build for (default auto: tensorrt where TensorRT is installed and a "
        "GPU is visible, or with --device cuda:N; else openvino where unetrt[openvino] is "
        "installed, else onnxruntime)",
    )
    be.add_argument(
        "--device",
        default="cpu",
        help="cpu (default), or cuda:N: the GPU a TensorRT engine is built for (tensorrt "
        "with cpu: cuda:0)",
    )
    be.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="fp32 (default), fp16 (tensorrt), bf16 (openvino on processors with bfloat16 "
        "instructions, tensorrt 10), int8",
    )
    be.add_argument("--int8", action="store_true", help="same as --precision int8")
    be.add_argument(
        "--calibration",
        metavar="STACK",
        help="frames like those you will segment (stack, folder or glob): int8 is "
        "calibrated on them, and the accuracy against float32 is measured on them",
    )
    be.add_argument(
        "--calibration-frames",
        type=int,
        default=32,
        metavar="N",
        help="use at most N frames of the calibration stack, evenly spaced (default 32)",
    )
    be.add_argument(
        "--calibrate",
        choices=("minmax", "percentile", "entropy"),
        default="minmax",
        help="int8 by ONNX Runtime's quantization (onnxruntime; tensorrt 11 and later): how "
        "activation ranges are calibrated (default minmax; TensorRT 10 calibrates with its "
        "own entropy calibrator)",
    )
    be.add_argument(
        "--max-dice-drop",
        type=float,
        default=0.03,
        metavar="D",
        help="refuse the built model when its masks agree with float32 at a Dice below "
        "1 - D on the calibration frames (default 0.03)",
    )
    be.add_argument(
        "--force", action="store_true", help="keep the built model even if it fails the check"
    )
    be.add_argument(
        "--tile",
        default="auto",
        help="tiles for calibration and the check (as for segment); for tensorrt also the "
        "largest tile the engine runs and is tuned for, SIZE or HxW rounded up to the "
        f"model's alignment (default auto: {DEFAULT_TILE}x{DEFAULT_TILE})",
    )
    be.add_argument("--threads", type=int, help="CPU threads (default: all)")
    be.add_argument("--nan", type=float, metavar="VALUE", help="read NaN pixels as VALUE")
    be.add_argument("--threshold", type=float, help="foreground threshold (default: model's)")
    trt = be.add_argument_group("TensorRT")
    trt.add_argument(
        "--max-batch",
        type=int,
        default=1,
        metavar="N",
        help="largest batch of tiles the engine runs and is tuned for (default 1; segment "
        "with --batch N to use it)",
    )
    trt.add_argument(
        "--workspace",
        type=int,
        metavar="MiB",
        help="limit TensorRT's workspace memory to MiB (default: TensorRT's, the GPU's memory)",
    )
    trt.add_argument(
        "--opt-level",
        type=int,
        choices=OPT_LEVELS,
        metavar="0..5",
        help="builder optimization level: 0 builds fastest, 5 tunes most (default: TensorRT's, 3)",
    )
    trt.add_argument(
        "--timing-cache",
        metavar="FILE",
        help="reuse the kernel timings in FILE and write them back after the build, so "
        "that later builds on this GPU are faster",
    )
    trt.add_argument(
        "--version-compatible",
        action="store_true",
        help="an engine that also runs on later TensorRT releases of the same major version",
    )
    trt.add_argument(
        "--hardware-compatible",
        action="store_true",
        help="an engine that runs on any GPU from Ampere on (compute capability 8.0+), "
        "possibly slower",
    )
    _add_model_overrides(be)
    be.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")

    ev = _command(sub, "evaluate", _cmd_evaluate)
    _add_annotated_frames(ev)
    ev.add_argument("--csv", metavar="PATH", help="write per-frame scores and the mean to PATH")
    _add_engine_options(ev)
    _add_run_options(ev)
    _add_model_overrides(ev)

    cmp = _command(sub, "compare", _cmd_compare)
    cmp.add_argument("config", nargs="+", help="training configurations (JSON)")
    _add_annotated_frames(cmp)
    cmp.add_argument(
        "-o",
        "--output-dir",
        default="unetrt-comparison",
        help="folder for the tables, the plot and the ONNX models (default unetrt-comparison)",
    )
    cmp.add_argument(
        "--retrain",
        action="store_true",
        help="train every configuration, even where its output_dir holds a finished model",
    )
    cmp.add_argument("-q", "--quiet", action="store_true", help="no training log lines")
    return parser


def _add_annotated_frames(parser: argparse.ArgumentParser) -> None:
    """The frames and masks that evaluate and compare score on, and how they pair."""
    parser.add_argument("--images", required=True, help="frames: stack, folder or glob")
    parser.add_argument("--masks", required=True, help="ground-truth masks: stack, folder or glob")
    parser.add_argument(
        "--pair",
        choices=("auto", "number", "order"),
        default="auto",
        help="pair frames and masks by the number in their file names or in order "
        "(default auto: by number when both are folders of numbered files)",
    )


def _run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Segmenter options of `_add_engine_options` and `_add_run_options`."""
    names = (
        *("backend", "device", "precision", "tile", "batch", "threshold", "threads", "nan"),
        *("temporal", "reset_every", "window"),
    )
    return {name: getattr(args, name) for name in names}


def _command(sub: Any, name: str, func: Command) -> argparse.ArgumentParser:
    """The parser of subcommand ``name`` (texts from `COMMANDS`), running ``func``."""
    help_line, description = COMMANDS[name]
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_line, description=description)
    parser.set_defaults(func=func)
    return parser


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options that segment and evaluate share: model, tiles, threshold, clean-up."""
    parser.add_argument(
        "--model", help="ONNX model, or a built-in model name (default: 'default'; see unetrt info)"
    )
    parser.add_argument(
        "--tile", default="auto", help="'auto' (default: whole frame when it fits), SIZE or HxW"
    )
    parser.add_argument("--batch", type=int, default=1, help="tiles per engine call (default 1)")
    parser.add_argument("--threshold", type=float, help="foreground threshold (default: model's)")
    parser.add_argument(
        "--threads", type=int, help="CPU threads for the engine and the core (default: all)"
    )
    parser.add_argument(
        "--min-size", type=int, default=0, metavar="N", help="remove objects smaller than N pixels"
    )
    parser.add_argument("--fill-holes", action="store_true", help="fill holes in objects")
    parser.add_argument(
        "--nan",
        type=float,
        metavar="VALUE",
        help="read NaN pixels of float frames as VALUE (default: a frame with NaN is an error)",
    )
    parser.add_argument(
        "--temporal",
        choices=("stream", "window"),
        help="temporal (ConvLSTM step) models: stream (default: the state carried over the "
        "whole video) or window (each mask from the T frames up to it, from zero state)",
    )
    parser.add_argument(
        "--reset-every",
        type=int,
        metavar="N",
        help="with --temporal stream: restart from zero state every N frames",
    )
    parser.add_argument(
        "--window",
        type=int,
        metavar="T",
        help="with --temporal window: frames per window (default: the model's time_steps)",
    )


def _add_model_overrides(parser: argparse.ArgumentParser) -> None:
    """Flags that override a model's contract (for foreign models without one)."""
    parser.add_argument("--halo", default="auto", help="'auto' (from the model) or PIXELS")
    parser.add_argument("--normalize", choices=METHODS, help="override the model's normalization")
    parser.add_argument(
        "--normalize-scope", choices=SCOPES, help="statistics per frame or per stack (sampled)"
    )
    parser.add_argument("--percentiles", help="LOW,HIGH for --normalize percentile (e.g. 1,99.8)")
    parser.add_argument(
        "--illumination",
        type=float,
        metavar="SIGMA",
        help="correct uneven illumination with a Gaussian background of this "
        "sigma in pixels (0 turns it off)",
    )


def _add_engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help="inference engine (default auto: a built model's own; on the CPU OpenVINO "
        "where unetrt[openvino] is installed, else ONNX Runtime)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N (default cpu)")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="fp32 (default), bf16 (OpenVINO, processors with bfloat16 instructions), "
        "int8 (a model made by unetrt build-engine); default: the built model's, else fp32",
    )


def _version() -> str:
    info = build_info()
    return f"unetrt {__version__} (cuda: {'yes' if info['cuda'] else 'no'})"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    command: Command = args.func
    try:
        return command(args)
    except UnetrtError as exc:
        print(f"unetrt: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        if getattr(args, "resume", False):
            print(
                "unetrt: interrupted; the frames done are kept: run the same command "
                "(with --resume) to finish",
                file=sys.stderr,
            )
        else:
            print("unetrt: interrupted; no output was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:  # unreadable input or unwritable output the stages did not name
        where = f": {exc.filename}" if exc.filename else ""
        print(f"unetrt: error: {exc.strerror or exc}{where}", file=sys.stderr)
    return EXIT_ERROR

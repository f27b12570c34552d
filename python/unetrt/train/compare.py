"""Compare training configurations on the same held-out frames: ``unetrt compare``.

`compare` takes training configurations (JSON files) and, for each one,

1. takes the model its run folder (the configuration's ``output_dir``) already holds, if
   that run finished (``model.keras``, ``summary.json`` and ``config.json`` are there)
   with this same configuration, or else trains it (`unetrt.train.run.train`);
2. exports it to ONNX (`unetrt.export.export`) as ``<name>.onnx`` in the comparison
   folder;
3. evaluates that ONNX model with the engine (`unetrt.evaluate.evaluate`) on the same
   frames and masks as every other configuration.

It writes into the comparison folder::

    comparison.csv          one row per configuration: mean scores and training summary
    comparison_frames.csv   one row per configuration and scored frame
    comparison.png          Dice and IoU per frame, one line per configuration
    <name>.onnx             the exported models that were evaluated

A configuration is named by its file's stem; a stem already taken gets ``-2``, ``-3``,
... A run folder whose ``config.json`` differs from the configuration (it was edited
after training) is an error rather than a silent reuse: ``retrain=True`` trains every
configuration again. The frames compared on should be held out from every configuration's
training and validation data; nothing here can check that.
"""

from __future__ import annotations

import csv as csv_module
import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..contract import CONFIG_NAME
from ..errors import ConfigError, InputError, OutputError, require
from ..evaluate import CSV_COLUMNS, EvaluationReport, evaluate, pair_frames
from ..io import atomic_output, open_frames
from .config import TrainConfig, load_config

CSV_NAME = "comparison.csv"
FRAMES_CSV_NAME = "comparison_frames.csv"
PLOT_NAME = "comparison.png"
#: The ``summary.json`` entries of a run that ``comparison.csv`` repeats.
SUMMARY_COLUMNS = ("epochs", "steps", "minutes", "best_epoch", "train_dice", "val_dice")
COLUMNS = (
    *("name", "config", "model", "onnx", "reused", "frames", "mean_dice", "mean_iou"),
    *("mean_pixel_difference_percent", "mean_probability_difference_percent"),
    *SUMMARY_COLUMNS,
)
FRAME_COLUMNS = ("name", *CSV_COLUMNS)
#: The plot names the frames on its axis up to this many (more would not be readable).
MAX_FRAME_LABELS = 30


@dataclass(frozen=True)
class ComparedModel:
    """One configuration of a comparison: its trained model and its scores.

    Attributes:
        name: The configuration's name (its file stem, made unique).
        config: The configuration file.
        model: The trained Keras model (``model.keras`` in the run folder).
        onnx: The exported model that was evaluated.
        reused: Whether the model was taken from a finished run rather than trained.
        summary: The run's ``summary.json`` (steps, minutes, best epoch, Dice, ...).
        report: The model's scores on the compared frames.
    """

    name: str
    config: Path
    model: Path
    onnx: Path
    reused: bool
    summary: dict[str, Any]
    report: EvaluationReport

    def row(self) -> tuple[object, ...]:
        """The model's row of ``comparison.csv`` (`COLUMNS`)."""
        r = self.report
        return (
            *(self.name, self.config, self.model, self.onnx, self.reused, len(r.frames)),
            *(r.mean_dice, r.mean_iou, r.mean_pixel_difference, r.mean_probability_difference),
            *(self.summary.get(key) for key in SUMMARY_COLUMNS),
        )


@dataclass(frozen=True)
class ComparisonResult:
    """The compared configurations, in the order given, and the files written."""

    models: tuple[ComparedModel, ...]
    csv: Path
    frames_csv: Path
    plot: Path

    def table(self) -> str:
        """The comparison as a text table: one row per configuration, then the best one."""
        width = max(len("name"), *(len(m.name) for m in self.models))
        lines = [
            f"{'name':<{width}}  {'frames':>6}  {'dice':>7}  {'iou':>7}  {'pixdiff%':>8}  "
            f"{'steps':>6}  {'minutes':>7}  model"
        ]
        for m in self.models:
            steps, minutes = m.summary.get("steps"), m.summary.get("minutes")
            lines.append(
                f"{m.name:<{width}}  {len(m.report.frames):>6}  {m.report.mean_dice:7.4f}  "
                f"{m.report.mean_iou:7.4f}  {m.report.mean_pixel_difference:8.3f}  "
                f"{'-' if steps is None else steps:>6}  "
                f"{'-' if minutes is None else f'{minutes:.2f}':>7}  "
                f"{'reused' if m.reused else 'trained'}"
            )
        best = max(self.models, key=lambda m: m.report.mean_dice)
        lines.append(f"best mean Dice: {best.name} ({best.report.mean_dice:.4f})")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def compare(
    configs: Sequence[str | os.PathLike[str]],
    images: str | os.PathLike[str],
    masks: str | os.PathLike[str],
    *,
    output_dir: str | os.PathLike[str],
    retrain: bool = False,
    pair: str = "auto",
    verbose: int = 0,
    progress: Callable[[str], None] | None = None,
    **segmenter_options: Any,
) -> ComparisonResult:
    """Train (or reuse), export and evaluate each configuration on the same frames.

    Every check that needs no training (the configurations load, their run folders
    differ, a reused run matches its configuration, the frames pair with the masks)
    is made before the first one trains.

    Args:
        configs: Training configuration files (JSON).
        images: The held-out frames: a multi-page TIFF, a folder or a glob.
        masks: Their ground truth, in the same forms (foreground ``> 0``).
        output_dir: Folder for the tables, the plot and the exported models (created
            if missing).
        retrain: Train every configuration, even where its run folder holds a finished
            model.
        pair: How frames and masks are paired (`unetrt.evaluate.evaluate`).
        verbose: Keras ``fit`` verbosity of the runs that train.
        progress: Called with one line as each configuration is trained or reused.
        **segmenter_options: Passed to `unetrt.Segmenter` for the evaluation.

    Returns:
        The compared models and the paths of the files written.

    Raises:
        ConfigError: If no configuration is given, one cannot be loaded, two share a run
            folder, or a run folder was trained with another configuration.
        InputError: If the frames or masks cannot be read or do not pair up.
        OutputError: If the comparison folder cannot be written.
        MissingDependencyError: If TensorFlow, tf2onnx or onnx is not installed.
    """
    require("tensorflow", "train")
    from ..export import export
    from .run import MODEL_NAME, SUMMARY_NAME, train

    plans = _plan(configs, retrain)
    with open_frames(images) as frames, open_frames(masks) as truths:
        pair_frames(frames, truths, pair)  # pairing errors now, not after the first training
    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out}: {exc.strerror or exc}") from exc
    models = []
    for plan in plans:
        run = Path(plan.train_config.output_dir)
        if plan.reuse:
            _say(progress, f"{plan.name}: reusing the model in {run}")
        else:
            _say(progress, f"{plan.name}: training {plan.path} into {run}")
            train(plan.train_config, verbose=verbose)
        onnx = out / f"{plan.name}.onnx"
        export(run / MODEL_NAME, onnx)
        report = evaluate(onnx, images, masks, pair=pair, **segmenter_options)
        models.append(
            ComparedModel(
                name=plan.name,
                config=plan.path,
                model=run / MODEL_NAME,
                onnx=onnx,
                reused=plan.reuse,
                summary=_read_summary(run / SUMMARY_NAME),
                report=report,
            )
        )
    result = ComparisonResult(
        models=tuple(models),
        csv=out / CSV_NAME,
        frames_csv=out / FRAMES_CSV_NAME,
        plot=out / PLOT_NAME,
    )
    _write_csv(result.csv, COLUMNS, [m.row() for m in models])
    _write_csv(result.frames_csv, FRAME_COLUMNS, _frame_rows(models))
    _plot(result.plot, models)
    return result


# ------------------------------------------------------------------------ planning
@dataclass(frozen=True)
class _Plan:
    name: str
    path: Path
    train_config: TrainConfig  # output_dir made absolute, as `train` writes it
    reuse: bool


def _plan(configs: Sequence[str | os.PathLike[str]], retrain: bool) -> list[_Plan]:
    """Load every configuration and decide which ones train, before any does."""
    from .run import MODEL_NAME, SUMMARY_NAME

    if not configs:
        raise ConfigError("compare needs at least one training configuration")
    paths = [Path(c) for c in configs]
    plans = []
    run_of: dict[Path, Path] = {}
    for name, path in zip(_names(paths), paths, strict=True):
        cfg = load_config(path)
        run = Path(cfg.output_dir).resolve()
        if run in run_of and run_of[run].resolve() == path.resolve():
            raise ConfigError(f"{path} is given twice; compare each configuration once")
        if run in run_of:
            raise ConfigError(
                f"{run_of[run]} and {path} both train into {run}; give each configuration "
                f"its own output_dir"
            )
        run_of[run] = path
        cfg = dataclasses.replace(cfg, output_dir=str(run))
        finished = all((run / n).is_file() for n in (MODEL_NAME, SUMMARY_NAME, CONFIG_NAME))
        reuse = finished and not retrain
        if reuse:
            _check_same_config(cfg, run / CONFIG_NAME, path)
        plans.append(_Plan(name=name, path=path, train_config=cfg, reuse=reuse))
    return plans


def _names(paths: Sequence[Path]) -> list[str]:
    """The file stems, a repeated one followed by ``-2``, ``-3``, ... to keep them unique."""
    names: list[str] = []
    for path in paths:
        name, count = path.stem, 1
        while name in names:
            count += 1
            name = f"{path.stem}-{count}"
        names.append(name)
    return names


def _check_same_config(cfg: TrainConfig, stored: Path, path: Path) -> None:
    """Refuse to reuse a run trained with another configuration than ``cfg``."""
    trained = load_config(stored)
    differ = [
        f.name
        for f in dataclasses.fields(TrainConfig)
        if f.name != "output_dir" and getattr(cfg, f.name) != getattr(trained, f.name)
    ]
    if differ:
        raise ConfigError(
            f"{stored.parent} holds a model trained with another configuration than {path} "
            f"(it differs in {', '.join(differ)}); pass --retrain to train it again, or give "
            f"the configuration another output_dir"
        )


def _read_summary(path: Path) -> dict[str, Any]:
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read the training summary {path}: {exc}") from exc
    if not isinstance(summary, dict):
        raise InputError(f"training summary {path} must hold a JSON object")
    return summary


def _say(progress: Callable[[str], None] | None, line: str) -> None:
    if progress is not None:
        progress(line)


# ------------------------------------------------------------------------- outputs
def _frame_rows(models: Sequence[ComparedModel]) -> list[tuple[object, ...]]:
    return [
        (m.name, i, f.image, f.mask, f.dice, f.iou, f.pixel_difference, f.probability_difference)
        for m in models
        for i, f in enumerate(m.report.frames)
    ]


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    with atomic_output(path) as partial, partial.open("w", newline="") as handle:
        writer = csv_module.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _plot(path: Path, models: Sequence[ComparedModel]) -> None:
    """Dice (top) and IoU (bottom) per scored frame, one line per configuration."""
    require("matplotlib", "train")
    # The object-oriented API draws with Agg without touching pyplot's global backend.
    from matplotlib.figure import Figure

    labels = [f.image for f in models[0].report.frames]
    figure = Figure(figsize=(8.0, 6.0), layout="constrained")
    dice_axes, iou_axes = figure.subplots(2, 1, sharex=True)
    for m in models:
        x = range(len(m.report.frames))
        dice_axes.plot(x, [f.dice for f in m.report.frames], marker="o", label=m.name)
        iou_axes.plot(x, [f.iou for f in m.report.frames], marker="o", label=m.name)
    for axes, what in ((dice_axes, "Dice"), (iou_axes, "IoU")):
        axes.set_ylabel(what)
        axes.set_ylim(-0.02, 1.02)
        axes.grid(alpha=0.3)
    dice_axes.legend(fontsize="small")
    if len(labels) <= MAX_FRAME_LABELS:
        iou_axes.set_xticks(range(len(labels)), labels, rotation=90, fontsize="small")
    iou_axes.set_xlabel("scored frame")
    with atomic_output(path) as partial:
        figure.savefig(partial, format="png", dpi=100)

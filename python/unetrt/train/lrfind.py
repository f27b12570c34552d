"""The learning-rate finder: ``unetrt train CONFIG --find-lr``.

Leslie Smith's range test (L. N. Smith, "Cyclical Learning Rates for Training Neural
Networks", 2017), as fastai's ``lr_find`` runs it: the model, loss, optimizer (Adam)
and training batches of `unetrt.train.run.train` learn for one batch at each rate of a
geometric sequence from `start` to `stop`. The loss of each batch is smoothed by an
exponential moving average with bias correction (weight `SMOOTHING` on the past), and
the test stops early once the smoothed loss exceeds `DIVERGENCE_FACTOR` times its
minimum or is no longer finite: the loss has diverged.

The suggested rate is fastai's "valley" (its ``lr_find`` default since fastai 2.5,
`valley`): halfway along the longest decreasing stretch of the smoothed loss, where it
falls fastest for longest. It lies inside that stretch, so below the rate where the loss
stops falling, and below the divergence. (The "minimum / 10" rule it replaced suggested
0.1 for a U-Net with batch norm on U373 frames, whose capped loss kept falling up to the
top of the range.)

The finder writes ``lr_finder.png`` and ``lr_finder.json`` into the run's output folder
and nothing else; the weights it trained are thrown away.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ModelError, require
from ..io import atomic_output
from .config import TrainConfig
from .run import compile_model, make_folders, prepare_model, resolve_run

PLOT_NAME = "lr_finder.png"
TABLE_NAME = "lr_finder.json"
#: Weight of the past in the moving average of the loss (fastai's 0.98).
SMOOTHING = 0.98
#: The test stops once the smoothed loss exceeds this multiple of its minimum.
DIVERGENCE_FACTOR = 4.0


@dataclass(frozen=True)
class LRFinderResult:
    """What a range test measured and wrote.

    Attributes:
        rates: The learning rate of each batch trained, ``start * (stop / start) ** (i /
            (steps - 1))``; shorter than ``steps`` when the loss diverged.
        losses: The loss of each batch (the last one may be non-finite).
        smoothed: The bias-corrected moving average of `losses`.
        suggested: The suggested ``model_lr``.
        diverged_at: The rate at which the test stopped because the loss diverged, or
            None if it reached ``stop``.
        plot: The loss-against-rate plot (``lr_finder.png``).
        table: Rates, losses and suggestion as JSON (``lr_finder.json``).
    """

    rates: tuple[float, ...]
    losses: tuple[float, ...]
    smoothed: tuple[float, ...]
    suggested: float
    diverged_at: float | None
    plot: Path
    table: Path


def find_lr(
    config: TrainConfig | str | os.PathLike[str] | dict[str, Any],
    *,
    output_dir: str | os.PathLike[str] | None = None,
    start: float = 1e-7,
    stop: float = 1.0,
    steps: int = 100,
) -> LRFinderResult:
    """Run the learning-rate range test on the model and data of a training configuration.

    Args:
        config: A `TrainConfig`, the path of its JSON file, or the parsed JSON.
        output_dir: Folder for the plot and the table (default: the configuration's
            ``output_dir``).
        start: The first (lowest) learning rate.
        stop: The last (highest) learning rate.
        steps: Batches, one per rate (at least 2); the training batches are gone round
            again, with new patches, when there are fewer.

    Returns:
        The rates, losses and suggestion, and the paths of the two files written.

    Raises:
        ConfigError: If the range or the configuration is invalid or does not fit the data.
        InputError: If the data cannot be read.
        ModelError: If pretrained weights cannot be loaded, or the loss of the first
            batch is not finite.
        OutputError: If the output folder cannot be written.
    """
    rates = _rates(start, stop, steps)
    cfg, out = resolve_run(config, output_dir)
    make_folders(out)  # before training, so that an unwritable folder fails at once
    model, train_set, _ = prepare_model(cfg)
    compile_model(model, cfg, float(rates[0]))
    losses: list[float] = []
    smoothed: list[float] = []
    average, lowest, diverged_at = 0.0, math.inf, None
    for step, rate in enumerate(rates):
        batch = step % len(train_set)
        if step and batch == 0:
            train_set.on_epoch_end()  # as `fit` does: the next round draws new patches
        x, y = train_set[batch]
        model.optimizer.learning_rate = float(rate)
        losses.append(float(model.train_on_batch(x, y, return_dict=True)["loss"]))
        average = SMOOTHING * average + (1 - SMOOTHING) * losses[-1]
        smoothed.append(average / (1 - SMOOTHING ** (step + 1)))
        lowest = min(lowest, smoothed[-1])
        if not math.isfinite(smoothed[-1]) or smoothed[-1] > DIVERGENCE_FACTOR * lowest:
            diverged_at = float(rate)
            break
    if not math.isfinite(lowest):
        raise ModelError(
            f"the loss of the first batch is {losses[0]}, before any learning rate acted: "
            "check the frames, their normalization and model_lossfunction"
        )
    trained = [float(r) for r in rates[: len(losses)]]
    suggested = trained[valley(smoothed)]
    result = LRFinderResult(
        rates=tuple(trained),
        losses=tuple(losses),
        smoothed=tuple(smoothed),
        suggested=suggested,
        diverged_at=diverged_at,
        plot=out / PLOT_NAME,
        table=out / TABLE_NAME,
    )
    _write_table(result)
    _plot(result)
    return result


def _rates(start: float, stop: float, steps: int) -> np.ndarray:
    """The geometric sequence of `steps` rates from `start` to `stop`, both included."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ConfigError(f"the learning-rate finder needs at least 2 steps, got {steps!r}")
    if not (0 < start < stop < math.inf):
        raise ConfigError(
            f"the learning-rate range must be 0 < low < high, got low {start!r}, high {stop!r}"
        )
    return start * (stop / start) ** (np.arange(steps) / (steps - 1))


def _finite(values: tuple[float, ...]) -> list[float | None]:
    """JSON has no NaN or infinity: a diverged loss is written as null."""
    return [v if math.isfinite(v) else None for v in values]


def _write_table(result: LRFinderResult) -> None:
    table = {
        "rates": list(result.rates),
        "losses": _finite(result.losses),
        "smoothed_losses": _finite(result.smoothed),
        "suggested_rate": result.suggested,
        "diverged_at": result.diverged_at,
    }
    with atomic_output(result.table) as partial:
        partial.write_text(json.dumps(table, indent=2) + "\n")


def _plot(result: LRFinderResult) -> None:
    """Raw and smoothed loss against the rate (log axis), the suggestion marked."""
    require("matplotlib", "train")
    # The object-oriented API draws with Agg without touching pyplot's global backend.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 4.5), layout="constrained")
    axes = figure.subplots()
    axes.plot(result.rates, result.losses, color="0.7", label="loss of the batch")
    axes.plot(result.rates, result.smoothed, color="C0", label="smoothed loss")
    axes.axvline(
        result.suggested, color="C3", linestyle="--", label=f"suggested {result.suggested:.2g}"
    )
    if result.diverged_at is not None:
        axes.axvline(
            result.diverged_at,
            color="0.3",
            linestyle=":",
            label=f"diverged {result.diverged_at:.2g}",
        )
    # The loss can grow by orders of magnitude at the end: show it up to where the test
    # stops, so that the descent stays readable.
    axes.set_ylim(
        top=1.05 * max(result.smoothed[0], DIVERGENCE_FACTOR * np.nanmin(result.smoothed))
    )
    axes.set_xscale("log")
    axes.set_xlabel("learning rate")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize="small")
    with atomic_output(result.plot) as partial:
        figure.savefig(partial, format="png", dpi=100)


def valley(smoothed: list[float]) -> int:
    """fastai's "valley" index: the longest decreasing subsequence of the loss ends at
    ``end`` after ``length`` points, starting about ``end - length``; the suggestion
    lies half-way through it (a third, plus a sixth, of the way)."""
    n = len(smoothed)
    longest = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if smoothed[i] < smoothed[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
            if longest[end] < longest[i]:
                end = i
                start = end - longest[end]
    third = (end - start) / 3
    return max(start + int(third) + int(third / 2), 0)

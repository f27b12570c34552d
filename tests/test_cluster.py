"""Dask scale-out: the same masks as a local run, bit for bit; bad videos do not stop the rest."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile

from unetrt import Segmenter
from unetrt.cluster import MAX_UNIT_FRAMES, cut_units, unit_size
from unetrt.io import ZarrWriter, open_frames, write_frames

distributed = pytest.importorskip("distributed", reason="Dask needs unetrt[dask]")
pytest.importorskip("zarr", reason="OME-Zarr needs unetrt[zarr]")


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, object]]:
    """Two single-thread workers in this process (in-process transport: no network)."""
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=False,
            dashboard_address=None,
        ) as local,
        distributed.Client(local) as client,
    ):
        yield local.scheduler_address, client


def _videos(folder: Path) -> list[Path]:
    """Three videos of different frame sizes and lengths."""
    rng = np.random.default_rng(0)
    paths = []
    for name, shape in (("a", (9, 40, 52)), ("b", (6, 33, 70)), ("c", (12, 48, 48))):
        path = folder / f"{name}.tif"
        tifffile.imwrite(path, rng.integers(0, 4000, shape, np.uint16), photometric="minisblack")
        paths.append(path)
    return paths


def _read(path: Path) -> np.ndarray:
    with open_frames(path) as src:
        return np.stack(list(src))


def _local(model: Path, videos: list[Path], folder: Path, **options: object) -> list[np.ndarray]:
    with Segmenter(model, **options) as seg:
        run = seg.segment_many(videos, folder, progress=False)
    assert not run.failed
    return [_read(v.output) for v in run.videos]


def test_unit_size_balances_and_caps() -> None:
    assert unit_size(10, 2) == 2  # 5 units, ~4 per thread
    assert unit_size(1, 8) == 1
    assert unit_size(100_000, 2) == MAX_UNIT_FRAMES


@pytest.mark.parametrize("format", ["tiff", "ome-zarr"])
def test_cluster_masks_equal_local_ones_and_both_workers_work(
    unet_path: Path, cluster: tuple[str, object], tmp_path: Path, format: str
) -> None:
    address, client = cluster
    videos = _videos(tmp_path)
    expected = _local(unet_path, videos, tmp_path / "local")
    with Segmenter(unet_path) as seg, distributed.get_task_stream(client) as tasks:
        run = seg.segment_many(
            videos, tmp_path / "dask", progress=False, scheduler=address, format=format
        )
    assert not run.failed and [v.frames for v in run.videos] == [9, 6, 12]
    suffix = ".tif" if format == "tiff" else ".ome.zarr"
    for video, want in zip(videos, expected, strict=True):
        np.testing.assert_array_equal(_read(tmp_path / "dask" / f"{video.stem}_mask{suffix}"), want)
    workers = {task["worker"] for task in tasks.data if task["key"].startswith("_segment_unit")}
    assert len(workers) == 2
    assert sorted(p.name for p in (tmp_path / "dask").iterdir()) == [
        f"{v.stem}_mask{suffix}" for v in videos
    ]


def _step_model(folder: Path) -> Path:
    from unetrt.normalize import Normalization
    from unetrt.testing import convlstm_step_contract, convlstm_step_model, save

    contract = convlstm_step_contract().replace(normalization=Normalization(method="range"))
    save(convlstm_step_model(contract=contract), folder / "step.onnx")
    return folder / "step.onnx"


def test_temporal_units_carry_their_lead_in(tmp_path: Path) -> None:
    step = _step_model(tmp_path)
    with Segmenter(step, temporal="window", window=4) as seg:
        units, leads = cut_units([range(0, 10)], 1, seg)
    assert units == [range(0, 3), range(3, 6), range(6, 9), range(9, 10)]
    assert leads == [0, 0, 3, 6]  # T-1 = 3 frames before each unit
    with Segmenter(step) as seg:  # stream: the state of every frame before
        assert cut_units([range(4, 10)], 2, seg) == ([range(4, 10)], [0])
    with Segmenter(step, reset_every=3) as seg:
        units, leads = cut_units([range(4, 14)], 2, seg)
    assert units == [range(4, 6), range(6, 9), range(9, 12), range(12, 14)]
    assert leads == [3, 6, 9, 12]  # from the reset before each unit


@pytest.mark.parametrize("options", [{}, {"temporal": "window"}, {"reset_every": 4}])
def test_temporal_model_on_a_cluster_equals_a_local_run(
    cluster: tuple[str, object], tmp_path: Path, options: dict[str, object]
) -> None:
    address, _ = cluster
    step = _step_model(tmp_path)
    rng = np.random.default_rng(3)
    videos = []
    for i, n in enumerate((11, 7)):
        videos.append(tmp_path / f"v{i}.tif")
        tifffile.imwrite(videos[-1], rng.integers(0, 255, (n, 24, 20), dtype=np.uint8))
    expected = _local(step, videos, tmp_path / "local", **options)
    for format in ("tiff", "ome-zarr"):
        with Segmenter(step, **options) as seg:  # type: ignore[arg-type]
            run = seg.segment_many(
                videos, tmp_path / format, progress=False, scheduler=address, format=format
            )
        assert not run.failed
        suffix = ".tif" if format == "tiff" else ".ome.zarr"
        for video, want in zip(videos, expected, strict=True):
            got = _read(tmp_path / format / f"{video.stem}_mask{suffix}")
            np.testing.assert_array_equal(got, want)


def test_stack_statistics_are_computed_once_and_sent(
    unet_path: Path, cluster: tuple[str, object], tmp_path: Path
) -> None:
    videos = _videos(tmp_path)
    norm = {"method": "percentile", "scope": "stack", "low": 1.0, "high": 99.0}
    expected = _local(unet_path, videos, tmp_path / "local", normalization=norm)
    with Segmenter(unet_path, normalization=norm) as seg:
        run = seg.segment_many(videos, tmp_path / "dask", progress=False, scheduler=cluster[0])
    for video, want in zip(run.videos, expected, strict=True):
        np.testing.assert_array_equal(_read(video.output), want)


def test_a_bad_video_among_three_is_named_and_the_others_finish(
    unet_path: Path, cluster: tuple[str, object], tmp_path: Path
) -> None:
    videos = _videos(tmp_path)
    corrupt = tmp_path / "b.tif"
    corrupt.write_bytes(corrupt.read_bytes()[:300])  # truncated: fails on opening
    nan = tmp_path / "d.tif"  # fails on a worker, at frame 7
    frames = np.random.default_rng(5).random((10, 32, 32), dtype=np.float32)
    frames[7, 3, 3] = np.nan
    tifffile.imwrite(nan, frames, photometric="minisblack")
    with Segmenter(unet_path) as seg:
        run = seg.segment_many(
            [*videos, nan], tmp_path / "out", progress=False, scheduler=cluster[0]
        )
    assert [v.output.name for v in run.videos] == ["a_mask.tif", "c_mask.tif"]
    failed = dict(run.failed)
    assert set(failed) == {str(corrupt), str(nan)}
    assert "b.tif" in failed[str(corrupt)]
    assert "frame 7" in failed[str(nan)] and "NaN" in failed[str(nan)]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_mask.tif", "c_mask.tif"]


def test_resume_on_a_cluster_segments_only_the_missing_frames(
    unet_path: Path, cluster: tuple[str, object], tmp_path: Path
) -> None:
    address, client = cluster
    (video, *_) = _videos(tmp_path)
    (expected,) = _local(unet_path, [video], tmp_path / "local")
    out = tmp_path / "dask" / "a_mask.ome.zarr"
    out.parent.mkdir()
    with Segmenter(unet_path) as seg, open_frames(video) as src:
        # A killed run that had written frames 0-3 and 6 (its record says with what).
        partial = seg.open_output(src, out, "masks", resume=False)
        assert isinstance(partial, ZarrWriter)
        write_frames(partial.partial, 0, list(expected[:4]))
        write_frames(partial.partial, 6, list(expected[6:7]))
        partial.suspend()
        with distributed.get_task_stream(client) as tasks:
            run = seg.segment_many(
                [video],
                out.parent,
                progress=False,
                scheduler=address,
                format="ome-zarr",
                resume=True,
            )
    assert run.videos[0].frames == 9 - 5
    assert len([t for t in tasks.data if t["key"].startswith("_segment_unit")]) >= 2
    np.testing.assert_array_equal(_read(out), expected)


def test_the_command_line_on_a_cluster_started_with_dask(unet_path: Path, tmp_path: Path) -> None:
    """`dask scheduler` and two single-thread `dask worker`s on loopback, as a facility runs
    them; `unetrt segment --scheduler` gives the local masks, exit 1 for a bad video."""
    videos = _videos(tmp_path)
    expected = _local(unet_path, videos, tmp_path / "local")
    info = tmp_path / "scheduler.json"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    worker = [sys.executable, "-m", "distributed.cli.dask_worker"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [
        subprocess.Popen(
            [
                *dask,
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(info),
            ],
            **quiet,
        )
    ]
    try:
        deadline = time.monotonic() + 60
        while not info.exists() or not info.read_text().strip():
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.1)
        address = json.loads(info.read_text())["address"]
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [
                        *worker,
                        "--scheduler-file",
                        str(info),
                        "--nthreads",
                        "1",
                        "--no-dashboard",
                        "--host",
                        "127.0.0.1",
                    ],
                    **quiet,
                )
            )
        with distributed.Client(address) as client:
            client.wait_for_workers(2, timeout=60)
        bad = tmp_path / "bad.tif"
        bad.write_bytes(b"not a tiff at all")
        inputs = [str(v) for v in [*videos, bad]]
        command = [sys.executable, "-m", "unetrt", "segment", *inputs, "--model", str(unet_path)]
        command += ["-o", str(tmp_path / "out"), "--scheduler", address]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
    assert result.returncode == 1, result.stderr
    assert "bad.tif" in result.stderr and "1 of 4 videos failed" in result.stderr
    assert "Traceback" not in result.stderr
    for video, want in zip(videos, expected, strict=True):
        np.testing.assert_array_equal(_read(tmp_path / "out" / f"{video.stem}_mask.tif"), want)


def test_an_unreachable_scheduler_is_one_clear_line(unet_path: Path, tmp_path: Path) -> None:
    (video, *_) = _videos(tmp_path)
    command = [
        sys.executable,
        "-m",
        "unetrt",
        "segment",
        str(video),
        "--model",
        str(unet_path),
        "--scheduler",
        "tcp://127.0.0.1:1",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("unetrt: error: cannot reach the Dask scheduler")
    assert "Traceback" not in result.stderr


def test_the_output_may_not_be_the_input(unet_path: Path, tmp_path: Path) -> None:
    (video, *_) = _videos(tmp_path)
    before = video.read_bytes()
    command = [sys.executable, "-m", "unetrt", "segment", str(video), "--model", str(unet_path)]
    command += ["-o", str(video), "--scheduler", "tcp://127.0.0.1:1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert video.read_bytes() == before
    with Segmenter(unet_path) as seg:  # the check is the client's, before any work
        from unetrt.cluster import _Run

        run = _Run(None, seg, 1, False, None)
        assert run._open(video, video) is None
    assert "overwrite the input" in run.failed[0][1]


@pytest.mark.parametrize("address", ["127.0.0.1", "foo://x:1"])
def test_a_malformed_scheduler_address_is_one_line(
    unet_path: Path, tmp_path: Path, address: str
) -> None:
    (video, *_) = _videos(tmp_path)
    command = [sys.executable, "-m", "unetrt", "segment", str(video), "--model", str(unet_path)]
    result = subprocess.run([*command, "--scheduler", address], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.startswith("unetrt: error: cannot reach the Dask scheduler")
    assert "Traceback" not in result.stderr

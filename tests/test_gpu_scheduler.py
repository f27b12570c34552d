"""The GPU executor's scheduling, on the CPU twin of the CUDA device (`HostDevice`).

The scheduler (frames in flight on three streams, event ordering, buffer reuse, the
order of results) is the code the GPU runs; here it runs on `HostDevice`, whose streams
take turns in a random order drawn from a seed and whose fresh buffers hold NaN, with
the CPU core's kernels. The oracle is the CPU executor: same probabilities and masks,
bit for bit, in the same order, for every interleaving tried. A scheduler with one event
wait taken out must fail this oracle for some seed (so it can fail).

These tests run no CUDA code; tests/gpu runs the same pipeline on a GPU.
"""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path

import numpy as np
import pytest

from unetrt import Segmenter, _core, masks, testing
from unetrt.contract import ModelContract
from unetrt.errors import ConfigError, InputError, ModelError
from unetrt.gpu import device as gpu_device
from unetrt.gpu.device import Buffer, HostDevice
from unetrt.gpu.executor import DeviceExecutor, ModelEngine, runs_on_device
from unetrt.gpu.scheduler import FrameScheduler
from unetrt.pipeline import CpuExecutor

SEEDS = range(6)


def frames_of(dtype: str, shapes: list[tuple[int, int]], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    top = {"uint8": 255, "uint16": 4095, "float32": 1.0}[dtype]
    return [(rng.random(shape) * top).astype(dtype) for shape in shapes]


def executors(seg: Segmenter, seed: int | None, depth: int = 3):
    device = HostDevice(seed)
    ex = DeviceExecutor(
        seg.model, seg.executor_config, device, ModelEngine(seg.model, device), depth=depth
    )
    return ex, CpuExecutor(seg.model, seg.executor_config)


def assert_same(seg: Segmenter, frames: list[np.ndarray], seed: int | None, masks_too=True):
    gpu, cpu = executors(seg, seed)
    expected = list(cpu.run(seg.stream(), frames))
    got = list(gpu.run(seg.stream(), frames))
    assert len(got) == len(expected) == len(frames)
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == np.float32 and g.shape == e.shape
        np.testing.assert_array_equal(g, e)
    if masks_too:
        contract = seg.executor_config.contract
        want = [masks.mask_of(p, contract) for p in expected]
        for g, e in zip(gpu.run_masks(seg.stream(), frames), want, strict=True):
            assert g.dtype == np.uint8
            np.testing.assert_array_equal(g, e)
    gpu.close()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("gpu-models")
    radius = testing.unet_receptive_radius(pools=2)
    made = {}
    for name, kwargs in {
        "nchw": {"layout": "NCHW"},
        "softmax": {"classes": 3, "output": "softmax"},
        "logits": {"classes": 3, "output": "logits"},
        "logit1": {"output": "logits"},
    }.items():
        output = kwargs.get("output", "sigmoid")
        contract = ModelContract(
            alignment=4,
            halo=radius,
            layout=str(kwargs.get("layout", "NHWC")),
            output=str(output),
            classes=("a", "b", "c") if kwargs.get("classes") else ("background", "foreground"),
        )
        path = folder / f"{name}.onnx"
        testing.save(testing.unet_model(filters=4, pools=2, contract=contract, **kwargs), path)
        made[name] = path
    return made


# ----------------------------------------------------------------- same as the CPU
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("stitch", ["crop", "blend"])
def test_tiled_frames_match_the_cpu_executor(unet_path: Path, stitch: str, seed: int) -> None:
    seg = Segmenter(unet_path, tile=16, halo=4, stitch=stitch, threads=1)
    assert seg.plan_for(40, 36).n_tiles > 4  # several tiles, with halo
    assert_same(seg, frames_of("uint16", [(40, 36)] * 5, seed), seed)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_frame_dtypes_go_up_as_they_are(unet_path: Path, dtype: str) -> None:
    seg = Segmenter(unet_path, tile=16, halo=4, threads=1)
    assert_same(seg, frames_of(dtype, [(33, 29)] * 4), seed=1)


def test_whole_frame_plan(unet_path: Path) -> None:
    seg = Segmenter(unet_path, tile=64, threads=1)
    assert seg.plan_for(32, 24).n_tiles == 1
    assert_same(seg, frames_of("uint16", [(32, 24)] * 4), seed=2)


@pytest.mark.parametrize("seed", SEEDS)
def test_batches_of_tiles_and_partial_batches(unet_path: Path, seed: int) -> None:
    seg = Segmenter(unet_path, tile=16, halo=4, batch=3, stitch="blend", threads=1)
    assert seg.plan_for(40, 36).n_tiles % 3 != 0  # the last batch of a frame is partial
    assert_same(seg, frames_of("uint16", [(40, 36)] * 4, seed), seed)


@pytest.mark.parametrize("seed", SEEDS)
def test_mixed_frame_sizes_come_back_in_order(unet_path: Path, seed: int) -> None:
    seg = Segmenter(unet_path, tile=16, halo=4, threads=1)
    shapes = [(40, 36), (20, 20), (40, 36), (52, 17), (20, 20), (8, 8), (40, 36)]
    assert_same(seg, frames_of("uint8", shapes, seed), seed)


@pytest.mark.parametrize("name", ["nchw", "softmax", "logits", "logit1"])
def test_layouts_classes_and_logits(models: dict[str, Path], name: str) -> None:
    seg = Segmenter(models[name], tile=16, halo=4, stitch="blend", threads=1)
    assert_same(seg, frames_of("uint16", [(36, 28)] * 3), seed=3)


def test_independent_sigmoid_channels(tmp_path: Path) -> None:
    contract = ModelContract(
        alignment=4, halo=testing.unet_receptive_radius(pools=2), classes=("bg", "a", "b")
    )
    path = tmp_path / "two.onnx"
    testing.save(testing.unet_model(filters=4, pools=2, classes=2, contract=contract), path)
    seg = Segmenter(path, tile=16, halo=4, threads=1)
    assert seg.executor_config.contract.output == "sigmoid" and seg.classes == 2
    assert_same(seg, frames_of("uint16", [(24, 24)] * 3), seed=4)


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_any_depth_of_frames_in_flight(unet_path: Path, depth: int) -> None:
    seg = Segmenter(unet_path, tile=16, halo=4, threads=1)
    frames = frames_of("uint16", [(24, 20)] * 6)
    device = HostDevice(7)
    ex = DeviceExecutor(
        seg.model, seg.executor_config, device, ModelEngine(seg.model, device), depth
    )
    expected = list(CpuExecutor(seg.model, seg.executor_config).run(seg.stream(), frames))
    for g, e in zip(ex.run(seg.stream(), frames), expected, strict=True):
        np.testing.assert_array_equal(g, e)


def test_frames_are_in_flight_together(unet_path: Path) -> None:
    """The next frame is submitted before the previous one is collected: with depth 3,
    the first result comes back only after the third frame was handed in."""
    seg = Segmenter(unet_path, tile=16, halo=4, threads=1)
    handed: list[int] = []

    def frames():
        for i, frame in enumerate(frames_of("uint16", [(24, 20)] * 5)):
            handed.append(i)
            yield frame

    ex, _ = executors(seg, seed=0)
    results = ex.run(seg.stream(), frames())
    next(results)
    assert handed == [0, 1, 2, 3]  # frame 3 was needed to free a slot for frame 0's result
    assert len(list(results)) == 4


# ----------------------------------------------------------------- the oracle can fail
def test_a_missing_upload_wait_is_caught(unet_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Take out the compute stream's wait on the upload: some interleaving then reads a
    frame before it arrived (the twin's fresh buffers hold NaN, so the result differs or
    the NaN check fires), and the comparison with the CPU fails."""
    seg = Segmenter(unet_path, tile=16, halo=4, threads=1)
    frames = frames_of("uint16", [(24, 20)] * 4)
    expected = list(CpuExecutor(seg.model, seg.executor_config).run(seg.stream(), frames))
    original = HostDevice.wait

    def wait(self, stream, event):
        if stream.number == 1 and event is not None:  # compute waiting on an upload
            slots = [s for sch in schedulers for s in sch._slots]
            if any(event is s.uploaded for s in slots):
                return
        original(self, stream, event)

    schedulers: list[FrameScheduler] = []
    real_init = FrameScheduler.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        schedulers.append(self)

    monkeypatch.setattr(FrameScheduler, "__init__", init)
    monkeypatch.setattr(HostDevice, "wait", wait)
    caught = 0
    for seed in range(20):
        ex, _ = executors(seg, seed)
        try:
            got = list(ex.run(seg.stream(), frames))
        except ModelError:
            caught += 1
            continue
        caught += any(not np.array_equal(g, e) for g, e in zip(got, expected, strict=True))
    assert caught > 0


# ----------------------------------------------------------------- bad frames and models
def test_a_refused_frame_comes_back_in_its_place(unet_path: Path) -> None:
    seg = Segmenter(unet_path, tile=16, halo=4, threads=1)
    frames = frames_of("float32", [(24, 20)] * 4)
    frames[1][3, 4] = np.nan
    ex, cpu = executors(seg, seed=5)
    got = list(ex.run_masks(seg.stream(), frames, isolate=True))
    assert isinstance(got[1], InputError) and "NaN" in str(got[1])
    expected = list(cpu.run_masks(seg.stream(), frames, isolate=True))
    for i in (0, 2, 3):
        np.testing.assert_array_equal(got[i], expected[i])
    with pytest.raises(InputError, match="NaN"):
        list(ex.run_masks(seg.stream(), frames))


def test_nan_from_the_model_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "nan.onnx"
    testing.save(testing.affine_model(np.inf, 0.0), path)  # inf * 0 = NaN
    seg = Segmenter(path, tile=16, halo=4, threads=1, normalization={"method": "none"})
    frames = [np.zeros((20, 20), np.float32)]
    ex, _ = executors(seg, seed=0)
    with pytest.raises(ModelError, match="NaN or infinite values for frame 0"):
        list(ex.run(seg.stream(), frames))


def test_the_gpu_executor_needs_known_output_channels(unet_path: Path) -> None:
    seg = Segmenter(unet_path, tile=16, halo=4, threads=1)

    class Unknown:
        output_channels = None

    with pytest.raises(ConfigError, match="output channels"):
        DeviceExecutor(Unknown(), seg.executor_config, HostDevice(), None)  # type: ignore[arg-type]


def test_the_gpu_executor_needs_float32_model_io(unet_path: Path) -> None:
    seg = Segmenter(unet_path, tile=16, halo=4, threads=1)
    half = dataclasses.replace(seg.model.image, dtype=np.dtype(np.float16))
    model = types.SimpleNamespace(output_channels=1, image=half, prediction=seg.model.prediction)
    with pytest.raises(ConfigError, match=r"float32 tiles .* is float16"):
        DeviceExecutor(model, seg.executor_config, HostDevice(), None)  # type: ignore[arg-type]


def test_backends_that_run_on_device_pointers() -> None:
    class Engine:
        def enqueue(self, *args):
            pass

    assert runs_on_device(Engine())
    assert not runs_on_device(object())


# ----------------------------------------------------------------- the twin itself
def test_host_device_event_order_and_deadlock() -> None:
    dev = HostDevice(seed=0)
    a, b = dev.new_stream(), dev.new_stream()
    done = dev.new_event()
    log: list[str] = []
    dev.defer(b, lambda: log.append("b-before"))
    dev.wait(b, dev.new_event())  # a never-recorded event: no wait, as in CUDA
    dev.defer(a, lambda: log.append("a"))
    dev.record(done, a)
    dev.wait(b, done)
    dev.defer(b, lambda: log.append("b-after"))
    dev.synchronize_stream(b)
    assert log.index("a") < log.index("b-after") and set(log) == {"a", "b-before", "b-after"}
    # Each stream first waits for a mark the other reaches later: neither can go on.
    x, y = dev.new_stream(), dev.new_stream()
    f1, f2 = dev.new_event(), dev.new_event()
    dev.record(f1, x)
    dev.record(f2, y)
    x.ops.appendleft((lambda: None, f2.mark))
    y.ops.appendleft((lambda: None, f1.mark))
    with pytest.raises(RuntimeError, match="deadlock"):
        dev.synchronize_stream(x)


def test_host_device_buffers_start_poisoned() -> None:
    dev = HostDevice()
    assert np.isnan(dev.alloc((2, 3), np.float32).host).all()
    assert (dev.alloc((4,), np.uint8).host == 0xAB).all()
    buf = dev.alloc((6, 2), np.float32)
    rows = buf.rows(2, 5)
    assert rows.shape == (3, 2) and np.shares_memory(rows.host, buf.host)
    with pytest.raises(ValueError, match="both must match"):
        dev.upload(buf, np.zeros((5, 2), np.float32), dev.new_stream())


def test_buffer_exposes_cuda_array_interface() -> None:
    buf = Buffer((2, 3, 4), np.dtype(np.float32), 4096, None, None)
    face = buf.__cuda_array_interface__
    assert face["shape"] == (2, 3, 4) and face["typestr"] == "<f4"
    assert face["data"] == (4096, False) and face["version"] >= 2
    assert buf.rows(1, 2).ptr == 4096 + 3 * 4 * 4


# ----------------------------------------------------------------- what this machine has
def test_build_info_reports_cuda() -> None:
    info = _core.build_info()
    assert isinstance(info["cuda"], bool)
    assert isinstance(info["cuda_devices"], int) and info["cuda_devices"] >= 0
    assert info["cuda_devices"] == gpu_device.cuda_device_count()
    if not info["cuda"]:
        assert info["cuda_devices"] == 0 and not hasattr(_core, "cuda")


def test_no_gpu_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_device, "cuda_device_count", lambda: 0)
    with pytest.raises(ConfigError) as caught:
        gpu_device.check_cuda_device("cuda:0")
    assert "\n" not in str(caught.value) and "cuda:0" in str(caught.value)
    monkeypatch.setattr(gpu_device, "cuda_device_count", lambda: 1)
    monkeypatch.setattr(gpu_device, "cuda_compiled", lambda: True)
    with pytest.raises(ConfigError, match="cuda:1"):
        gpu_device.check_cuda_device("cuda:1")
    with pytest.raises(ConfigError, match="cuda"):
        gpu_device.check_cuda_device("cpu")


@pytest.mark.skipif(
    not _core.build_info()["cuda"] or _core.build_info()["cuda_devices"] > 0,
    reason="needs the CUDA build on a machine without a GPU",
)
def test_cuda_calls_fail_through_the_checking_macro() -> None:
    """Without a GPU the CUDA runtime refuses every call; the macro turns that into a
    CudaError naming the error, the call and the place."""
    for make in (_core.cuda.Stream, _core.cuda.Event, lambda: _core.cuda.DeviceMemory(64)):
        with pytest.raises(_core.cuda.CudaError, match=r"CUDA error cuda\w+ \(.*\) in cuda\w+"):
            make()
    assert (_core.cuda.CudaError,) == gpu_device.CUDA_ERRORS


# ----------------------------------------------------------------- through the Segmenter
@pytest.fixture()
def on_the_twin(monkeypatch: pytest.MonkeyPatch):
    """Segmenters whose backend "runs on device pointers": the GPU executor on the CPU
    twin, as `Segmenter` makes it for a TensorRT engine on a GPU."""
    from unetrt.gpu import executor as gpu_executor

    def twin(model, config, index, temporal=None):
        device = HostDevice(seed=index + 11)
        engine = ModelEngine(model, device)
        return DeviceExecutor(model, config, device, engine, temporal=temporal)

    monkeypatch.setattr(gpu_executor, "runs_on_device", lambda backend: True)
    monkeypatch.setattr(gpu_executor, "cuda_executor", twin)


def test_segment_a_stack_on_the_gpu_executor(unet_path: Path, tmp_path: Path, on_the_twin):
    import tifffile

    stack = np.stack(frames_of("uint16", [(40, 36)] * 6))
    source = tmp_path / "video.tif"
    tifffile.imwrite(source, stack)
    options = {"tile": 16, "halo": 4, "threads": 1, "stitch": "blend"}
    gpu = Segmenter(unet_path, **options)
    assert isinstance(gpu._executor, DeviceExecutor)
    gpu.segment(source, tmp_path / "gpu.tif", probabilities=tmp_path / "gpu-p.tif", progress=False)
    gpu.segment(source, tmp_path / "gpu-masks-only.tif", progress=False)  # run_masks
    live = [gpu.submit(frame).result() for frame in stack[:3]]
    gpu.close()
    with pytest.MonkeyPatch.context() as patch:
        from unetrt.gpu import executor as gpu_executor

        patch.setattr(gpu_executor, "runs_on_device", lambda backend: False)
        cpu = Segmenter(unet_path, **options)
    assert isinstance(cpu._executor, CpuExecutor)
    cpu.segment(source, tmp_path / "cpu.tif", probabilities=tmp_path / "cpu-p.tif", progress=False)
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "gpu.tif"), tifffile.imread(tmp_path / "cpu.tif")
    )
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "gpu-masks-only.tif"), tifffile.imread(tmp_path / "cpu.tif")
    )
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "gpu-p.tif"), tifffile.imread(tmp_path / "cpu-p.tif")
    )
    for mask, frame in zip(live, stack[:3], strict=True):
        np.testing.assert_array_equal(mask, cpu.segment_frame(frame))
    cpu.close()


@pytest.fixture(scope="module")
def step_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("step-models")
    made = {}
    for layout in ("NHWC", "NCHW"):
        contract = testing.convlstm_step_contract(layout=layout)
        path = folder / f"step-{layout}.onnx"
        testing.save(testing.convlstm_step_model(layout=layout, contract=contract), path)
        made[layout] = path
    return made


def step_executors(seg: Segmenter, seed: int):
    from unetrt.temporal import StatefulExecutor

    assert seg.temporal is not None
    device = HostDevice(seed)
    engine = ModelEngine(seg.model, device)
    gpu = DeviceExecutor(seg.model, seg.executor_config, device, engine, temporal=seg.temporal)
    return gpu, StatefulExecutor(seg.model, seg.executor_config, seg.temporal)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_step_models_stream_their_state_as_on_the_cpu(
    step_models: dict[str, Path], layout: str, seed: int
) -> None:
    """Stream mode on the GPU executor: every tile's state window cut from the device
    maps and the new state cores stitched back, step after step, equal to the CPU."""
    seg = Segmenter(step_models[layout], tile=16, batch=3, stitch="blend", threads=1)
    assert seg.plan_for(30, 26).n_tiles > 3  # tiled, batches of tiles, a partial one
    frames = frames_of("uint16", [(30, 26)] * 6, seed)
    gpu, cpu = step_executors(seg, seed)
    expected = list(cpu.run(seg.stream(), frames))
    got = list(gpu.run(seg.stream(), frames))
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)
    # The state carries: the same frame later in the video gives another result.
    assert not np.array_equal(got[0], list(gpu.run(seg.stream(), [frames[1], frames[0]]))[1])
    want = [masks.mask_of(p, seg.executor_config.contract) for p in expected]
    for g, e in zip(gpu.run_masks(seg.stream(), frames), want, strict=True):
        np.testing.assert_array_equal(g, e)


def test_step_model_resets_and_refusals(step_models: dict[str, Path]) -> None:
    seg = Segmenter(step_models["NHWC"], tile=16, threads=1, reset_every=2)
    frames = frames_of("uint16", [(24, 20)] * 5)
    frames[3] = frames[3].astype(np.float32)
    frames[3][1, 1] = np.nan  # refused in its place; its step does not happen on either
    gpu, cpu = step_executors(seg, seed=3)
    expected = list(cpu.run(seg.stream(), frames, isolate=True))
    got = list(gpu.run(seg.stream(), frames, isolate=True))
    assert isinstance(got[3], InputError) and isinstance(expected[3], InputError)
    for i in (0, 1, 2, 4):
        np.testing.assert_array_equal(got[i], expected[i])
    np.testing.assert_array_equal(got[2], list(gpu.run(seg.stream(), frames[2:3]))[0])  # reset
    with pytest.raises(InputError, match="needs frames of one size"):
        list(gpu.run(seg.stream(), frames_of("uint16", [(24, 20), (20, 20)])))
    stream = seg.stream()
    list(gpu.run(stream, frames[:1]))
    with pytest.raises(ConfigError, match="carries the state of another"):
        list(cpu.run(stream, frames[:1]))  # the host executor's state is not the device's
    window = Segmenter(step_models["NHWC"], tile=16, threads=1, temporal="window")
    with pytest.raises(ConfigError, match="window mode runs on the CPU executor"):
        step_executors(window, seed=0)


def test_segment_a_step_model_on_the_gpu_executor(
    step_models: dict[str, Path], tmp_path: Path, on_the_twin
) -> None:
    import tifffile

    stack = np.stack(frames_of("uint16", [(30, 26)] * 5))
    source = tmp_path / "video.tif"
    tifffile.imwrite(source, stack)
    gpu = Segmenter(step_models["NCHW"], tile=16, threads=1)
    assert isinstance(gpu._executor, DeviceExecutor) and gpu._executor.temporal is not None
    gpu.segment(source, tmp_path / "gpu.tif", progress=False)
    gpu.close()
    from unetrt.gpu import executor as gpu_executor

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gpu_executor, "runs_on_device", lambda backend: False)
        cpu = Segmenter(step_models["NCHW"], tile=16, threads=1)
    cpu.segment(source, tmp_path / "cpu.tif", progress=False)
    cpu.close()
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "gpu.tif"), tifffile.imread(tmp_path / "cpu.tif")
    )
    with pytest.raises(ConfigError, match="window mode runs on the CPU executor"):
        Segmenter(step_models["NCHW"], tile=16, threads=1, temporal="window")

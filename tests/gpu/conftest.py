"""The CUDA tests: skipped as a whole, with the reason, unless they can run here.

They need the CUDA part of the C++ module (``unetrt._core.cuda``, compiled when the
install found nvcc), a GPU the CUDA runtime sees, and CuPy (the engine stand-ins run on
the device buffers with it). Without any of them every test in this directory is
marked skipped at collection (``pytest -rs`` prints the reason once); no CUDA call is
made. `tests/gpu/run_on_device.sh` builds, tests and benchmarks on a GPU machine.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from unetrt.gpu.device import CudaDevice, cuda_compiled, cuda_device_count

HERE = Path(__file__).resolve().parent


def skip_reason() -> str | None:
    """Why the CUDA tests cannot run here, or None when they can."""
    if not cuda_compiled():
        return (
            "unetrt._core was built without CUDA (no nvcc at install time); reinstall "
            "with the CUDA toolkit on PATH"
        )
    count = cuda_device_count()
    if count == 0:
        return "no CUDA GPU visible (no NVIDIA driver or GPU, or CUDA_VISIBLE_DEVICES hides it)"
    try:
        importlib.import_module("cupy")
    except Exception as exc:  # ImportError, or a CuPy that fails to initialise
        return f"CuPy is not importable ({type(exc).__name__}: {exc})"
    return None


REASON = skip_reason()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items: mark only those of this directory.
    if REASON is None:
        return
    marker = pytest.mark.skip(reason=f"CUDA tests: {REASON}")
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(marker)


@pytest.fixture
def gpu() -> CudaDevice:
    """GPU 0 (``cuda:0``)."""
    return CudaDevice(0)

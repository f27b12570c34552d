"""The core's process-wide thread pool (cpp/src/parallel.cpp) behind every parallel call.

Results must not depend on the thread count, nor on other threads using the pool at
the same time; the pool keeps its workers between calls, grows only to what a call
asks for, and lets the process exit. Inputs are large enough to be split (over
2**18 elements per thread, kMinWorkPerThread) into chunks of uneven sizes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import reference as ref

from unetrt import _core, tiling
from unetrt.normalize import Affine, Normalization, affine_for, normalize_frame
from unetrt.tiling import plan_tiles

ROOT = Path(__file__).resolve().parents[1]
MIN_WORK_PER_THREAD = 2**18  # kMinWorkPerThread in cpp/include/unetrt/parallel.hpp
SIZE = (1031, 1033)  # 1.07 M pixels: 4 chunks of uneven length at 4 threads
CLIPPED = Affine(scale=1 / 255, offset=0.5 - 100 / 255, lo=0.0, hi=1.0)

# An operation on the core: f(threads) -> its result, and the NumPy oracle.
Case = tuple[Callable[[int], np.ndarray], np.ndarray]


def _threshold(seed: int = 0, threshold: float = 0.5) -> Case:
    prob = np.random.default_rng(seed).random(SIZE, np.float32)
    prob[::97, ::89] = np.nan  # NaN is background

    def run(threads: int) -> np.ndarray:
        # The core directly: the Python wrapper only allocates (and is moving modules).
        out = np.empty(SIZE, np.uint8)
        _core.threshold_mask(prob, threshold, out, threads)
        return out

    return run, np.where(prob > threshold, 255, 0).astype(np.uint8)


def _argmax(seed: int = 0) -> Case:
    prob = np.random.default_rng(seed).random((601, 599, 3), np.float32)

    def run(threads: int) -> np.ndarray:
        out = np.empty(prob.shape[:2], np.uint8)
        _core.class_mask(prob, False, 0.5, out, threads)
        return out

    return run, np.argmax(prob, axis=-1).astype(np.uint8)


def _normalize(seed: int = 0, dtype: type = np.uint16) -> Case:
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 5000, SIZE).astype(dtype)
    spec = Normalization(method="mean")
    return (
        lambda threads: normalize_frame(frame, spec, threads=threads),
        ref.apply_affine(frame, affine_for(frame, spec)),
    )


def _extract(layout: str, seed: int = 0) -> Case:
    frame = np.random.default_rng(seed).integers(0, 256, (*SIZE, 2)).astype(np.uint8)
    plan = plan_tiles(*SIZE, alignment=16, halo=8, max_tile=256)
    return (
        lambda threads: tiling.extract_tiles(
            frame, plan, affine=CLIPPED, layout=layout, threads=threads
        ),
        ref.extract_tiles(frame, plan, slice(None), CLIPPED, layout),
    )


def _tile_outputs(plan: tiling.TilePlan, channels: int, seed: int) -> np.ndarray:
    shape = (plan.n_tiles, plan.tile_h, plan.tile_w, channels)
    return np.random.default_rng(seed).random(shape, np.float32)


def _crop(seed: int = 1) -> Case:
    plan = plan_tiles(*SIZE, alignment=16, halo=8, max_tile=256)
    outputs = _tile_outputs(plan, 2, seed)
    return (
        lambda threads: tiling.stitch_crop(outputs, plan, threads=threads),
        ref.stitch_crop(outputs, plan.tiles, *SIZE, "NHWC"),
    )


def _blend(seed: int = 1) -> Case:
    plan = plan_tiles(*SIZE, alignment=16, halo=8, max_tile=256)
    outputs = _tile_outputs(plan, 1, seed)
    weights = ref.taper_weights(plan.tile_h, plan.tile_w)

    def run(threads: int) -> np.ndarray:
        acc = np.zeros((*SIZE, 1), np.float32)
        weight_sum = np.zeros(SIZE, np.float32)
        tiling.stitch_blend(outputs, plan, slice(None), weights, acc, weight_sum, threads=threads)
        return tiling.finish_blend(acc, weight_sum, threads=threads)

    acc, weight_sum = ref.stitch_blend(outputs, plan.tiles, weights, *SIZE, "NHWC")
    return run, acc / weight_sum[..., None]


CASES: dict[str, Callable[[], Case]] = {
    "threshold_mask": _threshold,
    "argmax_mask": _argmax,
    "normalize_uint16": _normalize,
    "normalize_float32": lambda: _normalize(dtype=np.float32),
    "extract_NHWC": lambda: _extract("NHWC"),
    "extract_NCHW": lambda: _extract("NCHW"),
    "stitch_crop": _crop,
    "stitch_blend": _blend,
}


@pytest.mark.parametrize("name", CASES)
def test_results_do_not_depend_on_threads(name: str) -> None:
    run, expected = CASES[name]()
    one = run(1)
    np.testing.assert_array_equal(one, expected)
    for threads in (2, 4, 0):
        got = run(threads)
        assert got.dtype == one.dtype
        np.testing.assert_array_equal(got, one)


def test_inputs_are_split_at_four_threads() -> None:
    """The cases above really reach the pool: at least 4 chunks' worth of work."""
    assert SIZE[0] * SIZE[1] // MIN_WORK_PER_THREAD == 4
    assert 601 * 599 * 3 // MIN_WORK_PER_THREAD == 4


def test_pool_keeps_its_workers() -> None:
    run, _ = _threshold()
    run(4)
    threads = _core.pool_threads()
    assert threads >= 3  # 4 chunks: 3 workers and the caller
    for t in (4, 2, 1, 4, 3) * 5:
        run(t)
        assert _core.pool_threads() == threads


# In a fresh process the pool's size is known exactly: it is created on first use,
# grows to one less than the most threads a call used, never shrinks, and its
# workers are alive between calls (Linux: they are tasks of the process).
POOL_SIZE_SCRIPT = """
import json, os, sys
import numpy as np
from unetrt import _core

def tasks():
    return len(os.listdir("/proc/self/task")) if sys.platform == "linux" else None

def call(threads, n=2**20):  # n // 2**18 = 4 chunks' worth of work
    prob = np.zeros(n, np.float32)
    out = np.empty(n, np.uint8)
    _core.threshold_mask(prob, 0.5, out, threads)

before = tasks()
sizes = [_core.pool_threads()]
call(2)
sizes.append(_core.pool_threads())
for _ in range(50):
    call(2)
sizes.append(_core.pool_threads())
call(8, n=2**18)  # work for one thread only: runs on the caller
sizes.append(_core.pool_threads())
call(8)  # work for 4 threads at most
sizes.append(_core.pool_threads())
call(3)
sizes.append(_core.pool_threads())
after = tasks()
print(json.dumps({"sizes": sizes, "new_tasks": None if before is None else after - before}))
"""


def test_pool_grows_to_what_calls_ask_and_no_further() -> None:
    result = subprocess.run(
        [sys.executable, "-c", POOL_SIZE_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(result.stdout)
    assert report["sizes"] == [0, 1, 1, 1, 3, 3]
    if sys.platform == "linux":
        assert report["new_tasks"] == 3  # the workers outlive the calls


def test_concurrent_callers_get_serial_results() -> None:
    """4 Python threads (the bindings release the GIL) share the pool."""
    cases = [_threshold(seed=s, threshold=0.1 * s) for s in range(1, 5)]
    cases += [_normalize(seed=s) for s in range(2)] + [_argmax(seed=3), _crop(seed=4)]
    expected = [run(1) for run, _ in cases]
    jobs = [(i, threads) for _ in range(6) for i in range(len(cases)) for threads in (2, 4, 0, 3)]

    def work(job: tuple[int, int]) -> bool:
        i, threads = job
        return bool(np.array_equal(cases[i][0](threads), expected[i]))

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, jobs))
    assert all(results), f"{results.count(False)} of {len(jobs)} concurrent calls differ"


EXIT_SCRIPT = """
import threading
import numpy as np
from unetrt import _core

prob = np.random.default_rng(0).random(2**20, np.float32)
expected = np.where(prob > 0.5, 255, 0).astype(np.uint8)
failures = []

def work(threads):
    out = np.empty_like(expected)
    for _ in range(100):
        _core.threshold_mask(prob, 0.5, out, threads)
        if not np.array_equal(out, expected):
            failures.append(threads)

threads = [threading.Thread(target=work, args=(t,)) for t in (2, 3, 4, 0)]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert not failures, failures
assert _core.pool_threads() >= 3
print("done")
"""


def test_process_exits_cleanly_after_threaded_use() -> None:
    # No daemon thread inside a core call at exit here: CPython < 3.14 ends such a
    # thread with pthread_exit from pybind11's noexcept ~gil_scoped_release, which
    # aborts whatever parallel_for does (pybind11 #2215). The C++ harness below
    # covers a thread still calling parallel_for while the process exits.
    result = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "done\n", "")


FORK_SCRIPT = """
import os
import numpy as np
from unetrt import _core

prob = np.random.default_rng(0).random(2**20, np.float32)
expected = np.where(prob > 0.5, 255, 0).astype(np.uint8)
out = np.empty_like(expected)
_core.threshold_mask(prob, 0.5, out, 4)
assert _core.pool_threads() == 3
pid = os.fork()
if pid == 0:  # only the forking thread exists here: a new, empty pool
    ok = _core.pool_threads() == 0
    out[:] = 0
    _core.threshold_mask(prob, 0.5, out, 2)
    ok = ok and _core.pool_threads() == 1 and np.array_equal(out, expected)
    os._exit(0 if ok else 1)
_, status = os.waitpid(pid, 0)
_core.threshold_mask(prob, 0.5, out, 4)  # the parent's pool is untouched
print(os.waitstatus_to_exitcode(status), _core.pool_threads(), np.array_equal(out, expected))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_gets_a_working_pool() -> None:
    """A forked child (e.g. multiprocessing data loaders) cannot use the parent's workers."""
    result = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout == "0 3 True\n"


# What Python cannot reach: exceptions thrown by chunks, parallel_for called from
# inside a body, the exact chunk boundaries. Compiled against the core's sources.
HARNESS = r"""
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "unetrt/parallel.hpp"

using unetrt::kMinWorkPerThread;
using unetrt::parallel_for;
using Chunk = std::pair<int64_t, int64_t>;

#define EXPECT(cond)                                            \
  do {                                                          \
    if (!(cond)) {                                              \
      std::printf("line %d: EXPECT(%s) failed\n", __LINE__, #cond); \
      return 1;                                                 \
    }                                                           \
  } while (0)

// The chunks of one call, sorted, and whether the caller ran chunk [0, ..).
std::vector<Chunk> chunks_of(int64_t n, int64_t work, int threads, bool* caller_ran_first) {
  std::mutex m;
  std::vector<Chunk> chunks;
  std::thread::id first;
  parallel_for(n, work, threads, [&](int64_t b, int64_t e) {
    std::lock_guard<std::mutex> lock(m);
    chunks.emplace_back(b, e);
    if (b == 0) first = std::this_thread::get_id();
  });
  std::sort(chunks.begin(), chunks.end());
  *caller_ran_first = first == std::this_thread::get_id();
  return chunks;
}

int main() {
  const int64_t K = kMinWorkPerThread;
  bool caller = false;
  EXPECT(unetrt::pool_threads() == 0);
  chunks_of(100, 1, 8, &caller);  // too little work: serial, no pool
  EXPECT(unetrt::pool_threads() == 0 && caller);

  // Chunks: contiguous, disjoint, covering [0, n), split as n * w / workers, as many
  // as min(threads, work / K, n) with threads 0 = hardware threads.
  const int hw = unetrt::hardware_threads();
  for (int64_t n : {int64_t{1}, int64_t{5}, 3 * K + 7, 5 * K - 1}) {
    for (int64_t work : {int64_t{1}, int64_t{3}, K}) {
      for (int threads : {0, 1, 2, 3, 4, 7}) {
        const std::vector<Chunk> chunks = chunks_of(n, work, threads, &caller);
        const int64_t want = std::min<int64_t>(
            {threads == 0 ? hw : threads, std::max<int64_t>(1, n * work / K), n});
        EXPECT(caller);
        EXPECT(static_cast<int64_t>(chunks.size()) == want);
        for (int64_t w = 0; w < want; ++w)
          EXPECT(chunks[w] == Chunk(n * w / want, n * (w + 1) / want));
      }
    }
  }
  EXPECT(unetrt::pool_threads() == 6);  // 7 threads asked: 6 workers and the caller

  // The first exception by chunk order is rethrown, once every chunk has finished.
  for (int slow : {0, 1, 2, 3}) {
    std::atomic<int> finished{0};
    std::string caught;
    try {
      parallel_for(4 * K, 1, 4, [&](int64_t b, int64_t) {
        const int64_t w = b / K;
        if (w == slow) std::this_thread::sleep_for(std::chrono::milliseconds(30));
        ++finished;
        if (w == 1 || w == 3) throw std::runtime_error("chunk " + std::to_string(w));
      });
    } catch (const std::runtime_error& e) {
      caught = e.what();
    }
    EXPECT(caught == "chunk 1");
    EXPECT(finished == 4);
  }
  bool threw = false;
  try {
    parallel_for(1, 1, -1, [](int64_t, int64_t) {});
  } catch (const unetrt::Error&) {
    threw = true;
  }
  EXPECT(threw);

  // A body calling parallel_for: the inner call runs serially, on the same thread.
  std::atomic<int64_t> inner_items{0}, inner_calls{0}, other_thread{0};
  parallel_for(4 * K, 1, 4, [&](int64_t, int64_t) {
    const std::thread::id outer = std::this_thread::get_id();
    parallel_for(4 * K, 1, 4, [&](int64_t b, int64_t e) {
      inner_items += e - b;
      ++inner_calls;
      if (std::this_thread::get_id() != outer) ++other_thread;
    });
  });
  EXPECT(inner_items == 16 * K && inner_calls == 4 && other_thread == 0);

  // Callers on 8 threads at once, each call checked: item sum and chunk count.
  std::atomic<int64_t> bad{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 8; ++c) {
    callers.emplace_back([&, c] {
      for (int i = 0; i < 200; ++i) {
        const int64_t n = 3 * K + c * 101 + i;
        std::atomic<int64_t> sum{0}, count{0};
        parallel_for(n, 1, 1 + (c + i) % 4, [&](int64_t b, int64_t e) {
          int64_t s = 0;
          for (int64_t k = b; k < e; ++k) s += k;
          sum += s;
          ++count;
        });
        if (sum != n * (n - 1) / 2 || count != std::min(1 + (c + i) % 4, 3)) ++bad;
      }
    });
  }
  for (auto& t : callers) t.join();
  EXPECT(bad == 0);
  EXPECT(unetrt::pool_threads() == 6);

  // Exit joins the parked workers while this thread is still calling parallel_for:
  // its calls then run on the thread alone, on a pool that is never freed.
  std::thread([] {
    for (;;) parallel_for(4 * kMinWorkPerThread, 1, 4, [](int64_t, int64_t) {});
  }).detach();
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  std::printf("ok\n");
  return 0;
}
"""


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


@pytest.mark.skipif(_compiler() is None, reason="needs a C++ compiler")
def test_parallel_for_semantics_in_cpp(tmp_path: Path) -> None:
    source, exe = tmp_path / "harness.cpp", tmp_path / "harness"
    source.write_text(textwrap.dedent(HARNESS))
    sources = [ROOT / "cpp/src" / name for name in ("parallel.cpp", "info.cpp", "check.cpp")]
    subprocess.run(
        [_compiler(), "-std=c++17", "-O1", "-pthread", "-Wall", "-Wextra", "-Werror"]
        + [f"-I{ROOT / 'cpp/include'}", str(source), *map(str, sources), "-o", str(exe)],
        check=True,
        timeout=300,
    )
    result = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout) == (0, "ok\n")

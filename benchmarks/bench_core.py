"""Per-call time of the C++ core's kernels, by thread count, against an optional old build.

The core splits work over one persistent thread pool (cpp/include/unetrt/parallel.hpp).
This prints the best and median time of small, frequent calls (a mask threshold of one
frame), where starting threads per call used to cost more than the work. With
``--baseline PATH`` (an older ``_core*.so``, e.g. built from an earlier commit), both
builds run in this process, calls interleaved, so that load on the machine hits both.

Usage:
    python benchmarks/bench_core.py [--baseline /path/to/old/_core.cpython-311-x86_64-linux-gnu.so]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
import timeit
from typing import Any

import numpy as np

from unetrt import _core


def load_baseline(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("_core", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="an older _core*.so to compare against")
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    cores = {"this build": _core}
    if args.baseline:
        cores["baseline"] = load_baseline(args.baseline)
    print(
        f"{'frame':<12} {'threads':>7} " + " ".join(f"{k + ' best/median us':>28}" for k in cores)
    )
    for shape in [(1024, 1024), (512, 1024)]:
        prob = np.random.default_rng(0).random(shape, np.float32)
        out = np.empty(shape, np.uint8)
        for threads in (1, 2):
            best = dict.fromkeys(cores, float("inf"))
            times: dict[str, list[float]] = {k: [] for k in cores}
            for _ in range(3):
                for name, core in cores.items():
                    calls = timeit.repeat(
                        lambda c=core, t=threads, p=prob, o=out: c.threshold_mask(p, 0.5, o, t),
                        number=args.calls // 4,
                        repeat=3,
                    )
                    best[name] = min(best[name], min(calls) / (args.calls // 4))
            for _ in range(args.calls):
                for name, core in cores.items():
                    start = time.perf_counter()
                    core.threshold_mask(prob, 0.5, out, threads)
                    times[name].append(time.perf_counter() - start)
            cells = " ".join(
                f"{best[k] * 1e6:>18.1f} / {statistics.median(times[k]) * 1e6:>7.1f}" for k in cores
            )
            print(f"{shape[0]}x{shape[1]:<7} {threads:>7} {cells}")
    print(f"pool threads now: {_core.pool_threads()}")


if __name__ == "__main__":
    main()

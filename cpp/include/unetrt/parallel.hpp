// A tiny fork-join helper: split a range of items into contiguous chunks and run
// them on a few std::threads. Threads are started per call (tens of
// microseconds), so work is only split when each thread gets enough of it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

#include "unetrt/check.hpp"
#include "unetrt/info.hpp"

namespace unetrt {

/// Elements a thread should process to be worth starting (~0.1 ms of work).
constexpr int64_t kMinWorkPerThread = int64_t{1} << 18;

/// Number of threads meant by a user's `threads` value: 0 means all hardware threads.
inline int resolve_threads(int threads) {
  UNETRT_CHECK(threads >= 0, "threads must be >= 0");
  return threads > 0 ? threads : hardware_threads();
}

/// Calls body(begin, end) on disjoint chunks covering [0, n_items), using at most
/// `threads` threads (0 = hardware concurrency) and only as many as the total work
/// (n_items * work_per_item elements) justifies. The calling thread runs the first
/// chunk; the first exception thrown by any chunk is rethrown after all joined.
template <class Body>
void parallel_for(int64_t n_items, int64_t work_per_item, int threads, Body&& body) {
  if (n_items <= 0) return;
  const int64_t total = n_items * std::max<int64_t>(work_per_item, 1);
  const int64_t useful = std::max<int64_t>(1, total / kMinWorkPerThread);
  const int64_t workers = std::min<int64_t>({int64_t{resolve_threads(threads)}, useful, n_items});
  if (workers == 1) {
    body(int64_t{0}, n_items);
    return;
  }
  std::vector<std::exception_ptr> errors(workers);
  std::vector<std::thread> pool;
  pool.reserve(workers - 1);
  auto run = [&](int64_t w) {
    try {
      body(n_items * w / workers, n_items * (w + 1) / workers);
    } catch (...) {
      errors[w] = std::current_exception();
    }
  };
  for (int64_t w = 1; w < workers; ++w) pool.emplace_back(run, w);
  run(0);
  for (auto& t : pool) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace unetrt

// Fork-join over one persistent, process-wide thread pool: split a range of
// items into contiguous chunks and run them on the pool's workers and the
// calling thread. Waking a parked worker costs a few microseconds where
// starting a std::thread costs tens, but work is still only split when each
// thread gets enough of it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>

#include "unetrt/check.hpp"
#include "unetrt/info.hpp"

namespace unetrt {

/// Elements a thread should process to be worth waking (~0.1 ms of work).
constexpr int64_t kMinWorkPerThread = int64_t{1} << 18;

/// Number of threads meant by a user's `threads` value: 0 means all hardware threads.
inline int resolve_threads(int threads) {
  UNETRT_CHECK(threads >= 0, "threads must be >= 0");
  return threads > 0 ? threads : hardware_threads();
}

/// Worker threads the process-wide pool has now: 0 before its first parallel
/// call; it only grows, to one less than the most threads a call used (the
/// calling thread always works too), and is 0 again after exit or in a forked child.
int pool_threads();

namespace detail {

/// True on a pool worker and on a caller while it runs a chunk: a parallel_for
/// from there runs serially, so a pool never waits on its own workers.
bool in_parallel_chunk();

/// Runs chunk(0), ..., chunk(n_chunks - 1), each exactly once, on n_chunks - 1
/// pool workers and the calling thread; returns when all have finished, then
/// rethrows the exception of the lowest-numbered chunk that threw, if any.
void run_chunks(int64_t n_chunks, const std::function<void(int64_t)>& chunk);

}  // namespace detail

/// Calls body(begin, end) on disjoint chunks covering [0, n_items), using at most
/// `threads` threads (0 = hardware concurrency) and only as many as the total work
/// (n_items * work_per_item elements) justifies. The calling thread runs a chunk
/// itself; the first exception thrown by any chunk (lowest chunk first) is rethrown
/// after all chunks finished. Safe to call from several threads at once; a call
/// from inside a body runs serially as one chunk.
template <class Body>
void parallel_for(int64_t n_items, int64_t work_per_item, int threads, Body&& body) {
  if (n_items <= 0) return;
  const int64_t requested = resolve_threads(threads);
  const int64_t total = n_items * std::max<int64_t>(work_per_item, 1);
  const int64_t useful = std::max<int64_t>(1, total / kMinWorkPerThread);
  const int64_t workers = std::min<int64_t>({requested, useful, n_items});
  if (workers == 1 || detail::in_parallel_chunk()) {
    body(int64_t{0}, n_items);
    return;
  }
  detail::run_chunks(workers,
                     [&](int64_t w) { body(n_items * w / workers, n_items * (w + 1) / workers); });
}

}  // namespace unetrt

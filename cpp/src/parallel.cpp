// The process-wide pool behind parallel_for.
//
// Each call becomes a Job. The caller runs chunk 0; the others are claimed one
// at a time, through an atomic counter, by whichever thread gets there first: a
// pool worker or the caller once it is done with chunk 0. So a call finishes
// even when every worker is busy with another caller's chunks, when thread
// creation fails, after exit stopped the pool, or in a forked child whose
// workers do not exist: the caller then simply runs the remaining chunks.
// Nothing ever waits for a chunk nobody has claimed.
#include "unetrt/parallel.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#ifndef _WIN32
#include <pthread.h>
#endif

namespace unetrt {
namespace {

// Set while this thread runs a chunk: a parallel_for from there runs serially.
thread_local bool t_in_chunk = false;

// One parallel_for call. Shared (shared_ptr) between its caller and the queue:
// a worker may pop a stale entry after the caller is gone, and finds no chunk left.
struct Job {
  Job(int64_t n, const std::function<void(int64_t)>& f) : n_chunks(n), chunk(f), errors(n) {}

  const int64_t n_chunks;
  // The caller's function: only called for a claimed chunk, and the caller does
  // not return before every claimed chunk reported done.
  const std::function<void(int64_t)>& chunk;
  std::atomic<int64_t> next{1};            // next chunk to claim; 0 is the caller's
  std::vector<std::exception_ptr> errors;  // one slot per chunk, written by its runner
  std::mutex mutex;
  std::condition_variable all_done;
  int64_t done = 0;  // chunks finished; guarded by mutex

  // Runs chunk w and reports it done.
  void run(int64_t w) {
    t_in_chunk = true;
    try {
      chunk(w);
    } catch (...) {
      errors[w] = std::current_exception();
    }
    t_in_chunk = false;
    bool last = false;
    {
      std::lock_guard<std::mutex> lock(mutex);
      last = ++done == n_chunks;
    }
    if (last) all_done.notify_one();
  }

  // Claims and runs chunks until none is left.
  void help() {
    for (int64_t w; (w = next.fetch_add(1)) < n_chunks;) run(w);
  }

  // Blocks until every chunk has finished (the mutex makes their writes visible).
  void wait() {
    std::unique_lock<std::mutex> lock(mutex);
    all_done.wait(lock, [this] { return done == n_chunks; });
  }
};

class Pool {
 public:
  // Grows the pool to `helpers` workers if it is smaller, then offers them the job.
  void submit(const std::shared_ptr<Job>& job, int64_t helpers) {
    int64_t offered = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stopping_) return;  // at exit: the caller runs every chunk
      try {
        while (static_cast<int64_t>(workers_.size()) < helpers)
          workers_.emplace_back([this] { serve(); });
      } catch (const std::system_error&) {
        // Out of threads: carry on with the workers there are (the caller helps).
      }
      // No more entries than workers, or entries nobody pops would pile up.
      offered = std::min<int64_t>(helpers, static_cast<int64_t>(workers_.size()));
      queue_.insert(queue_.end(), static_cast<size_t>(offered), job);
    }
    for (int64_t i = 0; i < offered; ++i) wake_.notify_one();
  }

  int size() {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<int>(workers_.size());
  }

  // Wakes and joins the workers; later calls run on their caller alone.
  void stop() {
    std::vector<std::thread> workers;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
      workers.swap(workers_);
      queue_.clear();
    }
    wake_.notify_all();
    for (auto& t : workers) t.join();  // each finishes at most the chunk it is running
  }

 private:
  void serve() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      std::shared_ptr<Job> job = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      job->help();
      job.reset();
      lock.lock();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Job>> queue_;  // one entry per helper a job asked for
  std::vector<std::thread> workers_;
  bool stopping_ = false;
};

// Never deleted: a thread still in a core call during exit (a daemon thread)
// must find a valid pool. Replaced, not reset, in a forked child (see below).
std::atomic<Pool*> g_pool{nullptr};

Pool& pool() {
  static const bool created = [] {
    g_pool.store(new Pool);
    // Join the workers at exit rather than leaving them blocked while the
    // process tears down.
    std::atexit([] { g_pool.load()->stop(); });
#ifndef _WIN32
    // A forked child has only the forking thread: the parent's workers, and the
    // mutex and condition variable they were using, are unusable there. Leak
    // them (joining or destroying could block forever) and start an empty pool.
    pthread_atfork(nullptr, nullptr, [] { g_pool.store(new Pool); });
#endif
    return true;
  }();
  static_cast<void>(created);
  return *g_pool.load();
}

}  // namespace

int pool_threads() {
  Pool* p = g_pool.load();
  return p ? p->size() : 0;
}

namespace detail {

bool in_parallel_chunk() { return t_in_chunk; }

void run_chunks(int64_t n_chunks, const std::function<void(int64_t)>& chunk) {
  auto job = std::make_shared<Job>(n_chunks, chunk);
  pool().submit(job, n_chunks - 1);
  job->run(0);
  job->help();  // the chunks no worker has taken yet (all of them when there are none)
  job->wait();
  // Moved out so that the exceptions die with this call, not with whichever
  // thread happens to drop the last reference to the job.
  const std::vector<std::exception_ptr> errors = std::move(job->errors);
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace detail
}  // namespace unetrt

// A fixed pool of worker threads with a blocking parallel_for. CPU ops split their outer loop
// into contiguous chunks, one per worker, so results never depend on scheduling.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace genrec {

class ThreadPool {
 public:
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(begin, end, chunk) over [0, n) split into at most num_threads() contiguous chunks;
  // the calling thread takes chunk 0. Returns when all chunks are done; rethrows the first error.
  // Safe to call from several threads: a call made while the workers are busy runs inline.
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn);

  // The process-wide pool, sized by GENREC_THREADS or the hardware concurrency.
  static ThreadPool& global();

 private:
  void worker_loop(int index);

  std::vector<std::thread> workers_;
  std::atomic<bool> busy_{false};  // set by the one parallel_for using the workers
  std::mutex mutex_;
  std::condition_variable start_cv_, done_cv_;
  const std::function<void(int64_t, int64_t, int)>* job_ = nullptr;
  int64_t job_n_ = 0;
  int chunks_ = 0;
  uint64_t generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

// Shorthand for ThreadPool::global().parallel_for.
inline void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn) {
  ThreadPool::global().parallel_for(n, fn);
}

}  // namespace genrec

#include "core/thread_pool.h"

#include <algorithm>
#include <cstdlib>

namespace genrec {

ThreadPool::ThreadPool(int num_threads) {
  for (int i = 1; i < std::max(1, num_threads); ++i) {
    workers_.emplace_back([this, i] { worker_loop(i); });
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  start_cv_.notify_all();
  for (auto& w : workers_) w.join();
}

namespace {
void run_chunk(const std::function<void(int64_t, int64_t, int)>& fn, int64_t n, int chunks,
               int chunk) {
  int64_t begin = n * chunk / chunks, end = n * (chunk + 1) / chunks;
  if (begin < end) fn(begin, end, chunk);
}
}  // namespace

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn) {
  if (n <= 0) return;
  int chunks = static_cast<int>(std::min<int64_t>(n, num_threads()));
  // A nested call, or one from a second thread while the pool is busy, runs inline.
  bool idle = false;
  if (chunks == 1 || !busy_.compare_exchange_strong(idle, true)) {
    fn(0, n, 0);
    return;
  }
  struct Release {
    std::atomic<bool>& flag;
    ~Release() { flag = false; }
  } release{busy_};
  {
    std::lock_guard<std::mutex> lock(mutex_);
    job_ = &fn;
    job_n_ = n;
    chunks_ = chunks;
    pending_ = chunks - 1;
    error_ = nullptr;
    ++generation_;
  }
  start_cv_.notify_all();
  std::exception_ptr local;
  try {
    run_chunk(fn, n, chunks, 0);
  } catch (...) {
    local = std::current_exception();
  }
  std::unique_lock<std::mutex> lock(mutex_);
  done_cv_.wait(lock, [this] { return pending_ == 0; });
  job_ = nullptr;
  if (local) std::rethrow_exception(local);
  if (error_) std::rethrow_exception(error_);
}

void ThreadPool::worker_loop(int index) {
  uint64_t seen = 0;
  for (;;) {
    std::unique_lock<std::mutex> lock(mutex_);
    start_cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
    if (stop_) return;
    seen = generation_;
    if (index >= chunks_) continue;
    const auto* fn = job_;
    int64_t n = job_n_;
    int chunks = chunks_;
    lock.unlock();
    std::exception_ptr err;
    try {
      run_chunk(*fn, n, chunks, index);
    } catch (...) {
      err = std::current_exception();
    }
    lock.lock();
    if (err && !error_) error_ = err;
    if (--pending_ == 0) done_cv_.notify_one();
  }
}

ThreadPool& ThreadPool::global() {
  static ThreadPool pool([] {
    const char* env = std::getenv("GENREC_THREADS");
    int n = env ? std::atoi(env) : static_cast<int>(std::thread::hardware_concurrency());
    return std::max(1, n);
  }());
  return pool;
}

}  // namespace genrec

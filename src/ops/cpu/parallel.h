// When CPU ops spread work over the thread pool: only above ~16K elements of work, where
// waking the workers costs far less than the work itself.
#pragma once

#include <cstdint>
#include <functional>

#include "core/thread_pool.h"

namespace genrec::cpu {

constexpr int64_t kParallelWork = 1 << 14;

// fn(begin, end, chunk) over [0, n): inline when `work` is small, else on the pool.
inline void run(int64_t n, int64_t work, const std::function<void(int64_t, int64_t, int)>& fn) {
  if (work < kParallelWork) {
    if (n > 0) fn(0, n, 0);
  } else {
    parallel_for(n, fn);
  }
}

}  // namespace genrec::cpu

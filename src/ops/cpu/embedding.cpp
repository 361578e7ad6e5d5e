// Ids are validated before anything is written. The scatter-add splits the D columns across
// threads and walks the ids in order, so each table entry sums its rows in a fixed order.
#include "ops/embedding.h"
#include "ops/cpu/parallel.h"

#include <algorithm>

#include "core/error.h"
#include "core/thread_pool.h"

namespace genrec::cpu {
namespace {

// Columns per thread below which splitting D would leave each thread too little of a row.
constexpr int64_t kMinColumnsPerThread = 16;

void check_ids(const int64_t* ids, int64_t n, int64_t num_rows) {
  for (int64_t i = 0; i < n; ++i) {
    GENREC_CHECK(ids[i] >= 0 && ids[i] < num_rows,
                 "embedding id {} (position {}) outside table of {} rows", ids[i], i, num_rows);
  }
}

}  // namespace

void embedding_gather(float* out, const float* table, const int64_t* ids, int64_t n, int64_t D,
                      int64_t num_rows) {
  check_ids(ids, n, num_rows);
  auto gather = [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) std::copy_n(table + ids[i] * D, D, out + i * D);
  };
  if (n * D < kParallelWork) {
    if (n > 0) gather(0, n, 0);
  } else {
    parallel_for(n, gather);
  }
}

void embedding_scatter_add(float* d_table, const float* d_out, const int64_t* ids, int64_t n,
                           int64_t D, int64_t num_rows) {
  check_ids(ids, n, num_rows);
  auto scatter = [&](int64_t c0, int64_t c1, int) {
    for (int64_t i = 0; i < n; ++i) {
      float* dst = d_table + ids[i] * D;
      const float* src = d_out + i * D;
      for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
    }
  };
  int64_t threads = ThreadPool::global().num_threads();
  if (n * D < kParallelWork || D < kMinColumnsPerThread * threads) {
    if (D > 0) scatter(0, D, 0);
  } else {
    parallel_for(D, scatter);
  }
}

}  // namespace genrec::cpu

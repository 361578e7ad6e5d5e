// Top-k by one pass per row over a heap of the k best so far (most scores fail one comparison
// with the worst kept). Order: score descending, then index ascending; NaN ranks below all.
#include "ops/topk.h"
#include "ops/cpu/parallel.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"

namespace genrec::cpu {
namespace {

struct Entry {
  float value;
  int64_t index;
};

// a ranks before b.
inline bool better(const Entry& a, const Entry& b) {
  if (std::isnan(b.value)) return !std::isnan(a.value) || a.index < b.index;
  if (std::isnan(a.value)) return false;
  return a.value > b.value || (a.value == b.value && a.index < b.index);
}

}  // namespace

void topk(int64_t* indices, float* values, const float* scores, int64_t R, int64_t n, int64_t k) {
  GENREC_CHECK(k > 0 && k <= n, "topk: k = {} must be in [1, n = {}]", k, n);
  run(R, R * n, [&](int64_t r0, int64_t r1, int) {
    std::vector<Entry> heap;  // heap.front() is the worst of the k kept
    heap.reserve(k);
    for (int64_t r = r0; r < r1; ++r) {
      const float* s = scores + r * n;
      heap.clear();
      for (int64_t i = 0; i < k; ++i) heap.push_back({s[i], i});
      std::make_heap(heap.begin(), heap.end(), better);
      for (int64_t i = k; i < n; ++i) {
        Entry e{s[i], i};
        if (!better(e, heap.front())) continue;
        std::pop_heap(heap.begin(), heap.end(), better);
        heap.back() = e;
        std::push_heap(heap.begin(), heap.end(), better);
      }
      std::sort_heap(heap.begin(), heap.end(), better);
      for (int64_t i = 0; i < k; ++i) {
        indices[r * k + i] = heap[i].index;
        values[r * k + i] = heap[i].value;
      }
    }
  });
}

void rank_of_target(int64_t* ranks, const float* scores, const int64_t* target, int64_t R,
                    int64_t n) {
  for (int64_t r = 0; r < R; ++r) {
    GENREC_CHECK(target[r] >= 0 && target[r] < n,
                 "rank_of_target: target {} of row {} outside [0, {})", target[r], r, n);
  }
  run(R, R * n, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* s = scores + r * n;
      const float t = s[target[r]];
      int64_t count = 0;
      for (int64_t i = 0; i < n; ++i) count += s[i] > t;
      ranks[r] = count;
    }
  });
}

}  // namespace genrec::cpu

#include "ops/hstu_time_buckets.h"

#include <limits>

#include "core/error.h"
#include "ops/hstu_attention.h"

namespace genrec::cpu {

const HstuTimeBuckets& HstuTimeBuckets::get() {
  static const HstuTimeBuckets table;
  return table;
}

HstuTimeBuckets::HstuTimeBuckets() {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  auto bucket = [](int64_t a) { return hstu_time_bucket(a, kMax); };
  max_bucket_ = bucket(kMax);
  GENREC_CHECK(max_bucket_ + 4 <= kThresholds, "time bucket table too small for bucket {}",
               max_bucket_);
  threshold_.fill(std::numeric_limits<uint64_t>::max());
  threshold_[0] = 0;
  for (int64_t b = 1; b <= max_bucket_; ++b) {
    int64_t lo = 1, hi = kMax;  // bucket(hi) >= b
    while (lo < hi) {
      int64_t mid = lo + (hi - lo) / 2;
      if (bucket(mid) >= b) {
        hi = mid;
      } else {
        lo = mid + 1;
      }
    }
    threshold_[b] = static_cast<uint64_t>(lo);
  }
  for (int e = 0; e < 63; ++e) {
    start_[e] = static_cast<int32_t>(bucket(int64_t{1} << e));
    const int64_t last = e == 62 ? kMax : (int64_t{1} << (e + 1)) - 1;
    GENREC_CHECK(bucket(last) <= start_[e] + 3, "time buckets grow too fast at 2^{}", e);
  }
  start_[63] = static_cast<int32_t>(max_bucket_);  // |dt| >= 2^63 is past every int64 bucket
}

}  // namespace genrec::cpu

// hstu_time_bucket (ops/hstu_attention.h) without its cap, as a table computed once: threshold(b)
// is the smallest |dt| whose bucket is >= b, start(e) the bucket of 2^e. Within [2^e, 2^(e+1))
// the bucket grows by at most 3 (ln 2 / 0.301 < 3), so a lookup is a bit scan and three
// branch-free comparisons; it equals hstu_time_bucket exactly because that function is monotone
// in |dt|. The CPU op looks buckets up here, and the fused CUDA kernels copy the table.
#pragma once

#include <array>
#include <bit>
#include <cstdint>

namespace genrec::cpu {

class HstuTimeBuckets {
 public:
  static const HstuTimeBuckets& get();

  int64_t max_bucket() const { return max_bucket_; }  // the bucket of the largest |dt|
  static constexpr int64_t kThresholds = 256;
  uint64_t threshold(int64_t b) const { return threshold_[b]; }  // UINT64_MAX past max_bucket
  int32_t start(int e) const { return start_[e]; }

  int64_t operator()(int64_t dt) const {
    const uint64_t a = dt < 0 ? 0 - static_cast<uint64_t>(dt) : static_cast<uint64_t>(dt);
    const int32_t b = start_[std::bit_width(a | 1) - 1];
    return b + (a >= threshold_[b + 1]) + (a >= threshold_[b + 2]) + (a >= threshold_[b + 3]);
  }

 private:
  HstuTimeBuckets();

  int64_t max_bucket_ = 0;
  std::array<uint64_t, kThresholds> threshold_{};
  std::array<int32_t, 64> start_{};
};

}  // namespace genrec::cpu

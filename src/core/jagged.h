// Jagged: a batch of variable-length sequences stored without padding, as
// values [total_tokens, ...] plus offsets [B + 1] (int64; offsets[0] = 0, non-decreasing,
// offsets[B] = total_tokens). Sequence b owns rows offsets[b] .. offsets[b+1].
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace genrec {

// Throws unless offsets describe `total` rows: starts at 0, never decreases, ends at total.
void validate_offsets(const int64_t* offsets, int64_t batch_size, int64_t total);

struct Jagged {
  Tensor values;   // [total_tokens, ...]
  Tensor offsets;  // i64 [B + 1], on the CPU

  Jagged() = default;
  Jagged(Tensor values_, Tensor offsets_);

  static Jagged from_lengths(const std::vector<int64_t>& lengths, std::vector<int64_t> row_shape,
                             DType dtype, Device device = Device::kCPU);

  int64_t batch_size() const { return offsets.numel() - 1; }
  int64_t total() const { return values.size(0); }
  int64_t length(int64_t b) const;
  int64_t max_length() const;
  const int64_t* offset_data() const { return offsets.data<int64_t>(); }
  void validate() const;
};

}  // namespace genrec

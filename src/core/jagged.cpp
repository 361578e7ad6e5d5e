#include "core/jagged.h"

#include <algorithm>

namespace genrec {

void validate_offsets(const int64_t* offsets, int64_t batch_size, int64_t total) {
  GENREC_CHECK(batch_size >= 0, "negative batch size {}", batch_size);
  GENREC_CHECK(offsets[0] == 0, "jagged offsets must start at 0, got {}", offsets[0]);
  for (int64_t b = 0; b < batch_size; ++b) {
    GENREC_CHECK(offsets[b + 1] >= offsets[b], "jagged offsets decrease at {}: {} then {}", b,
                 offsets[b], offsets[b + 1]);
  }
  GENREC_CHECK(offsets[batch_size] == total, "jagged offsets end at {} but values hold {} rows",
               offsets[batch_size], total);
}

Jagged::Jagged(Tensor values_, Tensor offsets_)
    : values(std::move(values_)), offsets(std::move(offsets_)) {
  validate();
}

Jagged Jagged::from_lengths(const std::vector<int64_t>& lengths, std::vector<int64_t> row_shape,
                            DType dtype, Device device) {
  Tensor offsets = Tensor::empty({static_cast<int64_t>(lengths.size()) + 1}, DType::kI64);
  int64_t* o = offsets.data<int64_t>();
  o[0] = 0;
  for (size_t b = 0; b < lengths.size(); ++b) {
    GENREC_CHECK(lengths[b] >= 0, "negative length {} for sequence {}", lengths[b], b);
    o[b + 1] = o[b] + lengths[b];
  }
  row_shape.insert(row_shape.begin(), o[lengths.size()]);
  return Jagged(Tensor::empty(std::move(row_shape), dtype, device), std::move(offsets));
}

int64_t Jagged::length(int64_t b) const {
  GENREC_CHECK(b >= 0 && b < batch_size(), "sequence {} outside batch of {}", b, batch_size());
  return offset_data()[b + 1] - offset_data()[b];
}

int64_t Jagged::max_length() const {
  int64_t m = 0;
  for (int64_t b = 0; b < batch_size(); ++b) m = std::max(m, length(b));
  return m;
}

void Jagged::validate() const {
  GENREC_CHECK(offsets.dtype() == DType::kI64 && offsets.dim() == 1 && offsets.numel() >= 1,
               "jagged offsets must be i64[B+1], got {}", offsets.describe());
  GENREC_CHECK(values.dim() >= 1, "jagged values need a token axis, got {}", values.describe());
  validate_offsets(offset_data(), batch_size(), values.size(0));
}

}  // namespace genrec

// head_slice_map refuses what the tensor memory accelerator cannot map with its own message,
// before the driver is asked (so without a GPU too): an unaligned base or token stride, a head
// dim that is not whole boxes, a stride shorter than the heads, no tokens.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "core/error.h"
#include "ops/cuda/tensor_map.h"

namespace genrec {
namespace {

// The message head_slice_map throws for these arguments ("" when it does not throw).
std::string refusal(const void* base, int64_t tokens, int64_t heads, int64_t dim, int64_t ld) {
  try {
    cuda::head_slice_map(base, tokens, heads, dim, ld);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(CudaTensorMap, RefusesWhatTmaCannotMap) {
  alignas(16) static uint16_t rows[16 * 2 * 64 + 8];
  const std::string unmappable = "not mappable";
  EXPECT_NE(refusal(rows + 1, 16, 2, 64, 128).find(unmappable), std::string::npos) << "base";
  EXPECT_NE(refusal(rows, 16, 2, 64, 132).find(unmappable), std::string::npos) << "stride";
  EXPECT_NE(refusal(rows, 16, 2, 32, 64).find(unmappable), std::string::npos) << "dim";
  EXPECT_NE(refusal(rows, 16, 2, 64, 64).find(unmappable), std::string::npos) << "short stride";
  EXPECT_NE(refusal(rows, 0, 2, 64, 128).find(unmappable), std::string::npos) << "no tokens";
}

}  // namespace
}  // namespace genrec

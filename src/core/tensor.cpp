#include "core/tensor.h"

#include <cstdlib>
#include <cstring>
#include <numeric>

#include <fmt/ranges.h>

namespace genrec {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 4;
    case DType::kBF16:
      return 2;
    case DType::kF16:
      return 2;
    case DType::kI32:
      return 4;
    case DType::kI64:
      return 8;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "f32";
    case DType::kBF16:
      return "bf16";
    case DType::kF16:
      return "f16";
    case DType::kI32:
      return "i32";
    case DType::kI64:
      return "i64";
  }
  return "?";
}

const char* device_name(Device device) {
  return device == Device::kCPU ? "cpu" : "cuda";
}

int64_t Tensor::numel() const {
  return std::accumulate(shape_.begin(), shape_.end(), int64_t{1}, std::multiplies<>());
}

int64_t Tensor::size(int64_t axis) const {
  if (axis < 0) axis += dim();
  GENREC_CHECK(axis >= 0 && axis < dim(), "axis {} out of range for {}", axis, describe());
  return shape_[axis];
}

std::string Tensor::describe() const {
  return fmt::format("{}[{}]@{}", dtype_name(dtype_), fmt::join(shape_, ","), device_name(device_));
}

Tensor Tensor::empty(std::vector<int64_t> shape, DType dtype, Device device) {
  Tensor t;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  for (int64_t s : t.shape_) GENREC_CHECK(s >= 0, "negative dimension in {}", t.describe());
  size_t bytes = std::max<size_t>(t.nbytes(), 1);
  if (device == Device::kCPU) {
    size_t aligned = (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, aligned);
    GENREC_CHECK(p != nullptr, "out of host memory allocating {} bytes", aligned);
    t.storage_ = std::shared_ptr<void>(p, std::free);
  } else {
    t.storage_ = std::shared_ptr<void>(device_alloc(bytes), device_free);
  }
  t.data_ = t.storage_.get();
  return t;
}

Tensor Tensor::zeros(std::vector<int64_t> shape, DType dtype, Device device) {
  Tensor t = empty(std::move(shape), dtype, device);
  t.fill_zero();
  return t;
}

Tensor Tensor::view(int64_t offset, std::vector<int64_t> shape) const {
  Tensor t;
  t.storage_ = storage_;
  t.dtype_ = dtype_;
  t.device_ = device_;
  t.shape_ = std::move(shape);
  GENREC_CHECK(offset >= 0 && offset + t.numel() <= numel(), "view [{}, +{}) outside {}", offset,
               t.numel(), describe());
  t.data_ = static_cast<char*>(data_) + offset * dtype_size(dtype_);
  return t;
}

Tensor Tensor::rows(int64_t begin, int64_t end) const {
  GENREC_CHECK(dim() >= 1 && 0 <= begin && begin <= end && end <= shape_[0],
               "rows [{}, {}) outside {}", begin, end, describe());
  std::vector<int64_t> shape = shape_;
  shape[0] = end - begin;
  int64_t row = shape_[0] == 0 ? 0 : numel() / shape_[0];
  return view(begin * row, std::move(shape));
}

Tensor Tensor::to(Device device) const {
  Tensor t = empty(shape_, dtype_, device);
  t.copy_from(*this);
  return t;
}

void Tensor::copy_from(const Tensor& src) {
  GENREC_CHECK(src.dtype_ == dtype_ && src.numel() == numel(), "copy {} into {}", src.describe(),
               describe());
  if (nbytes() == 0) return;
  if (device_ == Device::kCPU && src.device_ == Device::kCPU) {
    std::memcpy(data_, src.data_, nbytes());
  } else {
    device_copy(data_, device_, src.data_, src.device_, nbytes());
  }
}

void Tensor::fill_zero() {
  if (nbytes() == 0) return;
  if (device_ == Device::kCPU) {
    std::memset(data_, 0, nbytes());
  } else {
    device_memset_zero(data_, nbytes());
  }
}

#ifndef GENREC_WITH_CUDA
void* device_alloc(size_t) {
  fail("genrec was built without CUDA; rebuild with GENREC_CUDA=ON");
}
void device_free(void*) {}
void device_copy(void*, Device, const void*, Device, size_t) {
  fail("genrec was built without CUDA; rebuild with GENREC_CUDA=ON");
}
void device_memset_zero(void*, size_t) {
  fail("genrec was built without CUDA; rebuild with GENREC_CUDA=ON");
}
bool cuda_available() {
  return false;
}
#endif

}  // namespace genrec

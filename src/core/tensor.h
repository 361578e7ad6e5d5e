// Tensor: a typed, shaped, contiguous block of memory on the CPU or a CUDA device.
// Storage is reference-counted; a view shares its parent's storage at an element offset,
// so slicing never copies. Ops take raw pointers (llm.c style); Tensor owns and describes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"

namespace genrec {

enum class Device { kCPU, kCUDA };
enum class DType { kF32, kBF16, kF16, kI32, kI64 };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
const char* device_name(Device device);

template <typename T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
  return DType::kF32;
}
template <>
constexpr DType dtype_of<int32_t>() {
  return DType::kI32;
}
template <>
constexpr DType dtype_of<int64_t>() {
  return DType::kI64;
}

class Tensor {
 public:
  Tensor() = default;

  // Uninitialised memory; on the CPU aligned to 64 bytes.
  static Tensor empty(std::vector<int64_t> shape, DType dtype, Device device = Device::kCPU);
  static Tensor zeros(std::vector<int64_t> shape, DType dtype, Device device = Device::kCPU);

  bool defined() const { return storage_ != nullptr; }
  Device device() const { return device_; }
  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t dim() const { return static_cast<int64_t>(shape_.size()); }
  int64_t size(int64_t axis) const;
  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  std::string describe() const;

  void* raw() const { return data_; }
  template <typename T>
  T* data() const {
    GENREC_CHECK(dtype_of<T>() == dtype_, "tensor holds {}, not {}", dtype_name(dtype_),
                 dtype_name(dtype_of<T>()));
    return static_cast<T*>(data_);
  }

  // A view of `shape` starting `offset` elements into this tensor (no copy).
  Tensor view(int64_t offset, std::vector<int64_t> shape) const;
  // Same elements, another shape with the same element count.
  Tensor reshape(std::vector<int64_t> shape) const { return view(0, std::move(shape)); }
  // Rows [begin, end) of the first axis.
  Tensor rows(int64_t begin, int64_t end) const;

  Tensor to(Device device) const;     // deep copy onto `device`
  void copy_from(const Tensor& src);  // same dtype and element count, any devices
  void fill_zero();

 private:
  std::shared_ptr<void> storage_;
  void* data_ = nullptr;
  std::vector<int64_t> shape_;
  DType dtype_ = DType::kF32;
  Device device_ = Device::kCPU;
};

// Device memory hooks; implemented by the CUDA runtime when built with it, else they throw.
void* device_alloc(size_t bytes);
void device_free(void* ptr);
void device_copy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);
void device_memset_zero(void* ptr, size_t bytes);
bool cuda_available();

}  // namespace genrec

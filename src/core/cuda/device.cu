// Device selection and description; see device.h.
#include "core/cuda/cuda_check.h"  // first: it configures fmt for nvcc

#include "core/cuda/device.h"

#include <fmt/format.h>

namespace genrec::cuda {

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver / no device" error
    return 0;
  }
  return count;
}

int current_device() {
  int device = 0;
  GENREC_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

void set_device(int device) {
  const int count = device_count();
  GENREC_CHECK(device >= 0 && device < count, "CUDA device {} does not exist ({} present)", device,
               count);
  GENREC_CUDA_CHECK(cudaSetDevice(device));
}

void synchronize_device() {
  GENREC_CUDA_CHECK(cudaDeviceSynchronize());
}

std::string device_summary(int device) {
  cudaDeviceProp prop{};
  GENREC_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  int clock_khz = 0;
  GENREC_CUDA_CHECK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, device));
  return fmt::format("cuda:{} {} (sm_{}{}, {} SMs, {:.1f} GiB, {} MHz)", device, prop.name,
                     prop.major, prop.minor, prop.multiProcessorCount,
                     static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0),
                     clock_khz / 1000);
}

DeviceGuard::DeviceGuard(int device) {
  GENREC_CUDA_CHECK(cudaGetDevice(&previous_));
  if (device != previous_) GENREC_CUDA_CHECK(cudaSetDevice(device));
}

DeviceGuard::~DeviceGuard() {
  cudaSetDevice(previous_);
}

}  // namespace genrec::cuda

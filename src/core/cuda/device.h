// Device selection and description. Thin checked wrappers over the CUDA runtime: every call
// that can fail throws genrec::Error naming the call, except device_count(), which reports 0
// when there is no driver or no device so that callers can fall back to the CPU.
#pragma once

#include <string>

namespace genrec::cuda {

int device_count();  // 0 without a driver or a device
int current_device();
void set_device(int device);
void synchronize_device();  // waits for all work on the current device
// One line: name, compute capability, SMs, memory, clock, e.g.
// "cuda:0 NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.2 GiB, 1980 MHz)".
std::string device_summary(int device);

// Makes `device` current for its lifetime and restores the previous device after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

}  // namespace genrec::cuda

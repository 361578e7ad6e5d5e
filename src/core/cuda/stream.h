// RAII owners of a CUDA stream and a CUDA event. Streams are created blocking by default
// (cudaStreamDefault): they order with the legacy default stream, which Tensor's synchronous
// copies and memsets use, so a Tensor filled on the host is ready for kernels on any stream.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "core/cuda/cuda_check.h"

namespace genrec::cuda {

class Stream {
 public:
  // flags: cudaStreamDefault or cudaStreamNonBlocking; priority: lower is higher priority.
  explicit Stream(unsigned int flags = cudaStreamDefault, int priority = 0) {
    GENREC_CUDA_CHECK(cudaStreamCreateWithPriority(&stream_, flags, priority));
  }
  ~Stream() {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  Stream(Stream&& other) noexcept : stream_(std::exchange(other.stream_, nullptr)) {}
  Stream& operator=(Stream&& other) noexcept {
    std::swap(stream_, other.stream_);
    return *this;
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  cudaStream_t get() const { return stream_; }
  operator cudaStream_t() const { return stream_; }  // NOLINT: passes where a stream is taken
  void synchronize() const { GENREC_CUDA_CHECK(cudaStreamSynchronize(stream_)); }
  bool query() const {  // true when all queued work has finished
    cudaError_t err = cudaStreamQuery(stream_);
    if (err == cudaErrorNotReady) return false;
    GENREC_CUDA_CHECK(err);
    return true;
  }

 private:
  cudaStream_t stream_ = nullptr;
};

class Event {
 public:
  // timing = false creates the cheaper cudaEventDisableTiming event.
  explicit Event(bool timing = false) {
    GENREC_CUDA_CHECK(
        cudaEventCreateWithFlags(&event_, timing ? cudaEventDefault : cudaEventDisableTiming));
  }
  ~Event() {
    if (event_ != nullptr) cudaEventDestroy(event_);
  }
  Event(Event&& other) noexcept : event_(std::exchange(other.event_, nullptr)) {}
  Event& operator=(Event&& other) noexcept {
    std::swap(event_, other.event_);
    return *this;
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  cudaEvent_t get() const { return event_; }
  void record(cudaStream_t stream) { GENREC_CUDA_CHECK(cudaEventRecord(event_, stream)); }
  void synchronize() const { GENREC_CUDA_CHECK(cudaEventSynchronize(event_)); }
  // Makes later work on `stream` wait for this event (no host blocking).
  void block(cudaStream_t stream) const {
    GENREC_CUDA_CHECK(cudaStreamWaitEvent(stream, event_, 0));
  }
  bool query() const {
    cudaError_t err = cudaEventQuery(event_);
    if (err == cudaErrorNotReady) return false;
    GENREC_CUDA_CHECK(err);
    return true;
  }
  // Milliseconds from `start` to this event; both timing events, both recorded and complete.
  float elapsed_ms_since(const Event& start) const {
    float ms = 0.0f;
    GENREC_CUDA_CHECK(cudaEventElapsedTime(&ms, start.event_, event_));
    return ms;
  }

 private:
  cudaEvent_t event_ = nullptr;
};

}  // namespace genrec::cuda

#include "embedding/removal_log.h"

#include <algorithm>

namespace genrec {

void RemovalLog::append(uint64_t key, uint64_t step) {
  std::lock_guard<std::mutex> lock(mutex_);
  keys_.push_back(key);
  steps_.push_back(step);
}

void RemovalLog::append(const uint64_t* keys, int64_t n, uint64_t step) {
  std::lock_guard<std::mutex> lock(mutex_);
  keys_.insert(keys_.end(), keys, keys + n);
  steps_.insert(steps_.end(), static_cast<size_t>(n), step);
}

std::vector<uint64_t> RemovalLog::since(uint64_t step) const {
  std::vector<uint64_t> out;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t i = 0; i < keys_.size(); ++i) {
      if (steps_[i] > step) out.push_back(keys_[i]);
    }
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

void RemovalLog::forget(uint64_t step) {
  std::lock_guard<std::mutex> lock(mutex_);
  size_t kept = 0;
  for (size_t i = 0; i < keys_.size(); ++i) {
    if (steps_[i] <= step) continue;
    keys_[kept] = keys_[i];
    steps_[kept] = steps_[i];
    ++kept;
  }
  keys_.resize(kept);
  steps_.resize(kept);
}

}  // namespace genrec

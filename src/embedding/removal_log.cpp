#include "embedding/removal_log.h"

#include <algorithm>

namespace genrec {

void RemovalLog::append(uint64_t key, uint64_t step) {
  std::lock_guard<std::mutex> lock(mutex_);
  keys_.push_back(key);
  steps_.push_back(step);
}

void RemovalLog::append(const uint64_t* keys, int64_t n, uint64_t step) {
  if (n == 0) return;  // callers append a batch's removals whether or not there were any
  std::lock_guard<std::mutex> lock(mutex_);
  keys_.insert(keys_.end(), keys, keys + n);
  steps_.insert(steps_.end(), static_cast<size_t>(n), step);
}

std::vector<uint64_t> keys_removed_after(const std::vector<uint64_t>& keys,
                                         const std::vector<uint64_t>& steps, uint64_t step) {
  std::vector<uint64_t> out;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (steps[i] > step) out.push_back(keys[i]);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

void keep_removals_after(std::vector<uint64_t>& keys, std::vector<uint64_t>& steps, uint64_t step) {
  size_t kept = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (steps[i] <= step) continue;
    keys[kept] = keys[i];
    steps[kept] = steps[i];
    ++kept;
  }
  keys.resize(kept);
  steps.resize(kept);
}

std::vector<uint64_t> RemovalLog::since(uint64_t step) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return keys_removed_after(keys_, steps_, step);
}

void RemovalLog::forget(uint64_t step) {
  std::lock_guard<std::mutex> lock(mutex_);
  keep_removals_after(keys_, steps_, step);
}

}  // namespace genrec

// A one-line progress bar on stderr when it is a terminal; otherwise silent, since the
// trainer logs a summary per epoch anyway.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace genrec {

class ProgressBar {
 public:
  ProgressBar(std::string label, int64_t total, bool enabled);
  ~ProgressBar();
  void update(int64_t done, const std::string& status);

 private:
  std::string label_;
  int64_t total_;
  bool enabled_;
  std::chrono::steady_clock::time_point start_, last_;
};

}  // namespace genrec

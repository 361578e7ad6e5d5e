// Exact Zipf samples: rank k in [1, n] with probability proportional to k^-s (s > 0),
// by rejection-inversion (Hörmann and Derflinger, "Rejection-inversion to generate variates
// from monotone discrete distributions", 1996): O(1) per sample for any n, no table.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/philox.h"

namespace genrec::bench {

class ZipfSampler {
 public:
  ZipfSampler(uint64_t n, double s) : n_(static_cast<double>(n)), s_(s) {
    h_x1_ = h_integral(1.5) - 1.0;
    h_n_ = h_integral(n_ + 0.5);
    threshold_ = 2.0 - h_integral_inverse(h_integral(2.5) - h(2.0));
  }

  uint64_t operator()(Philox& rng) const {
    for (;;) {
      const double u01 = static_cast<double>(rng.next_u64() >> 11) * 0x1.0p-53;
      const double u = h_n_ + u01 * (h_x1_ - h_n_);
      const double x = h_integral_inverse(u);
      const double k = std::clamp(std::floor(x + 0.5), 1.0, n_);
      if (k - x <= threshold_ || u >= h_integral(k + 0.5) - h(k)) {
        return static_cast<uint64_t>(k);
      }
    }
  }

 private:
  double h(double x) const { return std::exp(-s_ * std::log(x)); }
  // The integral of h from 1 to x: (x^(1-s) - 1) / (1 - s), stable near s = 1.
  double h_integral(double x) const {
    const double log_x = std::log(x);
    return expm1_over((1.0 - s_) * log_x) * log_x;
  }
  double h_integral_inverse(double x) const {
    const double t = std::max(-1.0, x * (1.0 - s_));
    return std::exp(log1p_over(t) * x);
  }
  static double expm1_over(double x) {  // expm1(x) / x
    return std::abs(x) > 1e-8 ? std::expm1(x) / x : 1.0 + x / 2.0 * (1.0 + x / 3.0);
  }
  static double log1p_over(double x) {  // log1p(x) / x
    return std::abs(x) > 1e-8 ? std::log1p(x) / x : 1.0 - x * (0.5 - x / 3.0);
  }

  double n_, s_;
  double h_x1_ = 0, h_n_ = 0, threshold_ = 0;
};

}  // namespace genrec::bench

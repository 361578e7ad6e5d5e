// Shared helpers of the op tests: seeded random inputs, NaN poisoning, relative L2 error
// against float64 references, and central finite differences of float ops in double.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "core/philox.h"

namespace genrec::test {

// fp32 output vs a float64 reference: the ops round each product and sum in fp32 (or in
// OpenBLAS's blocked order), which over the sums of at most a few thousand terms used in
// these tests gives relative errors of 1e-8 to 5e-7 (measured); 1e-5 leaves a factor of 20,
// while a single wrong element of typical size moves the error by ~1/sqrt(n) >> 1e-5.
constexpr double kFp32RelTol = 1e-5;

// Central differences of a float op, evaluated in double: with h = 1e-2 on O(1) inputs the
// truncation error is ~h^2 * f''' ~ 1e-5 relative, and fp32 rounding of the outputs adds
// ~1e-7 * sqrt(#outputs) / h ~ 1e-5 (measured: 1e-6 to 4e-5 over these tests). 1e-3 leaves a
// factor of 25, while a missing or wrong term gives errors of order 1e-1 to 1.
constexpr double kFdRelTol = 1e-3;
constexpr float kFdStep = 1e-2f;

inline std::vector<float> random_normal(int64_t n, uint64_t seed, float scale = 1.0f,
                                        float shift = 0.0f) {
  Philox rng(seed);
  std::vector<float> x(n);
  for (auto& v : x) v = shift + scale * rng.normal();
  return x;
}

inline std::vector<float> random_uniform(int64_t n, uint64_t seed, float lo, float hi) {
  Philox rng(seed);
  std::vector<float> x(n);
  for (auto& v : x) v = lo + (hi - lo) * rng.uniform();
  return x;
}

inline std::vector<double> random_weights(int64_t n, uint64_t seed) {
  Philox rng(seed);
  std::vector<double> w(n);
  for (auto& v : w) v = 2.0 * rng.uniform() - 1.0;
  return w;
}

inline void poison(std::vector<float>& x) {
  for (auto& v : x) v = std::numeric_limits<float>::quiet_NaN();
}

inline std::vector<double> to_double(const std::vector<float>& x) {
  return std::vector<double>(x.begin(), x.end());
}

// ||a - b|| / ||b|| (||a - b|| when b is zero); NaN anywhere in a gives NaN, failing any bound.
template <typename A, typename B>
double rel_l2(const A* a, const B* b, int64_t n) {
  double diff = 0.0, ref = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    diff += d * d;
    ref += static_cast<double>(b[i]) * static_cast<double>(b[i]);
  }
  return ref > 0.0 ? std::sqrt(diff / ref) : std::sqrt(diff);
}

template <typename A, typename B>
double rel_l2(const std::vector<A>& a, const std::vector<B>& b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  return rel_l2(a.data(), b.data(), static_cast<int64_t>(a.size()));
}

template <typename A, typename B>
std::vector<double> difference(const std::vector<A>& a, const std::vector<B>& b) {
  std::vector<double> d(a.size());
  for (size_t i = 0; i < a.size(); ++i) d[i] = static_cast<double>(a[i]) - b[i];
  return d;
}

inline double weighted_sum(const float* out, const std::vector<double>& w) {
  double s = 0.0;
  for (size_t i = 0; i < w.size(); ++i) s += w[i] * out[i];
  return s;
}

// d loss / d x[i] for every i < n by central differences; x is perturbed in place and
// restored. The step actually taken in float is used as the divisor.
inline std::vector<double> fd_gradient(float* x, int64_t n, const std::function<double()>& loss,
                                       float h = kFdStep) {
  std::vector<double> g(n);
  for (int64_t i = 0; i < n; ++i) {
    const float x0 = x[i];
    const float xp = x0 + h, xm = x0 - h;
    x[i] = xp;
    const double lp = loss();
    x[i] = xm;
    const double lm = loss();
    x[i] = x0;
    g[i] = (lp - lm) / (static_cast<double>(xp) - static_cast<double>(xm));
  }
  return g;
}

inline std::vector<double> fd_gradient(std::vector<float>& x, const std::function<double()>& loss,
                                       float h = kFdStep) {
  return fd_gradient(x.data(), static_cast<int64_t>(x.size()), loss, h);
}

}  // namespace genrec::test

#include "core/philox.h"

#include <cmath>

namespace genrec {

float Philox::normal() {
  float u1 = uniform(), u2 = uniform();
  float r = std::sqrt(-2.0f * std::log(1.0f - u1));  // 1 - u1 in (0, 1]
  return r * std::cos(6.2831853071795864f * u2);
}

}  // namespace genrec

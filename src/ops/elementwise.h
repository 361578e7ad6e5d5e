// Pointwise ops of the HSTU block: SiLU, gating (u ⊙ x with a strided u), L2 normalisation,
// and dropout whose mask is recomputed from a counter-based RNG instead of stored.
#pragma once

#include <cstdint>

namespace genrec::cpu {

// out = x * sigmoid(x). In-place (out == in) is allowed.
void silu_forward(float* out, const float* in, int64_t n);
// d_in = d_out * silu'(in), written. d_in == d_out is allowed.
void silu_backward(float* d_in, const float* d_out, const float* in, int64_t n);

// out[t,c] = x[t,c] * u[t*ldu + c] for t < T, c < C.
void gate_forward(float* out, const float* x, const float* u, int64_t ldu, int64_t T, int64_t C);
// d_x[t,c] = d_out * u (written), d_u[t*ldu + c] = d_out * x (written, same stride as u).
void gate_backward(float* d_x, float* d_u, const float* d_out, const float* x, const float* u,
                   int64_t ldu, int64_t T, int64_t C);

// out[t] = x[t] / max(||x[t]||, eps) over rows of C; saves inv_norm[T] = 1 / max(||x||, eps).
void l2_normalize_forward(float* out, float* inv_norm, const float* x, int64_t T, int64_t C,
                          float eps);
// d_x written, from d_out, the forward output and inv_norm.
void l2_normalize_backward(float* d_x, const float* d_out, const float* out, const float* inv_norm,
                           int64_t T, int64_t C);

// Inverted dropout: element i is kept iff philox_uniform(seed, offset, i) >= p, and kept
// elements are scaled by 1/(1-p). p = 0 copies. In-place allowed. The same (seed, offset)
// in the backward reproduces the mask.
void dropout_forward(float* out, const float* in, int64_t n, float p, uint64_t seed,
                     uint64_t offset);
void dropout_backward(float* d_in, const float* d_out, int64_t n, float p, uint64_t seed,
                      uint64_t offset);

}  // namespace genrec::cpu

// Every kernel works on 64x64 (query, key) score tiles of one (sequence, head) and recomputes
// the scores it needs from q and k, so each output row (out and dq per query, dk and dv per key)
// is owned by exactly one block and written once without atomics; only the relative-bias
// gradients, shared by all pairs, are summed per block in shared memory and then atomically.
#include "ops/cuda/kernel_util.cuh"  // first: it configures fmt for nvcc

#include <algorithm>
#include <limits>
#include <type_traits>

#include "core/cuda/caching_allocator.h"
#include "core/error.h"
#include "ops/cuda/hstu_attention.h"

namespace genrec::cuda {
namespace {

using detail::ceil_div;
using detail::from_float;
using detail::to_float;

constexpr int kThreads = 256;  // 16 x 16; thread (ty, tx) owns rows ty + 16a, columns tx + 16b
constexpr int kTile = 64;      // queries per query tile and keys per key tile
constexpr int kChunk = 32;     // head-dim columns staged per step of a dot-product tile
constexpr int kStageLd = kChunk + 1;
constexpr int kScoreLd = kTile + 1;
constexpr int kStageFloats = 2 * kTile * kStageLd;
constexpr int kMaxSmemPositions = 2048;  // larger position tables take global atomics
constexpr int kTimeSlots = 160;          // > 145, the bucket of the largest int64 |dt|

struct Params {
  const int64_t* offsets;
  int64_t batch_size;
  int num_tiles;  // tiles of a sequence handled by distinct blocks (from max_len)
  int dqk, dv;
  int64_t ld_q, ld_k, ld_v, ld_o;
  float alpha, inv_n;
  const float* pos;
  int64_t num_pos;
  const float* time;
  int64_t num_time;
  const int64_t* timestamps;
};

__device__ __forceinline__ int pos_slot(const Params& p, int i, int j) {
  return static_cast<int>(min(static_cast<int64_t>(i - j), p.num_pos - 1));
}

// Pre-activation score of the valid pair (i, j), in the CPU op's order of additions.
__device__ __forceinline__ float pre_activation(const Params& p, const int64_t* ts, float qk, int i,
                                                int j) {
  float z = p.alpha * qk;
  if (p.pos != nullptr) z += p.pos[pos_slot(p, i, j)];
  if (p.time != nullptr) z += p.time[hstu_time_slot(ts[i] - ts[j], p.num_time)];
  return z;
}

__device__ __forceinline__ float sigmoid(float z) {
  return 1.0f / (1.0f + expf(-z));
}

// dst[r][c] = src[r * ld + c] as float for r < valid_rows, c < valid_cols, else 0; rows x COLS.
template <int COLS, typename T>
__device__ __forceinline__ void stage(float* dst, int dst_ld, int rows, const T* src, int64_t ld,
                                      int valid_rows, int valid_cols) {
  for (int e = threadIdx.x; e < rows * COLS; e += kThreads) {
    const int r = e / COLS, c = e % COLS;
    float x = 0.0f;
    if (r < valid_rows && c < valid_cols) x = to_float(src[r * ld + c]);
    dst[r * dst_ld + c] = x;
  }
}

// acc[a][b] = Σ_{d < D} A[ty + 16a][d] · B[tx + 16b][d] over 64-row tiles of A and B (rows past
// na / nb read as 0). Starts with a barrier, so callers may reuse sa/sb right before.
template <typename T>
__device__ __forceinline__ void dot_tile(float (&acc)[4][4], float* sa, float* sb, const T* A,
                                         int64_t lda, int na, const T* B, int64_t ldb, int nb,
                                         int D) {
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
  for (int a = 0; a < 4; ++a) {
#pragma unroll
    for (int b = 0; b < 4; ++b) acc[a][b] = 0.0f;
  }
  for (int d0 = 0; d0 < D; d0 += kChunk) {
    const int w = min(kChunk, D - d0);
    __syncthreads();
    stage<kChunk>(sa, kStageLd, kTile, A + d0, lda, na, w);
    stage<kChunk>(sb, kStageLd, kTile, B + d0, ldb, nb, w);
    __syncthreads();
#pragma unroll 8
    for (int d = 0; d < kChunk; ++d) {
      float av[4], bv[4];
#pragma unroll
      for (int a = 0; a < 4; ++a) av[a] = sa[(ty + 16 * a) * kStageLd + d];
#pragma unroll
      for (int b = 0; b < 4; ++b) bv[b] = sb[(tx + 16 * b) * kStageLd + d];
#pragma unroll
      for (int a = 0; a < 4; ++a) {
#pragma unroll
        for (int b = 0; b < 4; ++b) acc[a][b] = fmaf(av[a], bv[b], acc[a][b]);
      }
    }
  }
}

// acc[a][n] += Σ_r S(ty + 16a, r) · rows[r][c0 + tx + 16n] over the tile's n_rows rows of
// src (row stride ld, n_cols valid columns from c0), staged through shared memory kRows at a
// time. S is the score tile in shared memory, read as scores[row][r], or scores[r][row] when
// kTransposed. Every thread of the block must call it (it synchronises).
template <int W, int NC, int kRows, bool kTransposed, typename T>
__device__ __forceinline__ void accumulate_scores_times_rows(float (&acc)[4][NC],
                                                             const float* scores, float* stage_buf,
                                                             const T* src, int64_t ld, int n_rows,
                                                             int n_cols) {
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  for (int r0 = 0; r0 < n_rows; r0 += kRows) {
    __syncthreads();
    stage<W>(stage_buf, W, kRows, src + r0 * ld, ld, n_rows - r0, n_cols);
    __syncthreads();
#pragma unroll 4
    for (int r = 0; r < kRows; ++r) {
      float sv[4], x[NC];
#pragma unroll
      for (int a = 0; a < 4; ++a) {
        sv[a] = kTransposed ? scores[(r0 + r) * kScoreLd + ty + 16 * a]
                            : scores[(ty + 16 * a) * kScoreLd + r0 + r];
      }
#pragma unroll
      for (int n = 0; n < NC; ++n) x[n] = stage_buf[r * W + tx + 16 * n];
#pragma unroll
      for (int a = 0; a < 4; ++a) {
#pragma unroll
        for (int n = 0; n < NC; ++n) acc[a][n] = fmaf(sv[a], x[n], acc[a][n]);
      }
    }
  }
}

struct SeqTile {
  int64_t start;
  int length;
  int first_tile;
};

// Block x = (tile, sequence) with the sequence fastest; forward and dq take the query tiles
// from the last (the most keys) down, dk/dv the key tiles from the first.
__device__ __forceinline__ SeqTile seq_tile(const Params& p, bool reverse) {
  const int64_t b = blockIdx.x % p.batch_size;
  const int t = static_cast<int>(blockIdx.x / p.batch_size);
  const int64_t start = p.offsets[b];
  return {start, static_cast<int>(p.offsets[b + 1] - start), reverse ? p.num_tiles - 1 - t : t};
}

// out[i] = Σ_{j ≤ i} silu(z_ij) inv_n v_j for one query tile, NC * 16 columns of v at a time.
template <typename T, int NC>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(Params p, T* __restrict__ out, const T* __restrict__ q, const T* __restrict__ k,
                   const T* __restrict__ v) {
  constexpr int W = 16 * NC;
  constexpr int kRows = 4096 / W;  // v rows per staging step (fits in stage_buf)
  __shared__ float stage_buf[kStageFloats];
  __shared__ float scores[kTile * kScoreLd];
  float* sa = stage_buf;
  float* sb = stage_buf + kTile * kStageLd;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16, h = blockIdx.y;
  const SeqTile st = seq_tile(p, true);
  const int L = st.length;
  const int64_t* ts = p.time != nullptr ? p.timestamps + st.start : nullptr;
  const T* qh = q + st.start * p.ld_q + h * p.dqk;
  const T* kh = k + st.start * p.ld_k + h * p.dqk;
  const T* vh = v + st.start * p.ld_v + h * p.dv;
  T* oh = out + st.start * p.ld_o + h * p.dv;

  for (int i0 = st.first_tile * kTile; i0 < L; i0 += p.num_tiles * kTile) {
    const int nq = min(kTile, L - i0);
    for (int c0 = 0; c0 < p.dv; c0 += W) {
      float acc[4][NC];
#pragma unroll
      for (int a = 0; a < 4; ++a) {
#pragma unroll
        for (int n = 0; n < NC; ++n) acc[a][n] = 0.0f;
      }
      for (int j0 = 0; j0 < i0 + nq; j0 += kTile) {
        const int nk = min(kTile, L - j0);
        float z[4][4];
        __syncthreads();  // the previous key tile's scores are consumed
        dot_tile(z, sa, sb, qh + i0 * p.ld_q, p.ld_q, nq, kh + j0 * p.ld_k, p.ld_k, nk, p.dqk);
#pragma unroll
        for (int a = 0; a < 4; ++a) {
#pragma unroll
          for (int b = 0; b < 4; ++b) {
            const int i = i0 + ty + 16 * a, j = j0 + tx + 16 * b;
            float s = 0.0f;
            if (i < L && j <= i) {
              const float x = pre_activation(p, ts, z[a][b], i, j);
              s = x * sigmoid(x) * p.inv_n;
            }
            scores[(ty + 16 * a) * kScoreLd + tx + 16 * b] = s;
          }
        }
        accumulate_scores_times_rows<W, NC, kRows, false>(
            acc, scores, stage_buf, vh + j0 * p.ld_v + c0, p.ld_v, nk, p.dv - c0);
      }
#pragma unroll
      for (int a = 0; a < 4; ++a) {
        const int i = i0 + ty + 16 * a;
        if (i >= L) continue;
#pragma unroll
        for (int n = 0; n < NC; ++n) {
          const int c = c0 + tx + 16 * n;
          if (c < p.dv) oh[i * p.ld_o + c] = from_float<T>(acc[a][n]);
        }
      }
    }
  }
}

// dq_i = alpha Σ_{j ≤ i} dz_ij k_j for one query tile, plus the relative-bias gradients
// Σ dz over the pairs of each slot (summed in shared memory, then into bias_acc in fp64).
// bias_acc: [num_pos] position sums (when want_pos) followed by the time-slot sums.
template <typename T, int NC>
__global__ void __launch_bounds__(kThreads)
    backward_dq_kernel(Params p, T* __restrict__ d_q, const T* __restrict__ d_out,
                       const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                       double* __restrict__ bias_acc, bool want_pos, bool want_time) {
  constexpr int W = 16 * NC;
  constexpr int kRows = 4096 / W;
  __shared__ float stage_buf[kStageFloats];
  __shared__ float scores[kTile * kScoreLd];
  __shared__ float s_pos[kMaxSmemPositions];
  __shared__ float s_time[kTimeSlots];
  float* sa = stage_buf;
  float* sb = stage_buf + kTile * kStageLd;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16, h = blockIdx.y;
  const SeqTile st = seq_tile(p, true);
  const int L = st.length;
  const int64_t* ts = p.time != nullptr ? p.timestamps + st.start : nullptr;
  const T* qh = q + st.start * p.ld_q + h * p.dqk;
  const T* kh = k + st.start * p.ld_k + h * p.dqk;
  const T* vh = v + st.start * p.ld_v + h * p.dv;
  const T* doh = d_out + st.start * p.ld_o + h * p.dv;
  T* dqh = d_q + st.start * p.ld_q + h * p.dqk;

  const bool pos_in_smem = want_pos && p.num_pos <= kMaxSmemPositions;
  const int num_pos_smem = pos_in_smem ? static_cast<int>(p.num_pos) : 0;
  const int num_time =
      want_time ? static_cast<int>(min(p.num_time, static_cast<int64_t>(kTimeSlots))) : 0;
  double* acc_pos = bias_acc;
  double* acc_time = bias_acc + (want_pos ? p.num_pos : 0);
  for (int e = threadIdx.x; e < num_pos_smem; e += kThreads) s_pos[e] = 0.0f;
  for (int e = threadIdx.x; e < num_time; e += kThreads) s_time[e] = 0.0f;
  // (the barrier opening every key tile orders the zeroing before any atomicAdd)

  for (int i0 = st.first_tile * kTile; i0 < L; i0 += p.num_tiles * kTile) {
    const int nq = min(kTile, L - i0);
    // One pass per NC*16 columns of dq; the bias gradients are taken in the first. With
    // dqk = 0 there is still one pass, for them.
    for (int c0 = 0; c0 < max(p.dqk, 1); c0 += W) {
      const bool bias_pass = c0 == 0;
      float acc[4][NC];
#pragma unroll
      for (int a = 0; a < 4; ++a) {
#pragma unroll
        for (int n = 0; n < NC; ++n) acc[a][n] = 0.0f;
      }
      for (int j0 = 0; j0 < i0 + nq; j0 += kTile) {
        const int nk = min(kTile, L - j0);
        float z[4][4], g[4][4];
        __syncthreads();
        dot_tile(z, sa, sb, qh + i0 * p.ld_q, p.ld_q, nq, kh + j0 * p.ld_k, p.ld_k, nk, p.dqk);
        dot_tile(g, sa, sb, doh + i0 * p.ld_o, p.ld_o, nq, vh + j0 * p.ld_v, p.ld_v, nk, p.dv);
#pragma unroll
        for (int a = 0; a < 4; ++a) {
#pragma unroll
          for (int b = 0; b < 4; ++b) {
            const int i = i0 + ty + 16 * a, j = j0 + tx + 16 * b;
            float dz = 0.0f;
            if (i < L && j <= i) {
              const float x = pre_activation(p, ts, z[a][b], i, j);
              const float sg = sigmoid(x);
              dz = g[a][b] * p.inv_n * sg * (1.0f + x * (1.0f - sg));
              if (bias_pass) {
                if (want_pos) {
                  const int slot = pos_slot(p, i, j);
                  if (pos_in_smem) {
                    atomicAdd(&s_pos[slot], dz);
                  } else {
                    atomicAdd(&acc_pos[slot], static_cast<double>(dz));
                  }
                }
                if (want_time) atomicAdd(&s_time[hstu_time_slot(ts[i] - ts[j], p.num_time)], dz);
              }
            }
            scores[(ty + 16 * a) * kScoreLd + tx + 16 * b] = dz;
          }
        }
        if (p.dqk == 0) continue;
        accumulate_scores_times_rows<W, NC, kRows, false>(
            acc, scores, stage_buf, kh + j0 * p.ld_k + c0, p.ld_k, nk, p.dqk - c0);
      }
#pragma unroll
      for (int a = 0; a < 4; ++a) {
        const int i = i0 + ty + 16 * a;
        if (i >= L) continue;
#pragma unroll
        for (int n = 0; n < NC; ++n) {
          const int c = c0 + tx + 16 * n;
          if (c < p.dqk) dqh[i * p.ld_q + c] = from_float<T>(p.alpha * acc[a][n]);
        }
      }
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < num_pos_smem; e += kThreads) {
    if (s_pos[e] != 0.0f) atomicAdd(&acc_pos[e], static_cast<double>(s_pos[e]));
  }
  for (int e = threadIdx.x; e < num_time; e += kThreads) {
    if (s_time[e] != 0.0f) atomicAdd(&acc_time[e], static_cast<double>(s_time[e]));
  }
}

// For one key tile: dv_j = Σ_{i ≥ j} S_ij do_i and dk_j = alpha Σ_{i ≥ j} dz_ij q_i, NC * 16
// columns of each at a time.
template <typename T, int NC>
__global__ void __launch_bounds__(kThreads)
    backward_dkdv_kernel(Params p, T* __restrict__ d_k, T* __restrict__ d_v,
                         const T* __restrict__ d_out, const T* __restrict__ q,
                         const T* __restrict__ k, const T* __restrict__ v) {
  constexpr int W = 16 * NC;
  constexpr int kRows = 4096 / W;
  __shared__ float stage_buf[kStageFloats];
  __shared__ float scores[kTile * kScoreLd];  // [query][key]
  float* sa = stage_buf;
  float* sb = stage_buf + kTile * kStageLd;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16, h = blockIdx.y;
  const SeqTile st = seq_tile(p, false);
  const int L = st.length;
  const int64_t* ts = p.time != nullptr ? p.timestamps + st.start : nullptr;
  const T* qh = q + st.start * p.ld_q + h * p.dqk;
  const T* kh = k + st.start * p.ld_k + h * p.dqk;
  const T* vh = v + st.start * p.ld_v + h * p.dv;
  const T* doh = d_out + st.start * p.ld_o + h * p.dv;
  T* dkh = d_k + st.start * p.ld_k + h * p.dqk;
  T* dvh = d_v + st.start * p.ld_v + h * p.dv;
  const int width = max(p.dqk, p.dv);

  for (int j0 = st.first_tile * kTile; j0 < L; j0 += p.num_tiles * kTile) {
    const int nk = min(kTile, L - j0);
    for (int c0 = 0; c0 < width; c0 += W) {
      float acc_k[4][NC], acc_v[4][NC];  // rows: keys ty + 16a; columns c0 + tx + 16n
#pragma unroll
      for (int a = 0; a < 4; ++a) {
#pragma unroll
        for (int n = 0; n < NC; ++n) acc_k[a][n] = acc_v[a][n] = 0.0f;
      }
      for (int i0 = j0; i0 < L; i0 += kTile) {  // j0 is a multiple of kTile
        const int nq = min(kTile, L - i0);
        float z[4][4], g[4][4];
        __syncthreads();
        dot_tile(z, sa, sb, qh + i0 * p.ld_q, p.ld_q, nq, kh + j0 * p.ld_k, p.ld_k, nk, p.dqk);
        dot_tile(g, sa, sb, doh + i0 * p.ld_o, p.ld_o, nq, vh + j0 * p.ld_v, p.ld_v, nk, p.dv);
        // z[a][b], g[a][b]: query i0 + ty + 16a, key j0 + tx + 16b. S to shared, dz kept.
#pragma unroll
        for (int a = 0; a < 4; ++a) {
#pragma unroll
          for (int b = 0; b < 4; ++b) {
            const int i = i0 + ty + 16 * a, j = j0 + tx + 16 * b;
            float s = 0.0f, dz = 0.0f;
            if (i < L && j < L && j <= i) {
              const float x = pre_activation(p, ts, z[a][b], i, j);
              const float sg = sigmoid(x);
              s = x * sg * p.inv_n;
              dz = g[a][b] * p.inv_n * sg * (1.0f + x * (1.0f - sg));
            }
            scores[(ty + 16 * a) * kScoreLd + tx + 16 * b] = s;
            g[a][b] = dz;
          }
        }
        if (c0 < p.dv) {  // dv += Sᵀ do
          accumulate_scores_times_rows<W, NC, kRows, true>(
              acc_v, scores, stage_buf, doh + i0 * p.ld_o + c0, p.ld_o, nq, p.dv - c0);
        }
        if (c0 < p.dqk) {   // dk += dzᵀ q
          __syncthreads();  // S is consumed
#pragma unroll
          for (int a = 0; a < 4; ++a) {
#pragma unroll
            for (int b = 0; b < 4; ++b) scores[(ty + 16 * a) * kScoreLd + tx + 16 * b] = g[a][b];
          }
          accumulate_scores_times_rows<W, NC, kRows, true>(
              acc_k, scores, stage_buf, qh + i0 * p.ld_q + c0, p.ld_q, nq, p.dqk - c0);
        }
      }
#pragma unroll
      for (int a = 0; a < 4; ++a) {
        const int j = j0 + ty + 16 * a;
        if (j >= L) continue;
#pragma unroll
        for (int n = 0; n < NC; ++n) {
          const int c = c0 + tx + 16 * n;
          if (c < p.dqk) dkh[j * p.ld_k + c] = from_float<T>(p.alpha * acc_k[a][n]);
          if (c < p.dv) dvh[j * p.ld_v + c] = from_float<T>(acc_v[a][n]);
        }
      }
    }
  }
}

__global__ void add_bias_grads_kernel(float* __restrict__ d_bias, const double* __restrict__ acc,
                                      int64_t n) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e < n) d_bias[e] += static_cast<float>(acc[e]);
}

void check_args(const HstuAttentionShape& shape, const HstuRelativeBias& bias, int64_t batch_size,
                int64_t max_len, const int64_t* offsets) {
  const int64_t H = shape.num_heads;
  GENREC_CHECK(H >= 1 && H <= 65535 && shape.dim_qk >= 0 && shape.dim_v >= 0 &&
                   shape.dim_qk <= (1 << 20) && shape.dim_v <= (1 << 20),
               "cuda hstu attention: bad shape heads={} dim_qk={} dim_v={}", H, shape.dim_qk,
               shape.dim_v);
  GENREC_CHECK(shape.ld_q >= H * shape.dim_qk && shape.ld_k >= H * shape.dim_qk &&
                   shape.ld_v >= H * shape.dim_v,
               "cuda hstu attention: strides q={} k={} v={} too small for {} heads of {}/{}",
               shape.ld_q, shape.ld_k, shape.ld_v, H, shape.dim_qk, shape.dim_v);
  GENREC_CHECK(bias.position == nullptr || bias.num_positions >= 1,
               "cuda hstu attention: position bias with {} positions", bias.num_positions);
  GENREC_CHECK(bias.time == nullptr || (bias.num_time_buckets >= 1 && bias.timestamps != nullptr),
               "cuda hstu attention: time bias needs timestamps and >= 1 bucket (got {})",
               bias.num_time_buckets);
  GENREC_CHECK(batch_size >= 0 && offsets != nullptr, "cuda hstu attention: batch size {}",
               batch_size);
  GENREC_CHECK(max_len >= 0 && max_len < (int64_t{1} << 30),
               "cuda hstu attention: max_len {} out of range", max_len);
}

Params make_params(const int64_t* offsets, int64_t batch_size, const HstuAttentionShape& shape,
                   const HstuRelativeBias& bias, int64_t max_len) {
  Params p{};
  p.offsets = offsets;
  p.batch_size = batch_size;
  const int64_t tiles = std::max<int64_t>(1, ceil_div(max_len, kTile));
  // Grid x is batch_size * num_tiles; longer sequences loop over the extra tiles.
  p.num_tiles = static_cast<int>(std::min<int64_t>(
      tiles, std::numeric_limits<int32_t>::max() / std::max<int64_t>(1, batch_size)));
  GENREC_CHECK(p.num_tiles >= 1, "cuda hstu attention: batch size {} too large", batch_size);
  p.dqk = static_cast<int>(shape.dim_qk);
  p.dv = static_cast<int>(shape.dim_v);
  p.ld_q = shape.ld_q;
  p.ld_k = shape.ld_k;
  p.ld_v = shape.ld_v;
  p.ld_o = shape.num_heads * shape.dim_v;
  p.alpha = shape.alpha;
  p.inv_n = shape.inv_n;
  p.pos = bias.position;
  p.num_pos = bias.num_positions;
  p.time = bias.time;
  p.num_time = bias.num_time_buckets;
  p.timestamps = bias.timestamps;
  return p;
}

// NC = 4 (64 columns per pass) for head dims up to 64, else 8 (128 per pass).
template <typename F>
void with_columns(int64_t dim, F&& f) {
  if (dim <= 64) {
    f(std::integral_constant<int, 4>{});
  } else {
    f(std::integral_constant<int, 8>{});
  }
}

}  // namespace

template <typename T>
void hstu_attention_forward(T* out, const T* q, const T* k, const T* v, const int64_t* offsets,
                            int64_t batch_size, const HstuAttentionShape& shape,
                            const HstuRelativeBias& bias, int64_t max_len, cudaStream_t stream) {
  check_args(shape, bias, batch_size, max_len, offsets);
  if (batch_size == 0 || shape.dim_v == 0) return;
  const Params p = make_params(offsets, batch_size, shape, bias, max_len);
  const dim3 grid(static_cast<unsigned>(batch_size * p.num_tiles),
                  static_cast<unsigned>(shape.num_heads));
  with_columns(shape.dim_v, [&](auto nc) {
    forward_kernel<T, decltype(nc)::value><<<grid, kThreads, 0, stream>>>(p, out, q, k, v);
  });
  GENREC_CUDA_LAUNCH_CHECK("hstu_attention_forward");
}

template <typename T>
void hstu_attention_backward(T* d_q, T* d_k, T* d_v, float* d_position_bias, float* d_time_bias,
                             const T* d_out, const T* q, const T* k, const T* v,
                             const int64_t* offsets, int64_t batch_size,
                             const HstuAttentionShape& shape, const HstuRelativeBias& bias,
                             int64_t max_len, cudaStream_t stream) {
  check_args(shape, bias, batch_size, max_len, offsets);
  if (batch_size == 0) return;
  const Params p = make_params(offsets, batch_size, shape, bias, max_len);
  const bool want_pos = d_position_bias != nullptr && bias.position != nullptr;
  const bool want_time = d_time_bias != nullptr && bias.time != nullptr;
  const int64_t num_pos = want_pos ? bias.num_positions : 0;
  const int64_t num_time = want_time ? std::min<int64_t>(bias.num_time_buckets, kTimeSlots) : 0;
  const dim3 grid(static_cast<unsigned>(batch_size * p.num_tiles),
                  static_cast<unsigned>(shape.num_heads));

  DeviceBuffer<double> bias_sums(num_pos + num_time, stream);
  double* bias_acc = bias_sums.data();  // null without bias gradients
  if (bias_acc != nullptr) {
    GENREC_CUDA_CHECK(cudaMemsetAsync(bias_acc, 0, bias_sums.bytes(), stream));
  }
  if (shape.dim_qk > 0 || bias_acc != nullptr) {
    with_columns(shape.dim_qk, [&](auto nc) {
      backward_dq_kernel<T, decltype(nc)::value>
          <<<grid, kThreads, 0, stream>>>(p, d_q, d_out, q, k, v, bias_acc, want_pos, want_time);
    });
    GENREC_CUDA_LAUNCH_CHECK("hstu_attention_backward (dq)");
  }
  if (shape.dim_qk > 0 || shape.dim_v > 0) {
    with_columns(std::max(shape.dim_qk, shape.dim_v), [&](auto nc) {
      backward_dkdv_kernel<T, decltype(nc)::value>
          <<<grid, kThreads, 0, stream>>>(p, d_k, d_v, d_out, q, k, v);
    });
    GENREC_CUDA_LAUNCH_CHECK("hstu_attention_backward (dk, dv)");
  }
  if (bias_acc != nullptr) {
    constexpr int kAddThreads = 256;
    if (num_pos > 0) {
      add_bias_grads_kernel<<<static_cast<unsigned>(ceil_div(num_pos, kAddThreads)), kAddThreads, 0,
                              stream>>>(d_position_bias, bias_acc, num_pos);
      GENREC_CUDA_LAUNCH_CHECK("hstu_attention_backward (position bias)");
    }
    if (num_time > 0) {
      add_bias_grads_kernel<<<1, kAddThreads, 0, stream>>>(d_time_bias, bias_acc + num_pos,
                                                           num_time);
      GENREC_CUDA_LAUNCH_CHECK("hstu_attention_backward (time bias)");
    }
  }
}

template void hstu_attention_forward<float>(float*, const float*, const float*, const float*,
                                            const int64_t*, int64_t, const HstuAttentionShape&,
                                            const HstuRelativeBias&, int64_t, cudaStream_t);
template void hstu_attention_forward<__nv_bfloat16>(__nv_bfloat16*, const __nv_bfloat16*,
                                                    const __nv_bfloat16*, const __nv_bfloat16*,
                                                    const int64_t*, int64_t,
                                                    const HstuAttentionShape&,
                                                    const HstuRelativeBias&, int64_t, cudaStream_t);
template void hstu_attention_backward<float>(float*, float*, float*, float*, float*, const float*,
                                             const float*, const float*, const float*,
                                             const int64_t*, int64_t, const HstuAttentionShape&,
                                             const HstuRelativeBias&, int64_t, cudaStream_t);
template void hstu_attention_backward<__nv_bfloat16>(
    __nv_bfloat16*, __nv_bfloat16*, __nv_bfloat16*, float*, float*, const __nv_bfloat16*,
    const __nv_bfloat16*, const __nv_bfloat16*, const __nv_bfloat16*, const int64_t*, int64_t,
    const HstuAttentionShape&, const HstuRelativeBias&, int64_t, cudaStream_t);

}  // namespace genrec::cuda

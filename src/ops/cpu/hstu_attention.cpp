// Each (sequence, head) pair is computed by one worker, in score tiles whose products are
// single-threaded BLAS calls on that worker; bias gradients go to per-pair scratch reduced in
// pair order, so results depend neither on the thread count nor on how sequences are batched.
#include "ops/hstu_attention.h"

#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/jagged.h"
#include "core/thread_pool.h"
#include "ops/cpu/simd.h"
#include "ops/hstu_time_buckets.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace genrec::cpu {
namespace {

// OpenBLAS 0.3 threads an sgemm once M*N*K reaches 2^18 (unless told to use one thread);
// threaded calls from several workers contend badly, so every tile product stays below that.
constexpr int64_t kSerialGemmWork = 1 << 17;
constexpr int64_t kMaxTileRows = 32;
constexpr int64_t kMaxTileCols = 256;
// Work units (L^2 * heads * (dim_qk + dim_v + 1) summed over sequences) from which the pairs
// are spread over the pool: about 0.5 MFLOP, far above the cost of waking the workers.
constexpr int64_t kParallelAttentionWork = 1 << 18;

// z <- silu(z) * inv_n.
void silu_scores(float* z, int64_t n, float inv_n) {
  int64_t c = 0;
#if defined(__SSE2__)
  const __m128 scale = _mm_set1_ps(inv_n);
  for (; c + 4 <= n; c += 4) {
    __m128 x = _mm_loadu_ps(z + c);
    _mm_storeu_ps(z + c, _mm_mul_ps(_mm_mul_ps(x, sigmoid4(x)), scale));
  }
#endif
  for (; c < n; ++c) z[c] = z[c] * inv_n / (1.0f + std::exp(-z[c]));
}

// z <- silu(z) * inv_n and g <- g * inv_n * silu'(z).
void silu_scores_backward(float* z, float* g, int64_t n, float inv_n) {
  int64_t c = 0;
#if defined(__SSE2__)
  const __m128 scale = _mm_set1_ps(inv_n), one = _mm_set1_ps(1.0f);
  for (; c + 4 <= n; c += 4) {
    __m128 x = _mm_loadu_ps(z + c), s = sigmoid4(x);
    _mm_storeu_ps(z + c, _mm_mul_ps(_mm_mul_ps(x, s), scale));
    __m128 d = _mm_mul_ps(s, _mm_add_ps(one, _mm_mul_ps(x, _mm_sub_ps(one, s))));
    _mm_storeu_ps(g + c, _mm_mul_ps(_mm_mul_ps(_mm_loadu_ps(g + c), scale), d));
  }
#endif
  for (; c < n; ++c) {
    float x = z[c], s = 1.0f / (1.0f + std::exp(-x));
    z[c] = x * s * inv_n;
    g[c] = g[c] * inv_n * s * (1.0f + x * (1.0f - s));
  }
}

// C = alpha op(A) op(B) + beta C on the calling thread (ops/gemm.h would use the pool, and we
// are already inside one of its workers).
void tile_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
               const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
               int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (int64_t i = 0; i < M; ++i) {
      float* c = C + i * ldc;
      for (int64_t j = 0; j < N; ++j) c[j] = beta == 0.0f ? 0.0f : beta * c[j];
    }
    return;
  }
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(M), static_cast<int>(N),
              static_cast<int>(K), alpha, A, static_cast<int>(lda), B, static_cast<int>(ldb), beta,
              C, static_cast<int>(ldc));
}

struct Problem {
  const int64_t* offsets;
  int64_t batch_size;
  HstuAttentionShape shape;
  HstuRelativeBias bias;
  HstuMask mask;
  bool masked;  // anything beyond causality: per-element visibility
  int64_t tile_rows, tile_cols;
  int64_t ld_out;          // row stride of out and d_out
  int64_t num_time_slots;  // time-bias entries that can be indexed
  const HstuTimeBuckets* buckets;

  Problem(const int64_t* offsets_, int64_t batch_size_, const HstuAttentionShape& shape_,
          const HstuRelativeBias& bias_, const HstuMask& mask_)
      : offsets(offsets_),
        batch_size(batch_size_),
        shape(shape_),
        bias(bias_),
        mask(mask_),
        masked(!mask_.causal_only()) {
    const int64_t H = shape.num_heads;
    GENREC_CHECK(H >= 1 && shape.dim_qk >= 0 && shape.dim_v >= 0,
                 "hstu attention: bad shape heads={} dim_qk={} dim_v={}", H, shape.dim_qk,
                 shape.dim_v);
    GENREC_CHECK(shape.ld_q >= H * shape.dim_qk && shape.ld_k >= H * shape.dim_qk &&
                     shape.ld_v >= H * shape.dim_v,
                 "hstu attention: strides q={} k={} v={} too small for {} heads of {}/{}",
                 shape.ld_q, shape.ld_k, shape.ld_v, H, shape.dim_qk, shape.dim_v);
    GENREC_CHECK(bias.position == nullptr || bias.num_positions >= 1,
                 "hstu attention: position bias with {} positions", bias.num_positions);
    GENREC_CHECK(bias.time == nullptr || (bias.num_time_buckets >= 1 && bias.timestamps != nullptr),
                 "hstu attention: time bias needs timestamps and >= 1 bucket (got {})",
                 bias.num_time_buckets);
    validate_offsets(offsets, batch_size, offsets[batch_size]);
    GENREC_CHECK(mask.num_contexts >= 0 && mask.max_attn_len >= 0,
                 "hstu attention: bad mask contexts={} max_attn_len={}", mask.num_contexts,
                 mask.max_attn_len);
    for (int64_t b = 0; mask.num_targets != nullptr && b < batch_size; ++b) {
      GENREC_CHECK(mask.num_targets[b] >= 0 && mask.num_targets[b] <= length(b),
                   "hstu attention: sequence {} has {} targets but {} tokens", b,
                   mask.num_targets[b], length(b));
    }
    ld_out = H * shape.dim_v;
    const int64_t d = std::max<int64_t>({shape.dim_qk, shape.dim_v, 1});
    tile_rows = kMaxTileRows;
    tile_cols = kSerialGemmWork / (tile_rows * d);
    if (tile_cols < tile_rows) {
      tile_rows = tile_cols = 1;
      while ((tile_rows + 1) * (tile_rows + 1) * d <= kSerialGemmWork) ++tile_rows;
      tile_cols = tile_rows;
    }
    tile_cols = std::min(tile_cols, kMaxTileCols);
    buckets = bias.time != nullptr ? &HstuTimeBuckets::get() : nullptr;
    num_time_slots =
        bias.time != nullptr ? std::min(bias.num_time_buckets, buckets->max_bucket() + 1) : 0;
  }

  int64_t length(int64_t b) const { return offsets[b + 1] - offsets[b]; }
  HstuSequenceMask sequence_mask(int64_t b) const {
    return HstuSequenceMask(length(b), mask.num_targets ? mask.num_targets[b] : 0, mask);
  }
  // Key tiles of a query tile end at its last row, unless contexts see ahead.
  int64_t keys_end(int64_t b, int64_t i1) const {
    return masked && mask.num_contexts > 0 ? length(b) : i1;
  }
};

struct Scratch {
  std::vector<float> scores, grads;
  std::vector<int32_t> slots;
  std::vector<uint8_t> visible;  // per element of a tile, for masked problems
  explicit Scratch(const Problem& p)
      : scores(p.tile_rows * p.tile_cols),
        grads(p.tile_rows * p.tile_cols),
        slots(p.bias.time != nullptr ? p.tile_rows * p.tile_cols : 0),
        visible(p.masked ? p.tile_rows * p.tile_cols : 0) {}
};

// Runs fn(b, h, scratch) for every pair with a non-empty sequence: inline when the batch is
// small, else on all threads, longest sequences first, each pair taken whole by one thread.
template <typename F>
void for_each_pair(const Problem& p, F&& fn) {
  const int64_t H = p.shape.num_heads;
  std::vector<int64_t> seqs;
  int64_t work = 0;
  for (int64_t b = 0; b < p.batch_size; ++b) {
    if (p.length(b) == 0) continue;
    seqs.push_back(b);
    work += p.length(b) * p.length(b) * H * (p.shape.dim_qk + p.shape.dim_v + 1);
  }
  const int threads = ThreadPool::global().num_threads();
  if (work < kParallelAttentionWork || threads == 1 || static_cast<int64_t>(seqs.size()) * H == 1) {
    Scratch scratch(p);
    for (int64_t b : seqs) {
      for (int64_t h = 0; h < H; ++h) fn(b, h, scratch);
    }
    return;
  }
  std::stable_sort(seqs.begin(), seqs.end(),
                   [&](int64_t a, int64_t b) { return p.length(a) > p.length(b); });
  const int64_t num_pairs = static_cast<int64_t>(seqs.size()) * H;
  std::atomic<int64_t> next{0};
  parallel_for(threads, [&](int64_t, int64_t, int) {
    Scratch scratch(p);
    for (int64_t i = next.fetch_add(1); i < num_pairs; i = next.fetch_add(1)) {
      fn(seqs[i / H], i % H, scratch);
    }
  });
}

// Pre-activation scores of a tile: z = alpha q_i·k_j + biases. Unmasked problems compute the
// valid[r] leading columns of row r (j <= i); masked ones compute every column and mark each
// element in `visible`. The time-bias slot of each element goes to `slots` when non-null.
void tile_scores(const Problem& p, const HstuSequenceMask& m, const float* q, const float* k,
                 int64_t start, int64_t h, int64_t i0, int64_t mq, int64_t j0, int64_t nk, float* z,
                 int32_t* slots, int64_t* valid, uint8_t* visible) {
  const HstuAttentionShape& s = p.shape;
  tile_gemm(false, true, mq, nk, s.dim_qk, s.alpha, q + (start + i0) * s.ld_q + h * s.dim_qk,
            s.ld_q, k + (start + j0) * s.ld_k + h * s.dim_qk, s.ld_k, 0.0f, z, nk);
  const float* pos = p.bias.position;
  const float* time = p.bias.time;
  const int64_t last_pos = p.bias.num_positions - 1;
  for (int64_t r = 0; r < mq; ++r) {
    const int64_t i = i0 + r;
    const int64_t nv = p.masked ? nk : std::clamp<int64_t>(i - j0 + 1, 0, nk);
    valid[r] = nv;
    float* zr = z + r * nk;
    if (p.masked) {
      for (int64_t c = 0; c < nk; ++c) visible[r * nk + c] = m.visible(i, j0 + c);
    }
    if (pos != nullptr) {
      for (int64_t c = 0; c < nv; ++c) zr[c] += pos[std::min(m.relative(i, j0 + c), last_pos)];
    }
    if (time != nullptr) {
      const int64_t* ts = p.bias.timestamps + start;
      int32_t* sr = slots != nullptr ? slots + r * nk : nullptr;
      for (int64_t c = 0; c < nv; ++c) {
        int64_t slot = std::min((*p.buckets)(ts[i] - ts[j0 + c]), p.num_time_slots - 1);
        zr[c] += time[slot];
        if (sr != nullptr) sr[c] = static_cast<int32_t>(slot);
      }
    }
  }
}

// Zeroes the elements of row r that the mask hides (masked problems only).
void hide_masked(const Problem& p, const uint8_t* visible, int64_t r, int64_t nk, float* row) {
  if (!p.masked) return;
  for (int64_t c = 0; c < nk; ++c) {
    if (!visible[r * nk + c]) row[c] = 0.0f;
  }
}

}  // namespace

void hstu_attention_forward(float* out, const float* q, const float* k, const float* v,
                            const int64_t* offsets, int64_t batch_size,
                            const HstuAttentionShape& shape, const HstuRelativeBias& bias,
                            const HstuMask& mask) {
  const Problem p(offsets, batch_size, shape, bias, mask);
  const int64_t dv = shape.dim_v;
  for_each_pair(p, [&](int64_t b, int64_t h, Scratch& scratch) {
    const int64_t start = offsets[b], L = p.length(b);
    const HstuSequenceMask m = p.sequence_mask(b);
    int64_t valid[kMaxTileRows];
    for (int64_t i0 = 0; i0 < L; i0 += p.tile_rows) {
      const int64_t mq = std::min(p.tile_rows, L - i0), i1 = i0 + mq;
      const int64_t j_end = p.keys_end(b, i1);
      float* o = out + (start + i0) * p.ld_out + h * dv;
      for (int64_t j0 = 0; j0 < j_end; j0 += p.tile_cols) {
        const int64_t nk = std::min(p.tile_cols, j_end - j0);
        float* z = scratch.scores.data();
        tile_scores(p, m, q, k, start, h, i0, mq, j0, nk, z, nullptr, valid,
                    scratch.visible.data());
        for (int64_t r = 0; r < mq; ++r) {
          float* zr = z + r * nk;
          silu_scores(zr, valid[r], shape.inv_n);
          std::fill(zr + valid[r], zr + nk, 0.0f);
          hide_masked(p, scratch.visible.data(), r, nk, zr);
        }
        tile_gemm(false, false, mq, dv, nk, 1.0f, z, nk, v + (start + j0) * shape.ld_v + h * dv,
                  shape.ld_v, j0 == 0 ? 0.0f : 1.0f, o, p.ld_out);
      }
    }
  });
}

void hstu_attention_backward(float* d_q, float* d_k, float* d_v, float* d_position_bias,
                             float* d_time_bias, const float* d_out, const float* q, const float* k,
                             const float* v, const int64_t* offsets, int64_t batch_size,
                             const HstuAttentionShape& shape, const HstuRelativeBias& bias,
                             const HstuMask& mask) {
  const Problem p(offsets, batch_size, shape, bias, mask);
  const int64_t H = shape.num_heads, dqk = shape.dim_qk, dv = shape.dim_v;
  const bool want_pos = d_position_bias != nullptr && bias.position != nullptr;
  const bool want_time = d_time_bias != nullptr && bias.time != nullptr;

  // Per-pair bias-gradient accumulators: positions 0..min(L, P)-1, then the time slots.
  std::vector<int64_t> acc_offset(batch_size * H + 1, 0);
  for (int64_t b = 0; b < batch_size; ++b) {
    const int64_t n = (want_pos ? std::min(p.length(b), bias.num_positions) : 0) +
                      (want_time && p.length(b) > 0 ? p.num_time_slots : 0);
    for (int64_t h = 0; h < H; ++h) acc_offset[b * H + h + 1] = acc_offset[b * H + h] + n;
  }
  std::vector<double> acc(acc_offset.back(), 0.0);

  for_each_pair(p, [&](int64_t b, int64_t h, Scratch& scratch) {
    const int64_t start = offsets[b], L = p.length(b);
    const HstuSequenceMask m = p.sequence_mask(b);
    double* acc_pos = acc.data() + acc_offset[b * H + h];
    double* acc_time = acc_pos + (want_pos ? std::min(L, bias.num_positions) : 0);
    const int64_t last_pos = bias.num_positions - 1;
    for (int64_t t = start; t < start + L; ++t) {
      std::fill_n(d_k + t * shape.ld_k + h * dqk, dqk, 0.0f);
      std::fill_n(d_v + t * shape.ld_v + h * dv, dv, 0.0f);
    }
    int64_t valid[kMaxTileRows];
    for (int64_t i0 = 0; i0 < L; i0 += p.tile_rows) {
      const int64_t mq = std::min(p.tile_rows, L - i0), i1 = i0 + mq;
      const float* qi = q + (start + i0) * shape.ld_q + h * dqk;
      const float* doi = d_out + (start + i0) * p.ld_out + h * dv;
      float* dqi = d_q + (start + i0) * shape.ld_q + h * dqk;
      const int64_t j_end = p.keys_end(b, i1);
      for (int64_t j0 = 0; j0 < j_end; j0 += p.tile_cols) {
        const int64_t nk = std::min(p.tile_cols, j_end - j0);
        float* z = scratch.scores.data();
        float* g = scratch.grads.data();
        int32_t* slots = want_time ? scratch.slots.data() : nullptr;
        tile_scores(p, m, q, k, start, h, i0, mq, j0, nk, z, slots, valid, scratch.visible.data());
        const float* kj = k + (start + j0) * shape.ld_k + h * dqk;
        const float* vj = v + (start + j0) * shape.ld_v + h * dv;
        tile_gemm(false, true, mq, nk, dv, 1.0f, doi, p.ld_out, vj, shape.ld_v, 0.0f, g, nk);
        for (int64_t r = 0; r < mq; ++r) {
          const int64_t i = i0 + r, nv = valid[r];
          float* zr = z + r * nk;
          float* gr = g + r * nk;
          silu_scores_backward(zr, gr, nv, shape.inv_n);
          std::fill(zr + nv, zr + nk, 0.0f);
          std::fill(gr + nv, gr + nk, 0.0f);
          hide_masked(p, scratch.visible.data(), r, nk, zr);
          hide_masked(p, scratch.visible.data(), r, nk, gr);
          if (want_pos) {
            for (int64_t c = 0; c < nv; ++c)
              acc_pos[std::min(m.relative(i, j0 + c), last_pos)] += gr[c];
          }
          if (want_time) {
            const int32_t* sr = slots + r * nk;
            for (int64_t c = 0; c < nv; ++c) acc_time[sr[c]] += gr[c];
          }
        }
        // g now holds dL/dz and z the scores S.
        tile_gemm(false, false, mq, dqk, nk, shape.alpha, g, nk, kj, shape.ld_k,
                  j0 == 0 ? 0.0f : 1.0f, dqi, shape.ld_q);
        tile_gemm(true, false, nk, dqk, mq, shape.alpha, g, nk, qi, shape.ld_q, 1.0f,
                  d_k + (start + j0) * shape.ld_k + h * dqk, shape.ld_k);
        tile_gemm(true, false, nk, dv, mq, 1.0f, z, nk, doi, p.ld_out, 1.0f,
                  d_v + (start + j0) * shape.ld_v + h * dv, shape.ld_v);
      }
    }
  });

  for (int64_t b = 0; b < batch_size; ++b) {
    const int64_t num_pos = want_pos ? std::min(p.length(b), bias.num_positions) : 0;
    for (int64_t h = 0; h < H; ++h) {
      const double* a = acc.data() + acc_offset[b * H + h];
      if (acc_offset[b * H + h + 1] == acc_offset[b * H + h]) continue;
      for (int64_t i = 0; i < num_pos; ++i) d_position_bias[i] += static_cast<float>(a[i]);
      if (want_time) {
        for (int64_t i = 0; i < p.num_time_slots; ++i) {
          d_time_bias[i] += static_cast<float>(a[num_pos + i]);
        }
      }
    }
  }
}

}  // namespace genrec::cpu

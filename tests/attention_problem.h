// The HSTU attention problems shared by the CPU and the CUDA op tests: a jagged batch laid out
// as the model does (one buffer of rows [u | v | q | k | pad], so q, k and v are strided column
// slices), relative-bias tables and timestamps, all from seeded Philox streams; and the
// time-bucket boundaries that the boundary tests put every dt at.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "core/philox.h"
#include "op_test_util.h"
#include "ops/hstu_attention.h"

namespace genrec::test {

struct Attn {
  std::vector<int64_t> lengths, offsets, timestamps;
  int64_t B = 0, T = 0, H = 0, dqk = 0, dv = 0, P = 0, NB = 0, max_len = 0;
  int64_t ld = 0, voff = 0, qoff = 0, koff = 0;
  int64_t pad = 3;  // unused columns at the end of each row (8 keeps rows 16-byte aligned)
  bool use_pos = false, use_time = false;
  float alpha = 1.0f, inv_n = 1.0f;
  std::vector<float> buf, pos, time;

  const float* q() const { return buf.data() + qoff; }
  const float* k() const { return buf.data() + koff; }
  const float* v() const { return buf.data() + voff; }
  cpu::HstuAttentionShape shape() const {
    cpu::HstuAttentionShape s;
    s.num_heads = H;
    s.dim_qk = dqk;
    s.dim_v = dv;
    s.alpha = alpha;
    s.inv_n = inv_n;
    s.ld_q = s.ld_k = s.ld_v = ld;
    return s;
  }
  // The bias description over the given tables and timestamps (host or device pointers).
  cpu::HstuRelativeBias bias(const float* pos_table, const float* time_table,
                             const int64_t* ts) const {
    cpu::HstuRelativeBias b;
    if (use_pos) {
      b.position = pos_table;
      b.num_positions = P;
    }
    if (use_time) {
      b.time = time_table;
      b.num_time_buckets = NB;
      b.timestamps = ts;
    }
    return b;
  }
  // Over the host tables and timestamps.
  cpu::HstuRelativeBias bias() const { return bias(pos.data(), time.data(), timestamps.data()); }
};

// Random lengths in [1, max_len], with sequence 1 empty and sequence 2 of length 1; with
// first_at_max, sequence 0 has the maximum (drawn all the same, so the others do not change).
inline std::vector<int64_t> random_lengths(int64_t B, int64_t max_len, uint64_t seed,
                                           bool first_at_max = false) {
  Philox rng(seed);
  std::vector<int64_t> lengths(B);
  for (auto& l : lengths) l = 1 + static_cast<int64_t>(rng.below(max_len));
  if (first_at_max) lengths[0] = max_len;
  if (B > 1) lengths[1] = 0;
  if (B > 2) lengths[2] = 1;
  return lengths;
}

inline Attn make_attn(std::vector<int64_t> lengths, int64_t H, int64_t dqk, int64_t dv, int64_t P,
                      int64_t NB, bool use_pos, bool use_time, uint64_t seed, int64_t pad = 3) {
  Attn a;
  a.pad = pad;
  a.lengths = std::move(lengths);
  a.B = static_cast<int64_t>(a.lengths.size());
  a.offsets.assign(a.B + 1, 0);
  for (int64_t b = 0; b < a.B; ++b) a.offsets[b + 1] = a.offsets[b] + a.lengths[b];
  a.T = a.offsets[a.B];
  a.max_len = *std::max_element(a.lengths.begin(), a.lengths.end());
  a.H = H;
  a.dqk = dqk;
  a.dv = dv;
  a.P = P;
  a.NB = NB;
  a.use_pos = use_pos;
  a.use_time = use_time;
  a.voff = H * dv;
  a.qoff = 2 * H * dv;
  a.koff = a.qoff + H * dqk;
  a.ld = a.koff + H * dqk + a.pad;
  a.alpha = 1.0f / std::sqrt(static_cast<float>(std::max<int64_t>(dqk, 1)));
  a.inv_n = 1.0f / static_cast<float>(std::max<int64_t>(1, a.max_len));
  a.buf = random_normal(a.T * a.ld, seed);
  a.pos = random_normal(P, seed + 1, 0.5f);
  a.time = random_normal(NB, seed + 2, 0.5f);
  // Increasing timestamps per sequence; equal neighbours (dt = 0) now and then.
  Philox rng(seed + 3);
  for (int64_t b = 0; b < a.B; ++b) {
    int64_t t = 1000000000 + static_cast<int64_t>(rng.below(1000000));
    for (int64_t i = 0; i < a.lengths[b]; ++i) {
      if (rng.uniform() > 0.2f) t += static_cast<int64_t>(rng.below(3000));
      a.timestamps.push_back(t);
    }
  }
  return a;
}

// Columns [col, col + width) of every row of a [T, ld] buffer, compacted.
inline std::vector<float> columns(const std::vector<float>& buf, int64_t T, int64_t ld, int64_t col,
                                  int64_t width) {
  std::vector<float> out(T * width);
  for (int64_t t = 0; t < T; ++t) {
    std::copy_n(buf.data() + t * ld + col, width, out.data() + t * width);
  }
  return out;
}

struct AttnConfig {
  int64_t B, max_len, H, dqk, dv, P, NB;
};

// For b = 1 .. NB - 1, the smallest dt in [1, max_dt] whose bucket (of 1000) is at least b,
// found by bisection.
inline std::vector<int64_t> time_bucket_boundaries(int64_t NB, int64_t max_dt) {
  std::vector<int64_t> boundaries;
  for (int64_t b = 1; b < NB; ++b) {
    int64_t lo = 1, hi = max_dt;
    while (lo < hi) {
      int64_t mid = lo + (hi - lo) / 2;
      if (cpu::hstu_time_bucket(mid, 1000) >= b) {
        hi = mid;
      } else {
        lo = mid + 1;
      }
    }
    boundaries.push_back(lo);
  }
  return boundaries;
}

// One sequence with a time bias of NB buckets (scale-2 table) whose token 0 sits at t0 and
// whose later tokens lie at dt exactly at, and one below, every boundary, in both directions
// (t_i < t_j too).
inline Attn boundary_attn(int64_t NB, const std::vector<int64_t>& boundaries, int64_t t0) {
  std::vector<int64_t> dts;
  for (int64_t lo : boundaries) {
    dts.push_back(lo);
    dts.push_back(lo - 1);
  }
  const int64_t L = static_cast<int64_t>(dts.size()) + 1;
  Attn a = make_attn({L}, 1, 4, 4, L, NB, false, true, 200);
  a.timestamps[0] = t0;
  for (int64_t i = 1; i < L; ++i) {
    a.timestamps[i] = (i % 4 < 2) ? t0 + dts[i - 1] : t0 - dts[i - 1];
  }
  a.time = random_normal(NB, 201, 2.0f);
  return a;
}

}  // namespace genrec::test

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "attention_problem.h"
#include "core/error.h"
#include "op_test_util.h"
#include "ops/hstu_attention.h"

namespace genrec {
namespace {

using test::Attn;
using test::AttnConfig;
using test::columns;
using test::kFdRelTol;
using test::kFp32RelTol;
using test::make_attn;
using test::random_lengths;

struct AttnRef {
  std::vector<double> out, d_q, d_k, d_v, d_pos, d_time;  // compact [T, H*d] rows
};

// The mask rules of ops/hstu_attention.h written out independently: who sees whom, and the
// relative position used by the bias (targets all sit at the first target's position).
struct MaskRules {
  int64_t history, contexts, window;
  int64_t position(int64_t i) const { return std::min(i, history); }
  bool visible(int64_t i, int64_t j) const {
    if (i == j) return true;
    if (j >= history) return false;
    if (j < contexts || i < contexts) return true;
    return j < i && (window == 0 || position(i) - j <= window);
  }
};

// Straightforward float64 forward and (when d_out is given) backward, under `mask`.
AttnRef attn_reference(const Attn& a, const std::vector<float>* d_out,
                       const cpu::HstuMask& mask = {}) {
  const int64_t H = a.H, dqk = a.dqk, dv = a.dv;
  AttnRef r;
  r.out.assign(a.T * H * dv, 0.0);
  r.d_q.assign(a.T * H * dqk, 0.0);
  r.d_k.assign(a.T * H * dqk, 0.0);
  r.d_v.assign(a.T * H * dv, 0.0);
  r.d_pos.assign(a.P, 0.0);
  r.d_time.assign(a.NB, 0.0);
  for (int64_t b = 0; b < a.B; ++b) {
    const int64_t s = a.offsets[b], L = a.lengths[b];
    const int64_t targets = mask.num_targets != nullptr ? mask.num_targets[b] : 0;
    const MaskRules rules{L - targets, mask.num_contexts, mask.max_attn_len};
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < L; ++i) {
        for (int64_t j = 0; j < L; ++j) {
          if (!rules.visible(i, j)) continue;
          const float* qi = a.q() + (s + i) * a.ld + h * dqk;
          const float* kj = a.k() + (s + j) * a.ld + h * dqk;
          const float* vj = a.v() + (s + j) * a.ld + h * dv;
          double z = 0.0;
          for (int64_t d = 0; d < dqk; ++d) z += double(qi[d]) * kj[d];
          z *= a.alpha;
          const int64_t p = std::min(std::abs(rules.position(i) - rules.position(j)), a.P - 1);
          int64_t tb = 0;
          if (a.use_pos) z += a.pos[p];
          if (a.use_time) {
            tb = cpu::hstu_time_bucket(a.timestamps[s + i] - a.timestamps[s + j], a.NB);
            z += a.time[tb];
          }
          const double sg = 1.0 / (1.0 + std::exp(-z));
          const double S = z * sg * a.inv_n;
          for (int64_t d = 0; d < dv; ++d) r.out[(s + i) * H * dv + h * dv + d] += S * vj[d];
          if (d_out == nullptr) continue;
          const float* go = d_out->data() + (s + i) * H * dv + h * dv;
          double dS = 0.0;
          for (int64_t d = 0; d < dv; ++d) {
            dS += double(go[d]) * vj[d];
            r.d_v[(s + j) * H * dv + h * dv + d] += S * go[d];
          }
          const double dz = dS * a.inv_n * sg * (1.0 + z * (1.0 - sg));
          for (int64_t d = 0; d < dqk; ++d) {
            r.d_q[(s + i) * H * dqk + h * dqk + d] += a.alpha * dz * kj[d];
            r.d_k[(s + j) * H * dqk + h * dqk + d] += a.alpha * dz * qi[d];
          }
          if (a.use_pos) r.d_pos[p] += dz;
          if (a.use_time) r.d_time[tb] += dz;
        }
      }
    }
  }
  return r;
}

std::vector<float> run_forward(const Attn& a, const cpu::HstuMask& mask = {}) {
  std::vector<float> out(a.T * a.H * a.dv);
  test::poison(out);
  cpu::hstu_attention_forward(out.data(), a.q(), a.k(), a.v(), a.offsets.data(), a.B, a.shape(),
                              a.bias(), mask);
  return out;
}

struct Grads {
  std::vector<float> buf, pos, time;
};

// Gradient buffer poisoned with NaN; bias gradients start from `pos0` / `time0`.
Grads run_backward(const Attn& a, const std::vector<float>& d_out, const std::vector<float>& pos0,
                   const std::vector<float>& time0, const cpu::HstuMask& mask = {}) {
  Grads g{std::vector<float>(a.T * a.ld), pos0, time0};
  test::poison(g.buf);
  cpu::hstu_attention_backward(g.buf.data() + a.qoff, g.buf.data() + a.koff, g.buf.data() + a.voff,
                               a.use_pos ? g.pos.data() : nullptr,
                               a.use_time ? g.time.data() : nullptr, d_out.data(), a.q(), a.k(),
                               a.v(), a.offsets.data(), a.B, a.shape(), a.bias(), mask);
  return g;
}

// Small head dims (one column tile), large ones (several column tiles per row tile) and very
// large ones (square tiles below 32 rows).
const AttnConfig kConfigs[] = {
    {7, 70, 3, 8, 12, 40, 20},
    {5, 150, 2, 96, 128, 200, 64},
    {3, 60, 1, 256, 200, 16, 30},
};

TEST(OpsHstuAttention, ForwardMatchesReference) {
  uint64_t seed = 1;
  for (const AttnConfig& c : kConfigs) {
    for (int variant = 0; variant < 4; ++variant) {
      const bool use_pos = variant & 1, use_time = variant & 2;
      SCOPED_TRACE(testing::Message() << "dqk=" << c.dqk << " dv=" << c.dv << " pos=" << use_pos
                                      << " time=" << use_time);
      Attn a = make_attn(random_lengths(c.B, c.max_len, seed), c.H, c.dqk, c.dv, c.P, c.NB, use_pos,
                         use_time, seed + 10);
      seed += 100;
      auto out = run_forward(a);
      EXPECT_LT(test::rel_l2(out, attn_reference(a, nullptr).out), kFp32RelTol);
    }
  }
}

TEST(OpsHstuAttention, BackwardMatchesReference) {
  uint64_t seed = 500;
  for (const AttnConfig& c : kConfigs) {
    for (bool with_bias : {false, true}) {
      SCOPED_TRACE(testing::Message()
                   << "dqk=" << c.dqk << " dv=" << c.dv << " bias=" << with_bias);
      Attn a = make_attn(random_lengths(c.B, c.max_len, seed), c.H, c.dqk, c.dv, c.P, c.NB,
                         with_bias, with_bias, seed + 10);
      auto d_out = test::random_normal(a.T * a.H * a.dv, seed + 20);
      auto pos0 = test::random_normal(a.P, seed + 21), time0 = test::random_normal(a.NB, seed + 22);
      seed += 100;
      Grads g = run_backward(a, d_out, pos0, time0);
      AttnRef r = attn_reference(a, &d_out);
      EXPECT_LT(test::rel_l2(columns(g.buf, a.T, a.ld, a.qoff, a.H * a.dqk), r.d_q), kFp32RelTol);
      EXPECT_LT(test::rel_l2(columns(g.buf, a.T, a.ld, a.koff, a.H * a.dqk), r.d_k), kFp32RelTol);
      EXPECT_LT(test::rel_l2(columns(g.buf, a.T, a.ld, a.voff, a.H * a.dv), r.d_v), kFp32RelTol);
      // Nothing is written outside the q, k and v slices (u columns and padding).
      for (int64_t t = 0; t < a.T; ++t) {
        for (int64_t col = 0; col < a.ld; ++col) {
          if (col < a.voff || col >= a.ld - a.pad) {
            ASSERT_TRUE(std::isnan(g.buf[t * a.ld + col])) << "row " << t << " col " << col;
          }
        }
      }
      if (with_bias) {
        EXPECT_LT(test::rel_l2(test::difference(g.pos, pos0), r.d_pos), kFp32RelTol);
        EXPECT_LT(test::rel_l2(test::difference(g.time, time0), r.d_time), kFp32RelTol);
      }
    }
  }
}

// Targets, contexts and sliding windows, alone and together, with both biases: forward and
// backward against the float64 reference.
TEST(OpsHstuAttention, MasksMatchReference) {
  const AttnConfig c{6, 90, 2, 16, 12, 40, 20};
  uint64_t seed = 700;
  Attn a = make_attn(random_lengths(c.B, c.max_len, seed), c.H, c.dqk, c.dv, c.P, c.NB, true, true,
                     seed + 1);
  std::vector<int64_t> targets(a.B);
  for (int64_t b = 0; b < a.B; ++b) targets[b] = std::min<int64_t>(a.lengths[b], 1 + b % 5);
  const cpu::HstuMask masks[] = {
      {targets.data(), 0, 0}, {nullptr, 3, 0}, {nullptr, 0, 17}, {targets.data(), 2, 25}};
  for (const cpu::HstuMask& mask : masks) {
    SCOPED_TRACE(testing::Message() << "targets=" << (mask.num_targets != nullptr) << " contexts="
                                    << mask.num_contexts << " window=" << mask.max_attn_len);
    auto d_out = test::random_normal(a.T * a.H * a.dv, seed + 20);
    auto pos0 = test::random_normal(a.P, seed + 21), time0 = test::random_normal(a.NB, seed + 22);
    seed += 100;
    AttnRef r = attn_reference(a, &d_out, mask);
    EXPECT_LT(test::rel_l2(run_forward(a, mask), r.out), kFp32RelTol);
    Grads g = run_backward(a, d_out, pos0, time0, mask);
    EXPECT_LT(test::rel_l2(columns(g.buf, a.T, a.ld, a.qoff, a.H * a.dqk), r.d_q), kFp32RelTol);
    EXPECT_LT(test::rel_l2(columns(g.buf, a.T, a.ld, a.koff, a.H * a.dqk), r.d_k), kFp32RelTol);
    EXPECT_LT(test::rel_l2(columns(g.buf, a.T, a.ld, a.voff, a.H * a.dv), r.d_v), kFp32RelTol);
    EXPECT_LT(test::rel_l2(test::difference(g.pos, pos0), r.d_pos), kFp32RelTol);
    EXPECT_LT(test::rel_l2(test::difference(g.time, time0), r.d_time), kFp32RelTol);
  }
  // The mask changes the result (the test would catch a mask that is ignored).
  EXPECT_GT(test::rel_l2(run_forward(a, masks[0]), attn_reference(a, nullptr).out), 1e-2);
  std::vector<int64_t> too_many(a.B, 1000);
  EXPECT_THROW(run_forward(a, {too_many.data(), 0, 0}), Error);
}

TEST(OpsHstuAttention, BackwardMatchesFiniteDifferences) {
  // Lengths 4, 0, 1, 5 with P = 3 (the position index clamps) and 4 time buckets.
  Attn a = make_attn({4, 0, 1, 5}, 2, 3, 2, 3, 4, true, true, 77);
  auto wts = test::random_weights(a.T * a.H * a.dv, 78);
  std::vector<float> out(a.T * a.H * a.dv);
  auto loss = [&] {
    cpu::hstu_attention_forward(out.data(), a.q(), a.k(), a.v(), a.offsets.data(), a.B, a.shape(),
                                a.bias());
    return test::weighted_sum(out.data(), wts);
  };
  std::vector<float> d_out(wts.begin(), wts.end());
  std::vector<float> pos0(a.P, 0.0f), time0(a.NB, 0.0f);
  Grads g = run_backward(a, d_out, pos0, time0);
  auto fd = test::fd_gradient(a.buf, loss);
  auto fd_cols = [&](int64_t col, int64_t width) {
    std::vector<double> c(a.T * width);
    for (int64_t t = 0; t < a.T; ++t) {
      for (int64_t i = 0; i < width; ++i) c[t * width + i] = fd[t * a.ld + col + i];
    }
    return c;
  };
  EXPECT_LT(
      test::rel_l2(columns(g.buf, a.T, a.ld, a.qoff, a.H * a.dqk), fd_cols(a.qoff, a.H * a.dqk)),
      kFdRelTol);
  EXPECT_LT(
      test::rel_l2(columns(g.buf, a.T, a.ld, a.koff, a.H * a.dqk), fd_cols(a.koff, a.H * a.dqk)),
      kFdRelTol);
  EXPECT_LT(
      test::rel_l2(columns(g.buf, a.T, a.ld, a.voff, a.H * a.dv), fd_cols(a.voff, a.H * a.dv)),
      kFdRelTol);
  EXPECT_LT(test::rel_l2(g.pos, test::fd_gradient(a.pos, loss)), kFdRelTol);
  EXPECT_LT(test::rel_l2(g.time, test::fd_gradient(a.time, loss)), kFdRelTol);
}

// Thread scheduling must not change any bit: the batch is computed on all threads, twice, and
// sequence by sequence (one pair per call, so one chunk on the calling thread). The batch is
// far above the op's threshold for going parallel (sum of L^2 * (dqk + dv + 1) ~ 3e6).
TEST(OpsHstuAttention, BackwardIsDeterministicAcrossThreadsAndBatching) {
  Attn a = make_attn(random_lengths(6, 160, 90), 1, 24, 24, 100, 24, true, true, 91);
  auto d_out = test::random_normal(a.T * a.dv, 92);
  auto pos0 = test::random_normal(a.P, 93), time0 = test::random_normal(a.NB, 94);
  Grads first = run_backward(a, d_out, pos0, time0);
  Grads second = run_backward(a, d_out, pos0, time0);
  auto same_bits = [](const std::vector<float>& x, const std::vector<float>& y) {
    return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
  };
  EXPECT_TRUE(same_bits(first.buf, second.buf));
  EXPECT_TRUE(same_bits(first.pos, second.pos));
  EXPECT_TRUE(same_bits(first.time, second.time));

  Grads single{std::vector<float>(a.T * a.ld), pos0, time0};
  test::poison(single.buf);
  std::vector<float> out_single(a.T * a.dv);
  for (int64_t b = 0; b < a.B; ++b) {
    const int64_t s = a.offsets[b];
    const int64_t offsets[2] = {0, a.lengths[b]};
    cpu::HstuRelativeBias bias = a.bias();
    bias.timestamps += s;
    float* base = single.buf.data() + s * a.ld;
    cpu::hstu_attention_backward(base + a.qoff, base + a.koff, base + a.voff, single.pos.data(),
                                 single.time.data(), d_out.data() + s * a.dv, a.q() + s * a.ld,
                                 a.k() + s * a.ld, a.v() + s * a.ld, offsets, 1, a.shape(), bias);
    cpu::hstu_attention_forward(out_single.data() + s * a.dv, a.q() + s * a.ld, a.k() + s * a.ld,
                                a.v() + s * a.ld, offsets, 1, a.shape(), bias);
  }
  EXPECT_TRUE(same_bits(first.buf, single.buf));
  EXPECT_TRUE(same_bits(first.pos, single.pos));
  EXPECT_TRUE(same_bits(first.time, single.time));
  EXPECT_TRUE(same_bits(run_forward(a), out_single));
}

// dt exactly at, and one below, every bucket boundary, in both directions (t_i < t_j too).
TEST(OpsHstuAttention, TimeBucketsMatchAtBoundaries) {
  const int64_t NB = 60;
  Attn a =
      test::boundary_attn(NB, test::time_bucket_boundaries(NB, int64_t{1} << 40), int64_t{1} << 41);
  EXPECT_LT(test::rel_l2(run_forward(a), attn_reference(a, nullptr).out), kFp32RelTol);
}

TEST(OpsHstuAttention, RejectsBadArguments) {
  Attn a = make_attn({3, 2}, 2, 4, 4, 5, 5, true, true, 300);
  std::vector<float> out(a.T * a.H * a.dv);
  cpu::HstuAttentionShape shape = a.shape();
  shape.ld_q = a.H * a.dqk - 1;
  EXPECT_THROW(cpu::hstu_attention_forward(out.data(), a.q(), a.k(), a.v(), a.offsets.data(), a.B,
                                           shape, a.bias()),
               Error);
  cpu::HstuRelativeBias bias = a.bias();
  bias.timestamps = nullptr;
  EXPECT_THROW(cpu::hstu_attention_forward(out.data(), a.q(), a.k(), a.v(), a.offsets.data(), a.B,
                                           a.shape(), bias),
               Error);
  std::vector<int64_t> bad_offsets = {0, 3, 2};
  EXPECT_THROW(cpu::hstu_attention_forward(out.data(), a.q(), a.k(), a.v(), bad_offsets.data(), 2,
                                           a.shape(), a.bias()),
               Error);
}

}  // namespace
}  // namespace genrec

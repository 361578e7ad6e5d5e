// Fused HSTU attention (tensor cores) against the fp32 CPU op on the same 16-bit-rounded inputs,
// for every mask and bias option, head dims 32/64/128, jagged batches whose sequences cross
// tile boundaries; against the straightforward CUDA kernel where that applies (no mask); and
// the KV-cache forward against the rows of the full forward.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../attention_problem.h"
#include "core/cuda/stream.h"
#include "cuda_test_util.h"
#include "ops/cuda/hstu_attention.h"
#include "ops/cuda/hstu_attention_fused.h"
#include "ops/hstu_attention.h"

namespace genrec {
namespace {

using test::Attn;
using test::columns;
using test::make_attn;
using test::random_lengths;
using bf16 = __nv_bfloat16;

// bf16 outputs against the fp32 CPU op: the inputs are identical, but the fused kernels round
// the scores (P or dZ) to 16 bits before the second product and the output to 16 bits; each
// adds a relative error of ~2^-9 / sqrt(3) per term, averaged over many terms: ~2e-3 in all.
constexpr double kTol = 1e-2;
// The fp32 bias gradients sum dZ computed from the same inputs in another order, with the
// kernels' approximate sigmoid (relative error < 2^-10.9 per element); sums with cancellation
// amplify that, so they get the 16-bit tolerance of the issue, not the fp32 one.
constexpr double kBiasTol = 1e-2;

struct MaskCase {
  std::string name;
  bool targets = false;
  int64_t contexts = 0, window = 0;
  bool pos = false, time = false;
  int64_t max_targets = 6;  // per sequence, with targets
};

std::vector<MaskCase> mask_cases() {
  return {{"causal"},
          {"bias", false, 0, 0, true, true},
          {"targets", true, 0, 0, true, false},
          {"contexts", false, 3, 0, false, true},
          {"window", false, 0, 37, true, false},
          {"all", true, 2, 50, true, true}};
}

// Random target counts in [0, min(L, max_targets)].
std::vector<int64_t> random_targets(const std::vector<int64_t>& lengths, int64_t max_targets,
                                    uint64_t seed) {
  Philox rng(seed);
  std::vector<int64_t> t(lengths.size());
  for (size_t b = 0; b < lengths.size(); ++b) {
    t[b] = static_cast<int64_t>(rng.below(std::min(lengths[b], max_targets) + 1));
  }
  return t;
}

void check_fused_backward(const Attn& a, const bf16* q, const bf16* k, const bf16* v,
                          const test::DeviceArray<int64_t>& offsets,
                          const cpu::HstuRelativeBias& bias, const cpu::HstuMask& mask,
                          const cpu::HstuMask& dev_mask, uint64_t seed);

// Forward (bf16 and fp16), and for bf16 the backward, of problem `a` against the CPU op.
template <typename T>
void check_fused_problem(Attn a, const MaskCase& mc, uint64_t seed) {
  a.buf = test::round_through<T>(std::move(a.buf));
  const std::vector<int64_t> targets = random_targets(a.lengths, mc.max_targets, seed + 9);
  cpu::HstuMask mask{mc.targets ? targets.data() : nullptr, mc.contexts, mc.window};

  // Forward.
  std::vector<float> ref(a.T * a.H * a.dv);
  test::poison(ref);
  cpu::hstu_attention_forward(ref.data(), a.q(), a.k(), a.v(), a.offsets.data(), a.B, a.shape(),
                              a.bias(), mask);
  cuda::Stream stream;
  auto buf = test::upload<T>(a.buf);
  auto offsets = test::upload_raw(a.offsets);
  auto timestamps = test::upload_raw(a.timestamps);
  auto dev_targets = test::upload_raw(targets);
  auto pos = test::upload<float>(a.pos);
  auto time = test::upload<float>(a.time);
  const cpu::HstuRelativeBias bias = a.bias(pos.get(), time.get(), timestamps.get());
  const cpu::HstuMask dev_mask{mc.targets ? dev_targets.get() : nullptr, mc.contexts, mc.window};
  const T *q = buf.get() + a.qoff, *k = buf.get() + a.koff, *v = buf.get() + a.voff;
  ASSERT_TRUE(cuda::hstu_fused_supported(a.shape(), a.B, q, k, v));
  test::DeviceArray<T> out(a.T * a.H * a.dv);
  out.poison();
  cuda::hstu_attention_fused_forward<T>(out.get(), q, k, v, offsets.get(), a.B, a.T, a.shape(),
                                        bias, dev_mask, a.max_len, stream.get());
  stream.synchronize();
  const std::vector<float> got = out.download();
  EXPECT_LT(test::rel_l2(got, ref), kTol) << "out";

  // The straightforward kernel has no mask (and no fp16); the backward is bf16 only.
  if constexpr (std::is_same_v<T, bf16>) {
    if (mc.name == "causal" || mc.name == "bias") {
      test::DeviceArray<T> simple(a.T * a.H * a.dv);
      simple.poison();
      cuda::hstu_attention_forward<T>(simple.get(), q, k, v, offsets.get(), a.B, a.shape(), bias,
                                      a.max_len, stream.get());
      stream.synchronize();
      EXPECT_LT(test::rel_l2(got, simple.download()), kTol) << "fused vs straightforward kernel";
    }
    check_fused_backward(a, q, k, v, offsets, bias, mask, dev_mask, seed);
  }
}

// A random jagged problem; positions: entries of the position-bias table, capped at max_len.
template <typename T>
void check_fused(int64_t B, int64_t max_len, int64_t H, int64_t D, const MaskCase& mc,
                 uint64_t seed, int64_t positions = 90) {
  SCOPED_TRACE(mc.name + " B=" + std::to_string(B) + " max_len=" + std::to_string(max_len) +
               " H=" + std::to_string(H) + " D=" + std::to_string(D));
  check_fused_problem<T>(make_attn(random_lengths(B, max_len, seed, true), H, D, D,
                                   std::min(max_len, positions), 24, mc.pos, mc.time, seed, 8),
                         mc, seed);
}

// check_fused_problem for `a` with each of max_lens as the bound the calls get on the sequences'
// length (the inputs, and the 1 / N they were made with, stay those of `a`).
void check_fused_bounded(const Attn& a, const MaskCase& mc, uint64_t seed,
                         std::initializer_list<int64_t> max_lens) {
  for (int64_t max_len : max_lens) {
    SCOPED_TRACE("max_len " + std::to_string(max_len));
    Attn bounded = a;
    bounded.max_len = max_len;
    check_fused_problem<bf16>(std::move(bounded), mc, seed);
  }
}

// Backward, from the same d_out and bias-gradient starting values.
void check_fused_backward(const Attn& a, const bf16* q, const bf16* k, const bf16* v,
                          const test::DeviceArray<int64_t>& offsets,
                          const cpu::HstuRelativeBias& bias, const cpu::HstuMask& mask,
                          const cpu::HstuMask& dev_mask, uint64_t seed) {
  using T = bf16;
  const int64_t D = a.dqk;
  cuda::Stream stream;
  const std::vector<float> d_out =
      test::round_through<T>(test::random_normal(a.T * a.H * a.dv, seed + 5));
  const std::vector<float> pos0 = test::random_normal(a.P, seed + 6);
  const std::vector<float> time0 = test::random_normal(a.NB, seed + 7);
  std::vector<float> ref_grads(a.T * a.ld);
  test::poison(ref_grads);
  std::vector<float> ref_pos = pos0, ref_time = time0;
  cpu::hstu_attention_backward(ref_grads.data() + a.qoff, ref_grads.data() + a.koff,
                               ref_grads.data() + a.voff, ref_pos.data(), ref_time.data(),
                               d_out.data(), a.q(), a.k(), a.v(), a.offsets.data(), a.B, a.shape(),
                               a.bias(), mask);
  auto dev_d_out = test::upload<T>(d_out);
  auto dev_pos = test::upload<float>(pos0);
  auto dev_time = test::upload<float>(time0);
  test::DeviceArray<T> grads(a.T * a.ld);
  grads.poison();
  T* g = grads.get();
  cuda::hstu_attention_fused_backward<T>(
      g + a.qoff, g + a.koff, g + a.voff, dev_pos.get(), dev_time.get(), dev_d_out.get(), q, k, v,
      offsets.get(), a.B, a.T, a.shape(), bias, dev_mask, a.max_len, stream.get());
  stream.synchronize();
  const std::vector<float> got_grads = grads.download();
  const char* names[3] = {"d_q", "d_k", "d_v"};
  const int64_t cols[3] = {a.qoff, a.koff, a.voff};
  for (int x = 0; x < 3; ++x) {
    EXPECT_LT(test::rel_l2(columns(got_grads, a.T, a.ld, cols[x], a.H * D),
                           columns(ref_grads, a.T, a.ld, cols[x], a.H * D)),
              kTol)
        << names[x];
  }
  for (int64_t t = 0; t < a.T; ++t) {  // the u columns and the padding stay untouched
    for (int64_t col = 0; col < a.ld; ++col) {
      if (col < a.voff || col >= a.ld - a.pad) {
        ASSERT_TRUE(std::isnan(got_grads[t * a.ld + col]))
            << "written: row " << t << " col " << col;
      }
    }
  }
  if (a.use_pos) {
    EXPECT_LT(
        test::rel_l2(test::difference(dev_pos.download(), pos0), test::difference(ref_pos, pos0)),
        kBiasTol)
        << "d_position_bias";
  }
  if (a.use_time) {
    EXPECT_LT(test::rel_l2(test::difference(dev_time.download(), time0),
                           test::difference(ref_time, time0)),
              kBiasTol)
        << "d_time_bias";
  }
}

TEST(CudaFusedAttention, MatchesCpuForEveryMaskAndBias) {
  GENREC_REQUIRE_CUDA();
  uint64_t seed = 100;
  for (const MaskCase& mc : mask_cases()) {
    for (int64_t D : {32, 64, 128}) check_fused<bf16>(7, 150, 2, D, mc, seed += 10);
  }
}

TEST(CudaFusedAttention, BatchSizesAndLongSequences) {
  GENREC_REQUIRE_CUDA();
  const MaskCase bias{"bias", false, 0, 0, true, true};
  for (int64_t B : test::batch_sizes()) check_fused<bf16>(B, 70, 1, 64, bias, 300 + B);
  check_fused<bf16>(3, 700, 2, 128, bias, 400);
  check_fused<bf16>(3, 700, 2, 128, mask_cases().back(), 401);
  // Hundreds of targets (MTGR-style candidates): whole tiles of target rows and columns, whose
  // position differences are not i - j.
  const MaskCase candidates{"many targets", true, 0, 0, true, true, 400};
  for (int64_t D : {64, 128}) check_fused<bf16>(3, 700, 2, D, candidates, 403 + D);
  // More position slots than the key kernel sums in shared memory (the rest go to global sums).
  check_fused<bf16>(2, 1300, 1, 64, bias, 402, 1300);
}

// The kernels without bias (the benchmarked path) under every mask, and sequences of many
// query tiles, each adding into the dQ of rows that later key tiles add to as well.
TEST(CudaFusedAttention, EveryMaskWithoutBias) {
  GENREC_REQUIRE_CUDA();
  uint64_t seed = 700;
  for (MaskCase mc : mask_cases()) {
    mc.name += " without bias";
    mc.pos = mc.time = false;
    for (int64_t D : {32, 64, 128}) check_fused<bf16>(7, 150, 2, D, mc, seed += 10);
  }
  const MaskCase causal = mask_cases().front();
  check_fused<bf16>(3, 700, 2, 128, causal, 800);
  MaskCase all = mask_cases().back();
  all.pos = all.time = false;
  check_fused<bf16>(3, 700, 2, 64, all, 801);
}

// A NaN in one sequence stays in it. On Hopper the boxes of a sequence's last tiles bring rows of
// the next sequence, which the kernels zero; were they only masked out of the scores, a NaN
// there times a zero score would still reach this sequence's outputs and gradients.
TEST(CudaFusedAttention, NonFiniteValuesStayInTheirSequence) {
  GENREC_REQUIRE_CUDA();
  using T = bf16;
  for (int64_t D : {64, 128}) {
    for (bool bias : {false, true}) {
      SCOPED_TRACE("D " + std::to_string(D) + (bias ? ", bias" : ""));
      // Every sequence ends inside a tile; the last one holds the NaNs.
      Attn a = make_attn({70, 200, 135, 90}, 2, D, D, 90, 24, bias, bias, 900 + D, 8);
      a.buf = test::round_through<T>(std::move(a.buf));
      const int64_t clean = a.offsets[a.B - 1];  // the rows before the last sequence
      const int64_t width = a.H * D;
      const cpu::HstuMask mask{nullptr, 0, 0};
      const std::vector<float> d_out =
          test::round_through<T>(test::random_normal(a.T * width, 901 + D));
      std::vector<float> ref_out(a.T * width), ref_grads(a.T * a.ld);
      std::vector<float> ref_pos(a.P), ref_time(a.NB);
      cpu::hstu_attention_forward(ref_out.data(), a.q(), a.k(), a.v(), a.offsets.data(), a.B,
                                  a.shape(), a.bias(), mask);
      cpu::hstu_attention_backward(ref_grads.data() + a.qoff, ref_grads.data() + a.koff,
                                   ref_grads.data() + a.voff, ref_pos.data(), ref_time.data(),
                                   d_out.data(), a.q(), a.k(), a.v(), a.offsets.data(), a.B,
                                   a.shape(), a.bias(), mask);
      std::vector<float> dirty = a.buf, dirty_d_out = d_out;
      std::fill(dirty.begin() + clean * a.ld, dirty.end(), std::nanf(""));
      std::fill(dirty_d_out.begin() + clean * width, dirty_d_out.end(), std::nanf(""));

      cuda::Stream stream;
      auto buf = test::upload<T>(dirty);
      auto dev_d_out = test::upload<T>(dirty_d_out);
      auto offsets = test::upload_raw(a.offsets);
      auto timestamps = test::upload_raw(a.timestamps);
      auto pos = test::upload<float>(a.pos);
      auto time = test::upload<float>(a.time);
      const cpu::HstuRelativeBias dev_bias = a.bias(pos.get(), time.get(), timestamps.get());
      const T *q = buf.get() + a.qoff, *k = buf.get() + a.koff, *v = buf.get() + a.voff;
      test::DeviceArray<T> out(a.T * width), grads(a.T * a.ld);
      out.poison();
      grads.poison();
      T* g = grads.get();
      cuda::hstu_attention_fused_forward<T>(out.get(), q, k, v, offsets.get(), a.B, a.T, a.shape(),
                                            dev_bias, mask, a.max_len, stream.get());
      cuda::hstu_attention_fused_backward<T>(g + a.qoff, g + a.koff, g + a.voff, nullptr, nullptr,
                                             dev_d_out.get(), q, k, v, offsets.get(), a.B, a.T,
                                             a.shape(), dev_bias, mask, a.max_len, stream.get());
      stream.synchronize();
      auto leading = [&](std::vector<float> rows) {
        rows.resize(clean * width);
        return rows;
      };
      EXPECT_LT(test::rel_l2(leading(out.download()), leading(ref_out)), kTol) << "out";
      const std::vector<float> got_grads = grads.download();
      const char* names[3] = {"d_q", "d_k", "d_v"};
      const int64_t cols[3] = {a.qoff, a.koff, a.voff};
      for (int x = 0; x < 3; ++x) {
        EXPECT_LT(test::rel_l2(leading(columns(got_grads, a.T, a.ld, cols[x], width)),
                               leading(columns(ref_grads, a.T, a.ld, cols[x], width))),
                  kTol)
            << names[x];
      }
    }
  }
}

// A max_len below the longest sequence: the grid has too few blocks for it, and they loop over
// its remaining tiles (the forward over query tiles, the backward over key tiles).
TEST(CudaFusedAttention, SequencesLongerThanMaxLen) {
  GENREC_REQUIRE_CUDA();
  MaskCase causal = mask_cases().front(), all = mask_cases().back();
  causal.name += ", short grid";
  all.name += ", short grid";
  uint64_t seed = 810;
  for (const MaskCase& mc : {causal, all}) {
    const Attn a = make_attn(random_lengths(4, 300, seed, true), 2, 64, 64, 90, 24, mc.pos, mc.time,
                             seed + 1, 8);
    check_fused_bounded(a, mc, seed += 10, {100});
  }
}

// A time bias over a batch whose slot matrix (sized by max_len, the square of it per sequence)
// exceeds its budget: the batch runs in chunks of sequences, each with its own offsets and
// target counts (max_len 8192: 64 MB of slots per sequence, 4 sequences per chunk); past the
// budget for one sequence (max_len 20000) the kernels compute every slot.
TEST(CudaFusedAttention, TimeSlotsInChunksOfSequences) {
  GENREC_REQUIRE_CUDA();
  MaskCase all = mask_cases().back();
  all.name += ", chunks";
  const Attn a =
      make_attn(random_lengths(9, 200, 830, true), 2, 64, 64, 90, 24, true, true, 831, 8);
  check_fused_bounded(a, all, 832, {8192, 20000});
}

// Pairs of tokens whose dt sits exactly at, and one below, every time-bucket boundary up to
// 2^50, both signs, one pair per sequence at tokens 64 and 65 after 64 tokens at the first one's
// time; a window of 1 has each row see itself and its predecessor only. Small q and k and a wide
// time table make the bias dominate, so one wrong bucket moves its row's output by tens of
// percent. The slots come from the slot matrix (max_len 66) and from the attention kernels,
// which compute those of tiles past the matrix (max_len 64: the pair's tiles).
TEST(CudaFusedAttention, TimeBucketsMatchCpuAtBoundaries) {
  GENREC_REQUIRE_CUDA();
  const int64_t NB = 110, L = 66;
  std::vector<int64_t> dts;
  for (int64_t lo : test::time_bucket_boundaries(NB, int64_t{1} << 50)) {
    for (int64_t dt : {lo, lo - 1}) {
      dts.push_back(dt);
      dts.push_back(-dt);
    }
  }
  const MaskCase time_only{"time", false, 0, 1, false, true};
  Attn a = make_attn(std::vector<int64_t>(dts.size(), L), 1, 32, 32, 2, NB, false, true, 500, 8);
  for (float& x : a.buf) x *= 0.1f;
  a.time = test::random_normal(NB, 501, 2.0f);
  const int64_t t0 = int64_t{1} << 52;
  for (size_t b = 0; b < dts.size(); ++b) {
    std::fill_n(a.timestamps.begin() + b * L, L, t0);
    a.timestamps[b * L + L - 1] = t0 + dts[b];
  }
  check_fused_bounded(a, time_only, 502, {L, 64});
}

TEST(CudaFusedAttention, HalfPrecision) {
  GENREC_REQUIRE_CUDA();
  check_fused<__half>(9, 130, 2, 64, mask_cases().back(), 500);
  check_fused<__half>(5, 200, 2, 128, mask_cases().front(), 501);
}

// New tokens against a cached history: the outputs equal the last rows of the full forward.
// With the true max_len the history is split over blocks whose fp32 parts add up (some shares
// empty); max_len 0 keeps one block per query tile, which writes O directly.
template <typename T>
void check_cached(bool candidates, uint64_t seed, bool split_keys = true) {
  SCOPED_TRACE(candidates ? "candidates" : "continuation");
  SCOPED_TRACE(split_keys ? "keys split over blocks" : "one block per query tile");
  const int64_t H = 2, D = 64, B = 6;
  std::vector<int64_t> lengths = random_lengths(B, 300, seed, true);
  for (auto& l : lengths) l = std::max<int64_t>(l, 1);
  Attn a = make_attn(lengths, H, D, D, 64, 24, true, true, seed, 8);
  a.buf = test::round_through<T>(std::move(a.buf));
  Philox rng(seed + 1);
  std::vector<int64_t> fresh(B), q_offsets(B + 1, 0);
  for (int64_t b = 0; b < B; ++b) {
    fresh[b] = 1 + static_cast<int64_t>(rng.below(std::min<int64_t>(a.lengths[b], 90)));
    q_offsets[b + 1] = q_offsets[b] + fresh[b];
  }
  const int64_t Tq = q_offsets[B];
  cpu::HstuMask mask{candidates ? fresh.data() : nullptr, 0, 0};
  std::vector<float> full(a.T * H * D);
  cpu::hstu_attention_forward(full.data(), a.q(), a.k(), a.v(), a.offsets.data(), B, a.shape(),
                              a.bias(), mask);
  std::vector<float> q_new(Tq * H * D), ref(Tq * H * D);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t r = 0; r < fresh[b]; ++r) {
      const int64_t t = a.offsets[b + 1] - fresh[b] + r;
      std::copy_n(a.q() + t * a.ld, H * D, q_new.data() + (q_offsets[b] + r) * H * D);
      std::copy_n(full.data() + t * H * D, H * D, ref.data() + (q_offsets[b] + r) * H * D);
    }
  }
  cuda::Stream stream;
  auto buf = test::upload<T>(a.buf);
  auto dev_q = test::upload<T>(q_new);
  auto kv_offsets = test::upload_raw(a.offsets);
  auto dev_q_offsets = test::upload_raw(q_offsets);
  auto timestamps = test::upload_raw(a.timestamps);
  auto dev_fresh = test::upload_raw(fresh);
  auto pos = test::upload<float>(a.pos);
  auto time = test::upload<float>(a.time);
  cpu::HstuAttentionShape shape = a.shape();
  shape.ld_q = H * D;
  const cpu::HstuMask dev_mask{candidates ? dev_fresh.get() : nullptr, 0, 0};
  test::DeviceArray<T> out(Tq * H * D);
  out.poison();
  cuda::hstu_attention_cached_forward<T>(
      out.get(), dev_q.get(), dev_q_offsets.get(), buf.get() + a.koff, buf.get() + a.voff,
      kv_offsets.get(), B, Tq, a.T, shape, a.bias(pos.get(), time.get(), timestamps.get()),
      dev_mask, 90, split_keys ? *std::max_element(lengths.begin(), lengths.end()) : 0,
      stream.get());
  stream.synchronize();
  EXPECT_LT(test::rel_l2(out.download(), ref), kTol);
}

TEST(CudaFusedAttention, CachedForwardEqualsTheFullForward) {
  GENREC_REQUIRE_CUDA();
  check_cached<bf16>(true, 600);
  check_cached<bf16>(false, 610);
  check_cached<__half>(true, 620);
  check_cached<bf16>(true, 630, false);
}

TEST(CudaFusedAttention, SupportedShapes) {
  cpu::HstuAttentionShape s;
  s.num_heads = 4;
  s.dim_qk = s.dim_v = 64;
  s.ld_q = s.ld_k = s.ld_v = 4 * 64 * 4;
  EXPECT_TRUE(cuda::hstu_fused_supported(s, 10));
  s.dim_v = 32;
  EXPECT_FALSE(cuda::hstu_fused_supported(s, 10));  // dim_qk != dim_v
  s.dim_v = 64;
  s.ld_k += 3;
  EXPECT_FALSE(cuda::hstu_fused_supported(s, 10));  // rows not 16-byte aligned
}

}  // namespace
}  // namespace genrec

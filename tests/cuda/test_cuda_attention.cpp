// CUDA HSTU attention against the CPU op on the same random jagged batches (strided q/k/v
// slices of one buffer, lengths 0..max with a length-1 and an empty sequence), for fp32 and
// for bf16 (the CPU op then runs on the bf16-rounded inputs).
#include <gtest/gtest.h>

#include <cmath>
#include <utility>
#include <vector>

#include "../attention_problem.h"
#include "core/cuda/stream.h"
#include "cuda_test_util.h"
#include "ops/cuda/hstu_attention.h"
#include "ops/hstu_attention.h"

namespace genrec {
namespace {

using test::Attn;
using test::AttnConfig;
using test::columns;
using test::kCudaF32RelTol;
using test::make_attn;
using test::random_lengths;

// Tolerances: test::rel_tol<T>() of cuda_test_util.h. fp32: both ops accumulate in fp32 over at
// most a few hundred terms per output (keys, head dims), in different orders: relative L2
// differences of 1e-7 to 3e-7 (measured on a CPU emulation of the kernels). The bias gradients
// sum up to ~1e5 terms per entry (in fp32 within a block, at most 64 x 128 pairs, then fp64 on
// the GPU; per (sequence, head) in fp64, then fp32 on the CPU): up to 1.7e-6 measured. 1e-5
// still flags a single wrong element of typical size (~1/sqrt(#elements) >> 1e-5).
// bf16: the inputs are identical on both sides, but every output element is rounded to bf16
// (7 stored mantissa bits): a relative L2 error of ~2^-7 / sqrt(12) / 1.44 ~ 1.6e-3 on its own
// (1.7e-3 measured); 1e-2 leaves a factor of ~6. The fp32 bias gradients of the bf16 op are
// not rounded and keep kCudaF32RelTol.

// The problem's arrays on the device, q/k/v buffer as T.
template <typename T>
struct DeviceAttn {
  test::DeviceArray<T> buf;
  test::DeviceArray<int64_t> offsets, timestamps;
  test::DeviceArray<float> pos, time;
  explicit DeviceAttn(const Attn& a)
      : buf(test::upload<T>(a.buf)),
        offsets(test::upload_raw(a.offsets)),
        timestamps(test::upload_raw(a.timestamps)),
        pos(test::upload<float>(a.pos)),
        time(test::upload<float>(a.time)) {}
  const T* q(const Attn& a) const { return buf.get() + a.qoff; }
  const T* k(const Attn& a) const { return buf.get() + a.koff; }
  const T* v(const Attn& a) const { return buf.get() + a.voff; }
  cpu::HstuRelativeBias bias(const Attn& a) const {
    return a.bias(pos.get(), time.get(), timestamps.get());
  }
};

// Forward on the CPU and the GPU (max_len_hint < 0: the true maximum); relative L2 of out.
template <typename T>
double forward_error(Attn& a, int64_t max_len_hint = -1) {
  a.buf = test::round_through<T>(std::move(a.buf));
  std::vector<float> ref(a.T * a.H * a.dv);
  test::poison(ref);
  cpu::hstu_attention_forward(ref.data(), a.q(), a.k(), a.v(), a.offsets.data(), a.B, a.shape(),
                              a.bias());
  cuda::Stream stream;
  DeviceAttn<T> d(a);
  test::DeviceArray<T> out(a.T * a.H * a.dv);
  out.poison();
  cuda::hstu_attention_forward<T>(out.get(), d.q(a), d.k(a), d.v(a), d.offsets.get(), a.B,
                                  a.shape(), d.bias(a), max_len_hint < 0 ? a.max_len : max_len_hint,
                                  stream.get());
  stream.synchronize();
  return test::rel_l2(out.download(), ref);
}

// Backward on the CPU and the GPU from the same d_out and bias-gradient starting values;
// checks every gradient and that nothing outside the q, k, v slices is written.
template <typename T>
void check_backward(Attn& a, uint64_t seed) {
  a.buf = test::round_through<T>(std::move(a.buf));
  const std::vector<float> d_out =
      test::round_through<T>(test::random_normal(a.T * a.H * a.dv, seed));
  const std::vector<float> pos0 = test::random_normal(a.P, seed + 1);
  const std::vector<float> time0 = test::random_normal(a.NB, seed + 2);

  std::vector<float> ref(a.T * a.ld);
  test::poison(ref);
  std::vector<float> ref_pos = pos0, ref_time = time0;
  cpu::hstu_attention_backward(ref.data() + a.qoff, ref.data() + a.koff, ref.data() + a.voff,
                               ref_pos.data(), ref_time.data(), d_out.data(), a.q(), a.k(), a.v(),
                               a.offsets.data(), a.B, a.shape(), a.bias());

  cuda::Stream stream;
  DeviceAttn<T> d(a);
  auto dev_d_out = test::upload<T>(d_out);
  test::DeviceArray<T> grads(a.T * a.ld);
  grads.poison();
  auto dev_pos = test::upload<float>(pos0);
  auto dev_time = test::upload<float>(time0);
  T* g = grads.get();
  cuda::hstu_attention_backward<T>(
      g + a.qoff, g + a.koff, g + a.voff, dev_pos.get(), dev_time.get(), dev_d_out.get(), d.q(a),
      d.k(a), d.v(a), d.offsets.get(), a.B, a.shape(), d.bias(a), a.max_len, stream.get());
  stream.synchronize();
  const std::vector<float> got = grads.download();
  const std::vector<float> got_pos = dev_pos.download(), got_time = dev_time.download();

  const double tol = test::rel_tol<T>();
  EXPECT_LT(test::rel_l2(columns(got, a.T, a.ld, a.qoff, a.H * a.dqk),
                         columns(ref, a.T, a.ld, a.qoff, a.H * a.dqk)),
            tol)
      << "d_q";
  EXPECT_LT(test::rel_l2(columns(got, a.T, a.ld, a.koff, a.H * a.dqk),
                         columns(ref, a.T, a.ld, a.koff, a.H * a.dqk)),
            tol)
      << "d_k";
  EXPECT_LT(test::rel_l2(columns(got, a.T, a.ld, a.voff, a.H * a.dv),
                         columns(ref, a.T, a.ld, a.voff, a.H * a.dv)),
            tol)
      << "d_v";
  for (int64_t t = 0; t < a.T; ++t) {
    for (int64_t col = 0; col < a.ld; ++col) {
      if (col < a.voff || col >= a.ld - a.pad) {
        ASSERT_TRUE(std::isnan(got[t * a.ld + col])) << "written: row " << t << " col " << col;
      }
    }
  }
  if (a.use_pos) {
    EXPECT_LT(test::rel_l2(test::difference(got_pos, pos0), test::difference(ref_pos, pos0)),
              kCudaF32RelTol)
        << "d_position_bias";
  } else {
    EXPECT_EQ(got_pos, pos0) << "d_position_bias changed without a position bias";
  }
  if (a.use_time) {
    EXPECT_LT(test::rel_l2(test::difference(got_time, time0), test::difference(ref_time, time0)),
              kCudaF32RelTol)
        << "d_time_bias";
  } else {
    EXPECT_EQ(got_time, time0) << "d_time_bias changed without a time bias";
  }
}

// Batch sizes 1..256 with lengths up to 128 (two 64-query tiles); position tables shorter
// than, and as long as, the longest sequence; the last config has head dims above 128, so
// every kernel takes several column passes.
const AttnConfig kConfigs[] = {
    {1, 128, 2, 32, 48, 100, 30},  {7, 100, 3, 24, 40, 50, 20},  {64, 128, 2, 64, 32, 128, 40},
    {256, 128, 2, 16, 24, 40, 64}, {5, 90, 2, 160, 136, 30, 16},
};

// Every config with each bias variant (none, position, time, both): check(problem, seed) on a
// problem made from seed, which steps by 100 from first_seed.
template <typename F>
void for_each_problem(uint64_t first_seed, F&& check) {
  uint64_t seed = first_seed;
  for (const AttnConfig& c : kConfigs) {
    for (int variant = 0; variant < 4; ++variant) {
      const bool use_pos = variant & 1, use_time = variant & 2;
      SCOPED_TRACE(testing::Message() << "B=" << c.B << " H=" << c.H << " dqk=" << c.dqk << " dv="
                                      << c.dv << " pos=" << use_pos << " time=" << use_time);
      Attn a = make_attn(random_lengths(c.B, c.max_len, seed, /*first_at_max=*/true), c.H, c.dqk,
                         c.dv, c.P, c.NB, use_pos, use_time, seed + 10);
      check(a, seed);
      seed += 100;
    }
  }
}

template <typename T>
void run_forward_configs() {
  for_each_problem(1,
                   [](Attn& a, uint64_t) { EXPECT_LT(forward_error<T>(a), test::rel_tol<T>()); });
}

template <typename T>
void run_backward_configs() {
  for_each_problem(5000, [](Attn& a, uint64_t seed) { check_backward<T>(a, seed + 20); });
}

TEST(CudaHstuAttention, ForwardMatchesCpuFp32) {
  GENREC_REQUIRE_CUDA();
  run_forward_configs<float>();
}

TEST(CudaHstuAttention, ForwardMatchesCpuBf16) {
  GENREC_REQUIRE_CUDA();
  run_forward_configs<__nv_bfloat16>();
}

TEST(CudaHstuAttention, BackwardMatchesCpuFp32) {
  GENREC_REQUIRE_CUDA();
  run_backward_configs<float>();
}

TEST(CudaHstuAttention, BackwardMatchesCpuBf16) {
  GENREC_REQUIRE_CUDA();
  run_backward_configs<__nv_bfloat16>();
}

// max_len only sizes the grid: a hint below the true maximum (one block per sequence then
// loops over its tiles) must give the same results.
TEST(CudaHstuAttention, MaxLenHintBelowTheMaximumIsStillCorrect) {
  GENREC_REQUIRE_CUDA();
  for (int64_t hint : {0, 1, 64}) {
    SCOPED_TRACE(testing::Message() << "max_len hint " << hint);
    Attn a = make_attn(random_lengths(9, 200, 70, /*first_at_max=*/true), 2, 32, 16, 150, 30, true,
                       true, 71);
    EXPECT_LT(forward_error<float>(a, hint), kCudaF32RelTol);
  }
}

// dt exactly at, and one below, every bucket boundary up to ~1e13 s, in both directions: the
// device bucket must be the CPU's (a wrong bucket moves a score by ~|time[b] - time[b-1]|).
TEST(CudaHstuAttention, TimeBucketsMatchCpuAtBoundaries) {
  GENREC_REQUIRE_CUDA();
  const int64_t NB = 100;
  const std::vector<int64_t> boundaries = test::time_bucket_boundaries(NB, int64_t{1} << 50);
  for (int64_t lo : boundaries) {
    // The host side of the shared function.
    ASSERT_EQ(cuda::hstu_time_bucket(lo, 1000), cpu::hstu_time_bucket(lo, 1000));
    ASSERT_EQ(cuda::hstu_time_bucket(-(lo - 1), 1000), cpu::hstu_time_bucket(-(lo - 1), 1000));
  }
  Attn a = test::boundary_attn(NB, boundaries, int64_t{1} << 46);
  EXPECT_LT(forward_error<float>(a), kCudaF32RelTol);
  check_backward<float>(a, 202);
}

TEST(CudaHstuAttention, RejectsBadArguments) {
  GENREC_REQUIRE_CUDA();
  Attn a = make_attn({3, 2}, 2, 4, 4, 5, 5, true, true, 300);
  DeviceAttn<float> d(a);
  test::DeviceArray<float> out(a.T * a.H * a.dv);
  cpu::HstuAttentionShape shape = a.shape();
  shape.ld_q = a.H * a.dqk - 1;
  EXPECT_THROW(
      cuda::hstu_attention_forward<float>(out.get(), d.q(a), d.k(a), d.v(a), d.offsets.get(), a.B,
                                          shape, d.bias(a), a.max_len, nullptr),
      Error);
  cpu::HstuRelativeBias bias = d.bias(a);
  bias.timestamps = nullptr;
  EXPECT_THROW(
      cuda::hstu_attention_forward<float>(out.get(), d.q(a), d.k(a), d.v(a), d.offsets.get(), a.B,
                                          a.shape(), bias, a.max_len, nullptr),
      Error);
}

}  // namespace
}  // namespace genrec

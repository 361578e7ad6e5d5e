// Top-k by exact radix select, one block per row: each score becomes a 32-bit key whose
// unsigned order is the CPU op's order (NaN lowest, -0 == +0); four 8-bit histogram passes find
// the k-th key, one pass in index order gathers the keys above it and the lowest-index ties
// equal to it, and a bitonic sort of those k (score key, ~index) pairs gives the final order.
#include "ops/cuda/kernel_util.cuh"  // first: it configures fmt for nvcc

#include <limits>

#include "core/error.h"
#include "ops/cuda/topk.h"

namespace genrec::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kBins = 256;

// Larger key = ranks first. NaN -> 0, below every number (whose keys are >= 0x007FFFFF).
__device__ __forceinline__ uint32_t order_key(float v) {
  if (isnan(v)) return 0u;
  const uint32_t bits = __float_as_uint(v == 0.0f ? 0.0f : v);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Distinct for distinct indices (n < 2^32) and > 0, so 0 can pad the sort.
__device__ __forceinline__ unsigned long long full_key(uint32_t key, int64_t index) {
  return (static_cast<unsigned long long>(key) << 32) |
         static_cast<uint32_t>(~static_cast<uint32_t>(index));
}

__global__ void __launch_bounds__(kThreads)
    topk_kernel(int64_t* __restrict__ indices, float* __restrict__ values,
                const float* __restrict__ scores, int64_t n, int k, int sort_size) {
  __shared__ unsigned int hist[kBins];
  __shared__ unsigned long long cand[kMaxTopk];
  __shared__ unsigned int warp_counts[kWarps];
  __shared__ unsigned int s_digit, s_rank, s_num_greater;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t row = blockIdx.x;
  const float* s = scores + row * n;

  // Radix select: after the pass at `shift`, `prefix` holds the top bits of the k-th largest
  // key and `rank` its rank among the keys that share them.
  uint32_t prefix = 0, mask = 0, rank = static_cast<uint32_t>(k);
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = tid; b < kBins; b += kThreads) hist[b] = 0;
    __syncthreads();
    for (int64_t i = tid; i < n; i += kThreads) {
      const uint32_t key = order_key(s[i]);
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 0xFFu], 1u);
    }
    __syncthreads();
    if (tid == 0) {
      uint32_t above = 0;
      int d = kBins - 1;
      for (; d > 0; --d) {
        if (above + hist[d] >= rank) break;
        above += hist[d];
      }
      s_digit = static_cast<unsigned>(d);
      s_rank = rank - above;
    }
    __syncthreads();
    prefix |= s_digit << shift;
    mask |= 0xFFu << shift;
    rank = s_rank;
  }
  // prefix is now the k-th largest key: take every greater key and the first `rank` equal ones.
  const uint32_t threshold = prefix, num_equal = rank;
  const uint32_t num_greater = static_cast<uint32_t>(k) - num_equal;
  if (tid == 0) s_num_greater = 0;
  __syncthreads();
  uint32_t equal_before = 0;  // equal keys in earlier chunks (the same in every thread)
  for (int64_t base = 0; base < n; base += kThreads) {
    const int64_t i = base + tid;
    const uint32_t key = i < n ? order_key(s[i]) : 0u;
    const bool greater = i < n && key > threshold;
    const bool equal = i < n && key == threshold;
    if (greater) cand[atomicAdd(&s_num_greater, 1u)] = full_key(key, i);
    const unsigned ballot = __ballot_sync(0xffffffffu, equal);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    uint32_t before = equal_before + __popc(ballot & ((1u << lane) - 1u));
    uint32_t chunk = 0;
    for (int w = 0; w < kWarps; ++w) {
      if (w < warp) before += warp_counts[w];
      chunk += warp_counts[w];
    }
    if (equal && before < num_equal) cand[num_greater + before] = full_key(key, i);
    equal_before += chunk;
    __syncthreads();  // warp_counts is rewritten by the next chunk
  }
  for (int i = k + tid; i < sort_size; i += kThreads) cand[i] = 0ull;
  __syncthreads();
  // Bitonic sort, descending.
  for (int size = 2; size <= sort_size; size <<= 1) {
    for (int stride = size / 2; stride > 0; stride >>= 1) {
      for (int t = tid; t < sort_size / 2; t += kThreads) {
        const int a = 2 * t - (t & (stride - 1)), b = a + stride;
        const unsigned long long x = cand[a], y = cand[b];
        if ((a & size) == 0 ? x < y : x > y) {
          cand[a] = y;
          cand[b] = x;
        }
      }
      __syncthreads();
    }
  }
  for (int i = tid; i < k; i += kThreads) {
    const uint32_t index = ~static_cast<uint32_t>(cand[i]);
    indices[row * k + i] = index;
    values[row * k + i] = s[index];
  }
}

__global__ void __launch_bounds__(kThreads)
    rank_kernel(int64_t* __restrict__ ranks, const float* __restrict__ scores,
                const int64_t* __restrict__ target, int64_t n) {
  __shared__ unsigned long long warp_sums[kWarps];
  const int64_t row = blockIdx.x;
  const int64_t t = target[row];
  if (t < 0 || t >= n) {
    if (threadIdx.x == 0) ranks[row] = -1;
    return;
  }
  const float* s = scores + row * n;
  const float v = s[t];
  unsigned long long count = 0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) count += s[i] > v ? 1 : 0;
  count = detail::warp_sum(count);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = count;
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned long long total = 0;
    for (int w = 0; w < kWarps; ++w) total += warp_sums[w];
    ranks[row] = static_cast<int64_t>(total);
  }
}

}  // namespace

void topk(int64_t* indices, float* values, const float* scores, int64_t R, int64_t n, int64_t k,
          cudaStream_t stream) {
  GENREC_CHECK(k > 0 && k <= n, "cuda topk: k = {} must be in [1, n = {}]", k, n);
  GENREC_CHECK(k <= kMaxTopk, "cuda topk: k = {} above the supported {}", k, kMaxTopk);
  GENREC_CHECK(n < (int64_t{1} << 32), "cuda topk: rows of {} scores are too long", n);
  GENREC_CHECK(R >= 0 && R <= std::numeric_limits<int32_t>::max(), "cuda topk: bad row count {}",
               R);
  if (R == 0) return;
  int sort_size = 1;
  while (sort_size < k) sort_size *= 2;
  topk_kernel<<<static_cast<unsigned>(R), kThreads, 0, stream>>>(indices, values, scores, n,
                                                                 static_cast<int>(k), sort_size);
  GENREC_CUDA_LAUNCH_CHECK("topk");
}

void rank_of_target(int64_t* ranks, const float* scores, const int64_t* target, int64_t R,
                    int64_t n, cudaStream_t stream) {
  GENREC_CHECK(R >= 0 && R <= std::numeric_limits<int32_t>::max() && n >= 0,
               "cuda rank_of_target: bad sizes R={} n={}", R, n);
  if (R == 0) return;
  rank_kernel<<<static_cast<unsigned>(R), kThreads, 0, stream>>>(ranks, scores, target, n);
  GENREC_CUDA_LAUNCH_CHECK("rank_of_target");
}

}  // namespace genrec::cuda

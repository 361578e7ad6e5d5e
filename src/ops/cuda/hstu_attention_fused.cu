// Fused HSTU attention on the tensor cores, 16-bit inputs, fp32 accumulators: Hopper's wgmma
// (wgmma.cuh) when compiled for sm_90a and D >= 64, else mma.sync m16n8k16 (sm_80+). A warpgroup
// of 4 warps owns 64 rows of one (sequence, head), 16 per warp; a block of one warpgroup (two in
// the backward at D = 128 on Hopper, on 128 keys) streams 64-row tiles of the other side through
// double-buffered shared memory (by TMA on sm_90a, one thread issuing the copies; cp.async
// elsewhere):
//   query kernel, forward (rows = queries): S = Q Kᵀ, O += silu(z) V
//   key kernel, backward (rows = keys):     Sᵀ = K Qᵀ, dPᵀ = V dOᵀ, dV += Pᵀ dO, dK += dZᵀ Q,
//                                           dQ += dZ K
// with z = alpha s + biases, P = silu(z) / N and dZ = dP silu'(z) / N: five products per tile
// pair, as FlashAttention-2's backward. The scores live in registers; a score fragment becomes
// the A operand of the next product without a trip through shared memory (the m16n8
// accumulator layout of two adjacent tiles is the m16k16 A layout, for wgmma as for mma.sync). HSTU
// needs no running maximum, so there is no rescaling. Rows owned by a block (O; dK and dV) are
// written once (through shared memory); dQ is summed over the key tiles in an fp32 buffer (zeroed
// by a small kernel; a bulk reduction per tile from shared memory on sm_90a, atomics elsewhere;
// another small kernel then scales and rounds it), and so are the bias gradients (atomics), which
// all pairs share. The KV-cache forward may split a query tile's keys over blocks whose fp32 parts
// a small kernel adds. With a time bias, a first kernel writes every pair's time slot (a byte) for
// all heads to share, and the tiles of slots stream in next to the tiles they belong to.
#include "ops/cuda/kernel_util.cuh"  // first: it configures fmt for nvcc

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <limits>
#include <type_traits>

#include "core/cuda/caching_allocator.h"
#include "core/error.h"
#include "ops/cuda/hstu_attention.h"
#include "ops/cuda/hstu_attention_fused.h"
#include "ops/cuda/tensor_map.h"
#include "ops/cuda/tma.cuh"
#include "ops/cuda/wgmma.cuh"
#include "ops/hstu_block_order.h"
#include "ops/hstu_time_buckets.h"

namespace genrec::cuda {
namespace {

using cpu::HstuMask;
using cpu::HstuSequenceMask;
using detail::aligned16;
using detail::ceil_div;

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kRows = 16 * kWarps;       // rows a block owns
constexpr int kCols = 64;                // rows of each streamed tile
constexpr int kPad = 8;                  // elements: shared rows 16 bytes apart in banks
constexpr int kMaxSmemPositions = 1024;  // position-gradient slots summed in shared memory
constexpr int kDzLd = kCols + kPad;      // row stride of the staged dZ tile (mma.sync)
constexpr int kDqCols = 64;              // dQ columns per pass over the staged dZ
template <int D>
constexpr int kDqWidth = D < kDqCols ? D : kDqCols;  // dQ columns per pass (and block of the sums)
constexpr int kTimeSlots = 160;                      // > 145, the bucket of the largest int64 |dt|
// The key kernel sums time-slot gradients in kTimeCopies copies, lane l adding to copy l %
// kTimeCopies: the lanes of a warp mostly flush to one slot, and shared fp32 atomics are
// compare-and-swap loops that retry once per lane on the address. Copies kTimeSlots + 1 floats
// apart put one slot of every copy in distinct banks.
constexpr int kTimeCopies = 16;
constexpr int kTimeStride = kTimeSlots + 1;
// The relative biases a kernel adds, a mask: each combination is a kernel of its own (with a
// runtime test per pair of each, the biased kernels' code outgrew the instruction cache:
// instruction fetch took 43% of the position-only forward's stall samples).
enum Bias : int { kNoBias = 0, kPositionBias = 1, kTimeBias = 2 };

// hstu_time_bucket as a table (no logarithm in the kernels): bucket of |dt| =
// start[msb(|dt|)] + #{b in start + 1 .. start + 3 : |dt| >= threshold[b]}, exact because the
// bucket is monotone in |dt| and grows by at most 3 within a power of two (ln 2 / 0.301 < 3).
struct TimeBuckets {
  int32_t start[64];
  int64_t threshold[kTimeSlots + 4];  // smallest |dt| of bucket b; INT64_MAX past the last
};

// The time slots of a (query tile, key tile) pair: 64 x 64 bytes, [query row][key column].
// Computing a slot took three times the instructions of the rest of a score (the time-biased
// forward ran 2.5x the unbiased one), and every head and both passes recomputed it; the slot
// matrix is written once per call, a tile per (query tile, key tile) of each sequence, and read
// as a fifth of a K tile's bytes.
constexpr int kSlotTile = kRows * kCols;
// A budget for the matrix, whose size grows with the square of the longest sequence: larger
// batches run in chunks of sequences, and past it for one sequence the kernels compute every
// slot themselves (for_each_slot_chunk).
constexpr int64_t kSlotBudget = int64_t{256} << 20;

struct Params {
  const int64_t* kv_offsets;
  const int64_t* q_offsets;  // == kv_offsets but for the cached forward
  HstuMask mask;
  int num_tiles;  // blocks per (sequence, head); longer sequences loop
  int num_heads, batch_size;
  BlockGroups groups;  // the order of the blocks (ops/hstu_block_order.h)
  // Cached forward: blocks per query tile, each over its share of the key tiles; with more than
  // one they write fp32 parts (partial: key_splits x part_rows rows of ld_o) that add up to O.
  int key_splits;
  int64_t part_rows;
  float* partial;
  int64_t ld_q, ld_k, ld_v, ld_o;
  float alpha, half_inv_n;  // half_inv_n = inv_n / 2 (sigmoid_over_n)
  const float* pos;
  int num_pos;
  const float* time;
  int num_time;
  const int64_t* timestamps;  // by kv token
  // The slot matrix of the launch's sequences (null without a time bias): sequence b's tile
  // (qt, kt) at slots + b slot_stride + (qt slot_k_tiles + kt) kSlotTile; tiles past slot_q_tiles
  // or slot_k_tiles (a sequence longer than the bound the matrix was sized for) are computed in
  // the kernel.
  const uint8_t* slots;
  int64_t slot_stride;
  int slot_q_tiles, slot_k_tiles;
  double* bias_acc;       // backward: [num_pos | time slots] or null
  float* dq_acc;          // backward: fp32 sums of dZ K (dQ / alpha), as dq_row says
  int64_t dq_tokens;      // rows of the dQ sums (tokens of the batch)
  int acc_pos, acc_time;  // entries of bias_acc for positions and time slots
  TimeBuckets buckets;
};

// A block is one or two warpgroups (two: the key kernel at D = 128 on Hopper); a warpgroup's 4
// warps own its 64 rows, 16 each. The thread's lane, its warp within its warpgroup, its index
// within its warpgroup:
__device__ __forceinline__ int lane_id() {
  return threadIdx.x % 32;
}
__device__ __forceinline__ int group_warp() {
  return threadIdx.x / 32 % kWarps;
}
__device__ __forceinline__ int group_thread() {
  return threadIdx.x % kThreads;
}
// A barrier of the thread's warpgroup only (named barrier 1 + group; 0 is __syncthreads').
__device__ __forceinline__ void group_barrier() {
  asm volatile("bar.sync %0, %1;\n" ::"r"(1 + static_cast<int>(threadIdx.x) / kThreads),
               "n"(kThreads)
               : "memory");
}

// Named barrier `id` shared by the two warpgroups of a block: one arrives (without waiting), the
// other waits for those arrivals. Ids from 3 on (group_barrier takes 1 and 2). Only the kernels
// with two warpgroups on the wgmma path call them.
[[maybe_unused]] __device__ __forceinline__ void arrive_for_other_group(int id) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "n"(2 * kThreads) : "memory");
}
__device__ __forceinline__ void wait_for_other_group(int id) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "n"(2 * kThreads) : "memory");
}

// ---- PTX wrappers ---------------------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, zero-filled when !valid (nothing is read then).
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

// c += a b for one m16n8k16 tile.
template <typename T>
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  uint32_t r;
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    r = *reinterpret_cast<uint32_t*>(&v);
  } else {
    __half2 v = __floats2half2_rn(lo, hi);
    r = *reinterpret_cast<uint32_t*>(&v);
  }
  return r;
}

// Eight floats times `scale`, rounded to T: 16 bytes for one vector store.
template <typename T>
__device__ __forceinline__ uint4 pack8(float4 lo, float4 hi, float scale) {
  return {pack2<T>(scale * lo.x, scale * lo.y), pack2<T>(scale * lo.z, scale * lo.w),
          pack2<T>(scale * hi.x, scale * hi.y), pack2<T>(scale * hi.z, scale * hi.w)};
}

// ---- tiles ----------------------------------------------------------------------------------

// Whether the kernels for head dim D multiply with wgmma (compiled for sm_90a, D >= 64); they
// then keep their tiles in wgmma's swizzled layout, else in rows W + kPad apart for ldmatrix.
// Either way a tile of width W takes 64 (W + kPad) elements of shared memory, a multiple of 1024
// bytes, so every tile of a kernel starts on the 1024-byte boundary the swizzle assumes.
template <int D>
constexpr bool kWg = GENREC_WGMMA&& D >= 64;

// Element offset of (r, c) in a 64-row tile of width W of a kernel for head dim D.
template <int D, int W>
__device__ __forceinline__ int tile_offset(int r, int c) {
  if constexpr (kWg<D>) {
    return wgmma::swizzled_offset(r, c);
  } else {
    return r * (W + kPad) + c;
  }
}

// 64 rows x D of a strided head slice into shared memory, by one warpgroup; rows at or past
// `valid` are zero-filled, so padding rows contribute nothing (not even NaN) to any product.
// Thread x moves chunk x % kChunks of rows x / kChunks + i kRowStep: the addresses of its
// chunks are its first plus constant steps (a swizzle period is 8 rows), one add each.
template <int D, typename T>
__device__ __forceinline__ void load_tile(T* dst, const T* src, int64_t ld, int valid) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  constexpr int kRowStep = kThreads / kChunks;
  static_assert(kRowStep % 8 == 0 && kCols % kRowStep == 0);
  const int r0 = group_thread() / kChunks, col = group_thread() % kChunks * 8;
  T* first_dst = dst + tile_offset<D, D>(r0, col);
  const T* row_src = src + r0 * ld + col;
#pragma unroll
  for (int i = 0; i < kCols / kRowStep; ++i, row_src += kRowStep * ld) {
    const bool ok = r0 + i * kRowStep < valid;
    cp_async_16(first_dst + tile_offset<D, D>(i * kRowStep, 0), ok ? row_src : src, ok);
  }
}

// Hands this thread's shared-memory writes (cp.async, stores) to the async proxy where wgmma
// reads the tiles; a barrier must follow before other threads use them.
template <int D>
__device__ __forceinline__ void shared_written() {
#if GENREC_WGMMA
  if constexpr (kWg<D>) wgmma::fence_shared();
#endif
}

// A fragment (m16 x k16) of rows [16 w, 16 w + 16), columns [16 kk, 16 kk + 16) of a tile.
template <int D, typename T>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* tile, int kk) {
  const int lane = lane_id(), w = group_warp();
  ldsm_x4(a, tile + (16 * w + (lane & 15)) * (D + kPad) + 16 * kk + (lane >> 4) * 8);
}

// acc[n] += A · Yᵀ[:, 8n .. 8n + 8) for the 64 rows of Y (a tile, [n][k] in memory): 8 n-tiles,
// K = D in steps of 16; A's fragments come from `a_frag(kk)`.
template <int D, typename T, typename AFrag>
__device__ __forceinline__ void product_abt(float (&acc)[8][4], const T* y, AFrag&& a_frag) {
  const int lane = lane_id();
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t a[4];
    a_frag(a, kk);
#pragma unroll
    for (int np = 0; np < 4; ++np) {
      uint32_t b[4];
      ldsm_x4(b, y + (16 * np + (lane & 7) + (lane >> 4) * 8) * (D + kPad) + 16 * kk +
                     ((lane >> 3) & 1) * 8);
      mma<T>(acc[2 * np], a, b[0], b[1]);
      mma<T>(acc[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// acc[n] += A · Y[:, 8n .. 8n + 8) for a 16 x 64 A and W columns of a 64-row tile Y ([k][n] in
// memory, rows LD apart); A's fragments (k in [16 kk, 16 kk + 16)) come from a_frag(kk).
template <int LD, int W, typename T, typename AFrag>
__device__ __forceinline__ void product_ay(float (&acc)[W / 8][4], const T* y, AFrag&& a_frag) {
  const int lane = lane_id();
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    uint32_t a[4];
    a_frag(a, kk);
#pragma unroll
    for (int dp = 0; dp < W / 16; ++dp) {
      uint32_t b[4];
      ldsm_x4_trans(
          b, y + (16 * kk + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + 16 * dp + (lane >> 4) * 8);
      mma<T>(acc[2 * dp], a, b[0], b[1]);
      mma<T>(acc[2 * dp + 1], a, b[2], b[3]);
    }
  }
}

// The m16k16 A fragments of a 16 x 64 score fragment (C layout), k-step kk in a[kk].
template <typename T>
__device__ __forceinline__ void score_fragments(uint32_t (&a)[4][4], const float (&p)[8][4]) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    a[kk][0] = pack2<T>(p[2 * kk][0], p[2 * kk][1]);
    a[kk][1] = pack2<T>(p[2 * kk][2], p[2 * kk][3]);
    a[kk][2] = pack2<T>(p[2 * kk + 1][0], p[2 * kk + 1][1]);
    a[kk][3] = pack2<T>(p[2 * kk + 1][2], p[2 * kk + 1][3]);
  }
}

template <int N>
__device__ __forceinline__ void zero(float (&acc)[N][4]) {
#pragma unroll
  for (int n = 0; n < N; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
}

// ---- products -------------------------------------------------------------------------------
// issue_* start a product: on sm_90a an asynchronous wgmma that reads its register operands and
// writes its accumulators until wait_products retires it (products commit in groups and retire
// in order), elsewhere mma.sync, done on return. Until then neither may be touched; wait_products
// names them so the compiler keeps them in place.

template <int D>
__device__ __forceinline__ void commit_products() {
#if GENREC_WGMMA
  if constexpr (kWg<D>) wgmma::commit();
#endif
}

// Retires all committed groups but the last N; `regs` are the operands they used.
template <int D, int N, typename... Regs>
__device__ __forceinline__ void wait_products([[maybe_unused]] Regs&... regs) {
#if GENREC_WGMMA
  if constexpr (kWg<D>) {
    wgmma::wait<N>();
    (wgmma::fence_operands(regs), ...);
  }
#endif
}

// c = A Bᵀ (K = D) for the block's own 64 rows A and a streamed 64-row tile B.
template <int D, typename T>
__device__ __forceinline__ void issue_scores(float (&c)[8][4], const T* a, const T* b) {
  if constexpr (kWg<D>) {
#if GENREC_WGMMA
    wgmma::fence_operands(c);
    wgmma::fence();
    const uint64_t da = wgmma::descriptor<false>(a), db = wgmma::descriptor<false>(b);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      wgmma::mma<T, 64, 0, 0>(c, wgmma::k_step(da, kk), wgmma::k_step(db, kk), kk > 0);
    }
#endif
  } else {
    zero(c);
    product_abt<D>(c, b, [&](uint32_t(&f)[4], int kk) { load_a<D>(f, a, kk); });
  }
}

// acc += P · Y for the warps' 16 x 64 fragments P (score_fragments) and a 64 x D tile Y ([k][n]).
template <int D, typename T>
__device__ __forceinline__ void issue_score_product(float (&acc)[D / 8][4],
                                                    const uint32_t (&p)[4][4], const T* y) {
  if constexpr (kWg<D>) {
#if GENREC_WGMMA
    wgmma::fence_operands(acc);
    wgmma::fence();
    const uint64_t dy = wgmma::descriptor<true>(y);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) wgmma::mma<T, D, 1>(acc, p[kk], wgmma::mn_step(dy, kk), true);
#endif
  } else {
    product_ay<D + kPad, D>(acc, y, [&](uint32_t(&a)[4], int kk) {
#pragma unroll
      for (int x = 0; x < 4; ++x) a[x] = p[kk][x];
    });
  }
}

// Stores the warpgroup's 64 x D accumulator rows (scaled, rounded to T) to rows [row0, ...) of a
// strided slice, those from `valid` on skipped. The fragments go to `stage` (64 rows D + kPad
// apart in free shared memory; 16 lanes of a store hit 16 banks) and rows leave in 16-byte
// chunks: 32-bit stores straight from the fragments took four times the store instructions and
// stalled the end of every block on them.
template <int D, typename T>
__device__ __forceinline__ void store_rows(T* dst, int64_t ld, int row0, int valid,
                                           const float (&acc)[D / 8][4], float scale, T* stage) {
  constexpr int LD = D + kPad, kChunks = D / 8;
  const int lane = lane_id(), w = group_warp();
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = 16 * w + lane / 4 + 8 * half;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      *reinterpret_cast<uint32_t*>(stage + r * LD + 8 * n + 2 * (lane % 4)) =
          pack2<T>(acc[n][2 * half] * scale, acc[n][2 * half + 1] * scale);
    }
  }
  group_barrier();
#pragma unroll
  for (int e = group_thread(); e < kRows * kChunks; e += kThreads) {
    const int r = e / kChunks, c = e % kChunks * 8;
    if (row0 + r < valid) {
      *reinterpret_cast<uint4*>(dst + (row0 + r) * ld + c) =
          *reinterpret_cast<const uint4*>(stage + r * LD + c);
    }
  }
}

// store_rows for a key split's part of O: fp32, straight from the fragments (few rows); rows
// from `valid` on are skipped (valid also keeps a sequence with more than max_new new tokens
// inside the parts; sum_parts_kernel reports it).
template <int D>
__device__ __forceinline__ void store_part(float* dst, int64_t ld, int row0, int64_t valid,
                                           const float (&acc)[D / 8][4]) {
  const int lane = lane_id(), w = group_warp();
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = row0 + 16 * w + lane / 4 + 8 * half;
    if (r >= valid) continue;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      *reinterpret_cast<float2*>(dst + r * ld + 8 * n + 2 * (lane % 4)) =
          make_float2(acc[n][2 * half], acc[n][2 * half + 1]);
    }
  }
}

// ---- scores ---------------------------------------------------------------------------------

// A sequence's mask as a test of one pair in 32-bit arithmetic without branches (HstuSequenceMask
// ::visible, also false past the end): the tiles that need it test every pair, and short-circuit
// 64-bit tests there compiled to a branch per pair around the whole activation.
struct PairMask {
  int length, history, contexts, window;  // window 0: none; each at most length
  __device__ __forceinline__ bool visible(int i, int j) const {
    const bool causal = (j <= i) & ((window == 0) | (min(i, history) - j <= window));
    const bool seen = (j == i) | ((j < history) & ((j < contexts) | (i < contexts) | causal));
    return (i < length) & (j < length) & seen;
  }
};

struct Sequence {
  int64_t kv_start, q_start;
  int length;   // kv tokens
  int q_shift;  // position of query row 0 (new tokens come last)
  int q_len;
  HstuSequenceMask mask;
  PairMask pairs;
  int index;  // in the launch's batch
};

// What this block of a 1-D grid of tiles x H x B works on (ops/hstu_block_order.h).
__device__ __forceinline__ BlockWork block_work(const Params& p, int tiles) {
  return genrec::block_work(blockIdx.x, static_cast<unsigned>(p.num_heads) * p.batch_size,
                            static_cast<unsigned>(p.num_heads), p.groups,
                            static_cast<unsigned>(tiles));
}

__device__ __forceinline__ Sequence sequence(const Params& p, int64_t b) {
  const int64_t kv_start = p.kv_offsets[b], q_start = p.q_offsets[b];
  const int length = static_cast<int>(p.kv_offsets[b + 1] - kv_start);
  const int q_len = static_cast<int>(p.q_offsets[b + 1] - q_start);
  const int64_t targets = p.mask.num_targets != nullptr ? p.mask.num_targets[b] : 0;
  const HstuSequenceMask mask(length, targets, p.mask);
  auto clamp = [&](int64_t x) { return static_cast<int>(x < 0 ? 0 : x < length ? x : length); };
  const PairMask pairs{length, clamp(mask.history), clamp(mask.contexts), clamp(mask.window)};
  return {kv_start, q_start, length, length - q_len, q_len, mask, pairs, static_cast<int>(b)};
}

// tanh.approx: one MUFU op (relative error < 2^-10.9, far below the bf16 rounding of the
// scores); the SiLU and its derivative take it through sigmoid(z) = (1 + tanh(z / 2)) / 2 instead
// of two (exp and reciprocal).
__device__ __forceinline__ float tanh_approx(float x) {
  float t;
  asm("tanh.approx.f32 %0, %1;" : "=f"(t) : "f"(x));
  return t;
}

// tanh of two values with one MUFU op (tanh.approx.f16x2: inputs rounded to fp16, results within
// 7e-4 of tanh), at the price of a conversion to fp16 and two back.
__device__ __forceinline__ float2 tanh_pair(float x0, float x1) {
  __half2 h = __floats2half2_rn(x0, x1);
  uint32_t& bits = *reinterpret_cast<uint32_t*>(&h);
  asm("tanh.approx.f16x2 %0, %0;" : "+r"(bits));
  return __half22float2(h);
}

// sigmoid(z) / N = (1 + t) / 2N from t = tanh(z / 2): P = silu(z) / N is z times it, in the
// forward and where the backward recomputes P.
__device__ __forceinline__ float sigmoid_over_n(float t, float half_inv_n) {
  return fmaf(t, half_inv_n, half_inv_n);
}

// The time-bias slot of dt from a shared copy of the bucket table.
__device__ __forceinline__ int time_slot(const TimeBuckets& t, int num_time, int64_t dt) {
  const uint64_t a = dt < 0 ? 0 - static_cast<uint64_t>(dt) : static_cast<uint64_t>(dt);
  const int b = t.start[63 - __clzll(static_cast<long long>(a | 1))];
  const int64_t x = static_cast<int64_t>(a);
  const int slot =
      b + (x >= t.threshold[b + 1]) + (x >= t.threshold[b + 2]) + (x >= t.threshold[b + 3]);
  return min(slot, num_time - 1);
}

// Byte offset of (row r, column c) in a slot tile in shared memory: the 16-byte chunks of a row
// rotate with r / 2, so that the eight rows a warp's fragments read at once (rows of a query
// tile in the forward, columns of it in the backward) fall in distinct banks.
__device__ __forceinline__ int slot_offset(int r, int c) {
  return r * kCols + ((((c >> 4) ^ (r >> 1)) & 3) << 4) + (c & 15);
}

__device__ __forceinline__ void copy_buckets(TimeBuckets* dst, const TimeBuckets& src) {
  const int32_t* from = reinterpret_cast<const int32_t*>(&src);
  int32_t* to = reinterpret_cast<int32_t*>(dst);
  for (int e = threadIdx.x; e < static_cast<int>(sizeof(TimeBuckets) / 4); e += blockDim.x) {
    to[e] = from[e];
  }
}

// The slots of query tile qt (rows: query rows 64 qt + r) against key tile kt (columns: keys
// 64 kt + c) of sequence s into dst at offset(r, c), by `threads` threads from `thread` on; 0
// where the query row or the key is past the end.
template <typename Offset>
__device__ __forceinline__ void compute_slots(uint8_t* dst, Offset&& offset, const Params& p,
                                              const TimeBuckets& buckets, const Sequence& s, int qt,
                                              int kt, int thread, int threads) {
  for (int e = thread; e < kSlotTile; e += threads) {
    const int r = e / kCols, c = e % kCols;
    const int m = qt * kRows + r, j = kt * kCols + c;
    int slot = 0;
    if (m < s.q_len && j < s.length) {
      const int64_t dt = p.timestamps[s.kv_start + s.q_shift + m] - p.timestamps[s.kv_start + j];
      slot = time_slot(buckets, p.num_time, dt);
    }
    dst[offset(r, c)] = static_cast<uint8_t>(slot);
  }
}

// A block's shared bias state: the bucket and time tables, and the position bias of the current
// tile's diagonals (127 for one warpgroup's rows, 191 for two).
struct BiasSmem {
  TimeBuckets buckets;
  float time[kTimeSlots];
  float diagonal[3 * kCols];
};

__device__ __forceinline__ void load_bias_tables(BiasSmem* dst, const Params& p) {
  if (p.time == nullptr) return;
  copy_buckets(&dst->buckets, p.buckets);
  for (int e = threadIdx.x; e < p.num_time; e += blockDim.x) dst->time[e] = __ldg(p.time + e);
}

// Slot tile (qt, kt) of sequence s into shared memory (slot_offset), by one warpgroup: from the
// matrix by cp.async (in the caller's group), computed here past the matrix's bounds, zeros for
// a tile past the sequence's (never a visible pair, and no stale byte indexes the time table).
__device__ __forceinline__ void load_slots(uint8_t* dst, const Params& p, const BiasSmem* bs,
                                           const Sequence& s, int qt, int kt) {
  if (qt < p.slot_q_tiles && kt < p.slot_k_tiles) {
    const bool inside = qt * kRows < s.q_len && kt * kCols < s.length;
    const uint8_t* src = p.slots + s.index * p.slot_stride +
                         (static_cast<int64_t>(qt) * p.slot_k_tiles + kt) * kSlotTile;
#pragma unroll
    for (int e = group_thread(); e < kSlotTile / 16; e += kThreads) {
      cp_async_16(dst + slot_offset(e / 4, e % 4 * 16), src + 16 * e, inside);
    }
  } else {
    compute_slots(dst, slot_offset, p, bs->buckets, s, qt, kt, group_thread(), kThreads);
  }
}

// Whether every token of a tile's rows [a0, a0 + 64) and columns [b0, b0 + 64) is in the
// history (or past the end): then the position bias of a pair depends on i - j only, one
// staged value per diagonal instead of a gather per pair.
__device__ __forceinline__ bool diagonal_tile(const Sequence& s, int a0, int b0) {
  return min(a0 + kRows, s.length) <= s.mask.history && min(b0 + kCols, s.length) <= s.mask.history;
}

// The position bias of diagonal i - j = lowest + x for thread x < count: a tile's diagonals are
// fetched a step before stage_diagonals puts them in shared memory, so that the load's latency
// hides behind the step's products instead of stalling the barrier that follows the staging.
__device__ __forceinline__ float fetch_diagonal(const Params& p, int lowest, int count) {
  const int x = threadIdx.x;
  return x < count ? __ldg(p.pos + min(abs(lowest + x), p.num_pos - 1)) : 0.0f;
}
__device__ __forceinline__ void stage_diagonals(BiasSmem* bs, int count, float fetched) {
  if (threadIdx.x < count) bs->diagonal[threadIdx.x] = fetched;
}

// Position bias of the pair (query i, key j): the staged value of its diagonal in a diagonal
// tile, else a gather.
template <bool kDiagonal>
__device__ __forceinline__ float position_bias(const Params& p, const Sequence& s,
                                               const float* diagonal, int i, int j) {
  if constexpr (kDiagonal) {
    return *diagonal;
  } else {
    return __ldg(p.pos + min(static_cast<int>(s.mask.relative(i, j)), p.num_pos - 1));
  }
}

// Calls f(n, e, half, row, col) for the 32 elements of a warp's 16 x 64 score fragment (row
// within the block's 64 rows, col within the streamed tile; half: row is the thread's second).
template <typename F>
__device__ __forceinline__ void for_each_score(F&& f) {
  const int lane = lane_id(), w = group_warp();
#pragma unroll
  for (int n = 0; n < 8; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      f(n, e, e >> 1, 16 * w + lane / 4 + 8 * (e >> 1), 8 * n + 2 * (lane % 4) + (e & 1));
    }
  }
}

// The activation of a score fragment two neighbours of a row at a time, their tanh(z / 2) one
// tanh_pair: z = pre(n, e, half, row, col) for both (as for_each_score), then post(n, e, half,
// row, col, z, tanh(z / 2)). In the forward kernels with a relative bias this also took ptxas's
// serialisation of their wgmma pipeline away (C7511): 5-11% faster on an H100, the backward with
// a time bias 2-3%, the cached forward's key split a few %. The unbiased training kernels ran up
// to 9% slower with it (H200; the conversions' issue slots), so they keep one tanh_approx per
// element.
template <typename Pre, typename Post>
__device__ __forceinline__ void for_each_score_pair(Pre&& pre, Post&& post) {
  const int lane = lane_id(), w = group_warp();
#pragma unroll
  for (int n = 0; n < 8; ++n) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = 16 * w + lane / 4 + 8 * half, col = 8 * n + 2 * (lane % 4), e = 2 * half;
      const float z0 = pre(n, e, half, row, col), z1 = pre(n, e + 1, half, row, col + 1);
      const float2 t = tanh_pair(0.5f * z0, 0.5f * z1);
      post(n, e, half, row, col, z0, t.x);
      post(n, e + 1, half, row, col + 1, z1, t.y);
    }
  }
}

// One pipeline stage of the key kernel: rows [first, first + 64) of the sequence from two head
// slices (Q and dO), one per warpgroup when the block has two.
template <int D, int G, typename T>
__device__ __forceinline__ void load_stage(T* dst_a, T* dst_b, const T* a, int64_t ld_a, const T* b,
                                           int64_t ld_b, const Sequence& s, int64_t h, int first) {
  const int group = threadIdx.x / kThreads;
  if (G == 1 || group == 0) {
    load_tile<D>(dst_a, a + (s.kv_start + first) * ld_a + h * D, ld_a, s.length - first);
  }
  if (G == 1 || group == 1) {
    load_tile<D>(dst_b, b + (s.kv_start + first) * ld_b + h * D, ld_b, s.length - first);
  }
}

// ---- query kernel: forward ------------------------------------------------------------------

template <typename T, int D, int kBias, int kHalves>
constexpr size_t query_smem_bytes() {
  // own rows Q, two slots each of K and V (and time slot tiles), bias state, the barriers of the
  // slots' TMA copies (wgmma only; K and V apart with two halves)
  return sizeof(T) * (D + kPad) * (kHalves * kRows + 4 * kCols) +
         (kBias & kTimeBias ? 2 * kSlotTile : 0) + (kBias ? sizeof(BiasSmem) : 0) +
         2 * kHalves * sizeof(uint64_t);
}

// The tensor maps of a kernel's tiles (tensor_map.h): with wgmma they arrive by TMA. The query
// kernel reads q, k and v; the key kernel q, d_out, k and v.
struct TileMaps {
  CUtensorMap q, k, v, d_out;
};

// Rows [token, token + 64) x D of head h by TMA into a swizzled tile, counted on `barrier`; one
// thread issues the copies (a box is 64 columns).
template <int D, typename T>
__device__ __forceinline__ void copy_rows([[maybe_unused]] T* dst,
                                          [[maybe_unused]] const CUtensorMap& map,
                                          [[maybe_unused]] uint64_t* barrier,
                                          [[maybe_unused]] int64_t h,
                                          [[maybe_unused]] int64_t token) {
#if GENREC_WGMMA
#pragma unroll
  for (int c = 0; c < D; c += 64) {
    tma::load_box(dst + wgmma::swizzled_offset(0, c), map, barrier, c, static_cast<int>(h),
                  static_cast<int>(token));
  }
#endif
}

// kCount barriers at the end of a kernel's shared memory (kBytes of it) for its stages of TMA
// copies, set up by thread 0 (a __syncthreads must follow before they are used).
template <int D, size_t kBytes, int kCount = 2>
__device__ __forceinline__ uint64_t* stage_barriers(unsigned char* smem) {
  static_assert(kBytes % sizeof(uint64_t) == 0);
  uint64_t* barriers = reinterpret_cast<uint64_t*>(smem + kBytes) - kCount;
#if GENREC_WGMMA
  if (kWg<D> && threadIdx.x == 0) {
    for (int b = 0; b < kCount; ++b) tma::init_barrier(barriers + b);
  }
#endif
  return barriers;
}

// Zeros rows [first, 64) of a swizzled 64-row tile (all of them for first <= 0), by the whole
// block, and hands the zeros to the async proxy (a barrier must follow). A TMA box that crosses
// a sequence's end brings the next sequence's rows; the masks zero their scores, but where such
// a row is the other factor of a product (V in P V; dO, Q and K in the backward) a NaN or an
// infinity in it times a zero score would still reach this sequence. With those tails zeroed
// the sequences of a batch stay apart, as with cp.async's zero fill. A row is 128 contiguous
// bytes per 64 columns (the swizzle moves chunks within a row only): one span per column block.
template <int D, typename T>
__device__ __forceinline__ void zero_tail(T* tile, int first) {
  first = max(first, 0);
  const int chunks = (kCols - first) * 8;  // 16-byte chunks per column block
#pragma unroll
  for (int c = 0; c < D; c += 64) {
    uint4* span = reinterpret_cast<uint4*>(tile + c * kCols + first * 64);
    for (int e = threadIdx.x; e < chunks; e += blockDim.x) span[e] = make_uint4(0, 0, 0, 0);
  }
  shared_written<D>();
}

// Waits for the copies of a stage and flips the parity the stage's next wait expects (bit
// `stage` of `phases`).
__device__ __forceinline__ void wait_stage([[maybe_unused]] uint64_t* barriers,
                                           [[maybe_unused]] uint32_t& phases,
                                           [[maybe_unused]] int stage) {
#if GENREC_WGMMA
  tma::wait(barriers + stage, phases >> stage & 1);
  phases ^= 1u << stage;
#endif
}

// The wait at a step's start for its tiles. With TMA: the stage's barrier, then zero_tails()
// (zero_tail on the tiles that cross the sequence's end; it returns whether it wrote any) and a
// block barrier only where generic writes must be seen: tails, time slots (cp.async) or staged
// diagonals (kBias). With cp.async: the copies, the proxy fence and the barrier.
template <int D, int kBias, typename Tails>
__device__ __forceinline__ void wait_tiles([[maybe_unused]] uint64_t* barriers,
                                           [[maybe_unused]] uint32_t& phases,
                                           [[maybe_unused]] int stage, Tails&& zero_tails) {
  if constexpr (kWg<D>) {
    wait_stage(barriers, phases, stage);
    const bool tails = zero_tails();
    if (kBias != kNoBias || tails) {
      cp_async_wait<1>();
      __syncthreads();
    }
  } else {
    cp_async_wait<1>();
    shared_written<D>();
    __syncthreads();
  }
}

// Key tile t of a query tile runs in three steps: S_t = Q K_tᵀ, activation, O += P_t V_t. The
// products of step t are S_t and P_{t-1} V_{t-1}, issued together; the activation of S_t then
// overlaps the second on the tensor cores. So K_t (with its time slots) lands a step before V_t:
// cp.async group t brings K_t and V_{t-1}, into slots t % 2 and (t - 1) % 2, and is waited for
// a step after it is issued. kSplit: the cached forward's split of the key tiles over blocks
// (p.key_splits > 1); the other launches carry none of its code (with a runtime split of one in
// every launch the training forward measured 7% slower).
//
// kHalves = 2 (the unbiased forward at D = 128 with wgmma): a block owns 128 rows, two halves of
// 64, and each K and V tile serves both. Its steps alternate the halves: S0_t = Q0 K_tᵀ with
// P1_{t-1} V_{t-1}, then S1_t with P0_t V_t, so one half's activation runs while the other's
// products are on the tensor cores, and K and V are read once per 128 rows; half the blocks
// start and end. A block whose second half has no rows runs the one-half steps. (At D = 64 the
// kernel's 191 registers leave two blocks per multiprocessor where the one-half kernel fits
// four, and it ran slower.)
template <typename T, int D, int kBias, bool kSplit, int kHalves>
__global__ void __launch_bounds__(kThreads)
    query_kernel(Params p, T* __restrict__ out, const T* __restrict__ q, const T* __restrict__ k,
                 const T* __restrict__ v, const __grid_constant__ TileMaps maps) {
  // With wgmma thread 0 copies every tile by TMA (rows past a sequence's end: see the key kernel).
  constexpr bool kTma = kWg<D>;
  constexpr int LD = D + kPad;
  constexpr int kBlockRows = kHalves * kRows;
  static_assert(kHalves == 1 || (kBias == kNoBias && !kSplit));
  if constexpr (kHalves == 2 && !kTma) __trap();  // the host launches it on the wgmma path only
  extern __shared__ __align__(1024) unsigned char smem[];
  T* s_q = reinterpret_cast<T*>(smem);
  T* s_k = s_q + kBlockRows * LD;
  T* s_v = s_k + 2 * kCols * LD;
  constexpr bool kPos = kBias & kPositionBias, kTime = kBias & kTimeBias;
  uint8_t* s_slots = reinterpret_cast<uint8_t*>(s_v + 2 * kCols * LD);                // kTime only
  BiasSmem* bs = reinterpret_cast<BiasSmem*>(s_slots + (kTime ? 2 * kSlotTile : 0));  // kBias
  const int w = group_warp();
  const int splits = kSplit ? p.key_splits : 1;
  const BlockWork work = block_work(p, p.num_tiles * splits);
  const int64_t h = work.head;
  const Sequence s = sequence(p, work.seq);
  if constexpr (kBias != kNoBias) load_bias_tables(bs, p);
  // Group t's barrier is t % 2's (kTma); with two halves K_t's is t % 2's and V_t's 2 + t % 2's.
  [[maybe_unused]] uint64_t* group_ready =
      stage_barriers<D, query_smem_bytes<T, D, kBias, kHalves>(), 2 * kHalves>(smem);
  [[maybe_unused]] uint32_t phases = 0;

  const int split = kSplit ? work.rank % splits : 0;
  for (int tile = p.num_tiles - 1 - work.rank / splits; tile * kBlockRows < s.q_len;
       tile += p.num_tiles) {
    const int m0 = tile * kBlockRows;
    const int i_first = s.q_shift + m0;  // position of the block's row 0
    const int i_last = min(s.q_shift + m0 + kBlockRows, s.length) - 1;
    const bool two = kHalves == 2 && kTma && m0 + kRows < s.q_len;  // the second half has rows
    const int j_first = static_cast<int>(s.mask.first_key(i_first)) / kCols * kCols;
    const int j_end = s.mask.contexts > 0 ? s.length : i_last + 1;
    const int key_tiles = j_first < j_end ? (j_end - j_first + kCols - 1) / kCols : 0;
    // This block's share of them: tiles [t_first, t_first + num_keys).
    const int t_first = kSplit ? key_tiles * split / splits : 0;
    const int num_keys = kSplit ? key_tiles * (split + 1) / splits - t_first : key_tiles;
    const int j_begin = j_first + t_first * kCols;

    __syncthreads();  // the previous tile's readers are done with shared memory
    auto load_group = [&](int t) {
      if constexpr (kTma) {
#if GENREC_WGMMA
        const bool key = t < num_keys, value = t >= 1 && t <= num_keys;
        if (threadIdx.x == 0 && (key || value)) {  // Q comes with the first key tile
          constexpr uint32_t kTile = kCols * D * sizeof(T);
          tma::arrive_expecting(group_ready + (t & 1), (key + value + (t == 0)) * kTile);
          if (t == 0) copy_rows<D>(s_q, maps.q, group_ready, h, s.q_start + m0);
          if (key) {
            copy_rows<D>(s_k + (t & 1) * kCols * LD, maps.k, group_ready + (t & 1), h,
                         s.kv_start + j_begin + t * kCols);
          }
          if (value) {
            copy_rows<D>(s_v + ((t - 1) & 1) * kCols * LD, maps.v, group_ready + (t & 1), h,
                         s.kv_start + j_begin + (t - 1) * kCols);
          }
        }
        if constexpr (kTime) {
          if (t < num_keys) {
            load_slots(s_slots + (t & 1) * kSlotTile, p, bs, s, tile,
                       (j_begin + t * kCols) / kCols);
          }
          cp_async_commit();
        }
#endif
        return;
      }
      if (t == 0) load_tile<D>(s_q, q + (s.q_start + m0) * p.ld_q + h * D, p.ld_q, s.q_len - m0);
      if (t < num_keys) {
        const int j0 = j_begin + t * kCols, slot = t & 1;
        load_tile<D>(s_k + slot * kCols * LD, k + (s.kv_start + j0) * p.ld_k + h * D, p.ld_k,
                     s.length - j0);
        if constexpr (kTime) load_slots(s_slots + slot * kSlotTile, p, bs, s, tile, j0 / kCols);
      }
      if (t >= 1 && t <= num_keys) {
        const int j0 = j_begin + (t - 1) * kCols;
        load_tile<D>(s_v + ((t - 1) & 1) * kCols * LD, v + (s.kv_start + j0) * p.ld_v + h * D,
                     p.ld_v, s.length - j0);
      }
      cp_async_commit();
    };
    if (!two) {
      load_group(0);
      load_group(1);
    }

    float acc[D / 8][4];
    zero(acc);
    uint32_t pf[4][4];  // P_{t-1} as A fragments
    auto key_slot = [&](int t) -> const T* { return s_k + (t & 1) * kCols * LD; };
    auto value_slot = [&](int t) -> const T* { return s_v + (t & 1) * kCols * LD; };
    constexpr int kDiagonals = 2 * kCols - 1;
    auto lowest_diagonal = [&](int t) { return i_first - j_begin - t * kCols - (kCols - 1); };
    float next_diagonal = kPos ? fetch_diagonal(p, lowest_diagonal(0), kDiagonals) : 0.0f;
    // Waits for group t; returns whether tile t takes the staged-diagonal path.
    auto begin_step = [&](int t) {
      const int j0 = j_begin + t * kCols;
      const bool diagonal = kBias && t < num_keys && diagonal_tile(s, i_first, j0);
      if (kPos && diagonal) stage_diagonals(bs, kDiagonals, next_diagonal);
      if (kPos) next_diagonal = fetch_diagonal(p, lowest_diagonal(t + 1), kDiagonals);
      wait_tiles<D, kBias>(group_ready, phases, t & 1, [] { return false; });  // tails: below
      return diagonal;
    };
    auto end_step = [&](int t) {
      __syncthreads();  // K_t and V_{t-1} are read: their slots take group t + 2
      load_group(t + 2);
    };
    // Scores of tile t -> P for the rows from r0 on (the half's first); only tiles that cross the
    // diagonal, the end of the sequence or a mask boundary test each element.
    auto activate_tile = [&](float(&sc)[8][4], int t, bool diagonal, int r0) {
      if (kSplit && m0 + 16 * w >= s.q_len) {  // the warp's rows are all padding (few new tokens)
        zero(sc);
        return;
      }
      const int i0 = i_first + r0;
      const int j0 = j_begin + t * kCols;
      const uint8_t* slots = s_slots + (t & 1) * kSlotTile;
      auto activate = [&](auto masked, auto diagonal_bias) {
        [[maybe_unused]] constexpr bool kDiagonal = decltype(diagonal_bias)::value;
        auto pre = [&](int n, int e, int, int row, int col) {
          float z = p.alpha * sc[n][e];
          if constexpr (kPos) {
            z += position_bias<kDiagonal>(p, s, bs->diagonal + (row - col + kCols - 1), i0 + row,
                                          j0 + col);
          }
          if constexpr (kTime) z += bs->time[slots[slot_offset(row, col)]];
          return z;
        };
        auto post = [&](int n, int e, int, int row, int col, float z, float t) {
          bool keep = true;
          if constexpr (decltype(masked)::value) keep = s.pairs.visible(i0 + row, j0 + col);
          sc[n][e] = keep ? z * sigmoid_over_n(t, p.half_inv_n) : 0.0f;
        };
        if constexpr (kBias != kNoBias || kSplit) {
          for_each_score_pair(pre, post);
        } else {  // pre and post without bias as one lambda: composed, ptxas serialised the wgmma
          for_each_score([&](int n, int e, int, int row, int col) {
            const float z = p.alpha * sc[n][e];
            bool keep = true;
            if constexpr (decltype(masked)::value) keep = s.pairs.visible(i0 + row, j0 + col);
            sc[n][e] = keep ? z * sigmoid_over_n(tanh_approx(0.5f * z), p.half_inv_n) : 0.0f;
          });
        }
      };
      // Target columns (j >= history) and columns right of the diagonal need the mask (target
      // rows see every history column). The bias kernels' general copy tests every element:
      // fewer copies of their larger code keep it in the instruction cache.
      const bool masked = s.mask.contexts > 0 || s.mask.window > 0 || j0 + kCols > i0 ||
                          j0 + kCols > s.mask.history;
      if (diagonal && masked) {
        activate(std::true_type{}, std::true_type{});
      } else if (diagonal) {
        activate(std::false_type{}, std::true_type{});
      } else if (kBias || masked) {
        activate(std::true_type{}, std::false_type{});
      } else {
        activate(std::false_type{}, std::false_type{});
      }
    };

#if GENREC_WGMMA
    if constexpr (kHalves == 2 && kTma) {
      if (two) {
        // Half 0 (rows i_first + [0, 64)) sees keys0 tiles, half 1 all num_keys (keys0 or one
        // more; both at least one). K_t comes (with Q for t = 0) on barrier t % 2, V_t on
        // 2 + t % 2; a slot is copied into once both halves' products have read it.
        const int j_end0 = s.mask.contexts > 0 ? s.length : i_first + kRows;
        const int keys0 = (j_end0 - j_first + kCols - 1) / kCols;
        constexpr uint32_t kTile = kCols * D * sizeof(T);
        auto load_key = [&](int t) {
          if (threadIdx.x != 0 || t >= num_keys) return;
          tma::arrive_expecting(group_ready + (t & 1), (t == 0 ? 3 : 1) * kTile);
          if (t == 0) {
            copy_rows<D>(s_q, maps.q, group_ready, h, s.q_start + m0);
            copy_rows<D>(s_q + kRows * LD, maps.q, group_ready, h, s.q_start + m0 + kRows);
          }
          copy_rows<D>(s_k + (t & 1) * kCols * LD, maps.k, group_ready + (t & 1), h,
                       s.kv_start + j_first + t * kCols);
        };
        auto load_value = [&](int t) {
          if (threadIdx.x != 0 || t >= num_keys) return;
          tma::arrive_expecting(group_ready + 2 + (t & 1), kTile);
          copy_rows<D>(s_v + (t & 1) * kCols * LD, maps.v, group_ready + 2 + (t & 1), h,
                       s.kv_start + j_first + t * kCols);
        };
        // V_t's rows past the sequence's end would meet every row: zeroed (only the last tile).
        auto wait_value = [&](int t) {
          wait_stage(group_ready, phases, 2 + (t & 1));
          const int v_first = j_first + t * kCols;
          if (v_first + kCols > s.length) {
            zero_tail<D>(s_v + (t & 1) * kCols * LD, s.length - v_first);
            __syncthreads();
          }
        };
        const T* s_q1 = s_q + kRows * LD;
        float acc1[D / 8][4];
        zero(acc1);
        uint32_t pf1[4][4];  // P1_{t-1}
        float sc[8][4];
        // S = Q_half K_tᵀ issued with o += pv V_u (the other half's product), the scores of the
        // rows from r0 on activated while that runs, then their P into `next`.
        auto half_step = [&](const T* q_half, int t, int r0, float(&o)[D / 8][4],
                             uint32_t(&pv)[4][4], int u, uint32_t(&next)[4][4]) {
          issue_scores<D>(sc, q_half, key_slot(t));
          commit_products<D>();
          issue_score_product<D>(o, pv, value_slot(u));
          commit_products<D>();
          wait_products<D, 1>(sc);
          activate_tile(sc, t, false, r0);
          wait_products<D, 0>(o, pv);
          score_fragments<T>(next, sc);
        };
        load_key(0);
        load_key(1);
        load_value(0);
        // Step 0: S0_0 alone, then S1_0 with P0_0 V_0.
        wait_stage(group_ready, phases, 0);
        issue_scores<D>(sc, s_q, key_slot(0));
        commit_products<D>();
        wait_products<D, 0>(sc);
        activate_tile(sc, 0, false, 0);
        score_fragments<T>(pf, sc);
        load_value(1);  // its slot has not been used yet
        wait_value(0);
        half_step(s_q1, 0, kRows, acc, pf, 0, pf1);
        __syncthreads();  // K_0 is read: its slot takes K_2
        load_key(2);
        int t = 1;
        for (; t < keys0; ++t) {
          wait_stage(group_ready, phases, t & 1);
          half_step(s_q, t, 0, acc1, pf1, t - 1, pf);
          __syncthreads();  // V_{t-1} is read: its slot takes V_{t+1}
          load_value(t + 1);
          wait_value(t);
          half_step(s_q1, t, kRows, acc, pf, t, pf1);
          __syncthreads();  // K_t is read: its slot takes K_{t+2}
          load_key(t + 2);
        }
        if (t < num_keys) {  // the last key tile is half 1's alone
          wait_stage(group_ready, phases, t & 1);
          half_step(s_q1, t, kRows, acc1, pf1, t - 1, pf1);
          wait_value(t);
          ++t;
        }
        issue_score_product<D>(acc1, pf1, value_slot(t - 1));
        commit_products<D>();
        wait_products<D, 0>(acc1, pf1);
        __syncthreads();  // the key slots are free: O leaves through them
        store_rows<D>(out + s.q_start * p.ld_o + h * D, p.ld_o, m0, s.q_len, acc, 1.0f, s_k);
        store_rows<D>(out + s.q_start * p.ld_o + h * D, p.ld_o, m0 + kRows, s.q_len, acc1, 1.0f,
                      s_k + kCols * LD);
        shared_written<D>();  // the next tile's copies overwrite the key slots
        continue;
      }
    }
#endif
    // The first and last steps are peeled off so that every step of the loop issues the same
    // products: then the compiler keeps the wgmma pipeline instead of serialising it.
    if (num_keys > 0) {
      float sc[8][4];
      bool diagonal = begin_step(0);
      issue_scores<D>(sc, s_q, key_slot(0));
      commit_products<D>();
      wait_products<D, 0>(sc);
      activate_tile(sc, 0, diagonal, 0);
      score_fragments<T>(pf, sc);
      end_step(0);
      for (int t = 1; t < num_keys; ++t) {
        diagonal = begin_step(t);
        issue_scores<D>(sc, s_q, key_slot(t));
        commit_products<D>();
        issue_score_product<D>(acc, pf, value_slot(t - 1));
        commit_products<D>();
        wait_products<D, 1>(sc);
        activate_tile(sc, t, diagonal, 0);
        wait_products<D, 0>(acc, pf);
        score_fragments<T>(pf, sc);
        end_step(t);
      }
      begin_step(num_keys);
      // Only the last key tile can cross the sequence's end; K's rows past it only meet masked
      // scores and Q's only make rows that are not stored, but V's would meet every row.
      const int v_first = j_begin + (num_keys - 1) * kCols;
      if (kTma && v_first + kCols > s.length) {
        zero_tail<D>(s_v + ((num_keys - 1) & 1) * kCols * LD, s.length - v_first);
        __syncthreads();
      }
      issue_score_product<D>(acc, pf, value_slot(num_keys - 1));
      commit_products<D>();
      wait_products<D, 0>(acc, pf);
    }
    cp_async_wait<0>();
    if constexpr (!kSplit) {
      __syncthreads();  // the key slots are free: O leaves through them
      store_rows<D>(out + s.q_start * p.ld_o + h * D, p.ld_o, m0, s.q_len, acc, 1.0f, s_k);
      // The next tile's copies overwrite the key slots: order the stores before them.
      if constexpr (kTma) shared_written<D>();
    } else {
      store_part<D>(p.partial + (split * p.part_rows + s.q_start) * p.ld_o + h * D, p.ld_o, m0,
                    min(static_cast<int64_t>(s.q_len), p.part_rows - s.q_start), acc);
    }
  }
}

// ---- key kernel: backward -------------------------------------------------------------------

// Programmatic dependent launch (sm_90): a kernel launched with it may start while the stream's
// previous kernel ends, once that one has allowed it, and waits for its results here. Both are
// no-ops for a kernel launched without it.
__device__ __forceinline__ void wait_for_previous_grid() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void allow_next_grid() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Whether the key kernel issues a query tile's dQ a step late, with the next tile's scores, so
// that it runs on the tensor cores during that tile's activation (wgmma only). Its dZ tiles then
// need two buffers. The biased kernels at D = 128 keep the product in their step: with it in
// flight during their activation they spilled 90-1000 bytes, and two buffers would pass the
// shared memory of one block with the time bias.
template <int D, int kBias>
constexpr bool key_defers_dq(bool wgmma) {
  return wgmma && (kBias == kNoBias || D <= 64);
}

// wgmma: the kernel stages dQ rows for bulk reductions and loads by TMA (wgmma_path).
template <typename T, int D, int kBias, int G>
constexpr size_t key_smem_bytes(bool wgmma) {
  // per warpgroup its rows of K and V, its staged dZ tiles (one or two) and its dQ staging rows;
  // two stages of Q and dO and of each warpgroup's time slot tile; with bias: its state and the
  // gradient sums; last, with wgmma, the barriers of the two stages' TMA copies
  return sizeof(T) * (D + kPad) * (2 * G * kRows + 4 * kCols) +
         (kBias & kTimeBias ? 2 * G * kSlotTile : 0) +
         sizeof(T) * (key_defers_dq<D, kBias>(wgmma) ? 2 : 1) * G * kRows * kDzLd +
         (wgmma ? sizeof(float) * G * kRows * kDqCols : 0) +
         (kBias ? sizeof(BiasSmem) + (kMaxSmemPositions + kTimeCopies * kTimeStride) * sizeof(float)
                : 0) +
         (wgmma ? 2 * sizeof(uint64_t) : 0);
}

// Position slots past the shared array: straight to the global sums (out of line: rare).
__device__ __noinline__ void add_global(double* sums, int slot, float dz) {
  atomicAdd(sums + slot, static_cast<double>(dz));
}

__device__ __forceinline__ void add_position_gradient(const Params& p, float* s_pos, int smem_pos,
                                                      int slot, float dz) {
  if (dz == 0.0f) return;
  if (slot < smem_pos) {
    atomicAdd(s_pos + slot, dz);
  } else {
    add_global(p.bias_acc, slot, dz);
  }
}

// A thread's run of pairs with one time slot: the pairs of a row mostly share their slot with
// their neighbours, so the thread adds one sum per run to shared memory instead of one atomic
// per pair (32 lanes adding to one address are serialised).
struct SlotRun {
  int slot = 0;
  float sum = 0.0f;
  __device__ __forceinline__ void add(int s, float dz, float* s_time) {
    if (s != slot) {
      flush(s_time);
      slot = s;
    }
    sum += dz;
  }
  __device__ __forceinline__ void flush(float* s_time) {
    if (sum != 0.0f) atomicAdd(s_time + slot, sum);
    sum = 0.0f;
  }
};

// Stages the warps' dZᵀ fragments (C layout; rows are keys j0 + r, columns queries i0 + c) in
// shared memory for what sums dZ across warps: dQ and the position gradient of diagonal tiles.
// They come as the A fragments of the dK product (score_fragments), so in its precision; the
// tile is a 64-wide operand tile.
template <int D, typename T>
__device__ __forceinline__ void stage_dz(T* s_dz, const uint32_t (&dz)[4][4]) {
  const int lane = lane_id(), w = group_warp();
#pragma unroll
  for (int n = 0; n < 8; ++n) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = 16 * w + lane / 4 + 8 * half, c = 8 * n + 2 * (lane % 4);
      *reinterpret_cast<uint32_t*>(s_dz + tile_offset<D, kCols>(r, c)) =
          dz[n / 2][(n % 2) * 2 + half];
    }
  }
}

// The position gradient of a diagonal tile from its staged dZ: thread t of the warpgroup sums
// half the rows of the diagonals c - r = x and x - 64 (x = t % 64; 32 elements together), whose
// pairs have i - j = base + c - r. The loop is unrolled so that its loads overlap: one thread
// summing all 64 rows of a diagonal pair held the whole block at the next barrier.
template <int D, typename T>
__device__ __forceinline__ void add_diagonal_gradients(const Params& p, const T* s_dz, float* s_pos,
                                                       int smem_pos, int base) {
  const int t = group_thread(), x = t % kCols, r0 = t / kCols * (kRows / 2);
  float near = 0.0f, far = 0.0f;  // diagonals x and x - 64
#pragma unroll
  for (int k = 0; k < kRows / 2; ++k) {
    const int r = r0 + k;
    const float g = static_cast<float>(s_dz[tile_offset<D, kCols>(r, (r + x) & (kCols - 1))]);
    near += r + x < kCols ? g : 0.0f;
    far += r + x < kCols ? 0.0f : g;
  }
  add_position_gradient(p, s_pos, smem_pos, min(abs(base + x), p.num_pos - 1), near);
  add_position_gradient(p, s_pos, smem_pos, min(abs(base + x - kCols), p.num_pos - 1), far);
}

// The fp32 dQ sums: per head and block of W = kDqWidth columns, the batch's tokens' rows of W
// floats one after another, so that a query tile's rows are one contiguous span (one bulk
// reduction on sm_90). Within a row the 16-byte chunk k of token t sits at chunk k ^ (t % 8):
// the warps' fragments then reach shared memory without bank conflicts. store_dq_kernel reads
// the layout back into d_q.
__host__ __device__ constexpr int dq_column(int c, int64_t token) {
  return (((c >> 2) ^ static_cast<int>(token & 7)) << 2) | (c & 3);
}
// The offset of token's row of head h's block of `width` columns holding column c.
__host__ __device__ constexpr int64_t dq_offset(int64_t h, int c, int64_t token, int64_t tokens,
                                                int dim, int width) {
  return ((h * (dim / width) + c / width) * tokens + token) * width;
}
template <int D>
__device__ __forceinline__ float* dq_row(const Params& p, int64_t h, int c0, int64_t token) {
  return p.dq_acc + dq_offset(h, c0, token, p.dq_tokens, D, kDqWidth<D>);
}

// Adds a warp's 16 x W accumulator fragment (C layout) to its dQ rows, dst at the thread's first
// row (token t; the second, 8 rows on, has the same t % 8); rows from `valid` on are skipped. On
// sm_90 lanes l and l ^ 1 trade halves so that each adds one 16-byte chunk of one row with one
// vector reduction (half the atomics of pairs); before, every element is an atomic of its own.
template <int W>
__device__ __forceinline__ void add_dq_rows(float* dst, int64_t token, int valid,
                                            const float (&acc)[W / 8][4]) {
  const int lane = lane_id();
  auto at = [&](int row, int c) { return dst + row * W + dq_column(c, token); };
#if __CUDA_ARCH__ >= 900
  const bool odd = lane & 1;  // odd lanes take the second row (+8), even lanes the first
  const int row = odd ? 8 : 0;
  const int c = 2 * (lane % 4) - (odd ? 2 : 0);  // 0 or 4
#pragma unroll
  for (int n = 0; n < W / 8; ++n) {
    const float a = __shfl_xor_sync(0xffffffffu, odd ? acc[n][0] : acc[n][2], 1);
    const float b = __shfl_xor_sync(0xffffffffu, odd ? acc[n][1] : acc[n][3], 1);
    const float4 v =
        odd ? make_float4(a, b, acc[n][2], acc[n][3]) : make_float4(acc[n][0], acc[n][1], a, b);
    if (row < valid) atomicAdd(reinterpret_cast<float4*>(at(row, 8 * n + c)), v);
  }
#else
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    if (8 * half >= valid) continue;
#pragma unroll
    for (int n = 0; n < W / 8; ++n) {
      float* out = at(8 * half, 8 * n + 2 * (lane % 4));
      atomicAdd(out, acc[n][2 * half]);
      atomicAdd(out + 1, acc[n][2 * half + 1]);
    }
  }
#endif
}

// dQ columns [c0, c0 + kDqWidth) of the streamed query tile: dZ K over the block's keys (alpha
// comes later). Warp w takes queries [16 w, 16 w + 16) against all 64 keys, but the warps hold
// dZᵀ (rows = keys), so the A operand comes from the staged tile: wgmma reads it MN-major,
// mma.sync gets the m16k16 fragment of dZ (queries x keys) by ldmatrix.trans of its [key][query]
// 8 x 8 blocks. K is the B operand as V is in P V; kDqWidth columns at a time bound the
// accumulators. kTiles: consecutive staged dZ tiles and K tiles (64 keys each) summed over.
template <int D, int kTiles, typename T>
__device__ __forceinline__ void issue_dq(float (&acc)[kDqWidth<D> / 8][4], const T* s_dz,
                                         const T* s_k, int c0) {
  constexpr int W = kDqWidth<D>;
  if constexpr (kWg<D>) {
#if GENREC_WGMMA
    wgmma::fence_operands(acc);
    wgmma::fence();
#pragma unroll
    for (int t = 0; t < kTiles; ++t) {
      const uint64_t dz_desc = wgmma::descriptor<true>(s_dz + t * kRows * kDzLd);
      const uint64_t k_desc = wgmma::descriptor<true>(s_k + t * kRows * (D + kPad));
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        wgmma::mma<T, W, 1, 1>(acc, wgmma::mn_step(dz_desc, kk), wgmma::mn_step(k_desc, kk, c0),
                               t > 0 || kk > 0);
      }
    }
#endif
  } else {
    const int lane = lane_id(), w = group_warp();
    zero(acc);
#pragma unroll
    for (int t = 0; t < kTiles; ++t) {
      const T* dz = s_dz + t * kRows * kDzLd;
      product_ay<D + kPad, W>(acc, s_k + t * kRows * (D + kPad) + c0, [&](uint32_t(&a)[4], int kk) {
        // blocks (keys, queries) at (0, 0), (0, 8), (8, 0), (8, 8) become a0, a1, a2, a3
        ldsm_x4_trans(a, dz + (16 * kk + (lane & 7) + ((lane >> 4) & 1) * 8) * kDzLd + 16 * w +
                             ((lane >> 3) & 1) * 8);
      });
    }
  }
}

#if GENREC_WGMMA
// add_dq_rows through shared memory: each warp writes its 16 x 64 fragment to its staging rows,
// laid out as the sums are, and its lane 0 hands the valid ones (one span) to the bulk-copy unit
// as a reduce-add. From registers it took 8 vector atomics and 16 shuffles per thread, and at
// 255 registers every atomic held the registers the next shuffle needed. A reduction per warp
// (not per warpgroup) keeps the warps apart: none waits at a barrier for another's staging.
__device__ __forceinline__ void add_dq_rows_bulk(float* dst, int64_t token, int rows,
                                                 float* staging,
                                                 const float (&acc)[kDqCols / 8][4]) {
  const int lane = lane_id(), w = group_warp();
  float* warp_rows = staging + 16 * w * kDqCols;
  if (lane == 0) asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
  __syncwarp();  // the warp's previous reduction has read its staging rows
#pragma unroll
  for (int n = 0; n < kDqCols / 8; ++n) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = lane / 4 + 8 * half;
      *reinterpret_cast<float2*>(warp_rows + r * kDqCols +
                                 dq_column(8 * n + 2 * (lane % 4), token + 16 * w + r)) =
          make_float2(acc[n][2 * half], acc[n][2 * half + 1]);
    }
  }
  wgmma::fence_shared();
  __syncwarp();
  const int valid = min(rows - 16 * w, 16);
  if (lane == 0 && valid > 0) {
    asm volatile(
        "cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n"
        "cp.async.bulk.commit_group;\n" ::"l"(dst + 16 * w * kDqCols),
        "r"(smem_u32(warp_rows)), "r"(valid * kDqCols * static_cast<int>(sizeof(float)))
        : "memory");
  }
}

// Before a block leaves: its bulk reductions have read its shared memory and are done.
__device__ __forceinline__ void finish_dq_bulk() {
  if (lane_id() == 0) asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
}
#endif

// Adds issue_dq's columns [c0, c0 + kDqWidth) to p.dq_acc for query tile i0 (staging: the
// warpgroup's dQ rows in shared memory, wgmma only).
template <int D>
__device__ __forceinline__ void add_dq(const Params& p, const Sequence& s, int64_t h, int i0,
                                       int c0, const float (&acc)[kDqWidth<D> / 8][4],
                                       [[maybe_unused]] float* staging) {
  if constexpr (kWg<D>) {
#if GENREC_WGMMA
    const int64_t token = s.kv_start + i0;
    add_dq_rows_bulk(dq_row<D>(p, h, c0, token), token, min(kRows, s.length - i0), staging, acc);
#endif
  } else {
    const int row = i0 + 16 * group_warp() + lane_id() / 4;  // and row + 8
    const int64_t token = s.kv_start + row;
    add_dq_rows<kDqWidth<D>>(dq_row<D>(p, h, c0, token), token, s.length - row, acc);
  }
}

// A block of G warpgroups owns keys [j0, j0 + 64 G); warpgroup g the 64 from j0 + 64 g, with
// their K, V, dZ tiles and dK, dV accumulators. The query tiles stream through all of them; two
// warpgroups share each tile's loads and, at D = 128 with wgmma, each computes half of dQ's
// columns over both key tiles, which halves the dQ atomics.
template <typename T, int D, int kBias, int G>
__global__ void __launch_bounds__(kThreads* G)
    key_kernel(Params p, T* __restrict__ d_k, T* __restrict__ d_v, const T* __restrict__ d_out,
               const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
               const __grid_constant__ TileMaps maps) {
  wait_for_previous_grid();         // the dQ sums are zeroed
  allow_next_grid();                // store_dq_kernel may take the multiprocessors this grid leaves
  constexpr int kKeys = G * kRows;  // keys a block owns
  // With wgmma thread 0 copies every tile by TMA, each stage counted on its barrier; rows past a
  // sequence's end then hold the next sequence's (or zeros past the batch): the masks keep them
  // out of the scores and zero_tail out of the products' other factors.
  constexpr bool kTma = kWg<D>;
  constexpr int LD = D + kPad;
  constexpr int kDzTile = kRows * kDzLd;
  extern __shared__ __align__(1024) unsigned char smem[];
  T* s_k = reinterpret_cast<T*>(smem);
  T* s_v = s_k + G * kRows * LD;
  T* s_q = s_v + G * kRows * LD;
  T* s_do = s_q + 2 * kCols * LD;
  constexpr bool kPos = kBias & kPositionBias, kTime = kBias & kTimeBias;
  uint8_t* s_slots = reinterpret_cast<uint8_t*>(s_do + 2 * kCols * LD);  // kTime only
  T* s_dz = reinterpret_cast<T*>(s_slots + (kTime ? 2 * G * kSlotTile : 0));
  constexpr bool kDeferDq = key_defers_dq<D, kBias>(kWg<D>);
  // kHandOff (two warpgroups, dQ a step late): the warpgroups need not meet at every step, so that
  // one's activation can run while the other's products are on the tensor cores. Each hands the
  // other its staged dZ tile by a named barrier (3 + 2 receiver + buffer), and the warp (of
  // either) that finishes with a stage last issues the copies of the tile two steps on
  // (stage_users counts).
  // Holding warpgroup 1 half a step behind 0 (FlashAttention-3's ping-pong) measured slower.
  constexpr bool kHandOff = kDeferDq && G == 2;
  auto dz_hand_off = [](int receiver, int buffer) { return 3 + 2 * receiver + buffer; };
  __shared__ int stage_users[2];
  if (kHandOff && threadIdx.x < 2) stage_users[threadIdx.x] = 0;
  // kBias only: bias state, gradient sums (positions, then time slots)
  float* s_dq = reinterpret_cast<float*>(s_dz + (kDeferDq ? 2 : 1) * G * kDzTile);  // wgmma only
  BiasSmem* bs = reinterpret_cast<BiasSmem*>(s_dq + (kWg<D> ? G * kRows * kDqCols : 0));
  float* s_bias = reinterpret_cast<float*>(bs + 1);
  const int lane = lane_id(), group = threadIdx.x / kThreads;
  T* my_k = s_k + group * kRows * LD;
  T* my_v = s_v + group * kRows * LD;
  float* my_dq = s_dq + group * kRows * kDqCols;
  const BlockWork work = block_work(p, p.num_tiles);
  const int64_t h = work.head;
  const Sequence s = sequence(p, work.seq);
  const bool want_bias = kBias && p.bias_acc != nullptr;
  const bool want_pos = kPos && want_bias && p.acc_pos > 0;
  const bool want_time = kTime && want_bias && p.acc_time > 0;
  if constexpr (kBias != kNoBias) load_bias_tables(bs, p);
  const int smem_pos = min(p.acc_pos, kMaxSmemPositions);
  float* s_time = s_bias + smem_pos;  // kTimeCopies copies of the slots
  float* my_time = s_time + lane % kTimeCopies * kTimeStride;
  const int bias_words = smem_pos + (want_time ? kTimeCopies * kTimeStride : 0);
  for (int e = threadIdx.x; want_bias && e < bias_words; e += blockDim.x) s_bias[e] = 0.0f;
  SlotRun runs[2];  // this thread's two rows
  [[maybe_unused]] uint64_t* stage_ready =
      stage_barriers<D, key_smem_bytes<T, D, kBias, G>(true)>(smem);
  [[maybe_unused]] uint32_t phases = 0;  // kTma: bit s is the parity of stage s's next phase

  for (int tile = work.rank; tile * kKeys < s.length; tile += p.num_tiles) {
    const int j0 = tile * kKeys;
    const int j_last = min(j0 + kKeys, s.length) - 1;
    const int jg = j0 + group * kRows;  // this warpgroup's first key
    // Queries that can see keys [j0, j_last]: from the first key on (contexts see all), to
    // the end, or only the keys themselves when they are targets, or to the end of the window.
    const int i_begin = s.mask.contexts > 0 ? 0 : j0 / kCols * kCols;
    int i_end = s.length;
    if (s.mask.contexts == 0 && j0 >= s.mask.history) {
      i_end = j_last + 1;
    } else if (s.mask.contexts == 0 && s.mask.history == s.length && s.mask.window > 0) {
      i_end = min(s.length, j_last + static_cast<int>(s.mask.window) + 1);
    }

    __syncthreads();
    if constexpr (kTma) {
#if GENREC_WGMMA
      if (threadIdx.x == 0 && i_begin < i_end) {  // K and V count on the first stage's barrier
        tma::expect_bytes(stage_ready, 2 * G * kRows * D * sizeof(T));
        for (int g = 0; g < G; ++g) {
          copy_rows<D>(s_k + g * kRows * LD, maps.k, stage_ready, h, s.kv_start + j0 + g * kRows);
          copy_rows<D>(s_v + g * kRows * LD, maps.v, stage_ready, h, s.kv_start + j0 + g * kRows);
        }
      }
#endif
    } else {
      const int row = min(jg, j_last);  // a warpgroup past the end reads nothing from a valid row
      load_tile<D>(my_k, k + (s.kv_start + row) * p.ld_k + h * D, p.ld_k, s.length - jg);
      load_tile<D>(my_v, v + (s.kv_start + row) * p.ld_v + h * D, p.ld_v, s.length - jg);
    }
    // A stage's time slot tile of warpgroup g (query tile i0 / 64 against its key tile).
    auto slot_tile = [&](int stage, int g) { return s_slots + (stage * G + g) * kSlotTile; };
    // With TMA the calling thread issues a stage's copies; load_queries has thread 0 do it.
    auto copy_queries = [&]([[maybe_unused]] int i0, [[maybe_unused]] int stage) {
#if GENREC_WGMMA
      tma::arrive_expecting(stage_ready + stage, 2 * kCols * D * sizeof(T));
      copy_rows<D>(s_q + stage * kCols * LD, maps.q, stage_ready + stage, h, s.kv_start + i0);
      copy_rows<D>(s_do + stage * kCols * LD, maps.d_out, stage_ready + stage, h, s.kv_start + i0);
#endif
    };
    auto load_queries = [&](int i0, int stage) {
      if constexpr (kTma) {
        if (threadIdx.x == 0) copy_queries(i0, stage);
      } else {
        T* dst_q = s_q + stage * kCols * LD;
        T* dst_do = s_do + stage * kCols * LD;
        load_stage<D, G>(dst_q, dst_do, q, p.ld_q, d_out, p.ld_o, s, h, i0);
      }
      if constexpr (kTime) load_slots(slot_tile(stage, group), p, bs, s, i0 / kCols, jg / kCols);
    };
    if (i_begin < i_end) load_queries(i_begin, 0);
    if (kHandOff && i_begin + kCols < i_end) load_queries(i_begin + kCols, 1);
    cp_async_commit();
    constexpr int kDiagonals = kKeys + kCols - 1;
    auto lowest_diagonal = [&](int i0) { return i0 - j0 - (kKeys - 1); };
    float next_diagonal = kPos ? fetch_diagonal(p, lowest_diagonal(i_begin), kDiagonals) : 0.0f;

    float acc_k[D / 8][4], acc_v[D / 8][4];
    zero(acc_k);
    zero(acc_v);

    // dQ = sum over warpgroups g of dZ_g K_g: with wgmma by columns (each warpgroup D / G of
    // them over every key tile) when that is a whole chunk, else each warpgroup all columns over
    // its own keys (mma.sync always: it never runs with two warpgroups on a measured machine).
    // kDeferDq: a step's dZ tiles go to buffer `stage` (a buffer holds the G warpgroups' tiles
    // one after another) and its dQ is issued with the next step's scores.
    constexpr bool kByColumns = kWg<D> && G > 1 && D / G >= kDqWidth<D>;
    constexpr int kDqTiles = kByColumns ? G : 1;
    constexpr int kDqSpan = kByColumns ? D / G : D;
    auto dz_buffer = [&](int b) { return s_dz + (kDeferDq ? b : 0) * G * kDzTile; };
    auto my_dz = [&](int b) { return dz_buffer(b) + group * kDzTile; };  // this warpgroup's tile
    auto dz_tiles = [&](int b) { return kByColumns ? dz_buffer(b) : my_dz(b); };
    const T* k_tiles = kByColumns ? s_k : my_k;
    const int c_first = kByColumns ? group * kDqSpan : 0;
    float dq[kDqWidth<D> / 8][4];
    auto issue_first_dq = [&](int b) {  // dQ's first chunk from the dZ tiles of buffer b
      issue_dq<D, kDqTiles>(dq, dz_tiles(b), k_tiles, c_first);
      commit_products<D>();
    };
    // Adds the issued first chunk (retired) of query tile i0's dQ, then multiplies and adds the
    // others; `add` false drops them.
    auto finish_dq = [&](int i0, int b, bool add) {
      if (add) add_dq<D>(p, s, h, i0, c_first, dq, my_dq);
#pragma unroll
      for (int c0 = c_first + kDqWidth<D>; c0 < c_first + kDqSpan; c0 += kDqWidth<D>) {
        issue_dq<D, kDqTiles>(dq, dz_tiles(b), k_tiles, c0);
        commit_products<D>();
        wait_products<D, 0>(dq);
        if (add) add_dq<D>(p, s, h, i0, c0, dq, my_dq);
      }
    };

    int stage = 0;  // also the dZ buffer of the step
    for (int i0 = i_begin; i0 < i_end; i0 += kCols, stage ^= 1) {
      if (!kHandOff && i0 + kCols < i_end) load_queries(i0 + kCols, stage ^ 1);
      cp_async_commit();
      // A warpgroup's tile is a candidate only if the first one's is: its keys come later.
      const bool diagonal = kBias && diagonal_tile(s, jg, i0);
      if (kPos && diagonal_tile(s, j0, i0)) stage_diagonals(bs, kDiagonals, next_diagonal);
      if (kPos) next_diagonal = fetch_diagonal(p, lowest_diagonal(i0 + kCols), kDiagonals);
      // Tiles that cross the sequence's end: this stage's Q and dO, and with the first stage the
      // block's K (V's rows past it only meet masked scores).
      wait_tiles<D, kBias>(stage_ready, phases, stage, [&] {
        const bool q_tail = i0 + kCols > s.length;
        const bool k_tail = i0 == i_begin && j0 + kKeys > s.length;
        if (q_tail) {
          zero_tail<D>(s_q + stage * kCols * LD, s.length - i0);
          zero_tail<D>(s_do + stage * kCols * LD, s.length - i0);
        }
        for (int g = 0; k_tail && g < G; ++g) {
          zero_tail<D>(s_k + g * kRows * LD, s.length - (j0 + g * kRows));
        }
        return q_tail || k_tail;
      });
      const T* tq = s_q + stage * kCols * LD;
      const T* tdo = s_do + stage * kCols * LD;
      const uint8_t* slots = slot_tile(stage, group);

      float sc[8][4], dp[8][4];
      issue_scores<D>(dp, my_v, tdo);
      issue_scores<D>(sc, my_k, tq);
      commit_products<D>();
      // kDeferDq: the previous query tile's dQ, issued every step (at the first tile it
      // multiplies a stale buffer and is dropped: an issue under a condition makes ptxas
      // serialise the pipeline).
      if (kHandOff && i0 > i_begin) wait_for_other_group(dz_hand_off(group, stage ^ 1));
      if constexpr (kDeferDq) issue_first_dq(stage ^ 1);
      wait_products<D, (kDeferDq ? 1 : 0)>(dp, sc);
      // Scores -> Pᵀ (in sc) and dZᵀ (in dp), and the bias gradients.
      auto activate = [&](auto masked, auto diagonal_bias) {
        [[maybe_unused]] constexpr bool kDiagonal = decltype(diagonal_bias)::value;
        // The time slot of a pair: the tile is [query][key].
        auto time_bucket = [&](int row, int col) { return slots[slot_offset(col, row)]; };
        auto pre = [&](int n, int e, int, int row, int col) {
          float z = p.alpha * sc[n][e];
          if constexpr (kPos) {
            z += position_bias<kDiagonal>(
                p, s, bs->diagonal + (col - row + kKeys - 1 - group * kRows), i0 + col, jg + row);
          }
          if constexpr (kTime) z += bs->time[time_bucket(row, col)];
          return z;
        };
        auto post = [&](int n, int e, int half, int row, int col, float z, float t) {
          const int j = jg + row, i = i0 + col;
          // With x = z / 2, t = tanh x and sig = sigmoid(z) / N: P = z sig and dZ = dP / N
          // sigmoid(z) (1 + z (1 - sigmoid(z))) = u (1 + x (1 - t)), u = dP sig.
          const float x = 0.5f * z, sig = sigmoid_over_n(t, p.half_inv_n);
          const float u = dp[n][e] * sig;
          bool keep = true;
          if constexpr (decltype(masked)::value) {
            keep = s.pairs.visible(i, j);
          }
          const float g = keep ? fmaf(u, fmaf(-x, t, x), u) : 0.0f;
          sc[n][e] = keep ? z * sig : 0.0f;
          dp[n][e] = g;
          if constexpr (kBias != kNoBias) {
            if (!kDiagonal && want_pos) {
              add_position_gradient(p, s_bias, smem_pos,
                                    min(static_cast<int>(s.mask.relative(i, j)), p.num_pos - 1), g);
            }
            if (want_time) runs[half].add(time_bucket(row, col), g, my_time);
          }
        };
        if constexpr (kTime) {  // with the position bias alone it spilled and ran 2% slower
          for_each_score_pair(pre, post);
        } else {
          for_each_score([&](int n, int e, int half, int row, int col) {
            const float z = pre(n, e, half, row, col);
            post(n, e, half, row, col, z, tanh_approx(0.5f * z));
          });
        }
      };
      const bool masked = s.mask.contexts > 0 || s.mask.window > 0 || i0 < jg + kRows ||
                          jg + kRows > s.mask.history || i0 + kCols > s.length;
      if (diagonal && masked) {
        activate(std::true_type{}, std::true_type{});
      } else if (diagonal) {
        activate(std::false_type{}, std::true_type{});
      } else if (kBias || masked) {
        activate(std::true_type{}, std::false_type{});
      } else {
        activate(std::false_type{}, std::false_type{});
      }
      // wgmma: dZ is staged for dQ first; dV and dK then run on the tensor cores while dQ's first
      // columns are added to the sums. mma.sync: dV and dK first, which frees P and dZ.
      uint32_t pf[4][4], zf[4][4];
      score_fragments<T>(pf, sc);
      score_fragments<T>(zf, dp);
      auto issue_dkv = [&] {
        issue_score_product<D>(acc_v, pf, tdo);
        issue_score_product<D>(acc_k, zf, tq);
        commit_products<D>();
      };
      if constexpr (!kWg<D>) issue_dkv();
      // kDeferDq: the previous tile's dQ has read this buffer (it ran during the activation).
      if constexpr (kDeferDq) wait_products<D, 0>(dq);
      stage_dz<D>(my_dz(stage), zf);
      shared_written<D>();
      // No barrier of this warpgroup first: its own wait for the other's tile, a barrier of both
      // warpgroups' threads, also finds this tile complete for its own dQ.
      if constexpr (kHandOff) arrive_for_other_group(dz_hand_off(group ^ 1, stage));
      if constexpr (!kDeferDq) {
        __syncthreads();  // the staged dZ is complete
        if (diagonal && want_pos) {
          add_diagonal_gradients<D>(p, my_dz(stage), s_bias, smem_pos, i0 - jg);
        }
        issue_first_dq(stage);
      }
      if constexpr (kWg<D>) issue_dkv();
      wait_products<D, 1>(dq);
      finish_dq(kDeferDq ? i0 - kCols : i0, kDeferDq ? stage ^ 1 : stage,
                !kDeferDq || i0 > i_begin);
      wait_products<D, 0>(acc_v, acc_k, pf, zf);
      if constexpr (kHandOff) {
        // The warp that finishes with the stage last (every warp has waited for its products)
        // hands it to the copies of tile i0 + 128.
        __syncwarp();
        if (lane == 0) {
          __threadfence_block();
          if (atomicAdd(stage_users + stage, 1) == kWarps * G - 1) {
            stage_users[stage] = 0;
            __threadfence_block();
            if (i0 + 2 * kCols < i_end) copy_queries(i0 + 2 * kCols, stage);
          }
        }
      } else {
        __syncthreads();  // this stage is free for the next copies; kDeferDq: both dZ are staged
      }
      if (kDeferDq && diagonal && want_pos) {
        add_diagonal_gradients<D>(p, my_dz(stage), s_bias, smem_pos, i0 - jg);
      }
    }
    if (kDeferDq && i_begin < i_end) {  // the last query tile's dQ
      if constexpr (kHandOff) wait_for_other_group(dz_hand_off(group, stage ^ 1));
      issue_first_dq(stage ^ 1);
      wait_products<D, 0>(dq);
      finish_dq(i_begin + (i_end - i_begin - 1) / kCols * kCols, stage ^ 1, true);
    }
    cp_async_wait<0>();
    __syncthreads();  // the query stages are free: dK and dV leave through them
    T* out_stage = s_q + 2 * group * kCols * LD;  // two of the four stage tiles per warpgroup
    store_rows<D>(d_k + s.kv_start * p.ld_k + h * D, p.ld_k, jg, s.length, acc_k, p.alpha,
                  out_stage);
    store_rows<D>(d_v + s.kv_start * p.ld_v + h * D, p.ld_v, jg, s.length, acc_v, 1.0f,
                  out_stage + kCols * LD);
    // The next tile's copies overwrite these stages: order the stores before them.
    if constexpr (kTma) shared_written<D>();
  }
#if GENREC_WGMMA
  if constexpr (kWg<D>) finish_dq_bulk();
#endif
  if (want_bias) {
    runs[0].flush(my_time);
    runs[1].flush(my_time);
    __syncthreads();
    const int time_slots = want_time ? p.acc_time : 0;
    for (int e = threadIdx.x; e < smem_pos + time_slots; e += blockDim.x) {
      float sum = 0.0f;
      if (e < smem_pos) {
        sum = s_bias[e];
      } else {
        for (int c = 0; c < kTimeCopies; ++c) sum += s_time[c * kTimeStride + e - smem_pos];
      }
      if (sum != 0.0f) {
        atomicAdd(p.bias_acc + (e < smem_pos ? e : p.acc_pos + (e - smem_pos)),
                  static_cast<double>(sum));
      }
    }
  }
}

// ---- time slot matrix -----------------------------------------------------------------------

// Tile (blockIdx.x / slot_k_tiles, blockIdx.x % slot_k_tiles) of sequence blockIdx.y's slots,
// row-major (load_slots rotates its chunks on the way into shared memory). Tiles past the
// sequence's end are never read and stay unwritten.
constexpr int kSlotThreads = 256;
__global__ void __launch_bounds__(kSlotThreads)
    slot_matrix_kernel(Params p, uint8_t* __restrict__ slots) {
  __shared__ TimeBuckets buckets;
  __shared__ __align__(16) uint8_t tile[kSlotTile];
  const int qt = static_cast<int>(blockIdx.x) / p.slot_k_tiles;
  const int kt = static_cast<int>(blockIdx.x) % p.slot_k_tiles;
  const Sequence s = sequence(p, blockIdx.y);
  if (qt * kRows >= s.q_len || kt * kCols >= s.length) return;
  copy_buckets(&buckets, p.buckets);
  __syncthreads();
  compute_slots(
      tile, [](int r, int c) { return r * kCols + c; }, p, buckets, s, qt, kt, threadIdx.x,
      kSlotThreads);
  __syncthreads();
  uint4* dst = reinterpret_cast<uint4*>(slots + blockIdx.y * p.slot_stride +
                                        static_cast<int64_t>(blockIdx.x) * kSlotTile);
  for (int e = threadIdx.x; e < kSlotTile / 16; e += kSlotThreads) {
    dst[e] = reinterpret_cast<const uint4*>(tile)[e];
  }
}

// out [rows, cols] = the sum of the key splits' fp32 parts (each part_rows x cols), rounded to
// T; rows = q_offsets[batch], read here (the host only knows a bound: more rows than the parts
// hold broke the caller's max_new, and the kernel fails). 8 columns at a time.
template <typename T>
__global__ void sum_parts_kernel(T* __restrict__ out, const float* __restrict__ parts, int splits,
                                 int64_t part_rows, const int64_t* __restrict__ q_offsets,
                                 int64_t batch, int64_t cols) {
  if (q_offsets[batch] > part_rows) __trap();
  const int64_t n = q_offsets[batch] * cols;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = 8 * (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x); e < n;
       e += 8 * stride) {
    float4 lo = make_float4(0, 0, 0, 0), hi = lo;
    for (int k = 0; k < splits; ++k) {
      const float* part = parts + k * part_rows * cols + e;
      const float4 a = *reinterpret_cast<const float4*>(part);
      const float4 b = *reinterpret_cast<const float4*>(part + 4);
      lo = make_float4(lo.x + a.x, lo.y + a.y, lo.z + a.z, lo.w + a.w);
      hi = make_float4(hi.x + b.x, hi.y + b.y, hi.z + b.z, hi.w + b.w);
    }
    *reinterpret_cast<uint4*>(out + e) = pack8<T>(lo, hi, 1.0f);
  }
}

// Zeroes the fp32 dQ sums (`planes` blocks of `width` columns per token) from the last token to
// the first: the first tokens' rows, which the key kernel's first block group adds into, are
// written last and so are the ones still in L2 when it starts.
__global__ void zero_dq_kernel(float* __restrict__ acc, int64_t tokens, int planes, int width) {
  allow_next_grid();
  const int per_token = planes * width / 4;  // float4 chunks
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       e < tokens * per_token; e += stride) {
    const int64_t token = tokens - 1 - e / per_token;
    const int chunk = static_cast<int>(e % per_token), plane = chunk / (width / 4);
    reinterpret_cast<float4*>(acc + (plane * tokens + token) * width)[chunk % (width / 4)] =
        make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }
}

// d_q = alpha times the fp32 sums (laid out as dq_row says, blocks of `width` >= 32 columns),
// rounded to T, in rows ld_q apart; 8 columns of a token at a time (two 16-byte chunks of one
// block). From the last token to the first, so that the last block group's sums, the ones still
// in L2, are read first; each 128-byte line of sums, once its four readers have read it, is
// dropped from L2 without being written back (the sums are dead: every call zeroes them first).
template <typename T>
__global__ void store_dq_kernel(T* __restrict__ d_q, int64_t ld_q, const float* __restrict__ acc,
                                int64_t tokens, int heads, int dim, int width, float alpha) {
  wait_for_previous_grid();  // the key kernel's sums are complete
  const int64_t per_token = heads * dim / 8;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       e < tokens * per_token; e += stride) {
    const int64_t token = tokens - 1 - e / per_token;
    const int col = static_cast<int>(e % per_token) * 8, h = col / dim, c = col % dim;
    const float* row = acc + dq_offset(h, c, token, tokens, dim, width);
    const float4 lo = *reinterpret_cast<const float4*>(row + dq_column(c % width, token));
    const float4 hi = *reinterpret_cast<const float4*>(row + dq_column(c % width + 4, token));
    *reinterpret_cast<uint4*>(d_q + token * ld_q + col) = pack8<T>(lo, hi, alpha);
    __syncwarp(__activemask());  // the line's four readers (lanes 4k..4k+3) have their values
    if (c % 32 == 0) {
      asm volatile("discard.global.L2 [%0], 128;\n" ::"l"(row + c % width) : "memory");
    }
  }
}

__global__ void add_bias_grads_kernel(float* __restrict__ d_bias, const double* __restrict__ acc,
                                      int64_t n) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e < n) d_bias[e] += static_cast<float>(acc[e]);
}

// ---- host side ------------------------------------------------------------------------------

// The device copy of the CPU op's bucket table (thresholds as int64, capped at INT64_MAX).
const TimeBuckets& time_buckets() {
  static const TimeBuckets table = [] {
    const cpu::HstuTimeBuckets& cpu_table = cpu::HstuTimeBuckets::get();
    GENREC_CHECK(cpu_table.max_bucket() + 4 <= kTimeSlots + 4,
                 "time bucket table too small for bucket {}", cpu_table.max_bucket());
    TimeBuckets t{};
    for (int b = 0; b < kTimeSlots + 4; ++b) {
      t.threshold[b] = static_cast<int64_t>(
          std::min<uint64_t>(cpu_table.threshold(b), std::numeric_limits<int64_t>::max()));
    }
    for (int e = 0; e < 64; ++e) t.start[e] = cpu_table.start(e);
    return t;
  }();
  return table;
}

Params make_params(const int64_t* kv_offsets, const int64_t* q_offsets, int64_t batch_size,
                   const cpu::HstuAttentionShape& shape, const cpu::HstuRelativeBias& bias,
                   const HstuMask& mask, int64_t max_rows) {
  GENREC_CHECK(hstu_fused_supported(shape, batch_size),
               "fused hstu attention: unsupported shape (heads {}, dims {}/{}, batch {})",
               shape.num_heads, shape.dim_qk, shape.dim_v, batch_size);
  GENREC_CHECK(bias.position == nullptr || bias.num_positions >= 1,
               "fused hstu attention: position bias with {} positions", bias.num_positions);
  GENREC_CHECK(bias.time == nullptr || (bias.num_time_buckets >= 1 && bias.timestamps != nullptr),
               "fused hstu attention: time bias needs timestamps and >= 1 bucket (got {})",
               bias.num_time_buckets);
  GENREC_CHECK(mask.num_contexts >= 0 && mask.max_attn_len >= 0 && max_rows >= 0 &&
                   max_rows < (int64_t{1} << 30),
               "fused hstu attention: bad mask (contexts {}, max_attn_len {}) or max_len {}",
               mask.num_contexts, mask.max_attn_len, max_rows);
  Params p{};
  p.kv_offsets = kv_offsets;
  p.q_offsets = q_offsets;
  p.mask = mask;
  p.num_tiles = static_cast<int>(std::max<int64_t>(1, ceil_div(max_rows, kRows)));
  p.num_heads = static_cast<int>(shape.num_heads);
  p.batch_size = static_cast<int>(batch_size);
  p.groups = {};  // set by the launch (group_pairs)
  p.key_splits = 1;
  p.ld_q = shape.ld_q;
  p.ld_k = shape.ld_k;
  p.ld_v = shape.ld_v;
  p.ld_o = shape.num_heads * shape.dim_v;
  p.alpha = shape.alpha;
  p.half_inv_n = shape.inv_n / 2;
  p.pos = bias.position;
  p.num_pos = static_cast<int>(std::min<int64_t>(bias.num_positions, 1 << 30));
  p.time = bias.time;
  p.num_time = static_cast<int>(std::min<int64_t>(bias.num_time_buckets, kTimeSlots));
  p.timestamps = bias.timestamps;
  if (p.time != nullptr) p.buckets = time_buckets();
  return p;
}

// The block order of a launch whose blocks of a pair share `bytes_per_pair` of rows: groups
// within a third of L2.
void group_pairs(Params& p, int64_t bytes_per_pair) {
  p.groups = block_groups(static_cast<int64_t>(p.num_heads) * p.batch_size, bytes_per_pair,
                          detail::device_attribute<cudaDevAttrL2CacheSize>() / 3);
}

// kernel<<<grid, block, smem, stream>>>(args...), as a programmatic dependent launch when
// `dependent` (sm_90: the kernel waits for the previous one with wait_for_previous_grid).
template <typename... Params, typename... Args>
void launch_kernel(bool dependent, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                   cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &attribute;
  config.numAttrs = dependent ? 1 : 0;
  GENREC_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

// Blocks of a 1-D grid of `tiles` per (sequence, head) pair (block_work).
unsigned grid_blocks(const Params& p, int64_t tiles) {
  const int64_t blocks = tiles * p.num_heads * p.batch_size;
  GENREC_CHECK(blocks < (int64_t{1} << 31),
               "fused hstu attention: {} blocks ({} tiles x {} heads x {} sequences) exceed a grid",
               blocks, tiles, p.num_heads, p.batch_size);
  return static_cast<unsigned>(blocks);
}

// Runs launch(chunk) over the batch in chunks of sequences (their Params) whose slot matrix fits
// kSlotBudget, each after slot_matrix_kernel has written the chunk's matrix. q_rows and kv_rows
// bound a sequence's query rows and kv tokens: they size the matrix (the kernels compute the
// tiles of a longer sequence that lie past it). Without a time bias, or when one sequence's
// matrix alone would pass the budget (max_len > 16384), launch(p) once and without a matrix:
// the kernels then compute every slot tile.
template <typename F>
void for_each_slot_chunk(const Params& p, int64_t q_rows, int64_t kv_rows, cudaStream_t stream,
                         F&& launch) {
  const int64_t q_tiles = std::max<int64_t>(1, ceil_div(q_rows, kRows));
  const int64_t k_tiles = std::max<int64_t>(1, ceil_div(kv_rows, kCols));
  const int64_t tiles = q_tiles * k_tiles;  // per sequence
  if (p.time == nullptr || tiles > kSlotBudget / kSlotTile) {
    launch(p);
    return;
  }
  Params chunk = p;
  chunk.slot_q_tiles = static_cast<int>(q_tiles);
  chunk.slot_k_tiles = static_cast<int>(k_tiles);
  chunk.slot_stride = tiles * kSlotTile;
  const int64_t per_chunk = std::clamp<int64_t>(kSlotBudget / chunk.slot_stride, 1, p.batch_size);
  DeviceBuffer<uint8_t> slots(per_chunk * chunk.slot_stride, stream);
  chunk.slots = slots.data();
  for (int64_t b0 = 0; b0 < p.batch_size; b0 += per_chunk) {
    chunk.batch_size = static_cast<int>(std::min<int64_t>(per_chunk, p.batch_size - b0));
    chunk.kv_offsets = p.kv_offsets + b0;
    chunk.q_offsets = p.q_offsets + b0;
    if (p.mask.num_targets != nullptr) chunk.mask.num_targets = p.mask.num_targets + b0;
    slot_matrix_kernel<<<dim3(static_cast<unsigned>(tiles),
                              static_cast<unsigned>(chunk.batch_size)),
                         kSlotThreads, 0, stream>>>(chunk, slots.data());
    GENREC_CUDA_LAUNCH_CHECK("fused hstu attention (time slots)");
    launch(chunk);
  }
}

template <typename Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  GENREC_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(bytes)));
}

// Calls f(integral_constant D, integral_constant bias) for the head dim and the relative biases
// that apply (a Bias mask): a kernel carries the code of its biases only.
template <typename F>
void with_dim_and_bias(int64_t dim, const Params& p, F&& f) {
  auto with_bias = [&](auto d) {
    const bool pos = p.pos != nullptr, time = p.time != nullptr;
    if (pos && time) {
      f(d, std::integral_constant<int, kPositionBias | kTimeBias>{});
    } else if (pos) {
      f(d, std::integral_constant<int, kPositionBias>{});
    } else if (time) {
      f(d, std::integral_constant<int, kTimeBias>{});
    } else {
      f(d, std::integral_constant<int, kNoBias>{});
    }
  };
  if (dim == 32) {
    with_bias(std::integral_constant<int, 32>{});
  } else if (dim == 64) {
    with_bias(std::integral_constant<int, 64>{});
  } else {
    with_bias(std::integral_constant<int, 128>{});
  }
}

// Whether the device runs the sm_90a code (Hopper): elsewhere the sm_80 code, or PTX built from
// it, runs, which has no wgmma path and no programmatic launch (wait_for_previous_grid).
bool sm90a_code() {
  return detail::device_attribute<cudaDevAttrComputeCapabilityMajor>() == 9;
}

// Whether the kernels for head dim `dim` may run their wgmma code (kWg<D>, which the host cannot
// see): with the sm_90a code at D >= 64. The host then sizes their shared memory for it and hands
// them tensor maps.
bool wgmma_path(int64_t dim) {
  return sm90a_code() && dim >= 64;
}

// The maps of q, k, v (and d_out) for the wgmma kernels; empty elsewhere.
template <typename T>
TileMaps tile_maps(const Params& p, int64_t dim, const T* q, int64_t q_tokens, const T* k,
                   const T* v, int64_t kv_tokens, const T* d_out = nullptr) {
  TileMaps maps{};
  if (!wgmma_path(dim)) return maps;
  maps.q = head_slice_map(q, q_tokens, p.num_heads, dim, p.ld_q);
  maps.k = head_slice_map(k, kv_tokens, p.num_heads, dim, p.ld_k);
  maps.v = head_slice_map(v, kv_tokens, p.num_heads, dim, p.ld_v);
  if (d_out != nullptr) maps.d_out = head_slice_map(d_out, q_tokens, p.num_heads, dim, p.ld_o);
  return maps;
}

template <typename T>
void launch_query(Params p, T* out, const T* q, const T* k, const T* v, const TileMaps& maps,
                  int64_t dim, int64_t kv_rows, cudaStream_t stream) {
  // The blocks of a pair share its K and V.
  group_pairs(p, kv_rows * dim * 2 * static_cast<int64_t>(sizeof(T)));
  with_dim_and_bias(dim, p, [&](auto d, auto has_bias) {
    constexpr int D = decltype(d)::value;
    constexpr int kBias = decltype(has_bias)::value;
    auto launch = [&](auto split, auto halves) {
      constexpr int kHalves = decltype(halves)::value;
      constexpr size_t bytes = query_smem_bytes<T, D, kBias, kHalves>();
      auto kernel = query_kernel<T, D, kBias, decltype(split)::value, kHalves>;
      Params kp = p;
      kp.num_tiles = static_cast<int>(ceil_div(p.num_tiles, kHalves));  // of kHalves * 64 rows
      allow_smem(kernel, bytes);
      kernel<<<grid_blocks(kp, kp.num_tiles * kp.key_splits), kThreads, bytes, stream>>>(
          kp, out, q, k, v, maps);
    };
    // Two halves per block where that kernel is built: unbiased, D = 128, wgmma.
    constexpr int kHalves = kBias == kNoBias && D == 128 ? 2 : 1;
    using One = std::integral_constant<int, 1>;
    if (p.key_splits > 1) {
      launch(std::true_type{}, One{});
    } else if (wgmma_path(dim)) {
      launch(std::false_type{}, std::integral_constant<int, kHalves>{});
    } else {
      launch(std::false_type{}, One{});
    }
  });
}

}  // namespace

bool hstu_fused_supported(const cpu::HstuAttentionShape& shape, int64_t batch_size, const void* q,
                          const void* k, const void* v) {
  const int64_t d = shape.dim_qk;
  const bool dims = d == shape.dim_v && (d == 32 || d == 64 || d == 128);
  const bool strides = shape.ld_q % 8 == 0 && shape.ld_k % 8 == 0 && shape.ld_v % 8 == 0 &&
                       shape.ld_q >= shape.num_heads * d && shape.ld_k >= shape.num_heads * d &&
                       shape.ld_v >= shape.num_heads * d;
  return dims && strides && shape.num_heads >= 1 && shape.num_heads <= 65535 && batch_size >= 0 &&
         batch_size <= 65535 && aligned16(q) && aligned16(k) && aligned16(v);
}

template <typename T>
void hstu_attention_fused_forward(T* out, const T* q, const T* k, const T* v,
                                  const int64_t* offsets, int64_t batch_size, int64_t num_tokens,
                                  const cpu::HstuAttentionShape& shape,
                                  const cpu::HstuRelativeBias& bias, const HstuMask& mask,
                                  int64_t max_len, cudaStream_t stream) {
  // No split of the keys: a sequence may be longer than max_len here, and the parts are sized
  // by it.
  hstu_attention_cached_forward(out, q, offsets, k, v, offsets, batch_size, num_tokens, num_tokens,
                                shape, bias, mask, max_len, 0, stream);
}

template <typename T>
void hstu_attention_cached_forward(T* out, const T* q, const int64_t* q_offsets, const T* k,
                                   const T* v, const int64_t* kv_offsets, int64_t batch_size,
                                   int64_t q_tokens, int64_t kv_tokens,
                                   const cpu::HstuAttentionShape& shape,
                                   const cpu::HstuRelativeBias& bias, const HstuMask& mask,
                                   int64_t max_new, int64_t max_len, cudaStream_t stream) {
  GENREC_CHECK(aligned16(out) && aligned16(q) && aligned16(k) && aligned16(v),
               "fused hstu attention: q, k, v and out must be 16-byte aligned");
  GENREC_CHECK(max_new >= 0 && max_len >= 0 && q_tokens >= 0 && kv_tokens >= 0,
               "fused hstu attention: max_new {}, max_len {}, {} query and {} key tokens", max_new,
               max_len, q_tokens, kv_tokens);
  if (batch_size == 0 || q_tokens == 0) return;
  Params p = make_params(kv_offsets, q_offsets, batch_size, shape, bias, mask, max_new);
  // A few new tokens per sequence make a few blocks that each stream the whole history. Split
  // the key tiles over up to a wave of blocks; their fp32 parts then add up (SiLU attention has
  // no softmax to renormalise).
  const int64_t blocks = p.num_tiles * shape.num_heads * batch_size;
  const int64_t wave = 2 * static_cast<int64_t>(detail::sm_count());  // two blocks fit an SM
  p.key_splits = static_cast<int>(std::clamp<int64_t>(
      std::min(wave / std::max<int64_t>(blocks, 1), ceil_div(max_len, kCols)), 1, 64));
  const int64_t cols = shape.num_heads * shape.dim_v;
  if (p.key_splits > 1) p.part_rows = batch_size * max_new;
  DeviceBuffer<float> parts(p.key_splits > 1 ? p.key_splits * p.part_rows * cols : 0, stream);
  p.partial = parts.data();
  const int64_t kv_rows = std::max(max_new, max_len);
  const TileMaps maps = tile_maps(p, shape.dim_qk, q, q_tokens, k, v, kv_tokens);
  for_each_slot_chunk(p, max_new, kv_rows, stream, [&](const Params& chunk) {
    launch_query<T>(chunk, out, q, k, v, maps, shape.dim_qk, kv_rows, stream);
    GENREC_CUDA_LAUNCH_CHECK("hstu_attention_cached_forward");
  });
  if (p.key_splits > 1) {
    sum_parts_kernel<T>
        <<<detail::grid_for(p.part_rows * cols / 8, detail::kThreads), detail::kThreads, 0,
           stream>>>(out, p.partial, p.key_splits, p.part_rows, q_offsets, batch_size, cols);
    GENREC_CUDA_LAUNCH_CHECK("hstu_attention_cached_forward (sum of parts)");
  }
}

template <typename T>
void hstu_attention_fused_backward(T* d_q, T* d_k, T* d_v, float* d_position_bias,
                                   float* d_time_bias, const T* d_out, const T* q, const T* k,
                                   const T* v, const int64_t* offsets, int64_t batch_size,
                                   int64_t num_tokens, const cpu::HstuAttentionShape& shape,
                                   const cpu::HstuRelativeBias& bias, const HstuMask& mask,
                                   int64_t max_len, cudaStream_t stream) {
  GENREC_CHECK(aligned16(d_q) && aligned16(d_k) && aligned16(d_v) && aligned16(d_out) &&
                   aligned16(q) && aligned16(k) && aligned16(v),
               "fused hstu attention: inputs and gradients must be 16-byte aligned");
  GENREC_CHECK(num_tokens >= 0, "fused hstu attention: {} tokens", num_tokens);
  if (batch_size == 0 || num_tokens == 0) return;  // no rows: nothing to write or add
  Params p = make_params(offsets, offsets, batch_size, shape, bias, mask, max_len);
  const bool want_pos = d_position_bias != nullptr && bias.position != nullptr;
  const bool want_time = d_time_bias != nullptr && bias.time != nullptr;
  p.acc_pos = want_pos ? p.num_pos : 0;
  p.acc_time = want_time ? p.num_time : 0;
  DeviceBuffer<double> bias_sums(p.acc_pos + p.acc_time, stream);
  p.bias_acc = bias_sums.data();  // null without bias gradients
  if (p.bias_acc != nullptr) {
    GENREC_CUDA_CHECK(cudaMemsetAsync(p.bias_acc, 0, bias_sums.bytes(), stream));
  }
  // The key kernel adds dZ K into fp32 sums of H * D per token (dq_row).
  const int64_t dq_elements = num_tokens * p.ld_o;
  p.dq_tokens = num_tokens;
  DeviceBuffer<float> dq_sums(dq_elements, stream);
  p.dq_acc = dq_sums.data();
  // Zeroed by a kernel, not a memset, so that the key kernel can start as it ends (below).
  const int dq_width = static_cast<int>(std::min<int64_t>(shape.dim_qk, kDqCols));
  const int dq_planes = static_cast<int>(shape.num_heads * shape.dim_qk / dq_width);
  zero_dq_kernel<<<detail::grid_for(num_tokens * dq_planes * dq_width / 4, detail::kThreads),
                   detail::kThreads, 0, stream>>>(p.dq_acc, num_tokens, dq_planes, dq_width);
  GENREC_CUDA_LAUNCH_CHECK("hstu_attention_fused_backward (zero dq)");
  // On Hopper the unbiased key kernel and store_dq_kernel are programmatic dependent launches:
  // each one's blocks take the multiprocessors as the kernel before leaves them (the biased key
  // kernels were not measured with it).
  const bool dependent = sm90a_code();
  const TileMaps maps = tile_maps(p, shape.dim_qk, q, num_tokens, k, v, num_tokens, d_out);
  for_each_slot_chunk(p, max_len, max_len, stream, [&](const Params& chunk) {
    with_dim_and_bias(shape.dim_qk, chunk, [&](auto d, auto has_bias) {
      constexpr int D = decltype(d)::value;
      constexpr int kBias = decltype(has_bias)::value;
      auto launch = [&](auto groups) {
        constexpr int G = decltype(groups)::value;
        const size_t bytes = key_smem_bytes<T, D, kBias, G>(wgmma_path(D));
        Params key_p = chunk;
        key_p.num_tiles = static_cast<int>(std::max<int64_t>(1, ceil_div(max_len, G * kRows)));
        // The blocks of a pair share its Q and dO and add into its fp32 dQ sums.
        group_pairs(key_p, max_len * D * (2 * static_cast<int64_t>(sizeof(T)) + 4));
        const dim3 grid(grid_blocks(key_p, key_p.num_tiles));
        allow_smem(key_kernel<T, D, kBias, G>, bytes);
        launch_kernel(dependent && kBias == kNoBias, key_kernel<T, D, kBias, G>, grid,
                      dim3(kThreads * G), bytes, stream, key_p, d_k, d_v, d_out, q, k, v, maps);
      };
      // Two warpgroups where the by-column dQ applies (Hopper's wgmma at D = 128); elsewhere one:
      // at D = 64 the pair measured 1.2-1.4x slower, and sm_80 has not been measured with it.
      if constexpr (D == 128) {
        if (wgmma_path(D)) {
          launch(std::integral_constant<int, 2>{});
          return;
        }
      }
      launch(std::integral_constant<int, 1>{});
    });
    GENREC_CUDA_LAUNCH_CHECK("hstu_attention_fused_backward");
  });
  launch_kernel(dependent, store_dq_kernel<T>,
                dim3(detail::grid_for(dq_elements / 8, detail::kThreads)), dim3(detail::kThreads),
                0, stream, d_q, shape.ld_q, p.dq_acc, num_tokens, static_cast<int>(shape.num_heads),
                static_cast<int>(shape.dim_qk), dq_width, shape.alpha);
  GENREC_CUDA_LAUNCH_CHECK("hstu_attention_fused_backward (dq)");
  if (p.bias_acc != nullptr) {
    constexpr int kAddThreads = 256;
    if (p.acc_pos > 0) {
      add_bias_grads_kernel<<<static_cast<unsigned>(ceil_div(p.acc_pos, kAddThreads)), kAddThreads,
                              0, stream>>>(d_position_bias, p.bias_acc, p.acc_pos);
    }
    if (p.acc_time > 0) {
      add_bias_grads_kernel<<<1, kAddThreads, 0, stream>>>(d_time_bias, p.bias_acc + p.acc_pos,
                                                           p.acc_time);
    }
    GENREC_CUDA_LAUNCH_CHECK("hstu_attention_fused_backward (bias)");
  }
}

#define GENREC_INSTANTIATE_FUSED(T)                                                                \
  template void hstu_attention_fused_forward<T>(T*, const T*, const T*, const T*, const int64_t*,  \
                                                int64_t, int64_t, const cpu::HstuAttentionShape&,  \
                                                const cpu::HstuRelativeBias&, const HstuMask&,     \
                                                int64_t, cudaStream_t);                            \
  template void hstu_attention_cached_forward<T>(                                                  \
      T*, const T*, const int64_t*, const T*, const T*, const int64_t*, int64_t, int64_t, int64_t, \
      const cpu::HstuAttentionShape&, const cpu::HstuRelativeBias&, const HstuMask&, int64_t,      \
      int64_t, cudaStream_t);
GENREC_INSTANTIATE_FUSED(__nv_bfloat16)
GENREC_INSTANTIATE_FUSED(__half)
template void hstu_attention_fused_backward<__nv_bfloat16>(
    __nv_bfloat16*, __nv_bfloat16*, __nv_bfloat16*, float*, float*, const __nv_bfloat16*,
    const __nv_bfloat16*, const __nv_bfloat16*, const __nv_bfloat16*, const int64_t*, int64_t,
    int64_t, const cpu::HstuAttentionShape&, const cpu::HstuRelativeBias&, const HstuMask&, int64_t,
    cudaStream_t);
#undef GENREC_INSTANTIATE_FUSED

}  // namespace genrec::cuda

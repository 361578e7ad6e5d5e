// HSTU attention benchmark: the fused kernels at the shapes of the public comparison (B, N, H, D;
// uniform lengths and lengths uniform in [N/2, N]), bf16, jagged [tokens, H, D] with int64
// offsets, alpha = 1/sqrt(D). Prints ms and TFLOP/s for forward and forward+backward next to
// the peer figures (H100, Triton kernel of the public HSTU reference and PyTorch SDPA), then
// the extra cost of the relative bias and of targets, the straightforward kernel for scale, and
// the KV-cache forward. Causal FLOPs: forward 2·2·L²·D·H/2 summed over sequences, backward 2.5x.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "core/cuda/caching_allocator.h"
#include "core/cuda/cuda_check.h"
#include "core/cuda/device.h"
#include "core/cuda/stream.h"
#include "core/tensor.h"
#include "cuda_bench_util.h"
#include "ops/cuda/hstu_attention.h"
#include "ops/cuda/hstu_attention_fused.h"

namespace {

using bf16 = __nv_bfloat16;
using genrec::bench::median_ms;
using genrec::bench::random_array;
using genrec::cuda::DeviceBuffer;

struct Peer {  // H100 80GB HBM3, bf16; 0 = no figure
  double triton_fwd, triton_fwd_bwd, sdpa_fwd, sdpa_fwd_bwd, goal_fwd_bwd;
};

struct Shape {
  int64_t B, N, H, D;
  bool ragged;
  Peer peer;
};

const std::vector<Shape>& shapes() {
  static const std::vector<Shape> s = {
      {32, 1024, 4, 128, false, {0.146, 0.760, 0.086, 0.409, 0.34}},
      {32, 1024, 4, 128, true, {0.100, 0.671, 0, 0, 0.19}},
      {8, 4096, 4, 128, false, {0.413, 2.414, 0.260, 1.073, 1.07}},
      {8, 4096, 4, 128, true, {0.253, 1.412, 0, 0, 0.70}},
      {128, 256, 2, 64, false, {0.082, 0.663, 0.023, 0.235, 0.19}},
      {128, 256, 2, 64, true, {0.086, 0.868, 0, 0, 0.25}},
      {16, 2048, 8, 64, false, {0.277, 1.398, 0.185, 0.755, 0.63}},
      {16, 2048, 8, 64, true, {0.161, 1.039, 0, 0, 0.45}},
  };
  return s;
}

// One jagged problem on the device: q, k, v, d_out [T, H, D], gradients, offsets, bias tables,
// timestamps and per-sequence target counts.
struct Problem {
  int64_t B, H, D, T = 0, max_len = 0;
  double causal_pairs = 0;  // Σ L(L+1)/2
  std::vector<int64_t> lengths, offsets;
  DeviceBuffer<bf16> q, k, v, d_out, out, dq, dk, dv;
  DeviceBuffer<int64_t> dev_offsets, timestamps, targets;
  DeviceBuffer<float> pos, time, d_pos, d_time;
  genrec::cpu::HstuAttentionShape shape;

  Problem(int64_t B_, int64_t N, int64_t H_, int64_t D_, bool ragged, uint64_t seed,
          cudaStream_t stream)
      : B(B_), H(H_), D(D_) {
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    offsets.push_back(0);
    for (int64_t b = 0; b < B; ++b) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      const int64_t L = ragged ? N / 2 + static_cast<int64_t>((s >> 33) % (N - N / 2 + 1)) : N;
      lengths.push_back(L);
      offsets.push_back(offsets.back() + L);
      causal_pairs += 0.5 * static_cast<double>(L) * static_cast<double>(L);
      max_len = std::max(max_len, L);
    }
    T = offsets.back();
    const int64_t n = T * H * D;
    q = random_array<bf16>(n, seed + 1, stream);
    k = random_array<bf16>(n, seed + 2, stream);
    v = random_array<bf16>(n, seed + 3, stream);
    d_out = random_array<bf16>(n, seed + 4, stream);
    out = DeviceBuffer<bf16>(n, stream);
    dq = DeviceBuffer<bf16>(n, stream);
    dk = DeviceBuffer<bf16>(n, stream);
    dv = DeviceBuffer<bf16>(n, stream);
    dev_offsets = upload(offsets, stream);
    std::vector<int64_t> ts, tgt;
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t i = 0; i < lengths[b]; ++i) ts.push_back(1700000000 + 37 * i * i);
      tgt.push_back(std::min<int64_t>(lengths[b], 64));
    }
    timestamps = upload(ts, stream);
    targets = upload(tgt, stream);
    pos = random_array<float>(N, seed + 5, stream);
    time = random_array<float>(64, seed + 6, stream);
    d_pos = DeviceBuffer<float>(N, stream);
    d_time = DeviceBuffer<float>(64, stream);
    GENREC_CUDA_CHECK(cudaMemsetAsync(d_pos.data(), 0, d_pos.bytes(), stream));
    GENREC_CUDA_CHECK(cudaMemsetAsync(d_time.data(), 0, d_time.bytes(), stream));
    shape.num_heads = H;
    shape.dim_qk = shape.dim_v = D;
    shape.alpha = 1.0f / std::sqrt(static_cast<float>(D));
    shape.inv_n = 1.0f / static_cast<float>(N);
    shape.ld_q = shape.ld_k = shape.ld_v = H * D;
  }

  static DeviceBuffer<int64_t> upload(const std::vector<int64_t>& host, cudaStream_t stream) {
    DeviceBuffer<int64_t> d(static_cast<int64_t>(host.size()), stream);
    GENREC_CUDA_CHECK(cudaMemcpyAsync(d.data(), host.data(), host.size() * sizeof(int64_t),
                                      cudaMemcpyHostToDevice, stream));
    GENREC_CUDA_CHECK(cudaStreamSynchronize(stream));
    return d;
  }

  double forward_flops() const { return 4.0 * causal_pairs * static_cast<double>(D * H); }

  genrec::cpu::HstuRelativeBias bias(bool with_position, bool with_time) const {
    genrec::cpu::HstuRelativeBias b;
    if (with_position) {
      b.position = pos.data();
      b.num_positions = pos.size();
    }
    if (with_time) {
      b.time = time.data();
      b.num_time_buckets = time.size();
      b.timestamps = timestamps.data();
    }
    return b;
  }
  genrec::cpu::HstuRelativeBias bias(bool with_bias) const { return bias(with_bias, with_bias); }
  genrec::cpu::HstuMask mask(bool with_targets) const {
    return {with_targets ? targets.data() : nullptr, 0, 0};
  }

  void forward(const genrec::cpu::HstuRelativeBias& b, bool with_targets, cudaStream_t stream) {
    genrec::cuda::hstu_attention_fused_forward<bf16>(out.data(), q.data(), k.data(), v.data(),
                                                     dev_offsets.data(), B, T, shape, b,
                                                     mask(with_targets), max_len, stream);
  }
  void backward(const genrec::cpu::HstuRelativeBias& b, bool with_targets, cudaStream_t stream) {
    genrec::cuda::hstu_attention_fused_backward<bf16>(
        dq.data(), dk.data(), dv.data(), b.position != nullptr ? d_pos.data() : nullptr,
        b.time != nullptr ? d_time.data() : nullptr, d_out.data(), q.data(), k.data(), v.data(),
        dev_offsets.data(), B, T, shape, b, mask(with_targets), max_len, stream);
  }
  void forward(bool with_bias, bool with_targets, cudaStream_t stream) {
    forward(bias(with_bias), with_targets, stream);
  }
  void backward(bool with_bias, bool with_targets, cudaStream_t stream) {
    backward(bias(with_bias), with_targets, stream);
  }
};

std::string fmt_ms(double ms) {
  if (ms <= 0) return "-";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.3f", ms);
  return buf;
}

std::string fmt_ratio(double peer, double ours) {
  if (peer <= 0 || ours <= 0) return "-";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2fx", peer / ours);
  return buf;
}

void main_table(cudaStream_t stream) {
  std::printf(
      "| B | N | H | D | lengths | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s | Triton "
      "fwd+bwd ms | vs Triton | SDPA fwd+bwd ms | vs SDPA | goal ms | +bias fwd+bwd ms | "
      "+targets fwd+bwd ms |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  uint64_t seed = 1;
  for (const Shape& sh : shapes()) {
    Problem p(sh.B, sh.N, sh.H, sh.D, sh.ragged, seed += 10, stream);
    const double fwd = median_ms([&] { p.forward(false, false, stream); }, stream);
    const double both = median_ms(
        [&] {
          p.forward(false, false, stream);
          p.backward(false, false, stream);
        },
        stream);
    const double with_bias = median_ms(
        [&] {
          p.forward(true, false, stream);
          p.backward(true, false, stream);
        },
        stream);
    const double with_targets = median_ms(
        [&] {
          p.forward(false, true, stream);
          p.backward(false, true, stream);
        },
        stream);
    const double f = p.forward_flops();
    std::printf(
        "| %lld | %lld | %lld | %lld | %s | %.3f | %.1f | %.3f | %.1f | %s | %s | %s | %s | "
        "%s | %.3f | %.3f |\n",
        static_cast<long long>(sh.B), static_cast<long long>(sh.N), static_cast<long long>(sh.H),
        static_cast<long long>(sh.D), sh.ragged ? "ragged" : "uniform", fwd, f / fwd * 1e-9, both,
        3.5 * f / both * 1e-9, fmt_ms(sh.peer.triton_fwd_bwd).c_str(),
        fmt_ratio(sh.peer.triton_fwd_bwd, both).c_str(), fmt_ms(sh.peer.sdpa_fwd_bwd).c_str(),
        fmt_ratio(sh.peer.sdpa_fwd_bwd, both).c_str(), fmt_ms(sh.peer.goal_fwd_bwd).c_str(),
        with_bias, with_targets);
    std::fflush(stdout);
  }
}

// Forward and backward apart, by bias term, at the first shape: where the bias costs.
void bias_table(cudaStream_t stream) {
  std::printf(
      "\n| B | N | H | D | bias | fwd ms | bwd ms | fwd+bwd ms "
      "|\n|---|---|---|---|---|---|---|---|\n");
  Problem p(32, 1024, 4, 128, false, 77, stream);
  const struct {
    const char* name;
    bool position, time;
  } terms[] = {{"none", false, false},
               {"position", true, false},
               {"time", false, true},
               {"position + time", true, true}};
  for (const auto& t : terms) {
    const genrec::cpu::HstuRelativeBias b = p.bias(t.position, t.time);
    const double fwd = median_ms([&] { p.forward(b, false, stream); }, stream);
    const double bwd = median_ms([&] { p.backward(b, false, stream); }, stream);
    std::printf("| %lld | 1024 | %lld | %lld | %s | %.3f | %.3f | %.3f |\n",
                static_cast<long long>(p.B), static_cast<long long>(p.H),
                static_cast<long long>(p.D), t.name, fwd, bwd, fwd + bwd);
    std::fflush(stdout);
  }
}

// The straightforward kernel at one shape, for scale.
void reference_row(cudaStream_t stream) {
  Problem p(32, 1024, 4, 128, false, 99, stream);
  const double fwd = median_ms(
      [&] {
        genrec::cuda::hstu_attention_forward<bf16>(p.out.data(), p.q.data(), p.k.data(), p.v.data(),
                                                   p.dev_offsets.data(), p.B, p.shape,
                                                   p.bias(false), p.max_len, stream);
      },
      stream);
  const double fused = median_ms([&] { p.forward(false, false, stream); }, stream);
  std::printf(
      "\nstraightforward kernel, B 32 N 1024 H 4 D 128 forward: %.3f ms (%.1f TFLOP/s); "
      "fused %.3f ms: %.1fx\n",
      fwd, p.forward_flops() / fwd * 1e-9, fused, fwd / fused);
}

// New tokens against a cached history (B = 32 users, H 4, D 128, bias on; candidates mode:
// the new tokens are targets).
void cached_table(cudaStream_t stream) {
  std::printf("\n| cached history | new tokens | B | H | D | ms | TFLOP/s |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  const int64_t B = 32, H = 4, D = 128;
  for (int64_t history : {1024, 4096}) {
    for (int64_t fresh : {1, 64, 512}) {
      Problem p(B, history + fresh, H, D, false, 7 + history + fresh, stream);
      std::vector<int64_t> q_offsets, targets;
      for (int64_t b = 0; b <= B; ++b) q_offsets.push_back(b * fresh);
      for (int64_t b = 0; b < B; ++b) targets.push_back(fresh);
      auto dev_q_offsets = Problem::upload(q_offsets, stream);
      auto dev_targets = Problem::upload(targets, stream);
      auto q_new = random_array<bf16>(B * fresh * H * D, 5, stream);
      DeviceBuffer<bf16> out(B * fresh * H * D, stream);
      const genrec::cpu::HstuMask mask{dev_targets.data(), 0, 0};
      const double ms = median_ms(
          [&] {
            genrec::cuda::hstu_attention_cached_forward<bf16>(
                out.data(), q_new.data(), dev_q_offsets.data(), p.k.data(), p.v.data(),
                p.dev_offsets.data(), B, B * fresh, p.T, p.shape, p.bias(true), mask, fresh,
                history + fresh, stream);
          },
          stream);
      // Each new token sees the history and itself: 2·2·(history + 1)·D per head.
      const double flops = 4.0 * static_cast<double>(B * fresh * (history + 1) * H * D);
      std::printf("| %lld | %lld | %lld | %lld | %lld | %.3f | %.1f |\n",
                  static_cast<long long>(history), static_cast<long long>(fresh),
                  static_cast<long long>(B), static_cast<long long>(H), static_cast<long long>(D),
                  ms, flops / ms * 1e-9);
      std::fflush(stdout);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  genrec::bench::g_iters = 100;
  std::string table = "all";  // or one table, e.g. to profile its kernels alone
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--iters") == 0 && i + 1 < argc) {
      genrec::bench::g_iters = std::atoi(argv[++i]);
    } else if (std::strcmp(argv[i], "--table") == 0 && i + 1 < argc) {
      table = argv[++i];
    } else {
      std::printf(
          "usage: genrec_attention_bench [--iters N] [--table all|main|bias|reference|cached]\n");
      return std::strcmp(argv[i], "--help") == 0 ? 0 : 2;
    }
  }
  if (!genrec::cuda_available()) {
    std::printf("genrec_attention_bench: no CUDA device\n");
    return 0;
  }
  try {
    std::printf("device: %s\n",
                genrec::cuda::device_summary(genrec::cuda::current_device()).c_str());
    if (const char* commit = std::getenv("GENREC_COMMIT")) std::printf("commit: %s\n", commit);
    std::printf("bf16, median of %d runs; peers: H100 80GB HBM3 (issue figures)\n\n",
                genrec::bench::g_iters);
    genrec::cuda::Stream stream;
    const std::pair<const char*, void (*)(cudaStream_t)> tables[] = {{"main", main_table},
                                                                     {"bias", bias_table},
                                                                     {"reference", reference_row},
                                                                     {"cached", cached_table}};
    bool known = table == "all";
    for (const auto& [name, run] : tables) {
      if (table != "all" && table != name) continue;
      known = true;
      run(stream);
    }
    if (!known) {
      std::fprintf(stderr, "genrec_attention_bench: unknown table %s\n", table.c_str());
      return 2;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "genrec_attention_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}

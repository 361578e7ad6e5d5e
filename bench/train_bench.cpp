// Training throughput of the retrieval model on one device: tokens per second and the share of
// the GEMM roofline, for the fixed synthetic configuration of docs/PERFORMANCE.md
// (8 HSTU layers, d = 512, 4 heads of 128, sequences up to 1024, batch 64, bf16).
// Usage: genrec_train_bench [--device cuda|cpu] [--layers 8] [--dim 512] [--heads 4]
//                           [--max-len 1024] [--batch 64] [--items 100000] [--steps 20]
//                           [--negatives 128] [--peak-tflops 694]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/philox.h"
#include "model/retrieval_model.h"

using namespace genrec;

namespace {

struct Options {
  std::string device = "cuda";
  int64_t layers = 8, dim = 512, heads = 4, max_len = 1024, batch = 64, items = 100000, steps = 20,
          negatives = 128;
  double peak_tflops = 694;  // measured bf16 dense GEMM ceiling of an H100 SXM (issue figure)
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    const char* v = argv[i + 1];
    if (k == "--device")
      o.device = v;
    else if (k == "--layers")
      o.layers = std::atoll(v);
    else if (k == "--dim")
      o.dim = std::atoll(v);
    else if (k == "--heads")
      o.heads = std::atoll(v);
    else if (k == "--max-len")
      o.max_len = std::atoll(v);
    else if (k == "--batch")
      o.batch = std::atoll(v);
    else if (k == "--items")
      o.items = std::atoll(v);
    else if (k == "--steps")
      o.steps = std::atoll(v);
    else if (k == "--negatives")
      o.negatives = std::atoll(v);
    else if (k == "--peak-tflops")
      o.peak_tflops = std::atof(v);
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      std::exit(2);
    }
  }
  return o;
}

TokenBatch make_batch(const Options& o, int64_t min_len, uint64_t seed) {
  TokenBatch batch;
  Philox rng(seed);
  for (int64_t b = 0; b < o.batch; ++b) {
    int64_t length = min_len + static_cast<int64_t>(rng.below(o.max_len - min_len + 1));
    for (int64_t i = 0; i < length; ++i) {
      batch.items.push_back(1 + static_cast<int64_t>(rng.below(o.items)));
      batch.targets.push_back(1 + static_cast<int64_t>(rng.below(o.items)));
      batch.timestamps.push_back(1000 * i);
    }
    batch.offsets.push_back(static_cast<int64_t>(batch.items.size()));
  }
  return batch;
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse(argc, argv);
  RetrievalConfig config;
  config.num_items = o.items;
  config.dim = o.dim;
  config.num_layers = o.layers;
  config.num_heads = o.heads;
  config.dim_qk = config.dim_v = o.dim / o.heads;
  config.max_len = o.max_len;
  config.dropout = 0.2f;
  config.time_bias = true;
  config.num_negatives = o.negatives;
  Device device = parse_device(o.device);
  auto model = make_retrieval_model(config, device);
  model->params().initialize(1);
  model->upload();
  cpu::AdamConfig adam;

  const int64_t P = o.heads * (2 * config.dim_v + 2 * config.dim_qk);
  const int64_t hv = o.heads * config.dim_v;
  // Per token per layer: fused projection 2·D·P + output projection 2·hv·D, forward; the
  // backward does twice that (input and weight gradients).
  const double gemm_flops_per_token = 3.0 * o.layers * (2.0 * o.dim * P + 2.0 * hv * o.dim);

  std::printf(
      "| device | layers | d | heads | lengths | batch | tokens | step ms | tokens/s | projection "
      "GFLOP/s | attention GFLOP/s | loss GFLOP/s | projection %% of %g TFLOP/s |\n",
      o.peak_tflops);
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (int64_t min_len : {o.max_len, o.max_len / 2}) {
    TokenBatch batch = make_batch(o, min_len, 7 + min_len);
    const int64_t T = batch.num_tokens();
    // Causal attention FLOPs (forward 2·2·L²·dh·H/2 per sequence, backward 2.5x), all layers.
    double attention_flops = 0;
    for (int64_t b = 0; b < o.batch; ++b) {
      double L = static_cast<double>(batch.offsets[b + 1] - batch.offsets[b]);
      attention_flops += 3.5 * 2.0 * 2.0 * L * L * config.dim_qk * o.heads / 2.0;
    }
    attention_flops *= o.layers;
    std::vector<double> ms;
    for (int64_t s = 0; s < o.steps + 3; ++s) {
      auto start = std::chrono::steady_clock::now();
      model->zero_grad();
      model->train_step(batch, 1, s);  // returns the loss, so the step has finished
      model->optimizer_step(adam, 1e-3f, 0.0f);
      model->synchronize();
      double t = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                     .count();
      if (s >= 3) ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    double median = ms[ms.size() / 2];
    const double seconds = median * 1e-3;
    // The loss: logits against K negatives and the positive, forward and two backward products.
    const double loss_flops = 3.0 * 2.0 * o.dim * (o.negatives + 1) * T;
    const double gemm_gflops = gemm_flops_per_token * T / seconds / 1e9;
    std::printf(
        "| %s | %lld | %lld | %lld | %s | %lld | %lld | %.2f | %.0f | %.1f | %.1f | %.1f | %.2f%% "
        "|\n",
        device_name(device), (long long)o.layers, (long long)o.dim, (long long)o.heads,
        min_len == o.max_len ? "all max" : "uniform [max/2, max]", (long long)o.batch, (long long)T,
        median, T / seconds, gemm_gflops, attention_flops / seconds / 1e9,
        loss_flops / seconds / 1e9, 100.0 * gemm_gflops / (o.peak_tflops * 1e3));
  }
  return 0;
}

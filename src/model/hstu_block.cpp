// Column layout of the fused projection: [U (H·dv) | V (H·dv) | Q (H·dqk) | K (H·dqk)], so
// attention reads Q, K, V as strided slices of one buffer and nothing is split or copied.
#include "model/hstu_block.h"

#include <cmath>

#include "core/error.h"
#include "ops/elementwise.h"
#include "ops/gemm.h"
#include "ops/layer_norm.h"

namespace genrec {
namespace {

float* grow(std::vector<float>& buffer, int64_t n) {
  if (static_cast<int64_t>(buffer.size()) < n) buffer.resize(n);
  return buffer.data();
}

}  // namespace

HstuBlockParams declare_hstu_block(ParameterSet& params, const std::string& prefix,
                                   const HstuBlockConfig& config) {
  const int64_t D = config.dim, hv = config.num_heads * config.dim_v;
  const int64_t P = hstu_uvqk_width(config);
  GENREC_CHECK(D > 0 && config.num_heads > 0 && config.dim_qk > 0 && config.dim_v > 0,
               "HSTU block needs positive dim, num_heads, dim_qk and dim_v");
  GENREC_CHECK(config.dropout >= 0.0f && config.dropout < 1.0f, "dropout {} not in [0, 1)",
               config.dropout);
  HstuBlockParams ids;
  ids.ln1_w = params.add(prefix + ".ln1.weight", {D}, Init::kOnes);
  ids.ln1_b = params.add(prefix + ".ln1.bias", {D}, Init::kZeros);
  ids.w_uvqk = params.add(prefix + ".uvqk.weight", {D, P}, Init::kXavier, 0, true);
  ids.b_uvqk = params.add(prefix + ".uvqk.bias", {P}, Init::kZeros);
  ids.w_out = params.add(prefix + ".out.weight", {hv, D}, Init::kXavier, 0, true);
  ids.b_out = params.add(prefix + ".out.bias", {D}, Init::kZeros);
  if (config.num_positions > 0) {
    ids.pos_bias =
        params.add(prefix + ".position_bias", {config.num_positions}, Init::kNormal, 0.02f);
  }
  if (config.num_time_buckets > 0) {
    ids.time_bias =
        params.add(prefix + ".time_bias", {config.num_time_buckets}, Init::kNormal, 0.02f);
  }
  return ids;
}

HstuBlock::HstuBlock(const HstuBlockConfig& config, ParameterSet& params,
                     const HstuBlockParams& ids, uint64_t dropout_stream)
    : config_(config), params_(params), dropout_stream_(dropout_stream), ids_(ids) {}

cpu::HstuAttentionShape HstuBlock::attention_shape(const HstuBatchContext& ctx) const {
  cpu::HstuAttentionShape s;
  s.num_heads = config_.num_heads;
  s.dim_qk = config_.dim_qk;
  s.dim_v = config_.dim_v;
  s.alpha = 1.0f / std::sqrt(static_cast<float>(config_.dim_qk));
  s.inv_n = ctx.inv_n;
  s.ld_q = s.ld_k = s.ld_v = uvqk_width();
  return s;
}

cpu::HstuRelativeBias HstuBlock::relative_bias(const HstuBatchContext& ctx) const {
  cpu::HstuRelativeBias b;
  if (ids_.pos_bias >= 0) {
    b.position = params_.value(ids_.pos_bias);
    b.num_positions = config_.num_positions;
  }
  if (ids_.time_bias >= 0) {
    GENREC_CHECK(ctx.timestamps != nullptr, "time bias needs timestamps");
    b.time = params_.value(ids_.time_bias);
    b.num_time_buckets = config_.num_time_buckets;
    b.timestamps = ctx.timestamps;
  }
  return b;
}

void HstuBlock::forward(float* out, const float* x, const HstuBatchContext& ctx) {
  const int64_t T = ctx.num_tokens, D = config_.dim, P = uvqk_width();
  const int64_t hv = config_.num_heads * config_.dim_v, hqk = config_.num_heads * config_.dim_qk;
  float* ln1 = grow(ln1_, T * D);
  float* pre = grow(pre_, T * P);
  float* uvqk = grow(uvqk_, T * P);
  float* attn = grow(attn_, T * hv);
  float* ln2 = grow(ln2_, T * hv);
  float* gated = grow(gated_, T * hv);
  cpu::layer_norm_forward(ln1, grow(mean1_, T), grow(rstd1_, T), x, params_.value(ids_.ln1_w),
                          params_.value(ids_.ln1_b), T, D, config_.layer_norm_eps);
  cpu::linear_forward(pre, ln1, params_.value(ids_.w_uvqk), params_.value(ids_.b_uvqk), T, D, P);
  cpu::silu_forward(uvqk, pre, T * P);
  const float* u = uvqk;
  const float* v = uvqk + hv;
  const float* q = uvqk + 2 * hv;
  const float* k = uvqk + 2 * hv + hqk;
  cpu::hstu_attention_forward(attn, q, k, v, ctx.offsets, ctx.batch_size, attention_shape(ctx),
                              relative_bias(ctx));
  cpu::layer_norm_forward(ln2, grow(mean2_, T), grow(rstd2_, T), attn, nullptr, nullptr, T, hv,
                          config_.layer_norm_eps);
  cpu::gate_forward(gated, ln2, u, P, T, hv);
  if (ctx.training && config_.dropout > 0.0f) {
    cpu::dropout_forward(gated, gated, T * hv, config_.dropout, ctx.dropout_seed, dropout_stream_);
  }
  cpu::linear_forward(out, gated, params_.value(ids_.w_out), params_.value(ids_.b_out), T, hv, D);
  for (int64_t i = 0; i < T * D; ++i) out[i] += x[i];
}

void HstuBlock::backward(float* d_x, const float* d_out, const float* x,
                         const HstuBatchContext& ctx) {
  const int64_t T = ctx.num_tokens, D = config_.dim, P = uvqk_width();
  const int64_t hv = config_.num_heads * config_.dim_v, hqk = config_.num_heads * config_.dim_qk;
  float* d_gated = grow(d_gated_, T * hv);
  float* d_ln2 = grow(d_ln2_, T * hv);
  float* d_attn = grow(d_attn_, T * hv);
  float* d_uvqk = grow(d_uvqk_, T * P);
  float* d_ln1 = grow(d_ln1_, T * D);
  const float* uvqk = uvqk_.data();

  cpu::linear_backward(d_gated, params_.grad(ids_.w_out), params_.grad(ids_.b_out), d_out,
                       gated_.data(), params_.value(ids_.w_out), T, hv, D);
  if (ctx.training && config_.dropout > 0.0f) {
    cpu::dropout_backward(d_gated, d_gated, T * hv, config_.dropout, ctx.dropout_seed,
                          dropout_stream_);
  }
  cpu::gate_backward(d_ln2, d_uvqk, d_gated, ln2_.data(), uvqk, P, T, hv);
  cpu::layer_norm_backward(d_attn, nullptr, nullptr, d_ln2, attn_.data(), nullptr, mean2_.data(),
                           rstd2_.data(), T, hv);
  cpu::hstu_attention_backward(d_uvqk + 2 * hv, d_uvqk + 2 * hv + hqk, d_uvqk + hv,
                               ids_.pos_bias >= 0 ? params_.grad(ids_.pos_bias) : nullptr,
                               ids_.time_bias >= 0 ? params_.grad(ids_.time_bias) : nullptr, d_attn,
                               uvqk + 2 * hv, uvqk + 2 * hv + hqk, uvqk + hv, ctx.offsets,
                               ctx.batch_size, attention_shape(ctx), relative_bias(ctx));
  cpu::silu_backward(d_uvqk, d_uvqk, pre_.data(), T * P);
  cpu::linear_backward(d_ln1, params_.grad(ids_.w_uvqk), params_.grad(ids_.b_uvqk), d_uvqk,
                       ln1_.data(), params_.value(ids_.w_uvqk), T, D, P);
  cpu::layer_norm_backward(d_x, params_.grad(ids_.ln1_w), params_.grad(ids_.ln1_b), d_ln1, x,
                           params_.value(ids_.ln1_w), mean1_.data(), rstd1_.data(), T, D);
  for (int64_t i = 0; i < T * D; ++i) d_x[i] += d_out[i];
}

}  // namespace genrec

// ParameterSet: every trainable tensor of a model in one contiguous fp32 buffer, with its
// gradient and Adam moments in buffers of the same layout. One buffer means one optimizer
// call, one checkpoint write and one all-reduce later; named views keep the model readable.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/philox.h"
#include "ops/adam.h"

namespace genrec {

enum class Init { kZeros, kOnes, kNormal, kUniform, kXavier };

struct ParameterInfo {
  std::string name;
  std::vector<int64_t> shape;
  int64_t offset = 0;  // into the flat buffers
  int64_t numel = 0;
  Init init = Init::kZeros;
  float scale = 0.0f;  // std for kNormal, bound for kUniform
  bool decay = false;  // weight decay applies (matrices, not norms or biases)
};

class ParameterSet {
 public:
  // Declares a parameter; returns its index. Declare all before allocate().
  int add(std::string name, std::vector<int64_t> shape, Init init, float scale = 0.0f,
          bool decay = false);
  void allocate();                 // sizes the buffers (zeroed)
  void initialize(uint64_t seed);  // fills values per each parameter's Init

  float* value(int index) { return values_.data() + infos_[index].offset; }
  float* grad(int index) { return grads_.data() + infos_[index].offset; }
  const float* value(int index) const { return values_.data() + infos_[index].offset; }
  const ParameterInfo& info(int index) const { return infos_[index]; }
  int find(const std::string& name) const;  // throws when absent
  int count() const { return static_cast<int>(infos_.size()); }
  int64_t numel() const { return static_cast<int64_t>(values_.size()); }

  void zero_grad();
  // Σ g² over every gradient (float64), and scaling them: the pieces of global-norm clipping,
  // whose norm may also cover gradients kept outside the set (a dynamic item table's).
  double grad_squares() const;
  void scale_grads(float scale);
  // One Adam/AdamW step over every parameter; weight decay only where info.decay.
  void adam_step(const cpu::AdamConfig& config, float lr);

  std::vector<float>& values() { return values_; }
  std::vector<float>& grads() { return grads_; }
  std::vector<float>& adam_m() { return m_; }
  std::vector<float>& adam_v() { return v_; }
  const std::vector<float>& values() const { return values_; }
  const std::vector<float>& adam_m() const { return m_; }
  const std::vector<float>& adam_v() const { return v_; }
  int64_t adam_steps() const { return adam_steps_; }
  void set_adam_steps(int64_t steps) { adam_steps_ = steps; }

 private:
  std::vector<ParameterInfo> infos_;
  std::vector<float> values_, grads_, m_, v_;
  int64_t adam_steps_ = 0;
};

}  // namespace genrec

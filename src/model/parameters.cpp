#include "model/parameters.h"

#include <cmath>

#include "core/error.h"

namespace genrec {

int ParameterSet::add(std::string name, std::vector<int64_t> shape, Init init, float scale,
                      bool decay) {
  GENREC_CHECK(values_.empty(), "parameter {} declared after allocate()", name);
  ParameterInfo info{std::move(name), std::move(shape), 0, 1, init, scale, decay};
  for (int64_t s : info.shape) info.numel *= s;
  info.offset = infos_.empty() ? 0 : infos_.back().offset + infos_.back().numel;
  infos_.push_back(std::move(info));
  return static_cast<int>(infos_.size()) - 1;
}

void ParameterSet::allocate() {
  int64_t n = infos_.empty() ? 0 : infos_.back().offset + infos_.back().numel;
  values_.assign(n, 0.0f);
  grads_.assign(n, 0.0f);
  m_.assign(n, 0.0f);
  v_.assign(n, 0.0f);
  adam_steps_ = 0;
}

void ParameterSet::initialize(uint64_t seed) {
  for (size_t i = 0; i < infos_.size(); ++i) {
    const ParameterInfo& p = infos_[i];
    Philox rng(seed, i);
    float* w = value(static_cast<int>(i));
    float bound = p.scale;
    if (p.init == Init::kXavier) {
      GENREC_CHECK(p.shape.size() == 2, "xavier init needs a matrix, {} is not", p.name);
      bound = std::sqrt(6.0f / static_cast<float>(p.shape[0] + p.shape[1]));
    }
    for (int64_t j = 0; j < p.numel; ++j) {
      switch (p.init) {
        case Init::kZeros:
          w[j] = 0.0f;
          break;
        case Init::kOnes:
          w[j] = 1.0f;
          break;
        case Init::kNormal:
          w[j] = p.scale * rng.normal();
          break;
        case Init::kUniform:
        case Init::kXavier:
          w[j] = bound * (2.0f * rng.uniform() - 1.0f);
          break;
      }
    }
  }
}

int ParameterSet::find(const std::string& name) const {
  for (size_t i = 0; i < infos_.size(); ++i) {
    if (infos_[i].name == name) return static_cast<int>(i);
  }
  fail("no parameter named '{}'", name);
}

void ParameterSet::zero_grad() {
  std::fill(grads_.begin(), grads_.end(), 0.0f);
}

double ParameterSet::grad_squares() const {
  double sum = 0.0;
  for (float g : grads_) sum += static_cast<double>(g) * g;
  return sum;
}

void ParameterSet::scale_grads(float scale) {
  for (float& g : grads_) g *= scale;
}

void ParameterSet::adam_step(const cpu::AdamConfig& config, float lr) {
  ++adam_steps_;
  for (const ParameterInfo& p : infos_) {
    cpu::AdamConfig c = config;
    c.lr = lr;
    if (!p.decay) c.weight_decay = 0.0f;
    cpu::adam_update(values_.data() + p.offset, grads_.data() + p.offset, m_.data() + p.offset,
                     v_.data() + p.offset, p.numel, c, adam_steps_);
  }
}

}  // namespace genrec

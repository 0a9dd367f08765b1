#pragma once
// AdamW, exactly torch.optim.AdamW (amsgrad=False, maximize=False), per
// parameter, with t its own step count:
//
//   p  = p * (1 - lr * weight_decay)          decoupled decay, before the update
//   m  = beta1 * m + (1 - beta1) * g
//   v  = beta2 * v + (1 - beta2) * g^2
//   p  = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//
// eps is added after the bias-corrected square root, as torch does. float32
// parameters are updated in float32 (scalars rounded from double, as torch
// rounds its Python floats), float64 in float64.
#include "loragrad/optim/optimizer.hpp"

namespace loragrad::optim {

class AdamW : public Optimizer {
 public:
  explicit AdamW(std::vector<ParamGroup> groups);
  // One group named "default". weight_decay defaults to torch's 0.01 here.
  AdamW(std::vector<Tensor> params, double lr, double weight_decay = 0.01, double beta1 = 0.9,
        double beta2 = 0.999, double eps = 1e-8);

 protected:
  std::vector<std::string> buffer_names(const ParamGroup&) const override { return {"exp_avg", "exp_avg_sq"}; }
  void check_group(const ParamGroup& g) const override;
  void update(const ParamGroup& g, Tensor& param, const Tensor& grad, ParamState& s) override;
};

}  // namespace loragrad::optim

#pragma once
// SGD, exactly torch.optim.SGD with dampening 0 (maximize=False):
//
//   d = g + weight_decay * p                  L2 decay, added to the gradient
//   b = momentum * b + d                      (first update: b = d)
//   d = nesterov ? d + momentum * b : b       (only when momentum != 0)
//   p = p - lr * d
//
// The momentum buffer ("momentum_buffer") exists only when momentum != 0.
#include "loragrad/optim/optimizer.hpp"

namespace loragrad::optim {

class SGD : public Optimizer {
 public:
  explicit SGD(std::vector<ParamGroup> groups);
  // One group named "default".
  SGD(std::vector<Tensor> params, double lr, double momentum = 0.0, double weight_decay = 0.0, bool nesterov = false);

 protected:
  std::vector<std::string> buffer_names(const ParamGroup& g) const override;
  void check_group(const ParamGroup& g) const override;
  void update(const ParamGroup& g, Tensor& param, const Tensor& grad, ParamState& s) override;
};

}  // namespace loragrad::optim

#pragma once
// Gradient clipping by global L2 norm, as torch.nn.utils.clip_grad_norm_.
#include <vector>

#include "loragrad/tensor.hpp"

namespace loragrad::optim {

// total = sqrt(sum over every defined grad of sum(g^2)), accumulated in double.
// When max_norm / (total + 1e-6) < 1 every grad is scaled in place by that
// coefficient. Returns total (0 when no parameter has a grad).
// A non-finite total (a NaN or inf gradient) is returned and the grads are
// left as they are, so the caller can see it and skip the step; torch
// (error_if_nonfinite=False) would instead multiply them by 0 or NaN.
// ValueError unless max_norm > 0.
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm);

// The same total norm without clipping.
double grad_norm(const std::vector<Tensor>& params);

}  // namespace loragrad::optim

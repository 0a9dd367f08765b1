#pragma once
// Numerical gradient checking, like torch.autograd.gradcheck: the full
// analytic Jacobian (one backward per output element) against central
// differences, in float64.
#include <functional>
#include <string>
#include <vector>

#include "loragrad/tensor.hpp"

namespace loragrad {

struct GradcheckOptions {
  double eps = 1e-6;   // finite-difference step
  double atol = 1e-5;
  double rtol = 1e-3;  // pass when |analytic - numeric| <= atol + rtol * |numeric|
};

struct GradcheckResult {
  bool ok = true;
  std::string report;  // on failure: which input, which element, analytic vs numeric
  double max_abs_error = 0;
  explicit operator bool() const { return ok; }
};

using GradcheckFn = std::function<Tensor(const std::vector<Tensor>&)>;

// fn maps inputs to one output tensor of any shape. Inputs must be float64;
// every input that requires_grad is checked (the others are held constant).
// The inputs are not modified; their .grad is not touched.
GradcheckResult gradcheck(const GradcheckFn& fn, const std::vector<Tensor>& inputs,
                          const GradcheckOptions& opt = {});

}  // namespace loragrad

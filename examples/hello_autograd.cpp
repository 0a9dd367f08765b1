// The README's ten-line tour: build a small computation, backpropagate,
// print the gradients, and gradcheck the same function in float64.
#include <iostream>

#include "loragrad/gradcheck.hpp"
#include "loragrad/ops.hpp"

using namespace loragrad;

int main() {
  Generator gen(0);
  Tensor x = randn({4, 3}, gen, DType::f64);                      // (N, in)
  Tensor W = randn({2, 3}, gen, DType::f64).requires_grad_();     // (out, in)
  Tensor b = zeros({2}, DType::f64).requires_grad_();             // (out)
  auto f = [&](const std::vector<Tensor>& p) { return mean(tanh(linear(x, p[0], p[1]))); };
  Tensor loss = f({W, b});
  loss.backward();
  std::cout << "loss   = " << loss.item() << "\n" << "dL/dW  = " << W.grad() << "\n" << "dL/db  = " << b.grad() << "\n";
  GradcheckResult check = gradcheck(f, {W, b});
  std::cout << "gradcheck: " << (check.ok ? "ok" : check.report) << " (max |analytic - numeric| = " << check.max_abs_error << ")\n";
  return check.ok ? 0 : 1;
}

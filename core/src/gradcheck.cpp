// gradcheck: analytic Jacobian (one backward per output element) against
// central differences, in float64.
#include "loragrad/gradcheck.hpp"

#include <cmath>
#include <sstream>

#include "loragrad/autograd.hpp"
#include "ops/op_util.hpp"

namespace loragrad {

GradcheckResult gradcheck(const GradcheckFn& fn, const std::vector<Tensor>& inputs, const GradcheckOptions& opt) {
  // Private leaf copies, so the caller's tensors and their .grad stay untouched.
  std::vector<Tensor> xs;
  std::vector<size_t> checked;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& t = inputs[i];
    if (!t.defined()) { xs.push_back(t); continue; }
    Tensor c = t.detach().clone();
    if (t.requires_grad()) {
      if (t.dtype() != DType::f64)
        throw DTypeError("gradcheck: input " + std::to_string(i) + " " + shape_str(t.shape()) + " is " +
                         dtype_name(t.dtype()) + "; gradcheck needs float64 inputs");
      c.requires_grad_(true);
      checked.push_back(i);
    }
    xs.push_back(c);
  }
  if (checked.empty()) throw ValueError("gradcheck: no input requires grad");

  Tensor y = fn(xs);
  if (y.dtype() != DType::f64)
    throw DTypeError(std::string("gradcheck: the function returned ") + dtype_name(y.dtype()) + ", expected float64");
  const int64_t m = y.numel();
  const Shape yshape = y.shape();

  // analytic[i] is (m, numel(input i)): row j = d y[j] / d input i.
  std::vector<std::vector<double>> analytic(inputs.size());
  for (size_t i : checked) analytic[i].assign(static_cast<size_t>(m * xs[i].numel()), 0.0);
  if (y.requires_grad()) {
    for (int64_t j = 0; j < m; ++j) {
      for (size_t i : checked) xs[i].zero_grad();
      Tensor onehot = zeros(y.shape(), DType::f64);
      onehot.data<double>()[j] = 1.0;
      y.backward(onehot, /*retain_graph=*/true);
      for (size_t i : checked) {
        Tensor g = xs[i].grad();
        if (!g.defined()) continue;
        const double* pg = g.data<double>();
        for (int64_t k = 0; k < xs[i].numel(); ++k) analytic[i][static_cast<size_t>(j * xs[i].numel() + k)] = pg[k];
      }
    }
  }
  y = Tensor();  // free the graph before perturbing inputs in place

  GradcheckResult res;
  std::ostringstream report;
  report.precision(10);
  int failures = 0;
  NoGradGuard no_grad;
  for (size_t i : checked) {
    double* px = xs[i].data<double>();
    for (int64_t k = 0; k < xs[i].numel(); ++k) {
      const double orig = px[k];
      // Raw writes: bump the version so caches keyed on it (DoRA's row norms) see the change.
      px[k] = orig + opt.eps;
      xs[i].bump_version();
      const std::vector<double> plus = fn(xs).to_vector();
      px[k] = orig - opt.eps;
      xs[i].bump_version();
      const std::vector<double> minus = fn(xs).to_vector();
      px[k] = orig;
      xs[i].bump_version();
      for (int64_t j = 0; j < m; ++j) {
        const double numeric = (plus[j] - minus[j]) / (2 * opt.eps);
        const double a = analytic[i][static_cast<size_t>(j * xs[i].numel() + k)];
        const double err = std::abs(a - numeric);
        res.max_abs_error = std::max(res.max_abs_error, err);
        if (!(err <= opt.atol + opt.rtol * std::abs(numeric))) {
          if (failures < 5)
            report << "input " << i << " " << shape_str(xs[i].shape()) << " element "
                   << detail::position_str(k, xs[i].shape()) << ", output element " << detail::position_str(j, yshape)
                   << ": analytic " << a << " vs numeric " << numeric << " (|diff| " << err << ")\n";
          ++failures;
        }
      }
    }
  }
  if (failures) {
    res.ok = false;
    report << failures << " Jacobian entries out of tolerance (atol " << opt.atol << ", rtol " << opt.rtol << ")";
    res.report = report.str();
  }
  return res;
}

}  // namespace loragrad

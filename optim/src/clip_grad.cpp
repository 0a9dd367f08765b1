// Global gradient norm and clipping.
#include "loragrad/optim/clip_grad.hpp"

#include <cmath>
#include <string>

#include "update_loop.hpp"

namespace loragrad {

namespace {

// sum(g^2) in double; per-thread partial sums are combined by the caller.
template <class T>
double sum_squares(const T* g, int64_t begin, int64_t end) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = begin; i < end; ++i) s += static_cast<double>(g[i]) * static_cast<double>(g[i]);
  return s;
}

}  // namespace

double grad_norm(const std::vector<Tensor>& params) {
  double total = 0.0;
  for (const Tensor& p : params) {
    if (!p.defined()) throw ValueError("grad_norm: an undefined parameter");
    const Tensor g = p.grad();
    if (!g.defined()) continue;
    dispatch_float(g.dtype(), "grad_norm", [&](auto tag) {
      using T = decltype(tag);
      const T* data = g.data<T>();
      const int64_t n = g.numel();
      if (n >= kParallelElements && !omp_in_parallel()) {
#pragma omp parallel for reduction(+ : total) schedule(static)
        for (int64_t c = 0; c < n; c += (1 << 14)) total += sum_squares(data, c, std::min<int64_t>(n, c + (1 << 14)));
      } else {
        total += sum_squares(data, 0, n);
      }
    });
  }
  return std::sqrt(total);
}

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  if (!(max_norm > 0.0)) throw ValueError("clip_grad_norm: max_norm must be > 0, got " + std::to_string(max_norm));
  const double total = grad_norm(params);
  if (!std::isfinite(total)) return total;
  const double coef = max_norm / (total + 1e-6);
  if (coef < 1.0)
    for (const Tensor& p : params) {
      Tensor g = p.grad();
      if (g.defined()) g.mul_(coef);
    }
  return total;
}

}  // namespace loragrad

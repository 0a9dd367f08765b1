// Global gradient norm and clipping.
#include "loragrad/optim/clip_grad.hpp"

#include <cmath>
#include <string>
#include <vector>

#include "update_loop.hpp"

namespace loragrad::optim {

namespace {

// sum(g^2) in double over [begin, end).
template <class T>
double sum_squares(const T* g, int64_t begin, int64_t end) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = begin; i < end; ++i) s += static_cast<double>(g[i]) * static_cast<double>(g[i]);
  return s;
}

// sum(g^2) of one tensor: fixed chunks of kChunk elements, each summed on its
// own, then the chunk sums added in order. The grouping depends on n alone,
// never on the thread count (an OpenMP `reduction` groups by thread and
// combines in any order), so the norm has the same bits with any number of
// threads; small tensors (one thread) group the same way.
template <class T>
double tensor_sum_squares(const T* g, int64_t n) {
  constexpr int64_t kChunk = 1 << 14;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  if (chunks <= 1) return sum_squares(g, 0, n);
  std::vector<double> partial(static_cast<size_t>(chunks));  // (chunks)
  parallel_for(chunks, n >= kParallelElements ? n : 0, [&](int64_t c) {
    partial[c] = sum_squares(g, c * kChunk, std::min(n, (c + 1) * kChunk));
  });
  double s = 0.0;
  for (double p : partial) s += p;
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
      total += tensor_sum_squares(g.data<T>(), g.numel());
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

}  // namespace loragrad::optim

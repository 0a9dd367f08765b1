// AdamW: one fused pass over (p, g, m, v) per parameter, in SIMD registers.
#include "loragrad/optim/adamw.hpp"

#include <algorithm>
#include <cmath>

#include <xsimd/xsimd.hpp>

#include "update_loop.hpp"

namespace loragrad::optim {

AdamW::AdamW(std::vector<ParamGroup> groups) : Optimizer("AdamW", std::move(groups)) { check_groups(); }

AdamW::AdamW(std::vector<Tensor> params, double lr, double weight_decay, double beta1, double beta2, double eps)
    : Optimizer("AdamW", [&] {
        ParamGroup g("default", std::move(params), lr, weight_decay);
        g.beta1 = beta1;
        g.beta2 = beta2;
        g.eps = eps;
        return std::vector<ParamGroup>{g};
      }()) {
  check_groups();
}

void AdamW::check_group(const ParamGroup& g) const {
  const std::string where = "AdamW: group '" + g.name + "': ";
  if (!(g.beta1 >= 0.0 && g.beta1 < 1.0)) throw ValueError(where + "beta1 must be in [0, 1), got " + std::to_string(g.beta1));
  if (!(g.beta2 >= 0.0 && g.beta2 < 1.0)) throw ValueError(where + "beta2 must be in [0, 1), got " + std::to_string(g.beta2));
  if (!(g.eps >= 0.0)) throw ValueError(where + "eps must be >= 0, got " + std::to_string(g.eps));
}

namespace {

// The update of W consecutive elements, W = one SIMD register. xsimd because
// std::sqrt in an `omp simd` loop stays scalar here (GCC keeps errno).
template <class T>
struct AdamWLanes {
  using batch = xsimd::batch<T>;
  static constexpr int64_t W = static_cast<int64_t>(batch::size);
  batch b1, one_minus_b1, b2, one_minus_b2, neg_step, bc2_sqrt, eps, decay;

  void operator()(T* p, const T* g, T* m, T* v) const {
    const batch gi = batch::load_unaligned(g);
    const batch mi = batch::load_unaligned(m) * b1 + one_minus_b1 * gi;
    const batch vi = batch::load_unaligned(v) * b2 + one_minus_b2 * gi * gi;
    mi.store_unaligned(m);
    vi.store_unaligned(v);
    const batch denom = xsimd::sqrt(vi) / bc2_sqrt + eps;
    (batch::load_unaligned(p) * decay + neg_step * mi / denom).store_unaligned(p);
  }
};

}  // namespace

void AdamW::update(const ParamGroup& g, Tensor& param, const Tensor& grad, ParamState& s) {
  // The scalars are computed in double, as torch computes them in Python.
  const double t = static_cast<double>(s.step);
  const double bias_correction1 = 1.0 - std::pow(g.beta1, t);
  const double bias_correction2_sqrt = std::sqrt(1.0 - std::pow(g.beta2, t));
  const double step_size = g.lr / bias_correction1;
  const double decay = 1.0 - g.lr * g.weight_decay;

  dispatch_float(param.dtype(), "AdamW.step", [&](auto tag) {
    using T = decltype(tag);
    using Lanes = AdamWLanes<T>;
    constexpr int64_t W = Lanes::W;
    T* p = param.data<T>();
    const T* gr = grad.data<T>();
    T* m = s.buffers[0].data<T>();  // exp_avg
    T* v = s.buffers[1].data<T>();  // exp_avg_sq
    const Lanes lanes{T(g.beta1), T(1.0 - g.beta1), T(g.beta2),           T(1.0 - g.beta2),
                      T(-step_size), T(bias_correction2_sqrt), T(g.eps), T(decay)};
    detail::for_each_chunk(param.numel(), [&](int64_t begin, int64_t end) {
      int64_t i = begin;
      for (; i + W <= end; i += W) lanes(p + i, gr + i, m + i, v + i);
      if (i == end) return;
      // The tail goes through the same vector code on padded copies, so an
      // element's result does not depend on where it sits.
      alignas(64) T tp[W] = {}, tg[W] = {}, tm[W] = {}, tv[W] = {};
      const int64_t n = end - i;
      std::copy(p + i, p + end, tp);
      std::copy(gr + i, gr + end, tg);
      std::copy(m + i, m + end, tm);
      std::copy(v + i, v + end, tv);
      lanes(tp, tg, tm, tv);
      std::copy(tp, tp + n, p + i);
      std::copy(tm, tm + n, m + i);
      std::copy(tv, tv + n, v + i);
    });
  });
  s.buffers[0].bump_version();
  s.buffers[1].bump_version();
}

}  // namespace loragrad::optim

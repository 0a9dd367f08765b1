// SGD with momentum (dampening 0), Nesterov and L2 weight decay.
#include "loragrad/optim/sgd.hpp"

#include "update_loop.hpp"

namespace loragrad::optim {

SGD::SGD(std::vector<ParamGroup> groups) : Optimizer("SGD", std::move(groups)) { check_groups(); }

SGD::SGD(std::vector<Tensor> params, double lr, double momentum, double weight_decay, bool nesterov)
    : Optimizer("SGD", [&] {
        ParamGroup g("default", std::move(params), lr, weight_decay);
        g.momentum = momentum;
        g.nesterov = nesterov;
        return std::vector<ParamGroup>{g};
      }()) {
  check_groups();
}

std::vector<std::string> SGD::buffer_names(const ParamGroup& g) const {
  if (g.momentum == 0.0) return {};
  return {"momentum_buffer"};
}

void SGD::check_group(const ParamGroup& g) const {
  const std::string where = "SGD: group '" + g.name + "': ";
  if (!(g.momentum >= 0.0)) throw ValueError(where + "momentum must be >= 0, got " + std::to_string(g.momentum));
  if (g.nesterov && g.momentum == 0.0) throw ValueError(where + "nesterov needs momentum > 0");
}

void SGD::update(const ParamGroup& g, Tensor& param, const Tensor& grad, ParamState& s) {
  dispatch_float(param.dtype(), "SGD.step", [&](auto tag) {
    using T = decltype(tag);
    T* p = param.data<T>();
    const T* gr = grad.data<T>();
    const T wd = T(g.weight_decay), mu = T(g.momentum), neg_lr = T(-g.lr);
    if (g.momentum == 0.0) {
      detail::for_each_chunk(param.numel(), [&](int64_t begin, int64_t end) {
#pragma omp simd
        for (int64_t i = begin; i < end; ++i) p[i] += neg_lr * (gr[i] + wd * p[i]);
      });
      return;
    }
    // The buffer starts at zero, so the first update gives b = d, as torch's clone does.
    T* b = s.buffers[0].data<T>();
    const bool nesterov = g.nesterov;
    detail::for_each_chunk(param.numel(), [&](int64_t begin, int64_t end) {
#pragma omp simd
      for (int64_t i = begin; i < end; ++i) {
        const T d = gr[i] + wd * p[i];
        const T bi = b[i] * mu + d;
        b[i] = bi;
        p[i] += neg_lr * (nesterov ? d + mu * bi : bi);
      }
    });
    s.buffers[0].bump_version();
  });
}

}  // namespace loragrad::optim

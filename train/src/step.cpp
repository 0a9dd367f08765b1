#include "loragrad/train/step.hpp"

#include <cmath>

#include "loragrad/autograd.hpp"
#include "loragrad/generator.hpp"
#include "loragrad/ops.hpp"
#include "loragrad/optim/clip_grad.hpp"

namespace loragrad::train {

std::vector<data::Batch> fixed_batches(const data::ByteDataset& data, data::Split split, int64_t n_batches,
                                       int64_t batch, int64_t seq, uint64_t seed) {
  if (n_batches < 1) throw ValueError("fixed_batches: n_batches must be >= 1, got " + std::to_string(n_batches));
  Generator gen(seed);
  std::vector<data::Batch> batches;
  batches.reserve(static_cast<size_t>(n_batches));
  for (int64_t i = 0; i < n_batches; ++i) batches.push_back(data.sample(split, batch, seq, gen));
  return batches;
}

double evaluate(nn::TinyGPT& model, const std::vector<data::Batch>& batches) {
  if (batches.empty()) throw ValueError("evaluate: no batches to evaluate on");
  nn::ModeScope eval_mode(model, false);
  NoGradGuard no_grad;
  double sum = 0.0;
  for (const data::Batch& b : batches) sum += model.loss(b.x, b.y).item();
  return sum / static_cast<double>(batches.size());
}

StepResult train_step(nn::TinyGPT& model, optim::Optimizer& optimizer, const std::vector<data::Batch>& micro_batches,
                      double max_grad_norm) {
  if (micro_batches.empty()) throw ValueError("train_step: no micro-batches");
  std::vector<Tensor> params;
  for (const optim::ParamGroup& g : optimizer.groups()) params.insert(params.end(), g.params.begin(), g.params.end());

  StepResult r;
  optimizer.zero_grad();
  const double k = static_cast<double>(micro_batches.size());
  for (const data::Batch& b : micro_batches) {
    Tensor loss = model.loss(b.x, b.y);  // 0-d
    const double value = loss.item();
    r.loss += value / k;
    if (!std::isfinite(value)) {  // no backward: the graph is freed with `loss`
      optimizer.zero_grad();
      r.loss = value;
      return r;
    }
    (micro_batches.size() == 1 ? loss : loss * (1.0 / k)).backward();
  }
  r.grad_norm = max_grad_norm > 0 ? optim::clip_grad_norm(params, max_grad_norm) : optim::grad_norm(params);
  if (!std::isfinite(r.grad_norm)) {
    optimizer.zero_grad();
    return r;
  }
  optimizer.step();
  r.applied = true;
  return r;
}

void stop_unless_finite(const StepResult& r, int64_t step) {
  if (r.applied) return;
  const std::string what = !std::isfinite(r.loss) ? "the loss is " + std::to_string(r.loss)
                                                  : "the gradient norm is " + std::to_string(r.grad_norm);
  throw ValueError("step " + std::to_string(step) + ": " + what +
                   ": training stopped, nothing written (a learning rate too high, or NaN/Inf or huge values "
                   "in the weights or the adapter's scale)");
}

}  // namespace loragrad::train

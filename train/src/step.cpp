#include "loragrad/train/step.hpp"

#include <algorithm>
#include <cmath>
#include <functional>

#include "loragrad/autograd.hpp"
#include "loragrad/generator.hpp"
#include "loragrad/ops.hpp"
#include "loragrad/optim/clip_grad.hpp"
#include "loragrad/train/kl.hpp"

namespace loragrad::train {

std::vector<data::Batch> fixed_batches(const data::Source& data, data::Split split, int64_t n_batches,
                                       int64_t batch, int64_t seq, uint64_t seed) {
  return data.fixed_batches(split, n_batches, batch, seq, seed);
}

namespace {

// Each batch's target count; ValueError naming `op` when one has none.
std::vector<int64_t> target_counts(const std::vector<data::Batch>& batches, const char* op) {
  std::vector<int64_t> n;
  for (size_t i = 0; i < batches.size(); ++i) {
    n.push_back(batches[i].num_targets());
    if (n.back() == 0)
      throw ValueError(std::string(op) + ": batch " + std::to_string(i) +
                       " has no target (every one is -100): its mean loss would be NaN");
  }
  return n;
}

bool all_equal(const std::vector<int64_t>& n) { return std::adjacent_find(n.begin(), n.end(), std::not_equal_to<>()) == n.end(); }

}  // namespace

double evaluate(nn::TinyGPT& model, const std::vector<data::Batch>& batches) {
  if (batches.empty()) throw ValueError("evaluate: no batches to evaluate on");
  const std::vector<int64_t> counts = target_counts(batches, "evaluate");
  nn::ModeScope eval_mode(model, false);
  NoGradGuard no_grad;
  if (all_equal(counts)) {  // plain text: the plain mean of batch means
    double sum = 0.0;
    for (const data::Batch& b : batches) sum += model.loss(b.x, b.y, b.starts).item();
    return sum / static_cast<double>(batches.size());
  }
  double sum = 0.0, total = 0.0;
  for (size_t i = 0; i < batches.size(); ++i) {
    const double n = static_cast<double>(counts[i]);
    sum += model.loss(batches[i].x, batches[i].y, batches[i].starts).item() * n;
    total += n;
  }
  return sum / total;
}

StepResult train_step(nn::TinyGPT& model, optim::Optimizer& optimizer, const std::vector<data::Batch>& micro_batches,
                      double max_grad_norm) {
  return train_step(model, optimizer, micro_batches, max_grad_norm, KLTerm{});
}

StepResult train_step(nn::TinyGPT& model, optim::Optimizer& optimizer, const std::vector<data::Batch>& micro_batches,
                      double max_grad_norm, const KLTerm& kl) {
  if (micro_batches.empty()) throw ValueError("train_step: no micro-batches");
  const bool with_kl = kl.weight != 0.0;
  if (with_kl && !(kl.weight > 0 && std::isfinite(kl.weight)))
    throw ValueError("train_step: the KL weight must be positive and finite, got " + std::to_string(kl.weight));
  if (with_kl && kl.batches.size() != micro_batches.size())
    throw ValueError("train_step: " + std::to_string(kl.batches.size()) + " KL batches for " +
                     std::to_string(micro_batches.size()) + " micro-batches (one each)");
  std::vector<Tensor> params;
  for (const optim::ParamGroup& g : optimizer.groups()) params.insert(params.end(), g.params.begin(), g.params.end());

  // Each micro-batch's weight: 1 / K when they hold equally many targets (as
  // plain text does: the arithmetic of the unmasked runs, bit for bit), else
  // n_k / sum(n).
  const std::vector<int64_t> counts = target_counts(micro_batches, "train_step");
  const bool equal = all_equal(counts);
  double total = 0.0;
  for (int64_t n : counts) total += static_cast<double>(n);

  StepResult r;
  r.has_kl = with_kl;
  if (with_kl) r.kl = 0.0;
  optimizer.zero_grad();
  const double k = static_cast<double>(micro_batches.size());
  for (size_t i = 0; i < micro_batches.size(); ++i) {
    const data::Batch& b = micro_batches[i];
    Tensor loss = model.loss(b.x, b.y, b.starts);  // 0-d
    const double value = loss.item();
    const double w = equal ? 1.0 / k : static_cast<double>(counts[i]) / total;
    r.loss += equal ? value / k : value * w;
    if (!std::isfinite(value)) {  // no backward: the graph is freed with `loss`
      optimizer.zero_grad();
      r.loss = value;
      return r;
    }
    (micro_batches.size() == 1 ? loss : loss * w).backward();
    if (!with_kl) continue;
    // The penalty's own forward and backward, after the loss's graph is
    // freed; its gradients add to the loss's. Each micro-batch weighs 1 / K.
    Tensor d = kl_to_base(model, kl.batches[i]);  // 0-d
    const double kl_value = d.item();
    r.kl += kl_value / k;
    if (!std::isfinite(kl_value)) {
      optimizer.zero_grad();
      r.kl = kl_value;
      return r;
    }
    (d * (kl.weight / k)).backward();
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
                           : r.has_kl && !std::isfinite(r.kl)
                               ? "the KL to the base is " + std::to_string(r.kl)
                               : "the gradient norm is " + std::to_string(r.grad_norm);
  throw ValueError("step " + std::to_string(step) + ": " + what +
                   ": training stopped, nothing written (a learning rate too high, or NaN/Inf or huge values "
                   "in the weights or the adapter's scale)");
}

}  // namespace loragrad::train

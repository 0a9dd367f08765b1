#include "loragrad/nn/train_loop.hpp"

#include <cmath>

#include "loragrad/autograd.hpp"
#include "loragrad/generator.hpp"
#include "loragrad/optim/clip_grad.hpp"

namespace loragrad::nn {

namespace {

// Sets a module's train/eval mode for a scope and puts the old one back.
class ModeScope {
 public:
  ModeScope(Module& m, bool training) : m_(m), was_training_(m.is_training()) { m_.train(training); }
  ~ModeScope() { m_.train(was_training_); }
  ModeScope(const ModeScope&) = delete;
  ModeScope& operator=(const ModeScope&) = delete;

 private:
  Module& m_;
  bool was_training_;
};

}  // namespace

std::vector<Batch> fixed_batches(const ByteDataset& data, Split split, int64_t n_batches, int64_t batch, int64_t seq,
                                 uint64_t seed) {
  if (n_batches < 1) throw ValueError("fixed_batches: n_batches must be >= 1, got " + std::to_string(n_batches));
  Generator gen(seed);
  std::vector<Batch> batches;
  batches.reserve(static_cast<size_t>(n_batches));
  for (int64_t i = 0; i < n_batches; ++i) batches.push_back(data.sample(split, batch, seq, gen));
  return batches;
}

double evaluate(TinyGPT& model, const std::vector<Batch>& batches) {
  if (batches.empty()) throw ValueError("evaluate: no batches to evaluate on");
  ModeScope eval_mode(model, false);
  NoGradGuard no_grad;
  double sum = 0.0;
  for (const Batch& b : batches) sum += model.loss(b.x, b.y).item();
  return sum / static_cast<double>(batches.size());
}

StepResult train_step(TinyGPT& model, Optimizer& optimizer, const Batch& batch, double max_grad_norm) {
  std::vector<Tensor> params;
  for (const ParamGroup& g : optimizer.groups()) params.insert(params.end(), g.params.begin(), g.params.end());

  StepResult r;
  optimizer.zero_grad();
  Tensor loss = model.loss(batch.x, batch.y);  // 0-d
  r.loss = loss.item();
  if (!std::isfinite(r.loss)) return r;  // no backward: the graph is freed with `loss`
  loss.backward();
  r.grad_norm = max_grad_norm > 0 ? clip_grad_norm(params, max_grad_norm) : grad_norm(params);
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

std::string sample_text(TinyGPT& model, const std::string& prompt, int64_t max_new_bytes, double temperature,
                        int64_t top_k, uint64_t seed) {
  std::vector<int64_t> ids;
  ids.reserve(prompt.size());
  for (unsigned char c : prompt) ids.push_back(c);
  ModeScope eval_mode(model, false);
  Generator gen(seed);
  const std::vector<int64_t> out = model.generate(ids, max_new_bytes, temperature, top_k, gen);
  std::string text;
  text.reserve(out.size());
  for (int64_t id : out) text.push_back(static_cast<char>(static_cast<unsigned char>(id)));
  return text;
}

}  // namespace loragrad::nn

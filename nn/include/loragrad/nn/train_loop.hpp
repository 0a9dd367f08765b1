#pragma once
// The pieces every training loop over a ByteDataset repeats: one optimizer
// step, the validation loss over fixed batches, and sampling text. The loop
// itself stays in the caller, where it can be read:
//
//   auto val = fixed_batches(data, Split::validation, 8, B, T, seed);
//   for (int64_t t = 0; t < steps; ++t) {
//     schedule.apply(opt, t);
//     StepResult r = train_step(model, opt, data.sample(Split::train, B, T, gen), 1.0);
//     ...
//   }
//   double val_loss = evaluate(model, val);
#include <cstdint>
#include <string>
#include <vector>

#include "loragrad/data/byte_dataset.hpp"
#include "loragrad/nn/tiny_gpt.hpp"
#include "loragrad/optim/optimizer.hpp"

namespace loragrad::nn {

// n_batches batches drawn once from the split with their own generator, so
// every evaluation of a run (and every run with the same seed) sees the same
// bytes and validation losses are comparable between steps.
std::vector<Batch> fixed_batches(const ByteDataset& data, Split split, int64_t n_batches, int64_t batch, int64_t seq,
                                 uint64_t seed);

// The mean of model.loss over the batches (each batch weighs the same; they
// have the same shape), in eval mode and without recording a graph. The
// model's train/eval mode is restored. ValueError when batches is empty.
double evaluate(TinyGPT& model, const std::vector<Batch>& batches);

struct StepResult {
  double loss = 0.0;       // the batch's training loss before the update
  double grad_norm = 0.0;  // global L2 norm of the gradients before clipping
  bool applied = false;    // false: the loss or the gradient was not finite and the step was skipped
};

// One optimisation step on one batch: zero the optimizer's gradients, forward,
// backward, clip the optimizer's parameters to max_grad_norm (when > 0), and
// update. A non-finite loss or gradient skips the update (and leaves the
// grads cleared), so one bad batch does not destroy the weights; the caller
// sees applied == false. Only the optimizer's parameters are clipped: with an
// adapter, the frozen base has no gradients to clip.
StepResult train_step(TinyGPT& model, Optimizer& optimizer, const Batch& batch, double max_grad_norm);

// Training runs stop at the first skipped step rather than write a model that
// learned nothing: throws ValueError "step N: the loss is nan ..." (with the
// usual causes) when !r.applied. `step` counts from 1.
void stop_unless_finite(const StepResult& r, int64_t step);

// The prompt's bytes followed by max_new_bytes sampled ones, as text
// (TinyGPT::generate in eval mode; the mode is restored). A byte model may
// emit any byte value: the caller decides how to print it.
std::string sample_text(TinyGPT& model, const std::string& prompt, int64_t max_new_bytes, double temperature,
                        int64_t top_k, uint64_t seed);

}  // namespace loragrad::nn

#pragma once
// One optimisation step and one evaluation: the pieces the Trainer
// (trainer.hpp) repeats. Use them directly to write a loop of your own:
//
//   for (int64_t t = 0; t < steps; ++t) {
//     schedule.apply(opt, t);
//     StepResult r = train_step(model, opt, {data.sample(data::Split::train, B, T, gen)}, 1.0);
//     stop_unless_finite(r, t + 1);
//   }
//   double val_loss = evaluate(model, val);
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "loragrad/data/byte_dataset.hpp"
#include "loragrad/nn/tiny_gpt.hpp"
#include "loragrad/optim/optimizer.hpp"

namespace loragrad::train {

// The same validation set at every evaluation: data.fixed_batches (for a
// text, n_batches batches drawn once from a generator seeded with `seed`).
std::vector<data::Batch> fixed_batches(const data::Source& data, data::Split split, int64_t n_batches,
                                       int64_t batch, int64_t seq, uint64_t seed);

// Mean loss over the batches' targets, in eval mode (restored afterwards),
// without a graph. Batches with equal target counts (plain text) are averaged
// as they are; otherwise each batch weighs its count (the mean over every
// response byte). ValueError when a batch has no target (all -100): its loss
// would be NaN, as PyTorch's.
double evaluate(nn::TinyGPT& model, const std::vector<data::Batch>& batches);

struct StepResult {
  double loss = 0.0;       // mean training loss of the step's micro-batches, before the update
  double grad_norm = 0.0;  // global L2 norm of the gradients before clipping
  bool applied = false;    // false: the loss or the gradient was not finite and the step was skipped
  bool has_kl = false;     // a KLTerm was given (weight > 0)
  double kl = NAN;         // then: the mean KL to the base over the micro-batches (kl.hpp), before the update
};

// The KL-to-base penalty of a step (kl.hpp): the objective becomes
//   loss + weight * (1/K) sum_k kl_to_base(model, batches[k])
// with one batch of the KL text per micro-batch (K of them). weight 0 (the
// default): no penalty, and batches is not looked at.
struct KLTerm {
  double weight = 0.0;
  std::vector<data::Batch> batches;  // one per micro-batch
};

// One optimisation step over one or more equal-sized micro-batches (gradient
// accumulation): zero the gradients; for each micro-batch, forward and
// backward of loss / K, so the gradients are those of the mean loss over all
// K micro-batches (a K-times larger batch). With masked targets (instruction
// data) the micro-batches hold different numbers n_k of targets: each loss
// then weighs n_k / sum(n), so the step follows the mean over all the step's
// targets, as HF's Trainer does with num_items_in_batch. A micro-batch
// without a target is a ValueError (never trained on silently: its loss is
// NaN). Then clip the optimizer's parameters to
// max_grad_norm (when > 0); update. A non-finite loss or gradient skips the
// update (the gradients are zeroed) and returns applied == false. Only the
// optimizer's parameters are clipped: with an adapter, the frozen base has no
// gradients to clip.
StepResult train_step(nn::TinyGPT& model, optim::Optimizer& optimizer, const std::vector<data::Batch>& micro_batches,
                      double max_grad_norm);
// The same with a KL penalty (kl.weight > 0): after each micro-batch's loss
// backward, kl_to_base on its KL batch, backward of weight * KL / K (a graph
// at a time: the peak memory stays that of one forward). A non-finite KL
// skips the step as a non-finite loss does. ValueError when kl.batches does
// not hold one batch per micro-batch, or the model has no base to compare
// with (kl.hpp).
StepResult train_step(nn::TinyGPT& model, optim::Optimizer& optimizer, const std::vector<data::Batch>& micro_batches,
                      double max_grad_norm, const KLTerm& kl);

// Training runs stop at the first skipped step rather than write a model that
// learned nothing: throws ValueError "step N: the loss is nan ..." (or the
// KL to the base, or the gradient norm; with the usual causes) when
// !r.applied. `step` counts from 1.
void stop_unless_finite(const StepResult& r, int64_t step);

}  // namespace loragrad::train

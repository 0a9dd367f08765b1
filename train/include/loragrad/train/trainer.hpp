#pragma once
// Trainer: the one training loop of loragrad. The command line, the demo and
// the examples all train through it, so they share its behaviour:
//
//   - an LR schedule (cosine | linear | constant, linear warm-up) over `steps`
//     optimizer steps, gradient accumulation, gradient clipping;
//   - the loss on a held-out split before training (step 0), every
//     eval_every steps and at the end, with early stopping on it; at the same
//     moments, optionally, the loss on an old domain (track_old_loss), to
//     see what the adaptation forgets;
//   - optionally a penalty on the KL to the base (add_kl_to_base, kl.hpp):
//     the loss of every micro-batch gets lambda * KL(p_base || p_adapted)
//     on a batch of another text, the base being the model with its
//     adapters disabled;
//   - OUT/metrics.csv: step, train_loss, val_loss, lr, tokens_per_s,
//     grad_norm, old_loss, kl (empty cells: not measured at that step);
//   - one data interface (data::Source): plain text and packed, prompt-masked
//     instruction examples go through the same loop;
//   - OUT/checkpoint-STEP/ every save_every steps: the model part (written by
//     the caller's Output::save: an adapter or a checkpoint), the optimizer
//     state, every generator's offset (batches, every dropout) and the step,
//     so that resume() continues bit for bit: 20 + 20 steps write the same
//     bytes as 40 steps straight;
//   - a non-finite loss or gradient stops the run with an error (nothing is
//     written by that step; earlier checkpoints stay).
//
//   Trainer trainer(model, opt, train_data, val_data, cfg, output, identity);
//   if (!resume_dir.empty()) trainer.resume(resume_dir);
//   TrainResult r = trainer.fit();
//   output.save(out_dir);
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "loragrad/data/byte_dataset.hpp"
#include "loragrad/generator.hpp"
#include "loragrad/nn/tiny_gpt.hpp"
#include "loragrad/optim/lr_schedule.hpp"
#include "loragrad/optim/optimizer.hpp"
#include "loragrad/train/progress.hpp"
#include "loragrad/train/step.hpp"

namespace loragrad::train {

struct TrainConfig {
  int64_t steps = 100;         // optimizer steps in the whole run
  int64_t batch = 8;           // sequences per micro-batch
  int64_t seq = 64;            // bytes per sequence
  int64_t grad_accum = 1;      // micro-batches per step: a step sees batch * grad_accum sequences
  std::string schedule = "cosine";  // cosine | linear | constant
  int64_t warmup = -1;         // linear warm-up steps; -1: 5% of steps
  double min_lr_ratio = 0.1;   // cosine ends at lr * min_lr_ratio
  double clip_norm = 1.0;      // global gradient norm limit; 0: no clipping
  uint64_t seed = 0;           // training batches; the validation batches use seed + 1
  int64_t eval_every = 0;      // steps between validations; 0: 5 per run
  int64_t eval_batches = 4;    // validation batches (of `batch` sequences) per evaluation
  int64_t early_stop = 0;      // stop after this many evaluations without a new best; 0: never
  int64_t save_every = 0;      // write out_dir/checkpoint-STEP every this many steps; 0: never
  std::string out_dir;         // metrics.csv and checkpoints; "" writes neither
  bool quiet = false;          // plain log lines instead of a live bar
  std::string label;           // shown in the progress line (e.g. the method)

  void validate() const;       // ValueError naming the field
  optim::LRSchedule lr_schedule() const;
};

// Where the training and validation batches come from (a ByteDataset or an
// InstructionDataset, and which of its splits).
struct TextSource {
  const data::Source* data = nullptr;
  data::Split split = data::Split::train;
  int64_t size() const { return data ? data->size(split) : 0; }
};

struct MetricsRow {
  int64_t step = 0;
  double train_loss = NAN, val_loss = NAN, lr = NAN, tokens_per_s = NAN, grad_norm = NAN;
  double old_loss = NAN;  // the old domain's loss (track_old_loss), at validation steps
  double kl = NAN;        // add_kl_to_base: the step's KL to the base (mean over its micro-batches, before the update)
};

// Tensor bytes of a run, measured by the storage allocator (memory.hpp), not
// computed from shapes: what the frozen base, the trainable weights, their
// gradients and the optimizer state hold, and the largest extra the forward
// and backward passes needed on top (activations and temporaries).
struct MemoryUse {
  size_t frozen_weights = 0;     // parameters without requires_grad, plus NF4 codes and scales
  size_t trainable_weights = 0;  // the adapter (or the whole model, for full fine-tuning)
  size_t gradients = 0;
  size_t optimizer_state = 0;    // AdamW's two moments per trainable weight
  size_t activations_peak = 0;   // peak during a step minus what was live before it and the gradients
  size_t peak_total = 0;         // the largest live tensor bytes during any step
  std::string str() const;       // one line: "frozen base 1.2 MiB, adapter 24 KiB, ..."
};

struct TrainResult {
  int64_t steps_done = 0;
  double last_train_loss = NAN;
  double val_loss_before = NAN;  // step 0
  double final_val_loss = NAN;   // at the last step (NaN without a validation split)
  double best_val_loss = NAN;
  int64_t best_step = -1;
  double old_loss_before = NAN, final_old_loss = NAN;  // track_old_loss: step 0 and the last step
  // add_kl_to_base: the KL to the base on eval_batches fixed batches of its
  // text, before training (NaN when resumed) and after the last step.
  double kl_before = NAN, kl_after = NAN;
  bool stopped_early = false;
  double tokens_per_s = 0.0, steps_per_s = 0.0, train_s = 0.0;
  std::vector<MetricsRow> metrics;
  MemoryUse memory;
};

class Trainer {
 public:
  // The caller's part of a checkpoint: the trained weights (an adapter
  // directory's two files, or a TinyGPT checkpoint) written into / read from a
  // directory. load is needed only for resume().
  struct Output {
    std::function<void(const std::string& dir)> save;
    std::function<void(const std::string& dir)> load;
  };

  // `identity` describes what a checkpoint of this run can continue (model
  // hyper-parameters, method, r, batch, ...): resume() refuses a checkpoint
  // whose identity differs, naming each key. The data sources must outlive
  // the Trainer; val may be empty (no validation).
  Trainer(nn::TinyGPT& model, optim::Optimizer& optimizer, TextSource train, TextSource val, TrainConfig config,
          Output output, nlohmann::json identity);

  // Continues from out_dir/checkpoint-STEP: model part, optimizer, generators,
  // step, metrics and early-stopping state. IOError naming the directory and
  // the mismatched keys when the checkpoint belongs to another run.
  void resume(const std::string& checkpoint_dir);

  // Trains from the current step to config.steps (or an early stop).
  TrainResult fit();

  // Measures the loss on `old` (e.g. the base model's pretraining domain) at
  // step 0 and at every validation step, into MetricsRow::old_loss: what the
  // adaptation forgets, while it trains. Uses eval_batches fixed batches of
  // old (seed + 3); training is unchanged. Call before fit() (and resume()).
  void track_old_loss(TextSource old);

  // Adds weight * KL(p_base || p_adapted) on `data` (kl.hpp) to every
  // micro-batch's loss: one batch of `data` per micro-batch, drawn with a
  // generator of its own (seed + 4, checkpointed with the others); the KL of
  // each step goes to MetricsRow::kl, and the KL on eval_batches fixed batches
  // (seed + 5) before and after training to TrainResult. The weight joins the
  // identity ("kl_weight"), so resume() refuses a checkpoint of a run with
  // another weight or none. ValueError for a weight that is not positive and
  // finite, a text too short for seq, or a model without a base to compare
  // with (kl.hpp: no LoRA layer, modules_to_save, PiSSA). Call before resume().
  void add_kl_to_base(TextSource data, double weight);

  // Called after each validation (step 0 included) with the step and the
  // validation loss, in eval mode without a graph: e.g. to measure forgetting
  // on another text at the same moments.
  void on_validation(std::function<void(int64_t step, double val_loss)> f) { on_validation_ = std::move(f); }

  int64_t step() const { return step_; }
  static std::string checkpoint_name(int64_t step);  // "checkpoint-STEP"

 private:
  void save_checkpoint();
  void write_metrics() const;
  std::vector<data::Batch> next_micro_batches();
  std::vector<data::Batch> next_kl_batches();
  double validate_now();
  std::vector<std::pair<std::string, Generator*>> generators();

  nn::TinyGPT& model_;
  optim::Optimizer& opt_;
  TextSource train_, val_;
  TrainConfig cfg_;
  Output output_;
  nlohmann::json identity_;
  optim::LRSchedule schedule_;
  Generator batch_gen_;
  std::vector<data::Batch> val_batches_, old_batches_;
  double kl_weight_ = 0.0;  // 0: no KL penalty
  TextSource kl_;
  Generator kl_gen_;
  std::vector<data::Batch> kl_eval_batches_;
  bool resumed_ = false;

  int64_t step_ = 0;
  double best_val_ = NAN;
  int64_t best_step_ = -1, evals_since_best_ = 0;
  std::vector<MetricsRow> metrics_;
  std::function<void(int64_t, double)> on_validation_;
};

}  // namespace loragrad::train

#pragma once
// The demo's second part: the seed's training advice, run on the same base
// model as the method comparison.
//
//   instruction_tuning   LoRA trained on prompt -> response pairs (the
//                        built-in recipe-qa task), the loss on response bytes
//                        only; before/after: the response loss, how many
//                        held-out questions the model answers exactly
//                        (greedy), and one question with both answers.
//   forgetting_tradeoff  the same LoRA run on recipes three ways: plain, with
//                        general text (stories) mixed into every batch, and
//                        with a KL term to the base model at a few weights;
//                        the loss on the new domain against the loss on the
//                        old one: what each buys and what it costs.
#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

namespace demo {

// What both sections need of the demo's options.
struct AdviceSetup {
  std::string base_path;  // the pretrained (stories) checkpoint
  std::string out;        // the demo's output directory (metrics go below it)
  int64_t steps = 300, batch = 16, seq = 64, eval_batches = 8;
  int64_t corpus_bytes = 1 << 20;  // of each built-in text
  int64_t questions = 50;          // held-out questions asked before and after
  uint64_t seed = 0;
  bool quiet = false;
};

struct InstructionReport {
  int64_t train_examples = 0, val_examples = 0;
  std::string pack_stats;               // the training split's PackStats
  double loss_before = 0, loss_after = 0;  // mean loss over held-out response bytes
  int64_t asked = 0, correct_before = 0, correct_after = 0;  // exact greedy answers
  std::string question, expected, answer_before, answer_after;  // one held-out example
  double train_s = 0;
};

InstructionReport instruction_tuning(const AdviceSetup& s);
void print(const InstructionReport& r, std::ostream& os);

// One LoRA run of the trade-off: what it learned (new domain, recipes) and
// what it kept (old domain, stories), both on fixed held-out batches.
struct TradeoffRow {
  std::string name;           // "plain", "mix 10%", "KL 0.3", ...
  double mix = 0, kl_weight = 0;
  double loss_new = 0;        // validation loss on recipes after training
  double loss_old = 0;        // loss on stories with the adapter on
  double kl_after = 0;        // KL(p_base || p_adapted) on stories after training (NaN when not tracked)
  double step_ms = 0;         // median
};
struct TradeoffReport {
  double base_new = 0, base_old = 0;  // the pretrained model's losses
  std::vector<TradeoffRow> rows;
};

TradeoffReport forgetting_tradeoff(const AdviceSetup& s);
void print(const TradeoffReport& r, std::ostream& os);

}  // namespace demo

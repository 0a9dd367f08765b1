// The demo's second part (demo_advice.hpp): instruction tuning and the
// forgetting trade-off, through the same Trainer as everything else.
#include "demo_advice.hpp"
#include "demo_report.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>
#include <ostream>

#include "loragrad/data/byte_dataset.hpp"
#include "loragrad/data/corpus.hpp"
#include "loragrad/data/instruction_dataset.hpp"
#include "loragrad/data/mixed_source.hpp"
#include "loragrad/format.hpp"
#include "loragrad/lora/inject.hpp"
#include "loragrad/nn/tiny_gpt.hpp"
#include "loragrad/optim/adamw.hpp"
#include "loragrad/train/kl.hpp"
#include "loragrad/train/step.hpp"
#include "loragrad/train/trainer.hpp"

namespace demo {

using namespace loragrad;
namespace fs = std::filesystem;

namespace {

// LoRA on every linear layer, r 8, alpha 16: the comparison's lora_all.
lora::LoraConfig lora_all(uint64_t seed) {
  lora::LoraConfig c;
  c.r = 8;
  c.lora_alpha = 16;
  c.target_modules = {"all-linear"};
  c.seed = seed;
  return c;
}

optim::AdamW adapter_optimizer(const nn::Module& model, double lr) {
  std::vector<Tensor> trainable;
  for (const Tensor& p : model.parameters())
    if (p.requires_grad()) trainable.push_back(p);
  return optim::AdamW({optim::ParamGroup("adapter", trainable, lr, 0.0)});
}

// The comparison's training setup (demo.cpp: adapt), so that the trade-off's
// plain run is its lora_all run again.
train::TrainConfig adapter_run(const AdviceSetup& s, const std::string& label) {
  train::TrainConfig tc;
  tc.steps = s.steps;
  tc.batch = s.batch;
  tc.seq = s.seq;
  tc.warmup = std::max<int64_t>(1, s.steps / 10);
  tc.seed = s.seed + 20;
  tc.eval_every = std::max<int64_t>(1, s.steps / 5);
  tc.eval_batches = s.eval_batches;
  tc.quiet = s.quiet;
  tc.label = label;
  tc.out_dir = (fs::path(s.out) / "metrics" / label).string();
  return tc;
}

// The model's greedy answer to a prompt: the bytes after it up to and
// including the first newline (the training responses end with one), at most
// max_bytes.
std::string greedy_answer(nn::TinyGPT& model, const std::string& prompt, int64_t max_bytes) {
  const std::string text = nn::sample_text(model, prompt, max_bytes, /*temperature=*/0.0, /*top_k=*/0, 0);
  std::string answer = text.substr(prompt.size());
  if (const size_t nl = answer.find('\n'); nl != std::string::npos) answer.resize(nl + 1);
  return answer;
}

// How many of the first n held-out examples the model answers exactly.
int64_t exact_answers(nn::TinyGPT& model, const data::InstructionDataset& ds, int64_t n, int64_t max_bytes) {
  int64_t correct = 0;
  for (int64_t i = 0; i < n; ++i) {
    const data::Example& e = ds.example(data::Split::validation, i);
    correct += greedy_answer(model, e.prompt, max_bytes) == e.response;
  }
  return correct;
}

// A response for display: its newline shown as the escape.
std::string shown(std::string s) {
  std::string out;
  for (char c : s) {
    if (c == '\n')
      out += "\\n";
    else
      out += (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e) ? '?' : c;
  }
  return "\"" + out + "\"";
}

double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

InstructionReport instruction_tuning(const AdviceSetup& s) {
  InstructionReport r;
  const data::InstructionDataset ds(data::recipe_questions(4000, s.seed + 7), 0.1);
  r.train_examples = ds.num_examples(data::Split::train);
  r.val_examples = ds.num_examples(data::Split::validation);
  r.pack_stats = ds.stats(data::Split::train, s.seq).str();
  r.asked = std::min<int64_t>(s.questions, r.val_examples);
  int64_t max_bytes = 1;
  for (const data::Example& e : ds.examples()) max_bytes = std::max<int64_t>(max_bytes, e.response.size());

  auto model = nn::TinyGPT::load(s.base_path);
  lora::apply_lora(*model, lora_all(s.seed));  // B = 0: the model answers as the base does
  const data::Example& shown_example = ds.example(data::Split::validation, 0);
  r.question = shown_example.prompt;
  r.expected = shown_example.response;
  r.answer_before = greedy_answer(*model, r.question, max_bytes);
  r.correct_before = exact_answers(*model, ds, r.asked, max_bytes);

  optim::AdamW opt = adapter_optimizer(*model, 4e-3);
  train::Trainer trainer(*model, opt, train::TextSource{&ds, data::Split::train},
                         train::TextSource{&ds, data::Split::validation}, adapter_run(s, "instruction_lora"),
                         train::Trainer::Output{}, nlohmann::json{{"demo", "instruction_lora"}});
  const train::TrainResult tr = trainer.fit();
  r.loss_before = tr.val_loss_before;
  r.loss_after = tr.final_val_loss;
  r.train_s = tr.train_s;
  r.answer_after = greedy_answer(*model, r.question, max_bytes);
  r.correct_after = exact_answers(*model, ds, r.asked, max_bytes);
  return r;
}

void print(const InstructionReport& r, std::ostream& os) {
  os << "\ninstruction tuning (LoRA on every linear layer, r 8, on the recipe-qa task: " << r.train_examples
     << " prompt -> response pairs, " << r.val_examples << " held out;\n  packed several per row, loss on response "
     << "bytes only; training split: " << r.pack_stats << ")\n"
     << "  held-out response loss " << fixed(r.loss_before, 4) << " -> " << fixed(r.loss_after, 4)
     << " nats/byte; exact greedy answers " << r.correct_before << " -> " << r.correct_after << " of " << r.asked
     << " held-out questions (" << fixed(r.train_s, 1) << " s)\n"
     << "  question " << shown(r.question) << ", expected " << shown(r.expected) << "\n"
     << "    base model answers     " << shown(r.answer_before) << "\n"
     << "    with the adapter       " << shown(r.answer_after) << "\n";
}

TradeoffReport forgetting_tradeoff(const AdviceSetup& s) {
  // The comparison's corpora and held-out batches (demo.cpp: make_data).
  const size_t bytes = static_cast<size_t>(s.corpus_bytes);
  const data::ByteDataset stories(data::builtin_corpus(data::Domain::stories, bytes, s.seed), 0.1);
  const data::ByteDataset recipes(data::builtin_corpus(data::Domain::recipes, bytes, s.seed + 1), 0.1);
  const std::vector<data::Batch> val_old =
      train::fixed_batches(stories, data::Split::validation, s.eval_batches, s.batch, s.seq, s.seed + 3);
  TradeoffReport rep;
  {
    auto base = nn::TinyGPT::load(s.base_path);
    rep.base_old = train::evaluate(*base, val_old);
    rep.base_new = train::evaluate(
        *base, train::fixed_batches(recipes, data::Split::validation, s.eval_batches, s.batch, s.seq, s.seed + 21));
  }

  struct Run {
    std::string name;
    double mix, kl;
  };
  const std::vector<Run> runs = {{"plain", 0, 0},      {"mix 10%", 0.1, 0}, {"mix 30%", 0.3, 0},
                                 {"KL 0.1", 0, 0.1},   {"KL 0.3", 0, 0.3},  {"KL 1.0", 0, 1.0}};
  for (const Run& run : runs) {
    auto model = nn::TinyGPT::load(s.base_path);
    lora::apply_lora(*model, lora_all(s.seed));
    optim::AdamW opt = adapter_optimizer(*model, 4e-3);
    // Stories from its train split into the batches; the held-out tenth stays for measuring.
    std::unique_ptr<data::MixedSource> mixed;
    if (run.mix > 0) mixed = std::make_unique<data::MixedSource>(recipes, stories, run.mix);
    const data::Source& train_data = mixed ? static_cast<const data::Source&>(*mixed) : recipes;
    std::string label = "tradeoff_" + run.name;
    for (char& c : label)
      if (c == ' ' || c == '%' || c == '.') c = '_';
    train::Trainer trainer(*model, opt, train::TextSource{&train_data, data::Split::train},
                           train::TextSource{&recipes, data::Split::validation}, adapter_run(s, label),
                           train::Trainer::Output{}, nlohmann::json{{"demo", label}});
    if (run.kl > 0) trainer.add_kl_to_base(train::TextSource{&stories, data::Split::train}, run.kl);
    const train::TrainResult tr = trainer.fit();

    TradeoffRow row;
    row.name = run.name;
    row.mix = run.mix;
    row.kl_weight = run.kl;
    row.loss_new = tr.final_val_loss;
    row.loss_old = train::evaluate(*model, val_old);
    row.kl_after = train::evaluate_kl_to_base(*model, val_old);
    std::vector<double> ms;
    for (const train::MetricsRow& m : tr.metrics)
      if (m.step > 0 && std::isfinite(m.tokens_per_s) && m.tokens_per_s > 0)
        ms.push_back(1000.0 * static_cast<double>(s.batch * s.seq) / m.tokens_per_s);
    row.step_ms = median(ms);
    rep.rows.push_back(row);
  }
  return rep;
}

void print(const TradeoffReport& r, std::ostream& os) {
  os << "\nforgetting trade-off (LoRA on every linear layer adapting the stories model to recipes, as lora_all above;\n"
     << "  mix: that share of every batch's rows is stories text; KL: the loss adds weight * KL(p_base || p_adapted)\n"
     << "  on a batch of stories, the base being the same model with its adapter disabled)\n";
  Table t({"run", "recipes (new)", "stories (old)", "forgot", "KL on stories", "ms/step"});
  for (const TradeoffRow& row : r.rows)
    t.add_row({row.name, fixed(row.loss_new, 4), fixed(row.loss_old, 4), fixed(row.loss_old - r.base_old, 4),
               fixed(row.kl_after, 4), fixed(row.step_ms, 1)});
  t.print(os);
  os << "  losses in nats/byte on fixed held-out batches; the pretrained model: recipes " << fixed(r.base_new, 4)
     << ", stories " << fixed(r.base_old, 4) << ";\n  forgot: stories loss minus the pretrained model's; KL on "
     << "stories: nats per position on the same held-out batches.\n";
}

}  // namespace demo

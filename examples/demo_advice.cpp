// The demo's second part (demo_advice.hpp): instruction tuning and the
// forgetting trade-off, through the same Trainer as everything else.
#include "demo_advice.hpp"

#include <algorithm>
#include <filesystem>
#include <ostream>

#include "loragrad/data/corpus.hpp"
#include "loragrad/data/instruction_dataset.hpp"
#include "loragrad/format.hpp"
#include "loragrad/lora/inject.hpp"
#include "loragrad/nn/tiny_gpt.hpp"
#include "loragrad/optim/adamw.hpp"
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

train::TrainConfig adapter_run(const AdviceSetup& s, const std::string& label) {
  train::TrainConfig tc;
  tc.steps = s.steps;
  tc.batch = s.batch;
  tc.seq = s.seq;
  tc.warmup = std::max<int64_t>(1, s.steps / 10);
  tc.seed = s.seed + 40;
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

}  // namespace demo

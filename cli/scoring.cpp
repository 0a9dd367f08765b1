#include "scoring.hpp"

#include <algorithm>
#include <cmath>

#include "loragrad/autograd.hpp"
#include "loragrad/data/instruction_dataset.hpp"
#include "loragrad/error.hpp"
#include "loragrad/format.hpp"

namespace loragrad::cli {

namespace {

Tensor tokens_of(std::string_view text) {
  std::vector<int64_t> ids;
  for (unsigned char c : text) ids.push_back(c);
  return from_indices(ids, {1, static_cast<int64_t>(ids.size())});
}

void check_finite(double loss) {
  if (!std::isfinite(loss))
    throw ValueError("the loss is " + std::to_string(loss) + ": the model's logits are not finite (NaN/Inf "
                     "or huge values in the weights, or an adapter scale lora_alpha / r that overflows)");
}

// Rows per forward pass when scoring packed examples.
constexpr int64_t kRows = 8;

}  // namespace

Score score_text(nn::TinyGPT& model, const std::string& text) {
  const int64_t block = model.config().block_size;
  const int64_t n = static_cast<int64_t>(text.size());
  if (n < 2) throw ValueError("the text must hold at least 2 bytes, it holds " + std::to_string(n));
  NoGradGuard no_grad;
  double total = 0;
  int64_t count = 0;
  for (int64_t start = 0; start + 1 < n; start += block) {
    const int64_t t = std::min(block, n - 1 - start);
    const Tensor x = tokens_of(std::string_view(text).substr(static_cast<size_t>(start), static_cast<size_t>(t)));
    const Tensor y = tokens_of(std::string_view(text).substr(static_cast<size_t>(start + 1), static_cast<size_t>(t)));
    total += model.loss(x, y).item() * static_cast<double>(t);
    count += t;
  }
  const Score s{total / static_cast<double>(count), count};
  check_finite(s.loss);
  return s;
}

Score score(nn::TinyGPT& model, const data::Source& src, data::Split split) {
  const auto* ins = dynamic_cast<const data::InstructionDataset*>(&src);
  if (!ins) return score_text(model, std::string(src.scored_bytes(split)));
  const int64_t block = model.config().block_size;
  const std::string why = ins->cannot_sample(split, block);
  if (!why.empty()) throw ValueError("nothing to score: " + why);
  // Every usable example once: fixed_batches with room for all of them.
  const int64_t n = ins->num_examples(split);
  const std::vector<data::Batch> batches = ins->fixed_batches(split, n, kRows, block, 0);
  nn::ModeScope eval_mode(model, false);
  NoGradGuard no_grad;
  double total = 0;
  int64_t count = 0;
  for (const data::Batch& b : batches) {
    const int64_t k = b.num_targets();
    total += model.loss(b.x, b.y, b.starts).item() * static_cast<double>(k);
    count += k;
  }
  const Score s{total / static_cast<double>(count), count};
  check_finite(s.loss);
  return s;
}

std::string ForgettingReport::table() const {
  auto cell = [](const std::string& text, size_t width) {
    return text.size() >= width ? text + " " : std::string(width - text.size(), ' ') + text;
  };
  auto signed_ = [](double x) { return (x >= 0 ? "+" : "") + fixed(x, 4); };
  std::string s = "loss in nats/byte       adapter off   adapter on   on - off\n";
  auto row = [&](const std::string& label, const Score& off, const Score& on) {
    std::string l = label;
    l.resize(22, ' ');
    s += l + cell(fixed(off.loss, 4), 13) + cell(fixed(on.loss, 4), 13) + cell(signed_(on.loss - off.loss), 11) + "\n";
  };
  row("new", new_off, new_on);
  row("old", old_off, old_on);
  s += "new: " + new_name + " (" + with_commas(new_on.predictions) + " bytes scored)\n";
  s += "old: " + old_name + " (" + with_commas(old_on.predictions) + " bytes scored)\n";
  s += "learning   (new: off - on) " + signed_(learning()) + " nats/byte\n";
  s += "forgetting (old: on - off) " + signed_(forgetting()) + " nats/byte\n";
  return s;
}

nlohmann::ordered_json ForgettingReport::to_json() const {
  auto part = [](const std::string& name, const Score& on, const Score& off) {
    return nlohmann::ordered_json{{"data", name},
                                  {"loss_adapter_on", on.loss},
                                  {"loss_adapter_off", off.loss},
                                  {"on_minus_off", on.loss - off.loss},
                                  {"bytes_scored", on.predictions}};
  };
  nlohmann::ordered_json j;
  j["new"] = part(new_name, new_on, new_off);
  j["old"] = part(old_name, old_on, old_off);
  j["learning"] = learning();
  j["forgetting"] = forgetting();
  return j;
}

}  // namespace loragrad::cli

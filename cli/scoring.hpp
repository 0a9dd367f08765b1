#pragma once
// eval's numbers: the loss of a model on a data split, and the forgetting
// report (new and old domain, adapter on and off).
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "loragrad/data/source.hpp"
#include "loragrad/nn/tiny_gpt.hpp"

namespace loragrad::cli {

struct Score {
  double loss = 0.0;        // nats per scored byte
  int64_t predictions = 0;  // bytes scored
};

// Mean cross entropy over every next-byte prediction of a text, in windows of
// at most block_size bytes (each window starts a fresh context).
Score score_text(nn::TinyGPT& model, const std::string& text);

// The split of a source: a text as score_text; instruction examples by
// their response bytes, each example computed as if alone (packed rows with
// the exact mask, up to block_size + 1 bytes of it). ValueError when the
// split has nothing to score or the loss is not finite.
Score score(nn::TinyGPT& model, const data::Source& src, data::Split split);

// What an adapter learned and what it forgot: the loss on the new domain
// (what it was trained on) and on an old one (e.g. the base's pretraining
// text), with the adapter on (base + adapter) and off (the base checkpoint
// alone: also without modules_to_save and, for QLoRA, unquantised).
struct ForgettingReport {
  std::string new_name, old_name;  // what was scored ("recipes.jsonl", "domain stories (held out)")
  Score new_on, new_off, old_on, old_off;
  double learning() const { return new_off.loss - new_on.loss; }    // > 0: the adapter helps on the new domain
  double forgetting() const { return old_on.loss - old_off.loss; }  // > 0: it hurts on the old one
  std::string table() const;
  nlohmann::ordered_json to_json() const;
};

}  // namespace loragrad::cli

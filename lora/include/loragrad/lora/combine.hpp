#pragma once
// Several adapters on one model: choosing, switching off, deleting, combining
// and merging them, over every LoRA layer at once (PEFT's LoraModel methods).
//
// The model's active adapter is the one its LoRA layers run. A layer that
// does not hold it runs as its base (as in PEFT, where such a layer skips the
// missing adapter); loragrad marks such a layer disabled.
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "loragrad/nn/module.hpp"

namespace loragrad::lora {

class LoraLinear;

// Names of every adapter in the model, in first-seen order.
std::vector<std::string> adapter_names(const nn::Module& model);

// The adapter the model runs ("" when it has no LoRA layer). While adapters
// are disabled it is still the one enable_adapters brings back. Throws
// ValueError when that cannot be told (adapters on disjoint layers, all
// disabled): call set_adapter then.
std::string active_adapter(const nn::Module& model);

// Makes `name` the active adapter everywhere: its parameters become trainable
// and every other adapter's frozen (PEFT's set_adapter). Layers without it run
// as their base. A merged layer is unmerged first. If all adapters were
// disabled they stay disabled. ValueError (listing the adapters) if no layer has it.
void set_adapter(nn::Module& model, const std::string& name);

// Every LoRA layer runs as its base: the output is the base model's, bit for
// bit (a merged layer is unmerged first).
void disable_adapters(nn::Module& model);
// Undoes disable_adapters: the layers holding the active adapter run it again.
void enable_adapters(nn::Module& model);

// disable_adapters for a scope: every LoRA layer runs as its base until the
// scope ends, also when it ends by an exception; then each layer gets back
// its own disabled flag (not enable_adapters': a layer that was disabled
// stays so). For computing the base model's output from the adapted model
// itself, without a second copy of the weights (e.g. train/kl.hpp):
//
//   { lora::AdaptersDisabled off(model); base_logits = model.forward(x); }
//
// A merged layer is unmerged (as disable_adapters does) and stays unmerged:
// its output with the adapter back on is the same up to rounding.
class AdaptersDisabled {
 public:
  explicit AdaptersDisabled(nn::Module& model);
  ~AdaptersDisabled();
  AdaptersDisabled(const AdaptersDisabled&) = delete;
  AdaptersDisabled& operator=(const AdaptersDisabled&) = delete;
  // The LoRA layers it switched off (0: the model has none, and runs as it is).
  size_t layers() const { return layers_.size(); }

 private:
  std::vector<std::pair<std::shared_ptr<LoraLinear>, bool>> layers_;  // each layer and its flag before
};

// Removes adapter `name` from every layer. If it was active, the alphabetically
// first remaining adapter becomes active (as PEFT does). A layer left without
// adapters stays a LoRA layer that runs as its base. ValueError if no layer has it.
void delete_adapter(nn::Module& model, const std::string& name);

// PEFT's add_weighted_adapter: a new adapter `new_name` on every layer that
// holds one of `adapters`, from their weighted combination (w_i = weights[i],
// s_i = adapter i's scale). The new adapter has r = alpha = its rank (scale 1,
// no rsLoRA), is neither active nor trainable, and:
//   "linear": A = sum sqrt(w_i s_i) A_i, B = sum sqrt(w_i s_i) B_i (equal ranks,
//             w_i s_i >= 0). B A then holds cross terms B_i A_j unless one
//             adapter is given (PEFT's choice whenever len(adapters) == 1).
//   "cat":    A = [w_1 s_1 A_1; w_2 s_2 A_2; ...] (rows), B = [B_1, B_2, ...]
//             (columns): B A = sum w_i s_i B_i A_i exactly; rank = sum of ranks.
//   "svd":    dW = sum w_i s_i B_i A_i truncated to rank svd_rank (0: the
//             largest source rank): B = U_k diag(S_k), A = Vh_k, PEFT's split.
//             (PEFT 0.21 weighs the svd case with w_i s_i on top of
//             get_delta_weight, which already holds s_i; loragrad uses s_i once.)
// DoRA adapters cannot be combined (ValueError). Everything is checked before
// the model changes.
void add_weighted_adapter(nn::Module& model, const std::vector<std::string>& adapters,
                          const std::vector<double>& weights, const std::string& new_name,
                          const std::string& combination = "svd", int64_t svd_rank = 0);

// What merge_and_unload did.
struct MergeReport {
  std::vector<std::string> merged;    // layers whose active adapter went into the base weight
  std::vector<std::string> unloaded;  // layers replaced by their base without a merge (adapter absent)
  // NF4 (or bf16) bases merged without requantisation (requantize = false): W0
  // was dequantised and the layer is now a float32 nn::Linear holding W0 + delta.
  std::vector<std::string> dequantized;
  // NF4 bases merged with requantize = true are dequantised, merged and
  // requantised: the largest |requantised - exact merged weight| over those
  // layers (0 for dense bases, and whenever requantize is false).
  double max_requantization_error = 0;
};

// Merges the active adapter of every LoRA layer into its base weight (LoRA:
// W0 + s B A; DoRA: (m / n) (W0 + s B A)) and puts the base back in the
// layer's place (PEFT's merge_and_unload). The result has no LoRA layer left.
//
// An NF4 (QLoRA) base: by default (requantize = false) W0 is dequantised and
// the merged weight stays float32: the layer becomes an nn::Linear (frozen,
// like the base) holding dequant(W0) + delta, exactly the weight the unmerged
// layer computes with, so the merged model matches the unmerged one up to
// float32 rounding. requantize = true rounds the merged weight to NF4 again
// (blocksize and double quantisation of the base), as PEFT does for a
// bitsandbytes 4-bit base: the layer stays an NF4Linear, 4 bits per weight,
// and the merge is lossy (max_requantization_error says how much).
// Either way NF4Linear layers that hold no adapter stay NF4 (their
// dequantisation, NF4Linear::dequantize(), is exact), and a layer merged
// before this call keeps what that merge wrote.
// A bf16 base (mixed precision) is merged the same way: widened to float32
// (exact) by default, rounded to bf16 again with requantize = true.
MergeReport merge_and_unload(nn::Module& model, bool requantize = false);

// Puts every LoRA layer's base back without merging (PEFT's unload): the
// original model, adapters dropped. Returns the number of layers unwrapped.
int unload(nn::Module& model);

}  // namespace loragrad::lora

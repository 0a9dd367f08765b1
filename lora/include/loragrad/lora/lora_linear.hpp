#pragma once
// LoraLinear: LoRA, rsLoRA and DoRA adapters around a frozen linear layer,
// computed as PEFT's lora.Linear computes them (../shared/spec/peft-format.md).
//
// The module tree mirrors PEFT, so parameter names match PEFT's in-model names.
// Wrapping the layer at path P gives
//
//   P.base_layer.weight, P.base_layer.bias          frozen (requires_grad false)
//   P.lora_A.<adapter>.weight                       (r, in)   trainable
//   P.lora_B.<adapter>.weight                       (out, r)  trainable
//   P.lora_magnitude_vector.<adapter>.weight        (out)     DoRA only, trainable
//
// (lora_dropout.<adapter> is an nn::Dropout: no parameters). Several named
// adapters may live on one layer; exactly one is active in forward.
//
// Forward, with s = alpha / r (rsLoRA: alpha / sqrt(r)) and x_d = dropout(x):
//   LoRA: y = base(x) + s * B (A x_d)                 two thin matmuls, B A never formed
//   DoRA: n = ||W0 + s B A||_row, a constant in backward (detached, DoRA paper 4.3)
//         y = base(x) + (m/n - 1) * (W0 x_d) + (m/n) * s * B (A x_d)
//         which without dropout is (m/n) * ((W0 + s B A) x) + b.
//   Only n is detached: base(x), b and W0 x_d use the base's own (live) weight
//   and bias, so a base made trainable gets exactly PEFT's gradients.
//
// The base is an nn::Linear or a lora::NF4Linear; this class touches it only
// through forward() and one helper that yields its dense weight (base_weight()).
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "loragrad/lora/lora_config.hpp"
#include "loragrad/nn/layers.hpp"
#include "loragrad/nn/module.hpp"
#include "loragrad/tensor.hpp"

namespace loragrad::lora {

// PEFT's nn.ModuleDict: child modules keyed by name, in insertion order.
class ModuleDict : public nn::Module {
 public:
  ModuleDict() = default;
  // key: new, non-empty, without '.'. Throws ValueError otherwise.
  void insert(const std::string& key, nn::ModulePtr m);
  bool contains(const std::string& key) const;
  // Throws ValueError naming the key and the keys that exist.
  const nn::ModulePtr& at(const std::string& key) const;
  template <class M>
  std::shared_ptr<M> get(const std::string& key) const {
    return std::dynamic_pointer_cast<M>(at(key));
  }
  std::vector<std::string> keys() const;
  size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }
  // A new dict holding every entry but `key` (a Module cannot unregister a
  // child, so removing means rebuilding the container). Keeps the train flag.
  std::shared_ptr<ModuleDict> without(const std::string& key) const;
  std::string type_name() const override { return "ModuleDict"; }

 private:
  std::vector<std::pair<std::string, nn::ModulePtr>> items_;
};

// DoRA's magnitude vector m (out), in a module of its own as in PEFT (whose
// class is lora.dora.DoraLinearLayer), so its name ends in ".weight".
class DoraMagnitude : public nn::Module {
 public:
  explicit DoraMagnitude(Tensor magnitude);  // made a leaf that requires grad
  std::string type_name() const override { return "lora.dora.DoraLinearLayer"; }
  Tensor weight;  // (out)
};

class LoraLinear : public nn::Module {
 public:
  // Wraps `base` (nn::Linear or lora::NF4Linear; anything else is a ValueError)
  // and freezes it. No adapter yet: forward is base(x).
  explicit LoraLinear(nn::ModulePtr base);
  // The same, then add_adapter(adapter_name, opts).
  LoraLinear(nn::ModulePtr base, const std::string& adapter_name, const LoraOptions& opts);

  Tensor forward(const Tensor& x) override;  // (..., in) -> (..., out)
  std::string type_name() const override;    // "lora.Linear" (NF4 base: "lora.Linear4bit")
  std::string extra_repr() const override;

  // ---- adapters ----
  // Adds adapter `name` (validated options; a new name without '.'), in the
  // base weight's dtype. The first adapter becomes active; later ones do not
  // (as PEFT's add_adapter). PiSSA init rewrites the base weight (W0 - s B A);
  // DoRA's m starts at the row norms of W0 + s B A.
  void add_adapter(const std::string& name, const LoraOptions& opts);
  // Removes it; if it was active, the alphabetically first remaining adapter
  // (if any) becomes active, as in PEFT. A merged adapter must be unmerged
  // first (ValueError).
  void delete_adapter(const std::string& name);
  // Makes `name` the active adapter: its parameters require grad, every other
  // adapter's are frozen (as PEFT's set_adapter). Unmerges a merged adapter first.
  void set_adapter(const std::string& name);
  const std::string& active_adapter() const { return active_; }  // "" when none
  std::vector<std::string> adapter_names() const;                // insertion order
  bool has_adapter(const std::string& name) const;
  const LoraOptions& adapter_options(const std::string& name) const;
  double scaling(const std::string& name) const;                 // s of that adapter
  bool is_dora(const std::string& name) const;
  // While disabled, forward returns base(x) itself (bit for bit the base
  // output). Disabling a merged layer unmerges it first, as PEFT does.
  void disable_adapters(bool disabled = true);
  bool adapters_disabled() const { return disabled_; }

  // The adapter's parameters: the member tensors themselves, so copy_() into
  // them loads values (unknown name: ValueError listing the adapters).
  Tensor& lora_A_weight(const std::string& name);    // (r, in)
  Tensor& lora_B_weight(const std::string& name);    // (out, r)
  Tensor& magnitude(const std::string& name);        // (out); ValueError when not DoRA
  nn::Dropout& dropout_module(const std::string& name);  // its gen decides the masks

  // ---- merging the active adapter into the base weight ----
  // LoRA: W = W0 + s B A.  DoRA: W = (m/n)[:, None] (W0 + s B A), n cached for unmerge.
  // While merged, forward is base(x). No-op when already merged or no adapter.
  // An NF4 base is dequantised, updated and requantised: lossy (each element
  // moves by up to ~14% of its block's absmax), as merging into bitsandbytes 4-bit is.
  void merge();
  // LoRA: W0 = W - s B A.  DoRA: W0 = W / (m/n)[:, None] - s B A (the cached n).
  void unmerge();
  bool merged() const { return !merged_adapter_.empty(); }
  const std::string& merged_adapter() const { return merged_adapter_; }

  // ---- maths without a graph (detached results) ----
  Tensor delta_weight(const std::string& name) const;  // s B A, (out, in)
  // The ONE place that knows the base's type: the dense W0 (out, in) (a
  // detached handle to the nn::Linear weight itself, or a fresh float32
  // NF4Linear::dequantize()) and the bias (or undefined).
  Tensor base_weight() const;
  Tensor base_bias() const;
  // Writes a dense (out, in) weight into the base, in place (NF4: requantised).
  void set_base_weight(const Tensor& w);
  bool base_is_nf4() const;

  // Bytes held by adapter parameters (A, B, m), of one adapter or of all.
  size_t adapter_bytes() const;
  size_t adapter_bytes(const std::string& name) const;

  int64_t in_features = 0, out_features = 0;
  // Registered children, in PEFT's order. Public like nn::Linear's weight.
  nn::ModulePtr base_layer;
  std::shared_ptr<ModuleDict> lora_dropout;
  std::shared_ptr<ModuleDict> lora_A;
  std::shared_ptr<ModuleDict> lora_B;
  std::shared_ptr<ModuleDict> lora_magnitude_vector;

 private:
  struct Adapter {
    LoraOptions opts;
    double scale;
  };
  const Adapter& adapter(const std::string& name, const char* op) const;
  Tensor dora_row_norm(const std::string& name) const;  // ||W0 + s B A||_row (out), no graph
  // For forward: the base's weight and bias handles themselves, NOT detached,
  // so gradient reaches them when the base is trainable, as in PEFT (NF4: the
  // dequantised weight, a constant; bias undefined when the base has none).
  Tensor live_base_weight() const;
  Tensor live_base_bias() const;
  void set_trainable(const std::string& active);

  std::vector<std::pair<std::string, Adapter>> adapters_;  // insertion order
  std::string active_;
  std::string merged_adapter_;
  Tensor merged_dora_norm_;  // n at merge time (DoRA), for unmerge
  bool disabled_ = false;
};

}  // namespace loragrad::lora

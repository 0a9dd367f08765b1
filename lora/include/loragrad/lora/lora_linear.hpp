#pragma once
// LoraLinear: LoRA, rsLoRA and DoRA adapters around a frozen linear layer,
// computed as PEFT's lora.Linear computes them (docs/peft-format.md).
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
//   n is computed without any (out, in) temporary (see dora_row_norm()):
//     n_i^2 = ||W0_i||^2 + 2 s (W0 A^T)_i . B_i + s^2 B_i (A A^T) B_i^T
//   with ||W0_i||^2 cached per base weight, W0 A^T one (out, r) GEMM (NF4:
//   straight from the codes) and A A^T (r, r). An NF4 base is never
//   dequantised to a dense copy in forward or backward (W0 x_d under dropout
//   also runs on the codes).
//
// The base is any nn::LinearBase (nn::Linear, lora's Linear4bit, ...); this
// class touches it only through that interface, never through its type.
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "loragrad/lora/lora_config.hpp"
#include "loragrad/nn/layers.hpp"
#include "loragrad/nn/linear_base.hpp"
#include "loragrad/nn/module.hpp"
#include "loragrad/tensor.hpp"

namespace loragrad::lora {

using nn::ModuleDict;  // PEFT's lora_A / lora_B / lora_dropout containers


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
  // Wraps `base` (an nn::LinearBase; anything else is a ValueError) and
  // freezes it. No adapter yet: forward is base(x).
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
  // DoRA's row norm n = ||W0 + s B A||_row (out), in the adapter's dtype, for
  // any adapter (DoRA or not), without forming W0 + s B A, B A or (NF4) a
  // dequantised W0:
  //   n_i = sqrt(max(0, ||W0_i||^2 + 2 s (W0 A^T)_i . B_i + s^2 B_i (A A^T) B_i^T))
  // ||W0_i||^2 (float64) is cached per base weight (base_row_sq_norms()); W0 A^T
  // is one (out, r) GEMM in the adapter's dtype (an NF4 base: nf4_linear on
  // the codes); A A^T and the combination are float64.
  // Precision: the expansion subtracts where W0 and s B A nearly cancel. The
  // absolute error of n_i^2 is ~eps * (||W0_i||^2 + s^2 ||(B A)_i||^2), so
  // the expansion alone would give n_i a relative error ~eps * (||W0_i|| / n_i)^2
  // instead of the dense formula's ~eps * ||W0_i|| / n_i (measured in float64,
  // s B A = -W0 + a residue, n_i / ||W0_i|| ~ 6e-3, 6e-5, 6e-7: relative errors
  // 7e-12, 2e-7, 6e-4). Hence a guard: a row whose expanded n_i^2 is below
  // (||W0_i||^2 + s^2 ||(B A)_i||^2) / 16 (the update cancels most of the row) is
  // recomputed directly as ||W0_i + s B_i A|| in float64, one row at a time (NF4:
  // the row decoded), so every row is within ~16x of the dense formula's own
  // rounding (float64, DoRA's usual regime: agreement ~1e-16..1e-15 relative;
  // a float32 adapter: ~1e-7, from the float32 GEMM). n_i^2 is clamped at 0 before the
  // square root; an exactly cancelling row gives n_i = 0 (m / n = inf, as PEFT's
  // dense formula gives for a zero row).
  Tensor dora_row_norm(const std::string& name) const;
  // ||W0_i||^2 for every row i of the base weight (out), float64, computed
  // from the base's own values (NF4: decoded row by row) and cached. The cache
  // is keyed on the base weight's identity and version (LinearBase::
  // weight_version(): a dense weight's storage and version, or the NF4 codes),
  // so it follows in-place writes that bump the version (copy_, add_, set,
  // fill_, optimizer steps, merge, unmerge, set_base_weight), a replaced weight
  // tensor (base->weight = t) and an NF4 requantisation. A write through a
  // raw pointer must call bump_version() (as SavedTensor already requires), or
  // the cache is stale.
  std::shared_ptr<const std::vector<double>> base_row_sq_norms() const;
  // How many times base_row_sq_norms() computed rather than reused (tests).
  int64_t base_row_sq_norm_computations() const;
  // The dense W0 (out, in), base_layer->dense_weight(): a detached handle to
  // a dense weight itself, or a fresh float32 decode of a quantised one; and
  // the bias (or undefined).
  Tensor base_weight() const;
  Tensor base_bias() const;
  // Writes a dense (out, in) weight into the base, in place (NF4: requantised).
  void set_base_weight(const Tensor& w);
  bool base_is_nf4() const;  // base_layer->storage() == "nf4" (PEFT's Linear4bit)

  // Bytes held by adapter parameters (A, B, m), of one adapter or of all.
  size_t adapter_bytes() const;
  size_t adapter_bytes(const std::string& name) const;

  int64_t in_features = 0, out_features = 0;
  // Registered children, in PEFT's order. Public like nn::Linear's weight.
  std::shared_ptr<nn::LinearBase> base_layer;
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
  // x W0^T (..., out), without the bias: base_layer->forward_no_bias(x), the
  // live weight (NOT detached: gradient reaches a trainable dense base, as in
  // PEFT) or an NF4 base's codes (constant, no dense copy).
  Tensor base_matmul(const Tensor& x) const;
  void set_trainable(const std::string& active);

  std::vector<std::pair<std::string, Adapter>> adapters_;  // insertion order
  std::string active_;
  std::string merged_adapter_;
  Tensor merged_dora_norm_;  // n at merge time (DoRA), for unmerge
  // The cache of base_row_sq_norms(): the weight it was computed from
  // (LinearBase::WeightVersion's owner; a weak reference, so it neither
  // keeps an old weight alive nor can match a new one at a recycled address)
  // and that storage's version.
  struct RowSqCache {
    std::weak_ptr<const void> owner;
    uint64_t version = 0;
    std::shared_ptr<const std::vector<double>> sq;  // (out)
    int64_t computations = 0;
  };
  mutable std::mutex row_sq_mu_;  // forward may run on several threads
  mutable RowSqCache row_sq_;
  bool disabled_ = false;
};

}  // namespace loragrad::lora

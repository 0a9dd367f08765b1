#pragma once
// LinearBase: a linear layer y = x W^T + b, whatever holds W: a dense float
// parameter (nn::Linear) or another format (lora's Linear4bit, NF4 codes;
// BF16Linear, bfloat16 values). It is all
// that a wrapper such as LoraLinear asks of the layer it adapts, so the wrapper
// never needs to know which storage it has. A new storage (int8, bf16)
// implements this class and registers a factory (lora/base_storage.hpp).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "loragrad/nn/module.hpp"

namespace loragrad::nn {

class LinearBase : public Module {
 public:
  // forward(x) (Module's): (..., in) -> (..., out) = x W^T + b.

  // x W^T (..., out) without the bias, in x's dtype, from W as stored: a dense
  // weight parameter itself (so gradient reaches it when it is trainable; cast
  // when its dtype differs from x's), or the codes (a constant).
  virtual Tensor forward_no_bias(const Tensor& x) const = 0;

  // forward(x) + scale * (x_lora A^T) B^T: this layer with a LoRA adapter
  // A (r, in), B (out, r) on top, whose input x_lora is x after LoRA dropout
  // (undefined: x itself). The storages here (Linear, NF4Linear, BF16Linear) compute it as
  // one op (lora_linear, ops.hpp), where the GEMM accumulates the adapter term
  // into the base output; this default composes ops (a full-size product,
  // its scaled copy and the sum), for a storage without such an op.
  virtual Tensor forward_with_lora(const Tensor& x, const Tensor& x_lora, const Tensor& a, const Tensor& b,
                                   double scale);

  // How W is held: "f32" or "f64" (a dense parameter of that dtype), "nf4", "bf16".
  // These are the names lora::make_base() takes.
  virtual std::string storage() const = 0;
  // True when W is not a parameter but held in another format (NF4 codes,
  // bf16 values): frozen, and dense only on demand (dense_weight()). Counting
  // parameters or bytes must add it apart.
  virtual bool quantized() const = 0;
  // Bytes W occupies as stored (codes and scales for a quantised W; no bias).
  virtual size_t weight_bytes() const = 0;

  // W (out, in), detached. Dense: the weight itself (shares its storage, no
  // copy: write through set_weight); quantised: a fresh float32 decode.
  virtual Tensor dense_weight() const = 0;
  // Rows [row0, row0 + nrows) of W widened to float64 into out (nrows, in),
  // with no dense copy of W: for row-wise maths (DoRA's row norms). Called
  // from OpenMP loops, so it must be thread-safe and must not throw.
  virtual void weight_rows_f64(int64_t row0, int64_t nrows, double* out) const = 0;
  // Replaces W by w (out, in), to merge an adapter in or out. Dense: copied in
  // place (the parameter keeps its identity; its version moves on). Quantised:
  // quantised again, which rounds (lossy, as merging into a 4-bit base is).
  virtual void set_weight(const Tensor& w) = 0;

  // What identifies W's current values, for caches of quantities derived from
  // them (LoraLinear's row norms): the object holding the values (a cache keeps
  // it weakly) and a counter that moves on every in-place write.
  struct WeightVersion {
    std::shared_ptr<const void> owner;  // dense: the weight's Storage; NF4: its (immutable) codes
    uint64_t version = 0;
  };
  virtual WeightVersion weight_version() const = 0;

  int64_t in_features = 0, out_features = 0;
  Tensor bias;  // (out) or undefined

 protected:
  LinearBase() = default;
};

}  // namespace loragrad::nn

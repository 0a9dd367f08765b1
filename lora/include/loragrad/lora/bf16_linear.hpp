#pragma once
// BF16Linear: a frozen linear layer whose weight is held in bfloat16
// (loragrad/quant/bf16_tensor.hpp), half the bytes of float32, never a dense
// float copy: forward and backward run the bf16 GEMM on it as stored (the
// bf16_linear op; with a LoRA adapter, lora_linear's bf16 overload). The
// input is rounded to bf16 for the product and the sums are float32, as
// PyTorch's autocast computes a Linear: the mixed-precision base
// (LoraConfig::base_storage = "bf16"). Its only parameter is `bias`, frozen
// and float32.
//
// Made by the base-storage table (base_storage.hpp: make_base("bf16", ...),
// make_bf16_linear) and used through nn::LinearBase like any base layer.
// DoRA on it: the row norms ||W0_i||^2 come exact from the bf16 values
// (weight_rows_f64); the cross term <W0_i, (B A)_i> goes through
// forward_no_bias(A), so A is rounded to bf16 there (autocast rounds PEFT's
// B @ A too): each of its products moves by at most 2^-9 of itself.
#include <memory>
#include <string>

#include "loragrad/nn/linear_base.hpp"
#include "loragrad/quant/bf16_tensor.hpp"
#include "loragrad/tensor.hpp"

namespace loragrad::lora {

class BF16Linear : public nn::LinearBase {
 public:
  // weight (out, in) is rounded to bf16; bias (out) or undefined is copied and frozen.
  BF16Linear(const Tensor& weight, const Tensor& bias);

  Tensor forward(const Tensor& x) override;  // (..., in) -> (..., out)
  // PyTorch's name for a Linear whose weight is bf16; extra_repr says dtype=bfloat16.
  std::string type_name() const override { return "Linear"; }
  std::string extra_repr() const override;

  // ---- nn::LinearBase ----
  Tensor forward_no_bias(const Tensor& x) const override;  // bf16_linear on the bf16 values
  Tensor forward_with_lora(const Tensor& x, const Tensor& x_lora, const Tensor& a, const Tensor& b,
                           double scale) override;  // lora_linear on the bf16 values
  std::string storage() const override { return "bf16"; }
  bool quantized() const override { return true; }  // not a parameter: frozen, counted apart
  size_t weight_bytes() const override { return weight_->bytes(); }
  Tensor dense_weight() const override { return weight_->dequantize(); }  // a fresh float32 copy, exact
  void weight_rows_f64(int64_t row0, int64_t nrows, double* out) const override;
  // Rounds w to bf16 (a merge into a bf16 base is lossy, by at most 2^-9
  // relative per value).
  void set_weight(const Tensor& w) override;
  // The values are immutable (set_weight swaps in new ones), so their
  // identity is their version.
  WeightVersion weight_version() const override { return {weight_, 0}; }

  const BF16Tensor& weight() const { return *weight_; }
  const std::shared_ptr<const BF16Tensor>& weight_ptr() const { return weight_; }

 private:
  std::shared_ptr<const BF16Tensor> weight_;
};

}  // namespace loragrad::lora

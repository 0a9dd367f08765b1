#pragma once
// NF4Linear: bitsandbytes' Linear4bit, a frozen linear layer whose weight is
// NF4 codes and scales (loragrad/quant/nf4.hpp), never a dense copy; forward
// and backward run on the codes (the nf4_linear op). Its only parameter is
// `bias`, frozen (requires_grad false).
//
// Made by the base-storage table (base_storage.hpp: make_base("nf4", ...),
// make_nf4_linear) and used through nn::LinearBase like any base layer. This
// header adds what only NF4 has: the codes, and requantisation with its error.
#include <cstdint>
#include <memory>
#include <string>

#include "loragrad/nn/linear_base.hpp"
#include "loragrad/quant/nf4.hpp"
#include "loragrad/tensor.hpp"

namespace loragrad::lora {

class NF4Linear : public nn::LinearBase {
 public:
  // weight (out, in) is quantised; bias (out) or undefined is copied and frozen.
  NF4Linear(const Tensor& weight, const Tensor& bias, int64_t blocksize = 64, bool double_quant = true);

  Tensor forward(const Tensor& x) override;  // (..., in) -> (..., out)
  std::string type_name() const override { return "Linear4bit"; }
  std::string extra_repr() const override;

  // ---- nn::LinearBase ----
  Tensor forward_no_bias(const Tensor& x) const override;  // nf4_linear on the codes
  Tensor forward_with_lora(const Tensor& x, const Tensor& x_lora, const Tensor& a, const Tensor& b,
                           double scale) override;  // lora_linear on the codes
  std::string storage() const override { return "nf4"; }
  bool quantized() const override { return true; }
  size_t weight_bytes() const override { return qweight_->bytes(); }
  Tensor dense_weight() const override { return dequantize(); }  // a fresh float32 copy
  void weight_rows_f64(int64_t row0, int64_t nrows, double* out) const override;
  void set_weight(const Tensor& w) override { requantize_from(w); }
  // The codes are immutable (a requantisation swaps in new ones), so their
  // identity is their version.
  WeightVersion weight_version() const override { return {qweight_, 0}; }

  // ---- NF4 only ----
  // (out, in) float32: a dense copy, for merges and PiSSA (forward, backward and
  // DoRA's row norms work from the codes: nf4_linear, NF4Tensor::decode).
  Tensor dequantize() const { return qweight_->dequantize(); }
  // Replace the weight by quant(dense) with the same blocksize and double
  // quantisation (e.g. dense = dequantize() + B A * scale, merging an adapter).
  // Returns max |dense - new dequantize()|, the error the requantisation adds.
  double requantize_from(const Tensor& dense);

  const NF4Tensor& qweight() const { return *qweight_; }
  const std::shared_ptr<const NF4Tensor>& qweight_ptr() const { return qweight_; }

 private:
  std::shared_ptr<const NF4Tensor> qweight_;
};

}  // namespace loragrad::lora

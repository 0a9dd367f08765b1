#pragma once
// The storages a base layer's weight can have, by name, and the one place that
// makes a base layer in a given storage:
//   "f32", "f64"  nn::Linear, a dense weight parameter of that dtype
//   "nf4"         Linear4bit: 4-bit NormalFloat codes and scales (QLoRA)
//   "bf16"        BF16Linear: the weight rounded to bfloat16 (mixed precision)
// Everything else handles base layers through nn::LinearBase. Another storage
// (int8, fp8) is one new file implementing nn::LinearBase with a factory,
// plus its line in the table of base_storage.cpp.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "loragrad/nn/layers.hpp"
#include "loragrad/nn/linear_base.hpp"
#include "loragrad/tensor.hpp"

namespace loragrad::lora {

// Options of the quantised storages; the dense ones ignore them.
struct BaseStorageOptions {
  int64_t blocksize = 64;    // nf4: elements per scale block, a power of two in [32, 4096]
  bool double_quant = true;  // nf4: the scales themselves in 8 bits (QLoRA's default)
};

// The registered storage names, in table order: "f32", "f64", "nf4", "bf16".
std::vector<std::string> base_storages();

// A base layer holding weight (out, in) and bias (out, or undefined) in
// `storage`; both are copied. A dense layer is an ordinary nn::Linear
// (parameters that require grad); a quantised one is frozen. Errors:
// ValueError naming the known storages when `storage` is not one of them,
// and the storage's own errors for bad tensors.
std::shared_ptr<nn::LinearBase> make_base(const std::string& storage, const Tensor& weight, const Tensor& bias,
                                          const BaseStorageOptions& opts = {});

// make_base(storage, linear.weight, linear.bias, opts), in linear's
// train / eval mode: e.g. quantize_base("nf4", lin) for QLoRA,
// quantize_base("bf16", lin) for a mixed-precision base.
std::shared_ptr<nn::LinearBase> quantize_base(const std::string& storage, const nn::Linear& linear,
                                              const BaseStorageOptions& opts = {});

// The "nf4" entry (lora/src/nf4_linear.cpp): bitsandbytes' Linear4bit.
std::shared_ptr<nn::LinearBase> make_nf4_linear(const Tensor& weight, const Tensor& bias, int64_t blocksize = 64,
                                                bool double_quant = true);

// The "bf16" entry (lora/src/bf16_linear.cpp): a frozen bf16 weight.
std::shared_ptr<nn::LinearBase> make_bf16_linear(const Tensor& weight, const Tensor& bias);

}  // namespace loragrad::lora

#pragma once
// The two matrix products of a bf16 weight (core/src/ops/bf16_linear.cpp),
// shared by the ops that multiply by one: bf16_linear and lora_linear's bf16
// overload. Internal to core. The other operand (x, or the output gradient)
// is rounded to bf16 too, as autocast rounds it: float32 by the bf16 GEMM
// while it packs it (no bf16 copy), float64 into a rounded float64 copy. The
// products are exact; float32 sums them in float32 (the GEMM), float64 in
// float64 (the reference the tests compare with).
#include "loragrad/quant/bf16_tensor.hpp"
#include "loragrad/tensor.hpp"

namespace loragrad::detail {

// y (rows, out) = bf16(x2) (rows, in) W^T, added to y when accumulate (y holds the bias), else written.
void bf16_forward_into(const Tensor& x2, const BF16Tensor& w, Tensor& y, bool accumulate);
// bf16(g2) (rows, out) W -> a new (rows, in) tensor
Tensor bf16_input_grad(const Tensor& g2, const BF16Tensor& w);

}  // namespace loragrad::detail

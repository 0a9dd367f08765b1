#pragma once
// The two matrix products of an NF4 weight (core/src/ops/nf4_linear.cpp),
// shared by the ops that multiply by one: nf4_linear and lora_linear's NF4
// overload. Internal to core. W (out, in) is never made dense: float32 reads
// it through the GEMM's decode callback, float64 decodes it a row block at a
// time (gradient checks).
#include "loragrad/quant/nf4.hpp"
#include "loragrad/tensor.hpp"

namespace loragrad::detail {

// y (rows, out) += x2 (rows, in) W^T   (y holds the bias or zeros beforehand)
void nf4_forward_into(const Tensor& x2, const NF4Tensor& w, Tensor& y);
// g2 (rows, out) W -> a new (rows, in) tensor
Tensor nf4_input_grad(const Tensor& g2, const NF4Tensor& w);

}  // namespace loragrad::detail

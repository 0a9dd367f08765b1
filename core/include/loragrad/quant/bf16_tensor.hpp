#pragma once
// A 2-d weight stored in bfloat16: half the bytes of float32, 8 significant
// bits (loragrad/kernels/bf16.hpp). The mixed-precision path keeps every
// frozen base weight in this form, as PyTorch's autocast computes a Linear in
// bf16; the op that multiplies by one is bf16_linear (ops.hpp), through the
// bf16 GEMM (kernels/gemm_bf16.hpp), which reads it as stored. The frozen
// layer holding one is lora's LinearBF16 (loragrad/lora/bf16_linear.hpp).
//
// Unlike NF4 there are no scales: each value is the float32 weight rounded to
// the nearest bf16 (ties to even), so widening it back is exact and a value
// moves by at most 2^-9 of itself.
#include <cstdint>
#include <vector>

#include "loragrad/kernels/bf16.hpp"
#include "loragrad/tensor.hpp"

namespace loragrad {

// Immutable once made (a layer merging an adapter in swaps in a new one).
struct BF16Tensor {
  Shape shape;              // (out, in)
  std::vector<bf16> values;  // (out, in) row-major

  int64_t rows() const { return shape[0]; }  // out
  int64_t cols() const { return shape[1]; }  // in
  int64_t numel() const { return shape[0] * shape[1]; }
  const bf16* data() const { return values.data(); }

  // out[0 : count] = flat elements [start, start + count) widened (exact).
  void decode(int64_t start, int64_t count, float* out) const;
  void decode(int64_t start, int64_t count, double* out) const;
  Tensor dequantize() const;  // (out, in) float32, exact
  // Storage this tensor owns: 2 bytes per value.
  size_t bytes() const { return values.size() * sizeof(bf16); }
};

// w (out, in) rounded to bf16, to nearest even (a float64 weight is rounded to
// float32 first, as w.to(f32) would be; NaN and inf are kept). Errors:
// ShapeError (not 2-d, or an empty dim), DTypeError (not a float tensor).
BF16Tensor quantize_bf16(const Tensor& w);

}  // namespace loragrad

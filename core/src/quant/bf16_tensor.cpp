// A weight in bfloat16 (see loragrad/quant/bf16_tensor.hpp).
#include "loragrad/quant/bf16_tensor.hpp"

#include <string>

#include "loragrad/error.hpp"

namespace loragrad {

BF16Tensor quantize_bf16(const Tensor& w) {
  check_defined(w, "quantize_bf16");
  if (!is_floating(w.dtype()))
    throw DTypeError(std::string("quantize_bf16: expected a float32 or float64 weight, got ") + dtype_name(w.dtype()));
  if (w.dim() != 2 || w.size(0) <= 0 || w.size(1) <= 0)
    throw ShapeError("quantize_bf16: expected a 2-d weight (out, in) with positive sizes, got " + shape_str(w.shape()));
  const Tensor w32 = w.dtype() == DType::f32 ? w : w.detach().to(DType::f32);  // (out, in)
  BF16Tensor q;
  q.shape = w.shape();
  q.values.resize(static_cast<size_t>(q.numel()));
  kernels::to_bf16(w32.data<float>(), q.values.data(), q.numel());
  return q;
}

void BF16Tensor::decode(int64_t start, int64_t count, float* out) const {
  kernels::to_float(values.data() + start, out, count);
}

void BF16Tensor::decode(int64_t start, int64_t count, double* out) const {
  for (int64_t i = 0; i < count; ++i) out[i] = double(to_float(values[static_cast<size_t>(start + i)]));
}

Tensor BF16Tensor::dequantize() const {
  Tensor w = uninitialized(shape, DType::f32);  // (out, in)
  decode(0, numel(), w.data<float>());
  return w;
}

}  // namespace loragrad

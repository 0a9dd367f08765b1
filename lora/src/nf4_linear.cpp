// NF4Linear (Linear4bit): a frozen linear layer computing from NF4 codes (see
// loragrad/lora/nf4_linear.hpp), and its factory, the "nf4" entry of the
// base-storage table (base_storage.hpp).
#include "loragrad/lora/nf4_linear.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "loragrad/lora/base_storage.hpp"
#include "loragrad/ops.hpp"

namespace loragrad::lora {

NF4Linear::NF4Linear(const Tensor& weight, const Tensor& b, int64_t blocksize, bool double_quant) {
  check_defined(weight, "NF4Linear");
  qweight_ = std::make_shared<const NF4Tensor>(quantize_nf4(weight, blocksize, double_quant));
  out_features = qweight_->rows();
  in_features = qweight_->cols();
  if (b.defined()) {
    check_floating(b, "NF4Linear");
    if (b.shape() != Shape{out_features})
      throw ShapeError("NF4Linear: bias " + shape_str(b.shape()) + " does not fit weight " +
                       shape_str(weight.shape()));
    bias = b.detach().clone();  // frozen: requires_grad stays false
    register_parameter("bias", bias);
  }
}

Tensor NF4Linear::forward(const Tensor& x) { return nf4_linear(x, qweight_, bias); }

Tensor NF4Linear::forward_no_bias(const Tensor& x) const { return nf4_linear(x, qweight_); }

Tensor NF4Linear::forward_with_lora(const Tensor& x, const Tensor& x_lora, const Tensor& a, const Tensor& b,
                                    double scale) {
  const DType dt = x.dtype();
  if (a.dtype() != dt || b.dtype() != dt || (bias.defined() && bias.dtype() != dt))
    return LinearBase::forward_with_lora(x, x_lora, a, b, scale);  // refused there, with nf4_linear's message
  return lora_linear(x, qweight_, bias, a, b, scale, x_lora);
}

std::string NF4Linear::extra_repr() const {
  std::ostringstream os;
  os << "in_features=" << in_features << ", out_features=" << out_features
     << ", bias=" << (bias.defined() ? "True" : "False") << ", quant_type=nf4, blocksize=" << qweight_->blocksize
     << ", double_quant=" << (qweight_->double_quant ? "True" : "False");
  return os.str();
}

void NF4Linear::weight_rows_f64(int64_t row0, int64_t nrows, double* out) const {
  qweight_->decode(row0 * in_features, nrows * in_features, out);
}

double NF4Linear::requantize_from(const Tensor& dense) {
  check_defined(dense, "NF4Linear.requantize_from");
  if (dense.shape() != qweight_->shape)
    throw ShapeError("NF4Linear.requantize_from: dense weight " + shape_str(dense.shape()) +
                     " does not match the layer's weight " + shape_str(qweight_->shape));
  auto q = std::make_shared<const NF4Tensor>(quantize_nf4(dense, qweight_->blocksize, qweight_->double_quant));
  // The error against the values that were quantised (float32, like quantize_nf4 sees them).
  const Tensor d32 = dense.dtype() == DType::f32 ? dense : dense.detach().to(DType::f32);
  const Tensor back = q->dequantize();
  const float* a = d32.data<float>();
  const float* r = back.data<float>();
  double worst = 0.0;
  for (int64_t i = 0; i < q->numel(); ++i) worst = std::max(worst, std::abs(double(a[i]) - double(r[i])));
  qweight_ = std::move(q);  // graphs recorded earlier keep the old weight alive
  return worst;
}

std::shared_ptr<nn::LinearBase> make_nf4_linear(const Tensor& weight, const Tensor& bias, int64_t blocksize,
                                                bool double_quant) {
  return std::make_shared<NF4Linear>(weight, bias, blocksize, double_quant);
}

}  // namespace loragrad::lora

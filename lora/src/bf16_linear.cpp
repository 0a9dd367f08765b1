// BF16Linear: a frozen linear layer computing from a bf16 weight (see
// loragrad/lora/bf16_linear.hpp), and its factory, the "bf16" entry of the
// base-storage table (base_storage.hpp).
#include "loragrad/lora/bf16_linear.hpp"

#include <sstream>

#include "loragrad/lora/base_storage.hpp"
#include "loragrad/ops.hpp"

namespace loragrad::lora {

BF16Linear::BF16Linear(const Tensor& weight, const Tensor& b) {
  check_defined(weight, "BF16Linear");
  weight_ = std::make_shared<const BF16Tensor>(quantize_bf16(weight));
  out_features = weight_->rows();
  in_features = weight_->cols();
  if (b.defined()) {
    check_floating(b, "BF16Linear");
    if (b.shape() != Shape{out_features})
      throw ShapeError("BF16Linear: bias " + shape_str(b.shape()) + " does not fit weight " +
                       shape_str(weight.shape()));
    bias = b.detach().clone();  // frozen: requires_grad stays false
    register_parameter("bias", bias);
  }
}

Tensor BF16Linear::forward(const Tensor& x) { return bf16_linear(x, weight_, bias); }

Tensor BF16Linear::forward_no_bias(const Tensor& x) const { return bf16_linear(x, weight_); }

Tensor BF16Linear::forward_with_lora(const Tensor& x, const Tensor& x_lora, const Tensor& a, const Tensor& b,
                                     double scale) {
  const DType dt = x.dtype();
  if (a.dtype() != dt || b.dtype() != dt || (bias.defined() && bias.dtype() != dt))
    return LinearBase::forward_with_lora(x, x_lora, a, b, scale);  // refused there, with bf16_linear's message
  return lora_linear(x, weight_, bias, a, b, scale, x_lora);
}

std::string BF16Linear::extra_repr() const {
  std::ostringstream os;
  os << "in_features=" << in_features << ", out_features=" << out_features
     << ", bias=" << (bias.defined() ? "True" : "False") << ", dtype=bfloat16";
  return os.str();
}

void BF16Linear::weight_rows_f64(int64_t row0, int64_t nrows, double* out) const {
  weight_->decode(row0 * in_features, nrows * in_features, out);
}

void BF16Linear::set_weight(const Tensor& w) {
  check_defined(w, "BF16Linear.set_weight");
  if (w.shape() != weight_->shape)
    throw ShapeError("BF16Linear.set_weight: expected " + shape_str(weight_->shape) + ", got " + shape_str(w.shape()));
  weight_ = std::make_shared<const BF16Tensor>(quantize_bf16(w));  // graphs recorded earlier keep the old values
}

std::shared_ptr<nn::LinearBase> make_bf16_linear(const Tensor& weight, const Tensor& bias) {
  return std::make_shared<BF16Linear>(weight, bias);
}

}  // namespace loragrad::lora

// The nf4_linear op and the NF4Linear layer: y = x W^T + b computed straight
// from packed NF4 codes (see loragrad/lora/nf4.hpp).
//
// float32 goes through the float GEMM with the weight as a BPanelSource
// (kernels/gemm_pack.hpp): the GEMM asks for one (kc, nc) block of op(B) at a
// time and we dequantise exactly that block into its panel layout, so a dense
// float copy of W never exists. Two orientations are needed:
//   forward   y  = x W^T : op(B) = W^T  (K = in,  N = out)  NF4TransposedSource
//   backward  dx = g W   : op(B) = W    (K = out, N = in)   NF4RowSource
// float64 (gradient checks, the op table) decodes W a few rows at a time into
// float64 and runs the double GEMM on each row block.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>
#include <vector>

#include "loragrad/autograd.hpp"
#include "loragrad/kernels/gemm.hpp"
#include "loragrad/kernels/gemm_pack.hpp"
#include "loragrad/lora/nf4.hpp"
#include "loragrad/ops.hpp"

namespace loragrad::lora {

namespace {

using kernels::kGemmNR;

// op(B) = W^T, (in, out). Column n of the block is row n of W: a contiguous
// run of the flattened weight. Decode the sliver's NR rows of W into a scratch
// (NR, kc) and let the plain source's transposing pack interleave it into the
// panel (it does 4x4 register transposes and writes the zero padding).
class NF4TransposedSource final : public kernels::BPanelSource {
 public:
  explicit NF4TransposedSource(const NF4Tensor& w) : w_(w) {}
  int64_t rows() const override { return w_.cols(); }  // K = in
  int64_t cols() const override { return w_.rows(); }  // N = out
  void pack(int64_t k0, int64_t kc, int64_t n0, int64_t nc, float* dst) const override {
    thread_local std::vector<float> scratch;  // (NR, kc): pack() may run on several threads at once
    scratch.resize(static_cast<size_t>(kGemmNR * kc));
    const int64_t in = w_.cols();
    for (int64_t s = 0; s * kGemmNR < nc; ++s, dst += kc * kGemmNR) {
      const int64_t width = std::min(kGemmNR, nc - s * kGemmNR);
      for (int64_t c = 0; c < width; ++c)
        w_.decode((n0 + s * kGemmNR + c) * in + k0, kc, scratch.data() + c * kc);  // W[n][k0 : k0+kc]
      kernels::StridedBSource(scratch.data(), kc, /*trans_b=*/true, kc, width).pack(0, kc, 0, width, dst);
    }
  }

 private:
  const NF4Tensor& w_;
};

// op(B) = W, (out, in). Row k of a sliver is NR consecutive elements of row
// k0 + k of W: decoded straight into place.
class NF4RowSource final : public kernels::BPanelSource {
 public:
  explicit NF4RowSource(const NF4Tensor& w) : w_(w) {}
  int64_t rows() const override { return w_.rows(); }  // K = out
  int64_t cols() const override { return w_.cols(); }  // N = in
  void pack(int64_t k0, int64_t kc, int64_t n0, int64_t nc, float* dst) const override {
    const int64_t in = w_.cols();
    for (int64_t s = 0; s * kGemmNR < nc; ++s, dst += kc * kGemmNR) {
      const int64_t width = std::min(kGemmNR, nc - s * kGemmNR);
      for (int64_t k = 0; k < kc; ++k) {
        float* d = dst + k * kGemmNR;
        w_.decode((k0 + k) * in + n0 + s * kGemmNR, width, d);  // W[k0+k][n0+s*NR : +width]
        std::fill(d + width, d + kGemmNR, 0.0f);                // padding lanes must be zeros
      }
    }
  }

 private:
  const NF4Tensor& w_;
};

// Rows [r0, r0 + nr) of W as float64 (nr, in), via a float32 scratch row block.
void decode_rows_f64(const NF4Tensor& w, int64_t r0, int64_t nr, std::vector<float>& f32, double* out) {
  const int64_t n = nr * w.cols();
  f32.resize(static_cast<size_t>(n));
  w.decode(r0 * w.cols(), n, f32.data());
  for (int64_t i = 0; i < n; ++i) out[i] = f32[static_cast<size_t>(i)];
}

// float64 works on row blocks of W of about this many elements.
int64_t f64_rows_per_block(const NF4Tensor& w) { return std::max<int64_t>(1, (int64_t(1) << 16) / w.cols()); }

// y (rows, out) = x (rows, in) W^T + y  (y holds the bias or zeros)
void forward_into(const Tensor& x2, const NF4Tensor& w, Tensor& y) {
  const int64_t rows = x2.size(0), in = w.cols(), out = w.rows();
  if (x2.dtype() == DType::f32) {
    kernels::gemm_packed_b(false, rows, out, in, 1.0f, x2.data<float>(), in, NF4TransposedSource(w), 1.0f,
                           y.data<float>(), out);
    return;
  }
  const int64_t rb = f64_rows_per_block(w);
  std::vector<float> f32;
  std::vector<double> wblock(static_cast<size_t>(rb * in));  // (rb, in)
  for (int64_t r0 = 0; r0 < out; r0 += rb) {
    const int64_t nr = std::min(rb, out - r0);
    decode_rows_f64(w, r0, nr, f32, wblock.data());
    // y[:, r0 : r0+nr] += x @ wblock^T
    kernels::gemm(false, true, rows, nr, in, 1.0, x2.data<double>(), in, wblock.data(), in, 1.0,
                  y.data<double>() + r0, out);
  }
}

// dx (rows, in) = g (rows, out) W
Tensor input_grad(const Tensor& g2, const NF4Tensor& w) {
  const int64_t rows = g2.size(0), in = w.cols(), out = w.rows();
  Tensor dx = uninitialized({rows, in}, g2.dtype());
  if (g2.dtype() == DType::f32) {
    kernels::gemm_packed_b(false, rows, in, out, 1.0f, g2.data<float>(), out, NF4RowSource(w), 0.0f,
                           dx.data<float>(), in);
    return dx;
  }
  const int64_t rb = f64_rows_per_block(w);
  std::vector<float> f32;
  std::vector<double> wblock(static_cast<size_t>(rb * in));  // (rb, in)
  for (int64_t r0 = 0; r0 < out; r0 += rb) {
    const int64_t nr = std::min(rb, out - r0);
    decode_rows_f64(w, r0, nr, f32, wblock.data());
    // dx += g[:, r0 : r0+nr] @ wblock   (the first block overwrites)
    kernels::gemm(false, false, rows, in, nr, 1.0, g2.data<double>() + r0, out, wblock.data(), in,
                  r0 == 0 ? 0.0 : 1.0, dx.data<double>(), in);
  }
  return dx;
}

}  // namespace

Tensor nf4_linear(const Tensor& x, const std::shared_ptr<const NF4Tensor>& w, const Tensor& bias) {
  check_defined(x, "nf4_linear");
  if (!w) throw ValueError("nf4_linear: the NF4 weight is null");
  check_floating(x, "nf4_linear");
  const int64_t in = w->cols(), out = w->rows();
  if (x.dim() < 1 || x.size(-1) != in)
    throw ShapeError("nf4_linear: input " + shape_str(x.shape()) + " does not fit weight " + shape_str(w->shape) +
                     " (expected input (..., " + std::to_string(in) + "))");
  if (bias.defined()) {
    check_same_dtype(x, bias, "nf4_linear");
    if (bias.shape() != Shape{out})
      throw ShapeError("nf4_linear: bias " + shape_str(bias.shape()) + " does not fit weight " + shape_str(w->shape) +
                       " (expected [" + std::to_string(out) + "])");
  }
  const Tensor x2 = reshape(x.detach(), {-1, in});  // (rows, in)
  const int64_t rows = x2.size(0);
  Shape ys = x.shape();
  ys.back() = out;
  Tensor y = uninitialized({rows, out}, x.dtype());
  dispatch_float(x.dtype(), "nf4_linear", [&](auto tag) {
    using T = decltype(tag);
    T* py = y.data<T>();  // (rows, out): start from the bias (or zeros), accumulate x W^T onto it
    if (bias.defined()) {
      for (int64_t r = 0; r < rows; ++r) std::memcpy(py + r * out, bias.data<T>(), sizeof(T) * out);
    } else {
      std::fill(py, py + rows * out, T(0));
    }
  });
  forward_into(x2, *w, y);
  y = reshape(y, ys);

  return record(Op::nf4_linear, y, {x, bias}, [w, hx = x.shape()](const Tensor& g, const NeedsGrad& need) -> Grads {
    const Tensor g2 = reshape(g, {-1, g.size(-1)});  // (rows, out)
    Grads gr(2);
    if (need[0]) gr[0] = reshape(input_grad(g2, *w), hx);  // (..., in)
    if (need[1]) gr[1] = sum(g2, {0});                     // (out)
    return gr;
  });
}

// ============================ NF4Linear ============================

NF4Linear::NF4Linear(const nn::Linear& linear, int64_t blocksize, bool double_quant)
    : NF4Linear(linear.weight, linear.bias, blocksize, double_quant) {}

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

std::string NF4Linear::extra_repr() const {
  std::ostringstream os;
  os << "in_features=" << in_features << ", out_features=" << out_features
     << ", bias=" << (bias.defined() ? "True" : "False") << ", quant_type=nf4, blocksize=" << qweight_->blocksize
     << ", double_quant=" << (qweight_->double_quant ? "True" : "False");
  return os.str();
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

}  // namespace loragrad::lora

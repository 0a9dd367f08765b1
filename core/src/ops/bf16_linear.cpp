// The bf16_linear op: y = bf16(x) W^T + b with W a bf16 weight
// (loragrad/quant/bf16_tensor.hpp), the frozen base of mixed-precision
// training. What PyTorch's autocast does for a Linear: both operands of the
// product in bf16, the products summed in float32, the result float32.
//
// float32 runs the bf16 GEMM (kernels/gemm_bf16.hpp) on W as stored, x read
// in float32 and rounded while the GEMM packs it. W is stored (out, in):
//   forward   y  = x W^T : gemm_bf16(false, true)   (K = in,  N = out)
//   backward  dx = g W   : gemm_bf16(false, false)  (K = out, N = in)
// The backward rounds g to bf16 too (autocast's backward matmul is bf16
// as well): dx is the straight-through gradient, the rounding of x counted as
// the identity. W is a constant: no dW.
// float64 (the tests' reference) rounds x (and g) the same way, widens W a
// row block at a time to float64 (exact) and runs the double GEMM: the same
// products, summed in float64.
#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "bf16_gemm.hpp"
#include "loragrad/autograd.hpp"
#include "loragrad/kernels/gemm.hpp"
#include "loragrad/kernels/gemm_bf16.hpp"
#include "loragrad/ops.hpp"
#include "loragrad/quant/bf16_tensor.hpp"

namespace loragrad {

namespace {

// float64 works on row blocks of W of about this many elements.
int64_t f64_rows_per_block(const BF16Tensor& w) { return std::max<int64_t>(1, (int64_t(1) << 16) / w.cols()); }

// t's values rounded to bf16 (through float32, as t.to(f32) then to_bf16),
// widened back to float64: what the float32 path's GEMM multiplies.
std::vector<double> rounded_f64(const Tensor& t) {
  const double* p = t.data<double>();
  std::vector<double> r(static_cast<size_t>(t.numel()));
  for (size_t i = 0; i < r.size(); ++i) r[i] = double(round_to_bf16(static_cast<float>(p[i])));
  return r;
}

}  // namespace

namespace detail {

void bf16_forward_into(const Tensor& x2, const BF16Tensor& w, Tensor& y, bool accumulate) {
  const int64_t rows = x2.size(0), in = w.cols(), out = w.rows();
  if (x2.dtype() == DType::f32) {
    kernels::gemm_bf16(false, /*trans_b=*/true, rows, out, in, 1.0f, x2.data<float>(), in, w.data(), in,
                       accumulate ? 1.0f : 0.0f, y.data<float>(), out);
    return;
  }
  const std::vector<double> xr = rounded_f64(x2);  // (rows, in)
  const int64_t rb = f64_rows_per_block(w);
  std::vector<double> wblock(static_cast<size_t>(rb * in));  // (rb, in)
  for (int64_t r0 = 0; r0 < out; r0 += rb) {
    const int64_t nr = std::min(rb, out - r0);
    w.decode(r0 * in, nr * in, wblock.data());
    // y[:, r0 : r0+nr] (+)= xr @ wblock^T
    kernels::gemm(false, true, rows, nr, in, 1.0, xr.data(), in, wblock.data(), in, accumulate ? 1.0 : 0.0,
                  y.data<double>() + r0, out);
  }
}

Tensor bf16_input_grad(const Tensor& g2, const BF16Tensor& w) {
  const int64_t rows = g2.size(0), in = w.cols(), out = w.rows();
  Tensor dx = uninitialized({rows, in}, g2.dtype());  // (rows, in)
  if (g2.dtype() == DType::f32) {
    kernels::gemm_bf16(false, /*trans_b=*/false, rows, in, out, 1.0f, g2.data<float>(), out, w.data(), in, 0.0f,
                       dx.data<float>(), in);
    return dx;
  }
  const std::vector<double> gr = rounded_f64(g2);  // (rows, out)
  const int64_t rb = f64_rows_per_block(w);
  std::vector<double> wblock(static_cast<size_t>(rb * in));  // (rb, in)
  for (int64_t r0 = 0; r0 < out; r0 += rb) {
    const int64_t nr = std::min(rb, out - r0);
    w.decode(r0 * in, nr * in, wblock.data());
    // dx += gr[:, r0 : r0+nr] @ wblock   (the first block overwrites)
    kernels::gemm(false, false, rows, in, nr, 1.0, gr.data() + r0, out, wblock.data(), in, r0 == 0 ? 0.0 : 1.0,
                  dx.data<double>(), in);
  }
  return dx;
}

}  // namespace detail

Tensor bf16_linear(const Tensor& x, const std::shared_ptr<const BF16Tensor>& w, const Tensor& bias) {
  const char* name = op_name(Op::bf16_linear);
  check_defined(x, name);
  if (!w) throw ValueError("bf16_linear: the bf16 weight is null");
  check_floating(x, name);
  const int64_t in = w->cols(), out = w->rows();
  if (x.dim() < 1 || x.size(-1) != in)
    throw ShapeError("bf16_linear: input " + shape_str(x.shape()) + " does not fit weight " + shape_str(w->shape) +
                     " (expected input (..., " + std::to_string(in) + "))");
  if (bias.defined()) {
    check_same_dtype(x, bias, name);
    if (bias.shape() != Shape{out})
      throw ShapeError("bf16_linear: bias " + shape_str(bias.shape()) + " does not fit weight " + shape_str(w->shape) +
                       " (expected [" + std::to_string(out) + "])");
  }
  const Tensor x2 = reshape(x.detach(), {-1, in});  // (rows, in)
  const int64_t rows = x2.size(0);
  Shape ys = x.shape();
  ys.back() = out;
  Tensor y = uninitialized({rows, out}, x.dtype());  // (rows, out)
  if (bias.defined()) {  // start every row from the bias, then accumulate x W^T onto it
    dispatch_float(x.dtype(), name, [&](auto tag) {
      using T = decltype(tag);
      T* py = y.data<T>();
      for (int64_t r = 0; r < rows; ++r) std::memcpy(py + r * out, bias.data<T>(), sizeof(T) * out);
    });
  }
  detail::bf16_forward_into(x2, *w, y, /*accumulate=*/bias.defined());
  y = reshape(y, ys);

  return record(Op::bf16_linear, y, {x, bias}, [w, hx = x.shape()](const Tensor& g, const NeedsGrad& need) -> Grads {
    const Tensor g2 = reshape(g, {-1, g.size(-1)});  // (rows, out)
    Grads gr(2);
    if (need[0]) gr[0] = reshape(detail::bf16_input_grad(g2, *w), hx);  // (..., in)
    if (need[1]) gr[1] = sum(g2, {0});                                   // (out)
    return gr;
  });
}

}  // namespace loragrad

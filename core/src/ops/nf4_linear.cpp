// The nf4_linear op: y = x W^T + b computed straight from the codes of an NF4
// weight (loragrad/quant/nf4.hpp); a dense float copy of W never exists.
//
// float32 runs the float GEMM with B read through a decode callback
// (kernels::gemm_decoded_b): the GEMM asks for one small piece of W at a time
// (a few rows by at most one depth block) and packs it into its panels itself.
// W is stored (out, in), so both passes read row segments of it:
//   forward   y  = x W^T : B = W, trans_b   (K = in,  N = out)
//   backward  dx = g W   : B = W            (K = out, N = in)
// float64 (gradient checks, the op table) decodes W a few rows at a time into
// float64 and runs the double GEMM on each row block.
#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "loragrad/autograd.hpp"
#include "loragrad/kernels/gemm.hpp"
#include "loragrad/ops.hpp"
#include "loragrad/quant/nf4.hpp"
#include "nf4_gemm.hpp"

namespace loragrad {

namespace {

// W[row0 : row0+nrows][col0 : col0+ncols] as float32, row stride ld: each row
// segment is one contiguous run of the flattened weight. Const and stateless,
// so the GEMM's threads may call it at once.
kernels::DecodeRows decode_rows_of(const NF4Tensor& w) {
  return [&w](int64_t row0, int64_t nrows, int64_t col0, int64_t ncols, float* out, int64_t ld) {
    const int64_t in = w.cols();
    for (int64_t r = 0; r < nrows; ++r) w.decode((row0 + r) * in + col0, ncols, out + r * ld);
  };
}

// float64 works on row blocks of W of about this many elements.
int64_t f64_rows_per_block(const NF4Tensor& w) { return std::max<int64_t>(1, (int64_t(1) << 16) / w.cols()); }

}  // namespace

namespace detail {

// y (rows, out) = x (rows, in) W^T + y  (y holds the bias or zeros)
void nf4_forward_into(const Tensor& x2, const NF4Tensor& w, Tensor& y) {
  const int64_t rows = x2.size(0), in = w.cols(), out = w.rows();
  if (x2.dtype() == DType::f32) {
    kernels::gemm_decoded_b(false, /*trans_b=*/true, rows, out, in, 1.0f, x2.data<float>(), in, decode_rows_of(w),
                            1.0f, y.data<float>(), out);
    return;
  }
  const int64_t rb = f64_rows_per_block(w);
  std::vector<double> wblock(static_cast<size_t>(rb * in));  // (rb, in)
  for (int64_t r0 = 0; r0 < out; r0 += rb) {
    const int64_t nr = std::min(rb, out - r0);
    w.decode(r0 * in, nr * in, wblock.data());
    // y[:, r0 : r0+nr] += x @ wblock^T
    kernels::gemm(false, true, rows, nr, in, 1.0, x2.data<double>(), in, wblock.data(), in, 1.0,
                  y.data<double>() + r0, out);
  }
}

// dx (rows, in) = g (rows, out) W
Tensor nf4_input_grad(const Tensor& g2, const NF4Tensor& w) {
  const int64_t rows = g2.size(0), in = w.cols(), out = w.rows();
  Tensor dx = uninitialized({rows, in}, g2.dtype());
  if (g2.dtype() == DType::f32) {
    kernels::gemm_decoded_b(false, /*trans_b=*/false, rows, in, out, 1.0f, g2.data<float>(), out,
                            decode_rows_of(w), 0.0f, dx.data<float>(), in);
    return dx;
  }
  const int64_t rb = f64_rows_per_block(w);
  std::vector<double> wblock(static_cast<size_t>(rb * in));  // (rb, in)
  for (int64_t r0 = 0; r0 < out; r0 += rb) {
    const int64_t nr = std::min(rb, out - r0);
    w.decode(r0 * in, nr * in, wblock.data());
    // dx += g[:, r0 : r0+nr] @ wblock   (the first block overwrites)
    kernels::gemm(false, false, rows, in, nr, 1.0, g2.data<double>() + r0, out, wblock.data(), in,
                  r0 == 0 ? 0.0 : 1.0, dx.data<double>(), in);
  }
  return dx;
}

}  // namespace detail

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
  detail::nf4_forward_into(x2, *w, y);
  y = reshape(y, ys);

  return record(Op::nf4_linear, y, {x, bias}, [w, hx = x.shape()](const Tensor& g, const NeedsGrad& need) -> Grads {
    const Tensor g2 = reshape(g, {-1, g.size(-1)});  // (rows, out)
    Grads gr(2);
    if (need[0]) gr[0] = reshape(detail::nf4_input_grad(g2, *w), hx);  // (..., in)
    if (need[1]) gr[1] = sum(g2, {0});                     // (out)
    return gr;
  });
}

}  // namespace loragrad

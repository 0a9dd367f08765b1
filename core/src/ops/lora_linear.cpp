// The lora_linear op: a linear layer's output with a LoRA adapter added, in
// one op,
//   y = x W^T + b + s (x_l A^T) B^T
//   x (..., in), W (out, in) dense, NF4 or bf16, A (r, in), B (out, r),
//   x_l = x, or the adapter's own input (x after LoRA dropout) when given.
//
// Why one op: composed of ops (linear, linear, linear, mul, add) the adapter
// term costs full-size (rows, out) temporaries and passes over them: the
// product h B^T, its scaled copy and the sum in forward, g * s in backward,
// and dx of each branch plus their sum (rows, in). Here the GEMM accumulates
// instead: the rank-r product lands in y with alpha = s, beta = 1, and
// dx = g W + dh A is one tensor written by two GEMMs (the second with beta = 1).
//
//   forward   h  (rows, r)   = x_l A^T                (kept for dB)
//             y  (rows, out) = b,  += x W^T,  += s h B^T
//   backward  dh (rows, r)   = s g B
//             dB (out, r)    = s g^T h
//             dA (r, in)     = dh^T x_l
//             dx (rows, in)  = g W, += dh A           (x_l given: dx_l = dh A apart)
//             dW (out, in)   = g^T x                  (dense W that requires grad)
//             db (out)       = sum of the rows of g
// A bf16 W multiplies as bf16_linear does: x W^T and g W with x, g rounded
// to bf16 (bf16_gemm.hpp); the adapter's products are float, unrounded.
#include <cstring>
#include <memory>

#include "loragrad/autograd.hpp"
#include "loragrad/kernels/gemm.hpp"
#include "loragrad/ops.hpp"
#include "loragrad/parallel.hpp"
#include "loragrad/quant/bf16_tensor.hpp"
#include "loragrad/quant/nf4.hpp"
#include "bf16_gemm.hpp"
#include "nf4_gemm.hpp"
#include "op_util.hpp"

namespace loragrad {

namespace {

// W as the op sees it: a dense tensor (possibly trainable), or a constant in
// another format: NF4 codes or bf16 values. Exactly one is set.
struct BaseWeight {
  Tensor dense;                           // (out, in), undefined for NF4 and bf16
  std::shared_ptr<const NF4Tensor> nf4;   // or the codes
  std::shared_ptr<const BF16Tensor> bf16; // or the bf16 values
  bool is_dense() const { return !nf4 && !bf16; }
  const Shape& shape() const { return nf4 ? nf4->shape : bf16 ? bf16->shape : dense.shape(); }
  int64_t out() const { return shape()[0]; }
  int64_t in() const { return shape()[1]; }
};

void check_args(const Tensor& x, const BaseWeight& w, const Tensor& bias, const Tensor& a, const Tensor& b,
                const Tensor& x_lora) {
  const char* name = op_name(Op::lora_linear);
  check_defined(x, name);
  check_floating(x, name);
  if (w.is_dense()) check_defined(w.dense, name);
  const std::string wshape = shape_str(w.shape());
  if (w.is_dense()) {
    check_same_dtype(x, w.dense, name);
    if (w.dense.dim() != 2) throw ShapeError(std::string(name) + ": weight must be 2-d (out, in), got " + wshape);
  }
  const int64_t in = w.in(), out = w.out();
  if (x.dim() < 1 || x.size(-1) != in)
    throw ShapeError(std::string(name) + ": input " + shape_str(x.shape()) + " does not fit weight " + wshape +
                     " (expected input (..., " + std::to_string(in) + "))");
  if (bias.defined()) {
    check_same_dtype(x, bias, name);
    if (bias.shape() != Shape{out})
      throw ShapeError(std::string(name) + ": bias " + shape_str(bias.shape()) + " does not fit weight " + wshape +
                       " (expected [" + std::to_string(out) + "])");
  }
  check_defined(a, name);
  check_defined(b, name);
  check_same_dtype(x, a, name);
  check_same_dtype(x, b, name);
  if (a.dim() != 2 || a.size(1) != in || b.dim() != 2 || b.size(0) != out || b.size(1) != a.size(0))
    throw ShapeError(std::string(name) + ": adapter A " + shape_str(a.shape()) + " and B " + shape_str(b.shape()) +
                     " do not fit weight " + wshape + " (expected A (r, " + std::to_string(in) + ") and B (" +
                     std::to_string(out) + ", r))");
  if (x_lora.defined()) {
    check_same_dtype(x, x_lora, name);
    if (x_lora.shape() != x.shape())
      throw ShapeError(std::string(name) + ": adapter input " + shape_str(x_lora.shape()) + " differs from input " +
                       shape_str(x.shape()));
  }
}

Tensor lora_linear_impl(const Tensor& x, const BaseWeight& w, const Tensor& bias, const Tensor& a, const Tensor& b,
                        double scale, const Tensor& x_lora) {
  check_args(x, w, bias, a, b, x_lora);
  const int64_t in = w.in(), out = w.out(), r = a.size(0);
  const int64_t rows = detail::prod(x.shape(), 0, x.shape().size() - 1);  // x (rows, in) flattened
  const bool own_input = x_lora.defined();  // the adapter reads x_l, not x
  const Tensor xl = own_input ? x_lora : x;
  Shape ys = x.shape();
  ys.back() = out;

  Tensor y = uninitialized(ys, x.dtype());  // (rows, out)
  Tensor h = uninitialized({rows, r}, x.dtype());  // (rows, r) = x_l A^T
  dispatch_float(x.dtype(), op_name(Op::lora_linear), [&](auto tag) {
    using T = decltype(tag);
    T* py = y.data<T>();
    T beta = T(0);
    if (bias.defined()) {  // start every row from the bias, then accumulate onto it
      const T* pb = bias.data<T>();
      parallel_for(rows, rows * out, [&](int64_t i) { std::memcpy(py + i * out, pb, sizeof(T) * out); });
      beta = T(1);
    }
    if (w.nf4) {
      if (!bias.defined()) std::fill(py, py + rows * out, T(0));  // the NF4 product accumulates
      Tensor y2 = reshape(y, {rows, out});
      detail::nf4_forward_into(reshape(x.detach(), {rows, in}), *w.nf4, y2);
    } else if (w.bf16) {
      Tensor y2 = reshape(y, {rows, out});
      detail::bf16_forward_into(reshape(x.detach(), {rows, in}), *w.bf16, y2, /*accumulate=*/bias.defined());
    } else {
      kernels::gemm(false, true, rows, out, in, T(1), x.data<T>(), in, w.dense.data<T>(), in, beta, py, out);
    }
    T* ph = h.data<T>();
    kernels::gemm(false, true, rows, r, in, T(1), xl.data<T>(), in, a.data<T>(), in, T(0), ph, r);
    kernels::gemm(false, true, rows, out, r, T(scale), ph, r, b.data<T>(), r, T(1), py, out);  // y += s h B^T
  });

  // Inputs: x, [W,] bias, A, B, x_l. What each gradient reads decides what is kept.
  const bool dense = w.is_dense();
  const bool wants_w = dense && w.dense.requires_grad();
  const bool wants_x = x.requires_grad(), wants_xl = own_input && x_lora.requires_grad();
  const bool wants_a = a.requires_grad(), wants_b = b.requires_grad();
  const bool wants_dh = wants_a || wants_xl || (!own_input && wants_x);
  std::vector<Tensor> inputs{x};
  if (dense) inputs.push_back(w.dense);
  for (const Tensor& t : {bias, a, b, x_lora}) inputs.push_back(t);
  return record(
      Op::lora_linear, y, inputs,
      [sx = SavedTensor(wants_w ? x : Tensor(), Op::lora_linear),            // for dW
       sxl = SavedTensor(wants_a ? xl : Tensor(), Op::lora_linear),          // for dA (x itself shares x's storage)
       sw = SavedTensor(dense && wants_x ? w.dense : Tensor(), Op::lora_linear), nf4 = w.nf4, bf16 = w.bf16,  // dx
       sa = SavedTensor(wants_xl || (!own_input && wants_x) ? a : Tensor(), Op::lora_linear),  // for dh A
       sb = SavedTensor(wants_dh ? b : Tensor(), Op::lora_linear),           // for dh
       h = wants_b ? h : Tensor(),                                           // for dB; the op's own, never written
       own_input, rows, in,
       out, r, scale](const Tensor& g, const NeedsGrad& need) -> Grads {
        // need[]: x, [W,] bias, A, B, x_l
        const size_t o = nf4 || bf16 ? 0 : 1;
        const bool need_x = need[0], need_w = o == 1 && need[1], need_bias = need[1 + o], need_a = need[2 + o],
                   need_b = need[3 + o], need_xl = need[4 + o];
        const bool need_dh = need_a || need_xl || (!own_input && need_x);
        Grads gr(need.size());
        dispatch_float(g.dtype(), op_backward_name(Op::lora_linear), [&](auto tag) {
          using T = decltype(tag);
          const T* pg = g.data<T>();  // (rows, out)
          Tensor dh;                  // (rows, r) = s g B
          if (need_dh) {
            dh = uninitialized({rows, r}, g.dtype());
            kernels::gemm(false, false, rows, r, out, T(scale), pg, out, sb.get().data<T>(), r, T(0), dh.data<T>(), r);
          }
          if (need_b) {  // (out, r) = s g^T h
            Tensor db = uninitialized({out, r}, g.dtype());
            kernels::gemm(true, false, out, r, rows, T(scale), pg, out, h.data<T>(), r, T(0), db.data<T>(), r);
            gr[3 + o] = db;
          }
          if (need_a) {  // (r, in) = dh^T x_l
            Tensor da = uninitialized({r, in}, g.dtype());
            kernels::gemm(true, false, r, in, rows, T(1), dh.data<T>(), r, sxl.get().data<T>(), in, T(0), da.data<T>(), in);
            gr[2 + o] = da;
          }
          if (need_x) {  // (rows, in) = g W (+ dh A)
            Tensor dx;
            if (nf4) {
              dx = detail::nf4_input_grad(reshape(g, {rows, out}), *nf4);
            } else if (bf16) {
              dx = detail::bf16_input_grad(reshape(g, {rows, out}), *bf16);
            } else {
              dx = uninitialized({rows, in}, g.dtype());
              kernels::gemm(false, false, rows, in, out, T(1), pg, out, sw.get().data<T>(), in, T(0), dx.data<T>(),
                            in);
            }
            if (!own_input)
              kernels::gemm(false, false, rows, in, r, T(1), dh.data<T>(), r, sa.get().data<T>(), in, T(1),
                            dx.data<T>(), in);
            gr[0] = dx;
          }
          if (need_xl) {  // (rows, in) = dh A
            Tensor dxl = uninitialized({rows, in}, g.dtype());
            kernels::gemm(false, false, rows, in, r, T(1), dh.data<T>(), r, sa.get().data<T>(), in, T(0),
                          dxl.data<T>(), in);
            gr[4 + o] = dxl;
          }
          if (need_w) {  // (out, in) = g^T x
            Tensor dw = uninitialized({out, in}, g.dtype());
            kernels::gemm(true, false, out, in, rows, T(1), pg, out, sx.get().data<T>(), in, T(0), dw.data<T>(), in);
            gr[1] = dw;
          }
        });
        if (need_bias) gr[1 + o] = sum(reshape(g, {rows, out}), {0});  // (out)
        const Shape& xs = g.shape();  // (..., out) -> x's shape (..., in)
        Shape hx = xs;
        hx.back() = in;
        if (gr[0].defined()) gr[0] = reshape(gr[0], hx);
        if (gr.size() > 4 + o && gr[4 + o].defined()) gr[4 + o] = reshape(gr[4 + o], hx);
        return gr;
      });
}

}  // namespace

Tensor lora_linear(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& a, const Tensor& b,
                   double scale, const Tensor& x_lora) {
  return lora_linear_impl(x, BaseWeight{weight, nullptr, nullptr}, bias, a, b, scale, x_lora);
}

Tensor lora_linear(const Tensor& x, const std::shared_ptr<const NF4Tensor>& weight, const Tensor& bias,
                   const Tensor& a, const Tensor& b, double scale, const Tensor& x_lora) {
  if (!weight) throw ValueError("lora_linear: the NF4 weight is null");
  return lora_linear_impl(x, BaseWeight{Tensor(), weight, nullptr}, bias, a, b, scale, x_lora);
}

Tensor lora_linear(const Tensor& x, const std::shared_ptr<const BF16Tensor>& weight, const Tensor& bias,
                   const Tensor& a, const Tensor& b, double scale, const Tensor& x_lora) {
  if (!weight) throw ValueError("lora_linear: the bf16 weight is null");
  return lora_linear_impl(x, BaseWeight{Tensor(), nullptr, weight}, bias, a, b, scale, x_lora);
}

}  // namespace loragrad

// Matrix products: matmul and its transposed-operand forms, and linear.
// All go through kernels::gemm, whose trans flags let backward passes use
// A^T or B^T without materialising them.
#include <cstring>

#include "loragrad/autograd.hpp"
#include "loragrad/kernels/gemm.hpp"
#include "loragrad/ops.hpp"
#include "loragrad/parallel.hpp"

namespace loragrad {

namespace {

// (..., r, c) -> (prod(...) * r, c): rows of a contiguous tensor, no copy.
Tensor rows_of(const Tensor& t) { return reshape(t, {-1, t.size(-1)}); }

Shape batch_of(const Tensor& t) { return Shape(t.shape().begin(), t.shape().end() - 2); }

// C = op(A) op(B) over broadcast batch dims. Stored layouts:
//   A (..., M, K), or (..., K, M) when ta;  B (..., K, N), or (..., N, K) when tb.
Tensor batched_product(const Tensor& a, bool ta, const Tensor& b, bool tb, const char* op) {
  check_same_dtype(a, b, op);
  if (a.dim() < 2 || b.dim() < 2 || a.dim() > 4 || b.dim() > 4)
    throw ShapeError(std::string(op) + ": expected 2-d to 4-d operands, got " + shape_str(a.shape()) + " and " +
                     shape_str(b.shape()));
  const int64_t M = ta ? a.size(-1) : a.size(-2), Ka = ta ? a.size(-2) : a.size(-1);
  const int64_t Kb = tb ? b.size(-1) : b.size(-2), N = tb ? b.size(-2) : b.size(-1);
  if (Ka != Kb)
    throw ShapeError(std::string(op) + ": inner dims differ: a " + shape_str(a.shape()) + " vs b " +
                     shape_str(b.shape()));
  const int64_t K = Ka;
  Shape batch = broadcast_shapes(batch_of(a), batch_of(b), op);
  Shape out_shape = batch;
  out_shape.push_back(M);
  out_shape.push_back(N);
  Tensor c = K > 0 ? uninitialized(out_shape, a.dtype()) : zeros(out_shape, a.dtype());  // K == 0: zeros
  const int64_t nbatch = shape_numel(batch);
  if (c.numel() == 0 || K == 0) return c;

  dispatch_float(a.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    const T* pa = a.data<T>();
    const T* pb = b.data<T>();
    T* pc = c.data<T>();  // (batch..., M, N)
    const int64_t lda = ta ? M : K, ldb = tb ? K : N;
    // A plain (not transposed) A with a 2-d B is one tall product over all batch rows.
    if (!ta && b.dim() == 2) {
      kernels::gemm(false, tb, a.numel() / K, N, K, T(1), pa, lda, pb, ldb, T(0), pc, N);
      return;
    }
    // Otherwise one gemm per batch entry; operand offsets follow broadcasting.
    const Shape ba = batch_of(a), bb = batch_of(b);
    const int64_t nd = static_cast<int64_t>(batch.size());
    auto offset = [&](const Shape& bs, int64_t idx, int64_t mat) {
      int64_t off = 0, stride = 1;
      for (int64_t d = nd - 1, k = static_cast<int64_t>(bs.size()) - 1; d >= 0; --d, --k) {
        const int64_t i = idx % batch[d];
        idx /= batch[d];
        if (k >= 0) {
          if (bs[k] != 1) off += i * stride;
          stride *= bs[k];
        }
      }
      return off * mat;
    };
    const int64_t work = nbatch * M * N * K;
    parallel_for(nbatch, work / 16, [&](int64_t i) {
      kernels::gemm(ta, tb, M, N, K, T(1), pa + offset(ba, i, M * K), lda, pb + offset(bb, i, K * N), ldb, T(0),
                    pc + i * M * N, N);
    });
  });
  return c;
}

}  // namespace

// C = A B.  dA = dC B^T,  dB = A^T dC.
Tensor matmul(const Tensor& a, const Tensor& b) {
  Tensor c = batched_product(a, false, b, false, op_name(Op::matmul));
  return record(Op::matmul, c, {a, b}, [sa = SavedTensor(b.requires_grad() ? a : Tensor(), Op::matmul),
                                        sb = SavedTensor(a.requires_grad() ? b : Tensor(), Op::matmul),
                                        ha = a.shape(), hb = b.shape()](const Tensor& g, const NeedsGrad& need) -> Grads {
    Grads gr(2);
    if (need[0]) gr[0] = sum_to(matmul_nt(g, sb.get()), ha);
    if (need[1]) {
      const Tensor& A = sa.get();
      // A 2-d B shared by every batch entry: fold the batch into rows, one product.
      gr[1] = hb.size() == 2 ? matmul_tn(rows_of(A), rows_of(g)) : sum_to(matmul_tn(A, g), hb);
    }
    return gr;
  });
}

// C = A B^T (B stored (N, K)).  dA = dC B,  dB = dC^T A.
Tensor matmul_nt(const Tensor& a, const Tensor& b) {
  Tensor c = batched_product(a, false, b, true, op_name(Op::matmul_nt));
  return record(Op::matmul_nt, c, {a, b}, [sa = SavedTensor(b.requires_grad() ? a : Tensor(), Op::matmul_nt),
                                           sb = SavedTensor(a.requires_grad() ? b : Tensor(), Op::matmul_nt),
                                           ha = a.shape(), hb = b.shape()](const Tensor& g, const NeedsGrad& need) -> Grads {
    Grads gr(2);
    if (need[0]) gr[0] = sum_to(matmul(g, sb.get()), ha);
    if (need[1]) {
      const Tensor& A = sa.get();
      gr[1] = hb.size() == 2 ? matmul_tn(rows_of(g), rows_of(A)) : sum_to(matmul_tn(g, A), hb);
    }
    return gr;
  });
}

// C = A^T B (A stored (K, M)).  dA = B dC^T,  dB = A dC.
Tensor matmul_tn(const Tensor& a, const Tensor& b) {
  Tensor c = batched_product(a, true, b, false, op_name(Op::matmul_tn));
  return record(Op::matmul_tn, c, {a, b}, [sa = SavedTensor(b.requires_grad() ? a : Tensor(), Op::matmul_tn),
                                           sb = SavedTensor(a.requires_grad() ? b : Tensor(), Op::matmul_tn),
                                           ha = a.shape(), hb = b.shape()](const Tensor& g, const NeedsGrad& need) -> Grads {
    Grads gr(2);
    if (need[0]) gr[0] = sum_to(matmul_nt(sb.get(), g), ha);
    if (need[1]) gr[1] = sum_to(matmul(sa.get(), g), hb);
    return gr;
  });
}

// y = x W^T + b, x (..., in), W (out, in), b (out).
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  const char* name = op_name(Op::linear);
  check_same_dtype(x, weight, name);
  if (weight.dim() != 2 || x.dim() < 1 || x.size(-1) != weight.size(1))
    throw ShapeError(std::string(name) + ": input " + shape_str(x.shape()) + " does not fit weight " +
                     shape_str(weight.shape()) + " (expected input (..., " +
                     (weight.dim() == 2 ? std::to_string(weight.size(1)) : "in") + ") and weight (out, in))");
  const int64_t in = weight.size(1), out = weight.size(0), rows = x.numel() / std::max<int64_t>(in, 1);
  if (bias.defined()) {
    check_same_dtype(x, bias, name);
    if (bias.shape() != Shape{out})
      throw ShapeError(std::string(name) + ": bias " + shape_str(bias.shape()) + " does not fit weight " +
                       shape_str(weight.shape()) + " (expected [" + std::to_string(out) + "])");
  }
  Shape ys = x.shape();
  ys.back() = out;
  Tensor y = in > 0 ? uninitialized(ys, x.dtype()) : zeros(ys, x.dtype());
  dispatch_float(x.dtype(), name, [&](auto tag) {
    using T = decltype(tag);
    T* py = y.data<T>();  // (rows, out)
    T beta = T(0);
    if (bias.defined()) {  // start every row from the bias, then accumulate x W^T onto it
      const T* pb = bias.data<T>();
      parallel_for(rows, rows * out, [&](int64_t r) { std::memcpy(py + r * out, pb, sizeof(T) * out); });
      beta = T(1);
    }
    kernels::gemm(false, true, rows, out, in, T(1), x.data<T>(), in, weight.data<T>(), in, beta, py, out);
  });
  return record(Op::linear, y, {x, weight, bias},
                [sx = SavedTensor(weight.requires_grad() ? x : Tensor(), Op::linear),
                 sw = SavedTensor(x.requires_grad() ? weight : Tensor(), Op::linear),
                 hx = x.shape()](const Tensor& g, const NeedsGrad& need) -> Grads {
                  Tensor g2 = rows_of(g);                                          // (rows, out)
                  Grads gr(3);
                  if (need[0]) gr[0] = reshape(matmul(g2, sw.get()), hx);          // (rows, in)
                  if (need[1]) gr[1] = matmul_tn(g2, rows_of(sx.get()));           // (out, in)
                  if (need[2]) gr[2] = sum(g2, {0});                               // (out)
                  return gr;
                });
}

}  // namespace loragrad

// causal_attention: multi-head causal self-attention, forward and backward.
//
// Heads are never split into separate tensors: head h of q (B, T, d) is the
// (T, hd) matrix at q + b*T*d + h*hd with row stride d, handed straight to
// gemm. Work is parallel over (batch, head) pairs; gemm then runs on one
// thread (it sees in_parallel()), or on all of them when there is only one pair.
//
// The causal mask is applied by never computing the upper triangle where a
// row block allows it: rows [i0, i1) of S = q k^T need only columns [0, i1).
//
// Packed sequences (several examples in one row) pass `starts` (B, T): query i
// attends to keys [starts[i], i] only, so each example sees itself alone (a
// block-diagonal causal mask). The mask lives in P alone: masked entries are
// exact zeros, so the backward pass (dV = P^T dO, dS = P * (dP - rowsum(dP * P)))
// needs no mask of its own.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "loragrad/kernels/gemm.hpp"
#include "loragrad/ops.hpp"
#include "loragrad/parallel.hpp"
#include "op_util.hpp"

namespace loragrad {
namespace {

using kernels::gemm;

// Rows per gemm call when skipping the masked triangle: small enough to skip
// most of it, large enough that gemm's packing pays off.
constexpr int64_t kRowBlock = 64;

struct AttnDims {
  int64_t B, T, d, H, hd;
};

// P (T, T): row i = softmax over s_i <= j <= i of S (already scaled), every
// other entry 0; s_i = starts[i], or 0 when starts is null (plain causal).
template <class T>
void causal_softmax_rows(T* P, int64_t Tn, const int64_t* starts) {
  for (int64_t i = 0; i < Tn; ++i) {
    T* row = P + i * Tn;
    const int64_t s = starts ? starts[i] : 0;
    T* live = row + s;  // the keys this query sees: [s, i]
    const int64_t n = i + 1 - s;
    T m = live[0];
    for (int64_t j = 1; j < n; ++j) m = live[j] > m ? live[j] : m;
    const T inv = T(1) / detail::exp_shift_sum(live, live, n, m);
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) live[j] *= inv;
    std::fill(row, live, T(0));
    std::fill(row + i + 1, row + Tn, T(0));
  }
}

// One (b, h): P (T, T) and the head's columns of out.
template <class T>
void attention_forward_head(const AttnDims& D, const T* q, const T* k, const T* v, const int64_t* starts, T* P,
                            T* out) {
  const int64_t Tn = D.T, d = D.d;
  const T scale = T(1) / std::sqrt(T(D.hd));
  for (int64_t i0 = 0; i0 < Tn; i0 += kRowBlock) {
    const int64_t i1 = std::min(i0 + kRowBlock, Tn);
    // S[i0:i1, 0:i1] = scale * q[i0:i1] k[0:i1]^T
    gemm(false, true, i1 - i0, i1, D.hd, scale, q + i0 * d, d, k, d, T(0), P + i0 * Tn, Tn);
  }
  causal_softmax_rows(P, Tn, starts);
  for (int64_t i0 = 0; i0 < Tn; i0 += kRowBlock) {
    const int64_t i1 = std::min(i0 + kRowBlock, Tn);
    // out[i0:i1] = P[i0:i1, 0:i1] v[0:i1]
    gemm(false, false, i1 - i0, D.hd, i1, T(1), P + i0 * Tn, Tn, v, d, T(0), out + i0 * d, d);
  }
}

// dst[j0:j1] = alpha * A[j0:T, j0:j1]^T src[j0:T] for lower-triangular A (T, T):
// column j of A is zero above row j, so rows < j0 contribute nothing.
template <class T>
void lower_tn_product(const AttnDims& D, T alpha, const T* A, const T* src, T* dst) {
  const int64_t Tn = D.T, d = D.d;
  for (int64_t j0 = 0; j0 < Tn; j0 += kRowBlock) {
    const int64_t j1 = std::min(j0 + kRowBlock, Tn);
    gemm(true, false, j1 - j0, D.hd, Tn - j0, alpha, A + j0 * Tn + j0, Tn, src + j0 * d, d, T(0),
         dst + j0 * d, d);
  }
}

// One (b, h) of backward; dq/dk/dv may be null (not needed).
//   dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dP * P)),
//   dQ = dS K * scale, dK = dS^T Q * scale
template <class T>
void attention_backward_head(const AttnDims& D, const T* q, const T* k, const T* v, const T* P,
                             const T* dout, T* dq, T* dk, T* dv) {
  const int64_t Tn = D.T, d = D.d;
  const T scale = T(1) / std::sqrt(T(D.hd));
  if (dv) lower_tn_product(D, T(1), P, dout, dv);
  if (!dq && !dk) return;
  std::vector<T> dS(static_cast<size_t>(Tn * Tn));  // (T, T): dP, then dS in place
  for (int64_t i0 = 0; i0 < Tn; i0 += kRowBlock) {
    const int64_t i1 = std::min(i0 + kRowBlock, Tn);
    // dP[i0:i1, 0:i1] = dO[i0:i1] v[0:i1]^T
    gemm(false, true, i1 - i0, i1, D.hd, T(1), dout + i0 * d, d, v, d, T(0), dS.data() + i0 * Tn, Tn);
  }
  for (int64_t i = 0; i < Tn; ++i) {
    T* row = dS.data() + i * Tn;
    const T* prow = P + i * Tn;
    const int64_t n = i + 1;
    T dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < n; ++j) dot += row[j] * prow[j];
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) row[j] = prow[j] * (row[j] - dot);
    std::fill(row + n, row + Tn, T(0));
  }
  if (dq) {
    for (int64_t i0 = 0; i0 < Tn; i0 += kRowBlock) {
      const int64_t i1 = std::min(i0 + kRowBlock, Tn);
      // dq[i0:i1] = scale * dS[i0:i1, 0:i1] k[0:i1]
      gemm(false, false, i1 - i0, D.hd, i1, scale, dS.data() + i0 * Tn, Tn, k, d, T(0), dq + i0 * d, d);
    }
  }
  if (dk) lower_tn_product(D, scale, dS.data(), q, dk);
}

void check_attention_inputs(const Tensor& q, const Tensor& k, const Tensor& v, int64_t n_head) {
  const char* op = op_name(Op::causal_attention);
  check_same_dtype(q, k, op);
  check_same_dtype(q, v, op);
  if (q.dim() != 3 || k.shape() != q.shape() || v.shape() != q.shape())
    throw ShapeError(std::string(op) + ": q, k, v must all be (B, T, d) of one shape, got q " +
                     shape_str(q.shape()) + ", k " + shape_str(k.shape()) + ", v " + shape_str(v.shape()));
  if (n_head < 1 || q.size(2) % n_head != 0)
    throw ShapeError(std::string(op) + ": d = " + std::to_string(q.size(2)) + " (q " + shape_str(q.shape()) +
                     ") must be a multiple of n_head = " + std::to_string(n_head) + " >= 1");
}

// starts (B, T) i64 with 0 <= starts[b, i] <= i, or undefined.
void check_starts(const Tensor& q, const Tensor& starts) {
  if (!starts.defined()) return;
  const char* op = op_name(Op::causal_attention);
  if (starts.dtype() != DType::i64 || starts.dim() != 2 || starts.size(0) != q.size(0) || starts.size(1) != q.size(1))
    throw ShapeError(std::string(op) + ": starts must be int64 (B, T) = " + shape_str({q.size(0), q.size(1)}) +
                     " for q " + shape_str(q.shape()) + ", got " + dtype_name(starts.dtype()) + " " +
                     shape_str(starts.shape()));
  const int64_t* s = starts.data<int64_t>();  // (B, T)
  const int64_t Tn = q.size(1);
  for (int64_t n = 0; n < starts.numel(); ++n)
    if (s[n] < 0 || s[n] > n % Tn)
      throw ValueError(std::string(op) + ": starts[" + std::to_string(n / Tn) + ", " + std::to_string(n % Tn) +
                       "] = " + std::to_string(s[n]) + " is outside [0, " + std::to_string(n % Tn) +
                       "] (a query attends to keys starts[i] .. i)");
}

}  // namespace

Tensor causal_attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t n_head, const Tensor& starts) {
  check_attention_inputs(q, k, v, n_head);
  check_starts(q, starts);
  const AttnDims D{q.size(0), q.size(1), q.size(2), n_head, q.size(2) / n_head};
  const int64_t pairs = D.B * D.H;
  const int64_t work = pairs * D.T * D.T * std::max<int64_t>(D.hd, 1);
  // Every head writes all of its P block (causal_softmax_rows zeroes the
  // masked part) and all of its columns of out: no need to zero them first
  // (16 MiB of P per layer of M, a serial memset). Empty q: zeros.
  const bool computed = q.numel() > 0;
  Tensor out = computed ? uninitialized(q.shape(), q.dtype()) : zeros(q.shape(), q.dtype());  // (B, T, d)
  Tensor P = computed ? uninitialized({D.B, D.H, D.T, D.T}, q.dtype())
                      : zeros({D.B, D.H, D.T, D.T}, q.dtype());  // (B, H, T, T)
  if (computed) {
    dispatch_float(q.dtype(), op_name(Op::causal_attention), [&](auto tag) {
      using T = decltype(tag);
      const T* pq = q.data<T>();
      const T* pk = k.data<T>();
      const T* pv = v.data<T>();
      T* pP = P.data<T>();
      T* po = out.data<T>();
      const int64_t* ps = starts.defined() ? starts.data<int64_t>() : nullptr;  // (B, T)
      parallel_for(pairs, work, [&](int64_t bh) {
        const int64_t b = bh / D.H, h = bh % D.H;
        const int64_t head = b * D.T * D.d + h * D.hd;  // offset of (b, 0, h*hd)
        attention_forward_head(D, pq + head, pk + head, pv + head, ps ? ps + b * D.T : nullptr, pP + bh * D.T * D.T,
                               po + head);
      });
    });
  }

  const Op op = Op::causal_attention;
  return record(op, out, {q, k, v},
                [sq = SavedTensor(q, op), sk = SavedTensor(k, op), sv = SavedTensor(v, op), sP = SavedTensor(P, op),
                 D, pairs, work](const Tensor& g, const NeedsGrad& needs) -> Grads {
                  const Tensor& qv = sq.get();
                  Tensor dq = needs[0] ? zeros(qv.shape(), qv.dtype()) : Tensor();  // (B, T, d)
                  Tensor dk = needs[1] ? zeros(qv.shape(), qv.dtype()) : Tensor();  // (B, T, d)
                  Tensor dv = needs[2] ? zeros(qv.shape(), qv.dtype()) : Tensor();  // (B, T, d)
                  if (qv.numel() == 0) return {dq, dk, dv};
                  dispatch_float(qv.dtype(), op_backward_name(Op::causal_attention), [&](auto tag) {
                    using T = decltype(tag);
                    const T* pq = qv.data<T>();
                    const T* pk = sk.get().data<T>();
                    const T* pv = sv.get().data<T>();
                    const T* pP = sP.get().data<T>();  // (B, H, T, T)
                    const T* pg = g.data<T>();         // (B, T, d)
                    T* pdq = dq.defined() ? dq.data<T>() : nullptr;
                    T* pdk = dk.defined() ? dk.data<T>() : nullptr;
                    T* pdv = dv.defined() ? dv.data<T>() : nullptr;
                    parallel_for(pairs, 2 * work, [&](int64_t bh) {
                      const int64_t b = bh / D.H, h = bh % D.H;
                      const int64_t head = b * D.T * D.d + h * D.hd;
                      attention_backward_head(D, pq + head, pk + head, pv + head, pP + bh * D.T * D.T,
                                              pg + head, pdq ? pdq + head : nullptr, pdk ? pdk + head : nullptr,
                                              pdv ? pdv + head : nullptr);
                    });
                  });
                  return {dq, dk, dv};
                });
}

}  // namespace loragrad

// softmax, log_softmax, cross_entropy: row kernels over contiguous rows.
//
// Every row is max-subtracted before exp, so nothing overflows; the exp loop
// uses xsimd::exp (std::exp in an `omp simd` loop stays scalar here: glibc
// only declares its vector variants under -ffast-math).
// A softmax over a dim other than the last is gathered into contiguous rows,
// computed, and scattered back.
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "loragrad/ops.hpp"
#include "loragrad/parallel.hpp"
#include "op_util.hpp"

namespace loragrad {
namespace detail {

// exp_shift_sum (op_util.hpp) for both float types.
template <class T>
static T exp_shift_sum_impl(const T* x, T* y, int64_t n, T shift) {
  using batch = xsimd::batch<T>;
  constexpr int64_t W = static_cast<int64_t>(batch::size);
  const batch vshift(shift);
  batch vsum(T(0));
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    batch e = xsimd::exp(batch::load_unaligned(x + j) - vshift);
    if (y) e.store_unaligned(y + j);
    vsum += e;
  }
  // (xsimd::hadd on AVX-512 doubles trips a GCC 12 -Wuninitialized false positive)
  alignas(64) T lanes[W];
  vsum.store_aligned(lanes);
  T sum = 0;
  for (int64_t l = 0; l < W; ++l) sum += lanes[l];
  for (; j < n; ++j) {
    T e = std::exp(x[j] - shift);
    if (y) y[j] = e;
    sum += e;
  }
  return sum;
}
float exp_shift_sum(const float* x, float* y, int64_t n, float shift) {
  return exp_shift_sum_impl(x, y, n, shift);
}
double exp_shift_sum(const double* x, double* y, int64_t n, double shift) {
  return exp_shift_sum_impl(x, y, n, shift);
}

template <class T>
static T row_max(const T* x, int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

}  // namespace detail

namespace {

using detail::exp_shift_sum;
using detail::position_str;
using detail::row_max;

// x viewed as (outer, D, inner) around the softmax dim.
struct RowGeometry {
  int64_t outer = 1, D = 1, inner = 1;
  int64_t rows() const { return outer * inner; }
};

RowGeometry geometry(const Shape& s, int64_t dim) {
  RowGeometry g;
  for (int64_t i = 0; i < static_cast<int64_t>(s.size()); ++i) {
    if (i < dim) g.outer *= s[i];
    else if (i == dim) g.D = s[i];
    else g.inner *= s[i];
  }
  return g;
}

// (outer, D, inner) -> (outer, inner, D): each softmax row becomes contiguous.
template <class T>
void gather_rows(const T* src, T* dst, const RowGeometry& g) {
  for (int64_t o = 0; o < g.outer; ++o)
    for (int64_t j = 0; j < g.D; ++j)
      for (int64_t i = 0; i < g.inner; ++i)
        dst[(o * g.inner + i) * g.D + j] = src[(o * g.D + j) * g.inner + i];
}
// (outer, inner, D) -> (outer, D, inner)
template <class T>
void scatter_rows(const T* src, T* dst, const RowGeometry& g) {
  for (int64_t o = 0; o < g.outer; ++o)
    for (int64_t j = 0; j < g.D; ++j)
      for (int64_t i = 0; i < g.inner; ++i)
        dst[(o * g.D + j) * g.inner + i] = src[(o * g.inner + i) * g.D + j];
}

// Run rows(in_rows..., out_rows) on contiguous rows of length D: directly when
// the dim is the last one, else through gathered copies of every operand.
template <class T, class RowsFn>
void over_rows(const RowGeometry& g, const std::vector<const T*>& ins, T* out, RowsFn rows) {
  if (g.inner == 1) {
    rows(ins, out);
    return;
  }
  const size_t n = static_cast<size_t>(g.rows() * g.D);
  std::vector<std::vector<T>> gathered(ins.size(), std::vector<T>(n));
  std::vector<const T*> gathered_ptrs;
  for (size_t k = 0; k < ins.size(); ++k) {
    gather_rows(ins[k], gathered[k].data(), g);
    gathered_ptrs.push_back(gathered[k].data());
  }
  std::vector<T> result(n);  // (outer, inner, D)
  rows(gathered_ptrs, result.data());
  scatter_rows(result.data(), out, g);
}

// y = softmax(x) or log_softmax(x) of one row of length n.
template <class T>
void softmax_row(const T* x, T* y, int64_t n, bool log) {
  const T m = row_max(x, n);
  if (log) {
    const T shift = m + std::log(exp_shift_sum(x, static_cast<T*>(nullptr), n, m));
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) y[j] = x[j] - shift;
  } else {
    const T inv = T(1) / exp_shift_sum(x, y, n, m);
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) y[j] *= inv;
  }
}

// dx of one row given the saved output y and upstream g:
//   softmax:     dx = y * (g - sum(g * y))
//   log_softmax: dx = g - exp(y) * sum(g)
template <class T>
void softmax_backward_row(const T* g, const T* y, T* dx, int64_t n, bool log) {
  if (log) {
    T gsum = 0;
#pragma omp simd reduction(+ : gsum)
    for (int64_t j = 0; j < n; ++j) gsum += g[j];
    exp_shift_sum(y, dx, n, T(0));  // dx = exp(y) = softmax
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) dx[j] = g[j] - dx[j] * gsum;
  } else {
    T dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < n; ++j) dot += g[j] * y[j];
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) dx[j] = y[j] * (g[j] - dot);
  }
}

Tensor softmax_impl(const Tensor& x, int64_t dim, bool log) {
  const Op op = log ? Op::log_softmax : Op::softmax;
  const char* name = op_name(op);
  check_floating(x, name);
  const int64_t d = wrap_dim(dim, x.dim(), name);
  const RowGeometry geo = geometry(x.shape(), d);
  Tensor y = zeros(x.shape(), x.dtype());
  dispatch_float(x.dtype(), name, [&](auto tag) {
    using T = decltype(tag);
    over_rows<T>(geo, {x.data<T>()}, y.data<T>(), [&](const std::vector<const T*>& in, T* out) {
      const T* px = in[0];  // (rows, D)
      const int64_t D = geo.D;
      parallel_for(geo.rows(), geo.rows() * D, [&](int64_t r) {
        softmax_row(px + r * D, out + r * D, D, log);
      });
    });
  });
  return record(op, y, {x}, [sy = SavedTensor(y, op), op, geo, log](const Tensor& g, const NeedsGrad&) -> Grads {
    const Tensor& yv = sy.get();
    Tensor dx = zeros(yv.shape(), yv.dtype());
    dispatch_float(yv.dtype(), op_backward_name(op), [&](auto tag) {
      using T = decltype(tag);
      over_rows<T>(geo, {g.data<T>(), yv.data<T>()}, dx.data<T>(),
                   [&](const std::vector<const T*>& in, T* out) {
                     const T* pg = in[0];  // (rows, D)
                     const T* py = in[1];  // (rows, D)
                     const int64_t D = geo.D;
                     parallel_for(geo.rows(), geo.rows() * D, [&](int64_t r) {
                       softmax_backward_row(pg + r * D, py + r * D, out + r * D, D, log);
                     });
                   });
    });
    return {dx};
  });
}

// Class ids from targets (i64, or float holding integers), validated.
std::vector<int64_t> class_ids(const Tensor& targets, int64_t C, int64_t ignore_index,
                               const Shape& logits_shape) {
  const std::string name = op_name(Op::cross_entropy);
  const int64_t N = targets.numel();
  std::vector<int64_t> ids(static_cast<size_t>(N));
  if (targets.dtype() == DType::i64) {
    std::memcpy(ids.data(), targets.data<int64_t>(), ids.size() * sizeof(int64_t));
  } else {
    const std::vector<double> vals = targets.to_vector();
    for (int64_t i = 0; i < N; ++i) {
      const double t = vals[i];
      if (!std::isfinite(t) || t != std::floor(t) || std::fabs(t) > 9e15)
        throw ValueError(name + ": target at position " + position_str(i, targets.shape()) +
                         " is " + std::to_string(t) + ", expected an integer class id (targets " +
                         dtype_name(targets.dtype()) + shape_str(targets.shape()) + ")");
      ids[i] = static_cast<int64_t>(t);
    }
  }
  for (int64_t i = 0; i < N; ++i)
    if (ids[i] != ignore_index && (ids[i] < 0 || ids[i] >= C))
      throw IndexError(name + ": target " + std::to_string(ids[i]) + " at position " +
                       position_str(i, targets.shape()) + " is out of range for " + std::to_string(C) +
                       " classes (logits " + shape_str(logits_shape) + ", ignore_index " +
                       std::to_string(ignore_index) + ")");
  return ids;
}

}  // namespace

Tensor softmax(const Tensor& x, int64_t dim) { return softmax_impl(x, dim, false); }
Tensor log_softmax(const Tensor& x, int64_t dim) { return softmax_impl(x, dim, true); }

// Fused log_softmax + nll: forward keeps only logsumexp per row (N,); backward
// recomputes softmax - onehot row by row, scaled by g / count.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index) {
  const char* name = op_name(Op::cross_entropy);
  check_floating(logits, name);
  check_defined(targets, name);
  if (logits.dim() < 1)
    throw ShapeError(std::string(name) + ": logits must have a class dim, got shape " + shape_str(logits.shape()));
  const Shape lead(logits.shape().begin(), logits.shape().end() - 1);
  if (targets.shape() != lead)
    throw ShapeError(std::string(name) + ": targets " + shape_str(targets.shape()) +
                     " must have logits' leading shape " + shape_str(lead) + " (logits " + shape_str(logits.shape()) +
                     ")");
  const int64_t C = logits.size(-1);
  const int64_t N = targets.numel();
  std::vector<int64_t> ids_vec = class_ids(targets, C, ignore_index, logits.shape());
  int64_t count = 0;
  for (int64_t t : ids_vec) count += t != ignore_index;
  Tensor ids = from_indices(ids_vec, {N});  // (N,)

  Tensor lse = zeros({N}, logits.dtype());  // (N,) logsumexp per row
  Tensor loss = zeros({}, logits.dtype());
  dispatch_float(logits.dtype(), name, [&](auto tag) {
    using T = decltype(tag);
    const T* x = logits.data<T>();  // (N, C)
    T* plse = lse.data<T>();        // (N,)
    std::vector<double> row_loss(static_cast<size_t>(N), 0.0);  // (N,)
    parallel_for(N, N * C, [&](int64_t n) {
      const T* row = x + n * C;
      const T m = row_max(row, C);
      plse[n] = m + std::log(exp_shift_sum(row, static_cast<T*>(nullptr), C, m));
      if (ids_vec[n] != ignore_index) row_loss[n] = double(plse[n]) - double(row[ids_vec[n]]);
    });
    double total = 0;
    for (double l : row_loss) total += l;
    // All targets ignored: 0 / 0 = NaN, as in PyTorch.
    loss.data<T>()[0] = static_cast<T>(count ? total / double(count) : std::nan(""));
  });

  return record(Op::cross_entropy, loss, {logits, targets},
                [sx = SavedTensor(logits, Op::cross_entropy), slse = SavedTensor(lse, Op::cross_entropy),
                 sids = SavedTensor(ids, Op::cross_entropy), count, ignore_index](
                    const Tensor& g, const NeedsGrad& needs) -> Grads {
                  if (!needs[0]) return {Tensor(), Tensor()};
                  const Tensor& xv = sx.get();
                  Tensor dx = zeros(xv.shape(), xv.dtype());  // ignored rows stay 0
                  if (count == 0) return {dx, Tensor()};
                  dispatch_float(xv.dtype(), op_backward_name(Op::cross_entropy), [&](auto tag) {
                    using T = decltype(tag);
                    const int64_t C = xv.size(-1);
                    const int64_t N = xv.numel() / std::max<int64_t>(C, 1);
                    const T* x = xv.data<T>();                  // (N, C)
                    const T* plse = slse.get().data<T>();       // (N,)
                    const int64_t* t = sids.get().data<int64_t>();  // (N,)
                    T* pdx = dx.data<T>();                      // (N, C)
                    const T scale = static_cast<T>(g.item() / double(count));
                    parallel_for(N, N * C, [&](int64_t n) {
                      if (t[n] == ignore_index) return;
                      T* drow = pdx + n * C;
                      exp_shift_sum(x + n * C, drow, C, plse[n]);  // softmax
#pragma omp simd
                      for (int64_t j = 0; j < C; ++j) drow[j] *= scale;
                      drow[t[n]] -= scale;
                    });
                  });
                  return {dx, Tensor()};
                });
}

}  // namespace loragrad

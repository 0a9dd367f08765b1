// layer_norm over the last dim: row kernels, forward and backward.
//
// Forward saves mean and rstd per row (N,) so backward need not redo the
// statistics. Variance is two-pass (mean first, then squared deviations):
// one-pass E[x^2] - E[x]^2 cancels catastrophically in float32 when |mean| >> std.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "loragrad/ops.hpp"
#include "loragrad/parallel.hpp"

namespace loragrad {
namespace {

void check_affine(const Tensor& p, const char* what, const Tensor& x, int64_t C) {
  if (!p.defined()) return;
  const char* name = op_name(Op::layer_norm);
  check_same_dtype(x, p, name);
  if (p.shape() != Shape{C})
    throw ShapeError(std::string(name) + ": " + what + " " + shape_str(p.shape()) + " must have shape [" +
                     std::to_string(C) + "] to match the last dim of x " + shape_str(x.shape()));
}

// One row: y = (x - mean) * rstd * w + b, with w / b optional.
template <class T>
void layer_norm_row(const T* x, T* y, const T* w, const T* b, int64_t C, T eps, T& mean_out, T& rstd_out) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < C; ++j) sum += x[j];
  const T mean = sum / T(C);
  T sq = 0;
#pragma omp simd reduction(+ : sq)
  for (int64_t j = 0; j < C; ++j) sq += (x[j] - mean) * (x[j] - mean);
  const T rstd = T(1) / std::sqrt(sq / T(C) + eps);
  mean_out = mean;
  rstd_out = rstd;
  if (w && b) {
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) y[j] = (x[j] - mean) * rstd * w[j] + b[j];
  } else if (w) {
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) y[j] = (x[j] - mean) * rstd * w[j];
  } else if (b) {
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) y[j] = (x[j] - mean) * rstd + b[j];
  } else {
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) y[j] = (x[j] - mean) * rstd;
  }
}

// One row of backward. xhat = (x - mean) * rstd, dxhat = g * w:
//   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
// and the row's share of dw (+= g * xhat) and db (+= g); any output may be null.
template <class T>
void layer_norm_backward_row(const T* x, const T* g, const T* w, T mean, T rstd, int64_t C, T* dx, T* dw,
                             T* db) {
  if (dw) {
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) dw[j] += g[j] * (x[j] - mean) * rstd;
  }
  if (db) {
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) db[j] += g[j];
  }
  if (!dx) return;
  T sum_dxhat = 0, sum_dxhat_xhat = 0;
#pragma omp simd reduction(+ : sum_dxhat, sum_dxhat_xhat)
  for (int64_t j = 0; j < C; ++j) {
    const T dxhat = w ? g[j] * w[j] : g[j];
    sum_dxhat += dxhat;
    sum_dxhat_xhat += dxhat * (x[j] - mean) * rstd;
  }
  const T a = sum_dxhat / T(C), b = sum_dxhat_xhat / T(C);
#pragma omp simd
  for (int64_t j = 0; j < C; ++j) {
    const T dxhat = w ? g[j] * w[j] : g[j];
    dx[j] = rstd * (dxhat - a - (x[j] - mean) * rstd * b);
  }
}

// How many row blocks the backward's dw / db partial sums use: a function of
// N only, so their summation order does not depend on the thread count. At
// least kLnMinRows rows a block (a partial costs 2C adds to combine), at most
// kLnMaxBlocks blocks (enough to share out over that many threads).
constexpr int64_t kLnMinRows = 16;
constexpr int64_t kLnMaxBlocks = 64;
int64_t ln_partial_blocks(int64_t N) {
  return std::max<int64_t>(1, std::min(kLnMaxBlocks, N / kLnMinRows));
}

}  // namespace

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  const Op op = Op::layer_norm;
  const char* name = op_name(op);
  check_floating(x, name);
  if (x.dim() < 1)
    throw ShapeError(std::string(name) + ": x must have at least 1 dim, got shape " + shape_str(x.shape()));
  if (!(eps >= 0) || !std::isfinite(eps))
    throw ValueError(std::string(name) + ": eps must be finite and >= 0, got " + std::to_string(eps));
  const int64_t C = x.size(-1);
  const int64_t N = C ? x.numel() / C : 0;
  check_affine(weight, "weight", x, C);
  check_affine(bias, "bias", x, C);

  Tensor y = zeros(x.shape(), x.dtype());
  Tensor mean = zeros({N}, x.dtype());  // (N,)
  Tensor rstd = zeros({N}, x.dtype());  // (N,)
  dispatch_float(x.dtype(), name, [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();                                 // (N, C)
    const T* pw = weight.defined() ? weight.data<T>() : nullptr;  // (C,)
    const T* pb = bias.defined() ? bias.data<T>() : nullptr;      // (C,)
    T* py = y.data<T>();                                       // (N, C)
    T* pmean = mean.data<T>();
    T* prstd = rstd.data<T>();
    parallel_for(N, N * C, [&](int64_t n) {
      layer_norm_row(px + n * C, py + n * C, pw, pb, C, static_cast<T>(eps), pmean[n], prstd[n]);
    });
  });

  return record(op, y, {x, weight, bias},
                [sx = SavedTensor(x, op), sw = SavedTensor(weight, op), smean = SavedTensor(mean, op),
                 srstd = SavedTensor(rstd, op), C, N](const Tensor& g, const NeedsGrad& needs) -> Grads {
                  const Tensor& xv = sx.get();
                  const Tensor& wv = sw.get();
                  Tensor dx = needs[0] ? zeros(xv.shape(), xv.dtype()) : Tensor();
                  Tensor dw = needs[1] ? zeros({C}, xv.dtype()) : Tensor();
                  Tensor db = needs[2] ? zeros({C}, xv.dtype()) : Tensor();
                  dispatch_float(xv.dtype(), op_backward_name(Op::layer_norm), [&](auto tag) {
                    using T = decltype(tag);
                    const T* px = xv.data<T>();  // (N, C)
                    const T* pg = g.data<T>();   // (N, C)
                    const T* pw = wv.defined() ? wv.data<T>() : nullptr;  // (C,)
                    const T* pmean = smean.get().data<T>();  // (N,)
                    const T* prstd = srstd.get().data<T>();  // (N,)
                    T* pdx = dx.defined() ? dx.data<T>() : nullptr;
                    T* pdw = dw.defined() ? dw.data<T>() : nullptr;
                    T* pdb = db.defined() ? db.data<T>() : nullptr;
                    auto row = [&](int64_t n, T* dw_acc, T* db_acc) {
                      layer_norm_backward_row(px + n * C, pg + n * C, pw, pmean[n], prstd[n], C,
                                              pdx ? pdx + n * C : nullptr, dw_acc, db_acc);
                    };
                    if (!pdw && !pdb) {  // dx only: rows are independent
                      parallel_for(N, N * C, [&](int64_t n) { row(n, nullptr, nullptr); });
                      return;
                    }
                    // dw / db sum over rows. The rows are cut into blocks by N
                    // alone (never by the thread count), each block sums its rows
                    // in order into its own partial, and the partials are added
                    // in block order: the same bits with any number of threads,
                    // or none.
                    const int64_t blocks = ln_partial_blocks(N);
                    if (blocks == 1) {  // the one partial is the result (dw, db start at 0)
                      for (int64_t n = 0; n < N; ++n) row(n, pdw, pdb);
                      return;
                    }
                    std::vector<T> partial(static_cast<size_t>(blocks * 2 * C), T(0));  // (blocks, 2, C): dw, db
                    parallel_for(blocks, N * C, [&](int64_t b) {
                      T* part = partial.data() + b * 2 * C;
                      const int64_t n1 = N * (b + 1) / blocks;
                      for (int64_t n = N * b / blocks; n < n1; ++n)
                        row(n, pdw ? part : nullptr, pdb ? part + C : nullptr);
                    });
                    for (int64_t b = 0; b < blocks; ++b) {
                      const T* part = partial.data() + b * 2 * C;
                      if (pdw) {
#pragma omp simd
                        for (int64_t j = 0; j < C; ++j) pdw[j] += part[j];
                      }
                      if (pdb) {
#pragma omp simd
                        for (int64_t j = 0; j < C; ++j) pdb[j] += part[C + j];
                      }
                    }
                  });
                  return {dx, dw, db};
                });
}

}  // namespace loragrad

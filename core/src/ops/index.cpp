// Index ops: index_select and embedding (a gather of rows), each with a
// scatter-add backward (repeated indices add up).
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "loragrad/ops.hpp"
#include "loragrad/parallel.hpp"
#include "op_util.hpp"

namespace loragrad {
namespace {

using detail::prod;

// An index tensor must be i64 with every value in [0, n).
void check_indices(const Tensor& index, int64_t n, const char* op, const std::string& what) {
  check_defined(index, op);
  if (index.dtype() != DType::i64)
    throw DTypeError(std::string(op) + ": indices must be an int64 tensor, got " + dtype_name(index.dtype()) +
                     " of shape " + shape_str(index.shape()));
  const int64_t* pi = index.data<int64_t>();
  for (int64_t k = 0; k < index.numel(); ++k)
    if (pi[k] < 0 || pi[k] >= n)
      throw IndexError(std::string(op) + ": index " + std::to_string(pi[k]) + " out of range [0, " +
                       std::to_string(n) + ") (" + what + ")");
}

// y (outer, K, inner) = x (outer, n, inner)[:, idx, :], moved as bytes.
void gather_rows(const char* x, char* y, const int64_t* idx, int64_t outer, int64_t n, int64_t K,
                 int64_t inner_bytes) {
  const size_t run = static_cast<size_t>(inner_bytes);
  if (run == 0) return;
  parallel_for(outer * K, outer * K * inner_bytes / 8, [&](int64_t t) {
    const int64_t o = t / K, k = t % K;
    std::memcpy(y + t * inner_bytes, x + (o * n + idx[k]) * inner_bytes, run);
  });
}

// gx (outer, n, inner) = 0; gx[:, idx[k], :] += g (outer, K, inner)[:, k, :].
// Each task owns one outer slice and a block of columns, so repeated indices
// never race on one row.
Tensor scatter_add_rows(const Tensor& g, const Shape& xshape, const int64_t* idx, int64_t outer, int64_t n,
                        int64_t K, int64_t inner) {
  Tensor gx = zeros(xshape, g.dtype());
  if (inner == 0) return gx;
  dispatch_float(g.dtype(), "scatter_add", [&](auto tag) {
    using T = decltype(tag);
    const T* pg = g.data<T>();  // (outer, K, inner)
    T* px = gx.data<T>();       // (outer, n, inner)
    constexpr int64_t kCols = 256;
    const int64_t ncb = (inner + kCols - 1) / kCols;
    parallel_for(outer * ncb, outer * K * inner, [&](int64_t task) {
      const int64_t o = task / ncb, j0 = (task % ncb) * kCols, j1 = std::min(inner, j0 + kCols);
      for (int64_t k = 0; k < K; ++k) {
        const T* src = pg + (o * K + k) * inner;
        T* dst = px + (o * n + idx[k]) * inner;
#pragma omp simd
        for (int64_t j = j0; j < j1; ++j) dst[j] += src[j];
      }
    });
  });
  return gx;
}

}  // namespace

Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index) {
  const char* name = op_name(Op::index_select);
  check_defined(x, name);
  if (x.dim() == 0) throw ShapeError(std::string(name) + ": cannot index a 0-d tensor");
  const int64_t d = wrap_dim(dim, x.dim(), name);
  const Shape& s = x.shape();
  check_indices(index, s[d], name, "dim " + std::to_string(dim) + " of shape " + shape_str(s));
  if (index.dim() > 1)
    throw ShapeError(std::string(name) + ": index must be 1-d, got shape " + shape_str(index.shape()));
  const int64_t K = index.numel(), outer = prod(s, 0, d), inner = prod(s, d + 1, s.size());
  Shape out_shape = s;
  out_shape[d] = K;
  Tensor y = uninitialized(out_shape, x.dtype());
  gather_rows(static_cast<const char*>(x.raw_data()), static_cast<char*>(y.raw_data()), index.data<int64_t>(),
              outer, s[d], K, inner * static_cast<int64_t>(dtype_size(x.dtype())));
  return record(Op::index_select, y, {x, index},
                [xshape = s, sidx = SavedTensor(index, Op::index_select), outer, n = s[d], K, inner](
                    const Tensor& g, const NeedsGrad& needs) -> Grads {
                  if (!needs[0]) return {Tensor(), Tensor()};
                  return {scatter_add_rows(g, xshape, sidx.get().data<int64_t>(), outer, n, K, inner), Tensor()};
                });
}

Tensor embedding(const Tensor& weight, const Tensor& idx) {
  const char* name = op_name(Op::embedding);
  check_floating(weight, name);
  if (weight.dim() != 2)
    throw ShapeError(std::string(name) + ": weight must be 2-d (V, d), got shape " + shape_str(weight.shape()));
  const int64_t V = weight.shape()[0], D = weight.shape()[1];
  check_indices(idx, V, name, "weight of shape " + shape_str(weight.shape()));
  Shape out_shape = idx.shape();
  out_shape.push_back(D);
  Tensor y = uninitialized(out_shape, weight.dtype());  // (idx..., D)
  const int64_t K = idx.numel();
  gather_rows(static_cast<const char*>(weight.raw_data()), static_cast<char*>(y.raw_data()), idx.data<int64_t>(),
              1, V, K, D * static_cast<int64_t>(dtype_size(weight.dtype())));
  return record(Op::embedding, y, {weight, idx},
                [wshape = weight.shape(), sidx = SavedTensor(idx, Op::embedding), V, K, D](
                    const Tensor& g, const NeedsGrad& needs) -> Grads {
                  if (!needs[0]) return {Tensor(), Tensor()};
                  // one token at a time, its gradient row added to its weight row
                  return {scatter_add_rows(g, wshape, sidx.get().data<int64_t>(), 1, V, K, D), Tensor()};
                });
}

}  // namespace loragrad

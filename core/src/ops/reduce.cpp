// Reductions: sum, mean, max. Backward passes broadcast the gradient back.
//
// Every reduction is phrased as x (outer, red, inner) -> y (outer, inner):
// `red` is a run of adjacent reduced dims, `outer` and `inner` the kept dims
// before and after it. inner == 1 (the trailing dims, e.g. a row sum) is a
// contiguous `omp simd reduction`; otherwise the inner columns are added row
// by row into an accumulator. Reduced dims that are not adjacent are done as
// successive passes, last run first, keeping size-1 dims so positions stay put.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "loragrad/ops.hpp"
#include "loragrad/parallel.hpp"
#include "op_util.hpp"

namespace loragrad {
namespace {

using detail::prod;

// The dims to reduce: wrapped, sorted, each once; all dims when `dims` is empty.
std::vector<int64_t> reduce_dims(const Tensor& x, const std::vector<int64_t>& dims, const char* op) {
  const int64_t nd = x.dim();
  std::vector<int64_t> out;
  if (dims.empty()) {
    for (int64_t d = 0; d < nd; ++d) out.push_back(d);
    return out;
  }
  std::vector<bool> seen(static_cast<size_t>(std::max<int64_t>(nd, 1)), false);
  for (int64_t d : dims) {
    const int64_t w = wrap_dim(nd == 0 && d == -1 ? 0 : d, nd, op);  // -1 is fine for 0-d, as in PyTorch
    if (seen[w])
      throw ValueError(std::string(op) + ": dim " + std::to_string(d) + " appears more than once in the dims "
                       "for shape " + shape_str(x.shape()));
    seen[w] = true;
    if (nd > 0) out.push_back(w);  // a 0-d tensor accepts dim 0 / -1 and reduces nothing
  }
  std::sort(out.begin(), out.end());
  return out;
}

// x's shape with the reduced dims set to 1 (keepdim) or removed.
Shape reduced_shape(const Shape& s, const std::vector<int64_t>& rdims, bool keepdim) {
  Shape out;
  for (int64_t d = 0; d < static_cast<int64_t>(s.size()); ++d) {
    const bool reduced = std::binary_search(rdims.begin(), rdims.end(), d);
    if (!reduced) out.push_back(s[d]);
    else if (keepdim) out.push_back(1);
  }
  return out;
}

// A tensor with t's storage and another shape of the same numel (no autograd).
Tensor view_as_shape(const Tensor& t, const Shape& shape) {
  return Tensor(std::make_shared<TensorImpl>(t.impl()->storage, shape, t.dtype()));
}

// y (outer, inner) = scale * sum_r x (outer, red, inner), accumulated in double.
template <class T>
void sum_block(const T* x, T* y, int64_t outer, int64_t red, int64_t inner, double scale) {
  const int64_t work = outer * red * inner;
  constexpr int64_t kBlock = 8192;
  if (inner == 1 && outer == 1 && red > kBlock) {
    // One long row (sum of everything): fixed-size blocks, partial sums added
    // in order, so the result does not depend on the thread count. Chosen by
    // size alone, not by whether threads are used (a small sum, or one inside
    // a parallel region), so which path runs cannot change the bits either;
    // up to one block, the row sum below gives the same bits as one block.
    const int64_t nblocks = (red + kBlock - 1) / kBlock;
    std::vector<double> partial(static_cast<size_t>(nblocks));  // (nblocks)
    parallel_for(nblocks, red, [&](int64_t b) {
      const int64_t r0 = b * kBlock, len = std::min(red - r0, kBlock);
      const T* blk = x + r0;  // (len)
      double s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t r = 0; r < len; ++r) s += static_cast<double>(blk[r]);
      partial[b] = s;
    });
    double s = 0;
    for (double p : partial) s += p;
    y[0] = static_cast<T>(s * scale);
    return;
  }
  if (inner == 1) {
    parallel_for(outer, work, [&](int64_t o) {
      const T* row = x + o * red;  // (red)
      double s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t r = 0; r < red; ++r) s += static_cast<double>(row[r]);
      y[o] = static_cast<T>(s * scale);
    });
    return;
  }
  // Column blocks: each task owns up to kMaxCols output columns of one outer
  // slice, so tasks never write the same output and the accumulator stays in
  // L1. With one slice (sum_to's bias pattern, (B*T, C) -> C) the columns are
  // split evenly over the threads. The split may follow the thread count
  // because it only decides who owns a column: every column is still summed
  // over r in order, alone, so its bits do not depend on the split.
  constexpr int64_t kMaxCols = 512;
  int64_t cols = kMaxCols;
  if (outer == 1 && use_threads(work)) {
    const int64_t nt = num_threads();
    cols = std::min(kMaxCols, std::max<int64_t>(16, ((inner + nt - 1) / nt + 15) / 16 * 16));
  }
  const int64_t ncb = (inner + cols - 1) / cols;
  parallel_for(outer * ncb, work, [&](int64_t task) {
    const int64_t o = task / ncb, j0 = (task % ncb) * cols, nj = std::min(cols, inner - j0);
    double acc[kMaxCols];  // (nj)
    for (int64_t j = 0; j < nj; ++j) acc[j] = 0;
    const T* base = x + o * red * inner + j0;  // (red, inner) slice, columns j0..j0+nj
    for (int64_t r = 0; r < red; ++r) {
      const T* row = base + r * inner;
#pragma omp simd
      for (int64_t j = 0; j < nj; ++j) acc[j] += static_cast<double>(row[j]);
    }
    T* out = y + o * inner + j0;
    for (int64_t j = 0; j < nj; ++j) out[j] = static_cast<T>(acc[j] * scale);
  });
}

// scale * sum of x over rdims (sorted), result with rdims kept as size 1.
Tensor sum_kernel(const Tensor& x, const std::vector<int64_t>& rdims, double scale) {
  Shape cur = x.shape();
  Tensor src = x;
  // Runs of adjacent reduced dims, [begin, end), last run first.
  std::vector<std::pair<size_t, size_t>> runs;
  for (size_t i = 0; i < rdims.size();) {
    size_t j = i + 1;
    while (j < rdims.size() && rdims[j] == rdims[j - 1] + 1) ++j;
    runs.push_back({static_cast<size_t>(rdims[i]), static_cast<size_t>(rdims[j - 1]) + 1});
    i = j;
  }
  if (runs.empty()) {  // nothing reduced (0-d input): a scaled copy
    Tensor y = zeros(cur, x.dtype());
    dispatch_float(x.dtype(), op_name(Op::sum), [&](auto tag) {
      using T = decltype(tag);
      sum_block<T>(x.data<T>(), y.data<T>(), x.numel(), 1, 1, scale);
    });
    return y;
  }
  for (size_t k = runs.size(); k-- > 0;) {
    const auto [a, b] = runs[k];
    const int64_t outer = prod(cur, 0, a), red = prod(cur, a, b), inner = prod(cur, b, cur.size());
    for (size_t d = a; d < b; ++d) cur[d] = 1;
    Tensor y = zeros(cur, x.dtype());
    const double s = k == 0 ? scale : 1.0;  // scale once, on the last pass
    dispatch_float(x.dtype(), op_name(Op::sum), [&](auto tag) {
      using T = decltype(tag);
      sum_block<T>(src.data<T>(), y.data<T>(), outer, red, inner, s);  // (outer, red, inner) -> (outer, inner)
    });
    src = y;
  }
  return src;
}

// out (shape) = scale * src broadcast, where src has `src_shape`: same rank as
// `shape`, each dim equal to it or 1. The backward of every reduction here.
Tensor broadcast_scaled(const Tensor& src, const Shape& src_shape, const Shape& shape, double scale) {
  Tensor out = zeros(shape, src.dtype());
  if (out.numel() == 0) return out;
  // Collapse to alternating runs of broadcast / kept dims (size-1 dims dropped).
  std::vector<int64_t> sizes;
  std::vector<bool> bcast;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    const bool b = src_shape[d] == 1;
    if (!sizes.empty() && bcast.back() == b) sizes.back() *= shape[d];
    else { sizes.push_back(shape[d]); bcast.push_back(b); }
  }
  if (sizes.empty()) { sizes.push_back(1); bcast.push_back(false); }
  const int64_t nd = static_cast<int64_t>(sizes.size());
  std::vector<int64_t> sstride(nd);  // src element stride per collapsed dim (0 when broadcast)
  for (int64_t d = nd - 1, s = 1; d >= 0; --d) {
    sstride[d] = bcast[d] ? 0 : s;
    if (!bcast[d]) s *= sizes[d];
  }
  const int64_t cols = sizes.back(), rows = out.numel() / cols;
  const bool last_bcast = bcast.back();
  dispatch_float(src.dtype(), "backward", [&](auto tag) {
    using T = decltype(tag);
    const T* ps = src.data<T>();
    T* po = out.data<T>();  // (rows, cols)
    const T sc = static_cast<T>(scale);
    parallel_for(rows, out.numel(), [&](int64_t row) {
      int64_t off = 0;
      for (int64_t d = nd - 2, r = row; d >= 0; --d) {
        off += (r % sizes[d]) * sstride[d];
        r /= sizes[d];
      }
      T* dst = po + row * cols;
      if (last_bcast) {
        const T v = ps[off] * sc;
#pragma omp simd
        for (int64_t j = 0; j < cols; ++j) dst[j] = v;
      } else {
        const T* s = ps + off;
#pragma omp simd
        for (int64_t j = 0; j < cols; ++j) dst[j] = s[j] * sc;
      }
    });
  });
  return out;
}

Tensor sum_or_mean(Op op, const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  const char* name = op_name(op);
  check_floating(x, name);
  const std::vector<int64_t> rdims = reduce_dims(x, dims, name);
  int64_t count = 1;
  for (int64_t d : rdims) count *= x.shape()[d];
  // mean of nothing is NaN, as in PyTorch (0 * inf).
  const double scale = op == Op::mean ? (count == 0 ? INFINITY : 1.0 / static_cast<double>(count)) : 1.0;
  const Shape keep_shape = reduced_shape(x.shape(), rdims, true);
  Tensor y = sum_kernel(x, rdims, scale);  // keep_shape
  if (!keepdim) y = view_as_shape(y, reduced_shape(x.shape(), rdims, false));
  const double gscale = op == Op::mean ? 1.0 / static_cast<double>(std::max<int64_t>(count, 1)) : 1.0;
  return record(op, y, {x}, [xshape = x.shape(), keep_shape, gscale](const Tensor& g, const NeedsGrad&) -> Grads {
    // d sum = broadcast(g); d mean = broadcast(g) / count
    return {broadcast_scaled(g, keep_shape, xshape, gscale)};
  });
}

// First maximum along red: y (outer, inner), idx (outer, inner) in [0, red).
// NaN counts as larger than everything (it propagates, as in PyTorch).
template <class T>
void max_block(const T* x, T* y, int64_t* idx, int64_t outer, int64_t red, int64_t inner) {
  auto greater = [](T v, T best) { return v > best || (std::isnan(v) && !std::isnan(best)); };
  if (inner == 1) {
    // Rows: a vectorised max (noting NaNs), then the first index holding it.
    parallel_for(outer, outer * red, [&](int64_t o) {
      const T* row = x + o * red;  // (red)
      T m = row[0];
      bool nan = false;
#pragma omp simd reduction(max : m) reduction(|| : nan)
      for (int64_t r = 0; r < red; ++r) {
        m = row[r] > m ? row[r] : m;
        nan = nan || row[r] != row[r];
      }
      int64_t at = 0;
      while (nan ? !std::isnan(row[at]) : row[at] != m) ++at;
      y[o] = row[at];
      idx[o] = at;
    });
    return;
  }
  parallel_for(outer, outer * red * inner, [&](int64_t o) {
    const T* base = x + o * red * inner;  // (red, inner)
    T* yo = y + o * inner;                // (inner)
    int64_t* io = idx + o * inner;        // (inner)
    for (int64_t j = 0; j < inner; ++j) { yo[j] = base[j]; io[j] = 0; }
    for (int64_t r = 1; r < red; ++r) {
      const T* row = base + r * inner;
      for (int64_t j = 0; j < inner; ++j)
        if (greater(row[j], yo[j])) { yo[j] = row[j]; io[j] = r; }
    }
  });
}

// Max along x viewed as (outer, red, inner); values and indices of shape out_shape.
Tensor max_impl(const Tensor& x, int64_t outer, int64_t red, int64_t inner, const Shape& out_shape,
                const std::string& what) {
  const char* name = op_name(Op::max);
  if (red == 0)
    throw ValueError(std::string(name) + ": cannot take the max " + what + " of a tensor of shape " +
                     shape_str(x.shape()) + " (no elements to reduce)");
  Tensor y = zeros(out_shape, x.dtype());
  Tensor idx = zeros(out_shape, DType::i64);
  dispatch_float(x.dtype(), name, [&](auto tag) {
    using T = decltype(tag);
    max_block<T>(x.data<T>(), y.data<T>(), idx.data<int64_t>(), outer, red, inner);
  });
  return record(Op::max, y, {x},
                [xshape = x.shape(), sidx = SavedTensor(idx, Op::max), outer, red, inner](
                    const Tensor& g, const NeedsGrad&) -> Grads {
                  // the gradient goes to the first maximum of each slice; zeros elsewhere
                  Tensor gx = zeros(xshape, g.dtype());
                  const int64_t* pi = sidx.get().data<int64_t>();  // (outer, inner)
                  dispatch_float(g.dtype(), op_name(Op::max), [&](auto tag) {
                    using T = decltype(tag);
                    const T* pg = g.data<T>();  // (outer, inner)
                    T* px = gx.data<T>();       // (outer, red, inner)
                    for (int64_t o = 0; o < outer; ++o)
                      for (int64_t j = 0; j < inner; ++j)
                        px[(o * red + pi[o * inner + j]) * inner + j] = pg[o * inner + j];
                  });
                  return {gx};
                });
}

}  // namespace

Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  return sum_or_mean(Op::sum, x, dims, keepdim);
}

Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  return sum_or_mean(Op::mean, x, dims, keepdim);
}

Tensor max(const Tensor& x, int64_t dim, bool keepdim) {
  const char* name = op_name(Op::max);
  check_floating(x, name);
  const Shape& s = x.shape();
  const int64_t d = wrap_dim(x.dim() == 0 && dim == -1 ? 0 : dim, x.dim(), name);
  if (x.dim() == 0) return max_impl(x, 1, 1, 1, {}, "over dim " + std::to_string(dim));
  Shape out_shape = s;
  if (keepdim) out_shape[d] = 1;
  else out_shape.erase(out_shape.begin() + d);
  return max_impl(x, prod(s, 0, d), s[d], prod(s, d + 1, s.size()), out_shape,
                  "over dim " + std::to_string(dim));
}

Tensor max(const Tensor& x) {
  check_floating(x, op_name(Op::max));
  return max_impl(x, 1, x.numel(), 1, {}, "over all elements");
}

}  // namespace loragrad

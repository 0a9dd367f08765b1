// Shape ops: reshape (shares storage), transpose / permute / narrow / concat
// (copies: every tensor stays contiguous), split (narrows).
//
// The copies move bytes, not values, so they work for every dtype (index
// tensors included); only float tensors ever carry gradients.
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

// Call f(U{}) with an unsigned integer U of the dtype's element size.
template <class F>
void dispatch_bytes(DType dt, F&& f) {
  if (dtype_size(dt) == 4) f(uint32_t{});
  else f(uint64_t{});
}

// y = x permuted: y's dim k is x's dim order[k]. Dims that stay adjacent in
// both layouts are merged first, so e.g. (B, T, H, hd) -> (B, H, T, hd) is a
// 4-d copy with contiguous runs of hd, and any swap of the last two dims is a
// batch of blocked 2-d transposes.
template <class U>
void permute_copy(const U* x, const Shape& xs, const std::vector<int64_t>& order, U* y) {
  const int64_t nd = static_cast<int64_t>(xs.size());
  std::vector<int64_t> xstride(nd);
  for (int64_t d = nd - 1, s = 1; d >= 0; --d) { xstride[d] = s; s *= xs[d]; }
  // Output dims with their source strides, size-1 dims dropped, mergeable dims merged.
  std::vector<int64_t> size, stride;
  for (int64_t k = 0; k < nd; ++k) {
    const int64_t n = xs[order[k]], st = xstride[order[k]];
    if (n == 1) continue;
    if (!size.empty() && stride.back() == st * n) { size.back() *= n; stride.back() = st; }
    else { size.push_back(n); stride.push_back(st); }
  }
  const int64_t numel = shape_numel(xs);
  if (numel == 0) return;
  const int64_t m = static_cast<int64_t>(size.size());
  if (m == 0 || (m == 1 && stride[0] == 1)) {  // the identity after all
    std::memcpy(y, x, static_cast<size_t>(numel) * sizeof(U));
    return;
  }
  // Source offset of the start of output "row" `row` over the dims [0, ndims).
  auto offset_of = [&](int64_t row, int64_t ndims) {
    int64_t off = 0;
    for (int64_t d = ndims - 1; d >= 0; --d) { off += (row % size[d]) * stride[d]; row /= size[d]; }
    return off;
  };
  if (m >= 2 && stride[m - 2] == 1) {
    // Last two dims swapped: each batch is a (A, B) output from a source
    // stored (B, A) with row stride ld. Tiles keep both sides in cache.
    const int64_t A = size[m - 2], B = size[m - 1], ld = stride[m - 1];
    const int64_t batches = numel / (A * B);
    constexpr int64_t kTile = 32;
    const int64_t atiles = (A + kTile - 1) / kTile;
    parallel_for(batches * atiles, numel, [&](int64_t task) {
      const int64_t bt = task / atiles, a0 = (task % atiles) * kTile, a1 = std::min(A, a0 + kTile);
      const U* src = x + offset_of(bt, m - 2);  // (B, A), row stride ld
      U* dst = y + bt * A * B;                  // (A, B)
      for (int64_t b0 = 0; b0 < B; b0 += kTile) {
        const int64_t b1 = std::min(B, b0 + kTile);
        for (int64_t a = a0; a < a1; ++a)
          for (int64_t b = b0; b < b1; ++b) dst[a * B + b] = src[b * ld + a];
      }
    });
    return;
  }
  // General: output rows along the last merged dim, gathered with its stride.
  const int64_t cols = size[m - 1], cst = stride[m - 1], rows = numel / cols;
  parallel_for(rows, numel, [&](int64_t row) {
    const U* src = x + offset_of(row, m - 1);
    U* dst = y + row * cols;
    if (cst == 1) std::memcpy(dst, src, static_cast<size_t>(cols) * sizeof(U));
    else
      for (int64_t j = 0; j < cols; ++j) dst[j] = src[j * cst];
  });
}

Tensor permute_any(Op op, const Tensor& x, const std::vector<int64_t>& order) {
  Shape out_shape(order.size());
  for (size_t k = 0; k < order.size(); ++k) out_shape[k] = x.shape()[order[k]];
  Tensor y = zeros(out_shape, x.dtype());
  dispatch_bytes(x.dtype(), [&](auto tag) {
    using U = decltype(tag);
    permute_copy<U>(static_cast<const U*>(x.raw_data()), x.shape(), order, static_cast<U*>(y.raw_data()));
  });
  std::vector<int64_t> inverse(order.size());
  for (size_t k = 0; k < order.size(); ++k) inverse[order[k]] = static_cast<int64_t>(k);
  return record(op, y, {x}, [inverse](const Tensor& g, const NeedsGrad&) -> Grads {
    return {permute(g, inverse)};  // the inverse permutation undoes the copy
  });
}

// dst (outer, dst_n, inner)[:, dst_start : dst_start + length] =
// src (outer, src_n, inner)[:, src_start : src_start + length], inner in bytes.
void copy_slab(char* dst, int64_t dst_n, int64_t dst_start, const char* src, int64_t src_n,
               int64_t src_start, int64_t length, int64_t outer, int64_t inner_bytes) {
  const size_t run = static_cast<size_t>(length * inner_bytes);
  if (run == 0) return;
  parallel_for(outer, outer * length * inner_bytes / 8, [&](int64_t o) {
    std::memcpy(dst + (o * dst_n + dst_start) * inner_bytes, src + (o * src_n + src_start) * inner_bytes, run);
  });
}

}  // namespace

Tensor reshape(const Tensor& x, const Shape& shape) {
  const char* name = op_name(Op::reshape);
  check_defined(x, name);
  Shape out = shape;
  int64_t infer = -1, known = 1;
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] == -1) {
      if (infer >= 0)
        throw ShapeError(std::string(name) + ": only one dim can be -1, got " + shape_str(shape));
      infer = static_cast<int64_t>(i);
    } else if (out[i] < 0) {
      throw ShapeError(std::string(name) + ": invalid dim " + std::to_string(out[i]) + " in " + shape_str(shape));
    } else {
      known *= out[i];
    }
  }
  if (infer >= 0) {
    if (known == 0 || x.numel() % known != 0)
      throw ShapeError(std::string(name) + ": cannot reshape " + shape_str(x.shape()) + " (" +
                       std::to_string(x.numel()) + " elements) to " + shape_str(shape));
    out[infer] = x.numel() / known;
  }
  if (shape_numel(out) != x.numel())
    throw ShapeError(std::string(name) + ": cannot reshape " + shape_str(x.shape()) + " (" +
                     std::to_string(x.numel()) + " elements) to " + shape_str(shape) + " (" +
                     std::to_string(shape_numel(out)) + " elements)");
  // Same storage, new shape: writes through one are seen by the other.
  Tensor y(std::make_shared<TensorImpl>(x.impl()->storage, out, x.dtype()));
  return record(Op::reshape, y, {x}, [xshape = x.shape()](const Tensor& g, const NeedsGrad&) -> Grads {
    return {reshape(g, xshape)};
  });
}

Tensor transpose(const Tensor& x, int64_t d0, int64_t d1) {
  const char* name = op_name(Op::transpose);
  check_defined(x, name);
  const int64_t a = wrap_dim(d0, x.dim(), name), b = wrap_dim(d1, x.dim(), name);
  std::vector<int64_t> order(static_cast<size_t>(x.dim()));
  for (size_t k = 0; k < order.size(); ++k) order[k] = static_cast<int64_t>(k);
  if (x.dim() > 0) std::swap(order[a], order[b]);
  return permute_any(Op::transpose, x, order);
}

Tensor permute(const Tensor& x, const std::vector<int64_t>& order) {
  const char* name = op_name(Op::permute);
  check_defined(x, name);
  const int64_t nd = x.dim();
  if (static_cast<int64_t>(order.size()) != nd)
    throw ShapeError(std::string(name) + ": order " + shape_str(order) + " has " + std::to_string(order.size()) +
                     " dims, tensor of shape " + shape_str(x.shape()) + " has " + std::to_string(nd));
  std::vector<int64_t> wrapped(order.size());
  std::vector<bool> seen(order.size(), false);
  for (size_t k = 0; k < order.size(); ++k) {
    wrapped[k] = wrap_dim(order[k], nd, name);
    if (seen[wrapped[k]])
      throw ValueError(std::string(name) + ": dim " + std::to_string(order[k]) + " repeated in order " +
                       shape_str(order));
    seen[wrapped[k]] = true;
  }
  return permute_any(Op::permute, x, wrapped);
}

Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length) {
  const char* name = op_name(Op::narrow);
  check_defined(x, name);
  if (x.dim() == 0) throw ShapeError(std::string(name) + ": cannot narrow a 0-d tensor");
  const int64_t d = wrap_dim(dim, x.dim(), name);
  const Shape& s = x.shape();
  const int64_t n = s[d];
  const int64_t st = start < 0 ? start + n : start;
  if (st < 0 || st > n || length < 0 || st + length > n)
    throw IndexError(std::string(name) + ": start " + std::to_string(start) + " length " + std::to_string(length) +
                     " out of range for dim " + std::to_string(dim) + " of size " + std::to_string(n) +
                     " (shape " + shape_str(s) + ")");
  Shape out_shape = s;
  out_shape[d] = length;
  Tensor y = uninitialized(out_shape, x.dtype());
  const int64_t outer = prod(s, 0, d), inner_bytes = prod(s, d + 1, s.size()) * dtype_size(x.dtype());
  copy_slab(static_cast<char*>(y.raw_data()), length, 0, static_cast<const char*>(x.raw_data()), n, st,
            length, outer, inner_bytes);
  return record(Op::narrow, y, {x}, [xshape = s, d, st, length, outer, inner_bytes](
                                        const Tensor& g, const NeedsGrad&) -> Grads {
    // the slice's gradient lands in its place; zeros elsewhere
    Tensor gx = zeros(xshape, g.dtype());
    copy_slab(static_cast<char*>(gx.raw_data()), xshape[d], st, static_cast<const char*>(g.raw_data()), length,
              0, length, outer, inner_bytes);
    return {gx};
  });
}

Tensor concat(const std::vector<Tensor>& xs, int64_t dim) {
  const char* name = op_name(Op::concat);
  if (xs.empty()) throw ValueError(std::string(name) + ": got an empty list of tensors");
  for (const Tensor& t : xs) check_defined(t, name);
  const Tensor& first = xs[0];
  if (first.dim() == 0) throw ShapeError(std::string(name) + ": cannot concatenate 0-d tensors");
  const int64_t d = wrap_dim(dim, first.dim(), name);
  Shape out_shape = first.shape();
  out_shape[d] = 0;
  std::vector<int64_t> sizes;
  for (size_t i = 0; i < xs.size(); ++i) {
    const Tensor& t = xs[i];
    if (t.dtype() != first.dtype())
      throw DTypeError(std::string(name) + ": tensor " + std::to_string(i) + " is " + dtype_name(t.dtype()) +
                       ", tensor 0 is " + dtype_name(first.dtype()));
    bool fits = t.dim() == first.dim();
    for (int64_t k = 0; fits && k < first.dim(); ++k) fits = k == d || t.shape()[k] == first.shape()[k];
    if (!fits)
      throw ShapeError(std::string(name) + ": tensor " + std::to_string(i) + " has shape " + shape_str(t.shape()) +
                       ", expected " + shape_str(first.shape()) + " except in dim " + std::to_string(dim));
    sizes.push_back(t.shape()[d]);
    out_shape[d] += t.shape()[d];
  }
  Tensor y = uninitialized(out_shape, first.dtype());
  const int64_t outer = prod(out_shape, 0, d);
  const int64_t inner_bytes = prod(out_shape, d + 1, out_shape.size()) * dtype_size(first.dtype());
  int64_t offset = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    copy_slab(static_cast<char*>(y.raw_data()), out_shape[d], offset, static_cast<const char*>(xs[i].raw_data()),
              sizes[i], 0, sizes[i], outer, inner_bytes);
    offset += sizes[i];
  }
  return record(Op::concat, y, xs, [sizes, d](const Tensor& g, const NeedsGrad& needs) -> Grads {
    // each input gets back its own slice
    Grads grads(sizes.size());
    int64_t off = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
      if (needs[i]) grads[i] = narrow(g, d, off, sizes[i]);
      off += sizes[i];
    }
    return grads;
  });
}

std::vector<Tensor> split(const Tensor& x, int64_t split_size, int64_t dim) {
  check_defined(x, "split");
  if (x.dim() == 0) throw ShapeError("split: cannot split a 0-d tensor");
  if (split_size <= 0)
    throw ValueError("split: split_size must be positive, got " + std::to_string(split_size));
  const int64_t d = wrap_dim(dim, x.dim(), "split");
  const int64_t n = x.shape()[d];
  std::vector<Tensor> pieces;
  for (int64_t start = 0; start < n; start += split_size)
    pieces.push_back(narrow(x, d, start, std::min(split_size, n - start)));  // the last may be shorter
  if (pieces.empty()) pieces.push_back(narrow(x, d, 0, 0));                 // like PyTorch: one empty piece
  return pieces;
}

}  // namespace loragrad

// Elementwise ops: binary ops with numpy broadcasting, unary maths and
// activations, cast, masked_fill, dropout. Each backward sits under its forward.
#include <cmath>
#include <cstring>

#include <xsimd/xsimd.hpp>

#include "loragrad/autograd.hpp"
#include "loragrad/ops.hpp"
#include "loragrad/parallel.hpp"

namespace loragrad {

// ============================ broadcasting ============================

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    // Align from the right: missing leading dims count as 1.
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    if (da != db && da != 1 && db != 1)
      throw ShapeError(std::string(op) + ": shapes " + shape_str(a) + " and " + shape_str(b) +
                       " do not broadcast (dim " + std::to_string(i) + ": " + std::to_string(da) +
                       " vs " + std::to_string(db) + ")");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

// Strides of `s` seen through the broadcast shape `out`: 0 along broadcast dims.
static std::vector<int64_t> broadcast_strides(const Shape& s, const Shape& out) {
  std::vector<int64_t> st(out.size(), 0);
  int64_t stride = 1;
  for (size_t k = 0; k < s.size(); ++k) {
    size_t d = s.size() - 1 - k, o = out.size() - 1 - k;
    st[o] = s[d] == 1 ? 0 : stride;
    stride *= s[d];
  }
  return st;
}

Tensor sum_to(const Tensor& g, const Shape& shape) {
  if (g.shape() == shape) return g;
  const int64_t lead = g.dim() - static_cast<int64_t>(shape.size());
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < g.dim(); ++d)
    if (d < lead || (shape[d - lead] == 1 && g.shape()[d] != 1)) dims.push_back(d);
  Tensor s = dims.empty() ? g : sum(g, dims, /*keepdim=*/true);
  return reshape(s, shape);
}

// out = f(a, b) with broadcasting. Three cases: same shape (one flat loop),
// one operand a single value, and the general case as rows of the output's
// last dim, each operand read with stride 0 or 1 along it.
template <class T, class F>
static void broadcast_apply(const Tensor& a, const Tensor& b, Tensor& out, F f) {
  const T* pa = a.data<T>();
  const T* pb = b.data<T>();
  T* po = out.data<T>();
  const int64_t n = out.numel();
  const int64_t work = n >= kParallelElements ? n : 0;  // parallel above kParallelElements
  if (a.shape() == b.shape()) {
    parallel_ranges(n, work, [&](int64_t lo, int64_t hi) {
#pragma omp simd
      for (int64_t i = lo; i < hi; ++i) po[i] = f(pa[i], pb[i]);
    });
    return;
  }
  if (b.numel() == 1 && a.numel() == n) {
    const T vb = pb[0];
    parallel_ranges(n, work, [&](int64_t lo, int64_t hi) {
#pragma omp simd
      for (int64_t i = lo; i < hi; ++i) po[i] = f(pa[i], vb);
    });
    return;
  }
  if (a.numel() == 1 && b.numel() == n) {
    const T va = pa[0];
    parallel_ranges(n, work, [&](int64_t lo, int64_t hi) {
#pragma omp simd
      for (int64_t i = lo; i < hi; ++i) po[i] = f(va, pb[i]);
    });
    return;
  }
  const Shape& so = out.shape();
  const int64_t nd = static_cast<int64_t>(so.size());
  const std::vector<int64_t> sa = broadcast_strides(a.shape(), so), sb = broadcast_strides(b.shape(), so);
  const int64_t cols = so[nd - 1], rows = n / std::max<int64_t>(cols, 1);
  const int64_t ia = sa[nd - 1], ib = sb[nd - 1];
  parallel_for(rows, work, [&](int64_t r) {
    int64_t oa = 0, ob = 0, rem = r;  // offsets of this row in a and b
    for (int64_t d = nd - 2; d >= 0; --d) {
      const int64_t i = rem % so[d];
      rem /= so[d];
      oa += i * sa[d];
      ob += i * sb[d];
    }
    const T* ra = pa + oa;
    const T* rb = pb + ob;
    T* ro = po + r * cols;
    if (ia == 1 && ib == 1) {
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) ro[c] = f(ra[c], rb[c]);
    } else if (ia == 1) {
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) ro[c] = f(ra[c], rb[0]);
    } else if (ib == 1) {
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) ro[c] = f(ra[0], rb[c]);
    } else {
      for (int64_t c = 0; c < cols; ++c) ro[c] = f(ra[0], rb[0]);
    }
  });
}

template <class F>
static Tensor binary(Op op, const Tensor& a, const Tensor& b, F f) {
  check_same_dtype(a, b, op_name(op));
  Tensor out = uninitialized(broadcast_shapes(a.shape(), b.shape(), op_name(op)), a.dtype());
  dispatch_float(a.dtype(), op_name(op), [&](auto tag) {
    using T = decltype(tag);
    broadcast_apply<T>(a, b, out, [&](T x, T y) { return static_cast<T>(f(x, y)); });
  });
  return out;
}

// ============================ binary ops ============================

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor y = binary(Op::add, a, b, [](auto x, auto z) { return x + z; });
  return record(Op::add, y, {a, b}, [sa = a.shape(), sb = b.shape()](const Tensor& g, const NeedsGrad& need) -> Grads {
    return {need[0] ? sum_to(g, sa) : Tensor(), need[1] ? sum_to(g, sb) : Tensor()};
  });
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor y = binary(Op::sub, a, b, [](auto x, auto z) { return x - z; });
  return record(Op::sub, y, {a, b}, [sa = a.shape(), sb = b.shape()](const Tensor& g, const NeedsGrad& need) -> Grads {
    return {need[0] ? sum_to(g, sa) : Tensor(), need[1] ? sum_to(neg(g), sb) : Tensor()};
  });
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor y = binary(Op::mul, a, b, [](auto x, auto z) { return x * z; });
  // d(a b) = b da + a db; each input is saved only if the other needs it.
  SavedTensor sa(b.requires_grad() ? a : Tensor(), Op::mul);
  SavedTensor sb(a.requires_grad() ? b : Tensor(), Op::mul);
  return record(Op::mul, y, {a, b}, [sa, sb, ha = a.shape(), hb = b.shape()](const Tensor& g, const NeedsGrad& need) -> Grads {
    return {need[0] ? sum_to(mul(g, sb.get()), ha) : Tensor(), need[1] ? sum_to(mul(g, sa.get()), hb) : Tensor()};
  });
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor y = binary(Op::div, a, b, [](auto x, auto z) { return x / z; });
  // d(a/b) = da / b - (a/b) db / b
  return record(Op::div, y, {a, b}, [sb = SavedTensor(b, Op::div), sy = SavedTensor(y, Op::div), ha = a.shape(),
                                     hb = b.shape()](const Tensor& g, const NeedsGrad& need) -> Grads {
    Tensor gb = div(g, sb.get());
    return {need[0] ? sum_to(gb, ha) : Tensor(), need[1] ? sum_to(neg(mul(gb, sy.get())), hb) : Tensor()};
  });
}

// ============================ unary ops ============================

// Runs f over n elements, xsimd::batch at a time with a scalar tail, over
// threads when large. f is generic: called with batches and with scalars, so
// transcendental functions come from xsimd (std::tanh/exp do not vectorise).
template <class T, class F>
static void vector_loop(int64_t n, F f) {
  using B = xsimd::batch<T>;
  constexpr int64_t W = static_cast<int64_t>(B::size);
  constexpr int64_t chunk = 4096;  // elements per task; a multiple of W
  const int64_t nchunks = (n + chunk - 1) / chunk;
  parallel_for(nchunks, n >= kParallelElements ? n : 0, [&](int64_t c) {
    const int64_t lo = c * chunk, hi = std::min(n, lo + chunk);
    int64_t i = lo;
    for (; i + W <= hi; i += W) f(i, B());
    for (; i < hi; ++i) f(i, T());
  });
}

// y = f(x) elementwise; f is generic over scalars and xsimd batches.
template <class F>
static Tensor map(const Tensor& x, Op op, F f) {
  const char* name = op_name(op);
  check_floating(x, name);
  Tensor y = uninitialized(x.shape(), x.dtype());
  dispatch_float(x.dtype(), name, [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();  // (numel)
    T* py = y.data<T>();        // (numel)
    vector_loop<T>(x.numel(), [&](int64_t i, auto kind) {
      using V = decltype(kind);
      if constexpr (std::is_same_v<V, T>) py[i] = f(px[i]);
      else f(V::load_unaligned(px + i)).store_unaligned(py + i);
    });
  });
  return y;
}

// out = f(g, s) elementwise for two same-shape tensors: the fused backward of
// unary op `op` from its upstream gradient g and one saved tensor s.
template <class F>
static Tensor zip(const Tensor& g, const Tensor& s, Op op, F f) {
  Tensor out = uninitialized(g.shape(), g.dtype());
  dispatch_float(g.dtype(), op_backward_name(op), [&](auto tag) {
    using T = decltype(tag);
    const T* pg = g.data<T>();  // (numel)
    const T* ps = s.data<T>();  // (numel)
    T* po = out.data<T>();      // (numel)
    vector_loop<T>(g.numel(), [&](int64_t i, auto kind) {
      using V = decltype(kind);
      if constexpr (std::is_same_v<V, T>) po[i] = f(pg[i], ps[i]);
      else f(V::load_unaligned(pg + i), V::load_unaligned(ps + i)).store_unaligned(po + i);
    });
  });
  return out;
}

// Scalar-only map, for the few ops not worth vectorising (pow).
template <class F>
static Tensor map_scalar(const Tensor& x, const char* op, F f) {
  check_floating(x, op);
  Tensor y = uninitialized(x.shape(), x.dtype());
  dispatch_float(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();  // (numel)
    T* py = y.data<T>();        // (numel)
    const int64_t n = x.numel();
    parallel_ranges(n, n >= kParallelElements ? n : 0, [&](int64_t lo, int64_t hi) {
#pragma omp simd
      for (int64_t i = lo; i < hi; ++i) py[i] = static_cast<T>(f(px[i]));
    });
  });
  return y;
}

// max(v, 0) and (y > 0 ? g : 0) for both scalars and batches.
template <class T> static T relu_of(T v) { return v > T(0) ? v : T(0); }
template <class T, class A> static xsimd::batch<T, A> relu_of(xsimd::batch<T, A> v) {
  return xsimd::max(v, xsimd::batch<T, A>(T(0)));
}
template <class T> static T pass_if_positive(T y, T g) { return y > T(0) ? g : T(0); }
template <class T, class A> static xsimd::batch<T, A> pass_if_positive(xsimd::batch<T, A> y, xsimd::batch<T, A> g) {
  return xsimd::select(y > xsimd::batch<T, A>(T(0)), g, xsimd::batch<T, A>(T(0)));
}

Tensor neg(const Tensor& x) {
  Tensor y = map(x, Op::neg, [](auto v) { return -v; });
  return record(Op::neg, y, {x}, [](const Tensor& g, const NeedsGrad&) -> Grads { return {neg(g)}; });
}

Tensor exp(const Tensor& x) {
  Tensor y = map(x, Op::exp, [](auto v) { return xsimd::exp(v); });
  return record(Op::exp, y, {x}, [sy = SavedTensor(y, Op::exp)](const Tensor& g, const NeedsGrad&) -> Grads {
    return {zip(g, sy.get(), Op::exp, [](auto gi, auto yi) { return gi * yi; })};
  });
}

Tensor log(const Tensor& x) {
  Tensor y = map(x, Op::log, [](auto v) { return xsimd::log(v); });
  return record(Op::log, y, {x}, [sx = SavedTensor(x, Op::log)](const Tensor& g, const NeedsGrad&) -> Grads {
    return {zip(g, sx.get(), Op::log, [](auto gi, auto xi) { return gi / xi; })};
  });
}

Tensor sqrt(const Tensor& x) {
  Tensor y = map(x, Op::sqrt, [](auto v) { return xsimd::sqrt(v); });
  return record(Op::sqrt, y, {x}, [sy = SavedTensor(y, Op::sqrt)](const Tensor& g, const NeedsGrad&) -> Grads {
    return {zip(g, sy.get(), Op::sqrt, [](auto gi, auto yi) { return gi / (yi + yi); })};
  });
}

Tensor pow(const Tensor& x, double p) {
  // Messages say "pow", the function the caller wrote; the op is pow_scalar.
  Tensor y = map_scalar(x, "pow", [p](auto v) { return std::pow(v, static_cast<decltype(v)>(p)); });
  return record(Op::pow_scalar, y, {x}, [sx = SavedTensor(x, Op::pow_scalar), p](const Tensor& g, const NeedsGrad&) -> Grads {
    // d x^p = p x^(p-1) dx
    if (p == 0) return {zeros_like(g)};
    return {mul(g, pow(sx.get(), p - 1) * p)};
  });
}

Tensor tanh(const Tensor& x) {
  Tensor y = map(x, Op::tanh, [](auto v) { return xsimd::tanh(v); });
  return record(Op::tanh, y, {x}, [sy = SavedTensor(y, Op::tanh)](const Tensor& g, const NeedsGrad&) -> Grads {
    return {zip(g, sy.get(), Op::tanh, [](auto gi, auto yi) { return gi * (1 - yi * yi); })};
  });
}

Tensor sigmoid(const Tensor& x) {
  Tensor y = map(x, Op::sigmoid, [](auto v) { return 1 / (1 + xsimd::exp(-v)); });
  return record(Op::sigmoid, y, {x}, [sy = SavedTensor(y, Op::sigmoid)](const Tensor& g, const NeedsGrad&) -> Grads {
    return {zip(g, sy.get(), Op::sigmoid, [](auto gi, auto yi) { return gi * yi * (1 - yi); })};
  });
}

Tensor relu(const Tensor& x) {
  Tensor y = map(x, Op::relu, [](auto v) { return relu_of(v); });
  return record(Op::relu, y, {x}, [sy = SavedTensor(y, Op::relu)](const Tensor& g, const NeedsGrad&) -> Grads {
    return {zip(g, sy.get(), Op::relu, [](auto gi, auto yi) { return pass_if_positive(yi, gi); })};
  });
}

// gelu_tanh(x) = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
// V is a scalar or an xsimd batch of element type T.
template <class T, class V> static V gelu_value(V x) {
  const T k = static_cast<T>(0.7978845608028654), c = static_cast<T>(0.044715);
  return T(0.5) * x * (T(1) + xsimd::tanh(k * (x + c * x * x * x)));
}
// d/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
template <class T, class V> static V gelu_grad(V x) {
  const T k = static_cast<T>(0.7978845608028654), c = static_cast<T>(0.044715);
  const V t = xsimd::tanh(k * (x + c * x * x * x));
  return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * k * (T(1) + T(3) * c * x * x);
}
template <class V> struct element { using type = V; };
template <class T, class A> struct element<xsimd::batch<T, A>> { using type = T; };
template <class V> using element_t = typename element<V>::type;

Tensor gelu(const Tensor& x) {
  Tensor y = map(x, Op::gelu, [](auto v) { return gelu_value<element_t<decltype(v)>>(v); });
  return record(Op::gelu, y, {x}, [sx = SavedTensor(x, Op::gelu)](const Tensor& g, const NeedsGrad&) -> Grads {
    return {zip(g, sx.get(), Op::gelu, [](auto gi, auto xi) { return gi * gelu_grad<element_t<decltype(xi)>>(xi); })};
  });
}

Tensor silu(const Tensor& x) {
  Tensor y = map(x, Op::silu, [](auto v) { return v / (1 + xsimd::exp(-v)); });
  return record(Op::silu, y, {x}, [sx = SavedTensor(x, Op::silu)](const Tensor& g, const NeedsGrad&) -> Grads {
    // d(x s(x)) = s + x s (1 - s)
    return {zip(g, sx.get(), Op::silu, [](auto gi, auto xi) {
      const auto s = 1 / (1 + xsimd::exp(-xi));
      return gi * (s + xi * s * (1 - s));
    })};
  });
}

Tensor cast(const Tensor& x, DType dt) {
  const char* name = op_name(Op::cast);
  check_floating(x, name);
  if (!is_floating(dt))
    throw DTypeError(std::string(name) + ": target must be float32 or float64, got " + dtype_name(dt));
  Tensor y = uninitialized(x.shape(), dt);
  y.copy_(x);
  return record(Op::cast, y, {x}, [from = x.dtype()](const Tensor& g, const NeedsGrad&) -> Grads {
    return {cast(g, from)};
  });
}

// ============================ masking ============================

// keep[i] = 1 where mask (broadcast to shape) is zero, else 0; as dtype dt.
static Tensor keep_mask(const Tensor& mask, const Shape& shape, DType dt, const char* op) {
  check_defined(mask, op);
  if (broadcast_shapes(mask.shape(), shape, op) != shape)
    throw ShapeError(std::string(op) + ": mask " + shape_str(mask.shape()) + " does not broadcast to input " +
                     shape_str(shape));
  Tensor m = uninitialized(mask.shape(), dt);
  const std::vector<double> v = mask.to_vector();
  dispatch_float(dt, op, [&](auto tag) {
    using T = decltype(tag);
    T* pm = m.data<T>();
    for (size_t i = 0; i < v.size(); ++i) pm[i] = v[i] != 0 ? T(0) : T(1);
  });
  return m;
}

Tensor masked_fill(const Tensor& x, const Tensor& mask, double value) {
  const char* name = op_name(Op::masked_fill);
  check_floating(x, name);
  Tensor keep = keep_mask(mask, x.shape(), x.dtype(), name);  // broadcastable to x
  Tensor y;
  {
    NoGradGuard ng;
    // y = x * keep + value * (1 - keep); written as a select so inf/NaN in x do not leak.
    y = binary(Op::masked_fill, x, keep, [value](auto xi, auto ki) {
      return ki != 0 ? xi : static_cast<decltype(xi)>(value);
    });
  }
  return record(Op::masked_fill, y, {x}, [sk = SavedTensor(keep, Op::masked_fill)](const Tensor& g, const NeedsGrad&) -> Grads {
    return {mul(g, sk.get())};
  });
}

Tensor dropout(const Tensor& x, double p, bool training, Generator& gen) {
  const char* name = op_name(Op::dropout);
  check_floating(x, name);
  if (!(p >= 0 && p < 1))
    throw ValueError(std::string(name) + ": p must be in [0, 1), got " + std::to_string(p));
  if (!training || p == 0) return x;
  // scale[i] = 0 with probability p, else 1/(1-p); the same tensor scales the gradient.
  Tensor scale = uninitialized(x.shape(), x.dtype());
  const uint64_t seed = gen.seed(), base = gen.reserve(static_cast<uint64_t>(x.numel()));
  dispatch_float(x.dtype(), name, [&](auto tag) {
    using T = decltype(tag);
    T* ps = scale.data<T>();
    const T keep = static_cast<T>(1.0 / (1.0 - p));
    const int64_t n = x.numel();
    parallel_for(n, n >= kParallelElements ? n : 0, [&](int64_t i) {
      ps[i] = Generator::uniform01(seed, base + static_cast<uint64_t>(i)) < p ? T(0) : keep;
    });
  });
  Tensor y;
  {
    NoGradGuard ng;
    y = mul(x, scale);
  }
  return record(Op::dropout, y, {x}, [ss = SavedTensor(scale, Op::dropout)](const Tensor& g, const NeedsGrad&) -> Grads {
    return {mul(g, ss.get())};
  });
}

// ============================ operators ============================

Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
Tensor operator-(const Tensor& x) { return neg(x); }
Tensor operator+(const Tensor& a, double b) { return add(a, scalar(b, a.dtype())); }
Tensor operator-(const Tensor& a, double b) { return sub(a, scalar(b, a.dtype())); }
Tensor operator*(const Tensor& a, double b) { return mul(a, scalar(b, a.dtype())); }
Tensor operator/(const Tensor& a, double b) { return div(a, scalar(b, a.dtype())); }
Tensor operator+(double a, const Tensor& b) { return add(scalar(a, b.dtype()), b); }
Tensor operator-(double a, const Tensor& b) { return sub(scalar(a, b.dtype()), b); }
Tensor operator*(double a, const Tensor& b) { return mul(scalar(a, b.dtype()), b); }
Tensor operator/(double a, const Tensor& b) { return div(scalar(a, b.dtype()), b); }

}  // namespace loragrad

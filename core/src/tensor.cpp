// Tensor storage, factories, element access, printing.
#include "loragrad/tensor.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <unordered_map>
#include <iomanip>
#include <limits>
#include <ostream>
#include <sstream>

#include "loragrad/autograd.hpp"
#include "loragrad/generator.hpp"
#include "loragrad/kernels/isa.hpp"
#include "loragrad/memory.hpp"
#include "loragrad/ops.hpp"
#include "loragrad/parallel.hpp"

namespace loragrad {

size_t dtype_size(DType dt) {
  switch (dt) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::i64: return 8;
  }
  return 0;
}

const char* dtype_name(DType dt) {
  switch (dt) {
    case DType::f32: return "float32";
    case DType::f64: return "float64";
    case DType::i64: return "int64";
  }
  return "?";
}

std::string shape_str(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

int64_t shape_numel(const Shape& s) {
  // Shapes can come from files: the product is checked, not left to overflow.
  int64_t n = 1;
  for (int64_t d : s)
    if (d < 0) throw ShapeError("shape " + shape_str(s) + " has a negative dimension");
  for (int64_t d : s)
    if (__builtin_mul_overflow(n, d, &n))
      throw ShapeError("shape " + shape_str(s) + " has more than 2^63 elements");
  return n;
}

int64_t wrap_dim(int64_t d, int64_t ndim, const char* op) {
  const int64_t n = std::max<int64_t>(ndim, 1);  // a 0-d tensor accepts dim 0 and -1, like PyTorch
  int64_t w = d < 0 ? d + n : d;
  if (w < 0 || w >= n)
    throw IndexError(std::string(op) + ": dim " + std::to_string(d) + " out of range for a " +
                     std::to_string(ndim) + "-d tensor");
  return w;
}

void check_defined(const Tensor& a, const char* op) {
  if (!a.defined()) throw ValueError(std::string(op) + ": got an undefined tensor");
}

void check_floating(const Tensor& a, const char* op) {
  check_defined(a, op);
  if (!is_floating(a.dtype()))
    throw DTypeError(std::string(op) + ": expected a float32 or float64 tensor, got " +
                     dtype_name(a.dtype()) + " of shape " + shape_str(a.shape()));
}

void check_same_dtype(const Tensor& a, const Tensor& b, const char* op) {
  check_floating(a, op);
  check_floating(b, op);
  if (a.dtype() != b.dtype())
    throw DTypeError(std::string(op) + ": dtypes differ: " + dtype_name(a.dtype()) + " " +
                     shape_str(a.shape()) + " vs " + dtype_name(b.dtype()) + " " +
                     shape_str(b.shape()));
}

// ---- Storage / TensorImpl ----

// A cache of freed blocks by exact size. A training step allocates the same
// shapes every time, and fresh pages are expensive here (a page fault per 4 KiB
// on first touch, ~10 us each): reusing blocks turns that into a memset.
namespace {
class BlockCache {
 public:
  static BlockCache& get() {
    static BlockCache* cache = new BlockCache();  // never destroyed: Storage may outlive statics
    return *cache;
  }
  void* take(size_t rounded) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.find(rounded);
    if (it == free_.end() || it->second.empty()) return nullptr;
    void* p = it->second.back();
    it->second.pop_back();
    cached_ -= rounded;
    return p;
  }
  void give(void* p, size_t rounded) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cached_ + rounded <= kMaxCached) {
        free_[rounded].push_back(p);
        cached_ += rounded;
        return;
      }
    }
    std::free(p);
  }
  size_t cached() {
    std::lock_guard<std::mutex> lock(mu_);
    return cached_;
  }
  void release() {
    std::unordered_map<size_t, std::vector<void*>> blocks;
    {
      std::lock_guard<std::mutex> lock(mu_);
      blocks.swap(free_);
      cached_ = 0;
    }
    for (auto& kv : blocks)
      for (void* p : kv.second) std::free(p);
  }
 private:
  static constexpr size_t kMaxCached = size_t(1) << 30;  // 1 GiB of idle blocks at most
  std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t cached_ = 0;
};

// aligned_alloc wants a multiple of the alignment; an empty tensor still gets a block.
size_t rounded_size(size_t n) { return (std::max<size_t>(n, 1) + 63) / 64 * 64; }

// Live storage bytes and their peak (memory.hpp). Relaxed order is enough:
// each counter is one atomic, and no other memory is published through it.
std::atomic<size_t> g_live_bytes{0};
std::atomic<size_t> g_peak_bytes{0};
std::atomic<long long> g_live_storages{0};

void count_alloc(size_t rounded) {
  const size_t now = g_live_bytes.fetch_add(rounded, std::memory_order_relaxed) + rounded;
  g_live_storages.fetch_add(1, std::memory_order_relaxed);
  size_t peak = g_peak_bytes.load(std::memory_order_relaxed);
  while (now > peak && !g_peak_bytes.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
}
void count_free(size_t rounded) {
  g_live_bytes.fetch_sub(rounded, std::memory_order_relaxed);
  g_live_storages.fetch_sub(1, std::memory_order_relaxed);
}
}  // namespace

namespace {
// Before any kernel runs: see kernels::require_cpu_support.
[[maybe_unused]] const bool g_cpu_checked = (kernels::require_cpu_support(), true);
}  // namespace

namespace memory {
size_t live_bytes() { return g_live_bytes.load(std::memory_order_relaxed); }
size_t peak_bytes() { return g_peak_bytes.load(std::memory_order_relaxed); }
void reset_peak() { g_peak_bytes.store(g_live_bytes.load(std::memory_order_relaxed), std::memory_order_relaxed); }
size_t cached_bytes() { return BlockCache::get().cached(); }
void release_cached() { BlockCache::get().release(); }
long long live_storages() { return g_live_storages.load(std::memory_order_relaxed); }
size_t storage_bytes(size_t nbytes) { return rounded_size(nbytes); }
size_t peak_rss_bytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<size_t>(usage.ru_maxrss) * 1024;  // ru_maxrss is in KiB on Linux
}
}  // namespace memory

Storage::Storage(size_t n, bool zero) : nbytes(n) {
  if (n > std::numeric_limits<size_t>::max() - 64)  // rounding up must not wrap around
    throw Error("out of memory allocating " + std::to_string(n) + " bytes");
  const size_t rounded = rounded_size(n);
  data = BlockCache::get().take(rounded);
  if (!data) data = std::aligned_alloc(64, rounded);
  if (!data) throw Error("out of memory allocating " + std::to_string(n) + " bytes");
  if (zero) {
    // A large block is zeroed over the threads: zeros() of megabytes (a
    // gradient, the attention's dq / dk / dv) was a serial part of the step.
    char* bytes = static_cast<char*>(data);
    const int64_t lines = static_cast<int64_t>(rounded / 64);  // rounded is a multiple of 64
    parallel_ranges(lines, lines >= kParallelElements / 16 ? lines * 16 : 0, [&](int64_t lo, int64_t hi) {
      std::memset(bytes + lo * 64, 0, static_cast<size_t>(hi - lo) * 64);
    });
  }
  count_alloc(rounded);
}
Storage::~Storage() {
  const size_t rounded = rounded_size(nbytes);
  count_free(rounded);
  BlockCache::get().give(data, rounded);
}

static std::atomic<int64_t> g_live_impls{0};

TensorImpl::TensorImpl(std::shared_ptr<Storage> s, Shape sh, DType dt)
    : storage(std::move(s)), shape(std::move(sh)), dtype(dt), numel(shape_numel(shape)) {
  ++g_live_impls;
}
TensorImpl::~TensorImpl() { --g_live_impls; }
int64_t TensorImpl::live_count() { return g_live_impls.load(); }

// ---- Tensor accessors ----

static TensorImpl& need(const std::shared_ptr<TensorImpl>& p) {
  if (!p) throw ValueError("use of an undefined tensor");
  return *p;
}

const Shape& Tensor::shape() const { return need(impl_).shape; }
int64_t Tensor::dim() const { return static_cast<int64_t>(shape().size()); }
int64_t Tensor::size(int64_t d) const { return shape()[wrap_dim(d, dim(), "size")]; }
int64_t Tensor::numel() const { return need(impl_).numel; }
DType Tensor::dtype() const { return need(impl_).dtype; }
void* Tensor::raw_data() const { return need(impl_).storage->data; }

template <class T> static constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<double>() { return DType::f64; }
template <> constexpr DType dtype_of<int64_t>() { return DType::i64; }

template <class T> T* Tensor::data() {
  if (dtype() != dtype_of<T>())
    throw DTypeError(std::string("data<") + dtype_name(dtype_of<T>()) + ">: tensor is " +
                     dtype_name(dtype()));
  return static_cast<T*>(raw_data());
}
template <class T> const T* Tensor::data() const {
  return const_cast<Tensor*>(this)->data<T>();
}
template float* Tensor::data<float>();
template double* Tensor::data<double>();
template int64_t* Tensor::data<int64_t>();
template const float* Tensor::data<float>() const;
template const double* Tensor::data<double>() const;
template const int64_t* Tensor::data<int64_t>() const;

static double read_at(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::f32: return static_cast<const float*>(t.raw_data())[i];
    case DType::f64: return static_cast<const double*>(t.raw_data())[i];
    case DType::i64: return static_cast<double>(static_cast<const int64_t*>(t.raw_data())[i]);
  }
  return 0;
}
static void write_at(const Tensor& t, int64_t i, double v) {
  switch (t.dtype()) {
    case DType::f32: static_cast<float*>(t.raw_data())[i] = static_cast<float>(v); break;
    case DType::f64: static_cast<double*>(t.raw_data())[i] = v; break;
    case DType::i64: static_cast<int64_t*>(t.raw_data())[i] = static_cast<int64_t>(v); break;
  }
}

static int64_t flat_index(const Tensor& t, const std::vector<int64_t>& index, const char* op) {
  if (static_cast<int64_t>(index.size()) != t.dim())
    throw IndexError(std::string(op) + ": " + std::to_string(index.size()) +
                     " indices for a tensor of shape " + shape_str(t.shape()));
  int64_t flat = 0;
  for (size_t d = 0; d < index.size(); ++d) {
    int64_t n = t.shape()[d], i = index[d] < 0 ? index[d] + n : index[d];
    if (i < 0 || i >= n)
      throw IndexError(std::string(op) + ": index " + std::to_string(index[d]) + " out of range for dim " +
                       std::to_string(d) + " of shape " + shape_str(t.shape()));
    flat = flat * n + i;
  }
  return flat;
}

double Tensor::item() const {
  if (numel() != 1)
    throw ShapeError("item: expected a tensor with one element, got shape " + shape_str(shape()));
  return read_at(*this, 0);
}
double Tensor::at(const std::vector<int64_t>& index) const {
  return read_at(*this, flat_index(*this, index, "at"));
}
void Tensor::set(const std::vector<int64_t>& index, double v) {
  write_at(*this, flat_index(*this, index, "set"), v);
  bump_version();
}
std::vector<double> Tensor::to_vector() const {
  std::vector<double> out(static_cast<size_t>(numel()));
  for (int64_t i = 0; i < numel(); ++i) out[i] = read_at(*this, i);
  return out;
}

// ---- autograd state ----

bool Tensor::requires_grad() const { return need(impl_).requires_grad; }
Tensor& Tensor::requires_grad_(bool on) {
  if (!is_leaf())
    throw AutogradError("requires_grad_: only leaf tensors can change requires_grad (this one is the "
                        "output of " + std::string(grad_fn()->name()) + "); use detach()");
  if (on && !is_floating(dtype()))
    throw DTypeError(std::string("requires_grad_: only float tensors can require grad, got ") +
                     dtype_name(dtype()));
  impl_->requires_grad = on;
  return *this;
}
bool Tensor::is_leaf() const { return need(impl_).grad_fn == nullptr; }
Tensor Tensor::grad() const { return Tensor(need(impl_).grad); }
void Tensor::set_grad(const Tensor& g) {
  if (g.defined() && (g.shape() != shape() || g.dtype() != dtype()))
    throw ShapeError("set_grad: gradient " + std::string(dtype_name(g.dtype())) + shape_str(g.shape()) +
                     " does not match tensor " + dtype_name(dtype()) + shape_str(shape()));
  need(impl_).grad = g.impl_ptr();
}
void Tensor::zero_grad() { need(impl_).grad.reset(); }
const std::shared_ptr<Node>& Tensor::grad_fn() const { return need(impl_).grad_fn; }

Tensor Tensor::detach() const {
  auto& s = need(impl_);
  return Tensor(std::make_shared<TensorImpl>(s.storage, s.shape, s.dtype));
}

uint64_t Tensor::version() const { return need(impl_).storage->version; }
void Tensor::bump_version() { ++need(impl_).storage->version; }

// ---- copies and in-place writes ----

Tensor Tensor::clone() const {
  Tensor out = uninitialized(shape(), dtype());
  std::memcpy(out.raw_data(), raw_data(), nbytes());
  return out;
}

Tensor Tensor::to(DType dt) const { return cast(*this, dt); }

Tensor& Tensor::fill_(double v) {
  for (int64_t i = 0; i < numel(); ++i) write_at(*this, i, v);
  bump_version();
  return *this;
}

Tensor& Tensor::copy_(const Tensor& src) {
  if (src.shape() != shape())
    throw ShapeError("copy_: source shape " + shape_str(src.shape()) + " != destination shape " +
                     shape_str(shape()));
  if (src.dtype() == dtype()) {
    std::memcpy(raw_data(), src.raw_data(), nbytes());
  } else {
    for (int64_t i = 0; i < numel(); ++i) write_at(*this, i, read_at(src, i));
  }
  bump_version();
  return *this;
}

Tensor& Tensor::add_(const Tensor& other, double alpha) {
  check_same_dtype(*this, other, "add_");
  if (other.shape() != shape())
    throw ShapeError("add_: shapes differ: " + shape_str(shape()) + " += " + shape_str(other.shape()));
  dispatch_float(dtype(), "add_", [&](auto tag) {
    using T = decltype(tag);
    T* y = data<T>();
    const T* x = other.data<T>();
    const T a = static_cast<T>(alpha);
    const int64_t n = numel();
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
  });
  bump_version();
  return *this;
}

Tensor& Tensor::mul_(double s) {
  check_floating(*this, "mul_");
  dispatch_float(dtype(), "mul_", [&](auto tag) {
    using T = decltype(tag);
    T* y = data<T>();
    const T a = static_cast<T>(s);
    const int64_t n = numel();
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] *= a;
  });
  bump_version();
  return *this;
}

// ---- printing ----

std::string Tensor::str() const {
  if (!defined()) return "tensor(undefined)";
  std::ostringstream os;
  os << std::setprecision(dtype() == DType::f64 ? 8 : 5);
  const Shape& s = shape();
  const int64_t nd = dim();
  const int64_t limit = 6;  // print at most this many items per dim (first 3, ..., last 3)
  // Recursive over dims is fine here: depth = ndim.
  std::function<void(int64_t, int64_t)> rec = [&](int64_t d, int64_t base) {
    if (d == nd) { os << read_at(*this, base); return; }
    int64_t n = s[d], stride = 1;
    for (int64_t k = d + 1; k < nd; ++k) stride *= s[k];
    os << "[";
    for (int64_t i = 0; i < n; ++i) {
      if (n > limit && i == 3) { os << "..., "; i = n - 3; }
      rec(d + 1, base + i * stride);
      if (i + 1 < n) os << (d + 1 == nd ? ", " : ",\n" + std::string(static_cast<size_t>(d + 8), ' '));
    }
    os << "]";
  };
  os << "tensor(";
  rec(0, 0);
  os << ", shape=" << shape_str(s) << ", dtype=" << dtype_name(dtype());
  if (requires_grad()) os << (is_leaf() ? ", requires_grad" : std::string(", grad_fn=") + grad_fn()->name());
  os << ")";
  return os.str();
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) { return os << t.str(); }
std::ostream& operator<<(std::ostream& os, DType dt) { return os << dtype_name(dt); }

// ---- factories ----

// The storage for a new tensor; the byte count is overflow-checked and a
// failed allocation names the tensor it was for.
static std::shared_ptr<Storage> new_storage(const Shape& shape, DType dt, bool zero) {
  size_t bytes = 0;
  if (__builtin_mul_overflow(static_cast<size_t>(shape_numel(shape)), dtype_size(dt), &bytes))
    throw ShapeError("a " + std::string(dtype_name(dt)) + " tensor of shape " + shape_str(shape) +
                     " needs more than 2^64 bytes");
  try {
    return std::make_shared<Storage>(bytes, zero);
  } catch (const Error&) {
    throw Error("out of memory allocating " + std::to_string(bytes) + " bytes for a " + dtype_name(dt) +
                " tensor of shape " + shape_str(shape));
  }
}

Tensor zeros(const Shape& shape, DType dt) {
  return Tensor(std::make_shared<TensorImpl>(new_storage(shape, dt, /*zero=*/true), shape, dt));
}
Tensor uninitialized(const Shape& shape, DType dt) {
  return Tensor(std::make_shared<TensorImpl>(new_storage(shape, dt, /*zero=*/false), shape, dt));
}
Tensor ones(const Shape& shape, DType dt) { return full(shape, 1.0, dt); }
Tensor full(const Shape& shape, double value, DType dt) {
  Tensor t = zeros(shape, dt);
  if (value != 0.0) t.fill_(value);
  return t;
}
Tensor scalar(double value, DType dt) { return full({}, value, dt); }
Tensor zeros_like(const Tensor& t) { return zeros(t.shape(), t.dtype()); }
Tensor ones_like(const Tensor& t) { return ones(t.shape(), t.dtype()); }

Tensor arange(double start, double end, double step, DType dt) {
  if (step == 0 || !std::isfinite(start) || !std::isfinite(end) || !std::isfinite(step))
    throw ValueError("arange: need finite start/end and a non-zero step, got (" + std::to_string(start) +
                     ", " + std::to_string(end) + ", " + std::to_string(step) + ")");
  int64_t n = std::max<int64_t>(0, static_cast<int64_t>(std::ceil((end - start) / step)));
  Tensor t = uninitialized({n}, dt);
  for (int64_t i = 0; i < n; ++i) write_at(t, i, start + static_cast<double>(i) * step);
  return t;
}
Tensor arange(int64_t n, DType dt) { return arange(0.0, static_cast<double>(n), 1.0, dt); }

static void check_count(size_t got, const Shape& shape, const char* op) {
  if (static_cast<int64_t>(got) != shape_numel(shape))
    throw ShapeError(std::string(op) + ": " + std::to_string(got) + " values do not fill shape " +
                     shape_str(shape) + " (" + std::to_string(shape_numel(shape)) + " elements)");
}

Tensor from_values(const std::vector<double>& values, const Shape& shape, DType dt) {
  check_count(values.size(), shape, "from_values");
  Tensor t = uninitialized(shape, dt);
  for (size_t i = 0; i < values.size(); ++i) write_at(t, static_cast<int64_t>(i), values[i]);
  return t;
}
Tensor from_values(const std::vector<float>& values, const Shape& shape) {
  check_count(values.size(), shape, "from_values");
  Tensor t = uninitialized(shape, DType::f32);
  std::memcpy(t.raw_data(), values.data(), values.size() * sizeof(float));
  return t;
}
Tensor from_indices(const std::vector<int64_t>& values, const Shape& shape) {
  check_count(values.size(), shape, "from_indices");
  Tensor t = uninitialized(shape, DType::i64);
  std::memcpy(t.raw_data(), values.data(), values.size() * sizeof(int64_t));
  return t;
}

// Random fills: reserve numel counters, element i uses counter base + i.
template <class F>
static Tensor fill_random(const Shape& shape, DType dt, Generator& gen, const char* op, F draw) {
  Tensor t = uninitialized(shape, dt);
  const int64_t n = t.numel();
  const uint64_t seed = gen.seed(), base = gen.reserve(static_cast<uint64_t>(n));
  dispatch_float(dt, op, [&](auto tag) {
    using T = decltype(tag);
    T* p = t.data<T>();
    parallel_for(n, n > (1 << 16) ? n : 0, [&](int64_t i) {
      p[i] = static_cast<T>(draw(seed, base + static_cast<uint64_t>(i)));
    });
  });
  return t;
}

Tensor rand(const Shape& shape, Generator& gen, DType dt) {
  return fill_random(shape, dt, gen, "rand", Generator::uniform01);
}
Tensor randn(const Shape& shape, Generator& gen, DType dt) {
  return fill_random(shape, dt, gen, "randn", Generator::normal01);
}
Tensor uniform(const Shape& shape, double lo, double hi, Generator& gen, DType dt) {
  if (!(lo <= hi)) throw ValueError("uniform: need lo <= hi, got " + std::to_string(lo) + ", " + std::to_string(hi));
  return fill_random(shape, dt, gen, "uniform",
                     [=](uint64_t s, uint64_t c) { return lo + (hi - lo) * Generator::uniform01(s, c); });
}
Tensor normal(const Shape& shape, double mean, double stddev, Generator& gen, DType dt) {
  if (!(stddev >= 0)) throw ValueError("normal: stddev must be >= 0, got " + std::to_string(stddev));
  return fill_random(shape, dt, gen, "normal",
                     [=](uint64_t s, uint64_t c) { return mean + stddev * Generator::normal01(s, c); });
}
Tensor randint(const Shape& shape, int64_t lo, int64_t hi, Generator& gen) {
  if (lo >= hi) throw ValueError("randint: empty range [" + std::to_string(lo) + ", " + std::to_string(hi) + ")");
  Tensor t = uninitialized(shape, DType::i64);
  const uint64_t seed = gen.seed(), base = gen.reserve(static_cast<uint64_t>(t.numel()));
  const uint64_t span = static_cast<uint64_t>(hi - lo);
  int64_t* p = t.data<int64_t>();
  for (int64_t i = 0; i < t.numel(); ++i)
    p[i] = lo + static_cast<int64_t>(Generator::bits(seed, base + static_cast<uint64_t>(i)) % span);
  return t;
}

}  // namespace loragrad

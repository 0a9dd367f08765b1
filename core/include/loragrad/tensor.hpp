#pragma once
// Tensor: a cheap handle (shared_ptr) to a contiguous row-major n-d array plus
// its autograd state. Copying a Tensor copies the handle, not the data.
//
// Every tensor is contiguous: ops that would make a strided view in PyTorch
// (transpose, narrow, ...) copy instead. This keeps every kernel a loop over
// contiguous rows. reshape / detach share storage.
#include <cstdint>
#include <initializer_list>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "loragrad/error.hpp"

namespace loragrad {

enum class DType : uint8_t { f32, f64, i64 };  // i64: index tensors (targets, token ids)

size_t dtype_size(DType dt);
const char* dtype_name(DType dt);
inline bool is_floating(DType dt) { return dt == DType::f32 || dt == DType::f64; }

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);   // "[2, 3]"
int64_t shape_numel(const Shape& s);     // product of dims, 1 for a 0-d tensor

// 64-byte aligned bytes, zero-initialised unless asked not to. The version counter is bumped by
// every in-place write, so a saved tensor can tell it was modified (and a cache of values derived
// from a tensor, e.g. LoraLinear's DoRA row norms of its base weight, that it is stale): a write
// through a raw pointer must call Tensor::bump_version() itself. Every Storage is counted by the
// memory counters (loragrad/memory.hpp: live and peak tensor bytes) from construction to destruction.
struct Storage {
  explicit Storage(size_t nbytes, bool zero = true);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data = nullptr;
  size_t nbytes = 0;
  uint64_t version = 0;
};

struct Node;        // autograd.hpp
struct TensorImpl;

class Tensor {
 public:
  Tensor() = default;  // undefined tensor ("None")
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const;
  int64_t dim() const;
  int64_t size(int64_t d) const;  // negative d counts from the end
  int64_t numel() const;
  DType dtype() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype()); }

  // Typed pointer to the first element; throws DTypeError when T does not match.
  template <class T> T* data();
  template <class T> const T* data() const;
  void* raw_data() const;

  double item() const;                          // the value of a one-element tensor
  double at(const std::vector<int64_t>& index) const;
  void set(const std::vector<int64_t>& index, double v);  // an in-place write
  std::vector<double> to_vector() const;        // all values, row-major, as double

  // ---- autograd ----
  bool requires_grad() const;
  Tensor& requires_grad_(bool on = true);       // leaves only
  bool is_leaf() const;
  Tensor grad() const;                          // undefined until a backward reaches it
  void set_grad(const Tensor& g);
  void zero_grad();                             // grad = undefined (PyTorch set_to_none)
  // Backpropagate from this tensor. Without `grad` the tensor must hold one
  // element; otherwise `grad` is the upstream gradient, of this tensor's shape.
  void backward(const Tensor& grad = Tensor(), bool retain_graph = false) const;
  const std::shared_ptr<Node>& grad_fn() const;
  Tensor detach() const;                        // same storage, no history

  // ---- copies and in-place writes (not recorded by autograd) ----
  Tensor clone() const;                         // a detached deep copy
  Tensor to(DType dt) const;                    // differentiable cast (op "cast")
  Tensor& fill_(double v);
  Tensor& copy_(const Tensor& src);             // same shape, any float dtype
  Tensor& add_(const Tensor& other, double alpha = 1.0);  // this += alpha * other
  Tensor& mul_(double s);
  uint64_t version() const;
  void bump_version();

  std::string str() const;                      // printable, like torch
  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }

 private:
  std::shared_ptr<TensorImpl> impl_;
};

std::ostream& operator<<(std::ostream& os, const Tensor& t);
std::ostream& operator<<(std::ostream& os, DType dt);

struct TensorImpl {
  TensorImpl(std::shared_ptr<Storage> s, Shape sh, DType dt);
  ~TensorImpl();
  std::shared_ptr<Storage> storage;
  Shape shape;
  DType dtype;
  int64_t numel;
  bool requires_grad = false;
  std::shared_ptr<TensorImpl> grad;
  std::shared_ptr<Node> grad_fn;   // null for leaves and for tensors without history
  static int64_t live_count();     // TensorImpls alive now (leak tests)
};

// ---- factories ----
Tensor zeros(const Shape& shape, DType dt = DType::f32);
// Values left undefined: only for kernels that overwrite every element.
Tensor uninitialized(const Shape& shape, DType dt = DType::f32);
Tensor ones(const Shape& shape, DType dt = DType::f32);
Tensor full(const Shape& shape, double value, DType dt = DType::f32);
Tensor scalar(double value, DType dt = DType::f32);         // 0-d tensor
Tensor arange(double start, double end, double step = 1.0, DType dt = DType::f32);
Tensor arange(int64_t n, DType dt = DType::f32);
// From values given row-major; values.size() must equal the shape's numel.
Tensor from_values(const std::vector<double>& values, const Shape& shape, DType dt = DType::f32);
Tensor from_values(const std::vector<float>& values, const Shape& shape);
Tensor from_indices(const std::vector<int64_t>& values, const Shape& shape);  // i64 tensor
Tensor zeros_like(const Tensor& t);
Tensor ones_like(const Tensor& t);

class Generator;  // generator.hpp
Tensor rand(const Shape& shape, Generator& gen, DType dt = DType::f32);   // U[0, 1)
Tensor randn(const Shape& shape, Generator& gen, DType dt = DType::f32);  // N(0, 1)
Tensor uniform(const Shape& shape, double lo, double hi, Generator& gen, DType dt = DType::f32);
Tensor normal(const Shape& shape, double mean, double stddev, Generator& gen, DType dt = DType::f32);
Tensor randint(const Shape& shape, int64_t lo, int64_t hi, Generator& gen);  // i64 in [lo, hi)

// ---- helpers shared by ops ----
// Call f(T{}) with T = float, double (or int64_t where allowed) for dt.
template <class F>
decltype(auto) dispatch_float(DType dt, const char* op, F&& f) {
  if (dt == DType::f32) return f(float{});
  if (dt == DType::f64) return f(double{});
  throw DTypeError(std::string(op) + ": expected a float32 or float64 tensor, got " + dtype_name(dt));
}
int64_t wrap_dim(int64_t d, int64_t ndim, const char* op);  // negative dims, range-checked
void check_same_dtype(const Tensor& a, const Tensor& b, const char* op);
void check_floating(const Tensor& a, const char* op);
void check_defined(const Tensor& a, const char* op);

}  // namespace loragrad

// Linear, Embedding, LayerNorm, Dropout, ModuleList.
#include "loragrad/nn/layers.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "loragrad/ops.hpp"

namespace loragrad::nn {

static void check_positive(int64_t v, const char* layer, const char* what) {
  if (v <= 0) throw ValueError(std::string(layer) + ": " + what + " must be positive, got " + std::to_string(v));
}

// A parameter is a leaf that requires grad.
static Tensor as_parameter(const Tensor& t) {
  if (!t.defined()) return t;
  Tensor p = t.is_leaf() ? t : t.detach();
  p.requires_grad_(true);
  return p;
}

static std::string format_double(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

// ============================ LinearBase ============================

Tensor LinearBase::forward_with_lora(const Tensor& x, const Tensor& x_lora, const Tensor& a, const Tensor& b,
                                     double scale) {
  const Tensor lora = linear(linear(x_lora.defined() ? x_lora : x, a), b);  // (..., out) = B (A x_l)
  return add(forward(x), lora * scale);
}

// ============================ Linear ============================

Linear::Linear(int64_t in, int64_t out, bool with_bias, Generator& gen, DType dt) {
  check_positive(in, "Linear", "in_features");
  check_positive(out, "Linear", "out_features");
  in_features = in;
  out_features = out;
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  weight = as_parameter(uniform({out, in}, -bound, bound, gen, dt));
  register_parameter("weight", weight);
  if (with_bias) {
    bias = as_parameter(uniform({out}, -bound, bound, gen, dt));
    register_parameter("bias", bias);
  }
}

Linear::Linear(Tensor w, Tensor b) {
  check_defined(w, "Linear");
  if (w.dim() != 2) throw ShapeError("Linear: weight must be 2-d (out, in), got " + shape_str(w.shape()));
  if (b.defined() && b.shape() != Shape{w.size(0)})
    throw ShapeError("Linear: bias " + shape_str(b.shape()) + " does not fit weight " + shape_str(w.shape()));
  out_features = w.size(0);
  in_features = w.size(1);
  weight = as_parameter(w);
  register_parameter("weight", weight);
  if (b.defined()) {
    bias = as_parameter(b);
    register_parameter("bias", bias);
  }
}

Tensor Linear::forward(const Tensor& x) { return linear(x, weight, bias); }

Tensor Linear::forward_no_bias(const Tensor& x) const {
  return linear(x, weight.dtype() == x.dtype() ? weight : weight.to(x.dtype()));
}

Tensor Linear::forward_with_lora(const Tensor& x, const Tensor& x_lora, const Tensor& a, const Tensor& b,
                                 double scale) {
  // Mixed dtypes (refused by linear with its own message): the composed path says so.
  const DType dt = x.dtype();
  if (weight.dtype() != dt || a.dtype() != dt || b.dtype() != dt || (bias.defined() && bias.dtype() != dt))
    return LinearBase::forward_with_lora(x, x_lora, a, b, scale);
  return lora_linear(x, weight, bias, a, b, scale, x_lora);
}

std::string Linear::storage() const {
  switch (weight.dtype()) {
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    default: return dtype_name(weight.dtype());  // not reached: a parameter is a float tensor
  }
}

void Linear::weight_rows_f64(int64_t row0, int64_t nrows, double* out) const {
  const int64_t n = nrows * in_features;
  if (weight.dtype() == DType::f64) {
    const double* w = weight.data<double>() + row0 * in_features;
    std::copy(w, w + n, out);
  } else {
    const float* w = weight.data<float>() + row0 * in_features;
    for (int64_t i = 0; i < n; ++i) out[i] = w[i];
  }
}

void Linear::set_weight(const Tensor& w) {
  if (w.shape() != weight.shape())
    throw ShapeError("Linear.set_weight: expected " + shape_str(weight.shape()) + ", got " + shape_str(w.shape()));
  NoGradGuard no_grad;  // a write into a (possibly trainable) leaf, not part of any graph
  weight.copy_(w);
}

Linear::WeightVersion Linear::weight_version() const { return {weight.impl()->storage, weight.version()}; }

std::string Linear::extra_repr() const {
  return "in_features=" + std::to_string(in_features) + ", out_features=" + std::to_string(out_features) +
         ", bias=" + (bias.defined() ? "True" : "False");
}

// ============================ Embedding ============================

Embedding::Embedding(int64_t num, int64_t dim_, Generator& gen, DType dt) : num_embeddings(num), embedding_dim(dim_) {
  check_positive(num, "Embedding", "num_embeddings");
  check_positive(dim_, "Embedding", "embedding_dim");
  weight = as_parameter(randn({num, dim_}, gen, dt));
  register_parameter("weight", weight);
}

Tensor Embedding::forward(const Tensor& idx) { return embedding(weight, idx); }

std::string Embedding::extra_repr() const {
  return std::to_string(num_embeddings) + ", " + std::to_string(embedding_dim);
}

// ============================ LayerNorm ============================

LayerNorm::LayerNorm(int64_t dim_, double eps_, DType dt) : dim(dim_), eps(eps_) {
  check_positive(dim_, "LayerNorm", "dim");
  if (!(eps_ > 0)) throw ValueError("LayerNorm: eps must be positive, got " + format_double(eps_));
  weight = as_parameter(ones({dim_}, dt));
  bias = as_parameter(zeros({dim_}, dt));
  register_parameter("weight", weight);
  register_parameter("bias", bias);
}

Tensor LayerNorm::forward(const Tensor& x) { return layer_norm(x, weight, bias, eps); }

std::string LayerNorm::extra_repr() const {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", eps);  // 1e-05, as PyTorch prints it
  return "(" + std::to_string(dim) + ",), eps=" + buf;
}

// ============================ Dropout ============================

static void check_p(double p) {
  if (!(p >= 0 && p < 1)) throw ValueError("Dropout: p must be in [0, 1), got " + format_double(p));
}

Dropout::Dropout(double p_, uint64_t seed) : p(p_), gen(std::make_shared<Generator>(seed)) { check_p(p_); }

Dropout::Dropout(double p_, std::shared_ptr<Generator> g) : p(p_), gen(std::move(g)) {
  check_p(p_);
  if (!gen) throw ValueError("Dropout: the generator is null");
}

Tensor Dropout::forward(const Tensor& x) {
  if (!is_training() || p == 0) return x;
  return dropout(x, p, true, *gen);
}

std::string Dropout::extra_repr() const {
  std::string s = format_double(p);
  if (s.find_first_of(".e") == std::string::npos) s += ".0";  // 0.0, as Python prints a float
  return "p=" + s;
}

// ============================ ModuleList ============================

void ModuleList::push_back(ModulePtr m) {
  if (!m) throw ValueError("ModuleList: cannot add a null module");
  const size_t i = items_.size();
  items_.push_back(std::move(m));
  // The slot is read through the index: the vector may reallocate.
  add_child(std::to_string(i), [this, i] { return items_[i]; },
            [this, i](const ModulePtr& r) {
              items_[i] = r;
              return true;
            });
}

// ============================ ModuleDict ============================

void ModuleDict::insert(const std::string& key, ModulePtr m) {
  if (!m) throw ValueError("ModuleDict: entry '" + key + "' is null");
  if (contains(key)) throw ValueError("ModuleDict: key '" + key + "' already present");
  items_.emplace_back(key, std::move(m));
  const size_t i = items_.size() - 1;  // items_ only grows, so the index stays valid
  add_child(
      key, [this, i] { return items_[i].second; },
      [this, i](const ModulePtr& r) {
        items_[i].second = r;
        return true;
      });
}

bool ModuleDict::contains(const std::string& key) const {
  for (const auto& kv : items_)
    if (kv.first == key) return true;
  return false;
}

const ModulePtr& ModuleDict::at(const std::string& key) const {
  for (const auto& kv : items_)
    if (kv.first == key) return kv.second;
  throw ValueError("ModuleDict: no key '" + key + "'; keys: " + quoted_list(keys()));
}

std::vector<std::string> ModuleDict::keys() const {
  std::vector<std::string> k;
  for (const auto& kv : items_) k.push_back(kv.first);
  return k;
}

std::shared_ptr<ModuleDict> ModuleDict::without(const std::string& key) const {
  auto d = std::make_shared<ModuleDict>();
  for (const auto& kv : items_)
    if (kv.first != key) d->insert(kv.first, kv.second);
  d->train(is_training());
  return d;
}

}  // namespace loragrad::nn

// LoraOptions, DoraMagnitude and LoraLinear (LoRA, rsLoRA, DoRA).
// The maths follows PEFT 0.21's lora.Linear and lora.dora.DoraLinearLayer
// operation for operation, so float64 results agree to rounding.
#include "loragrad/lora/lora_linear.hpp"

#include <algorithm>
#include <cmath>

#include "loragrad/autograd.hpp"
#include "loragrad/lora/linalg.hpp"
#include "loragrad/ops.hpp"
#include "loragrad/parallel.hpp"

namespace loragrad::lora {

// ============================ LoraOptions ============================

const char* lora_init_name(LoraInit init) {
  switch (init) {
    case LoraInit::standard: return "true";
    case LoraInit::gaussian: return "gaussian";
    case LoraInit::pissa: return "pissa";
    case LoraInit::random: return "false";
  }
  return "?";
}

double LoraOptions::scale() const {
  return use_rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r);
}

void LoraOptions::validate(const std::string& where) const {
  if (r <= 0) throw ValueError(where + ": rank r must be positive, got " + std::to_string(r));
  if (!(alpha > 0) || !std::isfinite(alpha))
    throw ValueError(where + ": lora_alpha must be positive and finite, got " + std::to_string(alpha));
  if (!(dropout >= 0 && dropout < 1))
    throw ValueError(where + ": lora_dropout must be in [0, 1), got " + std::to_string(dropout));
}

// ============================ DoraMagnitude ============================

DoraMagnitude::DoraMagnitude(Tensor magnitude) {
  check_defined(magnitude, "DoraMagnitude");
  if (magnitude.dim() != 1)
    throw ShapeError("DoraMagnitude: magnitude must be 1-d (out), got " + shape_str(magnitude.shape()));
  weight = magnitude.is_leaf() ? magnitude : magnitude.detach();
  weight.requires_grad_(true);
  register_parameter("weight", weight);
}

// ============================ the base layer ============================
// Everything LoraLinear asks of its base goes through nn::LinearBase.

// t in dtype dt, without a copy when it already is (cast always copies).
static Tensor as_dtype(const Tensor& t, DType dt) { return t.dtype() == dt ? t : t.to(dt); }

Tensor LoraLinear::base_weight() const { return base_layer->dense_weight(); }

Tensor LoraLinear::base_bias() const {
  return base_layer->bias.defined() ? base_layer->bias.detach() : Tensor();
}

// x W0^T through the base's own weight, live: differentiable when the base is
// trainable (PEFT's forward uses base_layer.weight itself). An NF4 base has no
// weight parameter: it multiplies from its codes, a constant, with no dense copy.
Tensor LoraLinear::base_matmul(const Tensor& x) const { return base_layer->forward_no_bias(x); }

// ||W0_i||^2 per row, float64, cached (see the header). The key is the
// weight's identity and version (LinearBase::weight_version()).
std::shared_ptr<const std::vector<double>> LoraLinear::base_row_sq_norms() const {
  const nn::LinearBase::WeightVersion key = base_layer->weight_version();
  std::lock_guard<std::mutex> lock(row_sq_mu_);
  const bool same_owner = !row_sq_.owner.owner_before(key.owner) && !key.owner.owner_before(row_sq_.owner);
  if (row_sq_.sq && same_owner && row_sq_.version == key.version) return row_sq_.sq;

  const int64_t rows = out_features, cols = in_features;
  auto sq = std::make_shared<std::vector<double>>(static_cast<size_t>(rows));
  double* out = sq->data();
  const nn::LinearBase& base = *base_layer;  // its own values, a row at a time: never a dense copy
  parallel_ranges(rows, rows * cols > (1 << 16) ? rows * cols : 0, [&](int64_t lo, int64_t hi) {
    std::vector<double> row(static_cast<size_t>(cols));  // (in)
    for (int64_t i = lo; i < hi; ++i) {
      base.weight_rows_f64(i, 1, row.data());
      double acc = 0;
      for (int64_t j = 0; j < cols; ++j) acc += row[j] * row[j];
      out[i] = acc;
    }
  });
  row_sq_.owner = key.owner;
  row_sq_.version = key.version;
  row_sq_.sq = std::move(sq);
  ++row_sq_.computations;
  return row_sq_.sq;
}

int64_t LoraLinear::base_row_sq_norm_computations() const {
  std::lock_guard<std::mutex> lock(row_sq_mu_);
  return row_sq_.computations;
}

void LoraLinear::set_base_weight(const Tensor& w) {
  const Shape want{out_features, in_features};
  if (w.shape() != want)
    throw ShapeError("LoraLinear.set_base_weight: expected " + shape_str(want) + ", got " + shape_str(w.shape()));
  NoGradGuard no_grad;
  {
    // The write below changes the weight's version (dense) or identity (NF4),
    // which invalidates the cached row norms anyway; drop them now all the same.
    std::lock_guard<std::mutex> lock(row_sq_mu_);
    row_sq_.sq.reset();
    row_sq_.owner.reset();
  }
  // Dense: in place, the base's (frozen) parameter keeps its identity. NF4:
  // dequantise-add-requantise, as PEFT does for bitsandbytes 4-bit bases (the
  // new codes round the dense weight again, so a merge into NF4 is lossy).
  base_layer->set_weight(w);
}

bool LoraLinear::base_is_nf4() const { return base_layer->storage() == "nf4"; }

// ============================ LoraLinear ============================

LoraLinear::LoraLinear(nn::ModulePtr base) {
  if (!base) throw ValueError("LoraLinear: the base layer is null");
  base_layer = std::dynamic_pointer_cast<nn::LinearBase>(base);
  if (!base_layer)
    throw ValueError("LoraLinear: the base layer must be a linear layer (an nn::LinearBase: Linear, Linear4bit), got " +
                     base->type_name());
  in_features = base_layer->in_features;
  out_features = base_layer->out_features;
  base_layer->requires_grad_(false);
  lora_dropout = std::make_shared<ModuleDict>();
  lora_A = std::make_shared<ModuleDict>();
  lora_B = std::make_shared<ModuleDict>();
  lora_magnitude_vector = std::make_shared<ModuleDict>();
  // PEFT's registration order, so parameters list in PEFT's order.
  register_module("base_layer", base_layer);
  register_module("lora_dropout", lora_dropout);
  register_module("lora_A", lora_A);
  register_module("lora_B", lora_B);
  register_module("lora_magnitude_vector", lora_magnitude_vector);
}

LoraLinear::LoraLinear(nn::ModulePtr base, const std::string& adapter_name, const LoraOptions& opts)
    : LoraLinear(std::move(base)) {
  add_adapter(adapter_name, opts);
}

std::string LoraLinear::type_name() const { return base_is_nf4() ? "lora.Linear4bit" : "lora.Linear"; }

std::string LoraLinear::extra_repr() const { return ""; }  // PEFT prints only the children

const LoraLinear::Adapter& LoraLinear::adapter(const std::string& name, const char* op) const {
  for (const auto& kv : adapters_)
    if (kv.first == name) return kv.second;
  throw ValueError(std::string("LoraLinear.") + op + ": no adapter named '" + name + "'; adapters: " +
                   quoted_list(adapter_names()));
}

std::vector<std::string> LoraLinear::adapter_names() const {
  std::vector<std::string> names;
  for (const auto& kv : adapters_) names.push_back(kv.first);
  return names;
}

bool LoraLinear::has_adapter(const std::string& name) const {
  for (const auto& kv : adapters_)
    if (kv.first == name) return true;
  return false;
}

const LoraOptions& LoraLinear::adapter_options(const std::string& name) const {
  return adapter(name, "adapter_options").opts;
}
double LoraLinear::scaling(const std::string& name) const { return adapter(name, "scaling").scale; }
bool LoraLinear::is_dora(const std::string& name) const { return adapter(name, "is_dora").opts.use_dora; }

Tensor& LoraLinear::lora_A_weight(const std::string& name) {
  adapter(name, "lora_A_weight");
  return lora_A->get<nn::Linear>(name)->weight;
}

Tensor& LoraLinear::lora_B_weight(const std::string& name) {
  adapter(name, "lora_B_weight");
  return lora_B->get<nn::Linear>(name)->weight;
}

Tensor& LoraLinear::magnitude(const std::string& name) {
  if (!adapter(name, "magnitude").opts.use_dora)
    throw ValueError("LoraLinear.magnitude: adapter '" + name + "' is not a DoRA adapter (use_dora false)");
  return lora_magnitude_vector->get<DoraMagnitude>(name)->weight;
}

nn::Dropout& LoraLinear::dropout_module(const std::string& name) {
  adapter(name, "dropout_module");
  return *lora_dropout->get<nn::Dropout>(name);
}

// A stream for the dropout masks that differs from the init stream of the same seed.
static uint64_t dropout_seed(uint64_t seed) { return seed ^ 0x9e3779b97f4a7c15ULL; }

void LoraLinear::add_adapter(const std::string& name, const LoraOptions& opts) {
  const std::string where = "LoraLinear.add_adapter('" + name + "')";
  opts.validate(where);
  if (name.empty() || name.find('.') != std::string::npos)
    throw ValueError(where + ": adapter name must be non-empty and without '.'");
  if (has_adapter(name)) throw ValueError(where + ": an adapter with this name already exists");
  const int64_t r = opts.r, in = in_features, out = out_features;
  const double s = opts.scale();
  const DType dt = base_layer->dtype();  // of its first parameter: the weight (NF4: the bias, or f32)
  Generator gen(opts.seed);

  Tensor A, B;  // (r, in), (out, r)
  switch (opts.init) {
    case LoraInit::standard:  // kaiming_uniform(a = sqrt(5)): bound sqrt(6 / ((1 + 5) in)) = 1 / sqrt(in)
      A = uniform({r, in}, -1 / std::sqrt(double(in)), 1 / std::sqrt(double(in)), gen, dt);
      B = zeros({out, r}, dt);
      break;
    case LoraInit::gaussian:  // PEFT: nn.init.normal_(A, std = 1 / r)
      A = normal({r, in}, 0.0, 1.0 / double(r), gen, dt);
      B = zeros({out, r}, dt);
      break;
    case LoraInit::random:  // nn.Linear's default for both (PEFT's init_lora_weights = false)
      A = uniform({r, in}, -1 / std::sqrt(double(in)), 1 / std::sqrt(double(in)), gen, dt);
      B = uniform({out, r}, -1 / std::sqrt(double(r)), 1 / std::sqrt(double(r)), gen, dt);
      break;
    case LoraInit::pissa: {
      if (r > std::min(in, out))
        throw ValueError(where + ": PiSSA needs r <= min(in, out) = " + std::to_string(std::min(in, out)) +
                         ", got r = " + std::to_string(r));
      // W0 = U S Vh; B A = U_r S_r Vh_r / s, so s B A is the top-r part and the
      // base keeps the rest. The square roots split S_r evenly between A and B.
      // Computed in double (PEFT: float32 only); an NF4 base is requantised.
      const Tensor W0 = as_dtype(base_weight(), dt);  // (out, in)
      auto [Bf, Af] = low_rank_factors(W0.to(DType::f64), r);  // B = U_r sqrt(S_r), A = sqrt(S_r) Vh_r
      NoGradGuard no_grad;
      const double root = std::sqrt(s);
      B = (Bf / root).to(dt);
      A = (Af / root).to(dt);
      set_base_weight(sub(W0, matmul(B, A) * s));
      break;
    }
  }

  auto a_layer = std::make_shared<nn::Linear>(A, Tensor());
  auto b_layer = std::make_shared<nn::Linear>(B, Tensor());
  auto drop = std::make_shared<nn::Dropout>(opts.dropout, std::make_shared<Generator>(dropout_seed(opts.seed)));
  for (nn::Module* m : {static_cast<nn::Module*>(a_layer.get()), static_cast<nn::Module*>(b_layer.get()),
                        static_cast<nn::Module*>(drop.get())})
    m->train(is_training());
  lora_dropout->insert(name, drop);
  lora_A->insert(name, a_layer);
  lora_B->insert(name, b_layer);
  adapters_.emplace_back(name, Adapter{opts, s});
  if (opts.use_dora) {
    // m starts at ||W0 + s B A||_row: the adapter starts as a no-op (for B = 0 and for PiSSA alike).
    auto mag = std::make_shared<DoraMagnitude>(dora_row_norm(name));
    mag->train(is_training());
    lora_magnitude_vector->insert(name, mag);
  }
  if (active_.empty()) active_ = name;
  set_trainable(active_);
}

void LoraLinear::delete_adapter(const std::string& name) {
  adapter(name, "delete_adapter");
  if (merged_adapter_ == name)
    throw ValueError("LoraLinear.delete_adapter: adapter '" + name + "' is merged into the base weight; unmerge() first");
  lora_dropout = lora_dropout->without(name);
  lora_A = lora_A->without(name);
  lora_B = lora_B->without(name);
  if (lora_magnitude_vector->contains(name)) lora_magnitude_vector = lora_magnitude_vector->without(name);
  adapters_.erase(std::find_if(adapters_.begin(), adapters_.end(), [&](const auto& kv) { return kv.first == name; }));
  if (active_ == name) {
    // As PEFT: the alphabetically first remaining adapter becomes active.
    std::vector<std::string> rest = adapter_names();
    std::sort(rest.begin(), rest.end());
    active_ = rest.empty() ? "" : rest.front();
  }
  if (!active_.empty()) set_trainable(active_);
}

void LoraLinear::set_adapter(const std::string& name) {
  adapter(name, "set_adapter");
  if (merged()) unmerge();  // PEFT: "Adapter cannot be set when the model is merged. Unmerging the model first."
  active_ = name;
  set_trainable(name);
}

void LoraLinear::set_trainable(const std::string& active) {
  for (const auto& kv : adapters_) {
    const bool on = kv.first == active;
    lora_A_weight(kv.first).requires_grad_(on);
    lora_B_weight(kv.first).requires_grad_(on);
    if (kv.second.opts.use_dora) magnitude(kv.first).requires_grad_(on);
  }
}

void LoraLinear::disable_adapters(bool disabled) {
  if (disabled && merged()) unmerge();
  disabled_ = disabled;
}

// ---- maths ----

Tensor LoraLinear::delta_weight(const std::string& name) const {
  adapter(name, "delta_weight");
  NoGradGuard no_grad;
  const Tensor& A = lora_A->get<nn::Linear>(name)->weight;  // (r, in)
  const Tensor& B = lora_B->get<nn::Linear>(name)->weight;  // (out, r)
  return (matmul(B, A) * scaling(name)).detach();           // (out, in), PEFT's (B @ A) * scaling
}

// Row-wise L2 norm of a dense W (out, in), accumulated in double (merge / unmerge).
static Tensor row_norms(const Tensor& W) {
  const int64_t rows = W.size(0), cols = W.size(1);
  std::vector<double> n(static_cast<size_t>(rows));
  dispatch_float(W.dtype(), "row_norms", [&](auto tag) {
    using T = decltype(tag);
    const T* w = W.data<T>();
    for (int64_t i = 0; i < rows; ++i) {
      double s = 0;
      for (int64_t j = 0; j < cols; ++j) s += double(w[i * cols + j]) * double(w[i * cols + j]);
      n[static_cast<size_t>(i)] = std::sqrt(s);
    }
  });
  return from_values(n, {rows}, W.dtype());
}

// The expansion is used where it keeps its accuracy: n_i^2 >= kCancel * (||W0_i||^2
// + s^2 ||(B A)_i||^2), i.e. at most a 16x loss to cancellation. Rows below
// (W0 and s B A nearly cancel) are recomputed directly, one row at a time.
static constexpr double kCancel = 1.0 / 16;

// n_i^2 = ||W0_i + s (B A)_i||^2 expanded (see the header):
//   ||W0_i||^2 + 2 s <W0_i, (B A)_i> + s^2 ||(B A)_i||^2
// with <W0_i, (B A)_i> = (W0 A^T)_i . B_i and ||(B A)_i||^2 = B_i (A A^T) B_i^T.
// Temporaries: (r, out), (r, r), (r, in) in float64 and vectors of out or in;
// nothing of size (out, in).
Tensor LoraLinear::dora_row_norm(const std::string& name) const {
  const double s = adapter(name, "dora_row_norm").scale;
  NoGradGuard no_grad;
  const Tensor A = lora_A->get<nn::Linear>(name)->weight.detach();  // (r, in)
  const Tensor B = lora_B->get<nn::Linear>(name)->weight.detach();  // (out, r)
  const int64_t r = A.size(0), in = in_features, out = out_features;
  const DType dt = B.dtype();  // the dtype of B A, as the dense formula had it

  const std::vector<double> Pt = base_matmul(A).to_vector();  // (r, out) = (W0 A^T)^T: one GEMM
  const Tensor A64 = as_dtype(A, DType::f64);                  // (r, in)
  const std::vector<double> G = matmul_nt(A64, A64).to_vector();  // (r, r) = A A^T, float64
  const std::vector<double> Bv = B.to_vector();                   // (out, r)
  const std::shared_ptr<const std::vector<double>> c = base_row_sq_norms();

  std::vector<double> n(static_cast<size_t>(out));
  std::vector<int64_t> cancelling;  // rows to recompute directly
  for (int64_t i = 0; i < out; ++i) {
    const double* b = Bv.data() + i * r;
    double cross = 0, quad = 0;  // (W0 A^T)_i . B_i and B_i G B_i^T
    for (int64_t k = 0; k < r; ++k) {
      cross += Pt[static_cast<size_t>(k * out + i)] * b[k];
      double gb = 0;
      for (int64_t l = 0; l < r; ++l) gb += G[static_cast<size_t>(k * r + l)] * b[l];
      quad += b[k] * gb;
    }
    const double ci = (*c)[static_cast<size_t>(i)];
    const double n2 = ci + 2 * s * cross + s * s * quad;
    if (n2 < kCancel * (ci + s * s * quad)) cancelling.push_back(i);
    n[static_cast<size_t>(i)] = std::sqrt(std::max(n2, 0.0));  // round-off can leave a tiny negative
  }
  if (!cancelling.empty()) {
    // n_i = ||W0_i + s B_i A|| summed element by element, in float64.
    const double* a = A64.data<double>();
    std::vector<double> row(static_cast<size_t>(in));  // (in)
    for (int64_t i : cancelling) {
      base_layer->weight_rows_f64(i, 1, row.data());
      const double* b = Bv.data() + i * r;
      for (int64_t k = 0; k < r; ++k) {
        const double sb = s * b[k];
        const double* ak = a + k * in;
        for (int64_t j = 0; j < in; ++j) row[static_cast<size_t>(j)] += sb * ak[j];
      }
      double acc = 0;
      for (double v : row) acc += v * v;
      n[static_cast<size_t>(i)] = std::sqrt(acc);
    }
  }
  return from_values(n, {out}, dt);  // (out), constant in backward
}

Tensor LoraLinear::forward(const Tensor& x) {
  if (disabled_ || active_.empty() || merged()) return base_layer->forward(x);
  const Adapter& ad = adapter(active_, "forward");
  const double s = ad.scale;
  const Tensor& A = lora_A->get<nn::Linear>(active_)->weight;  // (r, in)
  const Tensor& B = lora_B->get<nn::Linear>(active_)->weight;  // (out, r)
  nn::Dropout& drop = *lora_dropout->get<nn::Dropout>(active_);
  const bool dropping = drop.is_training() && drop.p > 0;

  const Tensor xd = dropping ? drop.forward(x) : x;  // (..., in)
  // LoRA: W0 x + b + s B (A x_d) as one op where the base storage has one
  // (lora_linear): the GEMM accumulates the adapter term into the base output.
  if (!ad.opts.use_dora) return base_layer->forward_with_lora(x, dropping ? xd : Tensor(), A, B, s);

  Tensor y = base_layer->forward(x);             // (..., out) = W0 x + b
  const Tensor lora = linear(linear(xd, A), B);  // (..., out) = B (A x_d); B A is never formed

  // DoRA. n is recomputed from the current W0, A, B each call but detached, so
  // no gradient reaches W0, A or B through it (PEFT: weight_norm.detach()).
  // Everything else uses the LIVE base weight and bias, as PEFT does, so a
  // trainable base gets PEFT's gradients: with base(x) - b the bias cancels
  // (db = g, not (m/n) g), and under dropout W0 x_d carries dW0.
  const Tensor& m = lora_magnitude_vector->get<DoraMagnitude>(active_)->weight;  // (out)
  const Tensor mn = div(m, dora_row_norm(active_));                               // (out), m / n
  Tensor base_result;                                                             // (..., out) = W0 x_d
  if (!dropping) {
    const Tensor& b = base_layer->bias;  // live, not detached
    base_result = b.defined() ? sub(y, b) : y;  // reuse base(x): W0 x = base(x) - b
  } else {
    base_result = base_matmul(xd);  // W0 x_d (NF4: from the codes, no dense copy)
  }
  const Tensor dora = (mn - 1.0) * base_result + (mn * lora) * s;  // PEFT's order of operations
  return add(y, dora);
}

// ---- merge ----

void LoraLinear::merge() {
  if (merged() || active_.empty()) return;
  const Adapter& ad = adapter(active_, "merge");
  NoGradGuard no_grad;
  const Tensor delta = delta_weight(active_);                    // (out, in)
  const Tensor W0 = as_dtype(base_weight(), delta.dtype());
  if (!ad.opts.use_dora) {
    set_base_weight(add(W0, delta));
  } else {
    const Tensor W = add(W0, delta);
    merged_dora_norm_ = row_norms(W);                                       // (out)
    const Tensor factor = div(magnitude(active_).detach(), merged_dora_norm_);  // (out)
    set_base_weight(mul(reshape(factor, {out_features, 1}), W));
  }
  merged_adapter_ = active_;
}

void LoraLinear::unmerge() {
  if (!merged()) return;
  const Adapter& ad = adapter(merged_adapter_, "unmerge");
  NoGradGuard no_grad;
  const Tensor delta = delta_weight(merged_adapter_);
  const Tensor W = as_dtype(base_weight(), delta.dtype());
  if (!ad.opts.use_dora) {
    set_base_weight(sub(W, delta));
  } else {
    const Tensor factor = div(magnitude(merged_adapter_).detach(), merged_dora_norm_);
    set_base_weight(sub(div(W, reshape(factor, {out_features, 1})), delta));
    merged_dora_norm_ = Tensor();
  }
  merged_adapter_.clear();
}

// ---- sizes ----

size_t LoraLinear::adapter_bytes(const std::string& name) const {
  const Adapter& ad = adapter(name, "adapter_bytes");
  size_t bytes = lora_A->get<nn::Linear>(name)->weight.nbytes() + lora_B->get<nn::Linear>(name)->weight.nbytes();
  if (ad.opts.use_dora) bytes += lora_magnitude_vector->get<DoraMagnitude>(name)->weight.nbytes();
  return bytes;
}

size_t LoraLinear::adapter_bytes() const {
  size_t bytes = 0;
  for (const auto& kv : adapters_) bytes += adapter_bytes(kv.first);
  return bytes;
}

}  // namespace loragrad::lora

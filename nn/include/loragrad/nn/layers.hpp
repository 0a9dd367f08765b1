#pragma once
// The basic layers: Linear, Embedding, LayerNorm, Dropout, and ModuleList.
// Parameters are public members named as in PyTorch (weight, bias), so a
// wrapper (LoRA) or a test can read them directly.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "loragrad/generator.hpp"
#include "loragrad/nn/linear_base.hpp"
#include "loragrad/nn/module.hpp"

namespace loragrad::nn {

// y = x W^T + b. weight (out, in), bias (out); the dense storage of
// LinearBase (in_features, out_features and bias live there).
class Linear : public LinearBase {
 public:
  // PyTorch's default init: kaiming_uniform(a = sqrt(5)) is U(-1/sqrt(in), 1/sqrt(in)),
  // and the same bound for the bias.
  Linear(int64_t in_features, int64_t out_features, bool bias, Generator& gen, DType dt = DType::f32);
  // Adopts given tensors (made leaves requiring grad); bias may be undefined.
  Linear(Tensor weight, Tensor bias);

  Tensor forward(const Tensor& x) override;  // (..., in) -> (..., out)
  std::string type_name() const override { return "Linear"; }
  std::string extra_repr() const override;
  bool has_bias() const { return bias.defined(); }

  // ---- LinearBase: W is `weight` itself ----
  Tensor forward_no_bias(const Tensor& x) const override;  // the live weight, cast to x's dtype
  Tensor forward_with_lora(const Tensor& x, const Tensor& x_lora, const Tensor& a, const Tensor& b,
                           double scale) override;  // lora_linear on the live weight
  std::string storage() const override;                    // the weight's dtype: "f32" or "f64"
  bool quantized() const override { return false; }
  size_t weight_bytes() const override { return weight.nbytes(); }
  Tensor dense_weight() const override { return weight.detach(); }  // no copy
  void weight_rows_f64(int64_t row0, int64_t nrows, double* out) const override;
  void set_weight(const Tensor& w) override;  // weight.copy_(w), in place
  WeightVersion weight_version() const override;

  Tensor weight;  // (out, in)
};

// Rows of weight picked by i64 ids: idx (...) -> (..., dim).
class Embedding : public Module {
 public:
  Embedding(int64_t num_embeddings, int64_t embedding_dim, Generator& gen, DType dt = DType::f32);  // N(0, 1)
  Tensor forward(const Tensor& idx) override;
  std::string type_name() const override { return "Embedding"; }
  std::string extra_repr() const override;

  int64_t num_embeddings, embedding_dim;
  Tensor weight;  // (num, dim)
};

// Over the last dim, biased variance, affine (weight ones, bias zeros).
class LayerNorm : public Module {
 public:
  explicit LayerNorm(int64_t dim, double eps = 1e-5, DType dt = DType::f32);
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "LayerNorm"; }
  std::string extra_repr() const override;

  int64_t dim;
  double eps;
  Tensor weight;  // (dim)
  Tensor bias;    // (dim)
};

// Inverted dropout in training mode, identity in eval mode. The mask comes
// from a Generator that several Dropout modules of one model may share, so a
// seeded model drops the same units on every run.
class Dropout : public Module {
 public:
  explicit Dropout(double p, uint64_t seed = 0);
  Dropout(double p, std::shared_ptr<Generator> gen);
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "Dropout"; }
  std::string extra_repr() const override;

  double p;
  std::shared_ptr<Generator> gen;
};

// An ordered list of child modules named "0", "1", ... (no forward of its own).
class ModuleList : public Module {
 public:
  ModuleList() = default;
  void push_back(ModulePtr m);
  size_t size() const { return items_.size(); }
  // The module now in slot i (replace_module("blocks.1", ...) changes it).
  const ModulePtr& operator[](size_t i) const { return items_.at(i); }
  const std::vector<ModulePtr>& items() const { return items_; }
  std::string type_name() const override { return "ModuleList"; }

 private:
  std::vector<ModulePtr> items_;
};

// PEFT's nn.ModuleDict: child modules keyed by name, in insertion order.
class ModuleDict : public Module {
 public:
  ModuleDict() = default;
  // key: new, non-empty, without '.'. Throws ValueError otherwise.
  void insert(const std::string& key, ModulePtr m);
  bool contains(const std::string& key) const;
  // Throws ValueError naming the key and the keys that exist.
  const ModulePtr& at(const std::string& key) const;
  template <class M>
  std::shared_ptr<M> get(const std::string& key) const {
    return std::dynamic_pointer_cast<M>(at(key));
  }
  std::vector<std::string> keys() const;
  size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }
  // A new dict holding every entry but `key` (a Module cannot unregister a
  // child, so removing means rebuilding the container). Keeps the train flag.
  std::shared_ptr<ModuleDict> without(const std::string& key) const;
  std::string type_name() const override { return "ModuleDict"; }

 private:
  std::vector<std::pair<std::string, ModulePtr>> items_;
};

}  // namespace loragrad::nn

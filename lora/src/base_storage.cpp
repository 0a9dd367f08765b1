// The table of base-layer storages (see loragrad/lora/base_storage.hpp).
#include "loragrad/lora/base_storage.hpp"

#include <functional>

#include "loragrad/error.hpp"

namespace loragrad::lora {

namespace {

using Factory = std::function<std::shared_ptr<nn::LinearBase>(const Tensor& weight, const Tensor& bias,
                                                              const BaseStorageOptions& opts)>;

// A dense nn::Linear of dtype dt holding copies of weight and bias.
std::shared_ptr<nn::LinearBase> make_dense(const Tensor& weight, const Tensor& bias, DType dt) {
  check_defined(weight, "make_base");
  check_floating(weight, "make_base");
  const Tensor w = weight.detach().to(dt);  // to() copies, also within one dtype
  return std::make_shared<nn::Linear>(w, bias.defined() ? bias.detach().to(dt) : Tensor());
}

struct Entry {
  const char* name;
  Factory make;
};

// One line per storage.
const std::vector<Entry>& table() {
  static const std::vector<Entry> entries = {
      {"f32", [](const Tensor& w, const Tensor& b, const BaseStorageOptions&) { return make_dense(w, b, DType::f32); }},
      {"f64", [](const Tensor& w, const Tensor& b, const BaseStorageOptions&) { return make_dense(w, b, DType::f64); }},
      {"nf4", [](const Tensor& w, const Tensor& b, const BaseStorageOptions& o) {
         return make_nf4_linear(w, b, o.blocksize, o.double_quant);
       }},
      {"bf16", [](const Tensor& w, const Tensor& b, const BaseStorageOptions&) { return make_bf16_linear(w, b); }},
  };
  return entries;
}

}  // namespace

std::vector<std::string> base_storages() {
  std::vector<std::string> names;
  for (const Entry& e : table()) names.push_back(e.name);
  return names;
}

std::shared_ptr<nn::LinearBase> make_base(const std::string& storage, const Tensor& weight, const Tensor& bias,
                                          const BaseStorageOptions& opts) {
  for (const Entry& e : table())
    if (storage == e.name) return e.make(weight, bias, opts);
  throw ValueError("make_base: unknown base storage '" + storage + "'; known storages: " +
                   quoted_list(base_storages()));
}

std::shared_ptr<nn::LinearBase> quantize_base(const std::string& storage, const nn::Linear& linear,
                                              const BaseStorageOptions& opts) {
  auto base = make_base(storage, linear.weight, linear.bias, opts);
  base->train(linear.is_training());
  return base;
}

}  // namespace loragrad::lora

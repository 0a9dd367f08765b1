// TinyGPT checkpoints: one safetensors file with the spec's parameter names
// and the hyper-parameters as string metadata.
#include <string>

#include "loragrad/autograd.hpp"
#include "loragrad/nn/tiny_gpt.hpp"

namespace loragrad::nn {

void TinyGPT::save(const std::string& path, DType on_disk) const {
  if (!is_floating(on_disk))
    throw DTypeError("TinyGPT.save: " + path + ": parameters are written as float32 or float64, not " +
                     dtype_name(on_disk));
  NoGradGuard no_grad;
  NamedTensors tensors = state_dict();
  for (auto& [name, t] : tensors)
    if (is_floating(t.dtype()) && t.dtype() != on_disk) t = t.to(on_disk);
  save_safetensors(path, tensors, config_.to_metadata());
}

// The checkpoint's hyper-parameters must equal ours; those it does not record
// are left to the shape checks of load_state_dict.
static void check_hyper_parameters(const SafetensorsFile& file, const TinyGPTConfig& ours) {
  const Metadata mine = ours.to_metadata();
  std::string diffs;
  for (const auto& [key, value] : mine) {
    auto it = file.metadata.find(key);
    if (it == file.metadata.end() || it->second == value) continue;
    diffs += (diffs.empty() ? "" : "; ") + key + ": checkpoint " + it->second + ", model " + value;
  }
  if (!diffs.empty()) throw IOError(file.path + ": checkpoint does not fit this TinyGPT: " + diffs);
}

static void load_into(TinyGPT& model, const SafetensorsFile& file) {
  check_hyper_parameters(file, model.config());
  try {
    model.load_state_dict(file.tensors, /*strict=*/true);
  } catch (const ValueError& e) {
    throw IOError(file.path + ": " + e.what());
  }
}

void TinyGPT::load_weights(const std::string& path) { load_into(*this, load_safetensors(path)); }

std::shared_ptr<TinyGPT> TinyGPT::load(const std::string& path, DType dt, double dropout) {
  SafetensorsFile file = load_safetensors(path);
  TinyGPTConfig config = TinyGPTConfig::from_metadata(file.metadata, path);
  config.dtype = dt;
  config.dropout = dropout;
  auto model = std::make_shared<TinyGPT>(config);
  load_into(*model, file);
  return model;
}

}  // namespace loragrad::nn

// TinyGPT checkpoints: one safetensors file with the spec's parameter names
// and the hyper-parameters as string metadata.
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <vector>

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
  require_finite(tensors, "TinyGPT.save: " + path);  // a file that load would refuse is never written
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

// The metadata must describe the tensors actually in the file, and this is
// checked before the model is built: the metadata alone could ask for
// terabytes (d_model 4,000,000 or n_layer 1e8 in a 48 KB file). Extra tensors
// are left to load_state_dict, which names them.
static void check_tensors_match_metadata(const SafetensorsFile& file, const TinyGPTConfig& c) {
  constexpr int64_t kTensorsPerBlock = 16, kTensorsOutside = 5;
  const int64_t have = static_cast<int64_t>(file.tensors.size());
  const std::string described = "(vocab_size " + std::to_string(c.vocab_size) + ", block_size " +
                                std::to_string(c.block_size) + ", d_model " + std::to_string(c.d_model) +
                                ", n_layer " + std::to_string(c.n_layer) + ", d_ff " + std::to_string(c.ffn_width()) +
                                ")";
  if (c.n_layer > (have - kTensorsOutside) / kTensorsPerBlock)
    throw IOError(file.path + ": __metadata__ n_layer " + std::to_string(c.n_layer) + " needs " +
                  std::to_string(kTensorsPerBlock) + " * n_layer + " + std::to_string(kTensorsOutside) +
                  " tensors but the file holds " + std::to_string(have));
  std::map<std::string, const Tensor*> by_name;
  for (const auto& [name, t] : file.tensors) by_name[name] = &t;
  std::vector<std::string> missing, unexpected, wrong;
  std::set<std::string> expected;
  for (const auto& [name, shape] : c.parameter_shapes()) {
    expected.insert(name);
    auto it = by_name.find(name);
    if (it == by_name.end()) missing.push_back(name);
    else if (it->second->shape() != shape)
      wrong.push_back(name + " is " + shape_str(it->second->shape()) + " in the file, " + shape_str(shape) +
                      " by the metadata");
  }
  for (const auto& [name, t] : file.tensors)
    if (!expected.count(name)) unexpected.push_back(printable(name));
  if (missing.empty() && wrong.empty()) return;  // extra tensors: load_state_dict names them
  auto list = [](const std::vector<std::string>& v) {
    std::string s;
    for (size_t i = 0; i < v.size() && i < 5; ++i) s += (i ? ", " : "") + v[i];
    return v.size() > 5 ? s + " and " + std::to_string(v.size() - 5) + " more" : s;
  };
  std::string msg = file.path + ": the tensors do not match __metadata__ " + described + ":";
  if (!wrong.empty()) msg += " " + list(wrong) + ";";
  if (!missing.empty()) msg += " missing: " + list(missing) + ";";
  if (!unexpected.empty()) msg += " unexpected: " + list(unexpected) + ";";
  msg.pop_back();
  throw IOError(msg);
}

static void load_into(TinyGPT& model, const SafetensorsFile& file) {
  check_hyper_parameters(file, model.config());
  file.require_finite(model.config().dtype);
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
  check_tensors_match_metadata(file, config);
  config.dtype = dt;
  config.dropout = dropout;
  auto model = std::make_shared<TinyGPT>(config);
  load_into(*model, file);
  return model;
}

std::string fingerprint(const NamedTensors& tensors) {
  uint64_t h = 1469598103934665603ULL;  // FNV-1a, 64 bits
  auto mix = [&h](const void* p, size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ULL;
  };
  for (const auto& [name, t] : tensors) {
    mix(name.data(), name.size() + 1);  // with the terminating NUL: names cannot run together
    const char* dt = dtype_name(t.dtype());
    mix(dt, std::char_traits<char>::length(dt));
    for (int64_t d : t.shape()) mix(&d, sizeof d);
    mix(t.raw_data(), t.nbytes());
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "fnv1a64:%016llx", static_cast<unsigned long long>(h));
  return buf;
}

}  // namespace loragrad::nn

// PEFT adapter directories: adapter_config.json and adapter_model.safetensors.
#include "loragrad/lora/peft_io.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "loragrad/autograd.hpp"
#include "loragrad/files.hpp"
#include "loragrad/json_sax.hpp"

namespace loragrad::lora {

namespace fs = std::filesystem;
using json = nlohmann::json;

static const char* kConfigFile = "adapter_config.json";
static const char* kWeightsFile = "adapter_model.safetensors";
static const char* kPrefix = "base_model.model.";
// The PEFT release whose file layout this follows.
static const char* kPeftVersion = "0.21.0";

// ============================ writing the config ============================

// 8.0 -> 8 (PEFT writes integer alphas as integers), 0.5 -> 0.5.
static json number(double v) {
  if (std::isfinite(v) && v == std::floor(v) && std::abs(v) < 9e15) return json(static_cast<int64_t>(v));
  return json(v);
}

static json names_or_regex(const std::vector<std::string>& names, bool regex) {
  if (names.empty()) return nullptr;
  if (regex) return names[0];
  return json(names);
}

std::string adapter_config_json(const LoraConfig& cfg, const std::string& base_model_class) {
  json j = json::object();  // std::map underneath: keys come out sorted, as PEFT's sort_keys=True
  // Keys PEFT 0.21 writes that loragrad leaves at their defaults.
  for (const char* k : {"alora_invocation_tokens", "arrow_config", "corda_config", "eva_config", "kasa_config",
                        "layer_replication", "layers_pattern", "layers_to_transform", "lora_ga_config",
                        "megatron_config", "monteclora_config", "revision", "target_parameters",
                        "trainable_token_indices", "use_bdlora", "velora_config"})
    j[k] = nullptr;
  j["ensure_weight_tying"] = false;
  j["loftq_config"] = json::object();
  j["lora_bias"] = false;
  j["megatron_core"] = "megatron.core";
  j["qalora_group_size"] = 16;
  j["use_qalora"] = false;
  j["inference_mode"] = true;  // as in every saved PEFT file
  j["peft_type"] = "LORA";
  j["peft_version"] = kPeftVersion;
  // What loragrad does use.
  j["auto_mapping"] = base_model_class.empty()
                          ? json(nullptr)
                          : json{{"base_model_class", base_model_class}, {"parent_library", "loragrad"}};
  j["base_model_name_or_path"] = cfg.base_model_name_or_path.empty() ? json(nullptr) : json(cfg.base_model_name_or_path);
  j["task_type"] = cfg.task_type.empty() ? json(nullptr) : json(cfg.task_type);
  j["bias"] = cfg.bias;
  j["fan_in_fan_out"] = cfg.fan_in_fan_out;
  j["r"] = cfg.r;
  j["lora_alpha"] = number(cfg.lora_alpha);
  j["lora_dropout"] = cfg.lora_dropout;
  j["use_rslora"] = cfg.use_rslora;
  j["use_dora"] = cfg.use_dora;
  switch (cfg.init_lora_weights) {
    case LoraInit::standard: j["init_lora_weights"] = true; break;
    case LoraInit::random: j["init_lora_weights"] = false; break;
    case LoraInit::gaussian: j["init_lora_weights"] = "gaussian"; break;
    case LoraInit::pissa: j["init_lora_weights"] = "pissa"; break;
  }
  j["target_modules"] = names_or_regex(cfg.target_modules, cfg.target_regex);
  j["exclude_modules"] = names_or_regex(cfg.exclude_modules, cfg.exclude_regex);
  j["modules_to_save"] = cfg.modules_to_save.empty() ? json(nullptr) : json(cfg.modules_to_save);
  j["rank_pattern"] = json::object();
  for (const auto& [k, v] : cfg.rank_pattern) j["rank_pattern"][k] = v;
  j["alpha_pattern"] = json::object();
  for (const auto& [k, v] : cfg.alpha_pattern) j["alpha_pattern"][k] = number(v);
  if (cfg.qlora) j["loragrad_qlora"] = true;
  if (!cfg.base_fingerprint.empty()) j["loragrad_base_fingerprint"] = cfg.base_fingerprint;
  return j.dump(2, ' ', /*ensure_ascii=*/true);  // Python's json.dumps escapes non-ASCII too
}

// ============================ reading the config ============================

namespace {

// Finds which key a JSON error belongs to: nlohmann's own messages name only
// a byte position ("number overflow parsing '1e400'"), so a SAX pass keeps
// the path of keys down to where the parser stopped.
struct KeyTracker : JsonSaxBase {
  std::vector<std::string> path;  // one entry per open object: its current key

  std::string where() const {
    std::string w;
    for (const auto& k : path)
      if (!k.empty()) w += (w.empty() ? "" : ".") + k;
    return w;
  }
  bool start_object(std::size_t) override { path.emplace_back(); return true; }
  bool end_object() override { path.pop_back(); return true; }
  bool key(string_t& k) override { path.back() = k; return true; }
};

// Reads one key of a parsed config, with errors that name the file and key.
class ConfigReader {
 public:
  ConfigReader(const json& j, std::string source) : j_(j), source_(std::move(source)) {}

  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw IOError("adapter config " + source_ + ": key '" + printable(key) + "': " + printable(what));
  }
  [[noreturn]] void wrong(const std::string& key, const std::string& expected) const {
    fail(key, "expected " + expected + ", got " + j_.at(key).dump());
  }
  // null and absent read the same: PEFT writes defaults as null.
  bool has(const std::string& key) const { return j_.contains(key) && !j_.at(key).is_null(); }
  const json& at(const std::string& key) const { return j_.at(key); }

  void require(const std::string& key) const {
    if (!has(key)) fail(key, j_.contains(key) ? "is null, and loragrad needs a value" : "is missing");
  }
  bool boolean(const std::string& key, bool fallback) const {
    if (!has(key)) return fallback;
    if (!at(key).is_boolean()) wrong(key, "true or false");
    return at(key).get<bool>();
  }
  double number(const std::string& key, double fallback) const {
    if (!has(key)) return fallback;
    if (!at(key).is_number()) wrong(key, "a number");
    return at(key).get<double>();
  }
  int64_t integer(const std::string& key, int64_t fallback) const {
    if (!has(key)) return fallback;
    if (!at(key).is_number_integer()) wrong(key, "an integer");
    return at(key).get<int64_t>();
  }
  std::string string(const std::string& key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    if (!at(key).is_string()) wrong(key, "a string");
    return at(key).get<std::string>();
  }
  // A list of strings, or one string (then *regex = true).
  std::vector<std::string> names(const std::string& key, bool* regex) const {
    *regex = false;
    if (!has(key)) return {};
    const json& v = at(key);
    if (v.is_string()) {
      *regex = true;
      return {v.get<std::string>()};
    }
    if (!v.is_array()) wrong(key, "a list of module names or a regex string");
    std::vector<std::string> out;
    for (const json& e : v) {
      if (!e.is_string()) wrong(key, "a list of strings");
      out.push_back(e.get<std::string>());
    }
    return out;
  }
  // Settings that change the model in ways loragrad does not implement must
  // be at their PEFT default (null, false, or empty).
  void unsupported_unless_default(const std::string& key) const {
    if (!has(key)) return;
    const json& v = at(key);
    const bool is_default = (v.is_boolean() && !v.get<bool>()) || (v.is_array() && v.empty()) ||
                            (v.is_object() && v.empty());
    if (!is_default) fail(key, "value " + v.dump() + " is not supported by loragrad (only null / false)");
  }

 private:
  const json& j_;
  std::string source_;
};

}  // namespace

LoraConfig parse_adapter_config(const std::string& json_text, const std::string& source) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception&) {
    KeyTracker tracker;
    json::sax_parse(json_text, &tracker);
    const std::string key = tracker.where();
    throw IOError("adapter config " + source + ": invalid JSON" + (key.empty() ? "" : " at key '" + printable(key) + "'") +
                  ": " + printable(tracker.error));
  }
  if (!j.is_object()) throw IOError("adapter config " + source + ": expected a JSON object, got " + j.type_name());
  const ConfigReader c(j, source);

  c.require("peft_type");
  if (c.string("peft_type", "") != "LORA")
    c.fail("peft_type", "expected \"LORA\", got " + c.at("peft_type").dump() + " (only LoRA adapters are supported)");
  LoraConfig cfg;
  cfg.r = c.integer("r", 8);
  if (cfg.r <= 0) c.wrong("r", "a positive integer");
  cfg.lora_alpha = c.number("lora_alpha", 8);
  if (!(cfg.lora_alpha > 0)) c.wrong("lora_alpha", "a positive number");
  cfg.lora_dropout = c.number("lora_dropout", 0.0);
  if (!(cfg.lora_dropout >= 0 && cfg.lora_dropout < 1)) c.wrong("lora_dropout", "a number in [0, 1)");
  c.require("target_modules");
  cfg.target_modules = c.names("target_modules", &cfg.target_regex);
  if (cfg.target_modules.empty()) c.wrong("target_modules", "at least one module name");
  cfg.exclude_modules = c.names("exclude_modules", &cfg.exclude_regex);
  cfg.use_rslora = c.boolean("use_rslora", false);
  cfg.use_dora = c.boolean("use_dora", false);

  if (c.has("init_lora_weights")) {
    const json& v = c.at("init_lora_weights");
    if (v.is_boolean()) {
      cfg.init_lora_weights = v.get<bool>() ? LoraInit::standard : LoraInit::random;
    } else if (v.is_string() && v.get<std::string>() == "gaussian") {
      cfg.init_lora_weights = LoraInit::gaussian;
    } else if (v.is_string() && v.get<std::string>() == "pissa") {
      cfg.init_lora_weights = LoraInit::pissa;
    } else if (v.is_string()) {
      c.fail("init_lora_weights", "value " + v.dump() + " is not supported (true, false, \"gaussian\", \"pissa\")");
    } else {
      c.wrong("init_lora_weights", "true, false or a string");
    }
  }
  for (const char* key : {"rank_pattern", "alpha_pattern"}) {
    if (!c.has(key)) continue;
    if (!c.at(key).is_object()) c.wrong(key, "an object {regex: value}");
    for (const auto& [k, v] : c.at(key).items()) {
      if (std::string(key) == "rank_pattern") {
        if (!v.is_number_integer() || v.get<int64_t>() <= 0)
          c.fail(key, "entry '" + k + "': expected a positive integer, got " + v.dump());
        cfg.rank_pattern.push_back({k, v.get<int64_t>()});
      } else {
        if (!v.is_number() || !(v.get<double>() > 0))
          c.fail(key, "entry '" + k + "': expected a positive number, got " + v.dump());
        cfg.alpha_pattern.push_back({k, v.get<double>()});
      }
    }
  }
  if (c.has("modules_to_save")) {
    bool regex = false;
    cfg.modules_to_save = c.names("modules_to_save", &regex);
    if (regex) c.wrong("modules_to_save", "a list of module names");
  }
  cfg.bias = c.string("bias", "none");
  if (cfg.bias != "none") c.fail("bias", "\"" + cfg.bias + "\" is not supported (only \"none\")");
  cfg.fan_in_fan_out = c.boolean("fan_in_fan_out", false);
  if (cfg.fan_in_fan_out) c.fail("fan_in_fan_out", "true is not supported (loragrad weights are (out, in))");
  for (const char* key : {"layers_to_transform", "layer_replication", "target_parameters", "trainable_token_indices",
                          "alora_invocation_tokens", "arrow_config", "use_bdlora", "monteclora_config",
                          "velora_config", "kasa_config", "use_qalora", "lora_bias"})
    c.unsupported_unless_default(key);
  cfg.base_model_name_or_path = c.string("base_model_name_or_path", "");
  cfg.task_type = c.string("task_type", "");
  cfg.base_fingerprint = c.string("loragrad_base_fingerprint", "");
  cfg.qlora = c.boolean("loragrad_qlora", false);
  try {
    cfg.validate();
  } catch (const ValueError& e) {
    throw IOError("adapter config " + source + ": " + e.what());
  }
  return cfg;
}

static std::string read_text(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) throw IOError(path + " is a directory, not a file");
  if (!fs::exists(path, ec)) throw IOError(path + ": no such file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IOError("cannot open " + path + " for reading");
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw IOError("error reading " + path);
  return ss.str();
}

LoraConfig read_adapter_config(const std::string& path) { return parse_adapter_config(read_text(path), path); }

void write_adapter_config(const std::string& path, const LoraConfig& cfg, const std::string& base_model_class) {
  write_file_atomically(path, adapter_config_json(cfg, base_model_class), "write_adapter_config");
}

// ============================ the config of a model's adapter ============================

static std::string regex_escape(const std::string& s) {
  std::string out;
  for (char ch : s) {
    if (std::string(".^$|()[]{}*+?\\").find(ch) != std::string::npos) out += '\\';
    out += ch;
  }
  return out;
}

// The value most layers use (ties: the first seen).
template <class T>
static T most_common(const std::vector<T>& values) {
  std::vector<std::pair<T, int>> counts;
  for (const T& v : values) {
    auto it = std::find_if(counts.begin(), counts.end(), [&](const auto& c) { return c.first == v; });
    if (it == counts.end()) counts.push_back({v, 1});
    else ++it->second;
  }
  auto best = counts.begin();
  for (auto it = counts.begin(); it != counts.end(); ++it)
    if (it->second > best->second) best = it;
  return best->first;
}

static std::string leaf_name(const std::string& path) {
  const size_t dot = path.rfind('.');
  return dot == std::string::npos ? path : path.substr(dot + 1);
}

// Parameters outside every LoRA layer (adapters and bases of LoRA layers excluded).
static std::set<const TensorImpl*> lora_owned(const nn::Module& model) {
  std::set<const TensorImpl*> owned;
  for (const auto& [path, layer] : lora_layers(model))
    for (const Tensor& p : layer->parameters()) owned.insert(p.impl());
  return owned;
}

LoraConfig adapter_config(const nn::Module& model, const std::string& adapter) {
  const std::string where = "adapter_config('" + adapter + "')";
  std::vector<std::pair<std::string, std::shared_ptr<LoraLinear>>> layers;
  for (const auto& pl : lora_layers(model))
    if (pl.second->has_adapter(adapter)) layers.push_back(pl);
  if (layers.empty()) throw ValueError(where + ": no LoRA layer has an adapter called '" + adapter + "'");

  const LoraOptions& first = layers[0].second->adapter_options(adapter);
  std::vector<int64_t> ranks;
  std::vector<double> alphas;
  bool all_nf4 = true;
  for (const auto& [path, layer] : layers) {
    const LoraOptions& o = layer->adapter_options(adapter);
    if (o.dropout != first.dropout || o.use_rslora != first.use_rslora || o.use_dora != first.use_dora ||
        o.init != first.init)
      throw ValueError(where + ": layers '" + layers[0].first + "' and '" + path +
                       "' differ in dropout, rsLoRA, DoRA or init, which one adapter_config.json cannot express");
    ranks.push_back(o.r);
    alphas.push_back(o.alpha);
    all_nf4 &= layer->base_is_nf4();
  }
  LoraConfig cfg;
  cfg.r = most_common(ranks);
  cfg.lora_alpha = most_common(alphas);
  cfg.lora_dropout = first.dropout;
  cfg.use_rslora = first.use_rslora;
  cfg.use_dora = first.use_dora;
  cfg.init_lora_weights = first.init;
  cfg.qlora = all_nf4;
  std::set<std::string> adapted;
  for (size_t i = 0; i < layers.size(); ++i) {
    adapted.insert(layers[i].first);
    if (ranks[i] != cfg.r) cfg.rank_pattern.push_back({regex_escape(layers[i].first), ranks[i]});
    if (alphas[i] != cfg.lora_alpha) cfg.alpha_pattern.push_back({regex_escape(layers[i].first), alphas[i]});
  }
  std::sort(cfg.rank_pattern.begin(), cfg.rank_pattern.end());
  std::sort(cfg.alpha_pattern.begin(), cfg.alpha_pattern.end());

  // A short name where it picks exactly the adapted modules, else full paths.
  std::set<std::string> targets;
  const nn::NamedModules candidates = target_candidates(model);
  for (const auto& [path, layer] : layers) {
    const std::string leaf = leaf_name(path);
    bool leaf_is_exact = true;
    for (const auto& [other, m] : candidates)
      if ((other == leaf || (other.size() > leaf.size() && other.compare(other.size() - leaf.size() - 1,
                                                                          leaf.size() + 1, "." + leaf) == 0)) &&
          !adapted.count(other))
        leaf_is_exact = false;
    targets.insert(leaf_is_exact ? leaf : path);
  }
  cfg.target_modules.assign(targets.begin(), targets.end());

  // modules_to_save: the modules that own trainable parameters outside LoRA layers.
  const std::set<const TensorImpl*> owned = lora_owned(model);
  std::vector<std::string> to_save;
  for (const auto& [name, p] : model.named_parameters()) {
    if (!p.requires_grad() || owned.count(p.impl())) continue;
    const size_t dot = name.rfind('.');
    if (dot == std::string::npos)
      throw ValueError(where + ": parameter '" + name + "' of the root module is trainable; PEFT can only save "
                       "trainable parameters of submodules (modules_to_save)");
    const std::string owner = name.substr(0, dot);
    if (std::find(to_save.begin(), to_save.end(), owner) == to_save.end()) to_save.push_back(owner);
  }
  cfg.modules_to_save = to_save;
  return cfg;
}

static bool is_linear_module(const nn::ModulePtr& m) {
  return std::dynamic_pointer_cast<nn::LinearBase>(m) || std::dynamic_pointer_cast<LoraLinear>(m);
}

static bool is_output_head(const std::string& path) {
  return path == "lm_head" || (path.size() > 8 && path.compare(path.size() - 8, 8, ".lm_head") == 0);
}

bool config_describes_adapter(const nn::Module& model, const LoraConfig& cfg, const std::string& adapter) {
  LoraConfig rebuilt;
  try {
    cfg.validate();
    rebuilt = adapter_config(model, adapter);
  } catch (const ValueError&) {
    return false;
  }
  if (cfg.qlora != rebuilt.qlora) return false;
  const bool all_linear = !cfg.target_regex && cfg.target_modules.size() == 1 && cfg.target_modules[0] == "all-linear";
  std::set<std::string> to_save;
  for (const auto& [path, m] : target_candidates(model)) {
    const bool target =
        (all_linear ? is_linear_module(m) && !is_output_head(path) : cfg.is_target(path)) && !cfg.is_excluded(path);
    auto layer = std::dynamic_pointer_cast<LoraLinear>(m);
    const bool holds = layer && layer->has_adapter(adapter);
    if (target != holds) return false;
    if (holds) {
      const LoraOptions want = cfg.options_for(path), &have = layer->adapter_options(adapter);
      if (want.r != have.r || want.alpha != have.alpha || want.dropout != have.dropout ||
          want.use_rslora != have.use_rslora || want.use_dora != have.use_dora || want.init != have.init)
        return false;
    }
    if (cfg.is_module_to_save(path)) to_save.insert(path);
  }
  return to_save == std::set<std::string>(rebuilt.modules_to_save.begin(), rebuilt.modules_to_save.end());
}

// The form of a requested config that goes into adapter_config.json (see AdapterProvenance).
static LoraConfig written_form(const LoraConfig& requested, const LoraConfig& rebuilt) {
  LoraConfig cfg = requested;
  if (!cfg.target_regex && cfg.target_modules.size() == 1 && cfg.target_modules[0] == "all-linear") {
    cfg.target_modules = rebuilt.target_modules;
    cfg.target_regex = false;
  }
  std::stable_sort(cfg.rank_pattern.begin(), cfg.rank_pattern.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  std::stable_sort(cfg.alpha_pattern.begin(), cfg.alpha_pattern.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  return cfg;
}

std::string adapter_subdir(const std::string& dir, const std::string& adapter) {
  return adapter == "default" ? dir : (fs::path(dir) / adapter).string();
}

// The tensors of modules_to_save paths, "<path>.<name>" -> tensor (LoRA layers' insides skipped).
static std::map<std::string, Tensor> modules_to_save_tensors(const nn::Module& model,
                                                             const std::vector<std::string>& paths) {
  const std::set<const TensorImpl*> owned = lora_owned(model);
  std::map<std::string, Tensor> out;
  for (const std::string& path : paths)
    for (const auto& [name, t] : model.get_submodule(path)->state_dict())
      if (!owned.count(t.impl())) out[path + "." + name] = t;
  return out;
}

NamedTensors adapter_state_dict(const nn::Module& model, const std::string& adapter) {
  const LoraConfig cfg = adapter_config(model, adapter);
  std::map<std::string, Tensor> out;  // sorted by name, as safetensors.torch writes them
  for (const auto& [path, layer] : lora_layers(model)) {
    if (!layer->has_adapter(adapter)) continue;
    out[kPrefix + path + ".lora_A.weight"] = layer->lora_A_weight(adapter).detach();
    out[kPrefix + path + ".lora_B.weight"] = layer->lora_B_weight(adapter).detach();
    if (layer->is_dora(adapter)) out[kPrefix + path + ".lora_magnitude_vector"] = layer->magnitude(adapter).detach();
  }
  for (const auto& [name, t] : modules_to_save_tensors(model, cfg.modules_to_save)) out[kPrefix + name] = t.detach();
  return NamedTensors(out.begin(), out.end());
}

// ============================ directories ============================

// The float dtype an adapter loaded into this model is stored in.
static DType model_dtype(const nn::Module& model) {
  for (const Tensor& p : model.parameters())
    if (is_floating(p.dtype())) return p.dtype();
  return DType::f32;
}

void save_adapter(const nn::Module& model, const std::string& dir, const std::string& adapter, bool overwrite,
                  const AdapterProvenance& provenance) {
  const std::string where = "save_adapter(" + dir + ")";
  const fs::path final_dir(dir);
  if (fs::exists(final_dir) && !overwrite)
    throw IOError(where + ": " + dir + " already exists (pass overwrite = true to replace it)");
  // Everything is computed before anything is written.
  LoraConfig cfg = adapter_config(model, adapter);
  if (provenance.requested) {
    LoraConfig given = written_form(*provenance.requested, cfg);
    if (config_describes_adapter(model, given, adapter)) cfg = std::move(given);
  }
  cfg.base_model_name_or_path = provenance.base_model_name_or_path;
  cfg.task_type = provenance.task_type;
  cfg.base_fingerprint = provenance.base_fingerprint;
  NamedTensors tensors = adapter_state_dict(model, adapter);
  {
    NoGradGuard no_grad;
    for (auto& [name, t] : tensors) t = t.to(DType::f32);
  }
  require_finite(tensors, where);  // a directory that load_adapter would refuse is never written
  // The whole directory is built under a temporary name, then swapped in:
  // at every instant `dir` holds the complete old or the complete new adapter.
  const fs::path tmp = temporary_path(final_dir.string());
  try {
    if (final_dir.has_parent_path()) fs::create_directories(final_dir.parent_path());
    remove_stale_temporaries(final_dir.string());
    fs::remove_all(tmp);
    fs::create_directory(tmp);
    write_adapter_config((tmp / kConfigFile).string(), cfg, model.type_name());
    save_safetensors((tmp / kWeightsFile).string(), tensors, {{"format", "pt"}});
    sync_directory(tmp.string());
    replace_directory(tmp.string(), final_dir.string(), where);
  } catch (const fs::filesystem_error& e) {
    std::error_code ignored;
    fs::remove_all(tmp, ignored);
    throw IOError(where + ": " + e.what());
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(tmp, ignored);
    throw;
  }
}

LoraReport load_adapter(nn::Module& model, const std::string& dir, const std::string& adapter, bool is_trainable) {
  const std::string config_path = (fs::path(dir) / kConfigFile).string();
  const std::string weights_path = (fs::path(dir) / kWeightsFile).string();
  refuse_temporary_path(dir, "load_adapter");
  if (!fs::is_directory(dir)) throw IOError("load_adapter: " + dir + " is not a directory");
  const LoraConfig cfg = read_adapter_config(config_path);
  const SafetensorsFile file = load_safetensors(weights_path);
  file.require_finite(model_dtype(model));

  // What the file must hold for this config on this model: name -> shape.
  LoraPlan plan;
  try {
    plan = plan_lora(model, cfg, adapter);
  } catch (const ValueError& e) {
    throw IOError("load_adapter: " + config_path + " does not fit this " + model.type_name() + ": " + e.what());
  }
  std::map<std::string, Shape> expected;
  for (const PlannedModule& t : plan.targets) {
    const std::string p = kPrefix + t.path;
    expected[p + ".lora_A.weight"] = {t.options.r, t.in_features};
    expected[p + ".lora_B.weight"] = {t.out_features, t.options.r};
    if (t.options.use_dora) expected[p + ".lora_magnitude_vector"] = {t.out_features};
  }
  for (const auto& [name, t] : modules_to_save_tensors(model, plan.modules_to_save)) expected[kPrefix + name] = t.shape();

  std::vector<std::string> missing, unexpected, mismatched;
  std::set<std::string> present;
  for (const auto& [name, t] : file.tensors) {
    present.insert(name);
    auto it = expected.find(name);
    if (it == expected.end()) unexpected.push_back(name);
    else if (t.shape() != it->second)
      mismatched.push_back(name + " (file " + shape_str(t.shape()) + ", model " + shape_str(it->second) + ")");
    else if (!is_floating(t.dtype()))
      mismatched.push_back(name + " (" + dtype_name(t.dtype()) + ", expected a float tensor)");
  }
  for (const auto& [name, shape] : expected)
    if (!present.count(name)) missing.push_back(name);
  if (!missing.empty() || !unexpected.empty() || !mismatched.empty()) {
    std::string msg = "load_adapter: " + weights_path + " does not fit the config's adapter on this " +
                      model.type_name() + ":";
    if (!missing.empty()) msg += " missing " + quoted_list(missing) + ";";
    if (!unexpected.empty()) msg += " unexpected " + quoted_list(unexpected) + ";";
    if (!mismatched.empty()) msg += " wrong shape or dtype " + quoted_list(mismatched) + ";";
    msg.pop_back();
    throw IOError(msg);
  }

  LoraReport rep = apply_lora(model, cfg, adapter);
  NoGradGuard no_grad;
  for (const PlannedModule& t : plan.targets) {
    auto layer = std::dynamic_pointer_cast<LoraLinear>(model.get_submodule(t.path));
    const std::string p = kPrefix + t.path;
    layer->lora_A_weight(adapter).copy_(file.at(p + ".lora_A.weight"));
    layer->lora_B_weight(adapter).copy_(file.at(p + ".lora_B.weight"));
    if (t.options.use_dora) layer->magnitude(adapter).copy_(file.at(p + ".lora_magnitude_vector"));
    if (!is_trainable) {
      layer->lora_A_weight(adapter).requires_grad_(false);
      layer->lora_B_weight(adapter).requires_grad_(false);
      if (t.options.use_dora) layer->magnitude(adapter).requires_grad_(false);
    }
  }
  for (auto& [name, t] : modules_to_save_tensors(model, plan.modules_to_save)) {
    Tensor dst = t;  // a detached handle sharing storage with the module's tensor
    dst.copy_(file.at(kPrefix + name));
  }
  if (!is_trainable) {
    const std::set<const TensorImpl*> owned = lora_owned(model);
    for (const std::string& path : plan.modules_to_save)
      for (Tensor& q : model.get_submodule(path)->parameters())
        if (!owned.count(q.impl())) q.requires_grad_(false);
    rep.trainable_params = model.num_parameters(true);
  }
  return rep;
}

void load_adapter_weights(nn::Module& model, const std::string& dir, const std::string& adapter) {
  refuse_temporary_path(dir, "load_adapter_weights");
  const std::string weights_path = (fs::path(dir) / kWeightsFile).string();
  const SafetensorsFile file = load_safetensors(weights_path);
  file.require_finite(model_dtype(model));
  const NamedTensors mine = adapter_state_dict(model, adapter);  // detached handles on the live tensors
  std::vector<std::string> problems;
  for (const auto& [name, t] : mine) {
    if (!file.contains(name)) problems.push_back("missing " + name);
    else if (file.at(name).shape() != t.shape())
      problems.push_back(name + " is " + shape_str(file.at(name).shape()) + ", expected " + shape_str(t.shape()));
  }
  if (file.tensors.size() != mine.size() && problems.empty())
    problems.push_back(std::to_string(file.tensors.size()) + " tensors, expected " + std::to_string(mine.size()));
  if (!problems.empty()) {
    std::string msg = "load_adapter_weights: " + weights_path + " does not fit adapter '" + adapter + "':";
    for (const auto& p : problems) msg += " " + printable(p) + ";";
    msg.pop_back();
    throw IOError(msg);
  }
  NoGradGuard no_grad;
  for (const auto& [name, t] : mine) {
    Tensor dst = t;
    dst.copy_(file.at(name));
  }
}

}  // namespace loragrad::lora

// LoraConfig matching and apply_lora: PEFT's inject_adapter for loragrad trees.
#include "loragrad/lora/inject.hpp"

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <map>
#include <ostream>
#include <set>
#include <tuple>

#include "loragrad/format.hpp"
#include "loragrad/lora/base_storage.hpp"
#include "loragrad/lora/path_regex.hpp"
#include "loragrad/nn/layers.hpp"

namespace loragrad::lora {

static bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// PEFT's rule for a list of names: the path is the name, or ends with "." + name.
static bool matches_name_list(const std::vector<std::string>& names, const std::string& path) {
  for (const auto& n : names)
    if (path == n || ends_with(path, "." + n)) return true;
  return false;
}

// Patterns come from files: PathRegex bounds their size and nesting and
// matches in linear time (see path_regex.hpp).
static PathRegex compile(const std::string& pattern, const std::string& field) {
  return PathRegex(pattern, "LoraConfig: " + field);
}

// PEFT's get_pattern_key: re.match(rf"(.*\.)?({key})$", path).
static bool pattern_key_matches(const std::string& key, const std::string& path, const std::string& field) {
  return compile("(.*\\.)?(" + key + ")$", field).match(path);
}

// ============================ LoraConfig ============================

void LoraConfig::validate() const {
  LoraOptions o;
  o.r = r;
  o.alpha = lora_alpha;
  o.dropout = lora_dropout;
  o.validate("LoraConfig");
  if (target_modules.empty()) throw ValueError("LoraConfig: target_modules is empty (name at least one module)");
  if (target_regex && target_modules.size() != 1)
    throw ValueError("LoraConfig: target_regex needs exactly one target_modules entry, got " +
                     std::to_string(target_modules.size()));
  for (const auto& t : target_modules)
    if (t.empty()) throw ValueError("LoraConfig: target_modules holds an empty name");
  if (target_regex) compile(target_modules[0], "target_modules");
  if (exclude_regex && exclude_modules.size() != 1)
    throw ValueError("LoraConfig: exclude_regex needs exactly one exclude_modules entry");
  if (exclude_regex) compile(exclude_modules[0], "exclude_modules");
  for (const auto& [key, value] : rank_pattern) {
    pattern_key_matches(key, "", "rank_pattern");  // compiles it
    if (value <= 0)
      throw ValueError("LoraConfig: rank_pattern['" + key + "'] must be positive, got " + std::to_string(value));
  }
  for (const auto& [key, value] : alpha_pattern) {
    pattern_key_matches(key, "", "alpha_pattern");
    if (!(value > 0) || !std::isfinite(value))
      throw ValueError("LoraConfig: alpha_pattern['" + key + "'] must be positive, got " + std::to_string(value));
  }
  if (bias != "none")
    throw ValueError("LoraConfig: bias '" + bias + "' is not supported (only \"none\": biases stay frozen)");
  if (fan_in_fan_out)
    throw ValueError("LoraConfig: fan_in_fan_out = true is not supported (loragrad weights are (out, in))");
  if (!base_storage.empty() && base_storage != "bf16")
    throw ValueError("LoraConfig: base_storage '" + printable(base_storage) +
                     "' is not supported (\"bf16\", or \"\" to keep the base as it is; an NF4 base is qlora)");
  if (qlora && !base_storage.empty())
    throw ValueError("LoraConfig: base_storage '" + base_storage + "' and qlora both choose the base's storage (qlora: NF4); "
                     "set one of them");
}

bool LoraConfig::is_target(const std::string& path) const {
  if (path.empty()) return false;
  if (target_regex) return compile(target_modules[0], "target_modules").full_match(path);
  return matches_name_list(target_modules, path);
}

bool LoraConfig::is_excluded(const std::string& path) const {
  if (exclude_modules.empty() || path.empty()) return false;
  if (exclude_regex) return compile(exclude_modules[0], "exclude_modules").full_match(path);
  return matches_name_list(exclude_modules, path);
}

bool LoraConfig::is_module_to_save(const std::string& path) const {
  return !path.empty() && matches_name_list(modules_to_save, path);
}

// A seed per module, so that two layers of one adapter do not start from the
// same A: FNV-1a of the path, mixed with the config's seed (splitmix64 finaliser).
static uint64_t module_seed(uint64_t seed, const std::string& path) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : path) h = (h ^ c) * 1099511628211ULL;
  uint64_t z = seed + 0x9e3779b97f4a7c15ULL * (h | 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

LoraOptions LoraConfig::options_for(const std::string& path) const {
  LoraOptions o;
  o.r = r;
  o.alpha = lora_alpha;
  for (const auto& [key, value] : rank_pattern)
    if (pattern_key_matches(key, path, "rank_pattern")) { o.r = value; break; }
  for (const auto& [key, value] : alpha_pattern)
    if (pattern_key_matches(key, path, "alpha_pattern")) { o.alpha = value; break; }
  o.dropout = lora_dropout;
  o.use_rslora = use_rslora;
  o.use_dora = use_dora;
  o.init = init_lora_weights;
  o.seed = module_seed(seed, path);
  return o;
}

// ============================ the tree ============================

std::vector<std::pair<std::string, std::shared_ptr<LoraLinear>>> lora_layers(const nn::Module& model) {
  std::vector<std::pair<std::string, std::shared_ptr<LoraLinear>>> out;
  for (const auto& [path, m] : model.named_modules())
    if (auto lora = std::dynamic_pointer_cast<LoraLinear>(m)) out.push_back({path, lora});
  return out;
}

// The modules a config can see: every module but the root and the insides of
// LoRA layers (their base_layer and adapter containers are not targets, as in
// PEFT, whose key list skips names containing "lora_").
nn::NamedModules target_candidates(const nn::Module& model) {
  nn::NamedModules out;
  std::vector<std::string> lora_prefixes;
  for (const auto& [path, m] : model.named_modules()) {
    if (path.empty()) continue;
    bool inside = false;
    for (const auto& p : lora_prefixes) inside |= path.compare(0, p.size(), p) == 0;
    if (inside) continue;
    out.push_back({path, m});
    if (std::dynamic_pointer_cast<LoraLinear>(m)) lora_prefixes.push_back(path + ".");
  }
  return out;
}

// (in, out) of a module that can take an adapter; {0, 0} for any other module.
static std::pair<int64_t, int64_t> linear_dims(const nn::ModulePtr& m) {
  if (auto base = std::dynamic_pointer_cast<nn::LinearBase>(m)) return {base->in_features, base->out_features};
  if (auto lora = std::dynamic_pointer_cast<LoraLinear>(m)) return {lora->in_features, lora->out_features};
  return {0, 0};
}

LoraPlan plan_lora(const nn::Module& model, const LoraConfig& cfg, const std::string& adapter) {
  cfg.validate();
  const std::string where = "apply_lora(adapter '" + adapter + "')";
  if (adapter.empty() || adapter.find('.') != std::string::npos)
    throw ValueError(where + ": the adapter name must be non-empty and without '.'");
  const bool all_linear = !cfg.target_regex && cfg.target_modules.size() == 1 && cfg.target_modules[0] == "all-linear";

  LoraPlan plan;
  std::vector<std::string> not_linear;
  std::set<std::string> saved_entries_used;
  for (const auto& [path, m] : target_candidates(model)) {
    const auto [in, out] = linear_dims(m);
    const bool target = all_linear ? (in > 0 && path != "lm_head" && !ends_with(path, ".lm_head")) : cfg.is_target(path);
    if (target && !cfg.is_excluded(path)) {
      if (in == 0) {
        not_linear.push_back("'" + path + "' (" + m->type_name() + ")");
        continue;
      }
      auto lora = std::dynamic_pointer_cast<LoraLinear>(m);
      if (lora && lora->has_adapter(adapter))
        throw ValueError(where + ": the layer at '" + path + "' already has an adapter called '" + adapter + "'");
      plan.targets.push_back({path, m, in, out, cfg.options_for(path)});
    }
    for (const auto& entry : cfg.modules_to_save)
      if (path == entry || ends_with(path, "." + entry)) {
        plan.modules_to_save.push_back(path);
        saved_entries_used.insert(entry);
      }
  }
  if (!not_linear.empty()) {
    std::string list;
    for (const auto& s : not_linear) list += (list.empty() ? "" : ", ") + s;
    throw ValueError(where + ": target_modules matched modules that are not linear layers: " + list +
                     "; only linear layers (Linear, Linear4bit) can take a LoRA adapter");
  }
  if (plan.targets.empty())
    throw ValueError(where + ": target_modules " + std::string(cfg.target_regex ? "regex " : "") +
                     quoted_list(cfg.target_modules) + " matched no module of the " + model.type_name() +
                     " (a name matches a path equal to it or ending in '.' + name)");
  for (const auto& entry : cfg.modules_to_save)
    if (!saved_entries_used.count(entry))
      throw ValueError(where + ": modules_to_save entry '" + entry + "' matched no module");
  for (const auto& t : plan.targets) {
    t.options.validate(where + " at '" + t.path + "'");
    if (t.options.init == LoraInit::pissa && t.options.r > std::min(t.in_features, t.out_features))
      throw ValueError(where + ": PiSSA at '" + t.path + "' needs r <= min(d_in, d_out) = " +
                       std::to_string(std::min(t.in_features, t.out_features)) + ", got r = " +
                       std::to_string(t.options.r));
    if (!cfg.qlora) continue;
    if (!std::dynamic_pointer_cast<nn::LinearBase>(t.module))
      throw ValueError(where + ": qlora needs a linear base layer (Linear, Linear4bit) at '" + t.path + "', got " +
                       t.module->type_name());
  }
  // NF4 weights dequantise to float32, so the adapter and the activations are float32 too.
  if (cfg.qlora)
    for (const auto& [path, lin] : quantizable_linears(model))
      if (lin->weight.dtype() != DType::f32)
        throw ValueError(where + ": qlora quantises float32 layers; '" + path + "' is " +
                         dtype_name(lin->weight.dtype()) + " (call model.to(f32) first)");
  // Mixed precision: bf16 products with float32 sums, so float32 activations and adapters.
  if (cfg.base_storage == "bf16")
    for (const auto& [path, lin] : bf16_base_linears(model, cfg))
      if (lin->weight.dtype() != DType::f32)
        throw ValueError(where + ": base_storage bf16 rounds float32 layers to bf16; '" + path + "' is " +
                         dtype_name(lin->weight.dtype()) + " (call model.to(f32) first)");
  return plan;
}

// QLoRA keeps the whole frozen base in 4 bits, not only the adapted layers:
// every nn::Linear (bare, or the base of a LoRA layer) except the output
// head, as bitsandbytes' load_in_4bit skips lm_head. Embeddings, LayerNorms
// and biases stay float.
std::vector<std::pair<std::string, std::shared_ptr<nn::Linear>>> quantizable_linears(const nn::Module& model) {
  std::vector<std::pair<std::string, std::shared_ptr<nn::Linear>>> out;
  for (const auto& [path, m] : model.named_modules()) {
    auto lin = std::dynamic_pointer_cast<nn::Linear>(m);
    const bool adapter_part = path.find(".lora_") != std::string::npos;  // lora_A / lora_B of a LoRA layer
    if (lin && !adapter_part && path != "lm_head" && !ends_with(path, ".lm_head") &&
        !ends_with(path, "lm_head.base_layer"))
      out.push_back({path, lin});
  }
  return out;
}

int64_t quantize_base_to_nf4(nn::Module& model) {
  int64_t n = 0;
  for (const auto& [path, lin] : quantizable_linears(model)) {
    model.replace_module(path, quantize_base("nf4", *lin));  // a LoRA layer's "....base_layer" too
    ++n;
  }
  return n;
}

// Is path, or a module above it, one of cfg's modules_to_save?
static bool under_module_to_save(const LoraConfig& cfg, const std::string& path) {
  for (size_t dot = path.find('.'); dot != std::string::npos; dot = path.find('.', dot + 1))
    if (cfg.is_module_to_save(path.substr(0, dot))) return true;
  return cfg.is_module_to_save(path);
}

// Mixed precision rounds the whole frozen base to bf16, the output head too:
// autocast runs every Linear in bf16, and the head is the widest product of
// a small-vocabulary model's step. Trained modules keep their float32 weights.
std::vector<std::pair<std::string, std::shared_ptr<nn::Linear>>> bf16_base_linears(const nn::Module& model,
                                                                                  const LoraConfig& cfg) {
  std::vector<std::pair<std::string, std::shared_ptr<nn::Linear>>> out;
  for (const auto& [path, m] : model.named_modules()) {
    auto lin = std::dynamic_pointer_cast<nn::Linear>(m);
    const bool adapter_part = path.find(".lora_") != std::string::npos;  // lora_A / lora_B of a LoRA layer
    if (lin && !adapter_part && !under_module_to_save(cfg, path)) out.push_back({path, lin});
  }
  return out;
}

int64_t convert_base_to_bf16(nn::Module& model, const LoraConfig& cfg) {
  int64_t n = 0;
  for (const auto& [path, lin] : bf16_base_linears(model, cfg)) {
    model.replace_module(path, quantize_base("bf16", *lin));  // a LoRA layer's "....base_layer" too
    ++n;
  }
  return n;
}

std::pair<int64_t, int64_t> peft_parameter_counts(const nn::Module& model) {
  int64_t packed = 0;  // quantised weights are no parameters
  for (const auto& [path, m] : model.named_modules())
    if (auto base = std::dynamic_pointer_cast<nn::LinearBase>(m); base && base->quantized())
      packed += base->in_features * base->out_features;
  return {model.num_parameters(true), model.num_parameters(false) + packed};
}

// ============================ apply_lora ============================

// The adapter currently running in the model: the active adapter of the
// enabled LoRA layers ("" when there is none or they disagree).
static std::string enabled_active_adapter(const nn::Module& model) {
  std::string name;
  for (const auto& [path, layer] : lora_layers(model)) {
    if (layer->adapters_disabled() || layer->active_adapter().empty()) continue;
    if (name.empty()) name = layer->active_adapter();
    else if (name != layer->active_adapter()) return "";
  }
  return name;
}

// An adapter's A, B (and m) must hold exactly r (d_in + d_out) (+ d_out) numbers:
// the count the seed document gives; checked against the real tensors.
static AdaptedModule describe(const std::string& path, LoraLinear& layer, const std::string& adapter) {
  const LoraOptions& o = layer.adapter_options(adapter);
  AdaptedModule row{path, layer.in_features, layer.out_features, o.r, o.alpha, o.use_dora, 0};
  const int64_t ab = layer.lora_A_weight(adapter).numel() + layer.lora_B_weight(adapter).numel();
  const int64_t formula = o.r * (layer.in_features + layer.out_features);
  if (ab != formula)
    throw Error("lora_report: '" + path + "' adapter '" + adapter + "' holds " + std::to_string(ab) +
                " A/B values, but r (d_in + d_out) = " + std::to_string(formula));
  row.trainable = ab + (o.use_dora ? layer.magnitude(adapter).numel() : 0);
  return row;
}

LoraReport lora_report(const nn::Module& model, const std::string& adapter) {
  LoraReport rep;
  rep.adapter = adapter;
  for (const auto& [path, layer] : lora_layers(model))
    if (layer->has_adapter(adapter)) rep.modules.push_back(describe(path, *layer, adapter));
  if (rep.modules.empty()) throw ValueError("lora_report: no LoRA layer has an adapter called '" + adapter + "'");
  std::tie(rep.trainable_params, rep.all_params) = peft_parameter_counts(model);
  return rep;
}

LoraReport apply_lora(nn::Module& model, const LoraConfig& cfg, const std::string& adapter) {
  LoraPlan plan = plan_lora(model, cfg, adapter);  // every check before the model changes
  if (cfg.qlora && quantize_base_to_nf4(model) > 0) plan = plan_lora(model, cfg, adapter);  // targets are NF4 now
  if (cfg.base_storage == "bf16" && convert_base_to_bf16(model, cfg) > 0)
    plan = plan_lora(model, cfg, adapter);  // targets are bf16 now
  const std::string running = enabled_active_adapter(model);  // "" for a model without adapters
  const bool had_adapters = !lora_layers(model).empty();

  // PEFT's _mark_only_adapters_as_trainable: everything outside LoRA layers is frozen.
  std::set<const TensorImpl*> inside_lora;
  for (const auto& [path, layer] : lora_layers(model))
    for (const Tensor& p : layer->parameters()) inside_lora.insert(p.impl());
  for (Tensor& p : model.parameters())
    if (!inside_lora.count(p.impl())) p.requires_grad_(false);

  for (const PlannedModule& t : plan.targets) {
    auto layer = std::dynamic_pointer_cast<LoraLinear>(t.module);
    if (layer) {
      layer->add_adapter(adapter, t.options);  // inactive and frozen unless it is the layer's first
      continue;
    }
    layer = std::make_shared<LoraLinear>(t.module, adapter, t.options);
    layer->train(t.module->is_training());
    model.replace_module(t.path, layer);
    if (had_adapters && running != adapter) {
      // PEFT sets the model's active adapter again after injecting: a layer
      // without that adapter runs as its base, and the new adapter is not trained.
      layer->disable_adapters(true);
      for (Tensor& p : layer->parameters()) p.requires_grad_(false);
    }
  }
  // modules_to_save train, except what lies inside LoRA layers (bases stay frozen).
  inside_lora.clear();
  for (const auto& [path, layer] : lora_layers(model))
    for (const Tensor& p : layer->parameters()) inside_lora.insert(p.impl());
  for (const std::string& path : plan.modules_to_save)
    for (Tensor& p : model.get_submodule(path)->parameters())
      if (!inside_lora.count(p.impl())) p.requires_grad_(true);

  LoraReport rep = lora_report(model, adapter);
  rep.modules_to_save = plan.modules_to_save;
  return rep;
}

// ============================ printing ============================

double LoraReport::trainable_percent() const {
  return all_params > 0 ? 100.0 * static_cast<double>(trainable_params) / static_cast<double>(all_params) : 0.0;
}

std::string LoraReport::summary() const {
  char pct[64];
  std::snprintf(pct, sizeof pct, "%.4f", trainable_percent());
  return "trainable params: " + with_commas(trainable_params) + " || all params: " + with_commas(all_params) +
         " || trainable%: " + pct;
}

std::string LoraReport::str() const {
  size_t width = 6;
  for (const auto& m : modules) width = std::max(width, m.path.size());
  std::string out = summary() + "\n";
  char line[512];
  std::snprintf(line, sizeof line, "%-*s %6s %6s %4s %8s %10s\n", static_cast<int>(width), "module", "d_in", "d_out",
                "r", "alpha", "params");
  out += line;
  int64_t total = 0;
  for (const auto& m : modules) {
    std::snprintf(line, sizeof line, "%-*s %6" PRId64 " %6" PRId64 " %4" PRId64 " %8g %10s%s\n",
                  static_cast<int>(width), m.path.c_str(), m.in_features, m.out_features, m.r, m.alpha,
                  with_commas(m.trainable).c_str(), m.dora ? "  (DoRA: + d_out)" : "");
    out += line;
    total += m.trainable;
  }
  out += "adapter '" + adapter + "': " + std::to_string(modules.size()) + " modules, " + with_commas(total) +
         " adapter params";
  if (!modules_to_save.empty()) out += "; modules_to_save: " + quoted_list(modules_to_save);
  return out + "\n";
}

void LoraReport::print(std::ostream& os) const { os << str(); }

}  // namespace loragrad::lora

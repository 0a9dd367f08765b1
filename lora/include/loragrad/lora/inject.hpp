#pragma once
// Putting LoRA adapters into a model the way PEFT's get_peft_model does:
// LoraConfig says which modules get an adapter and with which rank, and
// apply_lora wraps each of them in a LoraLinear in place.
//
//   LoraConfig cfg;
//   cfg.r = 8; cfg.lora_alpha = 16; cfg.target_modules = {"q_proj", "v_proj"};
//   LoraReport rep = apply_lora(*model, cfg);    // model: a TinyGPT, say
//   std::cout << rep.str();                      // "trainable params: 2,048 || all params: ..."
//
// Matching (PEFT 0.21's check_target_module_exists): with a list of names a
// module matches when its dotted path equals an entry or ends with "." + entry
// ("q_proj" matches "blocks.0.attn.q_proj", never "blocks.0.attn.xq_proj");
// a single string is instead a regex that must match the whole path. Only
// linear layers (an nn::LinearBase such as nn::Linear or Linear4bit, or an
// existing LoraLinear, which gets one more adapter) can be targets.
//
// After apply_lora only adapter parameters (and the modules_to_save) are
// trainable; every base parameter is frozen, so no gradient is computed for it.
#include <cstdint>
#include <iosfwd>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "loragrad/lora/lora_config.hpp"
#include "loragrad/lora/lora_linear.hpp"
#include "loragrad/nn/layers.hpp"
#include "loragrad/nn/module.hpp"

namespace loragrad::lora {

// PEFT's LoraConfig: the fields of adapter_config.json that change what is
// built (peft_io.hpp reads and writes the file).
struct LoraConfig {
  int64_t r = 8;             // rank
  double lora_alpha = 8;     // scale s = alpha / r (rsLoRA: alpha / sqrt(r))
  double lora_dropout = 0.0;
  // A list of module names (equal to the path, or its last "."-separated
  // parts), or, when target_regex is true, exactly one entry: a regex that must
  // match the whole path. The list {"all-linear"} means every linear layer
  // except the output layer "lm_head", as PEFT's shorthand does.
  std::vector<std::string> target_modules;
  bool target_regex = false;
  // Same rules as target_modules (PEFT's exclude_modules); wins over a target.
  std::vector<std::string> exclude_modules;
  bool exclude_regex = false;
  bool use_rslora = false;
  bool use_dora = false;
  LoraInit init_lora_weights = LoraInit::standard;
  // {regex: value} overrides, tried in order; a module takes the value of the
  // first key with re.match(rf"(.*\.)?({key})$", path), as PEFT's get_pattern_key.
  // adapter_config.json holds them sorted by key (PEFT writes sort_keys=True).
  std::vector<std::pair<std::string, int64_t>> rank_pattern;
  std::vector<std::pair<std::string, double>> alpha_pattern;
  // Modules (matched like a target list) whose parameters stay trainable and
  // are saved with the adapter. Unlike PEFT, which trains a copy and keeps the
  // original for disable_adapters, loragrad trains the module itself.
  std::vector<std::string> modules_to_save;
  std::string bias = "none";    // the only value supported
  bool fan_in_fan_out = false;  // the only value supported ((out, in) weights)
  // loragrad's own: QLoRA. The whole frozen base goes to NF4 (double
  // quantised) before the adapters are added: every nn::Linear but lm_head,
  // whatever the targets, as bitsandbytes' load_in_4bit does. Written to
  // adapter_config.json as "loragrad_qlora" only when true (PEFT ignores keys
  // it does not know).
  bool qlora = false;
  // loragrad's own: mixed precision. "bf16" stores the frozen base in
  // bfloat16 (BF16Linear, bf16_linear.hpp) before the adapters are added:
  // every nn::Linear, lm_head included, but those under modules_to_save
  // (trained, so float32). Its products then run as PyTorch's
  // torch.autocast("cpu", torch.bfloat16) runs a frozen Linear (operands in
  // bf16, float32 sums), on half the bytes. Adapters, biases, embeddings and
  // LayerNorms stay float32, and so does everything but the base's products.
  // "" (the default) leaves the base as it is. Not with qlora (an NF4 base).
  // A compute choice, like autocast: not written to adapter_config.json, so
  // the adapter loads onto the float base (convert_base_to_bf16 first to
  // run it on a bf16 base again).
  std::string base_storage;
  std::string base_model_name_or_path;  // free text; "" is written as null
  std::string task_type;                // "" is written as null; e.g. "CAUSAL_LM"
  // loragrad's own: the base checkpoint's fingerprint (nn::fingerprint), so
  // an adapter loaded onto another base can be noticed. "" is not written.
  std::string base_fingerprint;
  uint64_t seed = 0;                    // initial A/B draws (each module gets its own stream)

  // Throws ValueError naming the field: r, alpha, dropout ranges, empty or
  // malformed targets, a regex that does not compile, unsupported bias /
  // fan_in_fan_out, rank_pattern values <= 0, a base_storage other than ""
  // and "bf16", or "bf16" with qlora.
  void validate() const;
  // Would PEFT put an adapter on the module at this path? (targets minus
  // exclusions; "all-linear" is resolved by apply_lora, which knows the types.)
  bool is_target(const std::string& path) const;
  bool is_excluded(const std::string& path) const;
  bool is_module_to_save(const std::string& path) const;
  // r and alpha after rank_pattern / alpha_pattern, and the shared options.
  LoraOptions options_for(const std::string& path) const;
};

// One adapted module, as apply_lora reports it.
struct AdaptedModule {
  std::string path;          // "blocks.0.attn.q_proj"
  int64_t in_features = 0;   // d_in
  int64_t out_features = 0;  // d_out
  int64_t r = 0;
  double alpha = 0;
  bool dora = false;
  int64_t trainable = 0;     // r (d_in + d_out), plus d_out for DoRA's magnitude
};

// What apply_lora did, with PEFT's print_trainable_parameters line.
struct LoraReport {
  std::string adapter;
  std::vector<AdaptedModule> modules;    // in model order
  std::vector<std::string> modules_to_save;
  int64_t trainable_params = 0;          // every parameter with requires_grad, whole model
  int64_t all_params = 0;                // every parameter, whole model (adapters included)
  double trainable_percent() const;      // 100 * trainable / all
  // "trainable params: 2,048 || all params: 110,592 || trainable%: 1.8519"
  // exactly as PEFT prints it (thousands separators, 4 decimals).
  std::string summary() const;
  // summary() plus one line per module: path, d_in, d_out, r, alpha, params.
  std::string str() const;
  void print(std::ostream& os) const;
};

// Wraps every module that cfg targets in a LoraLinear with adapter `adapter`,
// replacing it in the tree (Module::replace_module), then freezes every
// parameter that is neither an adapter's nor under modules_to_save.
//
// A target that already is a LoraLinear gets `adapter` added. As in PEFT, an
// adapter added to a model that already has an active adapter is not made
// active nor trainable (set_adapter(model, name) does that); layers it newly
// creates run as their base until then.
//
// Everything is checked before the model is touched: ValueError when no module
// matches (naming the targets), when a matched module is not linear (naming
// its path and type), when `adapter` already exists on a matched layer, or
// when a modules_to_save entry matches nothing.
LoraReport apply_lora(nn::Module& model, const LoraConfig& cfg, const std::string& adapter = "default");

// The report for an adapter already in the model (its layers and the model's
// current trainable counts).
LoraReport lora_report(const nn::Module& model, const std::string& adapter = "default");

// Every LoraLinear in the model with its path, in model order.
std::vector<std::pair<std::string, std::shared_ptr<LoraLinear>>> lora_layers(const nn::Module& model);

// One module apply_lora would adapt, worked out without touching the model.
struct PlannedModule {
  std::string path;
  nn::ModulePtr module;   // the module now at path (a LoraLinear when already wrapped)
  int64_t in_features = 0, out_features = 0;
  LoraOptions options;    // after rank / alpha patterns
};
struct LoraPlan {
  std::vector<PlannedModule> targets;
  std::vector<std::string> modules_to_save;  // paths of the matched modules
};
// The checks and matching of apply_lora (same errors), without changes.
LoraPlan plan_lora(const nn::Module& model, const LoraConfig& cfg, const std::string& adapter = "default");

// The modules a config can match: all but the root and the insides of LoRA
// layers (their base_layer and adapter containers), in model order.
nn::NamedModules target_candidates(const nn::Module& model);


// The nn::Linear layers QLoRA quantises (path, layer): every one but lm_head,
// including the float bases inside LoRA layers.
std::vector<std::pair<std::string, std::shared_ptr<nn::Linear>>> quantizable_linears(const nn::Module& model);
// Replaces each of them by an NF4 base, quantize_base("nf4", ...) (blocks of
// 64, double quantised); returns how many. apply_lora calls it when cfg.qlora.
int64_t quantize_base_to_nf4(nn::Module& model);
// The nn::Linear layers a bf16 base (LoraConfig::base_storage) stores in
// bf16 (path, layer): every one, lm_head included (autocast computes it in
// bf16 too), the float bases inside LoRA layers too, but not the adapters'
// own lora_A / lora_B nor a module under one of cfg's modules_to_save.
std::vector<std::pair<std::string, std::shared_ptr<nn::Linear>>> bf16_base_linears(const nn::Module& model,
                                                                                  const LoraConfig& cfg = {});
// Replaces each of them by a bf16 base, quantize_base("bf16", ...); returns
// how many. apply_lora calls it when cfg.base_storage is "bf16"; called on a
// model before load_adapter, it runs a loaded adapter on a bf16 base.
int64_t convert_base_to_bf16(nn::Module& model, const LoraConfig& cfg = {});
// (trainable, all) parameters as PEFT's print_trainable_parameters counts
// them: a quantised (NF4) or bf16 weight counts its in * out logical values,
// not its packed bytes.
std::pair<int64_t, int64_t> peft_parameter_counts(const nn::Module& model);

}  // namespace loragrad::lora

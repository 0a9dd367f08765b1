#pragma once
// Hugging Face PEFT adapter directories (docs/peft-format.md):
//
//   my_adapter/
//     adapter_config.json          PEFT's LoraConfig, json.dumps(indent=2, sort_keys=True)
//     adapter_model.safetensors    float32, __metadata__ {"format": "pt"}
//
// with tensors, for an adapted module at path P (the adapter name dropped):
//   base_model.model.P.lora_A.weight            (r, in)
//   base_model.model.P.lora_B.weight            (out, r)
//   base_model.model.P.lora_magnitude_vector    (out)       DoRA only
//   base_model.model.M.<param>                  every parameter of a module M in modules_to_save
//
// A directory saved here loads with PeftModel.from_pretrained on the
// equivalent PyTorch model, and a PEFT-saved directory loads here.
#include <optional>
#include <string>

#include "loragrad/lora/inject.hpp"
#include "loragrad/nn/module.hpp"
#include "loragrad/safetensors.hpp"

namespace loragrad::lora {

// ---- adapter_config.json <-> LoraConfig ----

// The JSON PEFT 0.21 writes for cfg: the same keys (those loragrad does not
// use at their PEFT defaults), sorted, indent 2. base_model_class, when given,
// fills PEFT's auto_mapping ({"base_model_class": ..., "parent_library": "loragrad"}).
std::string adapter_config_json(const LoraConfig& cfg, const std::string& base_model_class = "");
// Parses a PEFT-written config. Unknown keys are ignored; peft_type ("LORA")
// and target_modules are required (r and lora_alpha default to PEFT's 8).
// Throws IOError naming `source` and the key for invalid JSON, a missing key,
// a value of the wrong type or range, and settings loragrad cannot reproduce
// (bias other than "none", fan_in_fan_out, layers_to_transform,
// layer_replication, init_lora_weights "olora" / "loftq" / ..., ...).
LoraConfig parse_adapter_config(const std::string& json_text, const std::string& source);
LoraConfig read_adapter_config(const std::string& path);
void write_adapter_config(const std::string& path, const LoraConfig& cfg, const std::string& base_model_class = "");

// ---- what an adapter in a model looks like to PEFT ----

// The LoraConfig that rebuilds adapter `adapter` as it is in the model now:
// r and lora_alpha are the values most layers use, the others go to
// rank_pattern / alpha_pattern under their escaped full path; target_modules
// names a module by its last path component when every module with that name
// is adapted (["q_proj", "v_proj"]) and by its full path otherwise, sorted;
// modules_to_save are the modules holding trainable parameters outside LoRA
// layers now (a module to save that was frozen since is not saved); qlora is
// set when every base is NF4. Dropout, rsLoRA, DoRA and init
// must agree across layers (ValueError otherwise: one config cannot say it).
LoraConfig adapter_config(const nn::Module& model, const std::string& adapter = "default");

// PEFT's get_peft_model_state_dict: the tensors of the file above, named as
// there, detached, in the model's dtype, sorted by name.
NamedTensors adapter_state_dict(const nn::Module& model, const std::string& adapter = "default");

// ---- directories ----

// Does cfg rebuild adapter `adapter` of the model exactly? The modules it
// targets (after exclusions; "all-linear" resolved) are exactly those holding
// the adapter, each with the rank and alpha its rank_pattern / alpha_pattern
// give (keys tried in cfg's order) and the same dropout, rsLoRA, DoRA and
// init; qlora says what the bases are; and modules_to_save matches exactly
// the modules adapter_config() finds trainable outside LoRA layers.
bool config_describes_adapter(const nn::Module& model, const LoraConfig& cfg, const std::string& adapter = "default");

// What an adapter file says about where it came from (the model itself does
// not know): PEFT's base_model_name_or_path and task_type, and loragrad's
// fingerprint of the base's tensors ("loragrad_base_fingerprint").
struct AdapterProvenance {
  std::string base_model_name_or_path, task_type, base_fingerprint;
  // The LoraConfig the adapter was made with (apply_lora's), when known. PEFT
  // writes the config it was given, so save_adapter writes this one (target
  // names, modules_to_save and patterns as given; patterns sorted by key, as
  // PEFT's sort_keys=True writes them; "all-linear" expanded to the module
  // names, as PEFT expands it) when config_describes_adapter() holds for
  // that written form, and otherwise the config adapter_config() rebuilds
  // from the layers (the model may have changed since).
  std::optional<LoraConfig> requested;
};

// Where PEFT's save_pretrained puts adapter `adapter` when saving into `dir`:
// `dir` itself for "default", "dir/<adapter>" for any other name (as PEFT
// 0.21 does). PeftModel.from_pretrained then takes that subdirectory.
std::string adapter_subdir(const std::string& dir, const std::string& adapter);

// Writes adapter_config.json and adapter_model.safetensors (float32) into
// `dir`, atomically: both go into "<dir>.tmp.<pid>", which is then renamed to
// dir. An existing dir is an IOError unless overwrite, which replaces it.
// Parent directories are created.
void save_adapter(const nn::Module& model, const std::string& dir, const std::string& adapter = "default",
                  bool overwrite = false,
                  const AdapterProvenance& provenance = {});

// Reads a PEFT (or loragrad) adapter directory into the model as adapter
// `adapter`: apply_lora with its config, then the saved values. Every tensor
// is checked before the model changes: a missing, mis-shaped or unexpected
// tensor is an IOError naming the file and the tensor. is_trainable = false
// freezes the loaded adapter (PEFT's default for from_pretrained; loragrad's
// default is to keep it trainable, as after apply_lora).
LoraReport load_adapter(nn::Module& model, const std::string& dir, const std::string& adapter = "default",
                        bool is_trainable = true);

// Copies a saved adapter's values into the model's existing adapter `adapter`
// (same config: what a training checkpoint holds), leaving requires_grad as it
// is. The file must hold exactly the adapter's tensors with their shapes
// (IOError naming the file and the tensor otherwise); nothing changes on error.
void load_adapter_weights(nn::Module& model, const std::string& dir, const std::string& adapter = "default");

}  // namespace loragrad::lora

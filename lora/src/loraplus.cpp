// LoRA+ parameter groups, following PEFT's create_loraplus_optimizer.
#include "loragrad/lora/loraplus.hpp"

#include <cmath>
#include <map>
#include <string>

#include "loragrad/nn/layers.hpp"

namespace loragrad::lora {

std::vector<optim::ParamGroup> loraplus_param_groups(const nn::Module& model, double lr, double ratio,
                                                     double weight_decay, double lr_embedding) {
  const std::string op = "loraplus_param_groups: ";
  if (!(lr > 0) || !std::isfinite(lr)) throw ValueError(op + "lr must be positive, got " + std::to_string(lr));
  if (!(ratio > 0) || !std::isfinite(ratio))
    throw ValueError(op + "ratio must be positive, got " + std::to_string(ratio));
  if (!(weight_decay >= 0)) throw ValueError(op + "weight_decay must be >= 0, got " + std::to_string(weight_decay));
  if (!(lr_embedding > 0)) throw ValueError(op + "lr_embedding must be positive, got " + std::to_string(lr_embedding));

  // The module owning each parameter: its name without the last component.
  std::map<std::string, nn::ModulePtr> modules;
  for (const auto& [path, m] : model.named_modules()) modules[path] = m;
  auto owner = [&](const std::string& name) {
    const size_t dot = name.rfind('.');
    return modules.at(dot == std::string::npos ? "" : name.substr(0, dot));
  };
  auto leaf = [](const std::string& name) {
    const size_t dot = name.rfind('.');
    return dot == std::string::npos ? name : name.substr(dot + 1);
  };

  optim::ParamGroup a("groupA", {}, lr, weight_decay), emb("embedding", {}, lr_embedding, weight_decay),
      b("groupB", {}, lr * ratio, weight_decay), b_no_decay("groupB_no_decay", {}, lr * ratio, 0.0);
  for (const auto& [name, p] : model.named_parameters()) {
    if (!p.requires_grad()) continue;
    const nn::ModulePtr m = owner(name);
    if (std::dynamic_pointer_cast<nn::Embedding>(m)) {
      emb.params.push_back(p);
    } else if (name.find("lora_B") != std::string::npos || p.dim() == 1) {
      // transformers' Trainer decays everything but biases and LayerNorm parameters.
      const bool decays = leaf(name) != "bias" && !std::dynamic_pointer_cast<nn::LayerNorm>(m);
      (decays ? b : b_no_decay).params.push_back(p);
    } else {
      a.params.push_back(p);
    }
  }
  std::vector<optim::ParamGroup> groups;
  for (optim::ParamGroup* g : {&a, &emb, &b, &b_no_decay})
    if (!g->params.empty()) groups.push_back(*g);
  if (groups.empty()) throw ValueError(op + "the " + model.type_name() + " has no trainable parameter");
  return groups;
}

}  // namespace loragrad::lora

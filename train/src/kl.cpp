// KL(p_base || p_adapted): the adapted model against itself with its adapters disabled.
#include "loragrad/train/kl.hpp"

#include <string>

#include "loragrad/autograd.hpp"
#include "loragrad/error.hpp"
#include "loragrad/lora/combine.hpp"
#include "loragrad/lora/inject.hpp"
#include "loragrad/lora/lora_linear.hpp"
#include "loragrad/ops.hpp"

namespace loragrad::train {

void check_kl_to_base(const nn::Module& model) {
  const auto layers = lora::lora_layers(model);
  if (layers.empty())
    throw ValueError("kl_to_base: the model has no LoRA layer, so it has no base to compare with (full fine-tuning "
                     "changes the weights themselves; the KL to the base needs an adapter method)");
  // Every trainable parameter must sit in an adapter: anything else trained
  // (modules_to_save, a base weight made trainable) is still on when the
  // adapters are disabled, and the reference would move with training.
  auto in_adapter = [&](const std::string& name) {
    for (const auto& [path, layer] : layers)
      for (const char* part : {".lora_A.", ".lora_B.", ".lora_magnitude_vector."})
        if (name.rfind(path + part, 0) == 0) return true;
    return false;
  };
  for (const auto& [name, p] : model.named_parameters())
    if (p.requires_grad() && !in_adapter(name))
      throw ValueError("kl_to_base: '" + name + "' is trained outside the adapters (modules_to_save?): with the "
                       "adapters disabled it is not the base's, so the model has no fixed base to compare with");
  for (const auto& [path, layer] : layers) {
    const std::string& name = layer->active_adapter();
    if (!name.empty() && layer->adapter_options(name).init == lora::LoraInit::pissa)
      throw ValueError("kl_to_base: '" + path + "' holds a PiSSA adapter: its base weight is the residual "
                       "W0 - s B A, not the pretrained weight, so disabling it gives no base to compare with");
  }
}

Tensor kl_to_base(nn::TinyGPT& model, const data::Batch& b) {
  check_kl_to_base(model);
  const int64_t n = b.num_targets();
  if (n == 0) throw ValueError("kl_to_base: the batch has no scored position (every target is -100)");
  nn::ModeScope eval_mode(model, false);
  Tensor log_p_base;  // (B, T, V)
  {
    NoGradGuard no_grad;
    lora::AdaptersDisabled base(model);
    log_p_base = log_softmax(model.forward(b.x, b.starts), -1);
  }
  const Tensor p_base = exp(log_p_base);                                  // (B, T, V), no graph
  const Tensor log_p = log_softmax(model.forward(b.x, b.starts), -1);     // (B, T, V), graph into the adapter
  const Tensor per_position = sum(p_base * (log_p_base - log_p), {-1});   // (B, T)
  if (n == b.y.numel()) return mean(per_position);
  // Packed rows: only the scored positions count (prompt bytes and padding do not).
  std::vector<double> mask(static_cast<size_t>(b.y.numel()));
  const int64_t* y = b.y.data<int64_t>();
  for (size_t i = 0; i < mask.size(); ++i) mask[i] = y[i] != data::kIgnoreIndex ? 1.0 : 0.0;
  const Tensor m = from_values(mask, b.y.shape(), per_position.dtype());  // (B, T)
  return sum(per_position * m) / static_cast<double>(n);
}

double evaluate_kl_to_base(nn::TinyGPT& model, const std::vector<data::Batch>& batches) {
  if (batches.empty()) throw ValueError("evaluate_kl_to_base: no batches");
  NoGradGuard no_grad;
  double s = 0.0;
  for (const data::Batch& b : batches) s += kl_to_base(model, b).item();
  return s / static_cast<double>(batches.size());
}

}  // namespace loragrad::train

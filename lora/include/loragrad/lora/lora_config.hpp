#pragma once
// LoraOptions: the hyper-parameters of one LoRA / rsLoRA / DoRA adapter on one
// layer, the per-layer part of PEFT's LoraConfig (r, lora_alpha, lora_dropout,
// use_rslora, use_dora, init_lora_weights). See docs/peft-format.md.
#include <cstdint>
#include <string>

namespace loragrad::lora {

// How the adapter's A and B start (PEFT's init_lora_weights).
enum class LoraInit {
  standard,  // true:      A ~ kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)), B = 0
  gaussian,  // "gaussian": A ~ N(0, std = 1/r) (PEFT: nn.init.normal_(A, std=1/r)), B = 0
  pissa,     // "pissa":   A, B from the top-r singular triplets of W0; the base becomes W0 - s B A
  random,    // false:     A and B both nn.Linear's default init (B != 0: the adapter is not a no-op)
};

// "true", "gaussian", "pissa", "false": the init_lora_weights value PEFT writes.
const char* lora_init_name(LoraInit init);

struct LoraOptions {
  int64_t r = 8;          // rank
  double alpha = 8;       // lora_alpha
  double dropout = 0.0;   // lora_dropout, on the adapter's input only
  bool use_rslora = false;
  bool use_dora = false;
  LoraInit init = LoraInit::standard;
  uint64_t seed = 0;      // A/B init draws; the adapter's dropout masks use a stream derived from it

  // The factor s in y = W0 x + b + s B A x: alpha / r, or alpha / sqrt(r) with rsLoRA.
  double scale() const;
  // Throws ValueError, message starting with `where`, unless r > 0, alpha > 0
  // (finite) and dropout in [0, 1).
  void validate(const std::string& where = "LoraOptions") const;
};

}  // namespace loragrad::lora

#pragma once
// LoRA+ (Hayou et al. 2024): B learns faster than A. B sits next to the
// output, starts at zero and must move far; A is a random projection that
// needs only small corrections. PEFT's create_loraplus_optimizer splits the
// trainable parameters into groups with their own learning rates; this builds
// the same groups for loragrad's optimizers (optim/optimizer.hpp):
//
//   "groupA"          every other trainable parameter (lora_A, ...)   lr,          weight_decay
//   "embedding"       trainable parameters of Embedding modules       lr_embedding, weight_decay
//   "groupB"          lora_B weights and 1-d parameters (DoRA's        lr * ratio,  weight_decay
//                     magnitude) that take weight decay
//   "groupB_no_decay" the same, but biases and LayerNorm parameters   lr * ratio,  0
//                     (the parameters transformers' Trainer never decays)
//
// Empty groups are left out; frozen parameters are never included.
//
//   auto opt = optim::AdamW(loraplus_param_groups(*model, 2e-4));   // B at 3.2e-3
#include <vector>

#include "loragrad/nn/module.hpp"
#include "loragrad/optim/optimizer.hpp"

namespace loragrad::lora {

// ratio: lr_B / lr_A (the paper suggests 16 as a start; the seed says 4-16).
// lr_embedding: PEFT's loraplus_lr_embedding default. ValueError unless
// lr > 0, ratio > 0, weight_decay >= 0, and some parameter is trainable.
std::vector<optim::ParamGroup> loraplus_param_groups(const nn::Module& model, double lr, double ratio = 16.0,
                                                     double weight_decay = 0.0, double lr_embedding = 1e-6);

}  // namespace loragrad::lora

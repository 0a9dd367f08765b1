#pragma once
// KL to the base: a penalty that keeps an adapted model's next-byte
// distributions close to those of its own base (the same model with its
// adapters disabled) on some text, e.g. the base's pretraining domain, so
// that an adapter learns its task while forgetting less (issue 12, item 2).
//
// The convention, per position t (z: the logits over the V = 256 bytes):
//
//   KL_t = sum_v p_base(v) (log p_base(v) - log p_adapted(v)),
//          log p_base = log_softmax(z_base), log p_adapted = log_softmax(z_adapted)
//   KL   = the mean of KL_t over the batch's scored positions: all B * T of
//          them for plain text; for packed instruction rows, those whose
//          target is not -100 (prompt bytes and padding are left out).
//
// For plain text that is PyTorch's
//   F.kl_div(log_softmax(z_adapted), log_softmax(z_base), log_target=True,
//            reduction="batchmean")
// on the logits flattened to (B * T, V): nats per position, 0 when the two
// models agree, and the forward KL from the base (it weighs the bytes the
// base finds likely).
//
// Both passes run in eval mode (no dropout anywhere, the model's mode is
// restored): the penalty is on the function the adapter computes at inference,
// it is exactly 0 while the adapter is a no-op (LoRA's B = 0: step 0), and it
// draws nothing from the dropout generators, so the training batches' masks are
// those of a run without the penalty. The base pass runs under NoGradGuard
// with the adapters disabled (lora::AdaptersDisabled), so no second copy of
// the weights exists and only the adapter pass records a graph.
//
// The base must be what the adapters are added to, which is not the case
// (ValueError naming the cause) for a model without LoRA layers (full
// fine-tuning: disabling nothing leaves the trained model itself), with a
// trainable parameter outside the adapters (modules_to_save: loragrad trains
// the module itself, so the base is gone), or with a PiSSA adapter (its base
// weight is the residual W0 - s B A, not the pretrained W0).
#include <vector>

#include "loragrad/data/source.hpp"
#include "loragrad/nn/tiny_gpt.hpp"
#include "loragrad/tensor.hpp"

namespace loragrad::train {

// KL(p_base || p_adapted) on batch b (its x and starts; y only marks the
// scored positions): a 0-d tensor whose graph reaches the adapter's
// parameters (when grad mode is on). Costs one forward without a graph and
// one with. ValueError as above, and for a batch without a scored position.
Tensor kl_to_base(nn::TinyGPT& model, const data::Batch& b);

// The mean of kl_to_base over the batches, without a graph (each batch
// weighs the same): the KL a run reports before and after training.
double evaluate_kl_to_base(nn::TinyGPT& model, const std::vector<data::Batch>& batches);

// Throws the ValueError kl_to_base would throw for this model ("" is fine):
// to refuse a run before it starts.
void check_kl_to_base(const nn::Module& model);

}  // namespace loragrad::train

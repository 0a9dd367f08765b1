#pragma once
// The pieces of a pre-LN transformer block (docs/tiny-gpt.md):
// MultiHeadAttention, FFN and TransformerBlock.
//
// The projections (q_proj, k_proj, v_proj, o_proj, fc_in, fc_out) are typed
// ModulePtr and called through forward(): an adapter may replace any of them
// (replace_module("blocks.0.attn.q_proj", lora)) and the block uses it.
#include <cstdint>
#include <memory>

#include "loragrad/generator.hpp"
#include "loragrad/nn/layers.hpp"
#include "loragrad/nn/module.hpp"

namespace loragrad::nn {

// Causal self-attention over (B, T, d) with n_head heads of d / n_head.
//
// Dropout: the fused causal_attention op has no dropout on the attention
// probabilities, so `attn_drop` is applied to the attention output (the
// concatenated heads, before o_proj) instead, and `resid_drop` to the output
// of o_proj. Both are identities when p == 0 or in eval mode.
class MultiHeadAttention : public Module {
 public:
  // dropout_gen may be null when dropout == 0.
  MultiHeadAttention(int64_t d_model, int64_t n_head, double dropout, Generator& init_gen,
                     std::shared_ptr<Generator> dropout_gen = nullptr);
  Tensor forward(const Tensor& x) override;  // (B, T, d) -> (B, T, d)
  // Packed rows: starts (B, T) i64, query i sees keys starts[b, i] .. i (causal_attention).
  Tensor forward(const Tensor& x, const Tensor& starts);
  std::string type_name() const override { return "MultiHeadAttention"; }
  std::string extra_repr() const override;

  int64_t d_model, n_head;
  ModulePtr q_proj, k_proj, v_proj, o_proj;  // Linear(d, d) with bias, until replaced
  std::shared_ptr<Dropout> attn_drop, resid_drop;
};

// fc_out(gelu_tanh(fc_in(x))), then dropout.
class FFN : public Module {
 public:
  FFN(int64_t d_model, int64_t d_ff, double dropout, Generator& init_gen,
      std::shared_ptr<Generator> dropout_gen = nullptr);
  Tensor forward(const Tensor& x) override;  // (B, T, d) -> (B, T, d)
  std::string type_name() const override { return "FFN"; }

  ModulePtr fc_in;   // Linear(d, d_ff)
  ModulePtr fc_out;  // Linear(d_ff, d)
  std::shared_ptr<Dropout> drop;
};

// x = x + attn(ln1(x)); x = x + mlp(ln2(x)).
class TransformerBlock : public Module {
 public:
  TransformerBlock(int64_t d_model, int64_t n_head, int64_t d_ff, double dropout, Generator& init_gen,
                   std::shared_ptr<Generator> dropout_gen = nullptr);
  Tensor forward(const Tensor& x) override;  // (B, T, d) -> (B, T, d)
  Tensor forward(const Tensor& x, const Tensor& starts);  // starts: see MultiHeadAttention
  std::string type_name() const override { return "TransformerBlock"; }

  std::shared_ptr<LayerNorm> ln1;
  std::shared_ptr<MultiHeadAttention> attn;
  std::shared_ptr<LayerNorm> ln2;
  std::shared_ptr<FFN> mlp;
};

}  // namespace loragrad::nn

// MultiHeadAttention, FFN, TransformerBlock.
#include "loragrad/nn/transformer.hpp"

#include "loragrad/ops.hpp"

namespace loragrad::nn {

// A Dropout module drawing from the model's shared generator (or its own
// when there is none: then p must be 0 for results to be reproducible anyway).
static std::shared_ptr<Dropout> make_dropout(double p, const std::shared_ptr<Generator>& gen) {
  return gen ? std::make_shared<Dropout>(p, gen) : std::make_shared<Dropout>(p);
}

MultiHeadAttention::MultiHeadAttention(int64_t d, int64_t h, double dropout, Generator& init_gen,
                                       std::shared_ptr<Generator> dropout_gen)
    : d_model(d), n_head(h) {
  if (h <= 0 || d <= 0 || d % h != 0)
    throw ValueError("MultiHeadAttention: d_model " + std::to_string(d) + " must be a positive multiple of n_head " +
                     std::to_string(h));
  register_module("q_proj", q_proj = std::make_shared<Linear>(d, d, true, init_gen));
  register_module("k_proj", k_proj = std::make_shared<Linear>(d, d, true, init_gen));
  register_module("v_proj", v_proj = std::make_shared<Linear>(d, d, true, init_gen));
  register_module("o_proj", o_proj = std::make_shared<Linear>(d, d, true, init_gen));
  register_module("attn_drop", attn_drop = make_dropout(dropout, dropout_gen));
  register_module("resid_drop", resid_drop = make_dropout(dropout, dropout_gen));
}

Tensor MultiHeadAttention::forward(const Tensor& x) { return forward(x, Tensor()); }

Tensor MultiHeadAttention::forward(const Tensor& x, const Tensor& starts) {
  // No head transposes: causal_attention reads the heads straight out of (B, T, d).
  Tensor q = q_proj->forward(x);                                // (B, T, d)
  Tensor k = k_proj->forward(x);                                // (B, T, d)
  Tensor v = v_proj->forward(x);                                // (B, T, d)
  Tensor y = attn_drop->forward(causal_attention(q, k, v, n_head, starts));  // (B, T, d)
  return resid_drop->forward(o_proj->forward(y));               // (B, T, d)
}

std::string MultiHeadAttention::extra_repr() const { return "n_head=" + std::to_string(n_head); }

FFN::FFN(int64_t d, int64_t d_ff, double dropout, Generator& init_gen, std::shared_ptr<Generator> dropout_gen) {
  register_module("fc_in", fc_in = std::make_shared<Linear>(d, d_ff, true, init_gen));
  register_module("fc_out", fc_out = std::make_shared<Linear>(d_ff, d, true, init_gen));
  register_module("drop", drop = make_dropout(dropout, dropout_gen));
}

Tensor FFN::forward(const Tensor& x) {
  Tensor h = gelu(fc_in->forward(x));           // (B, T, d_ff)
  return drop->forward(fc_out->forward(h));     // (B, T, d)
}

TransformerBlock::TransformerBlock(int64_t d, int64_t h, int64_t d_ff, double dropout, Generator& init_gen,
                                   std::shared_ptr<Generator> dropout_gen) {
  register_module("ln1", ln1 = std::make_shared<LayerNorm>(d));
  register_module("attn", attn = std::make_shared<MultiHeadAttention>(d, h, dropout, init_gen, dropout_gen));
  register_module("ln2", ln2 = std::make_shared<LayerNorm>(d));
  register_module("mlp", mlp = std::make_shared<FFN>(d, d_ff, dropout, init_gen, dropout_gen));
}

Tensor TransformerBlock::forward(const Tensor& x) { return forward(x, Tensor()); }

Tensor TransformerBlock::forward(const Tensor& x, const Tensor& starts) {
  Tensor x1 = add(x, attn->forward(ln1->forward(x), starts));  // (B, T, d)
  return add(x1, mlp->forward(ln2->forward(x1)));       // (B, T, d)
}

}  // namespace loragrad::nn

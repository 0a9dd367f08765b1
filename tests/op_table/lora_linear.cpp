// Op-table entries for lora_linear (core/src/ops/lora_linear.cpp), over a dense
// base weight (trainable here, so its gradient is checked too), over an NF4
// one (a constant of the op, quantised once per sample as in nf4.cpp) and
// over a bf16 one (a constant too; x held constant in the gradcheck and
// checked by hand, as in bf16.cpp).
#include <memory>

#include "loragrad/generator.hpp"
#include "loragrad/quant/nf4.hpp"
#include "op_table.hpp"

namespace loragrad::testing {

namespace {

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

constexpr double kScale = 0.7;

// inputs: x, W, [bias,] A, B, [x_lora]
Fn dense_fn(bool with_bias, bool with_x_lora) {
  return [=](const std::vector<Tensor>& t) {
    size_t i = 2;
    const Tensor bias = with_bias ? t[i++] : Tensor();
    const Tensor& a = t[i++];
    const Tensor& b = t[i++];
    return lora_linear(t[0], t[1], bias, a, b, kScale, with_x_lora ? t[i] : Tensor());
  };
}

// inputs: x, [bias,] A, B, [x_lora]; W (out, in) NF4 from a fixed draw.
Fn nf4_fn(const Shape& weight_shape, int64_t blocksize, bool with_bias, bool with_x_lora, uint64_t seed) {
  Generator gen(seed);
  auto w = std::make_shared<const NF4Tensor>(quantize_nf4(uniform(weight_shape, -1.0, 1.0, gen), blocksize, true));
  return [=](const std::vector<Tensor>& t) {
    size_t i = 1;
    const Tensor bias = with_bias ? t[i++] : Tensor();
    const Tensor& a = t[i++];
    const Tensor& b = t[i++];
    return lora_linear(t[0], w, bias, a, b, kScale, with_x_lora ? t[i] : Tensor());
  };
}

// inputs: x (constant: the bf16 base rounds it, see OpSample::check), [bias,]
// A, B, [x_lora]; W (out, in) bf16 from a fixed draw.
OpSample bf16_sample(const std::string& label, const Shape& x_shape, const Shape& w_shape, int64_t r, bool with_bias,
                     bool with_x_lora, uint64_t seed) {
  Generator gen(seed);
  auto w = std::make_shared<const BF16Tensor>(quantize_bf16(uniform(w_shape, -1.0, 1.0, gen)));
  Tensor x = sample_input(x_shape, seed + 1);
  x.requires_grad_(false);
  std::vector<Tensor> inputs{x};
  Bf16Operands o;
  o.w = w;
  o.scale = kScale;
  if (with_bias) {
    o.bias = int(inputs.size());
    inputs.push_back(sample_input({w_shape[0]}, seed + 2));
  }
  o.a = int(inputs.size());
  inputs.push_back(sample_input({r, w_shape[1]}, seed + 3));
  o.b = int(inputs.size());
  inputs.push_back(sample_input({w_shape[0], r}, seed + 4));
  if (with_x_lora) {
    o.x_lora = int(inputs.size());
    inputs.push_back(sample_input(x_shape, seed + 5));
  }
  Fn fn = [=](const std::vector<Tensor>& t) {
    const Tensor bias = o.bias >= 0 ? t[o.bias] : Tensor();
    return lora_linear(t[0], w, bias, t[o.a], t[o.b], kScale, o.x_lora >= 0 ? t[o.x_lora] : Tensor());
  };
  OpSample s{label, inputs, fn};
  s.check = bf16_manual_check(o, fn);
  return s;
}

}  // namespace

void add_lora_linear_entries(OpTable& t) {
  auto in = [](const Shape& s, uint64_t seed) { return sample_input(s, seed); };
  t.push_back(
      {Op::lora_linear,
       {{"x [7, 13] W [5, 13] b [5] A [3, 13] B [5, 3]",
         {in({7, 13}, 480), in({5, 13}, 481), in({5}, 482), in({3, 13}, 483), in({5, 3}, 484)},
         dense_fn(true, false)},
        {"x [2, 3, 4] W [6, 4] no bias A [2, 4] B [6, 2] x_lora",
         {in({2, 3, 4}, 485), in({6, 4}, 486), in({2, 4}, 487), in({6, 2}, 488), in({2, 3, 4}, 489)},
         dense_fn(false, true)},
        {"x [4] W [3, 4] b [3] A [1, 4] B [3, 1]",
         {in({4}, 490), in({3, 4}, 491), in({3}, 492), in({1, 4}, 493), in({3, 1}, 494)},
         dense_fn(true, false)},
        {"x [7, 13] W nf4 [5, 13] b [5] A [3, 13] B [5, 3]",
         {in({7, 13}, 495), in({5}, 496), in({3, 13}, 497), in({5, 3}, 498)},
         nf4_fn({5, 13}, 32, true, false, 499)},
        {"x [2, 3, 40] W nf4 [6, 40] no bias A [2, 40] B [6, 2] x_lora",
         {in({2, 3, 40}, 500), in({2, 40}, 501), in({6, 2}, 502), in({2, 3, 40}, 503)},
         nf4_fn({6, 40}, 64, false, true, 504)},
        // A bf16 base: gradcheck covers bias, A, B and x_lora, the manual check y and dx.
        bf16_sample("x [7, 13] W bf16 [5, 13] b [5] A [3, 13] B [5, 3]", {7, 13}, {5, 13}, 3, true, false, 505),
        bf16_sample("x [2, 3, 40] W bf16 [6, 40] no bias A [2, 40] B [6, 2] x_lora", {2, 3, 40}, {6, 40}, 2, false,
                    true, 511)}});
}

}  // namespace loragrad::testing

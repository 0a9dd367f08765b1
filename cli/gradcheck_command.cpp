// loragrad gradcheck: float64 finite differences against the analytic
// gradients of a LoRA-wrapped TinyGPT and of the ops a transformer block uses.
#include <functional>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "common.hpp"
#include "loragrad/gradcheck.hpp"
#include "loragrad/lora/inject.hpp"
#include "loragrad/ops.hpp"

namespace loragrad::cli {

namespace {

Tensor leaf(Tensor t) {
  t.requires_grad_(true);
  return t;
}

struct Check {
  std::string name;
  std::function<GradcheckResult()> run;
};

// A one-block TinyGPT in float64 with LoRA (random A and B, so B's gradient
// is not the only one that is nonzero) on every linear layer; the loss is
// checked against every adapter parameter at once.
GradcheckResult lora_tinygpt(uint64_t seed) {
  nn::TinyGPTConfig c;
  c.vocab_size = 16;
  c.block_size = 4;
  c.d_model = 8;
  c.n_layer = 1;
  c.n_head = 2;
  c.seed = seed;
  c.dtype = DType::f64;
  auto model = std::make_shared<nn::TinyGPT>(c);
  lora::LoraConfig cfg;
  cfg.r = 2;
  cfg.lora_alpha = 4;
  cfg.target_modules = {"all-linear"};
  cfg.init_lora_weights = lora::LoraInit::random;
  cfg.seed = seed;
  lora::apply_lora(*model, cfg);
  model->eval();

  std::vector<Tensor*> slots;
  for (const auto& [path, layer] : lora::lora_layers(*model)) {
    slots.push_back(&layer->lora_A_weight("default"));
    slots.push_back(&layer->lora_B_weight("default"));
  }
  std::vector<Tensor> inputs;
  for (Tensor* s : slots) inputs.push_back(leaf(s->clone()));
  Generator gen(seed + 1);
  const Tensor idx = randint({2, 4}, 0, 16, gen), targets = randint({2, 4}, 0, 16, gen);
  return gradcheck(
      [&](const std::vector<Tensor>& in) {
        for (size_t i = 0; i < slots.size(); ++i) *slots[i] = in[i];  // the layer computes with these handles
        return model->loss(idx, targets);
      },
      inputs);
}

}  // namespace

int run_gradcheck(int argc, char** argv) {
  Args a("gradcheck",
         "Float64 gradient check (central differences against backward) of a LoRA-wrapped TinyGPT block\n"
         "and of the ops a transformer block is made of. Exit status 1 when a check fails.");
  a.option("--seed", "N", "random inputs", "0");
  if (!a.parse(argc, argv)) return 0;
  const uint64_t seed = static_cast<uint64_t>(a.integer("--seed", 0, 1000000000));

  Generator gen(seed + 100);
  auto r = [&](const Shape& s) { return leaf(randn(s, gen, DType::f64)); };
  const std::vector<Check> checks = {
      {"TinyGPT (1 block, d 8) + LoRA r 2 on all-linear: loss w.r.t. every A and B", [&] { return lora_tinygpt(seed); }},
      {"linear(x, W, b)", [&] { return gradcheck([](auto& in) { return linear(in[0], in[1], in[2]); },
                                                 {r({2, 3, 5}), r({4, 5}), r({4})}); }},
      {"layer_norm(x, g, b)", [&] { return gradcheck([](auto& in) { return layer_norm(in[0], in[1], in[2]); },
                                                     {r({2, 3, 6}), r({6}), r({6})}); }},
      {"gelu(x)", [&] { return gradcheck([](auto& in) { return gelu(in[0]); }, {r({3, 7})}); }},
      {"causal_attention(q, k, v, 2 heads)",
       [&] { return gradcheck([](auto& in) { return causal_attention(in[0], in[1], in[2], 2); },
                              {r({2, 3, 4}), r({2, 3, 4}), r({2, 3, 4})}); }},
      {"cross_entropy(logits, targets)", [&] {
         const Tensor targets = randint({2, 3}, 0, 5, gen);
         return gradcheck([targets](auto& in) { return cross_entropy(in[0], targets); }, {r({2, 3, 5})});
       }},
  };
  int failed = 0;
  for (const Check& c : checks) {
    const GradcheckResult res = c.run();
    std::cout << (res.ok ? "ok    " : "FAIL  ") << c.name << "   (max |analytic - numeric| "
              << res.max_abs_error << ")\n";
    if (!res.ok) {
      std::cout << "      " << res.report << "\n";
      ++failed;
    }
  }
  std::cout << (failed == 0 ? "all " + std::to_string(checks.size()) + " checks passed\n"
                            : std::to_string(failed) + " of " + std::to_string(checks.size()) + " checks failed\n");
  return failed == 0 ? 0 : 1;
}

}  // namespace loragrad::cli

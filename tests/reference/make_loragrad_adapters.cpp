// Writes adapters saved by loragrad, for the PEFT round trip in the other
// direction: tests/reference/make_peft_fixtures.py --check-loragrad loads each
// with PEFT's PeftModel.from_pretrained and compares PEFT's logits with the
// ones loragrad computed here.
//
//   make -C build make_loragrad_adapters
//   build/tests/make_loragrad_adapters tests/reference/fixtures
//
// For each case it writes fixtures/loragrad_adapters/<case>/ (adapter_config.json,
// adapter_model.safetensors) and <case>/expected.safetensors: logits of the
// Tiny GPT (fixtures/tinygpt_small.safetensors) in float64 with the adapter as
// saved (float32 values), for the batch in tinygpt_small_expected.safetensors.
#include <iostream>

#include "loragrad/autograd.hpp"
#include "loragrad/generator.hpp"
#include "loragrad/lora/inject.hpp"
#include "loragrad/lora/peft_io.hpp"
#include "loragrad/nn/tiny_gpt.hpp"
#include "loragrad/safetensors.hpp"

using namespace loragrad;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: make_loragrad_adapters FIXTURE_DIR\n";
    return 2;
  }
  const std::string fx = argv[1];
  const SafetensorsFile batch = load_safetensors(fx + "/tinygpt_small_expected.safetensors");
  struct Case {
    std::string name;
    lora::LoraConfig cfg;
  };
  std::vector<Case> cases(2);
  cases[0].name = "lora_qv";
  cases[0].cfg.r = 4;
  cases[0].cfg.lora_alpha = 8;
  cases[0].cfg.target_modules = {"q_proj", "v_proj"};
  cases[1].name = "dora_rslora_all";
  cases[1].cfg.r = 4;
  cases[1].cfg.lora_alpha = 8;
  cases[1].cfg.use_dora = true;
  cases[1].cfg.use_rslora = true;
  cases[1].cfg.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "fc_in", "fc_out"};
  cases[1].cfg.rank_pattern = {{"fc_in", 2}};

  for (const Case& c : cases) {
    const std::string dir = fx + "/loragrad_adapters/" + c.name;
    {
      // Train nothing: random A, B (B = 0 would hide a transposed or missing B).
      auto model = nn::TinyGPT::load(fx + "/tinygpt_small.safetensors", DType::f32);
      lora::apply_lora(*model, c.cfg);
      Generator gen(42);
      NoGradGuard ng;
      for (auto& [name, p] : model->named_parameters())
        if (p.requires_grad()) p.add_(randn(p.shape(), gen, p.dtype()), 0.1);
      lora::save_adapter(*model, dir, "default", /*overwrite=*/true);
    }
    // The logits PEFT must reproduce: a fresh float64 model with the saved adapter.
    auto model = nn::TinyGPT::load(fx + "/tinygpt_small.safetensors", DType::f64);
    lora::load_adapter(*model, dir);
    model->eval();
    NoGradGuard ng;
    Tensor logits = model->forward(batch.at("idx"));
    save_safetensors(dir + "/expected.safetensors", {{"logits", logits}}, {{"generated_by", "make_loragrad_adapters"}});
    std::cout << "wrote " << dir << "\n";
  }
  return 0;
}

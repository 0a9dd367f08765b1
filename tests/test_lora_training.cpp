// LoRA, DoRA and QLoRA adapters train a Tiny GPT: the loss on held-out text of
// the new domain falls, only adapter parameters change, and disabling the
// adapter gives back the base model's loss exactly.
#define BOOST_TEST_MODULE lora_training
#include <boost/test/unit_test.hpp>

#include "loragrad/autograd.hpp"
#include "loragrad/data/byte_dataset.hpp"
#include "loragrad/data/corpus.hpp"
#include "loragrad/lora/combine.hpp"
#include "loragrad/lora/inject.hpp"
#include "loragrad/nn/tiny_gpt.hpp"
#include "loragrad/optim/adamw.hpp"

using namespace loragrad;

namespace {

std::shared_ptr<nn::TinyGPT> small_model() {
  nn::TinyGPTConfig cfg;
  cfg.block_size = 32;
  cfg.d_model = 32;
  cfg.n_layer = 2;
  cfg.n_head = 4;
  cfg.seed = 1;
  auto model = std::make_shared<nn::TinyGPT>(cfg);
  // A freshly initialised head (std 0.02) makes every logit near zero, and an
  // adapter on the blocks could barely move them: give the frozen head the
  // scale a trained one has, so the adapters have something to steer.
  for (auto& [name, p] : model->named_parameters())
    if (name == "lm_head.weight") p.mul_(10.0);
  return model;
}

double eval_loss(nn::TinyGPT& model, const data::ByteDataset& data) {
  NoGradGuard ng;
  Generator gen(99);  // the same validation batches every call
  double total = 0;
  for (int i = 0; i < 4; ++i) {
    data::Batch b = data.sample(data::Split::validation, 8, 32, gen);
    total += model.loss(b.x, b.y).item();
  }
  return total / 4;
}

struct Outcome {
  double before, after, disabled;
  bool base_unchanged;
};

Outcome adapt(lora::LoraConfig cfg) {
  auto model = small_model();
  NamedTensors base_before;
  for (auto& [name, p] : model->named_parameters()) base_before.push_back({name, p.clone()});
  data::ByteDataset data(data::builtin_corpus(data::Domain::recipes, 60000, 5));
  lora::apply_lora(*model, cfg);
  std::vector<Tensor> trainable;
  for (auto& p : model->parameters())
    if (p.requires_grad()) trainable.push_back(p);
  optim::AdamW opt(trainable, /*lr=*/3e-2, /*weight_decay=*/0.0);
  const double before = eval_loss(*model, data);
  Generator gen(3);
  for (int step = 0; step < 80; ++step) {
    data::Batch b = data.sample(data::Split::train, 8, 32, gen);
    opt.zero_grad();
    model->loss(b.x, b.y).backward();
    opt.step();
  }
  const double after = eval_loss(*model, data);
  lora::disable_adapters(*model);
  const double disabled = eval_loss(*model, data);
  // The frozen base weights are bit-identical to before training (NF4 bases are
  // compared through their biases only: the weight is quantised).
  bool unchanged = true;
  for (auto& [name, p] : model->named_parameters()) {
    std::string base_name = name;
    auto pos = base_name.find(".base_layer");
    if (pos != std::string::npos) base_name.erase(pos, 11);
    for (auto& [n0, p0] : base_before)
      if (n0 == base_name && p.shape() == p0.shape()) unchanged = unchanged && p.to_vector() == p0.to_vector();
  }
  return {before, after, disabled, unchanged};
}

}  // namespace

BOOST_AUTO_TEST_CASE(lora_on_q_and_v_learns) {
  lora::LoraConfig cfg;
  cfg.r = 4;
  cfg.lora_alpha = 8;
  cfg.target_modules = {"q_proj", "v_proj"};
  Outcome o = adapt(cfg);
  BOOST_TEST_MESSAGE("lora: " << o.before << " -> " << o.after);
  BOOST_TEST(o.after < o.before - 1.0);
  BOOST_TEST(o.disabled == o.before);  // disabled adapter: exactly the base model
  BOOST_TEST(o.base_unchanged);
}

BOOST_AUTO_TEST_CASE(dora_on_all_linear_layers_learns) {
  lora::LoraConfig cfg;
  cfg.r = 4;
  cfg.lora_alpha = 8;
  cfg.use_dora = true;
  cfg.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "fc_in", "fc_out"};
  Outcome o = adapt(cfg);
  BOOST_TEST_MESSAGE("dora: " << o.before << " -> " << o.after);
  BOOST_TEST(o.after < o.before - 1.0);
  BOOST_TEST(o.disabled == o.before);
  BOOST_TEST(o.base_unchanged);
}

BOOST_AUTO_TEST_CASE(qlora_learns) {
  lora::LoraConfig cfg;
  cfg.r = 4;
  cfg.lora_alpha = 8;
  cfg.qlora = true;
  cfg.target_modules = {"all-linear"};
  Outcome o = adapt(cfg);
  BOOST_TEST_MESSAGE("qlora: " << o.before << " -> " << o.after);
  BOOST_TEST(o.after < o.before - 1.0);
  BOOST_TEST(o.disabled == o.before);  // base = the NF4 model, before training
}

// save_adapter with the LoraConfig the adapter was made with
// (AdapterProvenance::requested): adapter_config.json holds that config as
// given (r, target names, patterns, modules_to_save), as PEFT writes the config
// it was handed, when it rebuilds the adapter exactly; otherwise the config
// rebuilt from the layers. And adapter_subdir, PEFT's save_pretrained layout.
#define BOOST_TEST_MODULE peft_config_saved
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "loragrad/autograd.hpp"
#include "loragrad/generator.hpp"
#include "loragrad/lora/inject.hpp"
#include "loragrad/lora/peft_io.hpp"
#include "loragrad/nn/tiny_gpt.hpp"
#include "loragrad/ops.hpp"
#include "test_util.hpp"

using namespace loragrad;
using namespace loragrad::lora;
namespace fs = std::filesystem;

namespace {

std::shared_ptr<nn::TinyGPT> tiny() {
  nn::TinyGPTConfig c;
  c.vocab_size = 256;
  c.block_size = 16;
  c.d_model = 32;
  c.n_layer = 2;
  c.n_head = 4;
  c.d_ff = 128;
  c.seed = 1;
  c.dtype = DType::f64;
  return std::make_shared<nn::TinyGPT>(c);
}

std::vector<double> logits(nn::TinyGPT& m) {
  NoGradGuard no_grad;
  std::vector<int64_t> ids;
  for (int i = 0; i < 16; ++i) ids.push_back((i * 37 + 11) % 256);
  return m.forward(from_indices(ids, {1, 16})).to_vector();
}

// The files hold float32: a float64 model reloads to float32 rounding.
bool close(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return false;
  double d = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(a[i] - b[i])), scale = std::max(scale, std::abs(a[i]));
  return d <= 1e-6 * scale;
}

void randomise(nn::Module& m) {
  Generator g(3);
  NoGradGuard no_grad;
  for (const auto& [path, layer] : lora_layers(m)) {
    Tensor& B = layer->lora_B_weight("default");
    B.copy_(randn(B.shape(), g, B.dtype()) * 0.2);
  }
}

// r 8, alpha 16 for most modules; q_proj at r 4, v_proj at alpha 32; lm_head trained.
LoraConfig requested_config() {
  LoraConfig c;
  c.r = 8;
  c.lora_alpha = 16;
  c.target_modules = {"q_proj", "v_proj"};
  c.rank_pattern = {{"q_proj", 4}};
  c.alpha_pattern = {{"v_proj", 32}};
  c.modules_to_save = {"lm_head"};
  c.use_rslora = true;
  c.init_lora_weights = LoraInit::gaussian;
  return c;
}

}  // namespace

BOOST_AUTO_TEST_CASE(the_requested_config_is_written_as_given) {
  TempDir tmp;
  auto m = tiny();
  const LoraConfig cfg = requested_config();
  apply_lora(*m, cfg);
  randomise(*m);
  BOOST_CHECK(config_describes_adapter(*m, cfg));

  AdapterProvenance prov;
  prov.requested = cfg;
  save_adapter(*m, tmp.file("given"), "default", false, prov);
  const LoraConfig w = read_adapter_config(tmp.file("given/adapter_config.json"));
  BOOST_CHECK_EQUAL(w.r, 8);
  BOOST_CHECK_EQUAL(w.lora_alpha, 16.0);
  BOOST_CHECK(w.target_modules == (std::vector<std::string>{"q_proj", "v_proj"}));
  BOOST_CHECK(w.rank_pattern == (std::vector<std::pair<std::string, int64_t>>{{"q_proj", 4}}));
  BOOST_CHECK(w.alpha_pattern == (std::vector<std::pair<std::string, double>>{{"v_proj", 32.0}}));
  BOOST_CHECK(w.modules_to_save == std::vector<std::string>{"lm_head"});
  BOOST_CHECK(w.use_rslora);
  BOOST_CHECK(w.init_lora_weights == LoraInit::gaussian);

  // Without it: the config rebuilt from the layers (full paths in the patterns).
  save_adapter(*m, tmp.file("rebuilt"), "default", false, {});
  const LoraConfig rb = read_adapter_config(tmp.file("rebuilt/adapter_config.json"));
  BOOST_CHECK(!rb.rank_pattern.empty());
  for (const auto& [key, value] : rb.rank_pattern) BOOST_CHECK(key.find("blocks") != std::string::npos);

  // Both reload to the same model.
  const auto want = logits(*m);
  for (const char* dir : {"given", "rebuilt"}) {
    auto fresh = tiny();
    load_adapter(*fresh, tmp.file(dir));
    BOOST_CHECK(close(logits(*fresh), want));
  }
}

BOOST_AUTO_TEST_CASE(a_config_that_does_not_rebuild_the_adapter_is_not_written) {
  TempDir tmp;
  auto m = tiny();
  const LoraConfig cfg = requested_config();
  apply_lora(*m, cfg);
  for (auto change : {0, 1, 2, 3, 4}) {
    LoraConfig other = cfg;
    if (change == 0) other.r = 6;                           // the modules without a pattern differ
    if (change == 1) other.target_modules = {"q_proj"};     // v_proj is adapted all the same
    if (change == 2) other.use_rslora = false;
    if (change == 3) other.modules_to_save = {};            // lm_head trains all the same
    if (change == 4) other.rank_pattern = {{"k_proj", 4}};  // q_proj would get r 8
    BOOST_CHECK_MESSAGE(!config_describes_adapter(*m, other), "change " << change);
  }
  // save_adapter falls back to the rebuilt config: still a faithful file.
  LoraConfig wrong = cfg;
  wrong.r = 6;
  AdapterProvenance prov;
  prov.requested = wrong;
  save_adapter(*m, tmp.file("a"), "default", false, prov);
  const LoraConfig w = read_adapter_config(tmp.file("a/adapter_config.json"));
  BOOST_CHECK_NE(w.r, 6);
  auto fresh = tiny();
  load_adapter(*fresh, tmp.file("a"));
  BOOST_CHECK(close(logits(*fresh), logits(*m)));
}

// PEFT expands "all-linear" to the module names before saving (a list holding
// "all-linear" would name no module there); so does save_adapter.
BOOST_AUTO_TEST_CASE(all_linear_is_written_as_the_module_names) {
  TempDir tmp;
  auto m = tiny();
  LoraConfig cfg;
  cfg.target_modules = {"all-linear"};
  cfg.rank_pattern = {{"fc_in", 2}};
  apply_lora(*m, cfg);
  BOOST_CHECK(config_describes_adapter(*m, cfg));
  AdapterProvenance prov;
  prov.requested = cfg;
  save_adapter(*m, tmp.file("a"), "default", false, prov);
  const LoraConfig w = read_adapter_config(tmp.file("a/adapter_config.json"));
  BOOST_CHECK(w.target_modules ==
              (std::vector<std::string>{"fc_in", "fc_out", "k_proj", "o_proj", "q_proj", "v_proj"}));
  BOOST_CHECK(w.rank_pattern == (std::vector<std::pair<std::string, int64_t>>{{"fc_in", 2}}));
  auto fresh = tiny();
  load_adapter(*fresh, tmp.file("a"));
  BOOST_CHECK(close(logits(*fresh), logits(*m)));
}

BOOST_AUTO_TEST_CASE(adapter_subdir_is_peft_save_pretrained_layout) {
  BOOST_CHECK_EQUAL(adapter_subdir("out/run", "default"), "out/run");
  BOOST_CHECK_EQUAL(adapter_subdir("out/run", "recipes"), (fs::path("out/run") / "recipes").string());
}

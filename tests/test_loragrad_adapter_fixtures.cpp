// The adapters in tests/reference/fixtures/loragrad_adapters/ were saved by
// loragrad and verified to load in PEFT 0.21 (peft_check.txt there, made by
// make_peft_fixtures.py --check-loragrad). This test keeps loragrad reading
// them back to the same logits, so a change of the file format shows up here.
#define BOOST_TEST_MODULE loragrad_adapter_fixtures
#include <boost/test/unit_test.hpp>

#include <cmath>

#include "loragrad/autograd.hpp"
#include "loragrad/lora/peft_io.hpp"
#include "loragrad/nn/tiny_gpt.hpp"
#include "loragrad/safetensors.hpp"

using namespace loragrad;

static const std::string kFixtures = LORAGRAD_FIXTURE_DIR;

static void check_case(const std::string& name) {
  const std::string dir = kFixtures + "/loragrad_adapters/" + name;
  auto model = nn::TinyGPT::load(kFixtures + "/tinygpt_small.safetensors", DType::f64);
  lora::LoraReport rep = lora::load_adapter(*model, dir);
  model->eval();
  NoGradGuard ng;
  Tensor idx = load_safetensors(kFixtures + "/tinygpt_small_expected.safetensors").at("idx");
  std::vector<double> got = model->forward(idx).to_vector();
  std::vector<double> want = load_safetensors(dir + "/expected.safetensors").at("logits").to_vector();
  BOOST_REQUIRE_EQUAL(got.size(), want.size());
  double scale = 0, worst = 0;
  for (double v : want) scale = std::max(scale, std::abs(v));
  for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]));
  BOOST_TEST(worst / scale <= 1e-12, name << ": max relative difference " << worst / scale);
}

BOOST_AUTO_TEST_CASE(lora_qv_reads_back) { check_case("lora_qv"); }
BOOST_AUTO_TEST_CASE(dora_rslora_all_reads_back) { check_case("dora_rslora_all"); }

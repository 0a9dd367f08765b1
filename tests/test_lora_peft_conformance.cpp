// LoRA and DoRA on TinyGPT against real HF PEFT 0.21 (tests/reference/make_peft_fixtures.py).
//
// PEFT wrapped the TinyGPT checkpoint with two configs (q/v LoRA r=4; rsLoRA +
// DoRA on all six projections), gave every adapter parameter a random value,
// ran a fixed batch in float64 and recorded logits, loss and the gradient of
// every trainable parameter, then saved the adapter with save_pretrained.
// Here loragrad loads those PEFT directories with load_adapter into its own
// TinyGPT and must agree to 1e-10 relative in float64. Then loragrad saves the
// adapter itself, and the directory must look like PEFT's.
#define BOOST_TEST_MODULE lora_peft_conformance
#include <boost/test/unit_test.hpp>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "loragrad/lora/combine.hpp"
#include "loragrad/lora/inject.hpp"
#include "loragrad/lora/peft_io.hpp"
#include "loragrad/nn/tiny_gpt.hpp"
#include "loragrad/ops.hpp"
#include "loragrad/safetensors.hpp"

using namespace loragrad;
using namespace loragrad::lora;
namespace fs = std::filesystem;

namespace {

const std::string kDir = LORAGRAD_FIXTURE_DIR;
const std::string kCheckpoint = kDir + "/tinygpt_small.safetensors";
const std::string kBatch = kDir + "/tinygpt_small_expected.safetensors";
const std::string kPeft = kDir + "/peft";

double max_abs(const Tensor& t) {
  double m = 0;
  for (double v : t.to_vector()) m = std::max(m, std::abs(v));
  return m;
}

// max |got - want| relative to max |want| (see test_tinygpt_conformance.cpp).
double relative_error(const Tensor& got, const Tensor& want) {
  const auto g = got.to_vector(), w = want.to_vector();
  BOOST_REQUIRE_EQUAL(g.size(), w.size());
  double diff = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    if (std::isnan(g[i])) return INFINITY;
    diff = std::max(diff, std::abs(g[i] - w[i]));
  }
  const double scale = max_abs(want);
  return scale > 0 ? diff / scale : diff;
}

std::shared_ptr<nn::TinyGPT> base_model() {
  auto model = nn::TinyGPT::load(kCheckpoint, DType::f32);
  model->to(DType::f64);
  model->eval();
  return model;
}

struct Run {
  Tensor logits, loss;
};
Run run_batch(nn::TinyGPT& model) {
  const SafetensorsFile batch = load_safetensors(kBatch);
  Tensor logits = model.forward(batch.at("idx"));
  Tensor loss = cross_entropy(logits, batch.at("targets"));
  return {logits, loss};
}

// A fresh directory under the system temp dir, removed at scope exit.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag) {
    path = fs::temp_directory_path() / ("loragrad_peft_conf_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

nlohmann::json read_json(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return nlohmann::json::parse(ss.str());
}

void check_case(const std::string& name, int64_t expected_adapter_params) {
  auto model = base_model();
  const SafetensorsFile want = load_safetensors(kPeft + "/tinygpt_" + name + ".safetensors");
  // The adapter matters: without it the logits are far from PEFT's.
  BOOST_CHECK_GT(relative_error(run_batch(*model).logits, want.at("logits")), 1e-3);

  const LoraReport rep = load_adapter(*model, kPeft + "/tinygpt_" + name);
  BOOST_TEST_MESSAGE(rep.str());
  BOOST_CHECK_EQUAL(rep.trainable_params, expected_adapter_params);
  BOOST_CHECK(model->dtype() == DType::f64);

  Run run = run_batch(*model);
  run.loss.backward();
  double err = relative_error(run.logits, want.at("logits"));
  BOOST_CHECK_MESSAGE(err <= 1e-10, name << " logits: relative error " << err);
  err = relative_error(run.loss, want.at("loss"));
  BOOST_CHECK_MESSAGE(err <= 1e-10, name << " loss " << run.loss.item() << " vs " << want.at("loss").item());

  // The trainable parameters are exactly PEFT's (same in-model names), with
  // the loaded values and PEFT's gradients.
  const std::string prefix = "grad.base_model.model.";
  std::set<std::string> peft_trainable, ours;
  for (const auto& [n, t] : want.tensors)
    if (n.rfind(prefix, 0) == 0) peft_trainable.insert(n.substr(prefix.size()));
  for (const auto& [n, p] : model->named_parameters()) {
    if (!p.requires_grad()) {
      BOOST_CHECK_MESSAGE(!p.grad().defined(), n << " is frozen but has a gradient");
      continue;
    }
    ours.insert(n);
    const std::string key = "base_model.model." + n;
    BOOST_REQUIRE_MESSAGE(want.contains("grad." + key), n << " is trainable here but not in PEFT");
    BOOST_CHECK_EQUAL(relative_error(p, want.at("value." + key)), 0.0);
    BOOST_REQUIRE_MESSAGE(p.grad().defined(), n << " has no gradient");
    err = relative_error(p.grad(), want.at("grad." + key));
    BOOST_CHECK_MESSAGE(err <= 1e-10, name << " grad " << n << ": relative error " << err);
  }
  BOOST_CHECK(ours == peft_trainable);
}

}  // namespace

BOOST_AUTO_TEST_CASE(lora_qv_matches_peft) {
  // q_proj and v_proj of 2 blocks, d = 32, r = 4: 4 modules * 4 * (32 + 32).
  check_case("lora_qv", 4 * 4 * (32 + 32));
}

BOOST_AUTO_TEST_CASE(dora_rslora_all_projections_match_peft) {
  // per block: q, k, v, o: 4 * (4 * 64 + 32); fc_in: 4 * (32 + 128) + 128; fc_out: 4 * (128 + 32) + 32.
  check_case("dora_all", 2 * (4 * (4 * 64 + 32) + (4 * 160 + 128) + (4 * 160 + 32)));
}

BOOST_AUTO_TEST_CASE(peft_config_is_read_as_written) {
  const LoraConfig qv = read_adapter_config(kPeft + "/tinygpt_lora_qv/adapter_config.json");
  BOOST_CHECK_EQUAL(qv.r, 4);
  BOOST_CHECK_EQUAL(qv.lora_alpha, 8.0);
  BOOST_CHECK(!qv.target_regex);
  BOOST_CHECK(std::set<std::string>(qv.target_modules.begin(), qv.target_modules.end()) ==
              (std::set<std::string>{"q_proj", "v_proj"}));
  BOOST_CHECK(!qv.use_dora && !qv.use_rslora && qv.init_lora_weights == LoraInit::standard);
  const LoraConfig all = read_adapter_config(kPeft + "/tinygpt_dora_all/adapter_config.json");
  BOOST_CHECK(all.use_dora && all.use_rslora);
  BOOST_CHECK_EQUAL(all.target_modules.size(), 6u);
}

// loragrad's own save, for the same adapter, is PEFT's file: config keys and
// values, tensor names, shapes, dtype and metadata. Reloading it reproduces
// the outputs bit for bit (the values are float32-representable).
BOOST_AUTO_TEST_CASE(save_adapter_writes_peft_files_and_round_trips) {
  for (const std::string name : {"lora_qv", "dora_all"}) {
    const std::string peft_dir = kPeft + "/tinygpt_" + name;
    auto model = base_model();
    load_adapter(*model, peft_dir);
    const Run before = run_batch(*model);

    TempDir tmp(name);
    save_adapter(*model, tmp.path.string());
    BOOST_CHECK(fs::exists(tmp.path / "adapter_config.json"));
    BOOST_CHECK(fs::exists(tmp.path / "adapter_model.safetensors"));

    // adapter_config.json: PEFT's keys, PEFT's values (target_modules is a set).
    nlohmann::json peft_cfg = read_json(fs::path(peft_dir) / "adapter_config.json");
    nlohmann::json ours_cfg = read_json(tmp.path / "adapter_config.json");
    std::set<std::string> peft_keys, our_keys;
    for (const auto& [k, v] : peft_cfg.items()) peft_keys.insert(k);
    for (const auto& [k, v] : ours_cfg.items()) our_keys.insert(k);
    BOOST_CHECK(peft_keys == our_keys);
    for (const auto& [k, v] : peft_cfg.items()) {
      if (k == "auto_mapping") continue;  // names the Python class that built PEFT's model
      if (k == "target_modules") {
        auto as_set = [](const nlohmann::json& j) { return j.get<std::set<std::string>>(); };
        BOOST_CHECK(as_set(v) == as_set(ours_cfg[k]));
        continue;
      }
      BOOST_CHECK_MESSAGE(v == ours_cfg[k], name << " key " << k << ": PEFT " << v.dump() << ", loragrad "
                                                 << ours_cfg[k].dump());
    }
    BOOST_CHECK_EQUAL(ours_cfg["auto_mapping"]["base_model_class"].get<std::string>(), "TinyGPT");

    // adapter_model.safetensors: same names, shapes, float32, {"format": "pt"}, same values.
    const SafetensorsFile peft_file = load_safetensors(peft_dir + "/adapter_model.safetensors");
    const SafetensorsFile our_file = load_safetensors((tmp.path / "adapter_model.safetensors").string());
    BOOST_CHECK(our_file.metadata == peft_file.metadata);
    BOOST_REQUIRE_EQUAL(our_file.tensors.size(), peft_file.tensors.size());
    for (const auto& [n, t] : peft_file.tensors) {
      BOOST_REQUIRE_MESSAGE(our_file.contains(n), "loragrad's file lacks " << n);
      const Tensor& mine = our_file.at(n);
      BOOST_CHECK(mine.dtype() == DType::f32);
      BOOST_CHECK(mine.shape() == t.shape());
      BOOST_CHECK_EQUAL(relative_error(mine, t), 0.0);
    }

    auto again = base_model();
    load_adapter(*again, tmp.path.string());
    const Run after = run_batch(*again);
    BOOST_CHECK(after.logits.to_vector() == before.logits.to_vector());
    BOOST_CHECK_EQUAL(after.loss.item(), before.loss.item());
  }
}

// merge_and_unload on the PEFT DoRA adapter gives the same logits as the
// unmerged model, and leaves a plain TinyGPT with the base's parameter names.
BOOST_AUTO_TEST_CASE(merge_and_unload_peft_dora_adapter) {
  auto model = base_model();
  load_adapter(*model, kPeft + "/tinygpt_dora_all");
  const Run unmerged = run_batch(*model);
  const MergeReport rep = merge_and_unload(*model);
  BOOST_CHECK_EQUAL(rep.merged.size(), 12u);
  BOOST_CHECK(lora_layers(*model).empty());
  const Run merged = run_batch(*model);
  const double err = relative_error(merged.logits, unmerged.logits);
  BOOST_CHECK_MESSAGE(err <= 1e-12, "merged logits: relative error " << err);
  auto base = base_model();
  const auto names = model->named_parameters(), base_names = base->named_parameters();
  BOOST_REQUIRE_EQUAL(names.size(), base_names.size());
  for (size_t i = 0; i < names.size(); ++i) BOOST_CHECK_EQUAL(names[i].first, base_names[i].first);
}

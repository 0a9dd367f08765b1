// adapter_config.json and adapter directories: PEFT's exact layout, round
// trips, atomic saves, and refusals that name the file and the key / tensor.
#define BOOST_TEST_MODULE peft_io
#include <boost/test/unit_test.hpp>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "test_util.hpp"
#include "loragrad/autograd.hpp"
#include "loragrad/generator.hpp"
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

const std::string kPeft = std::string(LORAGRAD_FIXTURE_DIR) + "/peft";




std::shared_ptr<nn::TinyGPT> tiny(DType dt = DType::f32) {
  nn::TinyGPTConfig c;
  c.vocab_size = 64;
  c.block_size = 8;
  c.d_model = 16;
  c.n_layer = 2;
  c.n_head = 2;
  c.d_ff = 32;
  c.seed = 3;
  c.dtype = dt;
  return std::make_shared<nn::TinyGPT>(c);
}

std::vector<double> logits(nn::TinyGPT& m) {
  Generator g(4);
  NoGradGuard no_grad;
  return m.forward(randint({2, 8}, 0, 64, g)).to_vector();
}

void randomise(nn::Module& m, uint64_t seed, const std::string& adapter = "default") {
  Generator g(seed);
  NoGradGuard no_grad;
  for (const auto& [path, layer] : lora_layers(m)) {
    if (!layer->has_adapter(adapter)) continue;
    for (Tensor* t : {&layer->lora_A_weight(adapter), &layer->lora_B_weight(adapter)})
      t->copy_(randn(t->shape(), g, t->dtype()) * 0.3);
    if (layer->is_dora(adapter)) layer->magnitude(adapter).add_(ones_like(layer->magnitude(adapter)), 0.25);
  }
}

// A minimal valid config with one key replaced (or removed when value is "<drop>").
std::string config_with(const std::string& key, const std::string& value) {
  nlohmann::json j = {{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8}, {"target_modules", {"q_proj"}}};
  if (value == "<drop>") j.erase(key);
  else j[key] = nlohmann::json::parse(value);
  return j.dump();
}

}  // namespace

// ============================ adapter_config.json ============================

// Byte for byte PEFT's file for the same config (json.dumps(indent=2,
// sort_keys=True), no trailing newline), except auto_mapping's library name.
BOOST_AUTO_TEST_CASE(config_json_is_byte_identical_to_peft_for_the_same_config) {
  for (const std::string name : {"lora_qv", "dora_all"}) {
    const std::string peft = read_bytes(kPeft + "/tinygpt_" + name + "/adapter_config.json");
    LoraConfig cfg = read_adapter_config(kPeft + "/tinygpt_" + name + "/adapter_config.json");
    std::string ours = adapter_config_json(cfg, "TinyGPT");
    std::string expected = peft;
    const std::string lib = "\"make_tinygpt_fixtures\"";
    expected.replace(expected.find(lib), lib.size(), "\"loragrad\"");
    BOOST_CHECK_EQUAL(ours, expected);
  }
  LoraConfig plain;
  plain.target_modules = {"q_proj"};
  const std::string text = adapter_config_json(plain);
  BOOST_CHECK_EQUAL(text.substr(0, 47), "{\n  \"alora_invocation_tokens\": null,\n  \"alpha_p");
  BOOST_CHECK(text.find("\n  \"auto_mapping\": null,\n") != std::string::npos);
  BOOST_CHECK(text.find("\n  \"lora_dropout\": 0.0,\n") != std::string::npos);
  BOOST_CHECK(text.find("loragrad_qlora") == std::string::npos);  // only written when set
}

BOOST_AUTO_TEST_CASE(config_round_trips_every_field) {
  LoraConfig c;
  c.r = 6;
  c.lora_alpha = 2.5;
  c.lora_dropout = 0.05;
  c.target_modules = {"blocks\\.[01]\\.attn\\..*"};
  c.target_regex = true;
  c.exclude_modules = {"o_proj"};
  c.use_rslora = true;
  c.use_dora = true;
  c.init_lora_weights = LoraInit::gaussian;
  c.rank_pattern = {{"k_proj", 2}, {"q_proj", 3}};
  c.alpha_pattern = {{"v_proj", 1.5}};
  c.modules_to_save = {"lm_head", "ln_f"};
  c.qlora = true;
  c.base_model_name_or_path = "tiny/base";
  c.task_type = "CAUSAL_LM";
  const LoraConfig d = parse_adapter_config(adapter_config_json(c), "memory");
  BOOST_CHECK_EQUAL(d.r, 6);
  BOOST_CHECK_EQUAL(d.lora_alpha, 2.5);
  BOOST_CHECK_EQUAL(d.lora_dropout, 0.05);
  BOOST_CHECK(d.target_modules == c.target_modules && d.target_regex);
  BOOST_CHECK(d.exclude_modules == c.exclude_modules && !d.exclude_regex);
  BOOST_CHECK(d.use_rslora && d.use_dora && d.qlora);
  BOOST_CHECK(d.init_lora_weights == LoraInit::gaussian);
  BOOST_CHECK(d.rank_pattern == c.rank_pattern);
  BOOST_CHECK(d.alpha_pattern == c.alpha_pattern);
  BOOST_CHECK(d.modules_to_save == c.modules_to_save);
  BOOST_CHECK_EQUAL(d.base_model_name_or_path, "tiny/base");
  BOOST_CHECK_EQUAL(d.task_type, "CAUSAL_LM");
  for (LoraInit init : {LoraInit::standard, LoraInit::random, LoraInit::pissa}) {
    c.init_lora_weights = init;
    BOOST_CHECK(parse_adapter_config(adapter_config_json(c), "memory").init_lora_weights == init);
  }
  // PEFT's minimal config, and unknown keys, are fine.
  const LoraConfig m = parse_adapter_config(
      R"({"peft_type": "LORA", "target_modules": ["q_proj"], "a_future_key": {"x": [1, 2]}})", "minimal");
  BOOST_CHECK_EQUAL(m.r, 8);
  BOOST_CHECK_EQUAL(m.lora_alpha, 8.0);
}

BOOST_AUTO_TEST_CASE(bad_configs_are_refused_naming_the_file_and_key) {
  auto bad = [](const std::string& key, const std::string& value, const std::vector<std::string>& words) {
    std::vector<std::string> all = {"cfg.json", "'" + key + "'"};
    all.insert(all.end(), words.begin(), words.end());
    check_throws<IOError>([&] { parse_adapter_config(config_with(key, value), "cfg.json"); }, all);
  };
  bad("peft_type", "<drop>", {"missing"});
  bad("peft_type", "\"PREFIX_TUNING\"", {"LORA"});
  bad("target_modules", "<drop>", {"missing"});
  bad("target_modules", "null", {"null"});
  bad("target_modules", "5", {"list of module names"});
  bad("target_modules", "[1]", {"list of strings"});
  bad("r", "\"4\"", {"integer", "\"4\""});
  bad("r", "4.5", {"integer"});
  bad("r", "0", {"positive"});
  bad("lora_alpha", "\"x\"", {"number"});
  bad("lora_dropout", "1.5", {"[0, 1)"});
  bad("use_dora", "\"yes\"", {"true or false"});
  bad("init_lora_weights", "\"olora\"", {"not supported"});
  bad("init_lora_weights", "3", {"true, false or a string"});
  bad("rank_pattern", "{\"q\": \"2\"}", {"entry 'q'"});
  bad("alpha_pattern", "[]", {"object"});
  bad("modules_to_save", "\"lm_head\"", {"list"});
  bad("bias", "\"all\"", {"not supported"});
  bad("fan_in_fan_out", "true", {"not supported"});
  bad("layers_to_transform", "[0]", {"not supported"});
  bad("use_qalora", "true", {"not supported"});
  bad("lora_bias", "true", {"not supported"});
  check_throws<IOError>([] { parse_adapter_config("{\"peft_type\": ", "broken.json"); }, {"broken.json", "invalid JSON"});
  check_throws<IOError>([] { parse_adapter_config("[1, 2]", "list.json"); }, {"list.json", "object"});
  check_throws<IOError>([] { parse_adapter_config(config_with("target_modules", "\"(\""), "re.json"); },
                        {"re.json", "target_modules regex '('", "missing ), unterminated subpattern"});
  check_throws<IOError>([] { read_adapter_config("/nonexistent/adapter_config.json"); },
                        {"/nonexistent/adapter_config.json"});
}

// ============================ directories ============================

BOOST_AUTO_TEST_CASE(save_is_atomic_refuses_to_overwrite_and_creates_parents) {
  TempDir tmp;
  auto m = tiny();
  apply_lora(*m, [] {
    LoraConfig c;
    c.r = 2;
    c.target_modules = {"q_proj", "v_proj"};
    return c;
  }());
  randomise(*m, 1);
  const fs::path dir = tmp.dir / "deep" / "er" / "adapter";
  save_adapter(*m, dir.string());
  BOOST_CHECK(fs::is_regular_file(dir / "adapter_config.json"));
  BOOST_CHECK(fs::is_regular_file(dir / "adapter_model.safetensors"));
  size_t entries = 0;
  for (const auto& e : fs::directory_iterator(dir.parent_path())) entries += e.path().filename() == "adapter" ? 0 : 1;
  BOOST_CHECK_EQUAL(entries, 0u);  // no temporary directory left behind
  BOOST_CHECK_EQUAL(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 2);

  check_throws<IOError>([&] { save_adapter(*m, dir.string()); }, {dir.string(), "already exists", "overwrite"});
  randomise(*m, 2);
  const auto now = logits(*m);
  save_adapter(*m, dir.string(), "default", true);
  auto fresh = tiny();
  load_adapter(*fresh, dir.string());
  BOOST_CHECK(logits(*fresh) == now);  // the second save replaced the first

  check_throws<ValueError>([&] { save_adapter(*m, (tmp.dir / "nope").string(), "missing"); }, {"'missing'"});
  BOOST_CHECK(!fs::exists(tmp.dir / "nope"));
}

// rank / alpha patterns, DoRA and modules_to_save survive save -> load, and
// the written config describes the adapter as PEFT would rebuild it.
BOOST_AUTO_TEST_CASE(round_trip_with_patterns_dora_and_modules_to_save) {
  TempDir tmp;
  auto m = tiny();
  LoraConfig c;
  c.r = 4;
  c.lora_alpha = 8;
  c.target_modules = {"q_proj", "v_proj", "fc_in"};
  c.rank_pattern = {{"blocks\\.0\\.attn\\.q_proj", 2}};
  c.alpha_pattern = {{"fc_in", 3}};
  c.use_dora = true;
  c.modules_to_save = {"lm_head"};
  apply_lora(*m, c);
  randomise(*m, 7);
  {
    NoGradGuard no_grad;
    auto head = std::dynamic_pointer_cast<nn::Linear>(m->lm_head);
    head->weight.mul_(1.5);  // the trained output layer differs from the base's
  }
  const auto want = logits(*m);
  save_adapter(*m, (tmp.dir / "a").string());

  const LoraConfig written = read_adapter_config((tmp.dir / "a" / "adapter_config.json").string());
  BOOST_CHECK_EQUAL(written.r, 4);
  BOOST_CHECK_EQUAL(written.lora_alpha, 8.0);
  BOOST_CHECK(written.target_modules == (std::vector<std::string>{"fc_in", "q_proj", "v_proj"}));
  BOOST_CHECK(written.rank_pattern ==
              (std::vector<std::pair<std::string, int64_t>>{{"blocks\\.0\\.attn\\.q_proj", 2}}));
  BOOST_CHECK_EQUAL(written.alpha_pattern.size(), 2u);  // both fc_in layers, by full path
  BOOST_CHECK(written.modules_to_save == (std::vector<std::string>{"lm_head"}));
  BOOST_CHECK(written.use_dora);
  const SafetensorsFile f = load_safetensors((tmp.dir / "a" / "adapter_model.safetensors").string());
  BOOST_CHECK(f.contains("base_model.model.lm_head.weight"));
  BOOST_CHECK(f.contains("base_model.model.blocks.1.mlp.fc_in.lora_magnitude_vector"));
  BOOST_CHECK(f.at("base_model.model.blocks.0.attn.q_proj.lora_A.weight").shape() == (Shape{2, 16}));
  BOOST_CHECK_EQUAL(f.tensors.size(), 6u * 3 + 1);

  auto fresh = tiny();
  const LoraReport rep = load_adapter(*fresh, (tmp.dir / "a").string());
  BOOST_CHECK(logits(*fresh) == want);
  BOOST_CHECK_EQUAL(rep.trainable_params, m->num_parameters(true));
  BOOST_CHECK(fresh->get_submodule("lm_head")->parameters()[0].requires_grad());

  // Loaded frozen, as PEFT's from_pretrained does by default.
  auto frozen = tiny();
  const LoraReport rf = load_adapter(*frozen, (tmp.dir / "a").string(), "default", false);
  BOOST_CHECK_EQUAL(rf.trainable_params, 0);
  BOOST_CHECK(logits(*frozen) == want);

  // A second adapter from a directory is added beside the first, inactive.
  auto two = tiny();
  LoraConfig other;
  other.target_modules = {"q_proj", "v_proj", "fc_in"};
  apply_lora(*two, other, "first");
  const auto first_out = logits(*two);
  load_adapter(*two, (tmp.dir / "a").string(), "second");
  BOOST_CHECK(adapter_names(*two) == (std::vector<std::string>{"first", "second"}));
  BOOST_CHECK(logits(*two) != want);
  set_adapter(*two, "second");
  BOOST_CHECK(logits(*two) == want);
  (void)first_out;
}

BOOST_AUTO_TEST_CASE(mismatched_directories_are_refused_and_leave_the_model_alone) {
  TempDir tmp;
  auto m = tiny();
  LoraConfig c;
  c.r = 2;
  c.target_modules = {"q_proj"};
  apply_lora(*m, c);
  const fs::path good = tmp.dir / "good";
  save_adapter(*m, good.string());
  const SafetensorsFile f = load_safetensors((good / "adapter_model.safetensors").string());

  // A copy of the good directory with the tensors replaced.
  auto variant = [&](const std::string& name, NamedTensors tensors) {
    const fs::path dir = tmp.dir / name;
    fs::create_directories(dir);
    fs::copy_file(good / "adapter_config.json", dir / "adapter_config.json");
    save_safetensors((dir / "adapter_model.safetensors").string(), tensors, {{"format", "pt"}});
    return dir;
  };
  const std::string a0 = "base_model.model.blocks.0.attn.q_proj.lora_A.weight";
  NamedTensors dropped, reshaped, extra = f.tensors;
  for (const auto& [n, t] : f.tensors) {
    if (n != a0) dropped.push_back({n, t});
    reshaped.push_back({n, n == a0 ? zeros({3, 16}) : t});
  }
  extra.push_back({"base_model.model.blocks.0.attn.k_proj.lora_A.weight", zeros({2, 16})});

  auto fresh = tiny();
  const auto base = logits(*fresh);
  fs::path dir = variant("dropped", dropped);
  check_throws<IOError>([&] { load_adapter(*fresh, dir.string()); },
                        {(dir / "adapter_model.safetensors").string(), "missing", a0});
  dir = variant("reshaped", reshaped);
  check_throws<IOError>([&] { load_adapter(*fresh, dir.string()); }, {"adapter_model.safetensors", a0, "[3, 16]", "[2, 16]"});
  dir = variant("extra", extra);
  check_throws<IOError>([&] { load_adapter(*fresh, dir.string()); }, {"unexpected", "k_proj.lora_A.weight"});
  BOOST_CHECK(lora_layers(*fresh).empty());
  BOOST_CHECK(logits(*fresh) == base);

  // No weights file; no directory; a config that targets modules this model lacks.
  dir = tmp.dir / "no_weights";
  fs::create_directories(dir);
  fs::copy_file(good / "adapter_config.json", dir / "adapter_config.json");
  check_throws<IOError>([&] { load_adapter(*fresh, dir.string()); }, {"adapter_model.safetensors"});
  check_throws<IOError>([&] { load_adapter(*fresh, (tmp.dir / "absent").string()); }, {"absent", "not a directory"});
  dir = variant("other_targets", f.tensors);
  write_bytes(dir / "adapter_config.json", config_with("target_modules", "[\"w_proj\"]"));
  check_throws<IOError>([&] { load_adapter(*fresh, dir.string()); }, {"adapter_config.json", "'w_proj'", "matched no module"});
  BOOST_CHECK(lora_layers(*fresh).empty());

  // Loading an adapter name twice.
  load_adapter(*fresh, good.string());
  check_throws<IOError>([&] { load_adapter(*fresh, good.string()); }, {"already has an adapter", "'default'"});
}

// ============================ hostile input (issue 8) ============================

// Defect 1: a target_modules regex nested 20,000 deep (a 40 KB config) crashed
// std::regex with a stack overflow. Now a clear IOError naming file and key.
BOOST_AUTO_TEST_CASE(a_deeply_nested_target_regex_is_refused) {
  const std::string deep = std::string(20000, '(') + "q_proj" + std::string(20000, ')');
  check_throws<IOError>(
      [&] { parse_adapter_config(config_with("target_modules", nlohmann::json(deep).dump()), "deep.json"); },
      {"deep.json", "target_modules regex", "longer than 8192 bytes"});
  const std::string nested = std::string(100, '(') + "q_proj" + std::string(100, ')');
  check_throws<IOError>(
      [&] { parse_adapter_config(config_with("target_modules", nlohmann::json(nested).dump()), "nested.json"); },
      {"nested.json", "nested deeper than 64"});
  check_throws<IOError>(
      [&] { parse_adapter_config(config_with("rank_pattern", "{\"" + std::string(70, '(') + "\": 4}"), "rank.json"); },
      {"rank.json", "rank_pattern regex", "nested deeper than 64"});
  // A catastrophic-backtracking pattern matches in linear time against every module.
  TempDir tmp;
  auto m = tiny();
  const LoraConfig c = parse_adapter_config(config_with("target_modules", "\"(.*.*)*(q|x)_proj\""), "slow.json");
  BOOST_TEST(apply_lora(*m, c).modules.size() == 2u);
}

// Defect 6: every JSON error names the file and the key; a directory is called one.
BOOST_AUTO_TEST_CASE(json_errors_name_the_file_and_the_key) {
  const std::string overflow = R"({"peft_type": "LORA", "r": 4, "lora_alpha": 1e400, "target_modules": ["q_proj"]})";
  check_throws<IOError>([&] { parse_adapter_config(overflow, "big.json"); },
                        {"big.json", "invalid JSON at key 'lora_alpha'", "number overflow"});
  const std::string nested = R"({"peft_type": "LORA", "loftq_config": {"bits": 1e999}})";
  check_throws<IOError>([&] { parse_adapter_config(nested, "n.json"); }, {"n.json", "at key 'loftq_config.bits'"});
  const std::string bad_utf8 = "{\"peft_type\": \"LORA\", \"target_modules\": [\"q\xff\"]}";
  check_throws<IOError>([&] { parse_adapter_config(bad_utf8, "u.json"); }, {"u.json", "invalid JSON", "\\xff"});
  const std::string escape_in_value = R"({"peft_type": "\u001b[2J", "target_modules": ["q_proj"]})";
  check_throws<IOError>([&] { parse_adapter_config(escape_in_value, "e.json"); }, {"e.json", "'peft_type'"});
  try {
    parse_adapter_config(escape_in_value, "e.json");
  } catch (const IOError& e) {
    BOOST_TEST(std::string(e.what()).find('\x1b') == std::string::npos);  // never a raw escape byte
  }
  TempDir tmp;
  fs::create_directories(tmp.dir / "ad" / "adapter_config.json");
  check_throws<IOError>([&] { read_adapter_config((tmp.dir / "ad" / "adapter_config.json").string()); },
                        {"adapter_config.json", "is a directory"});
  check_throws<IOError>([&] { load_adapter(*tiny(), (tmp.dir / "ad").string()); }, {"is a directory"});
}

// Defect 5: NaN / Inf adapter weights are refused, naming the file and tensor.
BOOST_AUTO_TEST_CASE(non_finite_adapter_weights_are_refused) {
  TempDir tmp;
  auto m = tiny();
  LoraConfig c;
  c.target_modules = {"q_proj"};
  apply_lora(*m, c);
  const fs::path good = tmp.dir / "good";
  save_adapter(*m, good.string());
  SafetensorsFile f = load_safetensors((good / "adapter_model.safetensors").string());
  const std::string b1 = "base_model.model.blocks.1.attn.q_proj.lora_B.weight";
  for (auto& [n, t] : f.tensors)
    if (n == b1) t.data<float>()[3] = INFINITY;
  save_safetensors((good / "adapter_model.safetensors").string(), f.tensors, {{"format", "pt"}});
  auto fresh = tiny();
  check_throws<IOError>([&] { load_adapter(*fresh, good.string()); },
                        {"adapter_model.safetensors", "'" + b1 + "'", "+Inf", "flat index 3"});
  BOOST_CHECK(lora_layers(*fresh).empty());
}

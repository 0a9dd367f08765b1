// Writes the committed seed corpus: valid files made by loragrad itself (a
// checkpoint of fuzz::tiny_model(), adapters saved from it, JSONL instruction
// data), a few PEFT-written fixtures, malformed variants, and the regress-*
// cases of known defects.
// Deterministic: running it again rewrites the same bytes.
//
//   build/fuzz/fuzz_make_seeds fuzz/corpus
//
// Inputs that fuzzing found are not made here: they are copied into
// corpus/<harness>/regress-* by hand (see fuzz/README.md).
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <sstream>
#include <tuple>

#include <nlohmann/json.hpp>

#include "fuzz_common.hpp"
#include "loragrad/generator.hpp"
#include "loragrad/lora/peft_io.hpp"

using namespace loragrad;
using json = nlohmann::ordered_json;
namespace fs = std::filesystem;

static fs::path g_out;

static std::string read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + p.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

static void put(const std::string& harness, const std::string& name, const std::string& bytes) {
  fs::create_directories(g_out / harness);
  std::ofstream(g_out / harness / name, std::ios::binary) << bytes;
}

// A safetensors file from a header as written and raw data.
static std::string raw_st(const std::string& header, const std::string& data = "") {
  std::string len(8, '\0');
  for (int i = 0; i < 8; ++i) len[i] = static_cast<char>((uint64_t(header.size()) >> (8 * i)) & 0xff);
  return len + header + data;
}

static std::string saved_st(const NamedTensors& tensors, const Metadata& meta) {
  const std::string tmp = fuzz::temp_dir() + "/seed.safetensors";
  save_safetensors(tmp, tensors, meta);
  return read(tmp);
}

static NamedTensors tensors_of(const std::string& safetensors_bytes) {
  const std::string tmp = fuzz::temp_dir() + "/seed.safetensors";
  std::ofstream(tmp, std::ios::binary) << safetensors_bytes;
  return load_safetensors(tmp).tensors;
}

static void safetensors_seeds(const fs::path& fixtures) {
  const std::string h = "safetensors";
  auto model = fuzz::tiny_model();
  const NamedTensors sd = model->state_dict();
  const Metadata meta = model->config().to_metadata();
  const std::string ckpt = saved_st(sd, meta);
  put(h, "tiny_gpt_f32.safetensors", ckpt);
  model->save(fuzz::temp_dir() + "/f64.safetensors", DType::f64);
  put(h, "tiny_gpt_f64.safetensors", read(fuzz::temp_dir() + "/f64.safetensors"));
  put(h, "peft_layer_lora.safetensors", read(fixtures / "peft/layer_lora.safetensors"));
  // Every dtype the reader takes, a 0-d and an empty tensor (data: F16 1, 2; BF16 1, -2; F64 0.5; I64 1, 2, 3).
  put(h, "dtypes.safetensors",
      raw_st(R"({"__metadata__":{"format":"pt"},"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},)"
             R"("b":{"dtype":"BF16","shape":[2,1],"data_offsets":[4,8]},"d":{"dtype":"F64","shape":[],"data_offsets":[8,16]},)"
             R"("i":{"dtype":"I64","shape":[3],"data_offsets":[16,40]},"e":{"dtype":"F32","shape":[0,4],"data_offsets":[40,40]}})",
             std::string("\x00\x3c\x00\x40\x80\x3f\x00\xc0", 8) + std::string("\0\0\0\0\0\0\xe0\x3f", 8) +
                 std::string("\1\0\0\0\0\0\0\0\2\0\0\0\0\0\0\0\3\0\0\0\0\0\0\0", 24)));

  // Malformed files.
  const std::string f4 = std::string(16, '\0');
  put(h, "bad-empty", "");
  put(h, "bad-short-length", std::string("\x10\0\0\0", 4));
  put(h, "bad-length-past-eof", std::string("\xe8\x03\0\0\0\0\0\0{}", 10));
  put(h, "bad-length-huge", std::string("\xff\xff\xff\xff\xff\xff\xff\x7f{}", 10));
  put(h, "bad-not-json", raw_st("{\"a\":{\"dtype\""));
  put(h, "bad-array", raw_st("[1,2]"));
  put(h, "bad-dtype", raw_st(R"({"a":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}})", f4));
  put(h, "bad-negative-shape", raw_st(R"({"a":{"dtype":"F32","shape":[-1,4],"data_offsets":[0,16]}})", f4));
  put(h, "bad-size-mismatch", raw_st(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}})", f4));
  put(h, "bad-overlap", raw_st(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                               R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", f4));
  put(h, "bad-past-eof", raw_st(R"({"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}})", f4));
  put(h, "bad-hole", raw_st(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                            R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})", f4));
  put(h, "bad-metadata-number", raw_st(R"({"__metadata__":{"d_model":8},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                                       f4.substr(0, 4)));
  put(h, "bad-truncated-checkpoint", ckpt.substr(0, ckpt.size() / 2));

  // Checkpoints whose metadata does not fit their tensors (or is not usable).
  auto with_meta = [&](const std::string& key, const std::string& value) {
    Metadata m = meta;
    m[key] = value;
    return saved_st(sd, m);
  };
  put(h, "bad-ckpt-d_ff", with_meta("d_ff", "32"));
  put(h, "bad-ckpt-n_head-text", with_meta("n_head", "2x"));
  put(h, "bad-ckpt-n_head-3", with_meta("n_head", "3"));
  NamedTensors missing(sd.begin(), sd.end() - 1);
  put(h, "bad-ckpt-missing-tensor", saved_st(missing, meta));

  // Known defects (see fuzz/README.md): a model built from the metadata before
  // the tensors are checked, and non-finite weights.
  put(h, "regress-d_model-4000000", with_meta("d_model", "4000000"));
  put(h, "regress-vocab_size-2pow62", with_meta("vocab_size", "4611686018427387904"));
  put(h, "regress-n_layer-100000000", with_meta("n_layer", "100000000"));
  for (const auto& [name, value] : {std::pair<std::string, float>{"nan", std::nanf("")},
                                    {"inf", std::numeric_limits<float>::infinity()}}) {
    NamedTensors bad;
    for (const auto& [n, t] : sd) bad.push_back({n, t.clone()});
    bad[0].second.data<float>()[3] = value;
    put(h, "regress-" + name + "-weight", saved_st(bad, meta));
  }
}

// The adapter configs and saved adapters (config JSON, weights) used by both adapter harnesses.
struct Saved {
  std::string config, weights;
};

static Saved save(const lora::LoraConfig& cfg, double noise = 0.1) {
  auto model = fuzz::tiny_model();
  lora::apply_lora(*model, cfg);
  {
    // Nonzero B (and moved A): a zero B would hide a transposed or dropped tensor.
    Generator gen(42);
    NoGradGuard ng;
    for (auto& [name, p] : model->named_parameters())
      if (p.requires_grad()) p.add_(randn(p.shape(), gen, p.dtype()), noise);
  }
  const std::string dir = fuzz::temp_dir() + "/adapter";
  lora::save_adapter(*model, dir, "default", /*overwrite=*/true);
  return {read(dir + "/adapter_config.json"), read(dir + "/adapter_model.safetensors")};
}

static std::vector<std::pair<std::string, lora::LoraConfig>> configs() {
  std::vector<std::pair<std::string, lora::LoraConfig>> out;
  auto add = [&](const std::string& name, auto&& edit) {
    lora::LoraConfig c;
    c.r = 4;
    c.lora_alpha = 8;
    c.target_modules = {"q_proj", "v_proj"};
    edit(c);
    out.push_back({name, c});
  };
  add("lora_qv", [](lora::LoraConfig&) {});
  add("all_linear", [](lora::LoraConfig& c) { c.target_modules = {"all-linear"}; });
  add("regex", [](lora::LoraConfig& c) {
    c.target_modules = {R"(blocks\.1\..*_proj)"};
    c.target_regex = true;
  });
  add("exclude", [](lora::LoraConfig& c) {
    c.target_modules = {"fc_in", "fc_out", "o_proj"};
    c.exclude_modules = {"blocks.0.mlp.fc_in"};
  });
  add("patterns", [](lora::LoraConfig& c) {
    c.target_modules = {"q_proj", "k_proj", "v_proj", "fc_in"};
    c.rank_pattern = {{"fc_in", 2}, {R"(blocks\.1\.attn\.q_proj)", 1}};
    c.alpha_pattern = {{"k_proj", 32}};
  });
  add("dora_rslora", [](lora::LoraConfig& c) {
    c.use_dora = true;
    c.use_rslora = true;
    c.lora_dropout = 0.1;
    c.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "fc_in", "fc_out"};
  });
  add("modules_to_save", [](lora::LoraConfig& c) { c.modules_to_save = {"ln_f"}; });
  add("gaussian", [](lora::LoraConfig& c) { c.init_lora_weights = lora::LoraInit::gaussian; });
  add("pissa", [](lora::LoraConfig& c) { c.init_lora_weights = lora::LoraInit::pissa; });
  add("random_init", [](lora::LoraConfig& c) { c.init_lora_weights = lora::LoraInit::random; });
  add("qlora", [](lora::LoraConfig& c) {
    c.qlora = true;
    c.target_modules = {"fc_in", "fc_out"};
  });
  return out;
}

static void adapter_seeds(const fs::path& fixtures) {
  const std::string hc = "adapter_config", hd = "adapter_dir";
  std::map<std::string, Saved> saved;
  for (const auto& [name, cfg] : configs()) {
    saved[name] = save(cfg);
    put(hc, name + ".json", saved[name].config);
    put(hd, name, fuzz::pack_adapter(saved[name].config, saved[name].weights));
  }
  // Written by PEFT (and by loragrad for the d_model 32 fixture model: its
  // weights do not fit the tiny model, which exercises the shape checks).
  put(hc, "peft_lora_qv.json", read(fixtures / "peft/tinygpt_lora_qv/adapter_config.json"));
  put(hc, "peft_dora_all.json", read(fixtures / "peft/tinygpt_dora_all/adapter_config.json"));
  put(hc, "loragrad_dora_rslora_all.json", read(fixtures / "loragrad_adapters/dora_rslora_all/adapter_config.json"));
  put(hd, "peft_lora_qv_d32", fuzz::pack_adapter(read(fixtures / "peft/tinygpt_lora_qv/adapter_config.json"),
                                                 read(fixtures / "peft/tinygpt_lora_qv/adapter_model.safetensors")));

  // Malformed configs: lora_qv with one key changed (value as JSON text; "" removes it).
  const json base = json::parse(saved["lora_qv"].config);
  auto edited = [&](const std::string& key, const std::string& value) {
    json j = base;
    if (value.empty()) j.erase(key);
    else j[key] = json::parse(value);
    return j.dump(2);
  };
  const std::vector<std::tuple<std::string, std::string, std::string>> bad = {
      {"no-peft_type", "peft_type", ""},          {"peft_type-ia3", "peft_type", R"("IA3")"},
      {"r-0", "r", "0"},                          {"r-string", "r", R"("8")"},
      {"r-1.5", "r", "1.5"},                      {"r-2pow62", "r", "4611686018427387904"},
      {"lora_alpha-negative", "lora_alpha", "-1"}, {"lora_dropout-1", "lora_dropout", "1.0"},
      {"targets-empty", "target_modules", "[]"},  {"targets-number", "target_modules", "42"},
      {"targets-nomatch", "target_modules", R"(["nope"])"},
      {"targets-not-linear", "target_modules", R"(["ln_f"])"},
      {"targets-bad-regex", "target_modules", R"("(q_proj")"},
      {"exclude-all", "exclude_modules", R"(["q_proj", "v_proj"])"},
      {"bias-all", "bias", R"("all")"},           {"fan_in_fan_out", "fan_in_fan_out", "true"},
      {"layers_to_transform", "layers_to_transform", "[0]"},
      {"init-olora", "init_lora_weights", R"("olora")"},
      {"rank_pattern-0", "rank_pattern", R"({"q_proj": 0})"},
      {"alpha_pattern-string", "alpha_pattern", R"({"q_proj": "x"})"},
      {"modules_to_save-string", "modules_to_save", R"("ln_f")"},
      {"modules_to_save-nomatch", "modules_to_save", R"(["nope"])"},
      {"use_dora-string", "use_dora", R"("yes")"},
  };
  for (const auto& [name, key, value] : bad) put(hc, "bad-" + name + ".json", edited(key, value));
  put(hc, "bad-not-json.json", "{\"peft_type\": \"LORA\", ");
  put(hc, "bad-array.json", "[]");

  // Malformed adapter directories.
  const Saved& qv = saved["lora_qv"];
  put(hd, "bad-empty", "");
  put(hd, "bad-length-past-end", std::string("\xff\xff\xff\x7f", 4) + qv.config);
  put(hd, "bad-no-weights", fuzz::pack_adapter(qv.config, ""));
  put(hd, "bad-truncated-weights", fuzz::pack_adapter(qv.config, qv.weights.substr(0, qv.weights.size() - 7)));
  put(hd, "bad-wrong-rank", fuzz::pack_adapter(edited("r", "2"), qv.weights));
  put(hd, "bad-missing-magnitude", fuzz::pack_adapter(edited("use_dora", "true"), qv.weights));
  put(hd, "bad-unexpected-tensors", fuzz::pack_adapter(qv.config, saved["all_linear"].weights));
  {
    // lora_A of one layer stored as I64 of the right shape.
    NamedTensors ts = tensors_of(qv.weights);
    ts[0].second = zeros(ts[0].second.shape(), DType::i64);
    put(hd, "bad-int-tensor", fuzz::pack_adapter(qv.config, saved_st(ts, {{"format", "pt"}})));
  }

  // Known defects: std::regex recursing once per nesting level, a JSON number
  // that overflows double (nlohmann's out_of_range escaping), non-finite weights.
  for (int depth : {20000, 4000})  // 4000: under any length limit, so the nesting itself is checked
    put(hc, depth == 20000 ? "regress-deep-regex.json" : "regress-deep-regex-4000.json",
        edited("target_modules", json(std::string(depth, '(') + "q_proj" + std::string(depth, ')')).dump()));
  std::string alpha = qv.config;
  const size_t at = alpha.find("\"lora_alpha\": 8,");
  if (at == std::string::npos) throw std::runtime_error("lora_qv's config has no \"lora_alpha\": 8");
  alpha.replace(at, 15, "\"lora_alpha\": 1e400");
  put(hc, "regress-lora_alpha-1e400.json", alpha);
  put(hd, "regress-lora_alpha-1e400", fuzz::pack_adapter(alpha, qv.weights));
  NamedTensors ts = tensors_of(qv.weights);
  for (auto& [n, t] : ts)
    if (n.find("lora_B") != std::string::npos) {
      t.data<float>()[0] = std::numeric_limits<float>::infinity();
      break;
    }
  put(hd, "regress-inf-lora_B", fuzz::pack_adapter(qv.config, saved_st(ts, {{"format", "pt"}})));
}

// JSONL instruction data: valid files (escapes, invalid UTF-8 kept as bytes,
// CRLF, blank lines, an empty prompt, a line longer than any seq) and the
// mistakes the reader must refuse with an IOError.
static void instruction_seeds() {
  const std::string h = "instruction_jsonl";
  std::string valid;
  for (int i = 0; i < 12; ++i)
    valid += "{\"prompt\": \"Q: What comes after " + std::to_string(i) + "?\\nA: \", \"response\": \"" +
             std::to_string(i + 1) + ".\\n\", \"id\": " + std::to_string(i) + "}\n";
  put(h, "valid.jsonl", valid);
  put(h, "blank-lines-crlf.jsonl",
      "\n  \t\n{\"prompt\":\"a\",\"response\":\"b\"}\r\n\r\n{\"response\":\"c\",\"prompt\":\"d\"}");
  put(h, "unicode-escapes.jsonl",
      "{\"prompt\": \"caf\\u00e9 \\ud83d\\ude00 \\u0000 \\t\\\"\\\\\\/\", \"response\": \"\\u20ac\\n\"}\n"
      "{\"prompt\": \"\xc3\xa9\xe2\x82\xac\", \"response\": \"\xf0\x9f\x98\x80\"}\n");
  put(h, "invalid-utf8.jsonl", std::string("{\"prompt\": \"x\xff\xfe y\", \"response\": \"\xc3\xa9\x80\xc0\xaf z\"}\n"));
  put(h, "empty-prompt.jsonl", "{\"prompt\": \"\", \"response\": \"a\"}\n{\"prompt\": \"\", \"response\": \"longer\"}\n");
  put(h, "long-line.jsonl", "{\"prompt\": \"" + std::string(3000, 'p') + "\", \"response\": \"" +
                                std::string(2000, 'r') + "\"}\n{\"prompt\": \"q\", \"response\": \"" +
                                std::string(100, 's') + "\"}\n");
  put(h, "other-keys-nested.jsonl",
      "{\"meta\": {\"a\": [1, 2.5, {\"b\": null}], \"c\": true}, \"prompt\": \"p\", \"response\": \"r\"}\n");
  put(h, "bad-empty-response.jsonl", "{\"prompt\": \"p\", \"response\": \"\"}\n");
  put(h, "bad-missing-key.jsonl", "{\"prompt\": \"a\", \"response\": \"b\"}\n{\"prompt\": \"a\"}\n");
  put(h, "bad-number.jsonl", "{\"prompt\": \"a\", \"response\": 7}\n");
  put(h, "bad-nested-value.jsonl", "{\"prompt\": {\"a\": [1, {\"b\": []}]}, \"response\": \"x\"}\n");
  put(h, "bad-not-object.jsonl", "[1, 2, 3]\n");
  put(h, "bad-not-json.jsonl", "{\"prompt\": \"a\" \"response\": \"b\"}\n");
  put(h, "bad-lone-surrogate.jsonl", "{\"prompt\": \"\\ud800\", \"response\": \"b\"}\n");
  put(h, "bad-marker-and-invalid.jsonl", std::string("{\"prompt\": \"\xf4\x8f\xbe\x80\xff\", \"response\": \"b\"}\n"));
  put(h, "bad-empty.jsonl", "");
  put(h, "bad-deep-nesting.jsonl", std::string(5000, '[') + std::string(5000, ']') + "\n");
  put(h, "regress-number-1e400.jsonl", "{\"prompt\": \"a\", \"response\": \"b\", \"n\": 1e400}\n");
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: " << argv[0] << " CORPUS_DIR   (fuzz/corpus)\n";
    return 2;
  }
  g_out = argv[1];
  const fs::path fixtures = LORAGRAD_FIXTURE_DIR;
  safetensors_seeds(fixtures);
  adapter_seeds(fixtures);
  instruction_seeds();
  std::cout << "wrote seeds under " << g_out.string() << "\n";
  return 0;
}

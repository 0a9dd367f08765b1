// loragrad generate, info, eval and merge: the subcommands that use a
// checkpoint (and an adapter) without training.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common.hpp"
#include "loragrad/autograd.hpp"
#include "loragrad/error.hpp"
#include "loragrad/lora/combine.hpp"
#include "loragrad/lora/inject.hpp"
#include "loragrad/lora/nf4.hpp"
#include "loragrad/lora/peft_io.hpp"
#include "loragrad/ops.hpp"
#include "loragrad/safetensors.hpp"

#include <nlohmann/json.hpp>

namespace fs = std::filesystem;

namespace loragrad::cli {

namespace {

void add_model_flags(Args& a, bool adapter_required = false) {
  a.option("--base", "CKPT", "TinyGPT checkpoint (.safetensors)");
  a.option("--adapter", "DIR", adapter_required ? "adapter directory (PEFT format)"
                                                 : "adapter directory (PEFT format), optional");
}

// The text's bytes as token ids (1, t).
Tensor tokens_of(const std::string& text) {
  std::vector<int64_t> ids;
  for (unsigned char c : text) ids.push_back(c);
  return from_indices(ids, {1, static_cast<int64_t>(ids.size())});
}

// Mean cross entropy over every next-byte prediction in the text, in windows
// of at most block_size bytes (each window starts a fresh context).
double mean_loss(nn::TinyGPT& model, const std::string& text) {
  const int64_t block = model.config().block_size;
  const int64_t n = static_cast<int64_t>(text.size());
  if (n < 2) throw ValueError("eval: the text must hold at least 2 bytes, it holds " + std::to_string(n));
  NoGradGuard no_grad;
  double total = 0;
  int64_t count = 0;
  for (int64_t start = 0; start + 1 < n; start += block) {
    const int64_t t = std::min(block, n - 1 - start);
    const Tensor x = tokens_of(text.substr(static_cast<size_t>(start), static_cast<size_t>(t)));
    const Tensor y = tokens_of(text.substr(static_cast<size_t>(start + 1), static_cast<size_t>(t)));
    total += model.loss(x, y).item() * static_cast<double>(t);
    count += t;
  }
  return total / static_cast<double>(count);
}

std::string read_text(const std::string& path, const std::string& flag) {
  check_file(path, flag);
  return std::string(ByteDataset::from_file(path, 0.0).text());
}

}  // namespace

int run_generate(int argc, char** argv) {
  Args a("generate", "Sample text from a checkpoint, with an adapter when given. The prompt is echoed first.\n"
                     "A byte model may emit any byte: bytes a terminal would interpret (control bytes, bytes\n"
                     "above 0x7e) are printed as '?' unless --raw.");
  add_model_flags(a);
  a.option("--prompt", "TEXT", "the start of the text");
  a.option("--tokens", "N", "bytes to sample", "200");
  a.option("--temperature", "X", "0: greedy; else softmax(logits / X)", "0.8");
  a.option("--top-k", "N", "sample among the k likeliest bytes (0: all)", "40");
  a.option("--seed", "N", "sampling seed", "0");
  a.option("--threads", "N", "OpenMP threads (0: OpenMP's choice)", "0");
  a.flag("--raw", "write the prompt and the sampled bytes exactly as they are, with no newline added");
  a.epilog("example:\n  loragrad generate --base out/base.safetensors --prompt \"The \" --tokens 200\n"
           "  loragrad generate --base out/base.safetensors --prompt \"The \" --raw > sample.bin\n");
  if (!a.parse(argc, argv)) return 0;
  const std::string prompt = a.str("--prompt");
  if (prompt.empty()) throw UsageError("generate: --prompt must hold at least one byte");
  const int64_t tokens = a.integer("--tokens", 1, 1000000);
  const double temperature = a.real("--temperature", 0, 1e6);
  const int64_t top_k = a.integer("--top-k", 0, 1 << 16);
  const uint64_t seed = static_cast<uint64_t>(a.integer("--seed", 0, 1000000000));
  set_threads(a);
  auto model = load_model(a);
  const std::string text = nn::sample_text(*model, prompt, tokens, temperature, top_k, seed);
  if (a.is_set("--raw")) std::cout.write(text.data(), static_cast<std::streamsize>(text.size()));
  else std::cout << terminal_safe(text) << "\n";
  return 0;
}

namespace {

// One row of `info`: a parameter, or the packed weight of an NF4 layer (not a
// parameter: it is frozen and holds 4-bit codes plus scales, no dense copy).
struct ParamInfo {
  std::string name;     // dotted path, as in state_dict ("blocks.0.attn.q_proj.base_layer.weight")
  Shape shape;
  std::string storage;  // "f32", "f64" or "nf4"
  int64_t numel = 0;
  size_t bytes = 0;     // what the model holds in memory for it
  bool trainable = false;
  bool adapter = false;  // an adapter's lora_A, lora_B or DoRA magnitude
};

std::string storage_name(DType dt) {
  switch (dt) {
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    default: return dtype_name(dt);
  }
}

// Every parameter once (a shared one under its first name), in model order,
// with each NF4 layer's packed weight where its dense weight would be.
std::vector<ParamInfo> parameter_table(const nn::Module& model) {
  std::vector<std::string> adapter_prefixes;
  for (const auto& [path, layer] : lora::lora_layers(model))
    for (const char* part : {".lora_A.", ".lora_B.", ".lora_magnitude_vector."})
      adapter_prefixes.push_back(path + part);
  auto row_of = [&](const std::string& name, const Tensor& t) {
    bool adapter = false;
    for (const std::string& p : adapter_prefixes) adapter = adapter || name.rfind(p, 0) == 0;
    return ParamInfo{name, t.shape(), storage_name(t.dtype()), t.numel(), t.nbytes(), t.requires_grad(), adapter};
  };
  // name -> listed yet; a tensor shared by two modules is listed under its first name only.
  std::map<std::string, bool> listed;
  for (const auto& [name, t] : model.named_parameters()) listed[name] = false;

  std::vector<ParamInfo> rows;
  for (const auto& [path, m] : model.named_modules()) {
    const std::string prefix = path.empty() ? "" : path + ".";
    if (auto q = std::dynamic_pointer_cast<lora::NF4Linear>(m)) {
      const lora::NF4Tensor& w = q->qweight();
      rows.push_back({prefix + "weight", w.shape, "nf4", w.numel(), w.bytes(), false, false});
    }
    for (const auto& [own, t] : m->named_parameters()) {  // the module's own ones: names without a '.'
      if (own.find('.') != std::string::npos) continue;
      auto it = listed.find(prefix + own);
      if (it == listed.end() || it->second) continue;
      it->second = true;
      rows.push_back(row_of(it->first, t));
    }
  }
  for (const auto& [name, t] : model.named_parameters())  // none is left, but a count must never miss one
    if (!listed[name]) rows.push_back(row_of(name, t));
  return rows;
}

struct Totals {
  int64_t params = 0, trainable = 0, adapter = 0, nf4 = 0;
  size_t bytes = 0, trainable_bytes = 0, adapter_bytes = 0, nf4_bytes = 0;
};

Totals totals_of(const std::vector<ParamInfo>& rows) {
  Totals t;
  for (const ParamInfo& r : rows) {
    t.params += r.numel;
    t.bytes += r.bytes;
    if (r.trainable) t.trainable += r.numel, t.trainable_bytes += r.bytes;
    if (r.adapter) t.adapter += r.numel, t.adapter_bytes += r.bytes;
    if (r.storage == "nf4") t.nf4 += r.numel, t.nf4_bytes += r.bytes;
  }
  return t;
}

}  // namespace

int run_info(int argc, char** argv) {
  Args a("info", "Parameter and memory table of a checkpoint, and of an adapter on it. \"Trainable\" is what\n"
                 "finetune would train: the adapter's parameters (and its modules_to_save), or, without an\n"
                 "adapter, every parameter (full fine-tuning).");
  add_model_flags(a);
  a.flag("--json", "one JSON document instead of the table (fields: see the README)");
  a.epilog("example:\n  loragrad info --base out/base.safetensors --adapter out/my_adapter --json\n");
  if (!a.parse(argc, argv)) return 0;
  const bool as_json = a.is_set("--json");
  const std::string base = a.str("--base");
  const bool has_adapter = a.given("--adapter");
  const std::string adapter_dir = has_adapter ? a.str("--adapter") : "";

  auto model = load_checkpoint(base);
  lora::LoraConfig cfg;
  if (has_adapter) {
    check_dir(adapter_dir, "--adapter");
    // Trainable as finetune would leave it: the adapter (and modules_to_save), not the base.
    lora::load_adapter(*model, adapter_dir, "default", /*is_trainable=*/true);
    model->eval();
    cfg = lora::read_adapter_config((fs::path(adapter_dir) / "adapter_config.json").string());
  } else {
    model->requires_grad_(true);  // full fine-tuning trains every parameter
  }
  const nn::TinyGPTConfig& c = model->config();
  const std::vector<ParamInfo> rows = parameter_table(*model);
  const Totals t = totals_of(rows);
  const int64_t base_params = t.params - t.adapter;
  const size_t base_bytes = t.bytes - t.adapter_bytes;
  // Training keeps a gradient and AdamW's two moments for every trainable parameter.
  const size_t train_state = 3 * t.trainable_bytes;
  const size_t n_layers = lora::lora_layers(*model).size();

  if (as_json) {
    using json = nlohmann::ordered_json;
    json params = json::array();
    for (const ParamInfo& r : rows)
      params.push_back({{"name", r.name}, {"shape", r.shape}, {"storage", r.storage}, {"numel", r.numel},
                        {"bytes", r.bytes}, {"trainable", r.trainable}, {"adapter", r.adapter}});
    json j;
    j["checkpoint"] = base;
    j["model"] = {{"type", model->type_name()}, {"vocab_size", c.vocab_size}, {"block_size", c.block_size},
                  {"d_model", c.d_model},       {"n_layer", c.n_layer},       {"n_head", c.n_head},
                  {"d_ff", c.ffn_width()},      {"dtype", storage_name(model->dtype())}};
    j["total_params"] = t.params;
    j["total_bytes"] = t.bytes;
    j["trainable_params"] = t.trainable;
    j["trainable_bytes"] = t.trainable_bytes;
    j["base_params"] = base_params;
    j["base_bytes"] = base_bytes;
    j["adapter_params"] = t.adapter;
    j["adapter_bytes"] = t.adapter_bytes;
    j["nf4_params"] = t.nf4;
    j["nf4_bytes"] = t.nf4_bytes;
    j["training_state_bytes"] = train_state;
    if (has_adapter) {
      j["adapter"] = {{"path", adapter_dir},
                      {"adapted_modules", n_layers},
                      {"config", json::parse(lora::adapter_config_json(cfg))}};
    } else {
      j["adapter"] = nullptr;
    }
    j["parameters"] = std::move(params);
    // A path need not be UTF-8: invalid bytes become U+FFFD rather than an exception.
    std::cout << j.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
    return 0;
  }

  auto row = [](const std::string& what, const std::string& count, const std::string& bytes) {
    std::string w = what, n = count;
    w.resize(24, ' ');
    if (n.size() < 14) n = std::string(14 - n.size(), ' ') + n;
    std::cout << w << n << "   " << bytes << "\n";
  };
  const auto fbytes = [](size_t b) { return format_bytes(static_cast<double>(b)); };
  std::cout << "checkpoint: " << base << "\nmodel: TinyGPT vocab " << c.vocab_size << ", block "
            << c.block_size << ", d_model " << c.d_model << ", " << c.n_layer << " layers, " << c.n_head
            << " heads, d_ff " << c.ffn_width() << "\n\n";
  row("", "parameters", "bytes");
  row(t.nf4 > 0 ? "base (NF4 + float32)" : "base weights", with_commas(base_params), fbytes(base_bytes));
  if (has_adapter) {
    row("adapter", with_commas(t.adapter), fbytes(t.adapter_bytes));
    row("  grads + AdamW m, v", "", fbytes(train_state));
    row("total", with_commas(t.params), fbytes(t.bytes));
    std::cout << "\nadapter: " << adapter_dir << ": r " << cfg.r << ", alpha " << cfg.lora_alpha
              << (cfg.use_dora ? ", DoRA" : "") << (cfg.qlora ? ", QLoRA (NF4 base)" : "") << ", " << n_layers
              << " adapted modules (";
    for (size_t i = 0; i < cfg.target_modules.size(); ++i)
      std::cout << (i ? "," : "") << printable(cfg.target_modules[i]);  // text from a file
    std::cout << ")\n";
  } else {
    row("  grads + AdamW m, v", "", fbytes(train_state) + "   (full fine-tuning)");
    std::cout << "\n";
  }
  std::cout << (has_adapter ? "trainable: " : "trainable (full fine-tuning): ") << with_commas(t.trainable)
            << " of " << with_commas(t.params) << " parameters ("
            << (t.trainable == t.params ? std::string("100")
                                        : fixed(100.0 * static_cast<double>(t.trainable) /
                                                    static_cast<double>(t.params),
                                                4))
            << "%)\n";
  return 0;
}

int run_eval(int argc, char** argv) {
  Args a("eval", "Mean loss of a checkpoint (with an adapter when given) on a text file, in nats/byte;\n"
                 "or, with --dump-logits, the logits for the bytes of --tokens. The text is scored in windows of the\n"
                 "block size, each starting a fresh context.");
  add_model_flags(a);
  a.option("--data", "FILE", "text file to score");
  a.option("--dump-logits", "OUT", "write logits (1, t, 256) and tokens (1, t) to this .safetensors file");
  a.option("--tokens", "TEXT", "the input text for --dump-logits");
  a.option("--threads", "N", "OpenMP threads (0: OpenMP's choice)", "0");
  a.flag("--force", "replace an existing --dump-logits file");
  if (!a.parse(argc, argv)) return 0;
  const bool dump = a.given("--dump-logits");
  if (dump != a.given("--tokens")) throw UsageError("eval: --dump-logits OUT and --tokens TEXT go together");
  if (!dump && !a.given("--data")) throw UsageError("eval: give --data FILE (or --dump-logits OUT --tokens TEXT)");
  // Every command-line mistake before any work or output.
  (void)a.str("--base");  // required: a UsageError when absent
  const std::string out = dump ? a.str("--dump-logits") : "";
  const std::string tokens = dump ? a.str("--tokens") : "";
  if (dump && tokens.empty()) throw UsageError("eval: --tokens must hold at least one byte");
  set_threads(a);
  auto model = load_model(a);  // quick: before --tokens can be checked against its block size
  if (static_cast<int64_t>(tokens.size()) > model->config().block_size)
    throw UsageError("eval: --tokens holds " + std::to_string(tokens.size()) + " bytes, more than the block size " +
                     std::to_string(model->config().block_size));
  if (dump) check_can_write(out, a.is_set("--force"), "--dump-logits");

  if (a.given("--data")) {
    const std::string text = read_text(a.str("--data"), "--data");
    const double loss = mean_loss(*model, text);
    if (!std::isfinite(loss))
      throw ValueError("the loss is " + std::to_string(loss) + ": the model's logits are not finite (NaN/Inf "
                       "or huge values in the weights, or an adapter scale lora_alpha / r that overflows)");
    std::cout << "loss " << fixed(loss, 6) << " nats/byte over " << text.size() - 1 << " predictions ("
              << fixed(loss / std::log(2.0), 4) << " bits/byte)\n";
  }
  if (dump) {
    NoGradGuard no_grad;
    const Tensor idx = tokens_of(tokens);
    const Tensor logits = model->forward(idx);  // (1, t, V)
    save_safetensors(out, {{"logits", logits}, {"tokens", idx}}, {{"format", "pt"}});
    std::cout << "logits (1, " << tokens.size() << ", " << model->config().vocab_size << "): " << out << "\n";
  }
  return 0;
}

int run_merge(int argc, char** argv) {
  Args a("merge", "Merge an adapter into its base (merge_and_unload): a standalone TinyGPT checkpoint.");
  add_model_flags(a, true);
  a.option("--out", "CKPT", "checkpoint file to write");
  a.flag("--force", "replace an existing --out");
  if (!a.parse(argc, argv)) return 0;
  const std::string out = a.str("--out");
  (void)a.str("--base");
  (void)a.str("--adapter");  // required here: a UsageError when absent
  check_can_write(out, a.is_set("--force"), "--out");
  auto model = load_model(a);
  const lora::MergeReport rep = lora::merge_and_unload(*model);
  // A QLoRA base comes back as NF4: the checkpoint holds dense float32 weights.
  for (const auto& [path, m] : model->named_modules())
    if (auto q = std::dynamic_pointer_cast<lora::NF4Linear>(m))
      model->replace_module(path, std::make_shared<nn::Linear>(q->dequantize(), q->bias));
  if (fs::path(out).has_parent_path()) fs::create_directories(fs::path(out).parent_path());
  model->save(out);
  std::cout << "merged " << rep.merged.size() << " layers";
  if (rep.max_requantization_error > 0)
    std::cout << " (NF4 requantisation error up to " << rep.max_requantization_error << ")";
  std::cout << "\ncheckpoint: " << out << "\n";
  return 0;
}

}  // namespace loragrad::cli

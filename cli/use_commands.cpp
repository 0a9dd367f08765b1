// loragrad generate, info, eval and merge: the subcommands that use a
// checkpoint (and an adapter) without training.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>
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
  Args a("generate", "Sample text from a checkpoint, with an adapter when given.");
  add_model_flags(a);
  a.option("--prompt", "TEXT", "the start of the text");
  a.option("--tokens", "N", "bytes to sample", "200");
  a.option("--temperature", "X", "0: greedy; else softmax(logits / X)", "0.8");
  a.option("--top-k", "N", "sample among the k likeliest bytes (0: all)", "40");
  a.option("--seed", "N", "sampling seed", "0");
  a.option("--threads", "N", "OpenMP threads (0: OpenMP's choice)", "0");
  if (!a.parse(argc, argv)) return 0;
  const std::string prompt = a.str("--prompt");
  if (prompt.empty()) throw UsageError("generate: --prompt must hold at least one byte");
  const int64_t tokens = a.integer("--tokens", 1, 1000000);
  const double temperature = a.real("--temperature", 0, 1e6);
  const int64_t top_k = a.integer("--top-k", 0, 1 << 16);
  const uint64_t seed = static_cast<uint64_t>(a.integer("--seed", 0, 1000000000));
  set_threads(a);
  auto model = load_model(a);
  std::cout << terminal_safe(nn::sample_text(*model, prompt, tokens, temperature, top_k, seed)) << "\n";
  return 0;
}

int run_info(int argc, char** argv) {
  Args a("info", "Parameter and memory table of a checkpoint, and of an adapter on it.");
  add_model_flags(a);
  if (!a.parse(argc, argv)) return 0;
  auto model = load_model(a);
  const nn::TinyGPTConfig& c = model->config();

  // Base weights: every parameter outside adapters, plus NF4 codes (QLoRA bases hold no dense weight).
  const auto layers = lora::lora_layers(*model);
  size_t adapter_bytes = 0, nf4_bytes = 0;
  int64_t nf4_weights = 0;
  for (const auto& [path, layer] : layers) {
    adapter_bytes += layer->adapter_bytes();
    if (auto q = std::dynamic_pointer_cast<lora::NF4Linear>(layer->base_layer)) {
      nf4_bytes += q->weight_bytes();
      nf4_weights += q->in_features * q->out_features;
    }
  }
  int64_t adapter_params = 0;
  for (const auto& [name, p] : model->named_parameters())
    if (name.find(".lora_A.") != std::string::npos || name.find(".lora_B.") != std::string::npos ||
        name.find(".lora_magnitude_vector.") != std::string::npos)
      adapter_params += p.numel();
  const int64_t all = model->num_parameters() + nf4_weights;
  const int64_t base_params = all - adapter_params;
  const size_t base_bytes = model->parameter_bytes() - adapter_bytes + nf4_bytes;

  auto row = [](const std::string& what, const std::string& count, const std::string& bytes) {
    std::string w = what, n = count;
    w.resize(24, ' ');
    if (n.size() < 14) n = std::string(14 - n.size(), ' ') + n;
    std::cout << w << n << "   " << bytes << "\n";
  };
  std::cout << "checkpoint: " << a.str("--base") << "\nmodel: TinyGPT vocab " << c.vocab_size << ", block "
            << c.block_size << ", d_model " << c.d_model << ", " << c.n_layer << " layers, " << c.n_head
            << " heads, d_ff " << c.ffn_width() << "\n\n";
  row("", "parameters", "bytes");
  row(nf4_weights > 0 ? "base (NF4 + float32)" : "base weights", with_commas(base_params), format_bytes(base_bytes));
  if (a.given("--adapter")) {
    const lora::LoraConfig cfg = lora::read_adapter_config((fs::path(a.str("--adapter")) / "adapter_config.json").string());
    row("adapter", with_commas(adapter_params), format_bytes(static_cast<double>(adapter_bytes)));
    // After training, the adapter is what trains: its parameters get gradients and two AdamW moments.
    const double train_state = 3.0 * static_cast<double>(adapter_bytes);
    row("  grads + AdamW m, v", "", format_bytes(train_state));
    row("total", with_commas(all), format_bytes(static_cast<double>(base_bytes + adapter_bytes)));
    std::cout << "\nadapter: " << a.str("--adapter") << ": r " << cfg.r << ", alpha " << cfg.lora_alpha
              << (cfg.use_dora ? ", DoRA" : "") << (cfg.qlora ? ", QLoRA (NF4 base)" : "") << ", "
              << layers.size() << " adapted modules (";
    for (size_t i = 0; i < cfg.target_modules.size(); ++i) std::cout << (i ? "," : "") << cfg.target_modules[i];
    std::cout << ")\n";
    std::cout << "trainable: " << with_commas(adapter_params) << " of " << with_commas(all) << " parameters ("
              << fixed(100.0 * static_cast<double>(adapter_params) / static_cast<double>(all), 4) << "%)\n";
  } else {
    const double train_state = 3.0 * static_cast<double>(base_bytes);
    row("  grads + AdamW m, v", "", format_bytes(train_state) + "   (full fine-tuning)");
    std::cout << "\ntrainable (full fine-tuning): " << with_commas(all) << " of " << with_commas(all)
              << " parameters (100%)\n";
  }
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
  set_threads(a);
  if (dump) check_can_write(a.str("--dump-logits"), a.is_set("--force"), "--dump-logits");
  auto model = load_model(a);

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
    const std::string text = a.str("--tokens");
    if (text.empty()) throw UsageError("eval: --tokens must hold at least one byte");
    if (static_cast<int64_t>(text.size()) > model->config().block_size)
      throw UsageError("eval: --tokens holds " + std::to_string(text.size()) +
                       " bytes, more than the block size " + std::to_string(model->config().block_size));
    NoGradGuard no_grad;
    const Tensor idx = tokens_of(text);
    const Tensor logits = model->forward(idx);  // (1, t, V)
    const std::string out = a.str("--dump-logits");
    save_safetensors(out, {{"logits", logits}, {"tokens", idx}}, {{"format", "pt"}});
    std::cout << "logits (1, " << text.size() << ", " << model->config().vocab_size << "): " << out << "\n";
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
  (void)a.str("--adapter");  // required: a UsageError when absent
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

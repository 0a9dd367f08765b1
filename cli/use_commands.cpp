// loragrad generate, info, eval and merge: the subcommands that use a
// checkpoint (and an adapter) without training.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>
#include <string_view>
#include <memory>
#include <string>
#include <vector>

#include "common.hpp"
#include "data_sources.hpp"
#include "scoring.hpp"
#include "loragrad/autograd.hpp"
#include "loragrad/error.hpp"
#include "loragrad/lora/combine.hpp"
#include "loragrad/lora/inject.hpp"
#include "loragrad/lora/peft_io.hpp"
#include "loragrad/nn/linear_base.hpp"
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

// "\n", "\t" and "\\" (backslash escapes) as the bytes they name; any other byte as itself.
std::string unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size() && (s[i + 1] == 'n' || s[i + 1] == 't' || s[i + 1] == '\\')) {
      out += s[i + 1] == 'n' ? '\n' : s[i + 1] == 't' ? '\t' : '\\';
      ++i;
    } else {
      out += s[i];
    }
  }
  return out;
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
  a.option("--threads", "N", "threads (0: OMP_NUM_THREADS if set, else the CPUs this process may use)", "0");
  a.option("--stop", "TEXT", "end the text after the first TEXT among the sampled bytes (\\n, \\t, \\\\ escapes)");
  a.flag("--raw", "write the prompt and the sampled bytes exactly as they are, with no newline added");
  a.epilog("An adapter trained on instruction data (finetune --data FILE.jsonl, --domain recipe-qa) answers a\n"
           "prompt written in its training format; --stop ends the answer where the training responses ended.\n"
           "example:\n  loragrad generate --base out/base.safetensors --prompt \"The \" --tokens 200\n"
           "  loragrad generate --base out/base.safetensors --prompt \"The \" --raw > sample.bin\n"
           "  loragrad generate --base base.safetensors --adapter qa --prompt $'Q: Do you bake the Warm Apple Pie?\\nA: ' \\\n"
           "                    --temperature 0 --stop '\\n'\n");
  if (!a.parse(argc, argv)) return 0;
  const std::string prompt = a.str("--prompt");
  if (prompt.empty()) throw UsageError("generate: --prompt must hold at least one byte");
  const int64_t tokens = a.integer("--tokens", 1, 1000000);
  const double temperature = a.real("--temperature", 0, 1e6);
  const int64_t top_k = a.integer("--top-k", 0, 1 << 16);
  const uint64_t seed = static_cast<uint64_t>(a.integer("--seed", 0, 1000000000));
  const std::string stop = a.given("--stop") ? unescape(a.str("--stop")) : "";
  if (a.given("--stop") && stop.empty()) throw UsageError("generate: --stop must hold at least one byte");
  set_threads(a);
  auto model = load_model(a);
  std::string text = nn::sample_text(*model, prompt, tokens, temperature, top_k, seed);
  // Sampling is sequential, so cutting the text is the same as stopping there.
  if (!stop.empty())
    if (const size_t at = text.find(stop, prompt.size()); at != std::string::npos) text.resize(at + stop.size());
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
    if (auto q = std::dynamic_pointer_cast<nn::LinearBase>(m); q && q->quantized()) {
      const int64_t numel = q->out_features * q->in_features;
      rows.push_back({prefix + "weight", {q->out_features, q->in_features}, q->storage(), numel, q->weight_bytes(),
                      false, false});
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
    check_adapter_dir(adapter_dir, "--adapter");
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
    lora::LoraOptions o;
    o.r = cfg.r;
    o.alpha = cfg.lora_alpha;
    o.use_rslora = cfg.use_rslora;
    std::cout << "\nadapter: " << adapter_dir << ": r " << cfg.r << ", alpha " << cfg.lora_alpha << ", scale "
              << o.scale() << (cfg.use_rslora ? " (rsLoRA: alpha / sqrt(r))" : " (alpha / r)")
              << (cfg.use_dora ? ", DoRA" : "") << (cfg.qlora ? ", QLoRA (NF4 base)" : "");
    if (cfg.init_lora_weights != lora::LoraInit::standard)
      std::cout << ", init " << lora::lora_init_name(cfg.init_lora_weights);
    std::cout << ", " << n_layers << " adapted modules (";
    for (size_t i = 0; i < cfg.target_modules.size(); ++i)
      std::cout << (i ? "," : "") << printable(cfg.target_modules[i]);  // text from a file
    std::cout << ")\n";
    // Text from a file: printable() keeps control bytes off the terminal.
    if (!cfg.modules_to_save.empty()) {
      std::cout << "modules_to_save: ";
      for (size_t i = 0; i < cfg.modules_to_save.size(); ++i)
        std::cout << (i ? "," : "") << printable(cfg.modules_to_save[i]);
      std::cout << "\n";
    }
    for (const auto& [key, value] : cfg.rank_pattern) std::cout << "rank_pattern '" << printable(key) << "': " << value << "\n";
    for (const auto& [key, value] : cfg.alpha_pattern)
      std::cout << "alpha_pattern '" << printable(key) << "': " << value << "\n";
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

namespace {

// A split of data named on eval's command line, and its name for the report.
struct EvalData {
  std::unique_ptr<data::Source> source;
  data::Split split = data::Split::train;
  std::string name;
};

// --data FILE [--split S] or --domain NAME (the held-out tenth finetune
// validates on); file_flag / domain_flag: which pair (new, or --old).
EvalData eval_data(const Args& a, const std::string& file_flag, const std::string& domain_flag,
                   const std::string& split, double fraction, uint64_t seed) {
  EvalData d;
  if (a.given(file_flag)) {
    const std::string path = a.str(file_flag);
    d.source = file_source(path, split == "all" ? 0.0 : fraction, file_flag);
    d.split = split == "val" ? data::Split::validation : data::Split::train;
    d.name = path + (split == "all" ? "" : " (--split " + split + ")");
    const auto* ins = instructions_of(d.source.get());
    if (ins ? ins->num_examples(d.split) == 0 : d.source->size(d.split) < 2)
      throw ValueError("--split " + split + " of " + path + " holds " +
                       (ins ? std::to_string(ins->num_examples(d.split)) + " examples"
                            : std::to_string(d.source->size(d.split)) + " bytes") +
                       " (--val-fraction " + a.str("--val-fraction") + "): " +
                       (ins ? "at least 1 is needed" : "at least 2 are needed to score a prediction"));
  } else {
    const std::string name = a.str(domain_flag);
    d.source = builtin_source(name, seed, 0.1, domain_flag);
    d.split = data::Split::validation;
    d.name = "domain " + name + " (held-out tenth, seed " + std::to_string(seed) + ")";
  }
  return d;
}

}  // namespace

int run_eval(int argc, char** argv) {
  Args a("eval", "Mean loss of a checkpoint (with an adapter when given) on a text file, in nats/byte; on\n"
                 "instruction examples (FILE.jsonl) the mean over their response bytes. With --old, the forgetting\n"
                 "report: the loss on the new and on an old domain, adapter on and off. Or, with --dump-logits, the\n"
                 "logits for the bytes of --tokens. A text is scored in windows of the block size, each starting a\n"
                 "fresh context; an example alone, truncated to the block size + 1 bytes.");
  add_model_flags(a);
  a.option("--data", "FILE", "text file to score, or FILE.jsonl ({\"prompt\", \"response\"} lines)");
  a.option("--domain", "NAME", std::string("built-in data instead of --data: ") + kDomainNames);
  a.option("--split", "NAME", "the part of --data to score: train | val | all (see below)", "all");
  a.option("--val-fraction", "X", "with --split train|val: finetune's --val-fraction, in [0, 0.5]", "0.1");
  a.option("--old", "FILE", "forgetting report: also score this old-domain file (text or .jsonl), adapter on and off");
  a.option("--old-domain", "NAME", "forgetting report with a built-in old domain (e.g. stories, the base's)");
  a.option("--seed", "N", "seed of the built-in domains (as given to finetune / pretrain)", "0");
  a.flag("--json", "print the loss (or the forgetting report) as one JSON document");
  a.option("--dump-logits", "OUT", "write logits (1, t, 256) and tokens (1, t) to this .safetensors file");
  a.option("--tokens", "TEXT", "the input text for --dump-logits");
  a.option("--threads", "N", "threads (0: OMP_NUM_THREADS if set, else the CPUs this process may use)", "0");
  a.flag("--force", "replace an existing --dump-logits file");
  a.epilog("--split val scores the last --val-fraction of --data's bytes (floor(size * X) of them; of a .jsonl's\n"
           "examples), the part finetune --data FILE --val-fraction X held out and validated on; --split train the\n"
           "rest, what it trained on; --split all (the default) everything. --domain NAME (and --old-domain) score\n"
           "the held-out tenth of the built-in data, what finetune --domain NAME --seed N validates on.\n"
           "Forgetting report: 'off' is the --base checkpoint alone (no adapter, no modules_to_save, no NF4);\n"
           "learning = new loss off - on, forgetting = old loss on - off (both > 0 as usual).\n"
           "example:\n  loragrad eval --base base.safetensors --adapter my_adapter --data notes.txt --split val\n"
           "  loragrad eval --base base.safetensors --adapter qa --domain recipe-qa --old-domain stories\n");
  if (!a.parse(argc, argv)) return 0;
  const bool dump = a.given("--dump-logits");
  const bool has_new = a.given("--data") || a.given("--domain");
  const bool has_old = a.given("--old") || a.given("--old-domain");
  if (dump != a.given("--tokens")) throw UsageError("eval: --dump-logits OUT and --tokens TEXT go together");
  if (a.given("--data") && a.given("--domain")) throw UsageError("eval: give --data FILE or --domain NAME, not both");
  if (a.given("--old") && a.given("--old-domain")) throw UsageError("eval: give --old FILE or --old-domain NAME, not both");
  if (has_old && !has_new) throw UsageError("eval: --old needs the new domain too: --data FILE or --domain NAME");
  if (!dump && !has_new)
    throw UsageError("eval: give --data FILE or --domain NAME (or --dump-logits OUT --tokens TEXT)");
  if (has_old && !a.given("--adapter"))
    throw UsageError("eval: the forgetting report (--old) compares an adapter on and off: give --adapter DIR");
  if (a.given("--json") && !has_new) throw UsageError("eval: --json is for the losses (--data or --domain)");
  const std::string split = a.str("--split");
  if (split != "train" && split != "val" && split != "all")
    throw UsageError("eval: --split must be train, val or all, got '" + split + "'");
  if (a.given("--split") && !a.given("--data")) throw UsageError("eval: --split is for --data FILE");
  if (a.given("--val-fraction") && split == "all")
    throw UsageError("eval: --val-fraction is for --split train or val (--split all scores every byte)");
  const double fraction = split == "all" ? 0.0 : a.real("--val-fraction", 0, 0.5);
  const uint64_t seed = static_cast<uint64_t>(a.integer("--seed", 0, 1000000000));
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

  if (has_new) {
    const EvalData fresh = eval_data(a, "--data", "--domain", split, fraction, seed);
    const Score on = score(*model, *fresh.source, fresh.split);
    const auto* ins = instructions_of(fresh.source.get());
    if (has_old) {
      const EvalData old = eval_data(a, "--old", "--old-domain", "all", 0.0, seed);
      ForgettingReport rep;
      rep.new_name = fresh.name;
      rep.old_name = old.name;
      rep.new_on = on;
      rep.old_on = score(*model, *old.source, old.split);
      auto base = load_checkpoint(a.str("--base"));  // adapter off: the checkpoint as it was
      rep.new_off = score(*base, *fresh.source, fresh.split);
      rep.old_off = score(*base, *old.source, old.split);
      if (a.is_set("--json")) std::cout << rep.to_json().dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
      else std::cout << rep.table();
    } else if (a.is_set("--json")) {
      nlohmann::ordered_json j{{"data", fresh.name}, {"loss", on.loss}, {"bytes_scored", on.predictions}};
      std::cout << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    } else {
      std::cout << "loss " << fixed(on.loss, 6) << " nats/byte over " << on.predictions
                << (ins ? " response bytes" : " predictions") << " (" << fixed(on.loss / std::log(2.0), 4)
                << " bits/byte)\n";
      if (ins) std::cout << "examples: " << ins->stats(fresh.split, model->config().block_size).str() << "\n";
      if (split != "all" && a.given("--data")) {
        if (ins) {
          const int64_t n = static_cast<int64_t>(ins->examples().size()), k = ins->num_examples(fresh.split);
          const int64_t first = split == "val" ? n - k : 0;
          std::cout << "split " << split << ": examples [" << first << ", " << first + k << ") of " << n
                    << " (--val-fraction " << a.str("--val-fraction") << ": the " << (split == "val" ? "last " : "first ")
                    << k << " examples)\n";
        } else {
          const int64_t n = fresh.source->size(data::Split::train) + fresh.source->size(data::Split::validation);
          const int64_t k = fresh.source->size(fresh.split), first = split == "val" ? n - k : 0;
          std::cout << "split " << split << ": bytes [" << first << ", " << first + k << ") of " << n
                    << " (--val-fraction " << a.str("--val-fraction") << ": the " << (split == "val" ? "last " : "first ")
                    << k << " bytes)\n";
        }
      }
    }
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

namespace {

// The fixed input merge measures logits on: the block size's worth of an
// ordinary sentence (byte ids), the same for every run.
Tensor probe_tokens(int64_t block) {
  const std::string sentence = "The quick brown fox jumps over the lazy dog; a recipe: whisk 2 eggs, add flour. ";
  std::string text;
  while (static_cast<int64_t>(text.size()) < block) text += sentence;
  return tokens_of(text.substr(0, static_cast<size_t>(block)));
}

std::vector<double> logits_of(nn::TinyGPT& model, const Tensor& idx) {
  NoGradGuard no_grad;
  return model.forward(idx).to_vector();
}

}  // namespace

int run_merge(int argc, char** argv) {
  Args a("merge", "Merge an adapter into its base (merge_and_unload): a standalone TinyGPT checkpoint of float32\n"
                  "weights. A QLoRA adapter's NF4 base is dequantised and the adapter added in float32, with no\n"
                  "second rounding, unless --requantize. Prints the merged model's largest |logit| difference to\n"
                  "base + adapter on a fixed probe (the block size's worth of one sentence).");
  add_model_flags(a, true);
  a.option("--out", "CKPT", "checkpoint file to write");
  a.flag("--requantize", "QLoRA: round the merged weights to NF4 again, as PEFT does (lossy)");
  a.flag("--force", "replace an existing --out");
  if (!a.parse(argc, argv)) return 0;
  const std::string out = a.str("--out");
  (void)a.str("--base");
  (void)a.str("--adapter");  // required here: a UsageError when absent
  const bool requantize = a.is_set("--requantize");
  check_can_write(out, a.is_set("--force"), "--out");
  auto model = load_model(a);
  bool nf4_base = false;
  for (const auto& [path, layer] : lora::lora_layers(*model)) nf4_base = nf4_base || layer->base_is_nf4();
  if (requantize && !nf4_base)
    throw UsageError("merge: --requantize is for a QLoRA adapter (an NF4 base); " + a.str("--adapter") +
                     " has a float base, which merging keeps float");
  const Tensor probe = probe_tokens(model->config().block_size);
  const std::vector<double> before = logits_of(*model, probe);

  const lora::MergeReport rep = lora::merge_and_unload(*model, requantize);
  // NF4 layers (requantised ones, and a QLoRA base's layers without an
  // adapter) go to the checkpoint as their exact float32 dequantisation.
  for (const auto& [path, m] : model->named_modules())
    if (auto q = std::dynamic_pointer_cast<nn::LinearBase>(m); q && q->quantized())
      model->replace_module(path, std::make_shared<nn::Linear>(q->dense_weight(), q->bias));
  model->eval();
  const std::vector<double> after = logits_of(*model, probe);
  double diff = 0, scale = 0;
  for (size_t i = 0; i < before.size(); ++i) {
    diff = std::max(diff, std::abs(after[i] - before[i]));
    scale = std::max(scale, std::abs(before[i]));
  }
  if (fs::path(out).has_parent_path()) fs::create_directories(fs::path(out).parent_path());
  model->save(out);
  std::cout << "merged " << rep.merged.size() << " layers";
  if (!nf4_base) std::cout << " (float base)";
  else if (requantize) std::cout << " into NF4 again (--requantize)";
  else std::cout << " into float32 weights (dequantised NF4 base + adapter, no requantisation)";
  std::cout << "\n";
  if (requantize)
    std::cout << "requantisation error: max |NF4(merged W) - merged W| = " << rep.max_requantization_error
              << " over the merged weights\n";
  std::cout << "max |logit difference| to base + adapter: " << diff << " (largest |logit| " << fixed(scale, 3)
            << "; probe: " << probe.size(1) << " bytes)\n";
  std::cout << "checkpoint: " << out << "\n";
  return 0;
}

}  // namespace loragrad::cli

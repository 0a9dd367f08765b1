// loragrad pretrain and loragrad finetune: the two subcommands that train,
// both through train::Trainer.

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "common.hpp"
#include "data_sources.hpp"
#include "loragrad/memory.hpp"
#include "loragrad/data/corpus.hpp"
#include "loragrad/data/mixed_source.hpp"
#include "loragrad/error.hpp"
#include "loragrad/files.hpp"
#include "loragrad/lora/inject.hpp"
#include "loragrad/lora/loraplus.hpp"
#include "loragrad/lora/peft_io.hpp"
#include "loragrad/optim/adamw.hpp"
#include "loragrad/train/trainer.hpp"

namespace fs = std::filesystem;

namespace loragrad::cli {

namespace {

constexpr int64_t kBig = 1000000000;

// Peak learning rates that reach a useful model on the built-in corpora at
// the default steps (tests/test_cli_train.sh checks each beats the unigram
// baseline). Adapters start from B = 0 and move few parameters: they want a
// larger step than full fine-tuning; LoRA+ already multiplies B's by 16.
double default_lr(const std::string& method) {
  if (method == "pretrain") return 3e-3;
  if (method == "full") return 2e-3;
  if (method == "loraplus") return 5e-3;
  return 2e-2;  // lora, dora, qlora
}

// GPT-2 style: decay the matrices, not the biases and LayerNorm gains.
std::vector<optim::ParamGroup> decay_groups(const nn::Module& model, double lr, double weight_decay) {
  std::vector<Tensor> decay, no_decay;
  for (const Tensor& p : model.parameters())
    if (p.requires_grad()) (p.dim() >= 2 ? decay : no_decay).push_back(p);
  std::vector<optim::ParamGroup> groups;
  if (!decay.empty()) groups.emplace_back("decay", decay, lr, weight_decay);
  if (!no_decay.empty()) groups.emplace_back("no_decay", no_decay, lr, 0.0);
  return groups;
}

void add_training_flags(Args& a, const std::string& steps, const std::string& weight_decay) {
  a.option("--data", "FILE", "train on this text file (any bytes), or FILE.jsonl: {\"prompt\", \"response\"} lines");
  a.option("--val-data", "FILE", "validate on this file (default: the last --val-fraction of the training data)");
  a.option("--val-fraction", "X", "held-out share of the training text (of a .jsonl's examples), in [0, 0.5]", "0.1");
  a.option("--mix", "SPEC", "DOMAIN:FRACTION or FILE:FRACTION: that share of every batch's rows from general text");
  a.option("--steps", "N", "optimizer steps", steps);
  a.option("--batch", "N", "sequences per micro-batch", "8");
  a.option("--grad-accum", "K", "micro-batches per step (a K-times larger batch)", "1");
  a.option("--lr", "X", "peak learning rate (default: the method's, see --help of finetune)");
  a.option("--schedule", "NAME", "cosine | linear | constant", "cosine");
  a.option("--warmup", "N", "linear warm-up steps (default 5% of --steps)");
  a.option("--weight-decay", "X", "AdamW decoupled weight decay", weight_decay);
  a.option("--clip-norm", "X", "clip the gradients' global norm (0: no clipping)", "1.0");
  a.option("--eval-every", "N", "steps between validation losses (default 5 per run)");
  a.option("--early-stop", "N", "stop after N validations without a better loss (0: never)", "0");
  a.option("--save-every", "N", "write a resumable checkpoint-STEP every N steps (0: never)", "0");
  a.option("--resume", "DIR", "continue from a checkpoint-STEP directory of the same run");
  a.option("--seed", "N", "data, initial weights and batches", "0");
  a.option("--threads", "N", "threads (0: OMP_NUM_THREADS if set, else the CPUs this process may use)", "0");
  a.flag("--force", "replace an existing --out");
  a.flag("--quiet", "no live progress bar, plain log lines");
}

train::TrainConfig trainer_config(const Args& a, int64_t seq) {
  train::TrainConfig c;
  c.steps = a.integer("--steps", 1, kBig);
  c.batch = a.integer("--batch", 1, 1 << 16);
  c.grad_accum = a.integer("--grad-accum", 1, 1 << 16);
  c.seq = seq;
  c.schedule = a.str("--schedule");
  if (c.schedule != "cosine" && c.schedule != "linear" && c.schedule != "constant")
    throw UsageError("--schedule must be cosine, linear or constant, got '" + c.schedule + "'");
  c.warmup = a.given("--warmup") ? a.integer("--warmup", 0, c.steps) : -1;
  c.clip_norm = a.real("--clip-norm", 0, 1e9);
  c.eval_every = a.given("--eval-every") ? a.integer("--eval-every", 1, kBig) : 0;
  c.early_stop = a.integer("--early-stop", 0, kBig);
  c.save_every = a.integer("--save-every", 0, kBig);
  c.seed = static_cast<uint64_t>(a.integer("--seed", 0, kBig));
  c.quiet = a.is_set("--quiet");
  return c;
}

double learning_rate(const Args& a, const std::string& method) {
  if (!a.given("--lr")) return default_lr(method);
  const double lr = a.real("--lr", 0, 10);
  if (!(lr > 0)) throw UsageError("--lr must be positive, got " + a.str("--lr"));
  return lr;
}

// The training data, the held-out data it is measured on, (--mix) the
// general text mixed into every training batch, and (finetune --old-data /
// --old-domain) the old domain whose loss is tracked.
struct Texts {
  std::unique_ptr<data::Source> data, val_file, old_data, general, mixed;
  train::TextSource train, val, old;
  std::string mix_name;                 // --mix's domain or file ("" without --mix)
  double mix_fraction = 0.0;
  nlohmann::json mix_identity = nullptr;  // part of the run's identity: null without --mix
};

// --mix SPEC: DOMAIN:FRACTION or FILE:FRACTION, split at the last ':' (a path
// may hold ':'); a built-in domain name wins over a file of that name (write
// ./stories for the file). FRACTION in [0, 1).
std::pair<std::string, double> parse_mix(const std::string& spec) {
  const std::string expected = std::string("--mix expects DOMAIN:FRACTION or FILE:FRACTION (DOMAIN ") + kDomainNames +
                               ", FRACTION in [0, 1), e.g. stories:0.1), got '" + spec + "'";
  const size_t colon = spec.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == spec.size()) throw UsageError(expected);
  const std::string name = spec.substr(0, colon), number = spec.substr(colon + 1);
  char* end = nullptr;
  const double f = std::isspace(static_cast<unsigned char>(number[0])) ? NAN : std::strtod(number.c_str(), &end);
  if (std::isnan(f) || end != number.c_str() + number.size() || !(f >= 0.0 && f < 1.0)) throw UsageError(expected);
  return {name, f};
}

bool is_builtin_domain(const std::string& name) {
  return name == "stories" || name == "recipes" || name == "code" || name == "recipe-qa";
}

// old_flags: the command declares --old-data and --old-domain (finetune).
Texts training_texts(const Args& a, const std::string& default_domain, uint64_t seed, bool old_flags = false) {
  const bool has_data = a.given("--data"), has_domain = a.given("--domain");
  if (has_data && has_domain) throw UsageError("give --data FILE or --domain NAME, not both");
  const bool own_val = a.given("--val-data");
  if (own_val && a.given("--val-fraction")) throw UsageError("give --val-data FILE or --val-fraction X, not both");
  const double fraction = own_val ? 0.0 : a.real("--val-fraction", 0, 0.5);
  Texts t;
  if (has_data) {
    t.data = file_source(a.str("--data"), fraction, "--data");
  } else {
    const std::string name = has_domain ? a.str("--domain") : default_domain;
    if (name.empty()) throw UsageError(std::string("give the training text: --data FILE or --domain ") + kDomainNames);
    t.data = builtin_source(name, seed, fraction, "--domain");
  }
  t.train = {t.data.get(), data::Split::train};
  if (own_val) {
    t.val_file = file_source(a.str("--val-data"), 0.0, "--val-data");
    t.val = {t.val_file.get(), data::Split::train};
  } else if (fraction > 0) {
    t.val = {t.data.get(), data::Split::validation};
  }
  // --mix: the rows come from the general source's train split: a whole
  // file, or the first nine tenths of a built-in domain (its held-out tenth
  // is what --old-domain measures forgetting on). Validation stays on the
  // training data alone (data::MixedSource).
  if (a.given("--mix")) {
    const auto [name, f] = parse_mix(a.str("--mix"));
    t.general = is_builtin_domain(name) ? builtin_source(name, seed, 0.1, "--mix") : file_source(name, 0.0, "--mix");
    t.mixed = std::make_unique<data::MixedSource>(*t.data, *t.general, f);
    t.train = {t.mixed.get(), data::Split::train};
    t.mix_name = name;
    t.mix_fraction = f;
    t.mix_identity = {{"data", name}, {"fraction", f}};
  }
  // The old domain: a whole file, or the held-out tenth of a built-in one
  // (text the base was not trained on when it was pretrained with this --seed).
  if (!old_flags) return t;
  if (a.given("--old-data") && a.given("--old-domain"))
    throw UsageError("give --old-data FILE or --old-domain NAME, not both");
  if (a.given("--old-data")) {
    t.old_data = file_source(a.str("--old-data"), 0.0, "--old-data");
    t.old = {t.old_data.get(), data::Split::train};
  } else if (a.given("--old-domain")) {
    t.old_data = builtin_source(a.str("--old-domain"), seed, 0.1, "--old-domain");
    t.old = {t.old_data.get(), data::Split::validation};
  }
  return t;
}

// "mixing 10% stories into every batch (0 or 1 of 8 rows, 0.8 on average)".
std::string mix_line(const Texts& t, int64_t batch) {
  const double rows = t.mix_fraction * static_cast<double>(batch);
  const int64_t lo = static_cast<int64_t>(std::floor(rows)), hi = static_cast<int64_t>(std::ceil(rows));
  std::ostringstream os;
  os << "mixing " << t.mix_fraction * 100 << "% " << t.mix_name << " into every batch (";
  if (lo == hi) os << lo << " of " << batch << " rows)";
  else os << lo << " or " << hi << " of " << batch << " rows, " << rows << " on average)";
  return os.str();
}

void print_texts(const Texts& t, int64_t seq, int64_t batch) {
  if (instructions_of(t.train.data) || instructions_of(t.val.data)) {
    // Instruction data: counted in examples; the loss (and its baseline) is over response bytes.
    std::cout << "data (seq " << seq << "): train " << describe(*t.train.data, t.train.split, seq);
    if (t.val.data) {
      const double unigram =
          data::unigram_cross_entropy(t.train.data->scored_bytes(t.train.split), t.val.data->scored_bytes(t.val.split));
      std::cout << "; validation " << describe(*t.val.data, t.val.split, seq) << "; unigram baseline "
                << fixed(unigram, 3) << " nats/byte on its response bytes";
      if (!t.val.data->cannot_sample(t.val.split, seq).empty()) std::cout << " (nothing to score: no validation loss)";
    }
    std::cout << "\n";
  } else {
    std::cout << "text: " << t.train.size() << " training bytes";
    if (t.val.data) {
      const double unigram =
          data::unigram_cross_entropy(t.train.data->scored_bytes(t.train.split), t.val.data->scored_bytes(t.val.split));
      std::cout << ", " << t.val.size() << " validation bytes; unigram baseline " << fixed(unigram, 3)
                << " nats/byte on them";
      if (t.val.size() < seq + 1) std::cout << " (too short for one --seq window: no validation loss)";
    }
    std::cout << "\n";
  }
  if (t.mixed) std::cout << mix_line(t, batch) << "\n";
  if (t.old.data) std::cout << "old domain: " << describe(*t.old.data, t.old.split, seq) << ", its loss tracked at each validation\n";
}

// A KL: small values matter (it starts at exactly 0), so significant digits, not 4 decimals.
std::string format_kl(double kl) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", kl);
  return buf;
}

void report(const train::TrainResult& r, const Texts& t) {
  std::cout << "speed: " << fixed(r.steps_per_s, 2) << " steps/s, "
            << fixed(r.tokens_per_s / 1000.0, 1) << "k tokens/s\n";
  if (!std::isnan(r.final_val_loss)) {
    const double unigram =
        data::unigram_cross_entropy(t.train.data->scored_bytes(t.train.split), t.val.data->scored_bytes(t.val.split));
    std::cout << "validation loss " << fixed(r.val_loss_before, 4) << " before, " << fixed(r.final_val_loss, 4)
              << " after (best " << fixed(r.best_val_loss, 4) << " at step " << r.best_step << "); unigram "
              << fixed(unigram, 4) << " nats/byte\n";
    if (r.final_val_loss >= unigram)
      std::cout << "note: the model does not beat the unigram baseline on held-out text: train longer, or raise "
                   "--lr\n";
  } else {
    std::cout << "final training loss " << fixed(r.last_train_loss, 4) << " nats/byte\n";
  }
  if (!std::isnan(r.kl_after)) {
    std::cout << "KL to the base " << (std::isnan(r.kl_before) ? "" : format_kl(r.kl_before) + " before, ")
              << format_kl(r.kl_after) << " after, nats/position on the KL text's fixed batches\n";
  }
  if (!std::isnan(r.final_old_loss))
    std::cout << "old-domain loss " << fixed(r.old_loss_before, 4) << " before, " << fixed(r.final_old_loss, 4)
              << " after: forgetting " << (r.final_old_loss >= r.old_loss_before ? "+" : "")
              << fixed(r.final_old_loss - r.old_loss_before, 4) << " nats/byte\n";
  if (r.stopped_early) std::cout << "stopped early at step " << r.steps_done << "\n";
  std::cout << "memory (measured tensor bytes): " << r.memory.str() << "; peak RSS "
            << format_bytes(static_cast<double>(memory::peak_rss_bytes())) << "\n";
}

// Checkpoints and metrics of a run whose result is one file go next to it:
// "base.safetensors" -> "base.run/".
std::string run_dir_for_file(const std::string& out) {
  fs::path p(out);
  if (p.extension() == ".safetensors") p.replace_extension("");
  return p.string() + ".run";
}

// --out must be writable; an existing one needs --force, except the run
// directory a --resume continues in.
void check_out(const Args& a, const std::string& out) {
  check_can_write(out, a.is_set("--force") || a.given("--resume"), "--out");
}

// The whole-model output (pretrain, full fine-tuning) for checkpoints.
train::Trainer::Output checkpoint_output(nn::TinyGPT& model) {
  return {[&model](const std::string& dir) {
            fs::create_directories(dir);
            model.save((fs::path(dir) / "model.safetensors").string());
          },
          [&model](const std::string& dir) { model.load_weights((fs::path(dir) / "model.safetensors").string()); }};
}

// --init: PEFT's init_lora_weights values.
lora::LoraInit parse_init(const std::string& v) {
  if (v == "true") return lora::LoraInit::standard;
  if (v == "gaussian") return lora::LoraInit::gaussian;
  if (v == "pissa") return lora::LoraInit::pissa;
  if (v == "false") return lora::LoraInit::random;
  throw UsageError("finetune: --init must be true, gaussian, pissa or false (PEFT's init_lora_weights), got '" + v +
                   "'");
}

// A pattern's value: an integer rank in [1, 65536], or a positive finite alpha.
double pattern_value(const std::string& flag, const std::string& key, const nlohmann::json& v, bool integer) {
  const std::string text = v.is_string() ? v.get<std::string>() : v.dump();
  const std::string what = flag + " '" + key + "'";
  if (integer) {
    if (v.is_number_integer()) {
      const int64_t n = v.get<int64_t>();
      if (n >= 1 && n <= (1 << 16)) return static_cast<double>(n);
    } else if (v.is_string()) {
      size_t used = 0;
      long long n = 0;
      try {
        n = std::stoll(text, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (!text.empty() && used == text.size() && n >= 1 && n <= (1 << 16)) return static_cast<double>(n);
    }
    throw UsageError("finetune: " + what + ": the rank must be an integer in [1, 65536], got " + text);
  }
  double x = NAN;
  if (v.is_number()) {
    x = v.get<double>();
  } else if (v.is_string() && !text.empty() && !std::isspace(static_cast<unsigned char>(text[0]))) {
    char* end = nullptr;
    x = std::strtod(text.c_str(), &end);
    if (end != text.c_str() + text.size()) x = NAN;
  }
  if (!(x > 0) || !std::isfinite(x) || x > 1e9)
    throw UsageError("finetune: " + what + ": alpha must be a positive number up to 1e9, got " + text);
  return x;
}

// --rank-pattern / --alpha-pattern: each value "REGEX=VALUE" (split at the
// last '='), or a JSON object {"REGEX": VALUE, ...}. Sorted by key, as
// adapter_config.json holds them (PEFT's sort_keys=True): the order a module
// is matched in is the order it will be matched in after reloading.
std::vector<std::pair<std::string, double>> pattern_entries(const Args& a, const std::string& flag, bool integer) {
  std::vector<std::pair<std::string, double>> out;
  auto add = [&](const std::string& key, const nlohmann::json& v) {
    if (key.empty()) throw UsageError("finetune: " + flag + ": an empty regex");
    for (const auto& kv : out)
      if (kv.first == key) throw UsageError("finetune: " + flag + ": the regex '" + key + "' is given twice");
    out.push_back({key, pattern_value(flag, key, v, integer)});
    lora::LoraConfig one;  // the key must compile as PEFT uses it: (.*\.)?(KEY)$
    one.target_modules = {"x"};
    one.rank_pattern = {{key, 1}};
    try {
      one.validate();
    } catch (const ValueError& e) {
      throw UsageError("finetune: " + flag + " '" + key + "' is not a regex loragrad can use: " + e.what());
    }
  };
  const std::string metavar = integer ? "N" : "X";
  for (const std::string& value : a.all(flag)) {
    const size_t first = value.find_first_not_of(" \t\n");
    if (first != std::string::npos && value[first] == '{') {
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(value);
      } catch (const nlohmann::json::exception&) {
        j = nullptr;
      }
      if (!j.is_object() || j.empty())
        throw UsageError("finetune: " + flag + " expects REGEX=" + metavar + " or a JSON object {\"REGEX\": " + metavar +
                         ", ...}, got '" + value + "'");
      for (const auto& [key, v] : j.items()) {
        if (!v.is_number()) throw UsageError("finetune: " + flag + " '" + key + "': expected a number, got " + v.dump());
        add(key, v);
      }
      continue;
    }
    const size_t eq = value.rfind('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == value.size())
      throw UsageError("finetune: " + flag + " expects REGEX=" + metavar + " or a JSON object {\"REGEX\": " + metavar +
                       ", ...}, got '" + value + "'");
    add(value.substr(0, eq), nlohmann::json(value.substr(eq + 1)));
  }
  std::sort(out.begin(), out.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
  return out;
}

// An adapter name is a directory name (OUT/NAME) and a key of PEFT's dicts:
// letters, digits, '_' and '-', and not a name finetune's OUT uses itself.
void check_adapter_name(const std::string& name) {
  bool ok = !name.empty() && name.size() <= 64;
  for (unsigned char c : name) ok = ok && (std::isalnum(c) || c == '_' || c == '-');
  if (!ok)
    throw UsageError("finetune: --adapter-name must be 1 to 64 letters, digits, '_' or '-', got '" + name + "'");
  if (name.rfind("checkpoint-", 0) == 0)
    throw UsageError("finetune: --adapter-name '" + name + "' would clash with the run's checkpoint-STEP directories");
}

// How many adapted modules take each pattern's value (a module takes the
// first key that matches it), so that a regex that matches nothing is seen.
void print_pattern_matches(const lora::LoraReport& rep, const lora::LoraConfig& cfg) {
  auto matches = [](const std::string& key, const std::string& path) {
    lora::LoraConfig one;
    one.r = 2;
    one.rank_pattern = {{key, 1}};
    return one.options_for(path).r == 1;
  };
  auto show = [&](const char* what, const std::vector<std::string>& keys, const std::vector<std::string>& values) {
    std::vector<int> count(keys.size(), 0);
    for (const lora::AdaptedModule& m : rep.modules)
      for (size_t i = 0; i < keys.size(); ++i)
        if (matches(keys[i], m.path)) {
          ++count[i];
          break;
        }
    for (size_t i = 0; i < keys.size(); ++i)
      std::cout << what << " '" << keys[i] << "' = " << values[i] << ": " << count[i] << " of "
                << rep.modules.size() << " adapted modules"
                << (count[i] == 0 ? " (note: it matches none; a module's whole path must match (.*\\.)?(REGEX)$)"
                                  : "")
                << "\n";
  };
  std::vector<std::string> keys, values;
  for (const auto& [k, v] : cfg.rank_pattern) keys.push_back(k), values.push_back(std::to_string(v));
  show("rank_pattern", keys, values);
  keys.clear(), values.clear();
  for (const auto& [k, v] : cfg.alpha_pattern) {
    std::ostringstream os;
    os << v;
    keys.push_back(k), values.push_back(os.str());
  }
  show("alpha_pattern", keys, values);
}

}  // namespace

int run_pretrain(int argc, char** argv) {
  Args a("pretrain", "Train a TinyGPT (byte-level) from scratch on a built-in corpus or a file; write its checkpoint.");
  a.option("--domain", "NAME", "built-in corpus: stories | recipes | code (default stories unless --data)");
  add_training_flags(a, "300", "0.1");
  a.option("--seq", "N", "bytes per sequence = the model's block size", "64");
  a.option("--d-model", "N", "residual width", "64");
  a.option("--layers", "N", "transformer blocks", "2");
  a.option("--heads", "N", "attention heads (divides --d-model)", "2");
  a.option("--out", "CKPT", "checkpoint file to write (.safetensors); metrics and checkpoints go to CKPT's .run/");
  a.epilog("learning rate: 3e-3 unless --lr.\nexample:\n  loragrad pretrain --domain stories --steps 300 --out base.safetensors\n");
  if (!a.parse(argc, argv)) return 0;

  const std::string out = a.str("--out");
  nn::TinyGPTConfig cfg;
  cfg.block_size = a.integer("--seq", 1, 1 << 16);
  cfg.d_model = a.integer("--d-model", 1, 1 << 16);
  cfg.n_layer = a.integer("--layers", 1, 1024);
  cfg.n_head = a.integer("--heads", 1, 1 << 16);
  if (cfg.d_model % cfg.n_head != 0)
    throw UsageError("pretrain: --heads " + std::to_string(cfg.n_head) + " must divide --d-model " +
                     std::to_string(cfg.d_model));
  const double lr = learning_rate(a, "pretrain");
  const double weight_decay = a.real("--weight-decay", 0, 10);
  train::TrainConfig tc = trainer_config(a, cfg.block_size);
  tc.out_dir = run_dir_for_file(out);
  cfg.seed = tc.seed;
  set_threads(a);
  const Texts texts = training_texts(a, a.given("--data") ? "" : "stories", tc.seed);
  if (a.given("--resume")) check_dir(a.str("--resume"), "--resume");
  check_out(a, out);
  print_texts(texts, tc.seq, tc.batch);
  auto model = std::make_shared<nn::TinyGPT>(cfg);
  std::cout << "model: TinyGPT d_model " << cfg.d_model << ", " << cfg.n_layer << " layers, " << cfg.n_head
            << " heads, block " << cfg.block_size << ": " << with_commas(model->num_parameters()) << " parameters\n";
  optim::AdamW opt(decay_groups(*model, lr, weight_decay));
  const nlohmann::json identity = {{"method", "pretrain"}, {"mix", texts.mix_identity}};
  train::Trainer trainer(*model, opt, texts.train, texts.val, tc, checkpoint_output(*model), identity);
  if (a.given("--resume")) trainer.resume(a.str("--resume"));
  const train::TrainResult r = trainer.fit();
  report(r, texts);
  model->save(out);
  std::cout << "checkpoint: " << out << "  (metrics: " << tc.out_dir << "/metrics.csv)\n";
  return 0;
}

int run_finetune(int argc, char** argv) {
  Args a("finetune", "Adapt a TinyGPT checkpoint to a text: a PEFT adapter directory (or, for full, a checkpoint).");
  a.option("--base", "CKPT", "the checkpoint to adapt");
  a.option("--method", "NAME", "full | lora | loraplus | dora (= lora --dora) | qlora (= lora --qlora)", "lora");
  a.option("--targets", "LIST", "modules to adapt, comma-separated, or all-linear", "q_proj,v_proj");
  a.option("--r", "N", "LoRA rank", "8");
  a.option("--alpha", "X", "LoRA alpha (scale alpha / r)", "16");
  a.option("--dropout", "P", "dropout on the adapter's input, in [0, 1)", "0");
  a.flag("--dora", "DoRA (use_dora): a learned magnitude per output row; with --qlora: QDoRA");
  a.flag("--qlora", "QLoRA: the frozen base in NF4 (every linear layer but lm_head)");
  a.option("--precision", "NAME", "fp32 | bf16: bf16 stores the frozen base (every linear layer) in bf16", "fp32");
  a.flag("--rslora", "rsLoRA (use_rslora): scale alpha / sqrt(r) instead of alpha / r");
  a.option("--init", "NAME", "init_lora_weights: true | gaussian | pissa | false (see below)", "true");
  a.option("--modules-to-save", "LIST", "modules trained in full and saved with the adapter (e.g. lm_head,ln_f)");
  a.repeatable("--rank-pattern", "REGEX=N", "rank of the modules whose path matches REGEX (see below)");
  a.repeatable("--alpha-pattern", "REGEX=X", "alpha of the modules whose path matches REGEX (see below)");
  a.option("--adapter-name", "NAME", "the adapter's name; another than default is saved in OUT/NAME/", "default");
  a.option("--loraplus-ratio", "X", "LoRA+: lr of B / lr of A", "16");
  a.option("--domain", "NAME", "built-in data: stories | recipes | code, or recipe-qa (instructions)");
  add_training_flags(a, "100", "0");
  a.option("--old-data", "FILE", "track the loss on this old-domain file at each validation (metrics.csv old_loss)");
  a.option("--old-domain", "NAME", "the same for a built-in domain (its held-out tenth), e.g. the base's stories");
  a.option("--kl-weight", "X", "add X * KL(base || adapted) on the KL text to the loss (0: off; see below)", "0");
  a.option("--kl-data", "FILE", "the KL text: this file (text or .jsonl)");
  a.option("--kl-domain", "NAME", "the KL text: a built-in domain (default stories, see below)");
  a.option("--seq", "N", "bytes per sequence (at most the model's block size; default: the block size)");
  a.option("--out", "DIR", "adapter directory to write, with metrics.csv and checkpoint-STEP/ (full: a checkpoint file)");
  a.epilog(
      "The adapter flags are PEFT's LoraConfig, and go to adapter_config.json under PEFT's names:\n"
      "  --r r, --alpha lora_alpha, --dropout lora_dropout, --targets target_modules, --dora use_dora,\n"
      "  --rslora use_rslora, --init init_lora_weights, --modules-to-save modules_to_save,\n"
      "  --rank-pattern rank_pattern, --alpha-pattern alpha_pattern; --qlora is loragrad_qlora.\n"
      "--init: true: A random (Kaiming uniform), B = 0; gaussian: A ~ N(0, 1/r), B = 0; false: A and B both\n"
      "  random (the adapter changes the model from step 0); pissa: A and B from the top-r singular vectors of\n"
      "  the base weight, which keeps the rest (needs a float base: not with --qlora, as in PEFT).\n"
      "--rank-pattern / --alpha-pattern: REGEX=VALUE, once per pattern (split at the last '=', so the regex\n"
      "  may hold ',' and '='), or one JSON object as PEFT's dict: '{\"q_proj\": 4, \"fc_.*\": 16}'.\n"
      "  A module takes the value of the first key (in sorted order, as adapter_config.json holds them) with\n"
      "  re.match(rf\"(.*\\.)?({REGEX})$\", path), e.g. fc_in matches blocks.0.mlp.fc_in; others take --r / --alpha.\n"
      "--method dora, qlora are --method lora with --dora, --qlora; --dora --qlora (or --method dora --qlora)\n"
      "  is QDoRA; loraplus combines with --dora and --qlora too. --method full takes none of the adapter flags.\n"
      "--precision bf16: mixed precision, as torch.autocast(\"cpu\", torch.bfloat16) for the frozen base: every\n"
      "  linear layer not trained (lm_head too) is stored in bf16 and multiplied in bf16 with float32 sums; the\n"
      "  adapter, its optimizer state and every other op stay float32. Not with --method full nor --qlora. The\n"
      "  adapter is saved as usual (float32) and loads onto the float base.\n"
      "--adapter-name: PEFT's save_pretrained writes a non-default adapter into a subdirectory named after it:\n"
      "  so does finetune (OUT/NAME/adapter_config.json; metrics.csv and checkpoint-STEP/ stay in OUT, and a\n"
      "  checkpoint holds checkpoint-STEP/NAME/). Load it with --adapter OUT/NAME.\n"
      "--kl-weight X: the loss of each micro-batch gets X * KL(p_base || p_adapted), the mean over the positions\n"
      "  of a batch of the KL text of sum_v p_base(v) (log p_base(v) - log p_adapted(v)); p_base is this model\n"
      "  with its adapters disabled (no second copy), under no-grad; both in eval mode (no dropout), so the KL\n"
      "  is exactly 0 at step 0. The KL text: --kl-data FILE, or --kl-domain NAME (the 90% of the built-in text\n"
      "  that --old-domain leaves out), default stories (pretrain's default domain: a checkpoint does not record\n"
      "  its domain). Costs one no-grad forward and one forward/backward more per micro-batch. metrics.csv: kl.\n"
      "  Adapter methods only, without --modules-to-save or --init pissa (those leave no base to compare with).\n"
      "learning rates unless --lr: full 2e-3, lora / dora / qlora 2e-2, loraplus 5e-3 (B at 16x: 8e-2).\n"
      "example:\n  loragrad finetune --base base.safetensors --data notes.txt --method lora --r 8 --out my_adapter\n"
      "  loragrad finetune --base base.safetensors --data notes.txt --dora --qlora --rslora \\\n"
      "                    --rank-pattern 'fc_.*=16' --out my_qdora\n");
  if (!a.parse(argc, argv)) return 0;

  const std::string method = a.str("--method");
  if (method != "full" && method != "lora" && method != "loraplus" && method != "dora" && method != "qlora")
    throw UsageError("finetune: unknown --method '" + method + "' (full, lora, loraplus, dora or qlora)");
  const bool whole_model = method == "full";
  for (const char* flag : {"--targets", "--r", "--alpha", "--dropout", "--dora", "--qlora", "--rslora", "--init",
                           "--modules-to-save", "--rank-pattern", "--alpha-pattern", "--adapter-name"})
    if (whole_model && a.given(flag))
      throw UsageError(std::string("finetune: ") + flag + " is for the adapter methods, not --method full");
  if (method != "loraplus" && a.given("--loraplus-ratio"))
    throw UsageError("finetune: --loraplus-ratio is for --method loraplus");
  const std::string base = a.str("--base"), out = a.str("--out");
  const int64_t r = a.integer("--r", 1, 1 << 16);
  const double alpha = a.real("--alpha", 0, 1e9);
  if (!(alpha > 0)) throw UsageError("finetune: --alpha must be positive, got " + a.str("--alpha"));
  const double dropout = a.real("--dropout", 0, 1, /*hi_open=*/true);
  const double ratio = a.real("--loraplus-ratio", 0, 1e9);
  if (!(ratio > 0)) throw UsageError("finetune: --loraplus-ratio must be positive, got " + a.str("--loraplus-ratio"));
  const bool loraplus = method == "loraplus";
  // The KL to the base, checked with the other flags.
  const double kl_weight = a.real("--kl-weight", 0, 1e6);
  const bool kl = kl_weight > 0;
  if (a.given("--kl-data") && a.given("--kl-domain"))
    throw UsageError("finetune: give --kl-data FILE or --kl-domain NAME, not both");
  if (!kl && (a.given("--kl-data") || a.given("--kl-domain")))
    throw UsageError(std::string("finetune: ") + (a.given("--kl-data") ? "--kl-data" : "--kl-domain") +
                     " needs --kl-weight X > 0");
  if (kl && whole_model)
    throw UsageError("finetune: --kl-weight needs an adapter method: --method full changes the weights themselves, "
                     "so there is no base (the model with its adapters disabled) to compare with");
  if (kl && a.given("--modules-to-save"))
    throw UsageError("finetune: --kl-weight with --modules-to-save: those modules are trained in place, so the model "
                     "with its adapters disabled is no longer the base");
  const bool dora = method == "dora" || a.is_set("--dora");
  const bool qlora = method == "qlora" || a.is_set("--qlora");
  const std::string precision = a.str("--precision");
  if (precision != "fp32" && precision != "bf16")
    throw UsageError("finetune: --precision must be fp32 or bf16, got '" + printable(precision) + "'");
  if (precision == "bf16" && whole_model)
    throw UsageError("finetune: --precision bf16 stores the frozen base in bf16; --method full trains every weight");
  if (precision == "bf16" && qlora)
    throw UsageError("finetune: --precision bf16 stores the frozen base in bf16, --qlora in NF4: choose one");
  // One name per combination, for the progress bar and the run's identity:
  // "--method dora" and "--method lora --dora" are the same run.
  const std::string variant = dora && qlora ? "qdora" : dora ? "dora" : qlora ? "qlora" : "";
  const std::string label = whole_model ? "full"
                            : loraplus  ? (variant.empty() ? "loraplus" : "loraplus+" + variant)
                                        : (variant.empty() ? "lora" : variant);
  const double lr = learning_rate(a, loraplus ? "loraplus" : method);
  const double weight_decay = a.real("--weight-decay", 0, 10);
  const std::vector<std::string> targets = a.list("--targets");
  if (!a.given("--data") && !a.given("--domain"))
    throw UsageError(std::string("finetune: give the text to adapt to: --data FILE or --domain ") + kDomainNames);
  const int64_t seq_flag = a.given("--seq") ? a.integer("--seq", 1, 1 << 16) : 0;
  train::TrainConfig tc = trainer_config(a, seq_flag);
  tc.label = label;
  tc.out_dir = whole_model ? run_dir_for_file(out) : out;

  // The adapter's LoraConfig, every flag checked before any work.
  lora::LoraConfig cfg;
  std::string adapter_name = "default";
  if (!whole_model) {
    cfg.r = r;
    cfg.lora_alpha = alpha;
    cfg.lora_dropout = dropout;
    cfg.target_modules = targets;
    cfg.use_dora = dora;
    cfg.qlora = qlora;
    if (precision == "bf16") cfg.base_storage = "bf16";
    cfg.use_rslora = a.is_set("--rslora");
    cfg.init_lora_weights = parse_init(a.str("--init"));
    if (kl && cfg.init_lora_weights == lora::LoraInit::pissa)
      throw UsageError("finetune: --kl-weight with --init pissa: PiSSA's base weight is the residual W0 - s B A, so "
                       "the model with its adapters disabled is not the base");
    if (cfg.init_lora_weights == lora::LoraInit::pissa && qlora)
      throw UsageError("finetune: --init pissa needs a float base, not --qlora (PEFT refuses PiSSA on a 4-bit base "
                       "too: its SVD is of the full-precision weight)");
    if (a.given("--modules-to-save")) cfg.modules_to_save = a.list("--modules-to-save");
    for (const auto& [key, value] : pattern_entries(a, "--rank-pattern", /*integer=*/true))
      cfg.rank_pattern.push_back({key, static_cast<int64_t>(value)});
    for (const auto& [key, value] : pattern_entries(a, "--alpha-pattern", /*integer=*/false))
      cfg.alpha_pattern.push_back({key, value});
    cfg.seed = tc.seed;
    try {
      cfg.validate();
    } catch (const ValueError& e) {
      throw UsageError(std::string("finetune: ") + e.what());
    }
    adapter_name = a.str("--adapter-name");
    check_adapter_name(adapter_name);
  }
  set_threads(a);

  // Every input is read before anything is printed or trained.
  const Texts texts = training_texts(a, "", tc.seed, /*old_flags=*/true);
  // The KL text: a whole file, or the training 90% of a built-in domain (the
  // part a base pretrained on it with this --seed has seen; --old-domain
  // measures on the other tenth).
  std::unique_ptr<data::Source> kl_source;
  train::TextSource kl_text;
  std::string kl_name;
  if (kl) {
    if (a.given("--kl-data")) {
      kl_source = file_source(a.str("--kl-data"), 0.0, "--kl-data");
      kl_name = "file:" + a.str("--kl-data");
    } else {
      const std::string domain = a.given("--kl-domain") ? a.str("--kl-domain") : "stories";
      kl_source = builtin_source(domain, tc.seed, 0.1, "--kl-domain");
      kl_name = "domain:" + domain;
    }
    kl_text = {kl_source.get(), data::Split::train};
  }
  if (a.given("--resume")) check_dir(a.str("--resume"), "--resume");
  check_out(a, out);
  auto model = load_checkpoint(base);
  lora::AdapterProvenance provenance{base, "CAUSAL_LM", nn::fingerprint(model->state_dict()), std::nullopt};
  const int64_t block = model->config().block_size;
  if (seq_flag > block)
    throw UsageError("finetune: --seq " + std::to_string(seq_flag) + " exceeds the checkpoint's block size " +
                     std::to_string(block));
  if (seq_flag == 0) tc.seq = block;

  nlohmann::json identity = {{"method", label}, {"mix", texts.mix_identity}};
  std::unique_ptr<optim::AdamW> opt;
  train::Trainer::Output output;
  if (whole_model) {
    model->requires_grad_(true);
    opt = std::make_unique<optim::AdamW>(decay_groups(*model, lr, weight_decay));
    output = checkpoint_output(*model);
    std::cout << "full fine-tuning: " << with_commas(model->num_parameters(true)) << " trainable parameters, lr "
              << lr << "\n";
  } else {
    const lora::LoraReport rep = lora::apply_lora(*model, cfg, adapter_name);
    provenance.requested = cfg;
    lora::LoraOptions o;
    o.r = r;
    o.alpha = alpha;
    o.use_rslora = cfg.use_rslora;
    std::cout << label << ": " << rep.modules.size() << " adapted modules, r " << r << ", alpha " << alpha
              << ", scale " << o.scale() << (cfg.use_rslora ? " (rsLoRA: alpha / sqrt(r))" : " (alpha / r)")
              << ", init " << lora::lora_init_name(cfg.init_lora_weights) << ", lr " << lr
              << (cfg.base_storage == "bf16" ? ", frozen base in bf16" : "") << "\n"
              << rep.summary() << "\n";
    if (!rep.modules_to_save.empty()) std::cout << "modules_to_save: " << quoted_list(rep.modules_to_save) << "\n";
    print_pattern_matches(rep, cfg);
    identity["targets"] = targets;
    identity["r"] = r;
    identity["alpha"] = alpha;
    identity["dropout"] = dropout;
    identity["rslora"] = cfg.use_rslora;
    identity["init"] = lora::lora_init_name(cfg.init_lora_weights);
    identity["modules_to_save"] = cfg.modules_to_save;
    identity["rank_pattern"] = nlohmann::json::array();
    for (const auto& [key, value] : cfg.rank_pattern) identity["rank_pattern"].push_back({key, value});
    identity["alpha_pattern"] = nlohmann::json::array();
    for (const auto& [key, value] : cfg.alpha_pattern) identity["alpha_pattern"].push_back({key, value});
    identity["adapter_name"] = adapter_name;
    identity["precision"] = precision;
    if (loraplus) {
      identity["loraplus_ratio"] = ratio;
      opt = std::make_unique<optim::AdamW>(lora::loraplus_param_groups(*model, lr, ratio, weight_decay));
    } else {
      std::vector<Tensor> trainable;
      for (const Tensor& p : model->parameters())
        if (p.requires_grad()) trainable.push_back(p);
      opt = std::make_unique<optim::AdamW>(
          std::vector<optim::ParamGroup>{optim::ParamGroup("adapter", trainable, lr, weight_decay)});
    }
    output = {[&model, &provenance, adapter_name](const std::string& dir) {
                lora::save_adapter(*model, lora::adapter_subdir(dir, adapter_name), adapter_name, true, provenance);
              },
              [&model, adapter_name](const std::string& dir) {
                lora::load_adapter_weights(*model, lora::adapter_subdir(dir, adapter_name), adapter_name);
              }};
  }
  print_texts(texts, tc.seq, tc.batch);
  if (kl) {
    identity["kl_data"] = kl_name;
    std::cout << "KL to the base: weight " << kl_weight << " on " << printable(kl_name) << " ("
              << describe(*kl_text.data, kl_text.split, tc.seq) << ")\n";
  }
  train::Trainer trainer(*model, *opt, texts.train, texts.val, tc, output, identity);
  if (texts.old.data) trainer.track_old_loss(texts.old);
  if (kl) {
    try {
      trainer.add_kl_to_base(kl_text, kl_weight);
    } catch (const ValueError& e) {  // a KL text too short for --seq
      throw UsageError(std::string("finetune: --kl-weight: ") + e.what());
    }
  }
  if (a.given("--resume")) trainer.resume(a.str("--resume"));
  const train::TrainResult res = trainer.fit();
  report(res, texts);

  if (whole_model) {
    model->save(out);
    std::cout << "checkpoint: " << out << "  (metrics: " << tc.out_dir << "/metrics.csv)\n";
    return 0;
  }
  // The adapter, metrics.csv and this run's checkpoints (hard links) appear
  // at --out together, in one atomic swap.
  const std::string staged = temporary_path(out);
  remove_stale_temporaries(out);
  fs::remove_all(staged);
  lora::save_adapter(*model, lora::adapter_subdir(staged, adapter_name), adapter_name, true, provenance);
  std::error_code ec;
  if (fs::is_directory(out, ec))
    for (const auto& e : fs::directory_iterator(out)) {
      const std::string name = e.path().filename().string();
      if (name == "metrics.csv" || (name.rfind("checkpoint-", 0) == 0 && e.is_directory() && !is_temporary_path(name))) {
        if (e.is_directory()) link_tree(e.path().string(), (fs::path(staged) / name).string());
        else fs::copy_file(e.path(), fs::path(staged) / name);
      }
    }
  replace_directory(staged, out, "finetune --out");
  if (adapter_name == "default")
    std::cout << "adapter: " << out << "/ (adapter_config.json, adapter_model.safetensors, metrics.csv)\n";
  else
    std::cout << "adapter '" << adapter_name << "': " << lora::adapter_subdir(out, adapter_name)
              << "/ (adapter_config.json, adapter_model.safetensors; metrics.csv in " << out << "/)\n";
  return 0;
}

}  // namespace loragrad::cli

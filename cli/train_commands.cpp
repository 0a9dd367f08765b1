// loragrad pretrain and loragrad finetune: the two subcommands that train,
// both through train::Trainer.
#include <cmath>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common.hpp"
#include "loragrad/data/corpus.hpp"
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
std::vector<ParamGroup> decay_groups(const nn::Module& model, double lr, double weight_decay) {
  std::vector<Tensor> decay, no_decay;
  for (const Tensor& p : model.parameters())
    if (p.requires_grad()) (p.dim() >= 2 ? decay : no_decay).push_back(p);
  std::vector<ParamGroup> groups;
  if (!decay.empty()) groups.emplace_back("decay", decay, lr, weight_decay);
  if (!no_decay.empty()) groups.emplace_back("no_decay", no_decay, lr, 0.0);
  return groups;
}

void add_training_flags(Args& a, const std::string& steps, const std::string& weight_decay) {
  a.option("--data", "FILE", "train on this text file (any bytes)");
  a.option("--val-data", "FILE", "validate on this file (default: the last --val-fraction of the training text)");
  a.option("--val-fraction", "X", "held-out share of the training text, in [0, 0.5]", "0.1");
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
  a.option("--threads", "N", "OpenMP threads (0: OpenMP's choice)", "0");
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

// The training text and the held-out text it is measured on.
struct Texts {
  std::optional<ByteDataset> data, val_file;
  train::TextSource train, val;
};

Texts training_texts(const Args& a, const std::string& default_domain, uint64_t seed) {
  const bool has_data = a.given("--data"), has_domain = a.given("--domain");
  if (has_data && has_domain) throw UsageError("give --data FILE or --domain NAME, not both");
  const bool own_val = a.given("--val-data");
  if (own_val && a.given("--val-fraction")) throw UsageError("give --val-data FILE or --val-fraction X, not both");
  const double fraction = own_val ? 0.0 : a.real("--val-fraction", 0, 0.5);
  Texts t;
  if (has_data) {
    const std::string path = a.str("--data");
    check_file(path, "--data");
    t.data.emplace(ByteDataset::from_file(path, fraction));
  } else {
    const std::string name = has_domain ? a.str("--domain") : default_domain;
    if (name.empty()) throw UsageError("give the training text: --data FILE or --domain stories|recipes|code");
    if (name != "stories" && name != "recipes" && name != "code")
      throw UsageError("--domain must be stories, recipes or code, got '" + name + "'");
    t.data.emplace(builtin_corpus(parse_domain(name), size_t{512} << 10, seed), fraction);
  }
  t.train = {&*t.data, Split::train};
  if (own_val) {
    const std::string path = a.str("--val-data");
    check_file(path, "--val-data");
    t.val_file.emplace(ByteDataset::from_file(path, 0.0));
    t.val = {&*t.val_file, Split::train};
  } else if (fraction > 0) {
    t.val = {&*t.data, Split::validation};
  }
  return t;
}

void print_texts(const Texts& t, int64_t seq) {
  std::cout << "text: " << t.train.size() << " training bytes";
  if (t.val.data) {
    const double unigram = unigram_cross_entropy(t.train.data->bytes(t.train.split), t.val.data->bytes(t.val.split));
    std::cout << ", " << t.val.size() << " validation bytes; unigram baseline " << fixed(unigram, 3)
              << " nats/byte on them";
    if (t.val.size() < seq + 1) std::cout << " (too short for one --seq window: no validation loss)";
  }
  std::cout << "\n";
}

void report(const train::TrainResult& r, const Texts& t) {
  std::cout << "speed: " << fixed(r.steps_per_s, 2) << " steps/s, "
            << fixed(r.tokens_per_s / 1000.0, 1) << "k tokens/s\n";
  if (!std::isnan(r.final_val_loss)) {
    const double unigram = unigram_cross_entropy(t.train.data->bytes(t.train.split), t.val.data->bytes(t.val.split));
    std::cout << "validation loss " << fixed(r.val_loss_before, 4) << " before, " << fixed(r.final_val_loss, 4)
              << " after (best " << fixed(r.best_val_loss, 4) << " at step " << r.best_step << "); unigram "
              << fixed(unigram, 4) << " nats/byte\n";
    if (r.final_val_loss >= unigram)
      std::cout << "note: the model does not beat the unigram baseline on held-out text: train longer, or raise "
                   "--lr\n";
  } else {
    std::cout << "final training loss " << fixed(r.last_train_loss, 4) << " nats/byte\n";
  }
  if (r.stopped_early) std::cout << "stopped early at step " << r.steps_done << "\n";
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
  print_texts(texts, tc.seq);
  auto model = std::make_shared<nn::TinyGPT>(cfg);
  std::cout << "model: TinyGPT d_model " << cfg.d_model << ", " << cfg.n_layer << " layers, " << cfg.n_head
            << " heads, block " << cfg.block_size << ": " << with_commas(model->num_parameters()) << " parameters\n";
  AdamW opt(decay_groups(*model, lr, weight_decay));
  const nlohmann::json identity = {{"method", "pretrain"}};
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
  a.option("--method", "NAME", "full | lora | loraplus | dora | qlora", "lora");
  a.option("--targets", "LIST", "modules to adapt, comma-separated, or all-linear", "q_proj,v_proj");
  a.option("--r", "N", "LoRA rank", "8");
  a.option("--alpha", "X", "LoRA alpha (scale alpha / r)", "16");
  a.option("--dropout", "P", "dropout on the adapter's input, in [0, 1)", "0");
  a.option("--loraplus-ratio", "X", "LoRA+: lr of B / lr of A", "16");
  a.option("--domain", "NAME", "built-in corpus: stories | recipes | code (instead of --data)");
  add_training_flags(a, "100", "0");
  a.option("--seq", "N", "bytes per sequence (at most the model's block size; default: the block size)");
  a.option("--out", "DIR", "adapter directory to write, with metrics.csv and checkpoint-STEP/ (full: a checkpoint file)");
  a.epilog(
      "learning rates unless --lr: full 2e-3, lora / dora / qlora 2e-2, loraplus 5e-3 (B at 16x: 8e-2).\n"
      "example:\n  loragrad finetune --base base.safetensors --data notes.txt --method lora --r 8 --out my_adapter\n");
  if (!a.parse(argc, argv)) return 0;

  const std::string method = a.str("--method");
  if (method != "full" && method != "lora" && method != "loraplus" && method != "dora" && method != "qlora")
    throw UsageError("finetune: unknown --method '" + method + "' (full, lora, loraplus, dora or qlora)");
  const std::string base = a.str("--base"), out = a.str("--out");
  const int64_t r = a.integer("--r", 1, 1 << 16);
  const double alpha = a.real("--alpha", 0, 1e9);
  if (!(alpha > 0)) throw UsageError("finetune: --alpha must be positive, got " + a.str("--alpha"));
  const double dropout = a.real("--dropout", 0, 1, /*hi_open=*/true);
  const double ratio = a.real("--loraplus-ratio", 0, 1e9);
  if (!(ratio > 0)) throw UsageError("finetune: --loraplus-ratio must be positive, got " + a.str("--loraplus-ratio"));
  const double lr = learning_rate(a, method);
  const double weight_decay = a.real("--weight-decay", 0, 10);
  const std::vector<std::string> targets = a.list("--targets");
  if (!a.given("--data") && !a.given("--domain"))
    throw UsageError("finetune: give the text to adapt to: --data FILE or --domain stories|recipes|code");
  const int64_t seq_flag = a.given("--seq") ? a.integer("--seq", 1, 1 << 16) : 0;
  train::TrainConfig tc = trainer_config(a, seq_flag);
  tc.label = method;
  const bool whole_model = method == "full";
  for (const char* flag : {"--targets", "--r", "--alpha", "--dropout"})
    if (whole_model && a.given(flag))
      throw UsageError(std::string("finetune: ") + flag + " is for the adapter methods, not --method full");
  if (method != "loraplus" && a.given("--loraplus-ratio"))
    throw UsageError("finetune: --loraplus-ratio is for --method loraplus");
  tc.out_dir = whole_model ? run_dir_for_file(out) : out;
  set_threads(a);

  // Every input is read before anything is printed or trained.
  const Texts texts = training_texts(a, "", tc.seed);
  if (a.given("--resume")) check_dir(a.str("--resume"), "--resume");
  check_out(a, out);
  auto model = load_checkpoint(base);
  const lora::AdapterProvenance provenance{base, "CAUSAL_LM", nn::fingerprint(model->state_dict())};
  const int64_t block = model->config().block_size;
  if (seq_flag > block)
    throw UsageError("finetune: --seq " + std::to_string(seq_flag) + " exceeds the checkpoint's block size " +
                     std::to_string(block));
  if (seq_flag == 0) tc.seq = block;

  nlohmann::json identity = {{"method", method}};
  std::unique_ptr<AdamW> opt;
  train::Trainer::Output output;
  if (whole_model) {
    model->requires_grad_(true);
    opt = std::make_unique<AdamW>(decay_groups(*model, lr, weight_decay));
    output = checkpoint_output(*model);
    std::cout << "full fine-tuning: " << with_commas(model->num_parameters(true)) << " trainable parameters, lr "
              << lr << "\n";
  } else {
    lora::LoraConfig cfg;
    cfg.r = r;
    cfg.lora_alpha = alpha;
    cfg.lora_dropout = dropout;
    cfg.target_modules = targets;
    cfg.use_dora = method == "dora";
    cfg.qlora = method == "qlora";
    cfg.seed = tc.seed;
    cfg.validate();
    const lora::LoraReport rep = lora::apply_lora(*model, cfg);
    std::cout << method << ": " << rep.modules.size() << " adapted modules, r " << r << ", alpha " << alpha << ", lr "
              << lr << "\n"
              << rep.summary() << "\n";
    identity["targets"] = targets;
    identity["r"] = r;
    identity["alpha"] = alpha;
    identity["dropout"] = dropout;
    if (method == "loraplus") {
      identity["loraplus_ratio"] = ratio;
      opt = std::make_unique<AdamW>(lora::loraplus_param_groups(*model, lr, ratio, weight_decay));
    } else {
      std::vector<Tensor> trainable;
      for (const Tensor& p : model->parameters())
        if (p.requires_grad()) trainable.push_back(p);
      opt = std::make_unique<AdamW>(std::vector<ParamGroup>{ParamGroup("adapter", trainable, lr, weight_decay)});
    }
    output = {[&model, &provenance](const std::string& dir) { lora::save_adapter(*model, dir, "default", true, provenance); },
              [&model](const std::string& dir) { lora::load_adapter_weights(*model, dir); }};
  }
  print_texts(texts, tc.seq);
  train::Trainer trainer(*model, *opt, texts.train, texts.val, tc, output, identity);
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
  lora::save_adapter(*model, staged, "default", true, provenance);
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
  std::cout << "adapter: " << out << "/ (adapter_config.json, adapter_model.safetensors, metrics.csv)\n";
  return 0;
}

}  // namespace loragrad::cli

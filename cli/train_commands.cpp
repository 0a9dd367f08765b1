// loragrad pretrain and loragrad finetune: the two subcommands that train.
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "common.hpp"
#include "loragrad/error.hpp"
#include "loragrad/lora/inject.hpp"
#include "loragrad/lora/loraplus.hpp"
#include "loragrad/lora/peft_io.hpp"
#include "loragrad/nn/progress.hpp"
#include "loragrad/optim/adamw.hpp"

namespace fs = std::filesystem;

namespace loragrad::cli {

namespace {

constexpr int64_t kBig = 1000000000;

// GPT-2 style: decay the matrices, not the biases and LayerNorm gains.
std::vector<ParamGroup> decay_groups(const nn::Module& model, double lr) {
  std::vector<Tensor> decay, no_decay;
  for (const Tensor& p : model.parameters())
    if (p.requires_grad()) (p.dim() >= 2 ? decay : no_decay).push_back(p);
  std::vector<ParamGroup> groups;
  if (!decay.empty()) groups.emplace_back("decay", decay, lr, 0.1);
  if (!no_decay.empty()) groups.emplace_back("no_decay", no_decay, lr, 0.0);
  return groups;
}

std::vector<Tensor> trainable(const nn::Module& model) {
  std::vector<Tensor> ps;
  for (const Tensor& p : model.parameters())
    if (p.requires_grad()) ps.push_back(p);
  return ps;
}

void add_training_flags(Args& a, const std::string& steps, const std::string& lr) {
  a.option("--data", "FILE", "train on this text file (any bytes)");
  a.option("--steps", "N", "optimizer steps", steps);
  a.option("--batch", "N", "sequences per step", "8");
  a.option("--lr", "X", "peak learning rate (cosine schedule, 5% warm-up)", lr);
  a.option("--seed", "N", "data, initial weights and batches", "0");
  a.option("--threads", "N", "OpenMP threads (0: OpenMP's choice)", "0");
  a.flag("--force", "replace an existing --out");
  a.flag("--quiet", "no live progress bar, plain log lines");
}

TrainOptions training_options(const Args& a, int64_t seq) {
  TrainOptions o;
  o.steps = a.integer("--steps", 1, kBig);
  o.batch = a.integer("--batch", 1, 1 << 16);
  o.seq = seq;
  o.seed = static_cast<uint64_t>(a.integer("--seed", 0, kBig));
  o.quiet = a.is_set("--quiet");
  return o;
}

}  // namespace

int run_pretrain(int argc, char** argv) {
  Args a("pretrain", "Train a TinyGPT (byte-level) from scratch on a built-in corpus or a file; write its checkpoint.");
  a.option("--domain", "NAME", "built-in corpus: stories | recipes | code (default stories unless --data)");
  add_training_flags(a, "300", "3e-3");
  a.option("--seq", "N", "bytes per sequence = the model's block size", "64");
  a.option("--d-model", "N", "residual width", "64");
  a.option("--layers", "N", "transformer blocks", "2");
  a.option("--heads", "N", "attention heads (divides --d-model)", "2");
  a.option("--out", "CKPT", "checkpoint file to write (.safetensors)");
  a.epilog("example:\n  loragrad pretrain --domain stories --steps 300 --out base.safetensors\n");
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
  const double lr = a.real("--lr", 0, 10);
  if (!(lr > 0)) throw UsageError("pretrain: --lr must be positive, got " + a.str("--lr"));
  const TrainOptions o = training_options(a, cfg.block_size);
  cfg.seed = o.seed;
  set_threads(a);
  check_can_write(out, a.is_set("--force"), "--out");

  const ByteDataset data = training_text(a, a.given("--data") ? "" : "stories", o.seed);
  std::cout << "text: " << data.size(Split::train) << " train + " << data.size(Split::validation)
            << " validation bytes; unigram baseline " << fixed(data.unigram_entropy(Split::train), 3)
            << " nats/byte\n";
  auto model = std::make_shared<nn::TinyGPT>(cfg);
  std::cout << "model: TinyGPT d_model " << cfg.d_model << ", " << cfg.n_layer << " layers, " << cfg.n_head
            << " heads, block " << cfg.block_size << ": " << with_commas(model->num_parameters()) << " parameters\n";
  AdamW opt(decay_groups(*model, lr));
  const double loss = train(*model, opt, data, o);
  std::cout << "final loss " << fixed(loss, 4) << " nats/byte\n";

  if (fs::path(out).has_parent_path()) fs::create_directories(fs::path(out).parent_path());
  model->save(out);
  std::cout << "checkpoint: " << out << "\n";
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
  add_training_flags(a, "100", "1e-3");
  a.option("--seq", "N", "bytes per sequence (at most the model's block size; default: the block size)");
  a.option("--out", "DIR", "adapter directory to write (full: a checkpoint file)");
  a.epilog(
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
  const double lr = a.real("--lr", 0, 10);
  if (!(lr > 0)) throw UsageError("finetune: --lr must be positive, got " + a.str("--lr"));
  const std::vector<std::string> targets = a.list("--targets");
  if (!a.given("--data") && !a.given("--domain"))
    throw UsageError("finetune: give the text to adapt to: --data FILE or --domain stories|recipes|code");
  const int64_t seq_flag = a.given("--seq") ? a.integer("--seq", 1, 1 << 16) : 0;
  TrainOptions o = training_options(a, seq_flag);
  set_threads(a);
  check_can_write(out, a.is_set("--force"), "--out");

  // Every input is read before anything is printed or trained.
  const ByteDataset data = training_text(a, "", o.seed);
  auto model = load_checkpoint(base);
  const int64_t block = model->config().block_size;
  if (seq_flag > block)
    throw UsageError("finetune: --seq " + std::to_string(seq_flag) + " exceeds the checkpoint's block size " +
                     std::to_string(block));
  if (seq_flag == 0) o.seq = block;

  std::unique_ptr<AdamW> opt;
  if (method == "full") {
    model->requires_grad_(true);
    opt = std::make_unique<AdamW>(decay_groups(*model, lr));
    std::cout << "full fine-tuning: " << with_commas(model->num_parameters(true)) << " trainable parameters\n";
  } else {
    lora::LoraConfig cfg;
    cfg.r = r;
    cfg.lora_alpha = alpha;
    cfg.lora_dropout = dropout;
    cfg.target_modules = targets;
    cfg.use_dora = method == "dora";
    cfg.qlora = method == "qlora";
    cfg.seed = o.seed;
    cfg.base_model_name_or_path = base;
    cfg.task_type = "CAUSAL_LM";
    cfg.validate();
    const lora::LoraReport rep = lora::apply_lora(*model, cfg);
    std::cout << method << ": " << rep.modules.size() << " adapted modules, r " << r << ", alpha " << alpha << "\n"
              << rep.summary() << "\n";
    if (method == "loraplus") opt = std::make_unique<AdamW>(lora::loraplus_param_groups(*model, lr, ratio));
    else opt = std::make_unique<AdamW>(std::vector<ParamGroup>{ParamGroup("adapter", trainable(*model), lr, 0.0)});
  }
  std::cout << "text: " << data.size(Split::train) << " train + " << data.size(Split::validation)
            << " validation bytes\n";
  const double loss = train(*model, *opt, data, o);
  std::cout << "final loss " << fixed(loss, 4) << " nats/byte\n";

  if (method == "full") {
    if (fs::path(out).has_parent_path()) fs::create_directories(fs::path(out).parent_path());
    model->save(out);
    std::cout << "checkpoint: " << out << "\n";
  } else {
    lora::save_adapter(*model, out, "default", a.is_set("--force"));
    std::cout << "adapter: " << out << "/ (adapter_config.json, adapter_model.safetensors)\n";
  }
  return 0;
}

}  // namespace loragrad::cli

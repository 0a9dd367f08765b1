// The LoRA family side by side: pretrain a TinyGPT on one domain (stories),
// adapt it to another (recipes) with each method on the same token budget,
// and compare what each costs and what it buys.
//
//   demo                      the full run (a few minutes on 2 cores)
//   demo --quick              a seconds-long smoke run (what ctest runs)
//   demo --out DIR --steps N --seed N --threads N --quiet
//
// Methods: full fine-tuning; LoRA on q/v; LoRA on every linear layer; LoRA+
// (B learns 16x faster than A); DoRA; QLoRA (NF4 base + LoRA on every linear
// layer), each at its own learning rate. Pretraining and every adaptation run
// through train::Trainer (the loop the command line uses); its on_validation
// hook measures the loss on the old domain at every evaluation (forgetting).
// Each method runs in a process of its own (this program re-executed with
// --child METHOD), so its peak RSS is its own. Two tables: cost (the bytes of
// frozen weights, trained weights, gradients, AdamW state, activations and
// the peak, all measured by the tensor allocator during training (the
// Trainer's TrainResult.memory); peak RSS; the median step time and the load
// average) and quality (the loss on the new domain (B = recipes), the loss on
// the old one (A = stories) with the adapter on (forgetting) and off (must be
// the pretrained model's loss, exactly), and how far merged logits are from
// unmerged ones). Every adapter is saved in PEFT's format, loaded into a fresh
// base, and checked to give identical logits.
//
// Writes into --out: the pretrained checkpoint (its name holds the model
// shape, pretraining steps and seed; a later run with the same ones reuses it),
// adapters/<method>/ (PEFT directories; full fine-tuning saves a whole
// checkpoint there instead), metrics/<method>/metrics.csv (the Trainer's),
// loss_curves.csv and loss_curves.svg (two panels: the loss on recipes and the
// loss on stories over the steps, log scale, with the pretrained model's loss
// and the unigram baseline as lines).
//
// Then the seed's training advice (demo_advice.hpp), on the same base model:
// instruction tuning on the built-in recipe-qa task (response-only loss,
// exact answers before and after, one sample answer), and the forgetting
// trade-off: the lora_all run plain, with stories mixed into its batches, and
// with a KL penalty to the base at three weights (new-domain vs old-domain loss).
//
// Exit status: 0 when every check holds, 1 when one fails (or on a runtime
// error), 2 on a bad command line.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "demo_advice.hpp"
#include "demo_report.hpp"
#include "loragrad/app/args.hpp"
#include "loragrad/format.hpp"
#include "loragrad/memory.hpp"
#include "loragrad/parallel.hpp"
#include "loragrad/autograd.hpp"
#include "loragrad/data/byte_dataset.hpp"
#include "loragrad/data/corpus.hpp"
#include "loragrad/error.hpp"
#include "loragrad/lora/combine.hpp"
#include "loragrad/lora/inject.hpp"
#include "loragrad/lora/loraplus.hpp"
#include "loragrad/lora/peft_io.hpp"
#include "loragrad/train/progress.hpp"
#include "loragrad/nn/tiny_gpt.hpp"
#include "loragrad/train/step.hpp"
#include "loragrad/train/trainer.hpp"
#include "loragrad/optim/optim.hpp"

using namespace loragrad;
using namespace loragrad::nn;
using namespace loragrad::train;
using loragrad::app::Args;
using loragrad::app::UsageError;
namespace fs = std::filesystem;

namespace {

// ---------------------------------------------------------------- options

struct Options {
  // the base model and its pretraining
  int64_t d_model = 128, layers = 4, heads = 4, seq = 64;
  int64_t pretrain_steps = 500;
  double pretrain_lr = 3e-3;
  // adaptation: the same steps x batch x seq tokens for every method
  int64_t steps = 300;
  int64_t batch = 16;
  int64_t eval_batches = 8;
  int64_t evals = 10;  // validation points per loss curve
  int64_t corpus_bytes = 1 << 20;
  uint64_t seed = 0;
  int64_t threads = 0;  // 0: the default (thread_pool.hpp)
  double lr_scale = 1.0;  // multiplies every method's learning rate (for sweeps)
  std::string out = "out";
  bool quiet = false;
  // internal: run only this method and write its result (JSON) to child_result
  std::string child, child_result;
};

void apply_quick(Options& o) {
  o.d_model = 64;
  o.layers = 2;
  o.heads = 2;
  o.seq = 64;  // recipe-qa examples are up to 65 bytes
  o.pretrain_steps = 300;
  o.pretrain_lr = 5e-3;
  o.steps = 60;
  o.batch = 8;
  o.eval_batches = 2;
  o.evals = 3;
  o.corpus_bytes = 128 << 10;
}

// The flags; --help prints them. Defaults are Options' (or --quick's) values.
Args demo_flags() {
  Args a("demo", "Pretrain a TinyGPT on stories, adapt it to recipes with full fine-tuning, LoRA, LoRA+, DoRA and\n"
                 "QLoRA, and compare what each learns, forgets and costs.", "");
  a.option("--steps", "N", "adaptation steps per method (default 300; the same tokens for every method)");
  a.option("--pretrain-steps", "N", "steps of pretraining when no checkpoint is reused (default 500)");
  a.option("--seed", "N", "corpora, weights, batches, adapters and sampling (default 0)");
  a.option("--threads", "N", "threads (default: OMP_NUM_THREADS if set, else the CPUs this process may use)");
  a.option("--lr-scale", "X", "multiply every method's learning rate by X (default 1; for sweeps)");
  a.option("--out", "DIR", "checkpoint, adapters, loss curves (default out)");
  a.flag("--quiet", "no live progress bars, plain log lines");
  a.flag("--quick", "a seconds-long smoke run (tiny model, few steps); other flags override it");
  a.option("--child", "METHOD", "(internal) run one method and write its result to --child-result");
  a.option("--child-result", "FILE", "(internal) where --child writes its result (JSON)");
  return a;
}

// Options from the command line; nullopt after --help. UsageError (exit 2) on a bad flag or value.
std::optional<Options> parse_args(int argc, char** argv) {
  Args a = demo_flags();
  if (!a.parse(argc, argv, 1)) return std::nullopt;
  Options o;
  if (a.is_set("--quick")) apply_quick(o);  // a preset: explicit flags win
  o.quiet = a.is_set("--quiet");
  if (a.given("--steps")) o.steps = a.integer("--steps", 1, 1000000);
  if (a.given("--pretrain-steps")) o.pretrain_steps = a.integer("--pretrain-steps", 1, 1000000);
  if (a.given("--seed")) o.seed = static_cast<uint64_t>(a.integer("--seed", 0, std::numeric_limits<int64_t>::max()));
  if (a.given("--threads")) o.threads = a.integer("--threads", 1, 1024);
  if (a.given("--lr-scale")) o.lr_scale = a.real("--lr-scale", 1e-6, 1e6);
  if (a.given("--out")) o.out = a.str("--out");
  if (a.given("--child")) o.child = a.str("--child");
  if (a.given("--child-result")) o.child_result = a.str("--child-result");
  return o;
}

// ---------------------------------------------------------------- helpers

// Text sampled from the base and the adapted models: the same prompt and seed for both.
const char* const kPrompt = "Recipe: ";
const int64_t kSampleBytes = 150;
const double kTemperature = 0.8;
const int64_t kTopK = 40;

std::string printable(const std::string& s) {
  std::string out = s;
  for (char& c : out) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u != '\n' && (u < 0x20 || u > 0x7e)) c = '?';
  }
  return out;
}

// Logits of the model on one batch, in eval mode, without a graph.
Tensor logits_of(TinyGPT& model, const Tensor& idx) {
  NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  Tensor y = model.forward(idx);
  model.train(was_training);
  return y;
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) throw ShapeError("demo: max_abs_diff: logits of different shapes");
  const std::vector<double> x = a.to_vector(), y = b.to_vector();
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}

double median(std::vector<double> v) {
  if (v.empty()) return std::numeric_limits<double>::quiet_NaN();
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// ---------------------------------------------------------------- the methods

struct Method {
  std::string name;        // also the adapter's directory name
  bool full = false;       // full fine-tuning: no adapter
  lora::LoraConfig lora;   // otherwise, the adapter
  double lr = 1e-3;
  bool loraplus = false;   // lr for A; B gets lr * 16
};

// Learning rates, measured with --lr-scale 0.5 / 1 / 2 / 4 around full 5e-4, LoRA 2e-3
// (200 steps, seed 0; validation loss on recipes):
//   full      0.80 0.49 0.36 0.31   lora_qv  2.56 2.20 1.90 1.68   lora_all 1.81 1.28 0.98 0.85
//   loraplus  1.50 1.16 0.96 0.87   dora     1.78 1.27 0.99 0.85   qlora    1.81 1.28 0.98 0.84
// Larger rates keep lowering the loss on recipes but also raise the loss on
// stories (forgetting: full 2.08 -> 4.01, lora_all 1.95 -> 3.33). The defaults
// are the scale-2 column: full 1e-3, LoRA 4e-3 (q/v, with fewer parameters, 6e-3),
// LoRA+ 1e-3 for A and 1.6e-2 for B. The table states each method's rate.
std::vector<Method> methods(uint64_t seed) {
  auto lora_cfg = [seed](std::vector<std::string> targets) {
    lora::LoraConfig c;
    c.r = 8;
    c.lora_alpha = 16;
    c.target_modules = std::move(targets);
    c.seed = seed;
    return c;
  };
  std::vector<Method> ms;
  Method full;
  full.name = "full";
  full.full = true;
  full.lr = 1e-3;
  ms.push_back(full);

  Method qv{"lora_qv", false, lora_cfg({"q_proj", "v_proj"}), 6e-3, false};
  ms.push_back(qv);
  Method all{"lora_all", false, lora_cfg({"all-linear"}), 4e-3, false};
  ms.push_back(all);
  Method plus{"loraplus", false, lora_cfg({"all-linear"}), 1e-3, true};
  ms.push_back(plus);
  Method dora{"dora", false, lora_cfg({"all-linear"}), 4e-3, false};
  dora.lora.use_dora = true;
  ms.push_back(dora);
  Method qlora{"qlora", false, lora_cfg({"all-linear"}), 4e-3, false};
  qlora.lora.qlora = true;
  ms.push_back(qlora);
  return ms;
}

std::string lr_text(const Method& m) {
  char buf[64];
  if (m.loraplus)
    std::snprintf(buf, sizeof buf, "%g/%g", m.lr, m.lr * 16.0);
  else
    std::snprintf(buf, sizeof buf, "%g", m.lr);
  return buf;
}

// What one method's run measured. A child process fills it and writes it as JSON.
struct Result {
  std::string name, lr;
  int64_t trainable = 0;
  MemoryUse mem;                     // from the Trainer: measured by the storage allocator
  size_t peak_rss = 0;               // the method's own process (memory::peak_rss_bytes)
  double step_ms = 0;                // median over the steps, from the Trainer's tokens/s
  double load = std::nan("");        // 1-minute load average when the training ended
  double loss_b = 0;                 // validation, recipes
  double loss_a_on = 0;              // stories, adapter active (forgetting)
  double loss_a_off = std::nan("");  // stories, adapter disabled
  double loss_a_off_expected = std::nan("");  // the base it runs as (the pretrained model; QLoRA: its NF4 copy)
  double merge_diff = std::nan("");  // max |merged - unmerged| logits (float32 merge, the default)
  double merged_loss_b = std::nan("");  // validation loss on recipes of the merged copy
  double requant_merge_diff = std::nan("");  // QLoRA: the same after a merge that requantises to NF4
  double requant_error = 0;                  // QLoRA: what requantising moved the merged weights
  double requant_merged_loss_b = std::nan("");
  double reload_diff = std::nan("");  // max |reloaded - trained| logits
  std::string saved_to;
  std::string sample;                 // text sampled after training
  demo::Curve curve_b, curve_a;       // validation loss on recipes / loss on stories at each evaluation
};

nlohmann::json num(double x) { return std::isnan(x) ? nlohmann::json(nullptr) : nlohmann::json(x); }
double num(const nlohmann::json& j) { return j.is_null() ? std::nan("") : j.get<double>(); }

nlohmann::json curve_json(const demo::Curve& c) {
  nlohmann::json pts = nlohmann::json::array();
  for (const auto& [x, y] : c.points) pts.push_back({x, num(y)});
  return {{"name", c.name}, {"points", pts}};
}
demo::Curve curve_from(const nlohmann::json& j) {
  demo::Curve c;
  c.name = j.at("name").get<std::string>();
  for (const auto& p : j.at("points")) c.points.emplace_back(p.at(0).get<double>(), num(p.at(1)));
  return c;
}

nlohmann::json to_json(const Result& r) {
  return {{"name", r.name},
          {"lr", r.lr},
          {"trainable", r.trainable},
          {"frozen_weights", r.mem.frozen_weights},
          {"trainable_weights", r.mem.trainable_weights},
          {"gradients", r.mem.gradients},
          {"optimizer_state", r.mem.optimizer_state},
          {"activations_peak", r.mem.activations_peak},
          {"peak_total", r.mem.peak_total},
          {"peak_rss", r.peak_rss},
          {"step_ms", num(r.step_ms)},
          {"load", num(r.load)},
          {"loss_b", num(r.loss_b)},
          {"loss_a_on", num(r.loss_a_on)},
          {"loss_a_off", num(r.loss_a_off)},
          {"loss_a_off_expected", num(r.loss_a_off_expected)},
          {"merge_diff", num(r.merge_diff)},
          {"merged_loss_b", num(r.merged_loss_b)},
          {"requant_merge_diff", num(r.requant_merge_diff)},
          {"requant_error", r.requant_error},
          {"requant_merged_loss_b", num(r.requant_merged_loss_b)},
          {"reload_diff", num(r.reload_diff)},
          {"saved_to", r.saved_to},
          {"sample", r.sample},
          {"curve_b", curve_json(r.curve_b)},
          {"curve_a", curve_json(r.curve_a)}};
}

Result from_json(const nlohmann::json& j) {
  Result r;
  r.name = j.at("name").get<std::string>();
  r.lr = j.at("lr").get<std::string>();
  r.trainable = j.at("trainable").get<int64_t>();
  r.mem.frozen_weights = j.at("frozen_weights").get<size_t>();
  r.mem.trainable_weights = j.at("trainable_weights").get<size_t>();
  r.mem.gradients = j.at("gradients").get<size_t>();
  r.mem.optimizer_state = j.at("optimizer_state").get<size_t>();
  r.mem.activations_peak = j.at("activations_peak").get<size_t>();
  r.mem.peak_total = j.at("peak_total").get<size_t>();
  r.peak_rss = j.at("peak_rss").get<size_t>();
  r.step_ms = num(j.at("step_ms"));
  r.load = num(j.at("load"));
  r.loss_b = num(j.at("loss_b"));
  r.loss_a_on = num(j.at("loss_a_on"));
  r.loss_a_off = num(j.at("loss_a_off"));
  r.loss_a_off_expected = num(j.at("loss_a_off_expected"));
  r.merge_diff = num(j.at("merge_diff"));
  r.merged_loss_b = num(j.at("merged_loss_b"));
  r.requant_merge_diff = num(j.at("requant_merge_diff"));
  r.requant_error = j.at("requant_error").get<double>();
  r.requant_merged_loss_b = num(j.at("requant_merged_loss_b"));
  r.reload_diff = num(j.at("reload_diff"));
  r.saved_to = j.at("saved_to").get<std::string>();
  r.sample = j.at("sample").get<std::string>();
  r.curve_b = curve_from(j.at("curve_b"));
  r.curve_a = curve_from(j.at("curve_a"));
  return r;
}

struct Data {
  data::ByteDataset stories, recipes;
  // val_b: the Trainer's validation batches (seed + 1 of the adaptation's seed)
  std::vector<data::Batch> val_a, val_b;
};

// The adaptation's TrainConfig seed; the Trainer validates on fixed_batches(recipes, validation, ..., seed + 1).
uint64_t adapt_seed(const Options& o) { return o.seed + 20; }

Data make_data(const Options& o) {
  const size_t bytes = static_cast<size_t>(o.corpus_bytes);
  Data d{data::ByteDataset(data::builtin_corpus(data::Domain::stories, bytes, o.seed), 0.1),
         data::ByteDataset(data::builtin_corpus(data::Domain::recipes, bytes, o.seed + 1), 0.1),
         {},
         {}};
  d.val_a = fixed_batches(d.stories, data::Split::validation, o.eval_batches, o.batch, o.seq, o.seed + 3);
  d.val_b = fixed_batches(d.recipes, data::Split::validation, o.eval_batches, o.batch, o.seq, adapt_seed(o) + 1);
  return d;
}

double load_average() {
  std::ifstream f("/proc/loadavg");
  double x = std::nan("");
  if (f) f >> x;
  return x;
}

// ---------------------------------------------------------------- pretraining

// out/demo_base_v2_d128_l4_h4_t64_p500_s0.safetensors: what decides the weights is in the name
// (v2: pretrained through train::Trainer, whose batches differ from the old loop's).
std::string base_checkpoint_path(const Options& o) {
  const std::string name = "demo_base_v2_d" + std::to_string(o.d_model) + "_l" + std::to_string(o.layers) + "_h" +
                           std::to_string(o.heads) + "_t" + std::to_string(o.seq) + "_p" +
                           std::to_string(o.pretrain_steps) + "_s" + std::to_string(o.seed) + ".safetensors";
  return (fs::path(o.out) / name).string();
}

void pretrain(const Options& o, const Data& d, const std::string& path) {
  TinyGPTConfig cfg;
  cfg.block_size = o.seq;
  cfg.d_model = o.d_model;
  cfg.n_layer = o.layers;
  cfg.n_head = o.heads;
  cfg.seed = o.seed;
  if (fs::exists(path)) {
    auto model = TinyGPT::load(path);
    const TinyGPTConfig& c = model->config();
    if (c.block_size == cfg.block_size && c.d_model == cfg.d_model && c.n_layer == cfg.n_layer &&
        c.n_head == cfg.n_head) {
      std::cout << "pretraining: reusing " << path << " (saved by an earlier run; delete it to pretrain again)\n";
      return;
    }
    std::cout << "pretraining: " << path << " has another model shape; pretraining again\n";
  }
  auto model = std::make_shared<TinyGPT>(cfg);
  std::vector<Tensor> decay, no_decay;
  for (const Tensor& p : model->parameters()) (p.dim() >= 2 ? decay : no_decay).push_back(p);
  optim::AdamW opt({optim::ParamGroup("decay", decay, o.pretrain_lr, 0.1),
                    optim::ParamGroup("no_decay", no_decay, o.pretrain_lr, 0.0)});
  TrainConfig tc;
  tc.steps = o.pretrain_steps;
  tc.batch = o.batch;
  tc.seq = o.seq;
  tc.schedule = "cosine";
  tc.min_lr_ratio = 0.1;
  tc.clip_norm = 1.0;
  tc.seed = o.seed + 10;
  tc.eval_batches = o.eval_batches;
  tc.quiet = o.quiet;
  tc.label = "pretrain";
  std::cout << "pretraining on stories: " << format_count(static_cast<double>(model->num_parameters()))
            << " parameters, " << o.pretrain_steps << " steps x " << o.batch << " x " << o.seq << " bytes, AdamW lr "
            << o.pretrain_lr << " " << tc.lr_schedule().str() << "\n";
  Trainer trainer(*model, opt, TextSource{&d.stories, data::Split::train},
                  TextSource{&d.stories, data::Split::validation}, tc, Trainer::Output{},
                  nlohmann::json{{"demo", "pretrain"}});
  const TrainResult r = trainer.fit();
  fs::create_directories(fs::path(path).parent_path());
  model->save(path);
  std::cout << "pretraining: saved " << path << " (" << fixed(r.train_s, 1) << " s; validation loss on stories "
            << fixed(r.final_val_loss, 4) << ")\n";
}

// ---------------------------------------------------------------- one method

Result adapt(const Options& o, const Data& d, const std::string& base_path, const Method& m) {
  Result res;
  res.name = m.name;
  res.lr = lr_text(m);
  res.curve_b.name = res.curve_a.name = m.name;
  auto model = TinyGPT::load(base_path);
  const double base_loss_a = evaluate(*model, d.val_a);

  // ---- the trainable part and its optimizer ----
  std::unique_ptr<optim::AdamW> opt;
  if (m.full) {
    std::vector<Tensor> decay, no_decay;
    for (const Tensor& p : model->parameters()) (p.dim() >= 2 ? decay : no_decay).push_back(p);
    opt = std::make_unique<optim::AdamW>(
        std::vector<optim::ParamGroup>{optim::ParamGroup("decay", decay, m.lr, 0.1),
                                       optim::ParamGroup("no_decay", no_decay, m.lr, 0.0)});
  } else {
    lora::apply_lora(*model, m.lora);
    // The base this adapter runs on, before any training (QLoRA: the NF4 copy).
    lora::disable_adapters(*model);
    res.loss_a_off_expected = evaluate(*model, d.val_a);
    lora::enable_adapters(*model);
    if (!m.lora.qlora) res.loss_a_off_expected = base_loss_a;  // must be bit-identical to the pretrained model
    if (m.loraplus)
      opt = std::make_unique<optim::AdamW>(lora::loraplus_param_groups(*model, m.lr, 16.0));
    else {
      std::vector<Tensor> trainable;
      for (const Tensor& p : model->parameters())
        if (p.requires_grad()) trainable.push_back(p);
      opt = std::make_unique<optim::AdamW>(
          std::vector<optim::ParamGroup>{optim::ParamGroup("adapter", trainable, m.lr, 0.0)});
    }
  }
  res.trainable = model->num_parameters(true);

  // ---- training through the Trainer: the same batches for every method ----
  TrainConfig tc;
  tc.steps = o.steps;
  tc.batch = o.batch;
  tc.seq = o.seq;
  tc.schedule = "cosine";
  tc.warmup = std::max<int64_t>(1, o.steps / 10);
  tc.min_lr_ratio = 0.1;
  tc.clip_norm = 1.0;
  tc.seed = adapt_seed(o);
  tc.eval_every = std::max<int64_t>(1, o.steps / o.evals);
  tc.eval_batches = o.eval_batches;
  tc.quiet = o.quiet;
  tc.label = m.name;
  tc.out_dir = (fs::path(o.out) / "metrics" / m.name).string();  // the Trainer's metrics.csv
  std::cout << "adapting with " << m.name << ": " << format_count(static_cast<double>(res.trainable))
            << " trainable parameters, AdamW lr " << res.lr << (m.loraplus ? " (A/B)" : "") << "\n";
  Trainer trainer(*model, *opt, TextSource{&d.recipes, data::Split::train},
                  TextSource{&d.recipes, data::Split::validation}, tc, Trainer::Output{},
                  nlohmann::json{{"demo", m.name}});
  // At each validation (step 0 included): the loss on recipes, and on stories (forgetting).
  trainer.on_validation([&](int64_t step, double val_loss) {
    res.curve_b.points.emplace_back(static_cast<double>(step), val_loss);
    res.curve_a.points.emplace_back(static_cast<double>(step), evaluate(*model, d.val_a));
  });
  const TrainResult tr = trainer.fit();
  res.load = load_average();
  res.mem = tr.memory;
  std::vector<double> step_ms;
  for (const MetricsRow& r : tr.metrics)
    if (r.step > 0 && std::isfinite(r.tokens_per_s) && r.tokens_per_s > 0)
      step_ms.push_back(1000.0 * static_cast<double>(o.batch * o.seq) / r.tokens_per_s);
  res.step_ms = median(step_ms);

  // ---- what it learned and what it forgot ----
  res.loss_b = tr.final_val_loss;
  res.loss_a_on = res.curve_a.points.back().second;
  if (!m.full) {
    lora::disable_adapters(*model);
    res.loss_a_off = evaluate(*model, d.val_a);
    lora::enable_adapters(*model);
  }
  res.sample = printable(sample_text(*model, kPrompt, kSampleBytes, kTemperature, kTopK, o.seed));  // JSON needs UTF-8

  // ---- save, reload into a fresh base, compare; then merge the reloaded copy ----
  const Tensor probe = d.val_b.front().x;
  const Tensor trained_logits = logits_of(*model, probe);
  const fs::path dir = fs::path(o.out) / "adapters" / m.name;
  if (m.full) {
    fs::create_directories(dir);
    res.saved_to = (dir / "model.safetensors").string();
    model->save(res.saved_to);
    auto reloaded = TinyGPT::load(res.saved_to);
    res.reload_diff = max_abs_diff(logits_of(*reloaded, probe), trained_logits);
  } else {
    res.saved_to = dir.string();
    lora::save_adapter(*model, res.saved_to, "default", /*overwrite=*/true);
    auto reloaded = TinyGPT::load(base_path);
    lora::load_adapter(*reloaded, res.saved_to);
    res.reload_diff = max_abs_diff(logits_of(*reloaded, probe), trained_logits);
    lora::merge_and_unload(*reloaded);  // float32 merge (QLoRA: dequantised base + delta)
    res.merge_diff = max_abs_diff(logits_of(*reloaded, probe), trained_logits);
    res.merged_loss_b = evaluate(*reloaded, d.val_b);
    if (m.lora.qlora) {  // and PEFT's way for a 4-bit base: merge, then requantise to NF4
      auto requant = TinyGPT::load(base_path);
      lora::load_adapter(*requant, res.saved_to);
      const lora::MergeReport mr = lora::merge_and_unload(*requant, /*requantize=*/true);
      res.requant_error = mr.max_requantization_error;
      res.requant_merge_diff = max_abs_diff(logits_of(*requant, probe), trained_logits);
      res.requant_merged_loss_b = evaluate(*requant, d.val_b);
    }
  }
  res.peak_rss = memory::peak_rss_bytes();
  return res;
}

// The child process: one method, its result written to o.child_result as JSON.
int run_child(const Options& o) {
  if (o.threads > 0) set_num_threads(static_cast<int>(o.threads));
  const Data d = make_data(o);
  for (Method m : methods(o.seed)) {
    if (m.name != o.child) continue;
    m.lr *= o.lr_scale;
    const Result r = adapt(o, d, base_checkpoint_path(o), m);
    const std::string tmp = o.child_result + ".tmp";
    {
      std::ofstream f(tmp);
      f << to_json(r).dump() << "\n";
      if (!f) throw IOError("demo: cannot write " + tmp);
    }
    fs::rename(tmp, o.child_result);
    return 0;
  }
  throw ValueError("demo: no method named '" + o.child + "'");
}

// Runs one method in a process of its own (this program, re-executed with
// --child), so that its peak RSS is its own; returns what it measured.
Result run_in_child(const Options& o, const std::vector<std::string>& args, const std::string& method) {
  const std::string result_path =
      (fs::path(o.out) / ("result_" + method + "_" + std::to_string(::getpid()) + ".json")).string();
  fs::remove(result_path);
  std::vector<std::string> child_args = {"/proc/self/exe"};
  child_args.insert(child_args.end(), args.begin(), args.end());
  for (const char* a : {"--child", method.c_str(), "--child-result", result_path.c_str()}) child_args.emplace_back(a);
  std::vector<char*> argv;
  for (std::string& a : child_args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::cout.flush();
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) throw IOError("demo: fork failed");
  if (pid == 0) {
    ::execv("/proc/self/exe", argv.data());
    std::perror("demo: execv /proc/self/exe");
    ::_exit(127);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) throw IOError("demo: waitpid failed");
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw ValueError("demo: the process running " + method + " failed (" +
                     (WIFEXITED(status) ? "exit status " + std::to_string(WEXITSTATUS(status))
                                        : "signal " + std::to_string(WTERMSIG(status))) +
                     ")");
  std::ifstream f(result_path);
  if (!f) throw IOError("demo: " + method + " wrote no result to " + result_path);
  const nlohmann::json j = nlohmann::json::parse(f);
  fs::remove(result_path);
  return from_json(j);
}

// ---------------------------------------------------------------- the run

std::string sci(double x) {
  if (std::isnan(x)) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1e", x);
  return buf;
}

int run(const Options& o, const std::vector<std::string>& args) {
  if (o.threads > 0) set_num_threads(static_cast<int>(o.threads));
  const auto start = std::chrono::steady_clock::now();

  const Data d = make_data(o);
  const double unigram_a = d.stories.unigram_entropy(data::Split::validation);
  const double unigram_b = d.recipes.unigram_entropy(data::Split::validation);
  std::cout << "corpora: A = stories, B = recipes, " << format_bytes(static_cast<size_t>(o.corpus_bytes))
            << " each (90% train, 10% validation); " << num_threads() << " threads; load average "
            << fixed(load_average(), 2) << "\n";

  // ---- the base model ----
  fs::create_directories(o.out);
  const std::string base_path = base_checkpoint_path(o);
  pretrain(o, d, base_path);
  auto base = TinyGPT::load(base_path);  // evaluate what is on disk: what every method starts from
  const double base_loss_a = evaluate(*base, d.val_a), base_loss_b = evaluate(*base, d.val_b);
  std::cout << "base model: " << format_count(static_cast<double>(base->num_parameters())) << " parameters ("
            << format_bytes(base->parameter_bytes()) << "); validation loss on stories (A) " << fixed(base_loss_a, 4)
            << ", on recipes (B) " << fixed(base_loss_b, 4) << " nats/byte; unigram baseline on recipes "
            << fixed(unigram_b, 4) << ", on stories " << fixed(unigram_a, 4) << "\n";
  std::cout << "adapting to recipes through train::Trainer, each method in a process of its own: " << o.steps
            << " steps x " << o.batch << " x " << o.seq
            << " bytes, AdamW, cosine schedule, clip 1.0; LoRA r 8, alpha 16\n";

  // ---- each method, in its own process ----
  std::vector<Result> results;
  for (const Method& m : methods(o.seed)) results.push_back(run_in_child(o, args, m.name));

  // ---- the comparison ----
  const double base_params = static_cast<double>(base->num_parameters());
  demo::Table cost({"method", "lr", "trainable", "%", "frozen", "trained", "grads", "AdamW", "activations",
                    "peak tensors", "peak RSS", "ms/step", "load"});
  demo::Table quality({"method", "loss B", "A on", "A off", "A off=base", "merge diff", "merged B", "reload diff"});
  bool ok = true;
  for (const Result& r : results) {
    cost.add_row({r.name, r.lr, format_count(static_cast<double>(r.trainable)),
                  fixed(100.0 * static_cast<double>(r.trainable) / base_params, 2), format_bytes(r.mem.frozen_weights),
                  format_bytes(r.mem.trainable_weights), format_bytes(r.mem.gradients),
                  format_bytes(r.mem.optimizer_state), format_bytes(r.mem.activations_peak),
                  format_bytes(r.mem.peak_total), format_bytes(r.peak_rss), fixed(r.step_ms, 1), fixed(r.load, 2)});
    std::string off = "-", off_check = "-", merged_b = "-";
    if (!std::isnan(r.loss_a_off)) {
      off = fixed(r.loss_a_off, 4);
      const bool same = r.loss_a_off == r.loss_a_off_expected;
      ok = ok && same;
      off_check = same ? "exact" : "DIFF " + fixed(std::abs(r.loss_a_off - r.loss_a_off_expected), 8);
    }
    if (!std::isnan(r.merged_loss_b)) merged_b = fixed(r.merged_loss_b, 4);
    char reload[32];
    std::snprintf(reload, sizeof reload, "%g", r.reload_diff);
    ok = ok && r.reload_diff == 0.0;
    quality.add_row({r.name, fixed(r.loss_b, 4), fixed(r.loss_a_on, 4), off, off_check, sci(r.merge_diff), merged_b,
                     reload});
  }
  std::cout << "\ncost (each method in a process of its own; bytes measured by the tensor allocator during training)\n";
  cost.print(std::cout);
  std::cout << "  lr: AdamW peak learning rate, tuned per method (LoRA+: A/B); trainable: parameters updated (% of the "
               "base model's "
            << format_count(base_params)
            << ");\n  frozen / trained / grads / AdamW: bytes of frozen weights (QLoRA: NF4 codes + scales), trained "
               "weights, gradients, optimizer moments;\n"
            << "  activations: the most a step added on top of those (activations, temporaries); peak tensors: most "
               "live tensor bytes in a step;\n"
            << "  peak RSS: the method's process (corpora, base load, training, save/reload/merge checks); ms/step: "
               "median; load: 1-min load average at its end.\n";
  std::cout << "\nquality (losses in nats/byte on fixed validation batches; pretrained model: A "
            << fixed(base_loss_a, 4) << ", B " << fixed(base_loss_b, 4) << "; unigram baseline B " << fixed(unigram_b, 4)
            << ")\n";
  quality.print(std::cout);
  std::cout << "  A on / A off: loss on stories with the adapter active (forgetting) / disabled; A off=base: disabled "
               "adapter gives the\n"
            << "  pretrained model's loss bit for bit (QLoRA: its NF4 base's); merge diff: max |logits merged - "
               "unmerged| after merge_and_unload\n"
            << "  (float32 merge, QLoRA's NF4 base dequantised); merged B: loss on recipes of the merged model; "
               "reload diff: max |logits| difference\n"
            << "  after save (PEFT format) and reload into a fresh base.\n";
  for (const Result& r : results)
    if (!std::isnan(r.requant_merge_diff))
      std::cout << "  " << r.name << ": its NF4 base alone gives A " << fixed(r.loss_a_off_expected, 4) << " vs "
                << fixed(base_loss_a, 4) << " in float32; merging with requantize=true (PEFT's 4-bit way) moves "
                << "weights by up to " << fixed(r.requant_error, 4) << ": merge diff " << sci(r.requant_merge_diff)
                << ", merged B " << fixed(r.requant_merged_loss_b, 4) << "\n";

  // ---- samples, files ----
  std::cout << "\nsamples (prompt \"" << kPrompt << "\", " << kSampleBytes << " bytes, temperature " << kTemperature
            << ", top-k " << kTopK << ", seed " << o.seed << ")\n"
            << "--- base model:\n"
            << printable(sample_text(*base, kPrompt, kSampleBytes, kTemperature, kTopK, o.seed)) << "\n";
  for (const Result& r : results)
    std::cout << "--- " << r.name << " (loss B " << fixed(r.loss_b, 4) << "):\n" << printable(r.sample) << "\n";
  std::cout << "\n";

  // ---- the seed's advice: instruction tuning ----
  demo::AdviceSetup advice{base_path, o.out, o.steps, o.batch, o.seq, o.eval_batches, o.corpus_bytes,
                           o.steps >= 300 ? 50 : 10, o.seed, o.quiet};
  std::cout << "instruction tuning: LoRA on recipe-qa (" << o.steps << " steps)\n";
  const demo::InstructionReport sft = demo::instruction_tuning(advice);
  demo::print(sft, std::cout);
  if (!(sft.loss_after < sft.loss_before)) {
    std::cerr << "demo: instruction tuning did not lower the held-out response loss\n";
    ok = false;
  }
  std::cout << "\nforgetting trade-off: LoRA on recipes plain, with stories mixed in, with a KL to the base\n";
  const demo::TradeoffReport tradeoff = demo::forgetting_tradeoff(advice);
  demo::print(tradeoff, std::cout);
  // What the table is there to show: replay and the KL penalty both keep more of the old domain.
  const demo::TradeoffRow& plain = tradeoff.rows.front();
  for (const demo::TradeoffRow& row : tradeoff.rows)
    if ((row.mix >= 0.3 || row.kl_weight >= 1.0) && !(row.loss_old < plain.loss_old)) {
      std::cerr << "demo: " << row.name << " forgot as much as the plain run\n";
      ok = false;
    }
  std::cout << "\n";

  std::vector<demo::Curve> curves_b, curves_a;
  for (const Result& r : results) {
    curves_b.push_back(r.curve_b);
    curves_a.push_back(r.curve_a);
  }
  const std::string csv = (fs::path(o.out) / "loss_curves.csv").string();
  const std::string svg = (fs::path(o.out) / "loss_curves.svg").string();
  demo::write_curves_csv(csv, "step", {{"validation_loss_recipes", curves_b}, {"loss_stories", curves_a}});
  demo::Panel pb{"Learning recipes (B)", "validation loss on recipes (nats/byte, log scale)", curves_b,
                 {{"pretrained model", base_loss_b}, {"unigram baseline", unigram_b}}};
  demo::Panel pa{"Forgetting stories (A)", "loss on stories (nats/byte, log scale)", curves_a,
                 {{"pretrained model", base_loss_a}, {"unigram baseline", unigram_a}}};
  demo::write_panels_svg(svg, "Adapting a stories TinyGPT to recipes (" + std::to_string(o.steps) + " steps each)",
                         "optimizer step", {pb, pa});
  std::cout << "adapters: " << (fs::path(o.out) / "adapters").string() << "/<method>/\n"
            << "Trainer metrics: " << (fs::path(o.out) / "metrics").string() << "/<method>/metrics.csv\n"
            << "loss curves: " << csv << "\n"
            << "             " << svg << "\n"
            << "total time "
            << fixed(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 1) << " s\n";
  std::cout << "peak RSS " << format_bytes(static_cast<double>(memory::peak_rss_bytes()))
            << " (this process: corpora, pretraining, the table; each method's is in the table)\n";
  if (!ok) {
    std::cerr << "demo: a check failed (see 'A off=base', 'reload diff' and the messages above)\n";
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  try {
    std::optional<Options> parsed = parse_args(argc, argv);
    if (!parsed) return 0;  // --help
    options = *parsed;
  } catch (const UsageError& e) {
    std::cerr << e.what() << "\n";  // "demo: ..."
    return 2;
  }
  try {
    if (!options.child.empty()) return run_child(options);
    return run(options, std::vector<std::string>(argv + 1, argv + argc));
  } catch (const std::exception& e) {
    std::cerr << "demo: error: " << e.what() << "\n";
    return 1;
  }
}

// loragrad bench: the speed of one training step on the reference workload
// (docs/workload.md; app/workload.hpp), timed on the trainer's own step
// (train::train_step: forward, backward, AdamW), and put in proportion to the
// machine's FMA peak, measured first in the same run.
// bench/run_workload.py runs it side by side with bench/torch_workload.py.

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common.hpp"
#include "loragrad/app/fma_peak.hpp"
#include "loragrad/app/workload.hpp"
#include "loragrad/error.hpp"
#include "loragrad/generator.hpp"
#include "loragrad/kernels/gemm_bf16.hpp"
#include "loragrad/kernels/isa.hpp"
#include "loragrad/lora/inject.hpp"
#include "loragrad/memory.hpp"
#include "loragrad/optim/adamw.hpp"
#include "loragrad/thread_pool.hpp"
#include "loragrad/train/step.hpp"
#include "loragrad/version.hpp"

namespace loragrad::cli {

namespace {

using Clock = std::chrono::steady_clock;
using app::Method;
using app::Workload;

// The spec's optimiser: AdamW, lr 2e-4, no weight decay (and no clipping: the
// spec's step is forward, backward, update; train_step then only measures the
// gradient norm, to skip a non-finite step as the trainer does).
constexpr double kLr = 2e-4;
constexpr double kWeightDecay = 0.0;

std::string first_line_of(const std::string& path) {
  std::ifstream f(path);
  std::string line;
  std::getline(f, line);
  return line;
}

// The 1, 5 and 15 minute load averages: on a shared machine they say how
// much of it the run had.
std::vector<double> load_average() {
  std::istringstream in(first_line_of("/proc/loadavg"));
  std::vector<double> v(3, 0.0);
  for (double& x : v) in >> x;
  return v;
}

// /proc/cpuinfo's first "model name", as lscpu shows it.
std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(" \t", colon + 1));
    }
  return "unknown";
}

double cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& x : v) s += (s.empty() ? "" : ",") + x;
  return s;
}

// The workload: --workload's preset, then each explicit dimension over it.
Workload workload_from(const Args& a, Method method) {
  Workload w = app::workload_preset(a.str("--workload"));
  bool custom = false;
  auto dim = [&](const char* flag, int64_t& field, int64_t hi) {
    if (!a.given(flag)) return;
    field = a.integer(flag, 1, hi);
    custom = true;
  };
  dim("--d-model", w.d_model, 1 << 14);
  dim("--layers", w.n_layer, 256);
  dim("--heads", w.n_head, 1 << 14);
  dim("--seq", w.seq, 1 << 16);
  dim("--batch", w.batch, 1 << 16);
  if (w.d_model % w.n_head != 0)
    throw UsageError("--heads " + std::to_string(w.n_head) + " must divide --d-model " + std::to_string(w.d_model));
  for (const char* flag : {"--r", "--alpha", "--targets"})
    if (method == Method::full && a.given(flag))
      throw UsageError(std::string(flag) + " is for the adapter methods, not --method full");
  dim("--r", w.r, 1 << 14);
  if (a.given("--alpha")) {
    w.alpha = a.real("--alpha", 0, 1e9);
    if (!(w.alpha > 0)) throw UsageError("--alpha must be positive, got " + a.str("--alpha"));
    custom = true;
  }
  if (a.given("--targets")) {
    std::vector<std::string> targets = a.list("--targets");
    if (targets == std::vector<std::string>{"all-linear"}) targets = app::adaptable_linears();
    for (const std::string& t : targets) {
      const auto& ok = app::adaptable_linears();
      if (std::find(ok.begin(), ok.end(), t) == ok.end())
        throw UsageError("--targets: unknown linear layer '" + printable(t) + "' (" + join(ok) + ", or all-linear)");
    }
    w.targets = targets;
    custom = true;
  }
  if (custom) w.name = "custom";
  return w;
}

// The Tiny GPT of the workload from random init (seeded), with the method's
// adapters (bf16: on a frozen base stored in bf16, lm_head included: the
// mixed-precision step); returns the parameters to train.
std::vector<Tensor> build_model(nn::TinyGPT& model, const Workload& w, Method method, bool bf16, uint64_t seed) {
  if (method == Method::full) {
    model.requires_grad_(true);
  } else {
    lora::LoraConfig cfg;
    cfg.r = w.r;
    cfg.lora_alpha = w.alpha;
    cfg.lora_dropout = 0.0;
    cfg.target_modules = w.targets;
    cfg.use_dora = method == Method::dora;
    cfg.qlora = method == Method::qlora;  // NF4 with double quantisation, then LoRA
    if (bf16) cfg.base_storage = "bf16";
    cfg.seed = seed;
    cfg.validate();
    lora::apply_lora(model, cfg);
  }
  model.train();
  std::vector<Tensor> trainable;
  for (const Tensor& p : model.parameters())
    if (p.requires_grad()) trainable.push_back(p);
  return trainable;
}

// batch x (seq + 1) random bytes from the seed: inputs and next-byte targets.
data::Batch random_bytes(const Workload& w, uint64_t seed) {
  Generator gen(seed);
  std::vector<int64_t> x, y;
  x.reserve(static_cast<size_t>(w.tokens()));
  y.reserve(static_cast<size_t>(w.tokens()));
  for (int64_t b = 0; b < w.batch; ++b) {
    int64_t prev = gen.randint(0, w.vocab);
    for (int64_t t = 0; t < w.seq; ++t) {
      const int64_t next = gen.randint(0, w.vocab);
      x.push_back(prev);
      y.push_back(next);
      prev = next;
    }
  }
  return {from_indices(x, {w.batch, w.seq}), from_indices(y, {w.batch, w.seq})};
}

}  // namespace

int run_bench(int argc, char** argv) {
  Args a("bench", "Time the training step (forward, backward, AdamW) on the reference workload: median ms/step,\n"
                  "tokens/s, GFLOP/s and % of this machine's FMA peak (measured first), peak memory.");
  a.option("--workload", "NAME", "S | M, the spec's configurations (explicit dimensions below override)", "S");
  a.option("--d-model", "N", "residual width");
  a.option("--layers", "N", "transformer blocks");
  a.option("--heads", "N", "attention heads (divides --d-model)");
  a.option("--seq", "N", "tokens per sequence (the model's block size)");
  a.option("--batch", "N", "sequences per step");
  a.option("--r", "N", "LoRA rank");
  a.option("--alpha", "X", "LoRA alpha");
  a.option("--targets", "LIST", "adapted linears: q_proj,k_proj,v_proj,o_proj,fc_in,fc_out or all-linear");
  a.option("--method", "NAME", "lora | dora | qlora | full", "lora");
  a.option("--precision", "NAME", "fp32 | bf16", "fp32");
  a.option("--threads", "N", "threads (0: OMP_NUM_THREADS if set, else the CPUs this process may use)", "0");
  a.option("--steps", "N", "timed steps (the median is reported)", "10");
  a.option("--warmup", "N", "untimed steps first", "3");
  a.option("--seed", "N", "initial weights and the random bytes", "0");
  a.flag("--json", "one JSON object instead of the text report");
  a.epilog(
      "The spec's workloads (random bytes, vocab 256; AdamW lr 2e-4, no weight decay; LoRA dropout 0):\n"
      "  S: d_model 128, 4 layers, 4 heads, seq 128, batch 16, r 8, alpha 16, q,k,v,o_proj\n"
      "  M: d_model 256, 6 layers, 8 heads, seq 256, batch 8, r 16, alpha 32, q,k,v,o_proj,fc_in,fc_out\n"
      "qlora: the base in NF4 with double quantisation, then LoRA. --precision bf16 (lora, dora): every frozen\n"
      "linear weight (lm_head too) stored in bf16 and multiplied by the bf16 GEMM (inputs rounded to bf16,\n"
      "float32 sums), the adapters and every other op in float32. GFLOP/s counts matmul FLOPs by the\n"
      "spec's formula (8.51 GFLOP per LoRA step of S, 53.4 of M; dora and qlora count as lora).\n"
      "The FMA peak: every thread runs register-only FMAs of the kernels' vector width.\n"
      "example:\n  loragrad bench --workload M --method lora --threads 2\n"
      "  loragrad bench --d-model 64 --layers 2 --heads 2 --seq 32 --batch 4 --steps 3 --json\n");
  if (!a.parse(argc, argv)) return 0;

  const Method method = app::parse_method(a.str("--method"));
  const std::string precision = a.str("--precision");
  if (precision != "fp32" && precision != "bf16")
    throw UsageError("--precision must be fp32 or bf16, got '" + precision + "'");
  const Workload w = workload_from(a, method);
  const int64_t steps = a.integer("--steps", 1, 1000000);
  const int64_t warmup = a.integer("--warmup", 0, 1000000);
  const auto seed = static_cast<uint64_t>(a.integer("--seed", 0, int64_t{1} << 53));
  const bool as_json = a.is_set("--json");
  // bf16 is the frozen base's storage: a method that trains the base
  // (full) or stores it otherwise (qlora: NF4) has none to put in bf16.
  if (precision == "bf16" && (method == Method::full || method == Method::qlora))
    throw UsageError("--precision bf16 stores the frozen base in bf16 (lora, dora); --method " +
                     std::string(app::method_name(method)) +
                     (method == Method::full ? " trains every weight" : " stores the base in NF4"));
  set_threads(a);

  const int threads = num_threads();
  const std::vector<double> load_start = load_average();
  const app::FmaPeak peak = app::measure_fma_peak(threads);

  nn::TinyGPTConfig cfg;
  cfg.vocab_size = w.vocab;
  cfg.block_size = w.seq;
  cfg.d_model = w.d_model;
  cfg.n_layer = w.n_layer;
  cfg.n_head = w.n_head;
  cfg.dropout = 0.0;
  cfg.seed = seed;
  nn::TinyGPT model(cfg);
  const std::vector<Tensor> trainable = build_model(model, w, method, precision == "bf16", seed);
  int64_t n_trainable = 0;
  for (const Tensor& p : trainable) n_trainable += p.numel();
  optim::AdamW opt({optim::ParamGroup("trainable", trainable, kLr, kWeightDecay)});
  const std::vector<data::Batch> batch = {random_bytes(w, seed)};

  // Peak tensor bytes of training alone: the weights are live already; the
  // step adds gradients, AdamW's moments and the activations.
  memory::reset_peak();
  std::vector<double> ms, cpu_ms;
  double loss_first = 0, loss_last = 0;
  for (int64_t i = 0; i < warmup + steps; ++i) {
    const auto t0 = Clock::now();
    const double c0 = cpu_seconds();
    const train::StepResult r = train::train_step(model, opt, batch, /*max_grad_norm=*/0.0);
    const double c1 = cpu_seconds();
    const auto t1 = Clock::now();
    train::stop_unless_finite(r, i + 1);
    if (i == 0) loss_first = r.loss;
    loss_last = r.loss;
    if (i < warmup) continue;
    ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    cpu_ms.push_back((c1 - c0) * 1e3);
  }
  const size_t peak_tensor = memory::peak_bytes();
  const size_t peak_rss = memory::peak_rss_bytes();
  const std::vector<double> load_end = load_average();

  const double ms_median = median(ms);
  const double ms_min = *std::min_element(ms.begin(), ms.end());
  const double ms_max = *std::max_element(ms.begin(), ms.end());
  const double flops = app::step_flops(w, method);
  const double gflops = flops / (ms_median * 1e-3) / 1e9;
  const double tokens_per_s = static_cast<double>(w.tokens()) / (ms_median * 1e-3);
  const double pct = 100.0 * gflops / peak.gflops;
  const std::string waiting = wait_strategy();

  if (as_json) {
    using json = nlohmann::ordered_json;
    json j;
    j["program"] = "loragrad";
    j["version"] = LORAGRAD_VERSION;
    j["workload"] = {{"name", w.name},   {"vocab", w.vocab},   {"d_model", w.d_model}, {"n_layer", w.n_layer},
                     {"n_head", w.n_head}, {"d_ff", w.d_ff()},   {"seq", w.seq},         {"batch", w.batch},
                     {"r", w.r},         {"alpha", w.alpha},   {"targets", w.targets}};
    j["method"] = app::method_name(method);
    j["precision"] = precision;
    j["bf16_kernel"] = precision == "bf16" ? kernels::bf16_kernel() : "";
    j["threads"] = threads;
    j["warmup"] = warmup;
    j["steps"] = steps;
    j["seed"] = seed;
    j["ms_per_step"] = ms_median;
    j["ms_min"] = ms_min;
    j["ms_max"] = ms_max;
    j["ms_steps"] = ms;
    j["cpu_ms_per_step"] = median(cpu_ms);
    j["tokens_per_step"] = w.tokens();
    j["tokens_per_s"] = tokens_per_s;
    j["gflop_per_step"] = flops / 1e9;
    j["gflops"] = gflops;
    j["fma_peak_gflops"] = peak.gflops;
    j["fma_peak_isa"] = peak.isa;
    j["fma_peak_lanes"] = peak.lanes;
    j["pct_of_peak"] = pct;
    j["peak_rss_bytes"] = peak_rss;
    j["peak_tensor_bytes"] = peak_tensor;
    j["trainable_params"] = n_trainable;
    j["loss_first"] = loss_first;
    j["loss_last"] = loss_last;
    j["kernels_isa"] = kernels::compiled_isa();
    j["cpu_model"] = cpu_model();
    j["loadavg_start"] = load_start;
    j["loadavg_end"] = load_end;
    j["wait_strategy"] = waiting;
    std::cout << j.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
    return 0;
  }
  std::cout << "workload " << w.name << ": d_model " << w.d_model << ", " << w.n_layer << " layers, " << w.n_head
            << " heads, seq " << w.seq << ", batch " << w.batch;
  if (method != Method::full) std::cout << "; r " << w.r << ", alpha " << w.alpha << " on " << join(w.targets);
  std::cout << "\nmethod " << app::method_name(method) << ", " << precision
            << (precision == "bf16" ? " (base GEMM kernel " + kernels::bf16_kernel() + ")" : "") << ", " << threads
            << " thread"
            << (threads == 1 ? "" : "s") << ", " << with_commas(n_trainable) << " trainable parameters\n"
            << "cpu: " << cpu_model() << "; kernels " << kernels::compiled_isa() << "; load average "
            << fixed(load_start[0], 2) << " " << fixed(load_start[1], 2) << " " << fixed(load_start[2], 2)
            << " at start, " << fixed(load_end[0], 2) << " at end\n"
            << "threads: " << waiting << "\n"
            << "FMA peak: " << peak.str() << "\n"
            << "step: " << fixed(ms_median, 1) << " ms median (min " << fixed(ms_min, 1)
            << ", max " << fixed(ms_max, 1) << "; cpu " << fixed(median(cpu_ms), 1)
            << " ms) over " << steps << " steps after " << warmup << " warm-up\n"
            << "speed: " << with_commas(static_cast<int64_t>(tokens_per_s)) << " tokens/s, " << fixed(gflops, 1)
            << " GFLOP/s (" << fixed(flops / 1e9, flops < 1e8 ? 4 : 2) << " GFLOP/step) = " << fixed(pct, 1) << "% of the FMA peak\n"
            << "memory: peak RSS " << format_bytes(static_cast<double>(peak_rss)) << ", peak tensor bytes "
            << format_bytes(static_cast<double>(peak_tensor)) << "\n"
            << "loss: " << fixed(loss_first, 4) << " at the first step, " << fixed(loss_last, 4) << " at the last\n";
  return 0;
}

}  // namespace loragrad::cli

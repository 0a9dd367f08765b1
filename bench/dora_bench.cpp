// DoRA forward + backward: peak tensor bytes (loragrad/memory.hpp) and time
// per step, for one DoRA layer (d x d) and for a TinyGPT with DoRA on every
// linear layer, over a float32 base and over an NF4 base (QLoRA).
//
// "peak" is the peak of live tensor bytes minus the bytes live before the step
// (parameters, inputs; gradients are reset to none before each step): what the
// step itself needs at most, during the forward alone ("fwd") and during the
// whole forward + backward ("step"). NF4 codes are not tensor storage and are
// not in any of these numbers (memory.hpp). The last two lines are a
// generation-like forward (batch 1, no graph, eval mode). Times: wall-clock
// median and minimum per step, and the process CPU time per step (median;
// with --threads 1 it is the work done, robust to other processes on a shared
// machine, which wall-clock times are not).
//
// Usage: dora_bench [--reps N] [--threads N] [--only layer|tinygpt]
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "loragrad/app/args.hpp"
#include "loragrad/autograd.hpp"
#include "loragrad/lora/base_storage.hpp"
#include "loragrad/lora/inject.hpp"
#include "loragrad/lora/lora_linear.hpp"
#include "loragrad/memory.hpp"
#include "loragrad/nn/layers.hpp"
#include "loragrad/nn/tiny_gpt.hpp"
#include "loragrad/ops.hpp"
#include "loragrad/thread_pool.hpp"

using namespace loragrad;
using Clock = std::chrono::steady_clock;

namespace {

struct Result {
  size_t live_before = 0, fwd_peak = 0, step_peak = 0;
  double ms_median = 0, ms_min = 0, cpu_ms_median = 0;
};

double cpu_ms() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

// forward() returns the loss (or, backward = false, any output); then its
// backward. The first round is a warm-up (block cache, threads).
template <class Forward, class Zero>
Result measure(int reps, bool backward, Forward&& forward, Zero&& zero_grads) {
  Result r;
  std::vector<double> ms, cpu;
  for (int i = 0; i <= reps; ++i) {
    zero_grads();
    const size_t before = memory::live_bytes();
    memory::reset_peak();
    const double c0 = cpu_ms();
    const auto t0 = Clock::now();
    Tensor out = forward();
    const size_t fwd_peak = memory::peak_bytes() - before;
    if (backward) out.backward();
    out = Tensor();
    const double t = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    const double c = cpu_ms() - c0;
    if (i == 0) continue;
    ms.push_back(t);
    cpu.push_back(c);
    r.live_before = before;
    r.fwd_peak = std::max(r.fwd_peak, fwd_peak);
    r.step_peak = std::max(r.step_peak, memory::peak_bytes() - before);
  }
  std::sort(ms.begin(), ms.end());
  r.ms_median = ms[ms.size() / 2];
  r.ms_min = ms.front();
  std::sort(cpu.begin(), cpu.end());
  r.cpu_ms_median = cpu[cpu.size() / 2];
  return r;
}

void print(const std::string& name, const Result& r) {
  std::printf("%-40s live %8.1f KiB  peak fwd %9.1f KiB  step %9.1f KiB  ms median %8.3f  min %8.3f  cpu %8.3f\n",
              name.c_str(), r.live_before / 1024.0, r.fwd_peak / 1024.0, r.step_peak / 1024.0, r.ms_median,
              r.ms_min, r.cpu_ms_median);
  std::fflush(stdout);
}

void bench_layer(int64_t d, bool nf4, int64_t tokens, int reps) {
  Generator gen(1);
  auto lin = std::make_shared<nn::Linear>(d, d, true, gen, DType::f32);
  nn::ModulePtr base = lin;
  if (nf4) base = lora::quantize_base("nf4", *lin, {64, true});
  lin.reset();
  lora::LoraOptions o;
  o.r = 8;
  o.alpha = 16;
  o.use_dora = true;
  o.init = lora::LoraInit::random;  // B != 0
  auto lay = std::make_shared<lora::LoraLinear>(base, "default", o);
  const Tensor x = randn({tokens, d}, gen);
  const Tensor wout = randn({tokens, d}, gen);
  auto params = lay->parameters();
  const Result r = measure(
      reps, true, [&] { return sum(mul(lay->forward(x), wout)); },
      [&] {
        for (auto& p : params) p.zero_grad();
      });
  print("layer d=" + std::to_string(d) + (nf4 ? " nf4" : " f32") + " tokens=" + std::to_string(tokens), r);
}

void bench_tinygpt(bool nf4, bool generation, int reps) {
  nn::TinyGPTConfig cfg;  // the demo's model
  cfg.vocab_size = 256;
  cfg.block_size = 64;
  cfg.d_model = 128;
  cfg.n_layer = 4;
  cfg.n_head = 4;
  nn::TinyGPT model(cfg);
  lora::LoraConfig lc;
  lc.r = 8;
  lc.lora_alpha = 16;
  lc.use_dora = true;
  lc.target_modules = {"all-linear"};
  lc.init_lora_weights = lora::LoraInit::random;
  lc.qlora = nf4;
  lora::apply_lora(model, lc);
  Generator gen(2);
  auto params = model.parameters();
  auto zero = [&] {
    for (auto& p : params) p.zero_grad();
  };
  const std::string name = std::string("tinygpt d128 L4 dora all ") + (nf4 ? "nf4" : "f32");
  if (!generation) {
    const Tensor idx = randint({16, 64}, 0, 256, gen);
    const Tensor tgt = randint({16, 64}, 0, 256, gen);
    print(name + " B16 T64", measure(reps, true, [&] { return model.loss(idx, tgt); }, zero));
  } else {
    model.eval();
    const Tensor idx = randint({1, 64}, 0, 256, gen);
    print(name + " eval B1 T64", measure(reps * 5, false, [&] {
            NoGradGuard no_grad;
            return model.forward(idx);
          }, zero));
  }
}

}  // namespace

int main(int argc, char** argv) {
  loragrad::app::Args a("dora_bench", "Peak tensor bytes and time of DoRA forward + backward over float32 and NF4 bases.",
                        "");
  a.option("--reps", "N", "repetitions per measurement", "20");
  a.option("--threads", "N", "threads (default: OMP_NUM_THREADS if set, else the CPUs this process may use)");
  a.option("--only", "WHICH", "layer or tinygpt (default both)");
  int reps = 0;
  std::string only;
  try {
    if (!a.parse(argc, argv, 1)) return 0;
    reps = static_cast<int>(a.integer("--reps", 1, 1000000));
    if (a.given("--threads")) loragrad::set_num_threads(static_cast<int>(a.integer("--threads", 1, 1024)));
    if (a.given("--only")) only = a.str("--only");
    if (!only.empty() && only != "layer" && only != "tinygpt")
      throw loragrad::app::UsageError("dora_bench: --only must be layer or tinygpt, got '" + only + "'");
  } catch (const loragrad::app::UsageError& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
  if (only.empty() || only == "layer")
    for (bool nf4 : {false, true})
      for (int64_t d : {128, 256})
        for (int64_t tokens : {256, 16}) bench_layer(d, nf4, tokens, reps * 5);
  if (only.empty() || only == "tinygpt")
    for (bool generation : {false, true})
      for (bool nf4 : {false, true}) bench_tinygpt(nf4, generation, reps);
  return 0;
}

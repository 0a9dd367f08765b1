// `loragrad bench` end to end on a tiny custom workload: the JSON has every
// field with a sane value, its FLOP count is the spec's formula (spelled out
// here again, independently of app/workload.cpp), --precision bf16 runs the
// mixed-precision step (the reference workload S too) with the loss of fp32's
// to bf16 rounding, and bad flags exit 2 with one line naming the flag. Timing itself is never asserted: the machine may be busy.
#define BOOST_TEST_MODULE test_cli_bench
#include <boost/test/unit_test.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

namespace {

struct Run {
  int status = -1;
  std::string out, err;
};

// LORAGRAD_CLI ARGS, with stdout and stderr captured.
Run run(const std::string& args) {
  char err_path[] = "/tmp/loragrad_bench_err.XXXXXX";
  const int fd = mkstemp(err_path);
  BOOST_REQUIRE(fd >= 0);
  close(fd);
  const std::string cmd = std::string(LORAGRAD_CLI) + " bench " + args + " 2>" + err_path;
  Run r;
  FILE* p = popen(cmd.c_str(), "r");
  BOOST_REQUIRE(p != nullptr);
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) r.out.append(buf, n);
  const int st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  std::ifstream f(err_path);
  std::stringstream ss;
  ss << f.rdbuf();
  r.err = ss.str();
  std::remove(err_path);
  return r;
}

const std::string kTiny = "--d-model 32 --layers 2 --heads 2 --seq 16 --batch 2 --r 4 --alpha 8 "
                          "--steps 2 --warmup 1 --threads 1 --json";

// The spec's formula for L blocks with LoRA on q, k, v, o (N = batch x seq):
// forward per block 24 N d^2 + 4 N T d + 4 x 2 N r (d + d), head 2 N d V;
// backward 1x for the frozen linears' input gradients, except the first
// block's q, k, v (their input needs no gradient), 2x for the attention
// core, 2x for LoRA except the first block's A input gradients, 1x for the
// head (input gradient only).
double tiny_lora_flops() {
  const double N = 2 * 16, T = 16, d = 32, V = 256, r = 4, L = 2;
  const double forward = L * (24 * N * d * d + 4 * N * T * d + 4 * 2 * N * r * (2 * d)) + 2 * N * d * V;
  const double backward = (L * 24 * N * d * d - 3 * 2 * N * d * d) + L * 8 * N * T * d +
                          (2 * L * 4 * 2 * N * r * (2 * d) - 3 * 2 * N * r * d) + 2 * N * d * V;
  return forward + backward;
}

void check_report(const nlohmann::json& j, const std::string& method, double flops,
                  const std::string& precision = "fp32") {
  for (const char* key : {"workload", "method", "precision", "threads", "steps", "ms_per_step", "ms_steps",
                          "tokens_per_s", "gflop_per_step", "gflops", "fma_peak_gflops", "fma_peak_isa",
                          "pct_of_peak", "peak_rss_bytes", "peak_tensor_bytes", "kernels_isa", "cpu_model",
                          "loadavg_start", "loadavg_end"})
    BOOST_TEST_CONTEXT(key) { BOOST_TEST(j.contains(key)); }
  BOOST_TEST(j["method"].get<std::string>() == method);
  BOOST_TEST(j["precision"].get<std::string>() == precision);
  BOOST_TEST(j["threads"].get<int>() == 1);
  if (j["workload"]["name"].get<std::string>() == "custom") {
    BOOST_TEST(j["workload"]["d_model"].get<int>() == 32);
    BOOST_TEST(j["ms_steps"].size() == 2u);
  }
  BOOST_TEST(j["ms_per_step"].get<double>() > 0.0);
  BOOST_TEST(j["tokens_per_s"].get<double>() > 0.0);
  BOOST_TEST(j["gflop_per_step"].get<double>() * 1e9 == flops, boost::test_tools::tolerance(1e-12));
  BOOST_TEST(j["gflops"].get<double>() > 0.0);
  BOOST_TEST(j["fma_peak_gflops"].get<double>() > 0.0);
  const double pct = j["pct_of_peak"].get<double>();
  BOOST_TEST(pct > 0.0);
  if (precision == "fp32") BOOST_TEST(pct <= 100.0);  // the peak is float32 FMAs'; AMX may exceed it
  BOOST_TEST(j["peak_rss_bytes"].get<double>() > 0.0);
  BOOST_TEST(j["peak_tensor_bytes"].get<double>() > 0.0);
  BOOST_TEST(!j["cpu_model"].get<std::string>().empty());
  BOOST_TEST(j["kernels_isa"].get<std::string>() == j["fma_peak_isa"].get<std::string>());
  BOOST_TEST(j["loadavg_start"].size() == 3u);
  BOOST_TEST(std::isfinite(j["loss_last"].get<double>()));
}

}  // namespace

BOOST_AUTO_TEST_CASE(json_report_lora) {
  const Run r = run(kTiny);
  BOOST_TEST_INFO("stderr: " << r.err);
  BOOST_REQUIRE(r.status == 0);
  check_report(nlohmann::json::parse(r.out), "lora", tiny_lora_flops());
}

// Full fine-tuning: every weight and input is trained, the step is 3 forwards.
BOOST_AUTO_TEST_CASE(json_report_full) {
  const Run r = run("--method full --d-model 32 --layers 2 --heads 2 --seq 16 --batch 2 --steps 2 --warmup 1 "
                    "--threads 1 --json");
  BOOST_TEST_INFO("stderr: " << r.err);
  BOOST_REQUIRE(r.status == 0);
  const double N = 32, T = 16, d = 32, V = 256, L = 2;
  check_report(nlohmann::json::parse(r.out), "full", 3 * (L * (24 * N * d * d + 4 * N * T * d) + 2 * N * d * V));
}

BOOST_AUTO_TEST_CASE(text_report_qlora) {
  const Run r = run("--method qlora --d-model 64 --layers 1 --heads 2 --seq 8 --batch 2 --steps 1 --warmup 0 "
                    "--threads 1");
  BOOST_TEST_INFO("stderr: " << r.err);
  BOOST_REQUIRE(r.status == 0);
  for (const char* text : {"method qlora", "FMA peak", "% of the FMA peak", "peak RSS", "load average"})
    BOOST_TEST_CONTEXT(text) { BOOST_TEST(r.out.find(text) != std::string::npos); }
}

// The mixed-precision step: the same FLOP count (the formula counts useful
// work, whatever the precision), and the loss of the float32 step to bf16
// rounding (the same seed: the same weights and bytes).
BOOST_AUTO_TEST_CASE(json_report_lora_bf16) {
  const Run r32 = run(kTiny), r16 = run(kTiny + " --precision bf16");
  BOOST_TEST_INFO("stderr: " << r16.err);
  BOOST_REQUIRE(r32.status == 0);
  BOOST_REQUIRE(r16.status == 0);
  const nlohmann::json j = nlohmann::json::parse(r16.out);
  check_report(j, "lora", tiny_lora_flops(), "bf16");
  BOOST_TEST(!j["bf16_kernel"].get<std::string>().empty());
  const double l32 = nlohmann::json::parse(r32.out)["loss_first"].get<double>(), l16 = j["loss_first"].get<double>();
  BOOST_TEST(std::abs(l16 - l32) <= 1e-2 * l32);
  // The frozen base in bf16: fewer tensor bytes than the float32 run's.
  BOOST_TEST(j["peak_tensor_bytes"].get<double>() <
             nlohmann::json::parse(r32.out)["peak_tensor_bytes"].get<double>());
}

// The reference workload S itself, as `loragrad bench --precision bf16 --workload S --steps 3` (DoRA too, shorter).
BOOST_AUTO_TEST_CASE(workload_s_in_bf16) {
  const Run r = run("--precision bf16 --workload S --steps 3 --warmup 1 --threads 1 --json");
  BOOST_TEST_INFO("stderr: " << r.err);
  BOOST_REQUIRE(r.status == 0);
  const nlohmann::json j = nlohmann::json::parse(r.out);
  BOOST_TEST(j["workload"]["name"].get<std::string>() == "S");
  BOOST_TEST(j["precision"].get<std::string>() == "bf16");
  BOOST_TEST(j["ms_steps"].size() == 3u);
  BOOST_TEST(j["gflop_per_step"].get<double>() == 8.51, boost::test_tools::tolerance(1e-3));
  BOOST_TEST(std::isfinite(j["loss_last"].get<double>()));
  const Run d = run(kTiny + " --precision bf16 --method dora");
  BOOST_TEST_INFO("stderr: " << d.err);
  BOOST_TEST(d.status == 0);
}

// bf16 is the frozen base's storage: full (no frozen base) and qlora (NF4) refuse it.
BOOST_AUTO_TEST_CASE(bf16_needs_a_frozen_float_base) {
  for (const char* method : {"full", "qlora"}) {
    BOOST_TEST_CONTEXT(method) {
      const Run r = run(std::string("--d-model 32 --layers 2 --heads 2 --seq 16 --batch 2 --steps 1 --warmup 0 "
                                    "--threads 1 --json --precision bf16 --method ") + method);
      BOOST_TEST(r.status == 2);
      BOOST_TEST(r.out.empty());
      BOOST_TEST(r.err.rfind("loragrad: bench: ", 0) == 0);
      BOOST_TEST(r.err.find("--precision bf16") != std::string::npos);
      BOOST_TEST(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    }
  }
}

BOOST_AUTO_TEST_CASE(bad_flags_exit_2) {
  const std::pair<const char*, const char*> cases[] = {
      {"--method lorax", "--method"},       {"--precision fp16", "--precision"},
      {"--workload L", "--workload"},       {"--d-model 32 --heads 3", "--heads"},
      {"--steps 0", "--steps"},             {"--targets lm_head", "--targets"},
      {"--method full --r 4", "--r"},       {"--threads -1", "--threads"},
      {"--no-such-flag", "--no-such-flag"}, {"--steps", "--steps"},
  };
  for (const auto& [args, flag] : cases) {
    BOOST_TEST_CONTEXT(args) {
      const Run r = run(args);
      BOOST_TEST(r.status == 2);
      BOOST_TEST(r.err.rfind("loragrad: bench: ", 0) == 0);
      BOOST_TEST(r.err.find(flag) != std::string::npos);
      BOOST_TEST(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    }
  }
}

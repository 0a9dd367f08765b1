#pragma once
// The reference speed workload of docs/workload.md:
// a Tiny GPT on random bytes, trained with one of the fine-tuning methods,
// and the number of matmul FLOPs one training step does by the spec's
// formula, the numerator of every GFLOP/s that `loragrad bench` and
// bench/torch_workload.py report.
#include <cstdint>
#include <string>
#include <vector>

namespace loragrad::app {

enum class Method { full, lora, dora, qlora };

// "full", "lora", ...; UsageError naming `flag` for any other name.
Method parse_method(const std::string& name, const std::string& flag = "--method");
const char* method_name(Method m);

struct Workload {
  std::string name = "custom";  // "S", "M", or "custom"
  int64_t vocab = 256;          // bytes
  int64_t d_model = 128;
  int64_t n_layer = 4;
  int64_t n_head = 4;
  int64_t seq = 128;            // tokens per sequence (the model's block size)
  int64_t batch = 16;
  int64_t r = 8;                // LoRA rank
  double alpha = 16;            // LoRA alpha (scale alpha / r)
  // Adapted linear layers, by their last name: q_proj, k_proj, v_proj,
  // o_proj, fc_in, fc_out (lm_head is never adapted, as in PEFT's all-linear).
  std::vector<std::string> targets = {"q_proj", "k_proj", "v_proj", "o_proj"};

  int64_t d_ff() const { return 4 * d_model; }
  int64_t tokens() const { return batch * seq; }  // N of the formula: tokens per step
  bool is_target(const std::string& linear) const;
};

// The spec's table: "S" or "M"; UsageError naming `flag` otherwise.
Workload workload_preset(const std::string& name, const std::string& flag = "--workload");

// The linear layers a target list may name.
const std::vector<std::string>& adaptable_linears();

// Matmul FLOPs of one training step (forward + backward; the AdamW update
// does no matmul), 2 per multiply-add, by the spec's formula: see workload.cpp.
// dora and qlora count as lora (the formula has no term for DoRA's row norm
// nor for NF4 dequantisation: it counts the useful work, the same for all).
double step_flops(const Workload& w, Method m);

}  // namespace loragrad::app

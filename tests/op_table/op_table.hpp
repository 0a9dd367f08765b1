#pragma once
// The op table (like PyTorch's OpInfo): every differentiable op with sample
// inputs. test_gradcheck_ops gradchecks every sample in float64 and fails when
// an op in LORAGRAD_OPS has no entry; test_dtype_consistency compares float32
// with float64 forward results.
#include <functional>
#include <string>
#include <vector>

#include "loragrad/gradcheck.hpp"
#include "loragrad/ops.hpp"

namespace loragrad::testing {

struct OpSample {
  std::string label;               // e.g. "broadcast [3,1] x [1,4]"
  std::vector<Tensor> inputs;      // float64 (or i64 index tensors, never differentiated)
  std::function<Tensor(const std::vector<Tensor>&)> fn;
  double f32_tol = 1e-5;           // relative tolerance for the float32 vs float64 forward check
  GradcheckOptions gradcheck = {}; // eps / tolerances, when the defaults do not fit the sample
};

struct OpEntry {
  Op op;
  std::vector<OpSample> samples;
};

using OpTable = std::vector<OpEntry>;

// Each group adds its entries (tests/op_table/<group>.cpp, one owner per file).
void add_elementwise_entries(OpTable& table);
void add_reduce_shape_entries(OpTable& table);   // sum mean max reshape transpose permute narrow concat index_select embedding
void add_nn_entries(OpTable& table);             // softmax log_softmax cross_entropy layer_norm causal_attention
void add_matmul_entries(OpTable& table);         // matmul matmul_nt matmul_tn linear
void add_nf4_entries(OpTable& table);            // nf4_linear
void add_lora_linear_entries(OpTable& table);    // lora_linear (dense and NF4 base)

const OpTable& op_table();

// Random float64 input with requires_grad, values in [lo, hi), from a fixed seed.
Tensor sample_input(const Shape& shape, uint64_t seed, double lo = -1.0, double hi = 1.0);

}  // namespace loragrad::testing

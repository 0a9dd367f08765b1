#pragma once
// The op table (like PyTorch's OpInfo): every differentiable op with sample
// inputs. test_gradcheck_ops gradchecks every sample in float64 and fails when
// an op in LORAGRAD_OPS has no entry; test_dtype_consistency compares float32
// with float64 forward results.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "loragrad/gradcheck.hpp"
#include "loragrad/ops.hpp"
#include "loragrad/quant/bf16_tensor.hpp"

namespace loragrad::testing {

struct OpSample {
  std::string label;               // e.g. "broadcast [3,1] x [1,4]"
  std::vector<Tensor> inputs;      // float64 (or i64 index tensors, never differentiated)
  std::function<Tensor(const std::vector<Tensor>&)> fn;
  double f32_tol = 1e-5;           // relative tolerance for the float32 vs float64 forward check
  GradcheckOptions gradcheck = {}; // eps / tolerances, when the defaults do not fit the sample
  // Ops that round an input to bfloat16 (bf16_linear, lora_linear over a bf16
  // weight: x) are step functions of it, flat between neighbouring bf16
  // values (2^-8 apart, relatively): central differences with eps 1e-6 see 0
  // or a jump, never the straight-through gradient the backward returns. So
  // float64 gradcheck does not apply to that input: the sample holds it
  // constant (requires_grad false), gradcheck covers the others (bias, A, B,
  // x_lora), and `check` compares the forward and the gradient of the rounded
  // input with a manual computation from the bf16-rounded operands. It
  // returns "" when they agree, else what differs. A sample with no other
  // input (nothing to gradcheck) is covered by `check` alone.
  std::function<std::string(const std::vector<Tensor>& inputs)> check = nullptr;
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
void add_lora_linear_entries(OpTable& table);    // lora_linear (dense, NF4 and bf16 base)
void add_bf16_entries(OpTable& table);           // bf16_linear

// The manual check of an op over a bf16 weight w (tests/op_table/bf16.cpp),
// for OpSample::check. inputs[0] is x (..., in); the others are found by
// index (-1: absent): bias (out), and for lora_linear A (r, in), B (out, r),
// x_lora (x's shape), with the adapter's scale. In float32 and in float64 it
// runs fn, then backward with a fixed output gradient g, and compares
//   y  = bias + bf16(x) W^T  (+ scale (x_l A^T) B^T)
//   dx = bf16(g) W           (+ scale (g B) A, when x_l is x itself)
// computed here in float64 from the rounded operands, element by element,
// within the rounding bound of the op's sums: n u sum |terms|, n the number of
// terms summed (every order of summation stays within it), u = 2^-24 for
// float32 and 2^-51 for float64 (the reference's own float64 sums included).
struct Bf16Operands {
  std::shared_ptr<const BF16Tensor> w;
  int bias = -1, a = -1, b = -1, x_lora = -1;
  double scale = 0;
};
std::function<std::string(const std::vector<Tensor>&)> bf16_manual_check(
    Bf16Operands ops, std::function<Tensor(const std::vector<Tensor>&)> fn);

const OpTable& op_table();

// Random float64 input with requires_grad, values in [lo, hi), from a fixed seed.
Tensor sample_input(const Shape& shape, uint64_t seed, double lo = -1.0, double hi = 1.0);

}  // namespace loragrad::testing

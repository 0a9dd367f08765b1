#pragma once
// The ops: free functions that return a new tensor and record how to
// differentiate it. Each is implemented in core/src/ops/<group>.cpp with its
// backward right beside its forward. Float ops accept float32 or float64;
// both operands of a binary op must have the same dtype.
#include <memory>
#include <vector>

#include "loragrad/autograd.hpp"
#include "loragrad/generator.hpp"
#include "loragrad/tensor.hpp"

namespace loragrad {

// ---- elementwise (ops/elementwise.cpp): numpy broadcasting ----
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor pow(const Tensor& x, double exponent);
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor relu(const Tensor& x);
Tensor gelu(const Tensor& x);   // tanh form, PyTorch's GELU(approximate='tanh')
Tensor silu(const Tensor& x);
Tensor cast(const Tensor& x, DType dt);
// x where mask == 0, value where mask != 0; mask (any dtype) broadcasts to x.
Tensor masked_fill(const Tensor& x, const Tensor& mask, double value);
// Inverted dropout: zero with probability p, scale kept values by 1/(1-p).
// Identity when !training or p == 0. The mask is reused in backward.
Tensor dropout(const Tensor& x, double p, bool training, Generator& gen);

// The shape two operands broadcast to (numpy rules); throws ShapeError naming op.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);
// Sum g down to `shape` (the reverse of broadcasting); used by backward passes.
Tensor sum_to(const Tensor& g, const Shape& shape);

// scalar sugar: the scalar becomes a 0-d tensor of x's dtype
Tensor operator+(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a, const Tensor& b);
Tensor operator*(const Tensor& a, const Tensor& b);
Tensor operator/(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& x);
Tensor operator+(const Tensor& a, double b);
Tensor operator-(const Tensor& a, double b);
Tensor operator*(const Tensor& a, double b);
Tensor operator/(const Tensor& a, double b);
Tensor operator+(double a, const Tensor& b);
Tensor operator-(double a, const Tensor& b);
Tensor operator*(double a, const Tensor& b);
Tensor operator/(double a, const Tensor& b);

// ---- reductions (ops/reduce.cpp) ----
// dims empty = all dims. Negative dims allowed.
Tensor sum(const Tensor& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Tensor mean(const Tensor& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
// max over one dim (values only); the gradient goes to the first maximum.
Tensor max(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor max(const Tensor& x);   // over all elements, 0-d result

// ---- matrix products (ops/matmul.cpp) ----
// a (..., M, K) @ b (..., K, N) -> (..., M, N); batch dims broadcast; 2-d, 3-d, 4-d.
Tensor matmul(const Tensor& a, const Tensor& b);
// a (..., M, K) @ b(..., N, K)^T -> (..., M, N), without materialising b^T.
Tensor matmul_nt(const Tensor& a, const Tensor& b);
// a(..., K, M)^T @ b (..., K, N) -> (..., M, N), without materialising a^T.
Tensor matmul_tn(const Tensor& a, const Tensor& b);
// x (..., in) @ weight (out, in)^T + bias (out) -> (..., out); bias may be undefined.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());

// ---- quantised weights (ops/nf4_linear.cpp) ----
struct NF4Tensor;  // loragrad/quant/nf4.hpp
// x (..., in) @ W^T + bias (out) -> (..., out) with W an NF4 weight (out, in),
// computed from its codes, never a dense copy (float32: decoded piece by piece
// into the float GEMM's panels; float64: W decoded row block by row block into
// float64, for gradient checks). Differentiable w.r.t. x and bias, never W (a
// constant). x and bias (or undefined) of one float dtype.
Tensor nf4_linear(const Tensor& x, const std::shared_ptr<const NF4Tensor>& w, const Tensor& bias = Tensor());

// ---- bfloat16 weights (ops/bf16_linear.cpp) ----
struct BF16Tensor;  // loragrad/quant/bf16_tensor.hpp
// bf16(x) (..., in) @ W^T + bias (out) -> (..., out) with W a bf16 weight
// (out, in), the frozen base of mixed-precision training: x is rounded to
// bf16 (to nearest even), the exact products are summed in float32 (the bf16
// GEMM, reading W as stored) and the bias added, as under PyTorch's autocast.
// The gradient w.r.t. x is bf16(g) W (g rounded too, W as stored): the
// straight-through gradient of the rounding. Differentiable w.r.t. x and
// bias, never W (a constant). float64 (for tests) rounds x and g the same way
// and sums in float64. Not gradcheckable w.r.t. x: the rounding makes y a
// step function of x (tests/op_table/bf16.cpp checks it another way).
Tensor bf16_linear(const Tensor& x, const std::shared_ptr<const BF16Tensor>& w, const Tensor& bias = Tensor());

// ---- a linear layer with a LoRA adapter (ops/lora_linear.cpp) ----
// y = x W^T + bias + scale * (x_lora A^T) B^T  ->  (..., out), one op:
//   x (..., in), W (out, in), bias (out) or undefined, A (r, in), B (out, r),
//   x_lora the adapter's input, of x's shape (x after LoRA dropout), or
//   undefined for x itself.
// The GEMM accumulates the adapter term into the base output (alpha = scale,
// beta = 1) and, in backward, dh A into g W: no scaled copy, no full-size sum.
// Differentiable w.r.t. every tensor argument. All of one float dtype.
Tensor lora_linear(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& a, const Tensor& b,
                   double scale, const Tensor& x_lora = Tensor());
// The same over an NF4 base weight (out, in), a constant as in nf4_linear.
Tensor lora_linear(const Tensor& x, const std::shared_ptr<const NF4Tensor>& weight, const Tensor& bias,
                   const Tensor& a, const Tensor& b, double scale, const Tensor& x_lora = Tensor());
// The same over a bf16 base weight (out, in), a constant as in bf16_linear:
// the base product is bf16_linear's (x rounded to bf16; in backward g W with
// g rounded), the adapter's stay in x's dtype, unrounded: they are narrow
// (rank r), so float32 costs little there (autocast would round them too).
Tensor lora_linear(const Tensor& x, const std::shared_ptr<const BF16Tensor>& weight, const Tensor& bias,
                   const Tensor& a, const Tensor& b, double scale, const Tensor& x_lora = Tensor());

// ---- shape and indexing (ops/shape.cpp, ops/index.cpp) ----
Tensor reshape(const Tensor& x, const Shape& shape);  // one dim may be -1; shares storage
Tensor transpose(const Tensor& x, int64_t d0, int64_t d1);
Tensor permute(const Tensor& x, const std::vector<int64_t>& order);
Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length);
Tensor concat(const std::vector<Tensor>& xs, int64_t dim);
std::vector<Tensor> split(const Tensor& x, int64_t split_size, int64_t dim);  // narrows
// Rows of x along dim picked by an i64 index vector (scatter-add backward).
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index);
// weight (V, d)[idx] -> idx.shape + (d); idx is i64 with values in [0, V).
Tensor embedding(const Tensor& weight, const Tensor& idx);

// ---- fused neural-network ops (ops/softmax.cpp, ops/layer_norm.cpp, ops/attention.cpp) ----
Tensor softmax(const Tensor& x, int64_t dim = -1);
Tensor log_softmax(const Tensor& x, int64_t dim = -1);
// logits (N, C) or (..., C); targets integer class ids with logits' leading
// shape (i64, or float holding integers). Mean over targets != ignore_index.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index = -100);
// Over the last dim; weight/bias (C) may be undefined. Biased variance.
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps = 1e-5);
// q, k, v (B, T, d) with d = n_head * hd; causal softmax(q k^T / sqrt(hd)) v per head,
// heads concatenated back to (B, T, d). starts (B, T) i64, when defined, packs
// several sequences per row: query i attends to keys starts[b, i] .. i only
// (a block-diagonal causal mask; 0 <= starts[b, i] <= i). No gradient flows to it.
Tensor causal_attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t n_head,
                        const Tensor& starts = Tensor());

}  // namespace loragrad

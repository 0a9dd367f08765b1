#pragma once
// Every differentiable op, listed once. record() takes an Op, so an op cannot
// join the autograd graph without a name here, and tests/test_gradcheck_ops.cpp
// fails when a name here has no entry in the op table (tests/op_table.cpp).
// Its name in messages and graph nodes comes from here too (op_name,
// op_backward_name): an implementation that takes it from there cannot spell
// it differently.
namespace loragrad {

#define LORAGRAD_OPS(X)                                                        \
  /* elementwise, numpy broadcasting */                                        \
  X(add) X(sub) X(mul) X(div) X(neg) X(exp) X(log) X(sqrt) X(pow_scalar)      \
  X(tanh) X(sigmoid) X(relu) X(gelu) X(silu) X(cast) X(masked_fill)           \
  X(dropout)                                                                   \
  /* reductions */                                                             \
  X(sum) X(mean) X(max)                                                        \
  /* matrix products */                                                        \
  X(matmul) X(matmul_nt) X(matmul_tn) X(linear)                                \
  /* shape and indexing */                                                     \
  X(reshape) X(transpose) X(permute) X(narrow) X(concat) X(index_select)       \
  X(embedding)                                                                 \
  /* fused neural-network ops */                                               \
  X(softmax) X(log_softmax) X(cross_entropy) X(layer_norm) X(causal_attention) \
  /* quantised weights (core/src/ops/nf4_linear.cpp) */                       \
  X(nf4_linear)                                                                \
  /* bfloat16 weights (core/src/ops/bf16_linear.cpp) */                        \
  X(bf16_linear)                                                               \
  /* a linear layer with a LoRA adapter (core/src/ops/lora_linear.cpp) */     \
  X(lora_linear)

enum class Op {
#define LORAGRAD_OP_ENUM(name) name,
  LORAGRAD_OPS(LORAGRAD_OP_ENUM)
#undef LORAGRAD_OP_ENUM
};

// "matmul": what messages and grad_fn call the op.
constexpr const char* op_name(Op op) {
  switch (op) {
#define LORAGRAD_OP_NAME(name) case Op::name: return #name;
    LORAGRAD_OPS(LORAGRAD_OP_NAME)
#undef LORAGRAD_OP_NAME
  }
  return "?";
}

// "matmul backward": what the op's backward pass calls itself in messages.
constexpr const char* op_backward_name(Op op) {
  switch (op) {
#define LORAGRAD_OP_BACKWARD_NAME(name) case Op::name: return #name " backward";
    LORAGRAD_OPS(LORAGRAD_OP_BACKWARD_NAME)
#undef LORAGRAD_OP_BACKWARD_NAME
  }
  return "? backward";
}

inline constexpr Op all_ops[] = {
#define LORAGRAD_OP_LIST(name) Op::name,
    LORAGRAD_OPS(LORAGRAD_OP_LIST)
#undef LORAGRAD_OP_LIST
};

}  // namespace loragrad

#include "op_table.hpp"

#include "loragrad/generator.hpp"

namespace loragrad::testing {

const OpTable& op_table() {
  static const OpTable table = [] {
    OpTable t;
    add_elementwise_entries(t);
    add_reduce_shape_entries(t);
    add_matmul_entries(t);
    add_nn_entries(t);
    add_nf4_entries(t);
    add_bf16_entries(t);
    add_lora_linear_entries(t);
    return t;
  }();
  return table;
}

Tensor sample_input(const Shape& shape, uint64_t seed, double lo, double hi) {
  Generator gen(seed);
  Tensor t = uniform(shape, lo, hi, gen, DType::f64);
  t.requires_grad_(true);
  return t;
}

}  // namespace loragrad::testing

// Op-table entries for nf4_linear (core/src/ops/nf4_linear.cpp).
//
// The NF4 weight is a constant of the op (never differentiated): each sample
// quantises a fixed weight once and closes over it. The float64 run computes
// with the dequantised weight widened to float64, so gradcheck sees an exactly
// linear function of x and bias; the float32 run goes through the packed GEMM.
#include <memory>

#include "loragrad/generator.hpp"
#include "loragrad/quant/nf4.hpp"
#include "op_table.hpp"

namespace loragrad::testing {

namespace {

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

// x = inputs[0]; bias = inputs[1] when present.
Fn nf4_fn(const Shape& weight_shape, int64_t blocksize, bool double_quant, uint64_t seed) {
  Generator gen(seed);
  auto w = std::make_shared<const NF4Tensor>(
      quantize_nf4(uniform(weight_shape, -1.0, 1.0, gen), blocksize, double_quant));
  return [w](const std::vector<Tensor>& x) { return nf4_linear(x[0], w, x.size() > 1 ? x[1] : Tensor()); };
}

}  // namespace

void add_nf4_entries(OpTable& t) {
  t.push_back(
      {Op::nf4_linear,
       {// in = 13: blocks of 32 span rows; 65 elements, so a partial last block and an odd count
        {"x [7, 13] W [5, 13] b [5] dq", {sample_input({7, 13}, 470), sample_input({5}, 471)}, nf4_fn({5, 13}, 32, true, 472)},
        {"x [2, 3, 40] W [6, 40] no bias", {sample_input({2, 3, 40}, 473)}, nf4_fn({6, 40}, 64, false, 474)},
        {"x [13] W [3, 13] b [3]", {sample_input({13}, 475), sample_input({3}, 476)}, nf4_fn({3, 13}, 32, false, 477)}}});
}

}  // namespace loragrad::testing

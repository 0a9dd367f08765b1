// Op-table entries for the fused neural-network ops (core/src/ops/softmax.cpp,
// layer_norm.cpp, attention.cpp).
#include "op_table.hpp"

namespace loragrad::testing {

namespace {

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

// softmax-like op over `dim` for each shape.
std::vector<OpSample> row_op_samples(Tensor (*op)(const Tensor&, int64_t), uint64_t seed) {
  std::vector<std::pair<Shape, int64_t>> cases = {
      {{1, 1}, -1}, {{7, 13}, -1}, {{7, 13}, 0}, {{5}, 0},
      {{3, 4, 5}, 1}, {{3, 4, 5}, 0}, {{2, 3, 4, 5}, -1}, {{2, 3, 1, 5}, 2}};
  std::vector<OpSample> out;
  for (auto& [shape, dim] : cases) {
    Fn fn = [op, dim = dim](const auto& x) { return op(x[0], dim); };
    out.push_back({shape_str(shape) + " dim " + std::to_string(dim), {sample_input(shape, seed++)}, fn});
  }
  // Large logits: the max-subtraction must keep this finite.
  Fn last = [op](const auto& x) { return op(x[0], -1); };
  out.push_back({"[4, 6] in [-30, 30]", {sample_input({4, 6}, seed++, -30, 30)}, last});
  return out;
}

}  // namespace

void add_nn_entries(OpTable& t) {
  t.push_back({Op::softmax, row_op_samples([](const Tensor& x, int64_t d) { return softmax(x, d); }, 500)});
  t.push_back({Op::log_softmax, row_op_samples([](const Tensor& x, int64_t d) { return log_softmax(x, d); }, 520)});

  // Only the logits are differentiable; targets are i64 class ids.
  Fn ce = [](const auto& x) { return cross_entropy(x[0], x[1]); };
  Fn ce_ignore2 = [](const auto& x) { return cross_entropy(x[0], x[1], 2); };
  t.push_back({Op::cross_entropy,
               {{"[1, 1]", {sample_input({1, 1}, 540), from_indices({0}, {1})}, ce},
                {"[4, 5]", {sample_input({4, 5}, 541), from_indices({0, 4, 2, 1}, {4})}, ce},
                {"[4, 5] with ignore_index -100", {sample_input({4, 5}, 542), from_indices({1, -100, 3, -100}, {4})}, ce},
                {"[5, 3] ignore_index 2", {sample_input({5, 3}, 543), from_indices({2, 0, 2, 1, 0}, {5})}, ce_ignore2},
                {"[2, 3, 4] 3-d logits", {sample_input({2, 3, 4}, 544), from_indices({0, 3, 1, 2, -100, 3}, {2, 3})}, ce},
                {"[6] unbatched", {sample_input({6}, 545), from_indices({4}, {})}, ce},
                {"[3, 7] logits in [-20, 20]", {sample_input({3, 7}, 546, -20, 20), from_indices({6, 0, 3}, {3})}, ce}}});

  Fn ln = [](const auto& x) { return layer_norm(x[0], x[1], x[2]); };
  Fn ln_plain = [](const auto& x) { return layer_norm(x[0], Tensor(), Tensor()); };
  Fn ln_weight = [](const auto& x) { return layer_norm(x[0], x[1], Tensor()); };
  Fn ln_bias = [](const auto& x) { return layer_norm(x[0], Tensor(), x[1]); };
  t.push_back({Op::layer_norm,
               {{"[4, 6] affine", {sample_input({4, 6}, 560), sample_input({6}, 561), sample_input({6}, 562)}, ln},
                {"[4, 6] no affine", {sample_input({4, 6}, 563)}, ln_plain},
                {"[2, 3, 5] affine", {sample_input({2, 3, 5}, 564), sample_input({5}, 565), sample_input({5}, 566)}, ln},
                {"[2, 3, 5] weight only", {sample_input({2, 3, 5}, 567), sample_input({5}, 568)}, ln_weight},
                {"[3, 7] bias only", {sample_input({3, 7}, 569), sample_input({7}, 570)}, ln_bias},
                {"[3, 1] one feature", {sample_input({3, 1}, 571), sample_input({1}, 572), sample_input({1}, 573)}, ln},
                {"[2, 2, 2, 4] affine", {sample_input({2, 2, 2, 4}, 574), sample_input({4}, 575), sample_input({4}, 576)}, ln},
                {"[5] offset 3", {sample_input({5}, 577, 2, 4), sample_input({5}, 578), sample_input({5}, 579)}, ln}}});

  auto attn = [](int64_t n_head) -> Fn {
    return [n_head](const auto& x) { return causal_attention(x[0], x[1], x[2], n_head); };
  };
  auto qkv = [](const Shape& s, uint64_t seed) {
    return std::vector<Tensor>{sample_input(s, seed), sample_input(s, seed + 1), sample_input(s, seed + 2)};
  };
  t.push_back({Op::causal_attention,
               {{"B=2 T=5 d=6 H=2", qkv({2, 5, 6}, 590), attn(2)},
                {"B=1 T=1 d=4 H=2", qkv({1, 1, 4}, 593), attn(2)},
                {"B=1 T=7 d=9 H=3", qkv({1, 7, 9}, 596), attn(3)},
                {"B=3 T=4 d=2 H=1", qkv({3, 4, 2}, 599), attn(1)},
                {"B=1 T=67 d=2 H=1 (crosses a 64-row block)", qkv({1, 67, 2}, 602), attn(1)}}});
}

}  // namespace loragrad::testing

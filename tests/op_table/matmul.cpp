// Op-table entries for matmul, its transposed forms and linear (core/src/ops/matmul.cpp).
#include "op_table.hpp"

namespace loragrad::testing {

namespace {

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

std::vector<OpSample> product_samples(Fn fn, const std::vector<std::pair<Shape, Shape>>& shapes) {
  std::vector<OpSample> out;
  uint64_t seed = 400;
  for (auto& [sa, sb] : shapes)
    out.push_back({shape_str(sa) + " with " + shape_str(sb), {sample_input(sa, seed++), sample_input(sb, seed++)}, fn});
  return out;
}

}  // namespace

void add_matmul_entries(OpTable& t) {
  // a (.., M, K) @ b (.., K, N)
  t.push_back({Op::matmul, product_samples([](const auto& x) { return matmul(x[0], x[1]); },
                                           {{{1, 1}, {1, 1}},
                                            {{7, 13}, {13, 5}},
                                            {{2, 3, 4}, {4, 5}},
                                            {{2, 3, 4}, {2, 4, 5}},
                                            {{3, 4}, {2, 4, 2}},
                                            {{2, 1, 3, 4}, {1, 3, 4, 2}},
                                            {{2, 2, 3, 4}, {4, 3}}})});
  // a (.., M, K) @ b (.., N, K)^T
  t.push_back({Op::matmul_nt, product_samples([](const auto& x) { return matmul_nt(x[0], x[1]); },
                                              {{{1, 1}, {1, 1}},
                                               {{7, 13}, {5, 13}},
                                               {{2, 3, 4}, {5, 4}},
                                               {{2, 3, 4}, {2, 5, 4}},
                                               {{2, 1, 3, 4}, {1, 2, 2, 4}}})});
  // a (.., K, M)^T @ b (.., K, N)
  t.push_back({Op::matmul_tn, product_samples([](const auto& x) { return matmul_tn(x[0], x[1]); },
                                              {{{1, 1}, {1, 1}},
                                               {{13, 7}, {13, 5}},
                                               {{2, 4, 3}, {4, 5}},
                                               {{2, 4, 3}, {2, 4, 5}},
                                               {{2, 1, 4, 3}, {1, 2, 4, 2}}})});
  Fn lin = [](const auto& x) { return linear(x[0], x[1], x[2]); };
  Fn lin_nobias = [](const auto& x) { return linear(x[0], x[1]); };
  t.push_back({Op::linear,
               {{"x [1, 1] W [1, 1] b [1]", {sample_input({1, 1}, 450), sample_input({1, 1}, 451), sample_input({1}, 452)}, lin},
                {"x [7, 13] W [5, 13] b [5]", {sample_input({7, 13}, 453), sample_input({5, 13}, 454), sample_input({5}, 455)}, lin},
                {"x [2, 3, 4] W [6, 4] b [6]", {sample_input({2, 3, 4}, 456), sample_input({6, 4}, 457), sample_input({6}, 458)}, lin},
                {"x [2, 2, 3, 4] W [3, 4] no bias", {sample_input({2, 2, 3, 4}, 459), sample_input({3, 4}, 460)}, lin_nobias},
                {"x [4] W [3, 4] b [3]", {sample_input({4}, 461), sample_input({3, 4}, 462), sample_input({3}, 463)}, lin}}});
}

}  // namespace loragrad::testing

// Op-table entries for reductions (core/src/ops/reduce.cpp), shape ops
// (ops/shape.cpp) and index ops (ops/index.cpp).
#include "op_table.hpp"

namespace loragrad::testing {

namespace {

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

// One sample per (shape, dims, keepdim) for a reduction over a list of dims.
template <class R>
std::vector<OpSample> reduce_samples(R reduce, uint64_t seed,
                                     const std::vector<std::tuple<Shape, std::vector<int64_t>, bool>>& cases) {
  std::vector<OpSample> out;
  for (const auto& [shape, dims, keepdim] : cases) {
    std::string label = shape_str(shape) + " dims " + shape_str(dims) + (keepdim ? " keepdim" : "");
    Fn fn = [reduce, dims = dims, keepdim = keepdim](const std::vector<Tensor>& x) {
      return reduce(x[0], dims, keepdim);
    };
    out.push_back({label, {sample_input(shape, seed++)}, fn});
  }
  return out;
}

const std::vector<std::tuple<Shape, std::vector<int64_t>, bool>> kReduceCases = {
    {{}, {}, false},              // 0-d
    {{1, 1}, {}, false},          // all dims of a 1x1
    {{7, 13}, {}, false},         // everything
    {{7, 13}, {1}, false},        // rows
    {{7, 13}, {0}, true},         // columns, keepdim
    {{7, 13}, {-1}, true},        // negative dim
    {{3, 1, 4}, {1}, false},      // a size-1 dim
    {{2, 3, 4}, {0, 2}, false},   // non-adjacent dims
    {{2, 3, 4}, {-2, -1}, true},  // trailing dims (sum_to's pattern)
    {{2, 3, 4, 5}, {1, 2}, false},
    {{2, 3, 4, 5}, {0, 1, 3}, true},
};

}  // namespace

void add_reduce_shape_entries(OpTable& t) {
  // ---- reductions ----
  t.push_back({Op::sum, reduce_samples([](const Tensor& x, const std::vector<int64_t>& d, bool k) { return sum(x, d, k); },
                                       500, kReduceCases)});
  t.push_back({Op::mean, reduce_samples([](const Tensor& x, const std::vector<int64_t>& d, bool k) { return mean(x, d, k); },
                                        520, kReduceCases)});
  // max: continuous random inputs, so no ties (the gradient is only defined without them)
  auto max_dim = [](int64_t dim, bool keepdim) {
    return Fn([dim, keepdim](const std::vector<Tensor>& x) { return max(x[0], dim, keepdim); });
  };
  Fn max_all = [](const std::vector<Tensor>& x) { return max(x[0]); };
  t.push_back({Op::max,
               {{"[] all", {sample_input({}, 540)}, max_all},
                {"[1, 1] all", {sample_input({1, 1}, 541)}, max_all},
                {"[7, 13] all", {sample_input({7, 13}, 542)}, max_all},
                {"[7, 13] dim 1", {sample_input({7, 13}, 543)}, max_dim(1, false)},
                {"[7, 13] dim 0 keepdim", {sample_input({7, 13}, 544)}, max_dim(0, true)},
                {"[3, 1, 4] dim 1", {sample_input({3, 1, 4}, 545)}, max_dim(1, false)},
                {"[2, 3, 4] dim -2 keepdim", {sample_input({2, 3, 4}, 546)}, max_dim(-2, true)},
                {"[2, 3, 4, 5] dim -1", {sample_input({2, 3, 4, 5}, 547)}, max_dim(-1, false)}}});

  // ---- shape ops ----
  auto reshape_to = [](Shape s) { return Fn([s](const std::vector<Tensor>& x) { return reshape(x[0], s); }); };
  t.push_back({Op::reshape,
               {{"[] -> [1, 1]", {sample_input({}, 560)}, reshape_to({1, 1})},
                {"[1, 1] -> []", {sample_input({1, 1}, 561)}, reshape_to({})},
                {"[7, 13] -> [13, 7]", {sample_input({7, 13}, 562)}, reshape_to({13, 7})},
                {"[7, 13] -> [-1]", {sample_input({7, 13}, 563)}, reshape_to({-1})},
                {"[2, 3, 4] -> [4, -1, 2]", {sample_input({2, 3, 4}, 564)}, reshape_to({4, -1, 2})},
                {"[2, 3, 4, 5] -> [6, 20]", {sample_input({2, 3, 4, 5}, 565)}, reshape_to({6, 20})}}});

  auto transpose_of = [](int64_t a, int64_t b) {
    return Fn([a, b](const std::vector<Tensor>& x) { return transpose(x[0], a, b); });
  };
  t.push_back({Op::transpose,
               {{"[1, 1] 0 1", {sample_input({1, 1}, 580)}, transpose_of(0, 1)},
                {"[7, 13] 0 1", {sample_input({7, 13}, 581)}, transpose_of(0, 1)},
                {"[7, 13] 1 1", {sample_input({7, 13}, 582)}, transpose_of(1, 1)},
                {"[2, 3, 4] -1 -2", {sample_input({2, 3, 4}, 583)}, transpose_of(-1, -2)},
                {"[2, 3, 4] 0 2", {sample_input({2, 3, 4}, 584)}, transpose_of(0, 2)},
                {"[3, 1, 4] 0 1", {sample_input({3, 1, 4}, 585)}, transpose_of(0, 1)},
                {"[2, 3, 4, 5] 1 2", {sample_input({2, 3, 4, 5}, 586)}, transpose_of(1, 2)},
                {"[2, 3, 35, 37] -1 -2 (tiles)", {sample_input({2, 3, 35, 37}, 587)}, transpose_of(-1, -2)}}});

  auto permute_by = [](std::vector<int64_t> order) {
    return Fn([order](const std::vector<Tensor>& x) { return permute(x[0], order); });
  };
  t.push_back({Op::permute,
               {{"[1, 1] (1, 0)", {sample_input({1, 1}, 600)}, permute_by({1, 0})},
                {"[7, 13] (1, 0)", {sample_input({7, 13}, 601)}, permute_by({1, 0})},
                {"[2, 3, 4] (0, 1, 2)", {sample_input({2, 3, 4}, 602)}, permute_by({0, 1, 2})},
                {"[2, 3, 4] (2, 0, 1)", {sample_input({2, 3, 4}, 603)}, permute_by({2, 0, 1})},
                {"[2, 3, 4] (1, -1, 0)", {sample_input({2, 3, 4}, 604)}, permute_by({1, -1, 0})},
                {"[2, 3, 4, 5] (0, 2, 1, 3) heads", {sample_input({2, 3, 4, 5}, 605)}, permute_by({0, 2, 1, 3})},
                {"[2, 3, 4, 5] (3, 1, 0, 2)", {sample_input({2, 3, 4, 5}, 606)}, permute_by({3, 1, 0, 2})},
                {"[2, 1, 4, 5] (2, 1, 3, 0)", {sample_input({2, 1, 4, 5}, 607)}, permute_by({2, 1, 3, 0})}}});

  auto narrow_of = [](int64_t dim, int64_t start, int64_t len) {
    return Fn([=](const std::vector<Tensor>& x) { return narrow(x[0], dim, start, len); });
  };
  t.push_back({Op::narrow,
               {{"[1, 1] dim 0 [0, 1)", {sample_input({1, 1}, 620)}, narrow_of(0, 0, 1)},
                {"[7, 13] dim 1 [3, 8)", {sample_input({7, 13}, 621)}, narrow_of(1, 3, 5)},
                {"[7, 13] dim 0 [6, 7)", {sample_input({7, 13}, 622)}, narrow_of(0, 6, 1)},
                {"[7, 13] dim -1 start -4", {sample_input({7, 13}, 623)}, narrow_of(-1, -4, 2)},
                {"[2, 3, 4] dim 1 [1, 3)", {sample_input({2, 3, 4}, 624)}, narrow_of(1, 1, 2)},
                {"[2, 3, 4, 5] dim 2 [0, 2)", {sample_input({2, 3, 4, 5}, 625)}, narrow_of(2, 0, 2)}}});

  auto concat_on = [](int64_t dim) {
    return Fn([dim](const std::vector<Tensor>& x) { return concat(x, dim); });
  };
  t.push_back({Op::concat,
               {{"[1, 1] + [1, 1] dim 0", {sample_input({1, 1}, 640), sample_input({1, 1}, 641)}, concat_on(0)},
                {"[7, 13] + [7, 2] dim 1", {sample_input({7, 13}, 642), sample_input({7, 2}, 643)}, concat_on(1)},
                {"[7, 13] + [1, 13] + [3, 13] dim -2",
                 {sample_input({7, 13}, 644), sample_input({1, 13}, 645), sample_input({3, 13}, 646)}, concat_on(-2)},
                {"[2, 3, 4] + [2, 1, 4] dim 1", {sample_input({2, 3, 4}, 647), sample_input({2, 1, 4}, 648)}, concat_on(1)},
                {"[2, 3, 4] alone dim 2", {sample_input({2, 3, 4}, 649)}, concat_on(2)},
                {"[2, 3, 4, 5] + [2, 3, 4, 2] dim 3", {sample_input({2, 3, 4, 5}, 650), sample_input({2, 3, 4, 2}, 651)},
                 concat_on(3)}}});

  // ---- index ops: i64 index inputs are held constant; repeats exercise the scatter-add ----
  auto select_on = [](int64_t dim) {
    return Fn([dim](const std::vector<Tensor>& x) { return index_select(x[0], dim, x[1]); });
  };
  t.push_back({Op::index_select,
               {{"[1, 1] dim 0 [0]", {sample_input({1, 1}, 660), from_indices({0}, {1})}, select_on(0)},
                {"[7, 13] dim 0 [3, 0, 3, 6]", {sample_input({7, 13}, 661), from_indices({3, 0, 3, 6}, {4})}, select_on(0)},
                {"[7, 13] dim -1 [12, 1, 1, 1, 5]", {sample_input({7, 13}, 662), from_indices({12, 1, 1, 1, 5}, {5})},
                 select_on(-1)},
                {"[2, 3, 4] dim 1 [2, 2]", {sample_input({2, 3, 4}, 663), from_indices({2, 2}, {2})}, select_on(1)},
                {"[2, 3, 4, 5] dim 2 [3, 0, 3]", {sample_input({2, 3, 4, 5}, 664), from_indices({3, 0, 3}, {3})},
                 select_on(2)}}});

  Fn embed = [](const std::vector<Tensor>& x) { return embedding(x[0], x[1]); };
  t.push_back({Op::embedding,
               {{"[1, 1] idx [0]", {sample_input({1, 1}, 680), from_indices({0}, {1})}, embed},
                {"[7, 13] idx (4) repeats", {sample_input({7, 13}, 681), from_indices({6, 2, 6, 0}, {4})}, embed},
                {"[5, 3] idx (2, 3)", {sample_input({5, 3}, 682), from_indices({4, 4, 1, 0, 4, 2}, {2, 3})}, embed},
                {"[4, 6] idx (2, 2, 2)", {sample_input({4, 6}, 683), from_indices({0, 1, 2, 3, 3, 2, 1, 0}, {2, 2, 2})},
                 embed},
                {"[3, 2] idx () 0-d", {sample_input({3, 2}, 684), from_indices({2}, {})}, embed}}});
}

}  // namespace loragrad::testing

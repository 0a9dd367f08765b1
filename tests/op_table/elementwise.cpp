// Op-table entries for the elementwise ops (core/src/ops/elementwise.cpp).
#include "op_table.hpp"

namespace loragrad::testing {

namespace {

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

// Samples of a binary op over same shapes, broadcasting, size-1 dims, odd shapes.
std::vector<OpSample> binary_samples(Fn fn, double lo_b = -1.0, double hi_b = 1.0) {
  const std::vector<std::pair<Shape, Shape>> shapes = {
      {{1, 1}, {1, 1}},       {{7, 13}, {7, 13}},   {{3, 1}, {1, 4}},        {{2, 3, 4}, {4}},
      {{2, 3, 4}, {3, 1}},    {{5}, {}},            {{}, {2, 3}},            {{2, 1, 3, 1}, {1, 4, 1, 2}},
      {{2, 3, 4, 5}, {2, 3, 4, 5}}};
  std::vector<OpSample> out;
  uint64_t seed = 100;
  for (auto& [sa, sb] : shapes)
    out.push_back({shape_str(sa) + " with " + shape_str(sb), {sample_input(sa, seed++), sample_input(sb, seed++, lo_b, hi_b)}, fn});
  return out;
}

std::vector<OpSample> unary_samples(Fn fn, double lo = -2.0, double hi = 2.0) {
  std::vector<OpSample> out;
  uint64_t seed = 200;
  for (const Shape& s : std::vector<Shape>{{}, {1, 1}, {7, 13}, {2, 3, 4}, {2, 1, 3, 2}})
    out.push_back({shape_str(s), {sample_input(s, seed++, lo, hi)}, fn});
  return out;
}

}  // namespace

void add_elementwise_entries(OpTable& t) {
  t.push_back({Op::add, binary_samples([](const auto& x) { return add(x[0], x[1]); })});
  t.push_back({Op::sub, binary_samples([](const auto& x) { return sub(x[0], x[1]); })});
  t.push_back({Op::mul, binary_samples([](const auto& x) { return mul(x[0], x[1]); })});
  // Divisors kept away from zero.
  t.push_back({Op::div, binary_samples([](const auto& x) { return div(x[0], x[1]); }, 0.5, 2.0)});
  t.push_back({Op::neg, unary_samples([](const auto& x) { return neg(x[0]); })});
  t.push_back({Op::exp, unary_samples([](const auto& x) { return exp(x[0]); })});
  t.push_back({Op::log, unary_samples([](const auto& x) { return log(x[0]); }, 0.2, 3.0)});
  t.push_back({Op::sqrt, unary_samples([](const auto& x) { return sqrt(x[0]); }, 0.2, 3.0)});
  {
    auto samples = unary_samples([](const auto& x) { return pow(x[0], 3.0); });
    auto frac = unary_samples([](const auto& x) { return pow(x[0], -1.5); }, 0.3, 2.0);
    auto sq = unary_samples([](const auto& x) { return pow(x[0], 2.0); });
    samples.insert(samples.end(), frac.begin(), frac.end());
    samples.insert(samples.end(), sq.begin(), sq.end());
    t.push_back({Op::pow_scalar, samples});
  }
  t.push_back({Op::tanh, unary_samples([](const auto& x) { return tanh(x[0]); })});
  t.push_back({Op::sigmoid, unary_samples([](const auto& x) { return sigmoid(x[0]); })});
  // relu: continuous random inputs land within eps of the kink at 0 with negligible probability.
  t.push_back({Op::relu, unary_samples([](const auto& x) { return relu(x[0]); })});
  t.push_back({Op::gelu, unary_samples([](const auto& x) { return gelu(x[0]); }, -4.0, 4.0)});
  t.push_back({Op::silu, unary_samples([](const auto& x) { return silu(x[0]); }, -4.0, 4.0)});
  // cast: float64 -> float64 (a copy), and a float64 -> float32 -> float64 round
  // trip, whose numeric derivative sees float32 rounding: a larger step there.
  {
    auto samples = unary_samples([](const auto& x) { return cast(x[0], DType::f64); });
    auto via32 = unary_samples([](const auto& x) { return cast(cast(x[0], DType::f32), DType::f64); });
    for (auto& s : via32) {
      s.label += " via float32";
      s.gradcheck.eps = 1e-2;
      s.gradcheck.atol = 1e-4;
    }
    samples.insert(samples.end(), via32.begin(), via32.end());
    t.push_back({Op::cast, samples});
  }
  {
    Fn fill = [](const auto& x) { return masked_fill(x[0], x[1], -3.0); };
    Tensor mask_row = from_values(std::vector<double>{1, 0, 0, 1}, {4}, DType::f64);
    Tensor mask_full = from_values(std::vector<double>{0, 1, 1, 0, 1, 0}, {2, 3}, DType::f64);
    Tensor causal = from_values(std::vector<double>{0, 1, 1, 0, 0, 1, 0, 0, 0}, {3, 3}, DType::f64);
    t.push_back({Op::masked_fill,
                 {{"[3, 4] with row mask [4]", {sample_input({3, 4}, 300), mask_row}, fill},
                  {"[2, 3] full mask", {sample_input({2, 3}, 301), mask_full}, fill},
                  {"[2, 3, 3] causal mask [3, 3]", {sample_input({2, 3, 3}, 302), causal}, fill}}});
  }
  {
    // A fresh generator per call: every evaluation draws the same mask.
    Fn drop = [](const auto& x) {
      Generator gen(7);
      return dropout(x[0], 0.3, /*training=*/true, gen);
    };
    Fn eval = [](const auto& x) {
      Generator gen(7);
      return dropout(x[0], 0.3, /*training=*/false, gen);
    };
    t.push_back({Op::dropout,
                 {{"train [7, 13]", {sample_input({7, 13}, 310)}, drop},
                  {"train [2, 3, 4]", {sample_input({2, 3, 4}, 311)}, drop},
                  {"eval [3, 5]", {sample_input({3, 5}, 312)}, eval}}});
  }
}

}  // namespace loragrad::testing

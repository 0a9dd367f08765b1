// The seed document's worked example (summarised in docs/seed-notes.md),
// computed with loragrad's real LoRA layer instead of by hand:
//
//   a 4x5 linear layer W0 (20 weights, frozen), a rank r = 2 adapter
//   A (2x5), B (4x2) with alpha = 16, so the scale is alpha / r = 8, and
//   y = (W0 + 8 B A) x for x = [1, -1, 0.5, 0, 2]  ->  y = [1.34, 1.72, 0.54, 1.06].
//
// Then the seed's table of trainable-parameter ratios, recomputed from its
// formulas and from an exact per-layer count.
//
// Everything runs in float64. The program exits 1 when a number differs from
// the seed's (so ctest checks the seed's arithmetic and loragrad's layer).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "loragrad/autograd.hpp"
#include "loragrad/lora/lora_linear.hpp"
#include "loragrad/nn/layers.hpp"
#include "loragrad/ops.hpp"

using namespace loragrad;

namespace {

int g_failures = 0;

// A 2-d tensor (or a 1-d one as a column), one row a line, fixed precision.
void print_matrix(const char* name, const Tensor& t, int precision = 2) {
  const int64_t rows = t.size(0), cols = t.dim() == 2 ? t.size(1) : 1;
  const std::vector<double> v = t.to_vector();
  std::printf("  %s (%lld x %lld) =\n", name, (long long)rows, (long long)cols);
  for (int64_t i = 0; i < rows; ++i) {
    std::printf("    [");
    for (int64_t j = 0; j < cols; ++j) {
      double x = v[static_cast<size_t>(i * cols + j)];
      if (std::abs(x) < 0.5 * std::pow(10.0, -precision)) x = 0.0;  // no "-0.00"
      std::printf(" %*.*f", precision + 4, precision, x);
    }
    std::printf(" ]\n");
  }
}

// Compares with the seed's printed values; reports the largest difference.
void expect_equal(const char* what, const Tensor& got, const std::vector<double>& seed, double tol) {
  const std::vector<double> v = got.to_vector();
  double worst = v.size() == seed.size() ? 0.0 : INFINITY;
  for (size_t i = 0; i < v.size() && i < seed.size(); ++i) worst = std::max(worst, std::abs(v[i] - seed[i]));
  const bool ok = worst <= tol;
  if (!ok) ++g_failures;
  std::printf("  check %-34s max |loragrad - seed| = %.1e  %s\n", what, worst, ok ? "ok" : "FAIL");
}

void section(const char* title) { std::printf("\n== %s ==\n", title); }

}  // namespace

int main() {
  const double tol = 1e-6;

  // ---- the seed's numbers (row-major) ----
  const std::vector<double> W0_v = {1,   0,    -1, 2,  0.5,  //
                                    0,   1,    0,  -1, 1,    //
                                    0.5, -0.5, 1,  0,  0,    //
                                    1.5, 0,    0,  1,  -0.5};
  const std::vector<double> A_v = {0.2, -0.1, 0, 0.3, -0.2,  //
                                   0,   0.1,  0.4, -0.2, 0.1};
  const std::vector<double> B_v = {0.5, 0.1, -0.3, 0.2, 0, -0.4, 0.2, 0.3};
  const std::vector<double> x_v = {1, -1, 0.5, 0, 2};
  const std::vector<double> dW_seed = {0.10,  -0.04, 0.04,  0.13,  -0.09,  //
                                       -0.06, 0.05,  0.08,  -0.13, 0.08,   //
                                       0,     -0.04, -0.16, 0.08,  -0.04,  //
                                       0.04,  0.01,  0.12,  0,     -0.01};
  const std::vector<double> W_seed = {1.8,   -0.32, -0.68, 3.04,  -0.22,  //
                                      -0.48, 1.4,   0.64,  -2.04, 1.64,   //
                                      0.5,   -0.82, -0.28, 0.64,  -0.32,  //
                                      1.82,  0.08,  0.96,  1,     -0.58};
  const std::vector<double> y_seed = {1.34, 1.72, 0.54, 1.06};

  section("1. The frozen base layer");
  std::printf("  An nn::Linear(5 -> 4) without bias holding the seed's W0. Wrapped by LoRA\n"
              "  it is frozen: no gradient is ever computed for it.\n");
  auto base = std::make_shared<nn::Linear>(from_values(W0_v, {4, 5}, DType::f64), Tensor());
  print_matrix("W0", base->weight, 1);

  section("2. The adapter: r = 2, alpha = 16");
  std::printf("  LoraLinear(base, r = 2, alpha = 16). PEFT's shapes: A is (r, d_in) = (2, 5),\n"
              "  B is (d_out, r) = (4, 2). (The seed's prose once says A is d_in x r and B\n"
              "  r x d_out, the transposes; its matrices and this layer use (r, in) / (out, r).)\n"
              "  A fresh adapter has B = 0 (a no-op); here A and B are the seed's\n"
              "  \"trained\" values, copied into lora_A.default.weight / lora_B.default.weight.\n");
  lora::LoraOptions opts;
  opts.r = 2;
  opts.alpha = 16;
  auto layer = std::make_shared<lora::LoraLinear>(base, "default", opts);
  {
    NoGradGuard no_grad;
    layer->lora_A_weight("default").copy_(from_values(A_v, {2, 5}, DType::f64));
    layer->lora_B_weight("default").copy_(from_values(B_v, {4, 2}, DType::f64));
  }
  print_matrix("A", layer->lora_A_weight("default"), 1);
  print_matrix("B", layer->lora_B_weight("default"), 1);

  section("3. The low-rank update dW = B A");
  std::printf("  dW is a 4 x 5 matrix of rank at most 2, made from the 18 numbers of A and B.\n");
  const Tensor dW = matmul(layer->lora_B_weight("default"), layer->lora_A_weight("default")).detach();
  print_matrix("dW = B A", dW, 2);
  expect_equal("dW = B A", dW, dW_seed, tol);

  section("4. The scale");
  const double s = layer->scaling("default");
  std::printf("  s = alpha / r = 16 / 2 = %.1f (rsLoRA would use alpha / sqrt(r)).\n"
              "  Dividing by r keeps the update's size roughly independent of the rank.\n", s);
  if (std::abs(s - 8.0) > 1e-15) {
    ++g_failures;
    std::printf("  check scale: FAIL\n");
  }

  section("5. The adapted weight W = W0 + s dW (LoraLinear::merge())");
  std::printf("  merge() writes W0 + s B A into the base weight (unmerge() restores W0).\n");
  const Tensor x = from_values(x_v, {1, 5}, DType::f64);  // (1, in): one input row
  Tensor y_unmerged;
  {
    NoGradGuard no_grad;
    y_unmerged = layer->forward(x);  // before merging: base(x) + s B (A x)
  }
  layer->merge();
  const Tensor W = layer->base_weight().clone();
  print_matrix("W = W0 + 8 dW", W, 2);
  expect_equal("W = W0 + 8 dW", W, W_seed, tol);

  section("6. The forward pass y = W x for x = [1, -1, 0.5, 0, 2]");
  std::printf("  Unmerged (how it trains): y = W0 x + s B (A x): two thin matmuls,\n"
              "  the 4x5 product B A is never formed.\n");
  print_matrix("y (adapter layer, unmerged)", reshape(y_unmerged, {4}), 2);
  expect_equal("y unmerged", y_unmerged, y_seed, tol);
  Tensor y_merged;
  {
    NoGradGuard no_grad;
    y_merged = layer->forward(x);  // merged: just base(x) with the updated weight
  }
  std::printf("  Merged (how it serves): one matmul with W, no extra cost at inference.\n");
  print_matrix("y (merged weight)", reshape(y_merged, {4}), 2);
  expect_equal("y merged", y_merged, y_seed, tol);
  layer->unmerge();
  expect_equal("W0 after unmerge()", layer->base_weight(), W0_v, 1e-12);

  section("7. Parameter counts");
  const int64_t all = layer->num_parameters(), trainable = layer->num_parameters(true);
  std::printf("  frozen    %3lld  (W0: 4 x 5)\n", (long long)(all - trainable));
  std::printf("  trainable %3lld  (r (d_in + d_out) = 2 (5 + 4) = 18: A has 10, B has 8)\n", (long long)trainable);
  std::printf("  18 numbers update all 20 weights, through a rank-2 matrix.\n");
  if (all - trainable != 20 || trainable != 18) {
    ++g_failures;
    std::printf("  check counts: FAIL\n");
  }

  section("8. The seed's trainable-ratio table");
  std::printf(
      "  For a d_out x d_in weight the adapter adds r (d_in + d_out) weights, a share of\n"
      "  r (d_in + d_out) / (d_in d_out). With q, k, v, o all d x d: 4 r 2d / 4 d^2 = 2r/d.\n"
      "  FFN (d x 4d and 4d x d): 2 r 5d / 8 d^2 = 1.25 r/d; the seed adds the two: 3.25 r/d.\n\n");
  struct Row {
    const char* what;
    double coef;  // ratio = coef * r / d
    int64_t d, r;
    const char* seed_text;  // as the seed prints it
    double seed_percent;
    double seed_unit;  // the last printed digit of the seed's number: rounding is +-unit/2
  };
  const Row rows[] = {
      {"attention only", 2.0, 4096, 1, "0.049", 0.049, 0.001},   {"attention only", 2.0, 4096, 2, "0.098", 0.098, 0.001},
      {"attention only", 2.0, 4096, 8, "0.39", 0.39, 0.01},     {"attention + FFN", 3.25, 4096, 1, "0.079", 0.079, 0.001},
      {"attention + FFN", 3.25, 4096, 2, "0.16", 0.16, 0.01},   {"attention + FFN", 3.25, 4096, 8, "0.63", 0.63, 0.01},
      {"attention only", 2.0, 8192, 2, "0.049", 0.049, 0.001},   {"attention only", 2.0, 8192, 8, "0.20", 0.20, 0.01},
  };
  std::printf("  %-16s %6s %3s  %-9s %10s  %8s\n", "adapted", "d", "r", "formula", "loragrad", "seed");
  for (const Row& row : rows) {
    const double percent = 100.0 * row.coef * double(row.r) / double(row.d);
    const bool ok = std::abs(percent - row.seed_percent) <= 0.5 * row.seed_unit + 1e-12;
    if (!ok) ++g_failures;
    std::printf("  %-16s %6lld %3lld  %4.2f r/d  %9.4f%%  %7s%%  %s\n", row.what, (long long)row.d,
                (long long)row.r, row.coef, percent, row.seed_text, ok ? "ok" : "FAIL");
  }

  std::printf(
      "\n  The exact count for one transformer layer, summing r (d_in + d_out) over the\n"
      "  adapted matrices (q, k, v, o: d x d; FFN: d x 4d and 4d x d; biases ignored).\n"
      "  attn: adapters on q, k, v, o over their 4 d^2 weights; all: adapters on the\n"
      "  FFN too, over all 12 d^2 weights; seed: its 3.25 r/d for the latter.\n\n");
  std::printf("  %6s %3s  %12s %14s %10s %14s %10s %10s\n", "d", "r", "attn weights", "attn adapters",
              "share", "all adapters", "share", "seed");
  for (int64_t d : {4096, 8192}) {
    for (int64_t r : {1, 2, 8}) {
      const int64_t attn_w = 4 * d * d, ffn_w = 2 * 4 * d * d;  // weights of the matrices
      const int64_t attn_a = 4 * r * (d + d);                   // adapters on q, k, v, o
      const int64_t ffn_a = r * (d + 4 * d) + r * (4 * d + d);  // adapters on fc_in, fc_out
      std::printf("  %6lld %3lld  %12lld %14lld %9.4f%% %14lld %9.4f%% %9.4f%%\n", (long long)d, (long long)r,
                  (long long)attn_w, (long long)attn_a, 100.0 * attn_a / attn_w, (long long)(attn_a + ffn_a),
                  100.0 * (attn_a + ffn_a) / (attn_w + ffn_w), 100.0 * 3.25 * r / d);
    }
  }
  std::printf(
      "\n  Attention only, 2r/d is exact. With the FFN too the exact share of the layer's\n"
      "  weights is 18 r d / 12 d^2 = 1.5 r/d: the seed's 3.25 r/d adds two ratios with\n"
      "  different denominators (4 d^2 and 8 d^2), so it overstates the share about 2x;\n"
      "  3.25 r/d is rather an upper bound. (Real 7B/70B models use d_ff != 4d and three\n"
      "  FFN matrices, which moves these numbers a little; the order of magnitude holds.)\n");

  std::printf("\n%s\n", g_failures == 0 ? "All numbers match the seed document."
                                        : "MISMATCH with the seed document (see FAIL lines).");
  return g_failures == 0 ? 0 : 1;
}

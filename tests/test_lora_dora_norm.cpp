// DoRA's row norm n = ||W0 + s B A||_row computed without dense temporaries
// (LoraLinear::dora_row_norm): agreement with the dense formula, the
// near-cancellation corner, the cache of ||W0_row||^2 following every change
// of the base weight (in place, replaced, merged, trained, requantised), and
// a DoRA step that allocates nothing of the weight's size (memory counters).
#define BOOST_TEST_MODULE test_lora_dora_norm
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <limits>
#include <memory>
#include <string>

#include "loragrad/autograd.hpp"
#include "loragrad/lora/base_storage.hpp"
#include "loragrad/lora/lora_linear.hpp"
#include "loragrad/memory.hpp"
#include "loragrad/nn/layers.hpp"
#include "loragrad/ops.hpp"
#include "loragrad/optim/sgd.hpp"

using namespace loragrad;
using lora::LoraInit;
using lora::LoraLinear;
using lora::LoraOptions;

namespace {

// The dense formula (what LoraLinear computed before): ||W0 + s B A||_row, in float64.
Tensor dense_norm(const Tensor& W0, LoraLinear& lay, const std::string& name = "default") {
  NoGradGuard no_grad;
  const Tensor W = add(W0.to(DType::f64), lay.delta_weight(name).to(DType::f64));
  return sqrt(sum(mul(W, W), {1}));
}

// max_i |got_i - want_i| / |want_i|
double max_rel(const Tensor& got, const Tensor& want) {
  BOOST_REQUIRE(got.shape() == want.shape());
  const auto g = got.to_vector(), w = want.to_vector();
  double e = 0;
  for (size_t i = 0; i < g.size(); ++i) e = std::max(e, std::abs(g[i] - w[i]) / std::abs(w[i]));
  return e;
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  const auto va = a.to_vector(), vb = b.to_vector();
  double d = 0;
  for (size_t i = 0; i < va.size(); ++i) d = std::max(d, std::abs(va[i] - vb[i]));
  return d;
}

LoraOptions dora_opts(int64_t r, double alpha, bool rslora = false) {
  LoraOptions o;
  o.r = r;
  o.alpha = alpha;
  o.use_dora = true;
  o.use_rslora = rslora;
  o.init = LoraInit::random;  // B != 0
  return o;
}

}  // namespace

BOOST_AUTO_TEST_CASE(float64_matches_dense_formula) {
  struct Case { int64_t out, in, r; double alpha, bscale; bool rslora; };
  for (const Case c : {Case{5, 7, 2, 4, 1, false}, Case{33, 17, 8, 16, 0.1, false}, Case{16, 64, 16, 8, 3, true},
                       Case{64, 48, 4, 8, 0.01, false}, Case{7, 3, 5, 5, 1, false} /* r > in */}) {
    BOOST_TEST_CONTEXT("out " << c.out << " in " << c.in << " r " << c.r) {
      Generator gen(static_cast<uint64_t>(c.out * 100 + c.in));
      auto base = std::make_shared<nn::Linear>(c.in, c.out, true, gen, DType::f64);
      LoraLinear lay(base, "default", dora_opts(c.r, c.alpha, c.rslora));
      // m starts at n (computed the new way by add_adapter).
      BOOST_TEST(max_rel(lay.magnitude("default").detach(), dense_norm(base->weight, lay)) <= 1e-13);
      lay.lora_B_weight("default").mul_(c.bscale);
      const Tensor n = lay.dora_row_norm("default");
      BOOST_TEST(n.dtype() == DType::f64);
      const double e = max_rel(n, dense_norm(base->weight, lay));
      BOOST_TEST_MESSAGE("relative difference " << e);
      BOOST_TEST(e <= 1e-13);
    }
  }
}

BOOST_AUTO_TEST_CASE(float32_matches_dense_formula) {
  Generator gen(3);
  auto base = std::make_shared<nn::Linear>(256, 128, true, gen, DType::f32);
  LoraLinear lay(base, "default", dora_opts(8, 16));
  lay.lora_B_weight("default").mul_(0.1);
  const Tensor n = lay.dora_row_norm("default");
  BOOST_TEST(n.dtype() == DType::f32);
  const double e = max_rel(n, dense_norm(base->weight, lay));
  BOOST_TEST_MESSAGE("float32 relative difference " << e);
  BOOST_TEST(e <= 1e-6);
}

// NF4 base: ||W0_row||^2 from the codes decoded row by row, W0 A^T through
// nf4_linear; the same as the dense formula over the dequantised weight.
BOOST_AUTO_TEST_CASE(nf4_matches_dense_formula_over_dequantised_weight) {
  Generator gen(5);
  nn::Linear lin(96, 40, true, gen, DType::f32);
  auto q = lora::quantize_base("nf4", lin, {64, true});
  LoraLinear lay(q, "default", dora_opts(4, 8));
  lay.lora_B_weight("default").mul_(0.2);
  const Tensor W0 = q->dense_weight();
  BOOST_TEST(max_rel(lay.dora_row_norm("default"), dense_norm(W0, lay)) <= 1e-6);
  // float64 adapter over the same codes (nf4_linear's float64 path): float64 agreement.
  lay.to(DType::f64);
  BOOST_TEST(lay.lora_A_weight("default").dtype() == DType::f64);
  const double e = max_rel(lay.dora_row_norm("default"), dense_norm(W0, lay));
  BOOST_TEST_MESSAGE("NF4 float64 relative difference " << e);
  BOOST_TEST(e <= 1e-13);
  // The squared row norms equal the dequantised weight's exactly (same values, same order).
  const auto sq = lay.base_row_sq_norms();
  const auto w = W0.to_vector();
  for (int64_t i = 0; i < 40; ++i) {
    double acc = 0;
    for (int64_t j = 0; j < 96; ++j) acc += w[i * 96 + j] * w[i * 96 + j];
    BOOST_TEST((*sq)[i] == acc);
  }
}

// W0 = -s B A + a small residue: n is tiny. The expansion alone would lose
// ~eps * (||W0|| / n)^2 relative accuracy (7e-12, 2e-7, 6e-4 for the first three
// residues); such rows are recomputed directly (lora_linear.hpp), so n agrees
// with the dense formula. An exact cancellation gives 0 (never NaN).
BOOST_AUTO_TEST_CASE(near_cancellation) {
  const int64_t out = 6, in = 10, r = 3;
  Generator gen(7);
  const Tensor A = randn({r, in}, gen, DType::f64);
  const Tensor B = randn({out, r}, gen, DType::f64);
  LoraOptions o = dora_opts(r, r);  // s = 1
  for (double residue : {1e-2, 1e-4, 1e-6, 1e-9, 0.0}) {
    BOOST_TEST_CONTEXT("residue " << residue) {
      const Tensor R = randn({out, in}, gen, DType::f64);
      Tensor W0;
      {
        NoGradGuard no_grad;
        W0 = add(neg(matmul(B, A)), mul(R, scalar(residue, DType::f64)));
      }
      auto base = std::make_shared<nn::Linear>(W0.clone(), Tensor());
      LoraLinear lay(base, "default", o);
      lay.lora_A_weight("default").copy_(A);
      lay.lora_B_weight("default").copy_(B);
      const Tensor n = lay.dora_row_norm("default");
      const Tensor want = dense_norm(W0, lay);
      const auto nv = n.to_vector(), wv = want.to_vector(), c = *lay.base_row_sq_norms();
      for (int64_t i = 0; i < out; ++i) {
        BOOST_TEST(std::isfinite(nv[i]));
        BOOST_TEST(nv[i] >= 0.0);
        // Both are round-off when the residue is 0: ~eps * ||W0_i||.
        BOOST_TEST(std::abs(nv[i] - wv[i]) <= 1e-14 * std::sqrt(c[i]));
      }
      if (residue > 0) {
        BOOST_TEST_MESSAGE("residue " << residue << ": relative difference " << max_rel(n, want));
        if (residue >= 1e-2) BOOST_TEST(max_rel(n, want) <= 1e-13);
      }
    }
  }
  // Exact cancellation with exactly representable values: n = 0 exactly.
  auto base = std::make_shared<nn::Linear>(from_values({-2, -4, -3, -6}, {2, 2}, DType::f64), Tensor());
  LoraLinear lay(base, "default", dora_opts(1, 1));  // s = 1, B A = [[1], [1.5]] [2, 4]
  lay.lora_A_weight("default").copy_(from_values({2, 4}, {1, 2}, DType::f64));
  lay.lora_B_weight("default").copy_(from_values({1, 1.5}, {2, 1}, DType::f64));
  const Tensor n = lay.dora_row_norm("default");
  BOOST_TEST(n.at({0}) == 0.0);
  BOOST_TEST(n.at({1}) == 0.0);
  // Half the rows cancelling, the other half not: each row gets its own path.
  auto base2 = std::make_shared<nn::Linear>(from_values({-2, -4, 3, 6}, {2, 2}, DType::f64), Tensor());
  LoraLinear lay2(base2, "default", dora_opts(1, 1));
  lay2.lora_A_weight("default").copy_(from_values({2, 4}, {1, 2}, DType::f64));
  lay2.lora_B_weight("default").copy_(from_values({1, 1.5}, {2, 1}, DType::f64));
  const Tensor n2 = lay2.dora_row_norm("default");
  BOOST_TEST(n2.at({0}) == 0.0);
  BOOST_TEST(n2.at({1}) == std::sqrt(36.0 + 144.0));  // row (6, 12)
}

// A float32 adapter over an NF4 base with a cancelling row takes the direct path too.
BOOST_AUTO_TEST_CASE(near_cancellation_nf4_float32) {
  Generator gen(29);
  nn::Linear lin(64, 4, false, gen, DType::f32);
  auto q = lora::quantize_base("nf4", lin, {64, false});
  LoraOptions o = dora_opts(1, 1);  // s = 1
  LoraLinear lay(q, "default", o);
  // B A = -W0 on row 0 up to float32 rounding: A = row 0 of W0, B = (-1, 0.5, 0, 0).
  const Tensor W0 = q->dense_weight();
  lay.lora_A_weight("default").copy_(reshape(narrow(W0, 0, 0, 1), {1, 64}));
  lay.lora_B_weight("default").copy_(from_values(std::vector<double>{-1.0, 0.5, 0.0, 0.0}, {4, 1}, DType::f32));
  const Tensor n = lay.dora_row_norm("default");
  const Tensor want = dense_norm(W0, lay);
  BOOST_TEST(n.at({0}) == 0.0);
  BOOST_TEST(want.at({0}) == 0.0);
  BOOST_TEST(max_rel(narrow(n, 0, 1, 3), narrow(want, 0, 1, 3)) <= 1e-6);
}

// ||W0_row||^2 is computed once and reused while the base weight is unchanged;
// every kind of change to the base weight is seen, and the norm follows.
BOOST_AUTO_TEST_CASE(cache_follows_the_base_weight) {
  Generator gen(11);
  auto base = std::make_shared<nn::Linear>(12, 9, true, gen, DType::f64);
  LoraLinear lay(base, "default", dora_opts(3, 6));
  NoGradGuard no_grad;
  const Tensor x = randn({4, 12}, gen, DType::f64);
  const int64_t c0 = lay.base_row_sq_norm_computations();
  BOOST_TEST(c0 == 1);  // add_adapter computed m = n
  lay.forward(x);
  lay.forward(x);
  lay.dora_row_norm("default");
  BOOST_TEST(lay.base_row_sq_norm_computations() == c0);  // reused

  auto expect_follows = [&](const char* what, int64_t computations) {
    BOOST_TEST_CONTEXT(what) {
      BOOST_TEST(lay.base_row_sq_norm_computations() == computations);
      BOOST_TEST(max_rel(lay.dora_row_norm("default"), dense_norm(base->weight, lay)) <= 1e-13);
      BOOST_TEST(lay.base_row_sq_norm_computations() == computations + 1);
      // forward uses the new norm: y = base(x) + (m/n - 1) W0 x + (m/n) s B A x
      const Tensor mn = div(lay.magnitude("default"), dense_norm(base->weight, lay));
      const Tensor Wfull = add(base->weight, lay.delta_weight("default"));
      const Tensor want = add(mul(linear(x, Wfull), reshape(mn, {1, 9})), reshape(base->bias, {1, 9}));
      BOOST_TEST(max_abs_diff(lay.forward(x), want) <= 1e-12);
      BOOST_TEST(lay.base_row_sq_norm_computations() == computations + 1);
    }
  };
  base->weight.mul_(1.5);  // in place
  expect_follows("mul_", c0);
  base->weight.set({2, 3}, 4.0);  // one element
  expect_follows("set", c0 + 1);
  base->weight.add_(randn({9, 12}, gen, DType::f64), 0.3);
  expect_follows("add_", c0 + 2);
  base->weight.copy_(randn({9, 12}, gen, DType::f64));
  expect_follows("copy_", c0 + 3);
  base->weight.data<double>()[5] = 7.0;  // a raw write must bump the version itself
  base->weight.bump_version();
  expect_follows("raw write + bump_version", c0 + 4);
  base->weight = randn({9, 12}, gen, DType::f64);  // a new tensor (same version number 0)
  expect_follows("replaced tensor", c0 + 5);
  Tensor shared = base->weight.detach();  // a view of the same storage, written in place
  shared.fill_(0.25);
  expect_follows("write through a view", c0 + 6);
  // The bias does not enter n.
  base->bias.fill_(1.0);
  lay.dora_row_norm("default");
  BOOST_TEST(lay.base_row_sq_norm_computations() == c0 + 7);
}

// merge / unmerge write the base weight; the cached norms must follow both ways,
// and forward after unmerge equals forward before merge.
BOOST_AUTO_TEST_CASE(merge_unmerge_invalidate) {
  Generator gen(13);
  auto base = std::make_shared<nn::Linear>(20, 10, true, gen, DType::f64);
  LoraLinear lay(base, "default", dora_opts(4, 8));
  NoGradGuard no_grad;
  lay.magnitude("default").mul_(1.3);
  const Tensor x = randn({5, 20}, gen, DType::f64);
  const Tensor W0 = base->weight.clone();
  const Tensor y = lay.forward(x);
  lay.merge();
  // merged: W = (m/n) (W0 + s B A); forward is base(x) and equals y.
  BOOST_TEST(max_abs_diff(lay.forward(x), y) <= 1e-12);
  // The norm of an adapter over the merged weight is that of the merged weight.
  BOOST_TEST(max_rel(lay.dora_row_norm("default"), dense_norm(base->weight, lay)) <= 1e-13);
  lay.unmerge();
  BOOST_TEST(max_abs_diff(base->weight, W0) <= 1e-14);
  BOOST_TEST(max_rel(lay.dora_row_norm("default"), dense_norm(W0, lay)) <= 1e-13);
  BOOST_TEST(max_abs_diff(lay.forward(x), y) <= 1e-12);
  // Twice more, with the cache warm in between.
  for (int k = 0; k < 2; ++k) {
    lay.merge();
    BOOST_TEST(max_abs_diff(lay.forward(x), y) <= 1e-12);
    lay.unmerge();
    BOOST_TEST(max_abs_diff(lay.forward(x), y) <= 1e-12);
  }
}

// A trainable base: every optimizer step changes W0 in place (and bumps its
// version); n must be recomputed from the new W0 at the next forward.
BOOST_AUTO_TEST_CASE(trainable_base_under_an_optimizer) {
  Generator gen(17);
  auto base = std::make_shared<nn::Linear>(8, 6, true, gen, DType::f64);
  LoraLinear lay(base, "default", dora_opts(2, 4));
  base->requires_grad_(true);
  optim::SGD opt(lay.parameters(), 0.1);
  const Tensor x = randn({3, 8}, gen, DType::f64);
  for (int step = 0; step < 3; ++step) {
    opt.zero_grad();
    sum(mul(lay.forward(x), lay.forward(x))).backward();
    BOOST_REQUIRE(base->weight.grad().defined());
    opt.step();
    BOOST_TEST(max_rel(lay.dora_row_norm("default"), dense_norm(base->weight, lay)) <= 1e-13);
  }
}

// NF4: merge requantises (a new NF4Tensor), and so does set_weight.
BOOST_AUTO_TEST_CASE(nf4_requantisation_invalidates) {
  Generator gen(19);
  nn::Linear lin(64, 8, true, gen, DType::f32);
  auto q = lora::quantize_base("nf4", lin, {64, true});
  LoraLinear lay(q, "default", dora_opts(4, 8));
  lay.lora_B_weight("default").mul_(0.1);
  lay.dora_row_norm("default");
  const int64_t c0 = lay.base_row_sq_norm_computations();
  lay.merge();
  BOOST_TEST(max_rel(lay.dora_row_norm("default"), dense_norm(q->dense_weight(), lay)) <= 1e-6);
  BOOST_TEST(lay.base_row_sq_norm_computations() == c0 + 1);
  lay.unmerge();
  BOOST_TEST(max_rel(lay.dora_row_norm("default"), dense_norm(q->dense_weight(), lay)) <= 1e-6);
  BOOST_TEST(lay.base_row_sq_norm_computations() == c0 + 2);
  q->set_weight(mul(q->dense_weight(), scalar(2.0)));  // requantised
  BOOST_TEST(max_rel(lay.dora_row_norm("default"), dense_norm(q->dense_weight(), lay)) <= 1e-6);
  BOOST_TEST(lay.base_row_sq_norm_computations() == c0 + 3);
}

// A DoRA forward + backward (with dropout: W0 x_d too) allocates nothing of
// the weight's size: no W0 + s B A, no B A, no dequantised NF4 weight. One
// token, so the activations are small; the dense weight is 512 KiB.
BOOST_AUTO_TEST_CASE(no_weight_sized_temporaries) {
  const int64_t out = 256, in = 512;
  for (bool nf4 : {false, true}) {
    for (double p : {0.0, 0.1}) {
      BOOST_TEST_CONTEXT("nf4 " << nf4 << " dropout " << p) {
        Generator gen(23);
        auto lin = std::make_shared<nn::Linear>(in, out, true, gen, DType::f32);
        nn::ModulePtr base = lin;
        if (nf4) base = lora::quantize_base("nf4", *lin, {64, true});
        LoraOptions o = dora_opts(8, 16);
        o.dropout = p;
        LoraLinear lay(base, "default", o);
        const Tensor x = randn({1, in}, gen);
        sum(lay.forward(x)).backward();  // warm-up (the norm cache)
        for (auto& t : lay.parameters()) t.zero_grad();
        const size_t before = memory::live_bytes();
        memory::reset_peak();
        sum(lay.forward(x)).backward();
        const size_t extra = memory::peak_bytes() - before;
        BOOST_TEST_MESSAGE("peak extra " << extra << " bytes");
        // The gradients of A (16 KiB) and B (8 KiB), and vectors: far below one weight (512 KiB).
        BOOST_TEST(extra < static_cast<size_t>(out * in * 4 / 8));
      }
    }
  }
}

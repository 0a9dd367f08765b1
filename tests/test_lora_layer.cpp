// LoraLinear (LoRA, rsLoRA, DoRA, PiSSA) against HF PEFT 0.21 reference numbers
// (tests/reference/fixtures/peft/, made by tests/reference/make_peft_fixtures.py),
// the seed document's worked example, and the layer's adapter bookkeeping.
#define BOOST_TEST_MODULE test_lora_layer
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstring>
#include <memory>
#include <string>

#include "loragrad/autograd.hpp"
#include "loragrad/lora/base_storage.hpp"
#include "loragrad/lora/linalg.hpp"
#include "loragrad/lora/lora_linear.hpp"
#include "loragrad/nn/layers.hpp"
#include "loragrad/ops.hpp"
#include "loragrad/quant/nf4.hpp"
#include "loragrad/safetensors.hpp"

using namespace loragrad;
using lora::LoraInit;
using lora::LoraLinear;
using lora::LoraOptions;

namespace {

const std::string kPeftDir = std::string(LORAGRAD_FIXTURE_DIR) + "/peft/";

// max |got - want| relative to max |want| (absolute when want is all zeros).
double rel_err(const Tensor& got, const Tensor& want) {
  BOOST_REQUIRE_MESSAGE(got.shape() == want.shape(),
                        "shape " + shape_str(got.shape()) + " vs " + shape_str(want.shape()));
  const auto g = got.to_vector(), w = want.to_vector();
  double diff = 0, scale = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    diff = std::max(diff, std::abs(g[i] - w[i]));
    scale = std::max(scale, std::abs(w[i]));
  }
  return scale > 0 ? diff / scale : diff;
}

#define CHECK_CLOSE_T(got, want, tol)                                              \
  do {                                                                             \
    const double e_ = rel_err((got), (want));                                      \
    BOOST_TEST_MESSAGE(#got << ": relative error " << e_);                        \
    BOOST_TEST_CONTEXT(#got << " vs " << #want) { BOOST_TEST(e_ <= (tol)); }       \
  } while (0)

bool bit_equal(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  return std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

// Run `f` and require it to throw E whose message contains every fragment.
template <class E, class F>
void check_throws(F&& f, std::initializer_list<const char*> fragments) {
  try {
    f();
  } catch (const E& e) {
    const std::string msg = e.what();
    for (const char* frag : fragments)
      BOOST_TEST(msg.find(frag) != std::string::npos, "message '" << msg << "' lacks '" << frag << "'");
    return;
  } catch (const std::exception& e) {
    BOOST_FAIL("wrong exception type: " << e.what());
  }
  BOOST_FAIL("no exception thrown");
}

std::shared_ptr<nn::Linear> linear_from(const Tensor& W, const Tensor& b = Tensor()) {
  return std::make_shared<nn::Linear>(W.clone(), b.defined() ? b.clone() : Tensor());
}

// Copy the fixture's adapter into the layer's parameters.
void load_adapter(LoraLinear& lay, const SafetensorsFile& f, const std::string& name = "default") {
  NoGradGuard no_grad;
  lay.lora_A_weight(name).copy_(f.at("A"));
  lay.lora_B_weight(name).copy_(f.at("B"));
  if (f.contains("m")) lay.magnitude(name).copy_(f.at("m"));
}

}  // namespace

// ---------------------------------------------------------------------------
// PEFT conformance: forward, backward and merge of one nn.Linear(7, 5), float64.
// ---------------------------------------------------------------------------

void check_peft_case(const std::string& name) {
  BOOST_TEST_MESSAGE("case " << name);
  const SafetensorsFile f = load_safetensors(kPeftDir + "layer_" + name + ".safetensors");
  LoraOptions o;
  o.r = std::stoll(f.metadata.at("r"));
  o.alpha = std::stod(f.metadata.at("alpha"));
  o.use_rslora = f.metadata.at("use_rslora") == "true";
  o.use_dora = f.metadata.at("use_dora") == "true";
  const Tensor W0 = f.at("W0");
  auto lay = std::make_shared<LoraLinear>(linear_from(W0, f.at("b0")), "default", o);
  load_adapter(*lay, f);

  Tensor x = f.at("x").clone();  // (2, 3, 7)
  x.requires_grad_(true);
  const Tensor y = lay->forward(x);  // (2, 3, 5)
  const Tensor loss = sum(mul(y, f.at("wout")));
  loss.backward();
  const double tol = 1e-10;
  CHECK_CLOSE_T(y, f.at("y"), tol);
  CHECK_CLOSE_T(reshape(loss, {1}), reshape(f.at("loss"), {1}), tol);  // the fixture stores it as [1]
  CHECK_CLOSE_T(lay->lora_A_weight("default").grad(), f.at("grad.A"), tol);
  CHECK_CLOSE_T(lay->lora_B_weight("default").grad(), f.at("grad.B"), tol);
  if (o.use_dora) CHECK_CLOSE_T(lay->magnitude("default").grad(), f.at("grad.m"), tol);
  CHECK_CLOSE_T(x.grad(), f.at("grad.x"), tol);
  // The frozen base gets no gradient at all.
  auto base = std::dynamic_pointer_cast<nn::Linear>(lay->base_layer);
  BOOST_TEST(!base->weight.grad().defined());
  BOOST_TEST(!base->bias.grad().defined());

  // merge: the base weight becomes PEFT's merged weight, forward becomes base(x).
  lay->merge();
  BOOST_TEST(lay->merged());
  CHECK_CLOSE_T(base->weight, f.at("merged.W"), tol);
  {
    NoGradGuard no_grad;
    CHECK_CLOSE_T(lay->forward(f.at("x")), f.at("merged.y"), tol);
  }
  // unmerge: back to W0 (subtracting again rounds: not bit-exact, but close).
  lay->unmerge();
  BOOST_TEST(!lay->merged());
  CHECK_CLOSE_T(base->weight, W0, 1e-14);
  NoGradGuard no_grad;
  CHECK_CLOSE_T(lay->forward(f.at("x")), f.at("y"), 1e-10);
}

BOOST_AUTO_TEST_CASE(peft_lora) { check_peft_case("lora"); }
BOOST_AUTO_TEST_CASE(peft_rslora) { check_peft_case("rslora"); }
BOOST_AUTO_TEST_CASE(peft_dora) { check_peft_case("dora"); }
BOOST_AUTO_TEST_CASE(peft_dora_rslora) { check_peft_case("dora_rslora"); }

BOOST_AUTO_TEST_CASE(peft_parameter_names_and_freezing) {
  const SafetensorsFile f = load_safetensors(kPeftDir + "layer_dora.safetensors");
  LoraOptions o;
  o.r = std::stoll(f.metadata.at("r"));
  o.alpha = std::stod(f.metadata.at("alpha"));
  o.use_dora = true;
  LoraLinear lay(linear_from(f.at("W0"), f.at("b0")), "default", o);
  const NamedTensors p = lay.named_parameters();
  BOOST_REQUIRE_EQUAL(p.size(), 5u);
  BOOST_TEST(p[0].first == "base_layer.weight");
  BOOST_TEST(p[1].first == "base_layer.bias");
  BOOST_TEST(p[2].first == "lora_A.default.weight");
  BOOST_TEST(p[3].first == "lora_B.default.weight");
  BOOST_TEST(p[4].first == "lora_magnitude_vector.default.weight");
  BOOST_TEST(!p[0].second.requires_grad());
  BOOST_TEST(!p[1].second.requires_grad());
  BOOST_TEST(p[2].second.requires_grad());
  BOOST_TEST(p[3].second.requires_grad());
  BOOST_TEST(p[4].second.requires_grad());
  const int64_t r = o.r;
  BOOST_TEST(lay.num_parameters(true) == r * 7 + 5 * r + 5);
  BOOST_TEST(lay.adapter_bytes() == size_t(r * 7 + 5 * r + 5) * sizeof(double));
  BOOST_TEST(lay.type_name() == "lora.Linear");
  // m starts at the row norms of W0 (B = 0 at creation).
  const Tensor W0 = f.at("W0");
  for (int64_t i = 0; i < 5; ++i) {
    double s = 0;
    for (int64_t j = 0; j < 7; ++j) s += W0.at({i, j}) * W0.at({i, j});
    BOOST_TEST(lay.magnitude("default").at({i}) == std::sqrt(s), boost::test_tools::tolerance(1e-15));
  }
}

// PiSSA: PEFT computed it in float32, so 1e-5 relative. Signs of singular
// vectors are arbitrary: compare B A and the residual base weight.
BOOST_AUTO_TEST_CASE(peft_pissa) {
  const SafetensorsFile f = load_safetensors(kPeftDir + "layer_pissa.safetensors");
  LoraOptions o;
  o.r = std::stoll(f.metadata.at("r"));
  o.alpha = std::stod(f.metadata.at("alpha"));
  o.init = LoraInit::pissa;
  const Tensor W0 = f.at("W0");
  LoraLinear lay(linear_from(W0), "default", o);
  const Tensor A = lay.lora_A_weight("default"), B = lay.lora_B_weight("default");
  NoGradGuard no_grad;
  CHECK_CLOSE_T(matmul(B, A), matmul(f.at("B"), f.at("A")), 1e-5);
  auto base = std::dynamic_pointer_cast<nn::Linear>(lay.base_layer);
  CHECK_CLOSE_T(base->weight, f.at("residual.W"), 1e-5);
  // In float64 the split is exact to rounding: residual + s B A = W0, so the
  // adapted layer starts as the original layer.
  CHECK_CLOSE_T(add(base->weight, lay.delta_weight("default")), W0, 1e-14);
  // A's rows are orthogonal (scaled right singular vectors), as are B's columns.
  const Tensor AAt = matmul_nt(A, A), BtB = matmul_tn(B, B);
  BOOST_TEST(std::abs(AAt.at({0, 1})) < 1e-12);
  BOOST_TEST(std::abs(BtB.at({0, 1})) < 1e-12);
  // PiSSA needs r <= min(in, out).
  LoraOptions big = o;
  big.r = 6;
  check_throws<ValueError>([&] { LoraLinear l2(linear_from(W0), "default", big); }, {"PiSSA", "r <= min"});
}

// ---------------------------------------------------------------------------
// The seed document's worked example (docs/seed-notes.md): a 4x5 layer, r = 2.
// ---------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(seed_worked_example) {
  const Tensor W0 = from_values({1, 0, -1, 2, 0.5,   //
                                 0, 1, 0, -1, 1,     //
                                 0.5, -0.5, 1, 0, 0,  //
                                 1.5, 0, 0, 1, -0.5},
                                {4, 5}, DType::f64);
  const Tensor A = from_values({0.2, -0.1, 0, 0.3, -0.2,  //
                                0, 0.1, 0.4, -0.2, 0.1},
                               {2, 5}, DType::f64);
  const Tensor B = from_values({0.5, 0.1, -0.3, 0.2, 0, -0.4, 0.2, 0.3}, {4, 2}, DType::f64);
  LoraOptions o;
  o.r = 2;
  o.alpha = 16;
  BOOST_TEST(o.scale() == 8.0);
  LoraLinear lay(linear_from(W0), "default", o);
  {
    NoGradGuard no_grad;
    lay.lora_A_weight("default").copy_(A);
    lay.lora_B_weight("default").copy_(B);
  }
  // 18 trainable parameters: r (d_in + d_out) = 2 (5 + 4); the base's 20 are frozen.
  BOOST_TEST(lay.num_parameters(/*trainable_only=*/true) == 18);
  BOOST_TEST(lay.num_parameters() == 38);

  const Tensor dW_expected = from_values({0.10, -0.04, 0.04, 0.13, -0.09,  //
                                          -0.06, 0.05, 0.08, -0.13, 0.08,  //
                                          0, -0.04, -0.16, 0.08, -0.04,    //
                                          0.04, 0.01, 0.12, 0, -0.01},
                                         {4, 5}, DType::f64);
  CHECK_CLOSE_T(lay.delta_weight("default"), mul(dW_expected, scalar(8.0, DType::f64)), 1e-12);

  const Tensor x = from_values({1, -1, 0.5, 0, 2}, {1, 5}, DType::f64);
  const Tensor y_expected = from_values({1.34, 1.72, 0.54, 1.06}, {1, 4}, DType::f64);
  NoGradGuard no_grad;
  const Tensor y = lay.forward(x);  // W0 x + 8 B (A x), two thin matmuls
  for (int64_t i = 0; i < 4; ++i) BOOST_TEST(std::abs(y.at({0, i}) - y_expected.at({0, i})) <= 1e-12);

  // Merged: W = W0 + 8 dW, as printed in the document.
  const Tensor W_expected = from_values({1.8, -0.32, -0.68, 3.04, -0.22,  //
                                         -0.48, 1.4, 0.64, -2.04, 1.64,   //
                                         0.5, -0.82, -0.28, 0.64, -0.32,  //
                                         1.82, 0.08, 0.96, 1, -0.58},
                                        {4, 5}, DType::f64);
  lay.merge();
  auto base = std::dynamic_pointer_cast<nn::Linear>(lay.base_layer);
  for (int64_t i = 0; i < 4; ++i)
    for (int64_t j = 0; j < 5; ++j) BOOST_TEST(std::abs(base->weight.at({i, j}) - W_expected.at({i, j})) <= 1e-12);
  const Tensor y_merged = lay.forward(x);
  for (int64_t i = 0; i < 4; ++i) BOOST_TEST(std::abs(y_merged.at({0, i}) - y_expected.at({0, i})) <= 1e-12);
  lay.unmerge();
  CHECK_CLOSE_T(base->weight, W0, 1e-15);
}

// ---------------------------------------------------------------------------
// Exactness: disabled / zero-B / eval-mode adapters give the base output bit for bit.
// ---------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(disabled_and_zero_b_are_bit_identical_to_base) {
  for (DType dt : {DType::f32, DType::f64}) {
    for (bool dora : {false, true}) {
      Generator gen(5);
      auto base = std::make_shared<nn::Linear>(16, 12, true, gen, dt);
      const Tensor x = randn({3, 4, 16}, gen, dt);
      Tensor y_base;
      {
        NoGradGuard no_grad;
        y_base = base->forward(x);
      }
      LoraOptions o;
      o.r = 4;
      o.alpha = 8;
      o.use_dora = dora;
      o.seed = 9;
      LoraLinear lay(base, "zero_b", o);  // standard init: B = 0 (and m = ||W0||_row for DoRA)
      NoGradGuard no_grad;
      BOOST_TEST(bit_equal(lay.forward(x), y_base));

      o.init = LoraInit::random;  // B != 0: the adapter changes the output...
      lay.add_adapter("random_b", o);
      lay.set_adapter("random_b");
      BOOST_TEST(!bit_equal(lay.forward(x), y_base));
      lay.disable_adapters(true);  // ...until disabled
      BOOST_TEST(lay.adapters_disabled());
      BOOST_TEST(bit_equal(lay.forward(x), y_base));
      lay.disable_adapters(false);
      BOOST_TEST(!bit_equal(lay.forward(x), y_base));
    }
  }
}

BOOST_AUTO_TEST_CASE(merge_unmerge_round_trip) {
  for (bool dora : {false, true}) {
    Generator gen(3);
    auto base = std::make_shared<nn::Linear>(9, 6, true, gen, DType::f64);
    const Tensor W0 = base->weight.clone();
    const Tensor x = randn({5, 9}, gen, DType::f64);
    LoraOptions o;
    o.r = 3;
    o.alpha = 6;
    o.use_dora = dora;
    o.init = LoraInit::random;
    LoraLinear lay(base, "default", o);
    if (dora) {  // move m away from n so the DoRA factor is not 1
      NoGradGuard no_grad;
      lay.magnitude("default").mul_(1.3);
    }
    NoGradGuard no_grad;
    const Tensor y = lay.forward(x);
    lay.merge();
    BOOST_TEST(lay.merged_adapter() == "default");
    CHECK_CLOSE_T(lay.forward(x), y, 1e-13);
    lay.merge();  // no-op when merged
    CHECK_CLOSE_T(lay.forward(x), y, 1e-13);
    lay.unmerge();
    CHECK_CLOSE_T(base->weight, W0, 1e-14);
    CHECK_CLOSE_T(lay.forward(x), y, 1e-13);
    lay.unmerge();  // no-op when not merged
    CHECK_CLOSE_T(base->weight, W0, 1e-14);

    // Disabling or switching adapters unmerges first (as PEFT).
    lay.merge();
    lay.disable_adapters(true);
    BOOST_TEST(!lay.merged());
    CHECK_CLOSE_T(base->weight, W0, 1e-14);
    lay.disable_adapters(false);
    lay.merge();
    lay.add_adapter("other", o);
    lay.set_adapter("other");
    BOOST_TEST(!lay.merged());
    CHECK_CLOSE_T(base->weight, W0, 1e-14);
    // A merged adapter cannot be deleted.
    lay.merge();
    check_throws<ValueError>([&] { lay.delete_adapter("other"); }, {"delete_adapter", "other", "unmerge"});
    lay.unmerge();
    lay.delete_adapter("other");
  }
}

// With dropout, training mode: y = base(x) + s B A dropout(x) (LoRA) and PEFT's
// DoRA dropout formula; the mask is the adapter's own Generator's. Eval: no dropout.
BOOST_AUTO_TEST_CASE(dropout_formulas) {
  for (bool dora : {false, true}) {
    Generator gen(21);
    auto base = std::make_shared<nn::Linear>(8, 5, true, gen, DType::f64);
    const Tensor x = randn({4, 8}, gen, DType::f64);
    LoraOptions o;
    o.r = 2;
    o.alpha = 3;
    o.dropout = 0.4;
    o.use_dora = dora;
    o.init = LoraInit::random;
    LoraLinear lay(base, "default", o);
    if (dora) {
      NoGradGuard no_grad;
      lay.magnitude("default").mul_(0.8);
    }
    NoGradGuard no_grad;
    const double s = lay.scaling("default");
    const Tensor A = lay.lora_A_weight("default"), B = lay.lora_B_weight("default");
    Generator mask_gen = *lay.dropout_module("default").gen;  // the state the layer will draw from
    const Tensor y = lay.forward(x);
    const Tensor xd = dropout(x, 0.4, true, mask_gen);
    const Tensor lora_part = mul(matmul_nt(matmul_nt(xd, A), B), scalar(s, DType::f64));
    Tensor want;
    if (!dora) {
      want = add(base->forward(x), lora_part);
    } else {
      // y = W0 x + b + (m/n - 1) (W0 x_d) + (m/n) s B A x_d, n = ||W0 + s B A||_row
      const Tensor Wm = add(base->weight, lay.delta_weight("default"));
      const Tensor n = sqrt(sum(mul(Wm, Wm), {1}));
      const Tensor mn = div(lay.magnitude("default"), n);
      want = add(base->forward(x),
                 add(mul(sub(mn, scalar(1.0, DType::f64)), linear(xd, base->weight)), mul(mn, lora_part)));
    }
    CHECK_CLOSE_T(y, want, 1e-14);
    BOOST_TEST(!bit_equal(xd, x));  // the mask did drop something

    lay.eval();  // no dropout in eval mode
    BOOST_TEST(!lay.dropout_module("default").is_training());
    Tensor want_eval;
    if (!dora) {
      want_eval = add(base->forward(x), mul(matmul_nt(matmul_nt(x, A), B), scalar(s, DType::f64)));
    } else {
      const Tensor Wm = add(base->weight, lay.delta_weight("default"));
      const Tensor n = sqrt(sum(mul(Wm, Wm), {1}));
      const Tensor mn = div(lay.magnitude("default"), n);
      want_eval = add(mul(mn, linear(x, Wm)), base->bias);
    }
    CHECK_CLOSE_T(lay.forward(x), want_eval, 1e-14);
  }
}

// ---------------------------------------------------------------------------
// Issue 8, defect 7: gradients reaching an UNFROZEN base layer. PEFT's DoRA
// (DoraLinearVariant.forward + DoraLinearLayer.forward) uses the live base:
//   no dropout, or eval:  base_result = base_layer(x) - base_layer.bias   (both live)
//   dropout, training:    base_result = F.linear(dropout(x), base_layer.weight)  (live)
// and only the row norm n is detached. So with W0, b trainable:
//   y = W0 x + b + (m/n - 1) (W0 x_d) + (m/n) s B A x_d
//   dL/db = g,  dL/dW0 = g x^T + diag(m/n - 1) g x_d^T (+ the B A term's, zero here).
// ---------------------------------------------------------------------------

namespace {

struct UnfrozenBase {
  std::shared_ptr<nn::Linear> base;
  std::unique_ptr<LoraLinear> lay;
};

// The issue's layer: W0 = I2, b = (0.5, -0.5), B = 0 (standard init), m = (2, 3)
// for DoRA, so n = ||I2||_row = (1, 1) and m/n = (2, 3). Base weight and bias
// made trainable after wrapping (LoraLinear freezes them).
UnfrozenBase unfrozen_base_layer(bool dora, double p) {
  UnfrozenBase u;
  u.base = std::make_shared<nn::Linear>(from_values({1, 0, 0, 1}, {2, 2}, DType::f64),
                                        from_values({0.5, -0.5}, {2}, DType::f64));
  LoraOptions o;
  o.r = 1;
  o.alpha = 1;
  o.dropout = p;
  o.use_dora = dora;
  o.init = LoraInit::standard;  // B = 0
  o.seed = 3;
  u.lay = std::make_unique<LoraLinear>(u.base, "default", o);
  if (dora) {
    NoGradGuard no_grad;
    u.lay->magnitude("default").copy_(from_values({2, 3}, {2}, DType::f64));
  }
  u.base->weight.requires_grad_(true);
  u.base->bias.requires_grad_(true);
  return u;
}

}  // namespace

BOOST_AUTO_TEST_CASE(dora_unfrozen_base_gradients_issue_numbers) {
  // Train mode, no dropout, and eval mode with dropout configured (PEFT then takes
  // the same base_result = result - bias path): identical numbers.
  for (bool eval : {false, true}) {
    BOOST_TEST_CONTEXT("eval " << eval) {
      UnfrozenBase u = unfrozen_base_layer(/*dora=*/true, eval ? 0.5 : 0.0);
      if (eval) u.lay->eval();
      const Tensor x = ones({1, 2}, DType::f64);
      const Tensor y = u.lay->forward(x);
      sum(y).backward();  // upstream gradient g = ones
      // y = (m/n) W0 x + b = (2 + 0.5, 3 - 0.5)
      CHECK_CLOSE_T(y, from_values({2.5, 2.5}, {1, 2}, DType::f64), 1e-15);
      // PEFT: db = g = [1, 1] (the bias enters once: base(x) - b cancels it in base_result).
      BOOST_REQUIRE(u.base->bias.grad().defined());
      CHECK_CLOSE_T(u.base->bias.grad(), from_values({1, 1}, {2}, DType::f64), 1e-15);
      // dW0 = diag(m/n) g x^T = [[2, 2], [3, 3]] (n constant).
      BOOST_REQUIRE(u.base->weight.grad().defined());
      CHECK_CLOSE_T(u.base->weight.grad(), from_values({2, 2, 3, 3}, {2, 2}, DType::f64), 1e-15);
      // dm = g * (W0 x) / n = [1, 1].
      CHECK_CLOSE_T(u.lay->magnitude("default").grad(), from_values({1, 1}, {2}, DType::f64), 1e-15);
    }
  }
}

BOOST_AUTO_TEST_CASE(dora_unfrozen_base_gradients_with_dropout) {
  // Training with dropout: base_result = W0 x_d with the live W0.
  const double p = 0.5;
  UnfrozenBase u = unfrozen_base_layer(/*dora=*/true, p);
  const Tensor x = ones({1, 2}, DType::f64);
  u.lay->dropout_module("default").gen->manual_seed(5);
  Generator mask_gen = *u.lay->dropout_module("default").gen;  // the state the layer will draw from
  const Tensor y = u.lay->forward(x);
  sum(y).backward();
  const std::vector<double> xd = dropout(x, p, true, mask_gen).to_vector();
  BOOST_TEST_MESSAGE("x_d = (" << xd[0] << ", " << xd[1] << ")");
  BOOST_REQUIRE(xd[0] != xd[1]);  // one kept (2), one dropped (0): both branches of the formula matter
  const double mn[2] = {2, 3};
  // y_i = x_i + b_i + (mn_i - 1) x_d_i;  dW0_ij = x_j + (mn_i - 1) x_d_j;  db = 1
  CHECK_CLOSE_T(y, from_values({1 + 0.5 + (mn[0] - 1) * xd[0], 1 - 0.5 + (mn[1] - 1) * xd[1]}, {1, 2}, DType::f64),
                1e-15);
  std::vector<double> dW(4);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) dW[i * 2 + j] = 1 + (mn[i] - 1) * xd[j];
  BOOST_REQUIRE(u.base->weight.grad().defined());
  CHECK_CLOSE_T(u.base->weight.grad(), from_values(dW, {2, 2}, DType::f64), 1e-15);
  CHECK_CLOSE_T(u.base->bias.grad(), from_values({1, 1}, {2}, DType::f64), 1e-15);
}

BOOST_AUTO_TEST_CASE(lora_unfrozen_base_gradients) {
  // Plain LoRA: y = W0 x + b + s B A x_d, so db = g and dW0 = g x^T, with or without dropout.
  for (double p : {0.0, 0.5}) {
    BOOST_TEST_CONTEXT("p " << p) {
      UnfrozenBase u = unfrozen_base_layer(/*dora=*/false, p);
      sum(u.lay->forward(ones({1, 2}, DType::f64))).backward();
      CHECK_CLOSE_T(u.base->bias.grad(), from_values({1, 1}, {2}, DType::f64), 1e-15);
      CHECK_CLOSE_T(u.base->weight.grad(), from_values({1, 1, 1, 1}, {2, 2}, DType::f64), 1e-15);
    }
  }
}

// ---------------------------------------------------------------------------
// Init schemes.
// ---------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(init_schemes) {
  Generator gen(1);
  auto base = std::make_shared<nn::Linear>(64, 48, false, gen, DType::f32);
  LoraOptions o;
  o.r = 8;
  o.alpha = 16;
  o.seed = 42;
  LoraLinear lay(base, "std", o);
  const Tensor A = lay.lora_A_weight("std");
  BOOST_TEST(A.dtype() == DType::f32);
  BOOST_TEST(A.shape() == (Shape{8, 64}));
  BOOST_TEST(lay.lora_B_weight("std").shape() == (Shape{48, 8}));
  double amax = 0;
  for (double v : A.to_vector()) amax = std::max(amax, std::abs(v));
  BOOST_TEST(amax <= 1 / std::sqrt(64.0));  // kaiming_uniform(a = sqrt(5)) bound
  BOOST_TEST(amax > 0.9 / std::sqrt(64.0));
  for (double v : lay.lora_B_weight("std").to_vector()) BOOST_TEST(v == 0.0);

  // Deterministic in the seed.
  LoraLinear again(std::make_shared<nn::Linear>(base->weight.clone(), Tensor()), "std", o);
  BOOST_TEST(bit_equal(again.lora_A_weight("std"), A));

  // gaussian: A ~ N(0, std = 1/r), B = 0.
  o.init = LoraInit::gaussian;
  lay.add_adapter("gauss", o);
  const std::vector<double> g = lay.lora_A_weight("gauss").to_vector();  // 512 draws
  double mean = 0, var = 0;
  for (double v : g) mean += v;
  mean /= g.size();
  for (double v : g) var += (v - mean) * (v - mean);
  const double sd = std::sqrt(var / (g.size() - 1));
  BOOST_TEST(std::abs(mean) < 0.03);
  BOOST_TEST(std::abs(sd - 1.0 / 8) < 0.015);
  for (double v : lay.lora_B_weight("gauss").to_vector()) BOOST_TEST(v == 0.0);

  // random (init_lora_weights = false): B is nn.Linear's default, not zero.
  o.init = LoraInit::random;
  lay.add_adapter("rand", o);
  double bmax = 0;
  for (double v : lay.lora_B_weight("rand").to_vector()) bmax = std::max(bmax, std::abs(v));
  BOOST_TEST(bmax > 0);
  BOOST_TEST(bmax <= 1 / std::sqrt(8.0));

  BOOST_TEST(std::string(lora::lora_init_name(LoraInit::standard)) == "true");
  BOOST_TEST(std::string(lora::lora_init_name(LoraInit::gaussian)) == "gaussian");
  BOOST_TEST(std::string(lora::lora_init_name(LoraInit::pissa)) == "pissa");
  BOOST_TEST(std::string(lora::lora_init_name(LoraInit::random)) == "false");
}

BOOST_AUTO_TEST_CASE(scale_rules) {
  LoraOptions o;
  o.r = 16;
  o.alpha = 32;
  BOOST_TEST(o.scale() == 2.0);
  o.use_rslora = true;
  BOOST_TEST(o.scale() == 8.0);  // 32 / sqrt(16)
}

// ---------------------------------------------------------------------------
// Several adapters on one layer.
// ---------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(multi_adapter) {
  Generator gen(8);
  auto base = std::make_shared<nn::Linear>(6, 4, true, gen, DType::f64);
  const Tensor x = randn({3, 6}, gen, DType::f64);
  LoraOptions oa;
  oa.r = 2;
  oa.alpha = 4;
  oa.init = LoraInit::random;
  oa.seed = 1;
  LoraOptions ob = oa;
  ob.r = 3;
  ob.seed = 2;
  ob.use_dora = true;
  LoraLinear lay(base);
  BOOST_TEST(lay.active_adapter().empty());
  BOOST_TEST(lay.adapter_bytes() == 0u);
  NoGradGuard no_grad;
  BOOST_TEST(bit_equal(lay.forward(x), base->forward(x)));  // no adapter: the base

  lay.add_adapter("b_task", ob);
  lay.add_adapter("a_task", oa);
  BOOST_TEST(lay.active_adapter() == "b_task");  // the first added stays active
  BOOST_TEST((lay.adapter_names() == std::vector<std::string>{"b_task", "a_task"}));
  BOOST_TEST(lay.is_dora("b_task"));
  BOOST_TEST(!lay.is_dora("a_task"));
  // Only the active adapter is trainable.
  BOOST_TEST(lay.lora_A_weight("b_task").requires_grad());
  BOOST_TEST(lay.magnitude("b_task").requires_grad());
  BOOST_TEST(!lay.lora_A_weight("a_task").requires_grad());
  BOOST_TEST(!lay.lora_B_weight("a_task").requires_grad());
  BOOST_TEST(lay.num_parameters(true) == 3 * 6 + 4 * 3 + 4);
  BOOST_TEST(lay.adapter_bytes("a_task") == size_t(2 * 6 + 4 * 2) * 8);
  BOOST_TEST(lay.adapter_bytes() == size_t(2 * 6 + 4 * 2 + 3 * 6 + 4 * 3 + 4) * 8);

  const Tensor y_b = lay.forward(x);
  lay.set_adapter("a_task");
  BOOST_TEST(lay.active_adapter() == "a_task");
  BOOST_TEST(lay.lora_A_weight("a_task").requires_grad());
  BOOST_TEST(!lay.lora_A_weight("b_task").requires_grad());
  BOOST_TEST(!lay.magnitude("b_task").requires_grad());
  const Tensor y_a = lay.forward(x);
  const Tensor want_a = add(base->forward(x), mul(matmul_nt(matmul_nt(x, lay.lora_A_weight("a_task")),
                                                            lay.lora_B_weight("a_task")),
                                                  scalar(lay.scaling("a_task"), DType::f64)));
  CHECK_CLOSE_T(y_a, want_a, 1e-15);
  BOOST_TEST(!bit_equal(y_a, y_b));

  // Names in the tree follow the adapter names.
  bool found = false;
  for (const auto& kv : lay.named_parameters()) found |= kv.first == "lora_magnitude_vector.b_task.weight";
  BOOST_TEST(found);

  // Deleting the active adapter activates the alphabetically first remaining one.
  lay.add_adapter("c_task", oa);
  lay.delete_adapter("a_task");
  BOOST_TEST(lay.active_adapter() == "b_task");
  BOOST_TEST((lay.adapter_names() == std::vector<std::string>{"b_task", "c_task"}));
  CHECK_CLOSE_T(lay.forward(x), y_b, 0.0);
  for (const auto& kv : lay.named_parameters()) BOOST_TEST(kv.first.find("a_task") == std::string::npos);
  BOOST_TEST(lay.lora_A->keys() == (std::vector<std::string>{"b_task", "c_task"}));
  lay.delete_adapter("b_task");
  BOOST_TEST(lay.active_adapter() == "c_task");
  BOOST_TEST(lay.lora_magnitude_vector->empty());
  lay.delete_adapter("c_task");
  BOOST_TEST(lay.active_adapter().empty());
  BOOST_TEST(lay.named_parameters().size() == 2u);  // the base's weight and bias
  BOOST_TEST(bit_equal(lay.forward(x), base->forward(x)));
  // A train / eval switch still reaches the rebuilt containers.
  lay.add_adapter("d", oa);
  lay.eval();
  BOOST_TEST(!lay.dropout_module("d").is_training());
}

// ---------------------------------------------------------------------------
// Errors.
// ---------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(errors) {
  Generator gen(2);
  auto base = std::make_shared<nn::Linear>(6, 4, true, gen, DType::f64);
  LoraOptions bad;
  bad.r = 0;
  check_throws<ValueError>([&] { LoraLinear l(base, "x", bad); }, {"add_adapter", "rank r", "0"});
  bad.r = -3;
  check_throws<ValueError>([&] { bad.validate(); }, {"LoraOptions", "rank r", "-3"});
  bad = LoraOptions();
  bad.dropout = 1.0;
  check_throws<ValueError>([&] { LoraLinear l(base, "x", bad); }, {"add_adapter", "lora_dropout", "[0, 1)"});
  bad.dropout = -0.1;
  check_throws<ValueError>([&] { bad.validate("here"); }, {"here", "lora_dropout"});
  bad = LoraOptions();
  bad.alpha = 0;
  check_throws<ValueError>([&] { bad.validate(); }, {"lora_alpha", "positive"});
  bad.alpha = std::nan("");
  check_throws<ValueError>([&] { bad.validate(); }, {"lora_alpha"});

  // Wrong base type, and no base.
  check_throws<ValueError>([&] { LoraLinear l(std::make_shared<nn::LayerNorm>(4)); },
                           {"LoraLinear", "nn::Linear", "LayerNorm"});
  check_throws<ValueError>([&] { LoraLinear l(nullptr); }, {"LoraLinear", "null"});

  LoraLinear lay(base, "default", LoraOptions());
  // Unknown adapter names.
  check_throws<ValueError>([&] { lay.set_adapter("nope"); }, {"set_adapter", "'nope'", "'default'"});
  check_throws<ValueError>([&] { lay.delete_adapter("nope"); }, {"delete_adapter", "'nope'"});
  check_throws<ValueError>([&] { lay.lora_A_weight("nope"); }, {"lora_A_weight", "'nope'"});
  check_throws<ValueError>([&] { lay.scaling("nope"); }, {"scaling", "'nope'"});
  // Bad new names.
  check_throws<ValueError>([&] { lay.add_adapter("default", LoraOptions()); }, {"add_adapter", "already exists"});
  check_throws<ValueError>([&] { lay.add_adapter("a.b", LoraOptions()); }, {"add_adapter", "without '.'"});
  check_throws<ValueError>([&] { lay.add_adapter("", LoraOptions()); }, {"add_adapter", "non-empty"});
  // magnitude() of a plain LoRA adapter.
  check_throws<ValueError>([&] { lay.magnitude("default"); }, {"magnitude", "not a DoRA adapter"});
  // Input of the wrong width: the base layer's own error.
  check_throws<ShapeError>([&] { lay.forward(zeros({2, 5}, DType::f64)); }, {"linear"});
  // The layer state is unchanged after the failed calls.
  BOOST_TEST((lay.adapter_names() == std::vector<std::string>{"default"}));
  BOOST_TEST(lay.active_adapter() == "default");
}

// ---------------------------------------------------------------------------
// The SVD behind PiSSA.
// ---------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(svd_reconstructs) {
  Generator gen(4);
  for (Shape sh : {Shape{5, 7}, Shape{7, 5}, Shape{6, 6}, Shape{1, 4}, Shape{4, 1}}) {
    const Tensor a = randn(sh, gen, DType::f64);
    const lora::Svd d = lora::svd(a);
    const int64_t k = std::min(sh[0], sh[1]);
    BOOST_TEST(d.U.shape() == (Shape{sh[0], k}));
    BOOST_TEST(d.S.shape() == (Shape{k}));
    BOOST_TEST(d.Vh.shape() == (Shape{k, sh[1]}));
    // a = U diag(S) Vh
    const Tensor us = mul(d.U, reshape(d.S, {1, k}));
    CHECK_CLOSE_T(matmul(us, d.Vh), a, 1e-14);
    // orthonormal columns / rows, descending non-negative values
    CHECK_CLOSE_T(matmul_tn(d.U, d.U), [&] {
      Tensor I = zeros({k, k}, DType::f64);
      for (int64_t i = 0; i < k; ++i) I.set({i, i}, 1);
      return I;
    }(), 1e-14);
    CHECK_CLOSE_T(matmul_nt(d.Vh, d.Vh), [&] {
      Tensor I = zeros({k, k}, DType::f64);
      for (int64_t i = 0; i < k; ++i) I.set({i, i}, 1);
      return I;
    }(), 1e-14);
    for (int64_t i = 0; i + 1 < k; ++i) BOOST_TEST(d.S.at({i}) >= d.S.at({i + 1}));
    BOOST_TEST(d.S.at({k - 1}) >= 0);
  }
  // A rank-deficient matrix: singular values 3, 2, 0 and an orthonormal U all the same.
  const Tensor u = from_values({1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0}, {4, 3}, DType::f64);
  const Tensor low = from_values({3, 0, 0, 0, 0, -2, 0, 0, 0}, {3, 3}, DType::f64);
  const lora::Svd d = lora::svd(matmul(u, low));
  BOOST_TEST(d.S.at({0}) == 3.0, boost::test_tools::tolerance(1e-15));
  BOOST_TEST(d.S.at({1}) == 2.0, boost::test_tools::tolerance(1e-15));
  BOOST_TEST(std::abs(d.S.at({2})) < 1e-15);
  const Tensor UtU = matmul_tn(d.U, d.U);
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 3; ++j) BOOST_TEST(std::abs(UtU.at({i, j}) - (i == j ? 1.0 : 0.0)) < 1e-14);

  // low_rank_factors: B A is the best rank-r approximation.
  const Tensor a = randn({6, 5}, gen, DType::f64);
  auto [B, A] = lora::low_rank_factors(a, 2);
  BOOST_TEST(B.shape() == (Shape{6, 2}));
  BOOST_TEST(A.shape() == (Shape{2, 5}));
  const lora::Svd full = lora::svd(a);
  const Tensor top2 = matmul(mul(narrow(full.U, 1, 0, 2), reshape(narrow(full.S, 0, 0, 2), {1, 2})),
                             narrow(full.Vh, 0, 0, 2));
  CHECK_CLOSE_T(matmul(B, A), top2, 1e-14);
  check_throws<ValueError>([&] { lora::low_rank_factors(a, 6); }, {"low_rank_factors", "rank r"});
  check_throws<ShapeError>([&] { lora::svd(zeros({2, 2, 2}, DType::f64)); }, {"svd", "2-d"});
}

// ---------------------------------------------------------------------------
// An NF4 base (QLoRA): the dense weight the layer sees is the dequantised one,
// and a merge is dequantise, add, requantise (lossy, as with bitsandbytes).
// ---------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(nf4_base_merge) {
  for (bool dora : {false, true}) {
    BOOST_TEST_MESSAGE("NF4 merge, dora " << dora);
    Generator gen(13);
    nn::Linear lin(64, 8, true, gen, DType::f32);
    auto q = lora::quantize_base("nf4", lin, {64, true});
    LoraOptions o;
    o.r = 4;
    o.alpha = 8;
    o.use_dora = dora;
    o.init = LoraInit::random;
    LoraLinear lay(q, "default", o);
    BOOST_TEST(lay.type_name() == "lora.Linear4bit");
    BOOST_TEST(lay.in_features == 64);
    BOOST_TEST(lay.out_features == 8);
    BOOST_TEST(lay.lora_A_weight("default").dtype() == DType::f32);
    const Tensor W0 = q->dense_weight();
    BOOST_TEST(bit_equal(lay.base_weight(), W0));
    NoGradGuard no_grad;
    if (dora) {  // m starts at the row norms of the dequantised weight plus s B A
      const Tensor W = add(W0, lay.delta_weight("default"));
      CHECK_CLOSE_T(lay.magnitude("default"), sqrt(sum(mul(W, W), {1})), 1e-6);
      lay.magnitude("default").mul_(1.1);
    }
    // A realistic update: s B A a fraction of W0 (nn.Linear's default B would
    // make it 4x larger than W0, and the requantisation error with it).
    lay.lora_B_weight("default").mul_(0.1);
    BOOST_TEST(rel_err(lay.delta_weight("default"), W0) > 0.1);  // not negligible either

    const Tensor x = randn({4, 64}, gen, DType::f32);
    const Tensor y = lay.forward(x);
    Tensor want = add(W0, lay.delta_weight("default"));  // W0 + s B A
    if (dora) {
      const Tensor n = sqrt(sum(mul(want, want), {1}));
      want = mul(reshape(div(lay.magnitude("default"), n), {8, 1}), want);
    }
    lay.merge();
    const Tensor Wm = q->dense_weight();
    // Each requantisation moves an element by at most about half the widest
    // code-book gap (0.28 / 2) times its block's absmax (a bit more with
    // double-quantised scales): 0.16 of the largest |value|, 0.32 after two.
    if (!dora)  // the same dense sum requantised with the same settings: the same codes
      BOOST_TEST(bit_equal(Wm, quantize_nf4(want, 64, true).dequantize()));
    CHECK_CLOSE_T(Wm, want, 0.16);
    CHECK_CLOSE_T(lay.forward(x), y, 0.1);
    lay.unmerge();
    if (!dora)
      BOOST_TEST(bit_equal(q->dense_weight(),
                           quantize_nf4(sub(Wm, lay.delta_weight("default")), 64, true).dequantize()));
    CHECK_CLOSE_T(q->dense_weight(), W0, 0.32);
  }
}

BOOST_AUTO_TEST_CASE(nf4_base_pissa) {
  Generator gen(17);
  nn::Linear lin(32, 16, false, gen, DType::f32);
  auto q = lora::quantize_base("nf4", lin, {64, false});
  const Tensor W0 = q->dense_weight();
  LoraOptions o;
  o.r = 4;
  o.alpha = 4;
  o.init = LoraInit::pissa;
  LoraLinear lay(q, "default", o);
  NoGradGuard no_grad;
  // The adapter holds the top-4 part of the dequantised W0; the base the (requantised) rest.
  auto [B, A] = lora::low_rank_factors(W0, 4);
  CHECK_CLOSE_T(lay.delta_weight("default"), matmul(B, A), 1e-5);
  CHECK_CLOSE_T(add(q->dense_weight(), lay.delta_weight("default")), W0, 0.15);
}

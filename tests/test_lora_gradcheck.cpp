// float64 gradcheck of LoraLinear: LoRA and DoRA, with and without dropout,
// with respect to x, A, B and the DoRA magnitude m.
//
// DoRA's row norm n = ||W0 + s B A||_row is detached in PEFT (DoRA paper,
// section 4.3): the analytic gradient for A and B deliberately ignores how n
// moves with them. A finite difference in A or B does move n, so the full layer
// cannot be gradchecked w.r.t. A and B. Instead:
//   * w.r.t. x and m the full layer is gradchecked (n does not depend on them);
//   * w.r.t. A and B we gradcheck a reference function that computes n from
//     frozen copies A0, B0 (never perturbed), and check that the layer's output
//     and its analytic gradients equal that reference's at the point A = A0,
//     B = B0. Together: the layer's A/B gradients are the derivative of DoRA
//     with n held constant, as intended.
// With dropout, each evaluation re-seeds the adapter's Generator so every
// evaluation sees the same mask (the function being differentiated is fixed).
#define BOOST_TEST_MODULE test_lora_gradcheck
#include <boost/test/unit_test.hpp>

#include <memory>
#include <string>

#include "loragrad/autograd.hpp"
#include "loragrad/gradcheck.hpp"
#include "loragrad/lora/lora_linear.hpp"
#include "loragrad/lora/nf4.hpp"
#include "loragrad/nn/layers.hpp"
#include "loragrad/ops.hpp"

using namespace loragrad;
using lora::LoraInit;
using lora::LoraLinear;
using lora::LoraOptions;

namespace {

constexpr uint64_t kMaskSeed = 77;

struct Setup {
  std::shared_ptr<nn::Linear> base;
  std::shared_ptr<LoraLinear> lay;
  Tensor x, A, B, m;  // the layer's values now (detached copies)
};

Setup make(bool dora, double p, bool rslora = false) {
  Setup s;
  Generator gen(31);
  s.base = std::make_shared<nn::Linear>(5, 4, true, gen, DType::f64);
  LoraOptions o;
  o.r = 3;
  o.alpha = 5;
  o.dropout = p;
  o.use_dora = dora;
  o.use_rslora = rslora;
  o.init = LoraInit::random;  // B != 0, or B's gradient would be the only nonzero adapter effect
  o.seed = 4;
  s.lay = std::make_shared<LoraLinear>(s.base, "default", o);  // training mode: dropout active
  if (dora) {  // move m off n, so m/n != 1
    NoGradGuard no_grad;
    s.lay->magnitude("default").mul_(1.25);
    s.m = s.lay->magnitude("default").clone();
  }
  s.x = randn({2, 3, 5}, gen, DType::f64);
  s.A = s.lay->lora_A_weight("default").clone();
  s.B = s.lay->lora_B_weight("default").clone();
  return s;
}

// The layer as a function of (x, A, B[, m]): the inputs become its parameters.
GradcheckFn layer_fn(const Setup& s) {
  auto lay = s.lay;
  return [lay](const std::vector<Tensor>& in) {
    lay->lora_A_weight("default") = in[1];
    lay->lora_B_weight("default") = in[2];
    if (in.size() > 3) lay->magnitude("default") = in[3];
    lay->dropout_module("default").gen->manual_seed(kMaskSeed);  // the same mask every evaluation
    return lay->forward(in[0]);
  };
}

Tensor with_grad(const Tensor& t) {
  Tensor c = t.clone();
  c.requires_grad_(true);
  return c;
}

void expect_ok(const GradcheckResult& r) { BOOST_TEST(r.ok, r.report); }

}  // namespace

BOOST_AUTO_TEST_CASE(lora_all_inputs) {
  for (double p : {0.0, 0.3}) {
    for (bool rslora : {false, true}) {
      BOOST_TEST_MESSAGE("LoRA p = " << p << " rslora " << rslora);
      Setup s = make(false, p, rslora);
      expect_ok(gradcheck(layer_fn(s), {with_grad(s.x), with_grad(s.A), with_grad(s.B)}));
    }
  }
}

BOOST_AUTO_TEST_CASE(dora_x_and_m_full_layer) {
  for (double p : {0.0, 0.3}) {
    BOOST_TEST_MESSAGE("DoRA p = " << p);
    Setup s = make(true, p);
    // A and B held constant (no requires_grad): n is then a constant as well.
    expect_ok(gradcheck(layer_fn(s), {with_grad(s.x), s.A, s.B, with_grad(s.m)}));
  }
}

// DoRA written out with ops, n from the frozen A0, B0 (PEFT's formula):
// y = W0 x + b + (m/n - 1) (W0 x_d) + (m/n) s B (A x_d).
Tensor dora_reference(const Setup& s, double scale, double p, const std::vector<Tensor>& in) {
  const Tensor &x = in[0], &A = in[1], &B = in[2], &m = in[3];
  Tensor n;
  {
    NoGradGuard no_grad;
    const Tensor W = add(s.base->weight, mul(matmul(s.B, s.A), scalar(scale, DType::f64)));
    n = sqrt(sum(mul(W, W), {1}));  // (out), from frozen copies: never perturbed
  }
  Generator mask(kMaskSeed);
  const Tensor xd = p > 0 ? dropout(x, p, true, mask) : x;
  const Tensor mn = div(m, n);
  const Tensor lora = mul(matmul_nt(matmul_nt(xd, A), B), scalar(scale, DType::f64));
  return add(linear(x, s.base->weight, s.base->bias),
             add(mul(sub(mn, scalar(1.0, DType::f64)), linear(xd, s.base->weight)), mul(mn, lora)));
}

BOOST_AUTO_TEST_CASE(dora_a_b_with_frozen_norm) {
  for (double p : {0.0, 0.3}) {
    BOOST_TEST_MESSAGE("DoRA p = " << p);
    Setup s = make(true, p);
    const double scale = s.lay->scaling("default");
    auto ref = [&](const std::vector<Tensor>& in) { return dora_reference(s, scale, p, in); };

    // 1. The reference's A/B/m/x gradients are right (numerically, n fixed).
    expect_ok(gradcheck(ref, {with_grad(s.x), with_grad(s.A), with_grad(s.B), with_grad(s.m)}));

    // 2. The layer computes the same output and the same analytic gradients.
    Generator gen(99);
    const Tensor wout = randn({2, 3, 4}, gen, DType::f64);
    std::vector<Tensor> ins = {with_grad(s.x), with_grad(s.A), with_grad(s.B), with_grad(s.m)};
    std::vector<Tensor> ref_ins = {with_grad(s.x), with_grad(s.A), with_grad(s.B), with_grad(s.m)};
    const Tensor y = layer_fn(s)(ins);
    const Tensor y_ref = ref(ref_ins);
    sum(mul(y, wout)).backward();
    sum(mul(y_ref, wout)).backward();
    auto max_diff = [](const Tensor& a, const Tensor& b) {
      const auto va = a.to_vector(), vb = b.to_vector();
      double d = 0;
      for (size_t i = 0; i < va.size(); ++i) d = std::max(d, std::abs(va[i] - vb[i]));
      return d;
    };
    BOOST_TEST(max_diff(y, y_ref) < 1e-13);
    const char* names[] = {"x", "A", "B", "m"};
    for (size_t i = 0; i < 4; ++i) {
      BOOST_TEST_CONTEXT("grad " << names[i]) {
        BOOST_REQUIRE(ins[i].grad().defined());
        BOOST_TEST(max_diff(ins[i].grad(), ref_ins[i].grad()) < 1e-13);
      }
    }
  }
}

// The full DoRA layer is NOT the derivative of itself w.r.t. A (n moves with A):
// this documents why the check above uses a frozen-norm reference.
BOOST_AUTO_TEST_CASE(dora_full_layer_a_is_not_a_true_gradient) {
  Setup s = make(true, 0.0);
  const GradcheckResult r = gradcheck(layer_fn(s), {s.x, with_grad(s.A), s.B, s.m});
  BOOST_TEST(!r.ok);
}

// ---------------------------------------------------------------------------
// LoRA / DoRA over an NF4 base (QLoRA). NF4Linear computes in float64 when given
// float64 input (its weight decoded to float64), so after to(f64) the whole
// layer can be gradchecked in float64 w.r.t. x, A, B (and m for DoRA, with the
// same frozen-norm caveat as above: x and m only for DoRA).
// ---------------------------------------------------------------------------

namespace {

struct QSetup {
  std::shared_ptr<lora::NF4Linear> qbase;
  std::shared_ptr<LoraLinear> qlay;    // over the NF4 base
  std::shared_ptr<LoraLinear> dense;   // over an nn::Linear holding the dequantised weight
};

QSetup make_qlora(bool dora, double p) {
  QSetup q;
  Generator gen(12);
  nn::Linear lin(32, 6, true, gen, DType::f32);
  q.qbase = std::make_shared<lora::NF4Linear>(lin, /*blocksize=*/64, /*double_quant=*/true);
  LoraOptions o;
  o.r = 4;
  o.alpha = 8;
  o.dropout = p;
  o.use_dora = dora;
  o.init = LoraInit::random;
  o.seed = 6;
  q.qlay = std::make_shared<LoraLinear>(q.qbase, "default", o);
  q.dense = std::make_shared<LoraLinear>(
      std::make_shared<nn::Linear>(q.qbase->dequantize(), q.qbase->bias.clone()), "default", o);
  if (dora) {
    NoGradGuard no_grad;
    q.qlay->magnitude("default").mul_(0.9);
    q.dense->magnitude("default").mul_(0.9);
  }
  return q;
}

}  // namespace

BOOST_AUTO_TEST_CASE(qlora_float64_gradcheck) {
  for (bool dora : {false, true}) {
    for (double p : {0.0, 0.25}) {
      BOOST_TEST_MESSAGE("QLoRA dora " << dora << " p = " << p);
      QSetup q = make_qlora(dora, p);
      BOOST_TEST(q.qlay->base_is_nf4());
      BOOST_TEST(q.qlay->type_name() == "lora.Linear4bit");
      q.qlay->to(DType::f64);  // adapters and bias to float64; the NF4 codes stay
      BOOST_REQUIRE(q.qlay->lora_A_weight("default").dtype() == DType::f64);
      Generator gen(5);
      const Tensor x = randn({2, 32}, gen, DType::f64);
      auto lay = q.qlay;
      GradcheckFn fn = [lay](const std::vector<Tensor>& in) {
        lay->lora_A_weight("default") = in[1];
        lay->lora_B_weight("default") = in[2];
        if (in.size() > 3) lay->magnitude("default") = in[3];
        lay->dropout_module("default").gen->manual_seed(kMaskSeed);
        return lay->forward(in[0]);
      };
      const Tensor A = lay->lora_A_weight("default").clone(), B = lay->lora_B_weight("default").clone();
      if (!dora) {
        expect_ok(gradcheck(fn, {with_grad(x), with_grad(A), with_grad(B)}));
      } else {
        expect_ok(gradcheck(fn, {with_grad(x), A, B, with_grad(lay->magnitude("default").clone())}));
      }
    }
  }
}

// In float32, the QLoRA layer equals LoRA over a dense layer holding the
// dequantised weight: outputs and gradients to 1e-5 relative.
BOOST_AUTO_TEST_CASE(qlora_float32_matches_dense_dequantised) {
  for (bool dora : {false, true}) {
    for (double p : {0.0, 0.25}) {
      BOOST_TEST_MESSAGE("QLoRA dora " << dora << " p = " << p);
      QSetup q = make_qlora(dora, p);
      Generator gen(7);
      const Tensor x0 = randn({3, 5, 32}, gen, DType::f32);
      const Tensor wout = randn({3, 5, 6}, gen, DType::f32);
      std::vector<Tensor> grads[2];
      Tensor ys[2];
      int k = 0;
      for (auto& lay : {q.qlay, q.dense}) {
        lay->dropout_module("default").gen->manual_seed(kMaskSeed);
        Tensor x = with_grad(x0);
        ys[k] = lay->forward(x);
        sum(mul(ys[k], wout)).backward();
        grads[k] = {x.grad(), lay->lora_A_weight("default").grad(), lay->lora_B_weight("default").grad()};
        if (dora) grads[k].push_back(lay->magnitude("default").grad());
        ++k;
      }
      auto rel = [](const Tensor& a, const Tensor& b) {
        const auto va = a.to_vector(), vb = b.to_vector();
        double d = 0, sc = 0;
        for (size_t i = 0; i < va.size(); ++i) {
          d = std::max(d, std::abs(va[i] - vb[i]));
          sc = std::max(sc, std::abs(vb[i]));
        }
        return d / sc;
      };
      BOOST_TEST(rel(ys[0], ys[1]) < 1e-5);
      for (size_t i = 0; i < grads[0].size(); ++i) BOOST_TEST(rel(grads[0][i], grads[1][i]) < 1e-5, "grad " << i);
      // The NF4 base has no weight parameter at all: nothing to train, nothing to store a gradient in.
      for (const auto& kv : q.qlay->named_parameters())
        BOOST_TEST(kv.first.find("base_layer.weight") == std::string::npos);
    }
  }
}

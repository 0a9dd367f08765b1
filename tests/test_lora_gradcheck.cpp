// float64 gradcheck of LoraLinear: LoRA and DoRA, with and without dropout
// (training mode; and eval mode with dropout configured), with respect to x,
// the base weight W0 and bias b (made trainable, as a user may), A, B and the
// DoRA magnitude m.
//
// DoRA's row norm n = ||W0 + s B A||_row is detached in PEFT (DoRA paper,
// section 4.3; PEFT's DoraLinearLayer.forward: weight_norm.detach()): the
// analytic gradients for W0, A and B deliberately ignore how n moves with them.
// A finite difference in W0, A or B does move n, so the full layer cannot be
// gradchecked w.r.t. W0, A and B. Instead:
//   * w.r.t. x, b and m the full layer is gradchecked (n does not depend on them);
//   * w.r.t. W0, A and B we gradcheck a reference function that computes n from
//     frozen copies W00, A0, B0 (never perturbed), and check that the layer's
//     output and its analytic gradients equal that reference's at the point
//     W0 = W00, A = A0, B = B0. Together: the layer's W0/A/B gradients are the
//     derivative of DoRA with n held constant, as PEFT's are.
// With dropout, each evaluation re-seeds the adapter's Generator so every
// evaluation sees the same mask (the function being differentiated is fixed).
#define BOOST_TEST_MODULE test_lora_gradcheck
#include <boost/test/unit_test.hpp>

#include <memory>
#include <string>
#include <vector>

#include "loragrad/autograd.hpp"
#include "loragrad/gradcheck.hpp"
#include "loragrad/lora/base_storage.hpp"
#include "loragrad/lora/lora_linear.hpp"
#include "loragrad/nn/layers.hpp"
#include "loragrad/ops.hpp"

using namespace loragrad;
using lora::LoraInit;
using lora::LoraLinear;
using lora::LoraOptions;

namespace {

constexpr uint64_t kMaskSeed = 77;

// Inputs of every function below, in this order (m only for DoRA).
enum In { kX = 0, kW, kBias, kA, kB, kM };
const char* const kInNames[] = {"x", "W0", "b", "A", "B", "m"};

struct Setup {
  std::shared_ptr<nn::Linear> base;
  std::shared_ptr<LoraLinear> lay;
  Tensor x, W, b, A, B, m;  // the layer's values now (detached copies)
};

// train = false: eval mode (no dropout even when p > 0).
Setup make(bool dora, double p, bool rslora = false, bool train = true) {
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
  if (!train) s.lay->eval();
  if (dora) {  // move m off n, so m/n != 1
    NoGradGuard no_grad;
    s.lay->magnitude("default").mul_(1.25);
    s.m = s.lay->magnitude("default").clone();
  }
  s.x = randn({2, 3, 5}, gen, DType::f64);
  s.W = s.base->weight.clone();
  s.b = s.base->bias.clone();
  s.A = s.lay->lora_A_weight("default").clone();
  s.B = s.lay->lora_B_weight("default").clone();
  return s;
}

// The layer as a function of (x, W0, b, A, B[, m]): the inputs become its
// parameters, the base's included (so a trainable base is what is checked).
GradcheckFn layer_fn(const Setup& s) {
  auto lay = s.lay;
  auto base = s.base;
  return [lay, base](const std::vector<Tensor>& in) {
    base->weight = in[kW];
    base->bias = in[kBias];
    lay->lora_A_weight("default") = in[kA];
    lay->lora_B_weight("default") = in[kB];
    if (in.size() > kM) lay->magnitude("default") = in[kM];
    lay->dropout_module("default").gen->manual_seed(kMaskSeed);  // the same mask every evaluation
    return lay->forward(in[kX]);
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
  for (bool train : {true, false}) {
    for (double p : {0.0, 0.3}) {
      for (bool rslora : {false, true}) {
        BOOST_TEST_CONTEXT("LoRA train " << train << " p = " << p << " rslora " << rslora) {
          Setup s = make(false, p, rslora, train);
          expect_ok(gradcheck(layer_fn(s), {with_grad(s.x), with_grad(s.W), with_grad(s.b), with_grad(s.A),
                                            with_grad(s.B)}));
        }
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(dora_x_b_and_m_full_layer) {
  for (bool train : {true, false}) {
    for (double p : {0.0, 0.3}) {
      BOOST_TEST_CONTEXT("DoRA train " << train << " p = " << p) {
        Setup s = make(true, p, false, train);
        // W0, A and B held constant (no requires_grad): n is then a constant as
        // well. The bias does not enter n: the full layer is checked for it
        // (issue 8, defect 7: db came out as (m/n) g instead of g).
        expect_ok(gradcheck(layer_fn(s), {with_grad(s.x), s.W, with_grad(s.b), s.A, s.B, with_grad(s.m)}));
      }
    }
  }
}

// DoRA written out with ops, n from the frozen W00, A0, B0 (PEFT's formula):
// y = W0 x + b + (m/n - 1) (W0 x_d) + (m/n) s B (A x_d), with W0, b live.
// dropping: training with p > 0 (otherwise x_d = x).
Tensor dora_reference(const Setup& s, double scale, double p, bool dropping, const std::vector<Tensor>& in) {
  const Tensor &x = in[kX], &W = in[kW], &b = in[kBias], &A = in[kA], &B = in[kB], &m = in[kM];
  Tensor n;
  {
    NoGradGuard no_grad;
    const Tensor Wn = add(s.W, mul(matmul(s.B, s.A), scalar(scale, DType::f64)));
    n = sqrt(sum(mul(Wn, Wn), {1}));  // (out), from frozen copies: never perturbed
  }
  Generator mask(kMaskSeed);
  const Tensor xd = dropping ? dropout(x, p, true, mask) : x;
  const Tensor mn = div(m, n);
  const Tensor lora = mul(matmul_nt(matmul_nt(xd, A), B), scalar(scale, DType::f64));
  return add(linear(x, W, b), add(mul(sub(mn, scalar(1.0, DType::f64)), linear(xd, W)), mul(mn, lora)));
}

double max_diff(const Tensor& a, const Tensor& b) {
  const auto va = a.to_vector(), vb = b.to_vector();
  double d = 0;
  for (size_t i = 0; i < va.size(); ++i) d = std::max(d, std::abs(va[i] - vb[i]));
  return d;
}

BOOST_AUTO_TEST_CASE(dora_all_inputs_with_frozen_norm) {
  for (bool train : {true, false}) {
    for (double p : {0.0, 0.3}) {
      BOOST_TEST_CONTEXT("DoRA train " << train << " p = " << p) {
        Setup s = make(true, p, false, train);
        const double scale = s.lay->scaling("default");
        const bool dropping = train && p > 0;
        auto ref = [&](const std::vector<Tensor>& in) { return dora_reference(s, scale, p, dropping, in); };
        auto all_with_grad = [&] {
          return std::vector<Tensor>{with_grad(s.x), with_grad(s.W), with_grad(s.b),
                                     with_grad(s.A), with_grad(s.B), with_grad(s.m)};
        };

        // 1. The reference's gradients are right (numerically, n fixed).
        expect_ok(gradcheck(ref, all_with_grad()));

        // 2. The layer computes the same output and the same analytic gradients.
        Generator gen(99);
        const Tensor wout = randn({2, 3, 4}, gen, DType::f64);
        std::vector<Tensor> ins = all_with_grad();
        std::vector<Tensor> ref_ins = all_with_grad();
        const Tensor y = layer_fn(s)(ins);
        const Tensor y_ref = ref(ref_ins);
        sum(mul(y, wout)).backward();
        sum(mul(y_ref, wout)).backward();
        BOOST_TEST(max_diff(y, y_ref) < 1e-13);
        for (size_t i = 0; i < ins.size(); ++i) {
          BOOST_TEST_CONTEXT("grad " << kInNames[i]) {
            BOOST_REQUIRE(ins[i].grad().defined());
            BOOST_TEST(max_diff(ins[i].grad(), ref_ins[i].grad()) < 1e-13);
          }
        }
      }
    }
  }
}

// The full DoRA layer is NOT the derivative of itself w.r.t. A or W0 (n moves
// with them): this documents why the check above uses a frozen-norm reference.
BOOST_AUTO_TEST_CASE(dora_full_layer_a_and_w0_are_not_true_gradients) {
  Setup s = make(true, 0.0);
  BOOST_TEST(!gradcheck(layer_fn(s), {s.x, s.W, s.b, with_grad(s.A), s.B, s.m}).ok);
  BOOST_TEST(!gradcheck(layer_fn(s), {s.x, with_grad(s.W), s.b, s.A, s.B, s.m}).ok);
}

// ---------------------------------------------------------------------------
// LoRA / DoRA over an NF4 base (QLoRA). Linear4bit computes in float64 when given
// float64 input (its weight decoded to float64), so after to(f64) the whole
// layer can be gradchecked in float64 w.r.t. x, A, B (and m for DoRA, with the
// same frozen-norm caveat as above: x and m only for DoRA).
// ---------------------------------------------------------------------------

namespace {

struct QSetup {
  std::shared_ptr<nn::LinearBase> qbase;  // storage "nf4"
  std::shared_ptr<LoraLinear> qlay;    // over the NF4 base
  std::shared_ptr<LoraLinear> dense;   // over an nn::Linear holding the dequantised weight
};

QSetup make_qlora(bool dora, double p) {
  QSetup q;
  Generator gen(12);
  nn::Linear lin(32, 6, true, gen, DType::f32);
  q.qbase = lora::quantize_base("nf4", lin, {/*blocksize=*/64, /*double_quant=*/true});
  LoraOptions o;
  o.r = 4;
  o.alpha = 8;
  o.dropout = p;
  o.use_dora = dora;
  o.init = LoraInit::random;
  o.seed = 6;
  q.qlay = std::make_shared<LoraLinear>(q.qbase, "default", o);
  q.dense = std::make_shared<LoraLinear>(
      std::make_shared<nn::Linear>(q.qbase->dense_weight(), q.qbase->bias.clone()), "default", o);
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
      auto qbase = q.qbase;
      // Inputs (x, A, B, bias[, m]); the NF4 base's bias made trainable (its
      // weight is NF4 codes: no parameter). The bias does not enter DoRA's n.
      GradcheckFn fn = [lay, qbase](const std::vector<Tensor>& in) {
        lay->lora_A_weight("default") = in[1];
        lay->lora_B_weight("default") = in[2];
        qbase->bias = in[3];
        if (in.size() > 4) lay->magnitude("default") = in[4];
        lay->dropout_module("default").gen->manual_seed(kMaskSeed);
        return lay->forward(in[0]);
      };
      const Tensor A = lay->lora_A_weight("default").clone(), B = lay->lora_B_weight("default").clone();
      BOOST_REQUIRE(qbase->bias.dtype() == DType::f64);
      const Tensor bias = qbase->bias.clone();
      if (!dora) {
        expect_ok(gradcheck(fn, {with_grad(x), with_grad(A), with_grad(B), with_grad(bias)}));
      } else {
        expect_ok(gradcheck(fn, {with_grad(x), A, B, with_grad(bias), with_grad(lay->magnitude("default").clone())}));
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

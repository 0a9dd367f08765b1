// A guided tour of float64 gradient checks, from one op to a DoRA layer over
// an NF4 (QLoRA) base. Each check compares the analytic Jacobian (one backward
// per output element) with central differences (two forwards per input
// element), as torch.autograd.gradcheck does; see core/.../gradcheck.hpp.
//
// Exits 1 when any check does not come out as expected.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "loragrad/autograd.hpp"
#include "loragrad/gradcheck.hpp"
#include "loragrad/lora/base_storage.hpp"
#include "loragrad/lora/inject.hpp"
#include "loragrad/lora/lora_linear.hpp"
#include "loragrad/nn/layers.hpp"
#include "loragrad/nn/transformer.hpp"
#include "loragrad/ops.hpp"

using namespace loragrad;

namespace {

int g_failures = 0;

// A fresh leaf copy that requires grad: a gradcheck input that is checked.
Tensor checked(const Tensor& t) {
  Tensor c = t.clone();
  c.requires_grad_(true);
  return c;
}

int64_t count_checked(const std::vector<Tensor>& inputs) {
  int64_t n = 0;
  for (const Tensor& t : inputs)
    if (t.requires_grad()) n += t.numel();
  return n;
}

// Runs gradcheck and prints one line. expect_ok = false: the check is meant to fail.
void run_check(const char* what, const GradcheckFn& fn, const std::vector<Tensor>& inputs, bool expect_ok = true) {
  const GradcheckResult r = gradcheck(fn, inputs);
  const bool as_expected = r.ok == expect_ok;
  if (!as_expected) ++g_failures;
  std::printf("  %-44s %4lld values  max |analytic - numeric| = %.2e  %s%s\n", what,
              (long long)count_checked(inputs), r.max_abs_error, r.ok ? "ok" : "not ok",
              expect_ok ? (as_expected ? "" : "  <-- FAIL") : (as_expected ? " (as expected)" : "  <-- FAIL: expected not ok"));
  if (!r.ok && expect_ok) std::printf("    %s\n", r.report.c_str());
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  const std::vector<double> va = a.to_vector(), vb = b.to_vector();
  if (va.size() != vb.size()) return INFINITY;
  double d = 0;
  for (size_t i = 0; i < va.size(); ++i) d = std::max(d, std::abs(va[i] - vb[i]));
  return d;
}

void expect_close(const char* what, const Tensor& a, const Tensor& b, double tol) {
  const double d = max_abs_diff(a, b);
  const bool ok = d <= tol;
  if (!ok) ++g_failures;
  std::printf("  %-44s max |layer - reference| = %.2e  %s\n", what, d, ok ? "ok" : "<-- FAIL");
}

void section(const char* title, const char* text) { std::printf("\n== %s ==\n%s\n", title, text); }

// ---------------------------------------------------------------------------
// (a) One op.
// ---------------------------------------------------------------------------
void tour_single_op() {
  section("(a) One op: layer_norm",
          "  y = (x - mean) / sqrt(var + eps) * w + b over the last dim, x (3, 6).\n"
          "  Checked w.r.t. x, w and b at once: 18 outputs, so 18 backward passes, and\n"
          "  2 forwards per input value for the central differences (eps = 1e-6).");
  Generator gen(1);
  const Tensor x = randn({3, 6}, gen, DType::f64);      // (N, C)
  const Tensor w = randn({6}, gen, DType::f64);         // (C)
  const Tensor b = randn({6}, gen, DType::f64);         // (C)
  auto fn = [](const std::vector<Tensor>& in) { return layer_norm(in[0], in[1], in[2]); };
  run_check("layer_norm w.r.t. x, weight, bias", fn, {checked(x), checked(w), checked(b)});
}

// ---------------------------------------------------------------------------
// (b) LoRA on q_proj and v_proj of a multi-head attention block.
// ---------------------------------------------------------------------------
void tour_lora_attention() {
  section("(b) LoRA on an attention block",
          "  nn::MultiHeadAttention(d = 8, 2 heads) converted to float64, then\n"
          "  apply_lora(attn, r = 2, alpha = 4, target_modules = {q_proj, v_proj}): both\n"
          "  projections become lora.Linear. A fresh adapter has B = 0, which makes the\n"
          "  gradient of A exactly zero (a weak check), so B is set to random values first.\n"
          "  The function checked is the whole block (causal attention included) as a\n"
          "  function of x (2, 4, 8) and the four adapter matrices.");
  Generator gen(2);
  auto attn = std::make_shared<nn::MultiHeadAttention>(8, 2, 0.0, gen);
  attn->to(DType::f64);
  attn->eval();
  lora::LoraConfig cfg;
  cfg.r = 2;
  cfg.lora_alpha = 4;
  cfg.target_modules = {"q_proj", "v_proj"};
  const lora::LoraReport rep = lora::apply_lora(*attn, cfg);
  std::printf("  %s\n", rep.summary().c_str());

  auto q = std::dynamic_pointer_cast<lora::LoraLinear>(attn->q_proj);
  auto v = std::dynamic_pointer_cast<lora::LoraLinear>(attn->v_proj);
  if (!q || !v) {
    ++g_failures;
    std::printf("  q_proj / v_proj were not wrapped  <-- FAIL\n");
    return;
  }
  {
    NoGradGuard no_grad;
    q->lora_B_weight("default").copy_(randn({8, 2}, gen, DType::f64));
    v->lora_B_weight("default").copy_(randn({8, 2}, gen, DType::f64));
  }
  const Tensor x = randn({2, 4, 8}, gen, DType::f64);  // (B, T, d)

  // The inputs become the layers' parameters for each evaluation.
  auto fn = [attn, q, v](const std::vector<Tensor>& in) {
    q->lora_A_weight("default") = in[1];
    q->lora_B_weight("default") = in[2];
    v->lora_A_weight("default") = in[3];
    v->lora_B_weight("default") = in[4];
    return attn->forward(in[0]);
  };
  const Tensor qA = q->lora_A_weight("default").clone(), qB = q->lora_B_weight("default").clone();
  const Tensor vA = v->lora_A_weight("default").clone(), vB = v->lora_B_weight("default").clone();
  run_check("attention w.r.t. x", fn, {checked(x), qA, qB, vA, vB});
  run_check("attention w.r.t. q_proj.lora_A, lora_B", fn, {x, checked(qA), checked(qB), vA, vB});
  run_check("attention w.r.t. v_proj.lora_A, lora_B", fn, {x, qA, qB, checked(vA), checked(vB)});
  run_check("attention w.r.t. all five at once", fn, {checked(x), checked(qA), checked(qB), checked(vA), checked(vB)});
}

// ---------------------------------------------------------------------------
// (c) DoRA over an NF4 base.
// ---------------------------------------------------------------------------
void tour_dora_nf4() {
  section("(c) DoRA over an NF4 (QLoRA) base",
          "  nn::Linear(32 -> 6) quantised to NF4 (blocksize 64, double quantisation),\n"
          "  wrapped in a DoRA adapter (r = 4, alpha = 8, random A and B). The NF4 layer\n"
          "  computes in float64 when given float64 input (its codes decoded to float64),\n"
          "  so after to(f64) the whole layer can be checked in float64.\n"
          "  DoRA: y = (m / n) * ((W0 + s B A) x) + b with n = ||W0 + s B A|| per row.\n"
          "  m is moved off n (m *= 0.9) so that m / n != 1.");
  Generator gen(3);
  nn::Linear dense(32, 6, true, gen, DType::f32);
  auto qbase = lora::quantize_base("nf4", dense, {/*blocksize=*/64, /*double_quant=*/true});
  lora::LoraOptions o;
  o.r = 4;
  o.alpha = 8;
  o.use_dora = true;
  o.init = lora::LoraInit::random;  // B != 0
  o.seed = 6;
  auto lay = std::make_shared<lora::LoraLinear>(qbase, "default", o);
  lay->to(DType::f64);  // adapters and bias to float64; the NF4 codes stay as they are
  {
    NoGradGuard no_grad;
    lay->magnitude("default").mul_(0.9);
  }
  std::printf("  %s: %s\n", lay->type_name().c_str(), qbase->extra_repr().c_str());
  const double s = lay->scaling("default");
  const Tensor x = randn({3, 32}, gen, DType::f64);  // (N, in)
  const Tensor A0 = lay->lora_A_weight("default").clone(), B0 = lay->lora_B_weight("default").clone();
  const Tensor m0 = lay->magnitude("default").clone();

  auto layer_fn = [lay](const std::vector<Tensor>& in) {
    lay->lora_A_weight("default") = in[1];
    lay->lora_B_weight("default") = in[2];
    lay->magnitude("default") = in[3];
    return lay->forward(in[0]);
  };
  std::printf("\n  1. The full layer w.r.t. x and m (n does not depend on them):\n");
  run_check("DoRA(NF4) w.r.t. x", layer_fn, {checked(x), A0, B0, m0});
  run_check("DoRA(NF4) w.r.t. magnitude m", layer_fn, {x, A0, B0, checked(m0)});

  std::printf(
      "\n  2. Why not A and B through the full layer: PEFT (and the DoRA paper, 4.3)\n"
      "     treat the row norm n as a constant in backward (it is detached), to save\n"
      "     memory. The analytic gradient of A and B is then the derivative with n held\n"
      "     fixed, while a finite difference in A or B does move n. The two disagree,\n"
      "     by design:\n");
  run_check("DoRA(NF4) w.r.t. A (n moves with A)", layer_fn, {x, checked(A0), B0, m0}, /*expect_ok=*/false);

  std::printf(
      "\n  3. So A and B are checked on a reference function written with plain ops,\n"
      "     n computed from frozen copies A0, B0 (never perturbed):\n"
      "       y_ref = W0 x + b + (m/n - 1) (W0 x) + (m/n) s B (A x)\n"
      "     first gradchecked itself, then compared with the layer at A = A0, B = B0:\n"
      "     same output, same analytic gradients for x, A, B and m.\n");
  const Tensor W0 = lay->base_weight().to(DType::f64);  // (out, in), the dequantised NF4 weight
  const Tensor bias = lay->base_bias();                 // (out)
  Tensor n;                                             // (out)
  {
    NoGradGuard no_grad;
    const Tensor W = add(W0, mul(matmul(B0, A0), scalar(s, DType::f64)));
    n = sqrt(sum(mul(W, W), {1}));
  }
  auto ref_fn = [W0, bias, n, s](const std::vector<Tensor>& in) {
    const Tensor &xi = in[0], &A = in[1], &B = in[2], &m = in[3];
    const Tensor mn = div(m, n);                                                   // (out)
    const Tensor base = linear(xi, W0);                                            // (N, out)
    const Tensor lora = mul(matmul_nt(matmul_nt(xi, A), B), scalar(s, DType::f64));  // (N, out)
    return add(add(linear(xi, W0, bias), mul(sub(mn, scalar(1.0, DType::f64)), base)), mul(mn, lora));
  };
  run_check("reference w.r.t. x, A, B, m", ref_fn, {checked(x), checked(A0), checked(B0), checked(m0)});

  std::vector<Tensor> ins = {checked(x), checked(A0), checked(B0), checked(m0)};
  std::vector<Tensor> ref_ins = {checked(x), checked(A0), checked(B0), checked(m0)};
  const Tensor y = layer_fn(ins), y_ref = ref_fn(ref_ins);
  const Tensor w_out = randn({3, 6}, gen, DType::f64);  // a random upstream gradient
  sum(mul(y, w_out)).backward();
  sum(mul(y_ref, w_out)).backward();
  expect_close("output", y, y_ref, 1e-12);
  const char* names[] = {"grad x", "grad A", "grad B", "grad m"};
  for (size_t i = 0; i < 4; ++i) {
    if (!ins[i].grad().defined() || !ref_ins[i].grad().defined()) {
      ++g_failures;
      std::printf("  %-44s missing  <-- FAIL\n", names[i]);
      continue;
    }
    expect_close(names[i], ins[i].grad(), ref_ins[i].grad(), 1e-12);
  }
}

}  // namespace

int main() {
  std::printf("float64 gradient checks: pass when |analytic - numeric| <= 1e-5 + 1e-3 |numeric|\n");
  tour_single_op();
  tour_lora_attention();
  tour_dora_nf4();
  std::printf("\n%s\n", g_failures == 0 ? "Every check came out as expected." : "SOME CHECKS FAILED (see FAIL lines).");
  return g_failures == 0 ? 0 : 1;
}

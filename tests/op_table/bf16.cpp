// Op-table entries for bf16_linear (core/src/ops/bf16_linear.cpp), and the
// manual check of every op over a bf16 weight (op_table.hpp: bf16_manual_check),
// which lora_linear's bf16 samples use too.
//
// The bf16 weight is a constant of the op (never differentiated): each sample
// rounds a fixed weight once and closes over it. x is held constant in the
// gradcheck (the op rounds it to bf16: a step function of x, see OpSample::check),
// so gradcheck covers the bias; the manual check covers y and dx in float32
// (the bf16 GEMM: AMX, AVX512_BF16 or the float32 fallback, whichever runs)
// and in float64.
#include <cmath>
#include <memory>
#include <sstream>

#include "loragrad/autograd.hpp"
#include "loragrad/generator.hpp"
#include "op_table.hpp"

namespace loragrad::testing {

namespace {

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

std::shared_ptr<const BF16Tensor> bf16_weight(const Shape& shape, uint64_t seed) {
  Generator gen(seed);
  return std::make_shared<const BF16Tensor>(quantize_bf16(uniform(shape, -1.0, 1.0, gen)));
}

// t's values as doubles, rounded to bf16 (through float32, as the op does).
std::vector<double> rounded(const Tensor& t) {
  std::vector<double> v = t.to_vector();
  for (double& x : v) x = double(round_to_bf16(static_cast<float>(x)));
  return v;
}

// One tensor compared with its reference, element by element, within
// n u sum|terms| each; "" or the first element out of bounds.
std::string compare(const char* what, DType dt, const Tensor& got, const std::vector<double>& want,
                    const std::vector<double>& abs_sum, double n_terms) {
  const double u = dt == DType::f32 ? std::ldexp(1.0, -24) : std::ldexp(1.0, -51);
  const std::vector<double> g = got.to_vector();
  if (g.size() != want.size()) return std::string(what) + ": " + std::to_string(g.size()) + " values, expected " +
                                      std::to_string(want.size());
  for (size_t i = 0; i < g.size(); ++i) {
    const double bound = n_terms * u * abs_sum[i];
    if (!(std::abs(g[i] - want[i]) <= bound)) {
      std::ostringstream os;
      os.precision(17);
      os << dtype_name(dt) << " " << what << "[" << i << "] = " << g[i] << ", manual " << want[i] << ", difference "
         << std::abs(g[i] - want[i]) << " > bound " << bound;
      return os.str();
    }
  }
  return "";
}

}  // namespace

std::function<std::string(const std::vector<Tensor>&)> bf16_manual_check(Bf16Operands o, Fn fn) {
  return [o, fn](const std::vector<Tensor>& inputs) -> std::string {
    const BF16Tensor& w = *o.w;
    const int64_t in = w.cols(), out = w.rows();
    const bool lora = o.a >= 0;
    const bool own_input = o.x_lora >= 0;  // the adapter reads x_lora: dx has no adapter term
    std::vector<double> wv(static_cast<size_t>(w.numel()));  // (out, in)
    w.decode(0, w.numel(), wv.data());

    for (DType dt : {DType::f32, DType::f64}) {
      std::vector<Tensor> xs;
      for (const Tensor& t : inputs) xs.push_back(t.defined() ? t.detach().to(dt) : t);
      xs[0].requires_grad_(true);
      const Tensor y = fn(xs);  // (..., out)
      Generator gen(91);
      const Tensor g = uniform(y.shape(), -1.0, 1.0, gen, dt);  // (..., out), dL/dy
      sum(mul(y, g)).backward();
      const Tensor dx = xs[0].grad();

      const int64_t rows = xs[0].numel() / in;
      const int64_t r = lora ? xs[o.a].size(0) : 0;
      const std::vector<double> xr = rounded(xs[0]), gv = g.to_vector(), gr = rounded(g);
      const std::vector<double> bv = o.bias >= 0 ? xs[o.bias].to_vector() : std::vector<double>(out, 0.0);
      const std::vector<double> av = lora ? xs[o.a].to_vector() : std::vector<double>{};  // (r, in)
      const std::vector<double> Bv = lora ? xs[o.b].to_vector() : std::vector<double>{};  // (out, r)
      const std::vector<double> xl = lora ? (own_input ? xs[o.x_lora] : xs[0]).to_vector() : std::vector<double>{};
      const double s = o.scale;

      // y (rows, out) and the sums of |terms| it adds
      std::vector<double> y_ref(static_cast<size_t>(rows * out)), y_abs(y_ref.size());
      std::vector<double> h(static_cast<size_t>(r)), h_abs(static_cast<size_t>(r));  // (r) of one row
      for (int64_t i = 0; i < rows; ++i) {
        for (int64_t k = 0; k < r; ++k) {  // h = x_l A^T, unrounded
          double acc = 0, mag = 0;
          for (int64_t c = 0; c < in; ++c) {
            acc += xl[i * in + c] * av[k * in + c];
            mag += std::abs(xl[i * in + c] * av[k * in + c]);
          }
          h[k] = acc;
          h_abs[k] = mag;
        }
        for (int64_t j = 0; j < out; ++j) {
          double acc = bv[j], mag = std::abs(bv[j]);
          for (int64_t c = 0; c < in; ++c) {
            acc += xr[i * in + c] * wv[j * in + c];
            mag += std::abs(xr[i * in + c] * wv[j * in + c]);
          }
          for (int64_t k = 0; k < r; ++k) {
            acc += s * h[k] * Bv[j * r + k];
            mag += std::abs(s) * h_abs[k] * std::abs(Bv[j * r + k]);
          }
          y_ref[i * out + j] = acc;
          y_abs[i * out + j] = mag;
        }
      }
      // The terms one y element sums: in products, the bias, and with an
      // adapter in more for each h and r for h B^T; 2 more for the scalings.
      std::string err = compare("y", dt, y, y_ref, y_abs, double(in + 2 + (lora ? in + r + 2 : 0)));
      if (!err.empty()) return err;

      // dx (rows, in)
      std::vector<double> dx_ref(static_cast<size_t>(rows * in)), dx_abs(dx_ref.size());
      std::vector<double> dh(static_cast<size_t>(r)), dh_abs(static_cast<size_t>(r));  // (r) of one row
      const bool adapter_term = lora && !own_input;
      for (int64_t i = 0; i < rows; ++i) {
        for (int64_t k = 0; adapter_term && k < r; ++k) {  // dh = s g B, unrounded
          double acc = 0, mag = 0;
          for (int64_t j = 0; j < out; ++j) {
            acc += s * gv[i * out + j] * Bv[j * r + k];
            mag += std::abs(s * gv[i * out + j] * Bv[j * r + k]);
          }
          dh[k] = acc;
          dh_abs[k] = mag;
        }
        for (int64_t c = 0; c < in; ++c) {
          double acc = 0, mag = 0;
          for (int64_t j = 0; j < out; ++j) {
            acc += gr[i * out + j] * wv[j * in + c];
            mag += std::abs(gr[i * out + j] * wv[j * in + c]);
          }
          for (int64_t k = 0; adapter_term && k < r; ++k) {
            acc += dh[k] * av[k * in + c];
            mag += dh_abs[k] * std::abs(av[k * in + c]);
          }
          dx_ref[i * in + c] = acc;
          dx_abs[i * in + c] = mag;
        }
      }
      if (!dx.defined()) return std::string(dtype_name(dt)) + ": no gradient reached x";
      err = compare("dx", dt, dx, dx_ref, dx_abs, double(out + 2 + (adapter_term ? out + r + 2 : 0)));
      if (!err.empty()) return err;
    }
    return "";
  };
}

namespace {

// x = inputs[0] (constant, see above); bias = inputs[1] when present.
OpSample bf16_sample(const std::string& label, const Shape& x_shape, const Shape& w_shape, bool with_bias,
                     uint64_t seed) {
  auto w = bf16_weight(w_shape, seed);
  Tensor x = sample_input(x_shape, seed + 1);
  x.requires_grad_(false);
  std::vector<Tensor> inputs{x};
  if (with_bias) inputs.push_back(sample_input({w_shape[0]}, seed + 2));
  Fn fn = [w](const std::vector<Tensor>& t) { return bf16_linear(t[0], w, t.size() > 1 ? t[1] : Tensor()); };
  OpSample s{label, inputs, fn};
  Bf16Operands o;
  o.w = w;
  o.bias = with_bias ? 1 : -1;
  s.check = bf16_manual_check(o, fn);
  return s;
}

}  // namespace

void add_bf16_entries(OpTable& t) {
  t.push_back({Op::bf16_linear,
               {// in = 13: an odd depth, padded by the kernels (AMX packs pairs, 32 deep)
                bf16_sample("x [7, 13] W [5, 13] b [5]", {7, 13}, {5, 13}, true, 520),
                // 40 rows and 33 outputs: more than one register tile each way, ragged edges
                bf16_sample("x [2, 20, 70] W [33, 70] no bias", {2, 20, 70}, {33, 70}, false, 523),
                bf16_sample("x [13] W [3, 13] b [3]", {13}, {3, 13}, true, 526)}});
}

}  // namespace loragrad::testing

// softmax, log_softmax, cross_entropy, layer_norm, causal_attention against
// naive float64 references written here with plain loops, float32 vs float64,
// error cases, gradchecks, and the causality of attention.
#define BOOST_TEST_MODULE nn_ops
#include <boost/test/unit_test.hpp>

#include "test_util.hpp"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "loragrad/generator.hpp"
#include "loragrad/gradcheck.hpp"
#include "loragrad/ops.hpp"

using namespace loragrad;
using Vec = std::vector<double>;

namespace {

Tensor random_tensor(const Shape& shape, uint64_t seed, DType dt = DType::f64, double lo = -1, double hi = 1) {
  Generator gen(seed);
  return uniform(shape, lo, hi, gen, dt);
}

Tensor leaf(const Tensor& t) {
  Tensor c = t.detach().clone();
  c.requires_grad_(true);
  return c;
}

// max |a - b| <= atol + rtol * |b| elementwise, reporting the worst element.
void check_close(const Vec& a, const Vec& b, double atol, double rtol, const std::string& what) {
  BOOST_REQUIRE_MESSAGE(a.size() == b.size(), what << ": sizes " << a.size() << " vs " << b.size());
  size_t worst = 0;
  double worst_excess = -1;
  for (size_t i = 0; i < a.size(); ++i) {
    const double excess = std::abs(a[i] - b[i]) - (atol + rtol * std::abs(b[i]));
    if (!(excess <= worst_excess)) { worst_excess = excess; worst = i; }
    if (std::isnan(a[i]) != std::isnan(b[i])) { worst_excess = 1; worst = i; break; }
  }
  BOOST_CHECK_MESSAGE(a.empty() || worst_excess <= 0,
                      what << ": element " << worst << " is " << a[worst] << ", expected " << b[worst]);
}

void check_gradcheck(const GradcheckFn& fn, const std::vector<Tensor>& inputs, const std::string& what) {
  GradcheckResult r = gradcheck(fn, inputs);
  BOOST_CHECK_MESSAGE(r.ok, what << ":\n" << r.report);
}

// ---- naive float64 references ----

// softmax / log_softmax of x (shape) over dim, element by element.
Vec ref_softmax(const Vec& x, const Shape& shape, int64_t dim, bool log) {
  int64_t outer = 1, D = shape[dim], inner = 1;
  for (int64_t i = 0; i < dim; ++i) outer *= shape[i];
  for (size_t i = dim + 1; i < shape.size(); ++i) inner *= shape[i];
  Vec y(x.size());
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      auto at = [&](int64_t j) { return (o * D + j) * inner + i; };
      double m = -INFINITY, s = 0;
      for (int64_t j = 0; j < D; ++j) m = std::max(m, x[at(j)]);
      for (int64_t j = 0; j < D; ++j) s += std::exp(x[at(j)] - m);
      for (int64_t j = 0; j < D; ++j)
        y[at(j)] = log ? x[at(j)] - m - std::log(s) : std::exp(x[at(j)] - m) / s;
    }
  return y;
}

// Mean over rows with t != ignore of logsumexp(row) - row[t]; also d loss / d x.
double ref_cross_entropy(const Vec& x, int64_t C, const std::vector<int64_t>& t, int64_t ignore, Vec* dx = nullptr) {
  const int64_t N = static_cast<int64_t>(t.size());
  double total = 0;
  int64_t count = 0;
  for (int64_t n = 0; n < N; ++n) count += t[n] != ignore;
  if (dx) dx->assign(x.size(), 0.0);
  for (int64_t n = 0; n < N; ++n) {
    if (t[n] == ignore) continue;
    double m = -INFINITY, s = 0;
    for (int64_t c = 0; c < C; ++c) m = std::max(m, x[n * C + c]);
    for (int64_t c = 0; c < C; ++c) s += std::exp(x[n * C + c] - m);
    total += m + std::log(s) - x[n * C + t[n]];
    if (dx)
      for (int64_t c = 0; c < C; ++c)
        (*dx)[n * C + c] = (std::exp(x[n * C + c] - m) / s - (c == t[n])) / double(count);
  }
  return total / double(count);
}

struct LayerNormRef {
  Vec y, dx, dw, db;
};
// Forward, and backward for upstream g (when given), derived with plain loops.
LayerNormRef ref_layer_norm(const Vec& x, int64_t C, const Vec& w, const Vec& b, double eps, const Vec& g = {}) {
  const int64_t N = static_cast<int64_t>(x.size()) / C;
  LayerNormRef r;
  r.y.resize(x.size());
  r.dx.resize(x.size());
  r.dw.assign(C, 0.0);
  r.db.assign(C, 0.0);
  for (int64_t n = 0; n < N; ++n) {
    const double* row = x.data() + n * C;
    double mean = 0, var = 0;
    for (int64_t c = 0; c < C; ++c) mean += row[c] / C;
    for (int64_t c = 0; c < C; ++c) var += (row[c] - mean) * (row[c] - mean) / C;
    const double rstd = 1 / std::sqrt(var + eps);
    Vec xhat(C);
    for (int64_t c = 0; c < C; ++c) {
      xhat[c] = (row[c] - mean) * rstd;
      r.y[n * C + c] = xhat[c] * (w.empty() ? 1 : w[c]) + (b.empty() ? 0 : b[c]);
    }
    if (g.empty()) continue;
    // dL/dxhat_c = g_c w_c; xhat depends on every x of the row through mean and rstd.
    for (int64_t c = 0; c < C; ++c) {
      double acc = 0;
      for (int64_t k = 0; k < C; ++k) {
        const double dxhat_k = g[n * C + k] * (w.empty() ? 1 : w[k]);
        // d xhat_k / d x_c = rstd * (delta_kc - 1/C - xhat_k xhat_c / C)
        acc += dxhat_k * rstd * ((k == c) - 1.0 / C - xhat[k] * xhat[c] / C);
      }
      r.dx[n * C + c] = acc;
      r.dw[c] += g[n * C + c] * xhat[c];
      r.db[c] += g[n * C + c];
    }
  }
  return r;
}

struct AttentionRef {
  Vec out, dq, dk, dv;
};
// Explicit loops over (b, h, i, j); backward by the chain rule through
// S -> P -> O for upstream g (when given).
AttentionRef ref_attention(const Vec& q, const Vec& k, const Vec& v, int64_t B, int64_t T, int64_t d, int64_t H,
                           const Vec& g = {}) {
  const int64_t hd = d / H;
  const double scale = 1 / std::sqrt(double(hd));
  AttentionRef r;
  r.out.assign(q.size(), 0.0);
  r.dq.assign(q.size(), 0.0);
  r.dk.assign(q.size(), 0.0);
  r.dv.assign(q.size(), 0.0);
  auto at = [&](int64_t b, int64_t t, int64_t h, int64_t c) { return (b * T + t) * d + h * hd + c; };
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < T; ++i) {
        Vec p(T, 0.0);
        double m = -INFINITY, s = 0;
        for (int64_t j = 0; j <= i; ++j) {
          double dot = 0;
          for (int64_t c = 0; c < hd; ++c) dot += q[at(b, i, h, c)] * k[at(b, j, h, c)];
          p[j] = dot * scale;
          m = std::max(m, p[j]);
        }
        for (int64_t j = 0; j <= i; ++j) s += std::exp(p[j] - m);
        for (int64_t j = 0; j <= i; ++j) p[j] = std::exp(p[j] - m) / s;
        for (int64_t j = 0; j <= i; ++j)
          for (int64_t c = 0; c < hd; ++c) r.out[at(b, i, h, c)] += p[j] * v[at(b, j, h, c)];
        if (g.empty()) continue;
        // dP_ij = g_i . v_j ; dS_ij = P_ij (dP_ij - sum_l P_il dP_il)
        Vec dp(T, 0.0);
        double dot_pdp = 0;
        for (int64_t j = 0; j <= i; ++j) {
          for (int64_t c = 0; c < hd; ++c) dp[j] += g[at(b, i, h, c)] * v[at(b, j, h, c)];
          dot_pdp += p[j] * dp[j];
        }
        for (int64_t j = 0; j <= i; ++j) {
          const double ds = p[j] * (dp[j] - dot_pdp) * scale;
          for (int64_t c = 0; c < hd; ++c) {
            r.dv[at(b, j, h, c)] += p[j] * g[at(b, i, h, c)];
            r.dq[at(b, i, h, c)] += ds * k[at(b, j, h, c)];
            r.dk[at(b, j, h, c)] += ds * q[at(b, i, h, c)];
          }
        }
      }
  return r;
}

}  // namespace

// ---------------------------------------------------------------- softmax

BOOST_AUTO_TEST_CASE(softmax_and_log_softmax_match_reference) {
  const std::vector<std::pair<Shape, int64_t>> cases = {
      {{1, 1}, -1}, {{7, 13}, -1}, {{7, 13}, 0}, {{3, 4, 5}, 1}, {{3, 4, 5}, 0}, {{2, 3, 4, 5}, 3}, {{9}, 0},
      {{300, 200}, -1} /* parallel rows */, {{200, 300}, 0}};
  uint64_t seed = 1;
  for (auto& [shape, dim] : cases) {
    const int64_t wd = dim < 0 ? dim + static_cast<int64_t>(shape.size()) : dim;
    Tensor x = random_tensor(shape, seed++, DType::f64, -5, 5);
    for (bool log : {false, true}) {
      const Vec ref = ref_softmax(x.to_vector(), shape, wd, log);
      const std::string what = std::string(log ? "log_softmax " : "softmax ") + shape_str(shape) + " dim " +
                               std::to_string(dim);
      Tensor y64 = log ? log_softmax(x, dim) : softmax(x, dim);
      Tensor y32 = log ? log_softmax(x.to(DType::f32), dim) : softmax(x.to(DType::f32), dim);
      BOOST_CHECK(y64.shape() == shape);
      BOOST_CHECK(y32.dtype() == DType::f32);
      check_close(y64.to_vector(), ref, 1e-14, 1e-13, what + " float64");
      check_close(y32.to_vector(), ref, 1e-6, 1e-6, what + " float32");
    }
  }
}

BOOST_AUTO_TEST_CASE(softmax_is_stable_for_huge_logits) {
  for (DType dt : {DType::f32, DType::f64}) {
    Tensor x = from_values(Vec{1e4, 0, -1e4, 88, 89, 90, -INFINITY, 0, 0}, {3, 3}, dt);
    check_close(softmax(x).to_vector(), ref_softmax(x.to_vector(), {3, 3}, 1, false), 1e-7, 1e-6, "softmax 1e4");
    const Vec ls = log_softmax(x).to_vector();
    BOOST_TEST(ls[0] == 0.0);
    BOOST_TEST(ls[1] == -1e4);
    BOOST_TEST(ls[2] == -2e4);
    BOOST_TEST(ls[6] == -INFINITY);
    BOOST_TEST(std::abs(ls[7] - std::log(0.5)) < 1e-6);
  }
}

BOOST_AUTO_TEST_CASE(softmax_backward_matches_reference) {
  // Large enough for the parallel row path, and a dim that is not the last.
  const std::vector<std::pair<Shape, int64_t>> cases = {{{300, 200}, 1}, {{40, 30, 50}, 1}, {{3, 5}, 0}};
  uint64_t seed = 20;
  for (auto& [shape, dim] : cases) {
    for (bool log : {false, true}) {
      Tensor x = leaf(random_tensor(shape, seed++, DType::f64, -3, 3));
      Tensor g = random_tensor(shape, seed++);
      Tensor y = log ? log_softmax(x, dim) : softmax(x, dim);
      y.backward(g);
      // Reference Jacobian-vector product through rows gathered by index.
      const Vec p = ref_softmax(x.to_vector(), shape, dim, false), gv = g.to_vector();
      int64_t outer = 1, D = shape[dim], inner = 1;
      for (int64_t i = 0; i < dim; ++i) outer *= shape[i];
      for (size_t i = dim + 1; i < shape.size(); ++i) inner *= shape[i];
      Vec ref(p.size());
      for (int64_t o = 0; o < outer; ++o)
        for (int64_t i = 0; i < inner; ++i) {
          auto at = [&](int64_t j) { return (o * D + j) * inner + i; };
          double s = 0;
          for (int64_t j = 0; j < D; ++j) s += log ? gv[at(j)] : gv[at(j)] * p[at(j)];
          for (int64_t j = 0; j < D; ++j)
            ref[at(j)] = log ? gv[at(j)] - p[at(j)] * s : p[at(j)] * (gv[at(j)] - s);
        }
      check_close(x.grad().to_vector(), ref, 1e-13, 1e-10,
                  std::string(log ? "log_softmax" : "softmax") + " backward " + shape_str(shape));
    }
  }
}

BOOST_AUTO_TEST_CASE(softmax_gradchecks) {
  auto sm = [](int64_t dim) { return [dim](const std::vector<Tensor>& x) { return softmax(x[0], dim); }; };
  auto lsm = [](int64_t dim) { return [dim](const std::vector<Tensor>& x) { return log_softmax(x[0], dim); }; };
  check_gradcheck(sm(-1), {leaf(random_tensor({3, 4}, 30))}, "softmax [3, 4]");
  check_gradcheck(sm(1), {leaf(random_tensor({2, 3, 4}, 31))}, "softmax [2, 3, 4] dim 1");
  check_gradcheck(lsm(-1), {leaf(random_tensor({3, 4}, 32))}, "log_softmax [3, 4]");
  check_gradcheck(lsm(0), {leaf(random_tensor({2, 3, 4}, 33))}, "log_softmax [2, 3, 4] dim 0");
}

BOOST_AUTO_TEST_CASE(softmax_errors_and_saved_output) {
  check_throws<DTypeError>([] { softmax(from_indices({1, 2}, {2})); }, {"softmax", "int64"});
  check_throws<IndexError>([] { softmax(zeros({2, 3}), 2); }, {"softmax", "dim 2"});
  check_throws<IndexError>([] { log_softmax(zeros({2, 3}), -3); }, {"log_softmax"});
  check_throws<ValueError>([] { softmax(Tensor()); }, {"softmax"});
  // softmax saves its output: writing to it in place must make backward fail.
  Tensor x = leaf(random_tensor({2, 3}, 40));
  Tensor y = softmax(x);
  y.set({0, 0}, 5.0);
  check_throws<AutogradError>([&] { y.backward(ones({2, 3}, DType::f64)); }, {"softmax", "modified in place"});
}

// ---------------------------------------------------------------- cross_entropy

BOOST_AUTO_TEST_CASE(cross_entropy_matches_reference) {
  struct Case {
    Shape shape;
    std::vector<int64_t> targets;
    int64_t ignore;
  };
  const std::vector<Case> cases = {
      {{1, 1}, {0}, -100},
      {{6, 5}, {0, 4, -100, 2, 1, -100}, -100},
      {{5, 3}, {2, 0, 2, 1, 0}, 2},
      {{2, 3, 4}, {0, 3, 1, 2, -100, 3}, -100},
      {{6}, {4}, -100},
      {{600, 100}, {}, -100}};  // parallel rows, targets filled below
  uint64_t seed = 50;
  for (Case c : cases) {
    const int64_t C = c.shape.back();
    if (c.targets.empty()) {
      Generator gen(seed);
      for (int64_t n = 0; n < shape_numel(c.shape) / C; ++n)
        c.targets.push_back(n % 7 == 0 ? -100 : gen.randint(0, C));
    }
    const Shape lead(c.shape.begin(), c.shape.end() - 1);
    Tensor targets = from_indices(c.targets, lead);
    Tensor x = random_tensor(c.shape, seed++, DType::f64, -4, 4);
    Vec ref_dx;
    const double ref = ref_cross_entropy(x.to_vector(), C, c.targets, c.ignore, &ref_dx);
    const std::string what = "cross_entropy " + shape_str(c.shape);
    for (DType dt : {DType::f64, DType::f32}) {
      Tensor xl = leaf(x.to(dt));
      Tensor loss = cross_entropy(xl, targets, c.ignore);
      BOOST_CHECK(loss.dim() == 0);
      BOOST_CHECK(loss.dtype() == dt);
      const double tol = dt == DType::f64 ? 1e-13 : 2e-6;
      check_close({loss.item()}, {ref}, tol, tol, what + " " + dtype_name(dt));
      loss.backward();
      check_close(xl.grad().to_vector(), ref_dx, tol, tol, what + " backward " + dtype_name(dt));
    }
    // Targets given as a float tensor holding integers give the same loss.
    Tensor ft = from_values(targets.to_vector(), lead, DType::f32);
    BOOST_CHECK_CLOSE(cross_entropy(x, ft, c.ignore).item(), ref, 1e-10);
  }
}

BOOST_AUTO_TEST_CASE(cross_entropy_is_exact_for_logits_of_magnitude_1e4) {
  for (DType dt : {DType::f32, DType::f64}) {
    Tensor x = leaf(from_values(Vec{1e4, 0, -1e4, 1e4, 0, -1e4, 1e4, 0, -1e4}, {3, 3}, dt));
    for (int64_t t = 0; t < 3; ++t) {  // one row at a time: loss is exactly 0, 1e4, 2e4
      Tensor one = cross_entropy(from_values(Vec{1e4, 0, -1e4}, {1, 3}, dt), from_indices({t}, {1}));
      BOOST_TEST(one.item() == 1e4 * double(t));
    }
    Tensor loss = cross_entropy(x, from_indices({0, 1, 2}, {3}));
    Vec ref_dx;
    const double ref = ref_cross_entropy(x.to_vector(), 3, {0, 1, 2}, -100, &ref_dx);
    BOOST_TEST(ref == 1e4);
    BOOST_TEST(loss.item() == 1e4);
    loss.backward();
    check_close(x.grad().to_vector(), ref_dx, 1e-7, 0, std::string("1e4 logits backward ") + dtype_name(dt));
  }
}

BOOST_AUTO_TEST_CASE(cross_entropy_ignore_index) {
  Tensor x = leaf(random_tensor({3, 4}, 60));
  // Ignored rows get no gradient and do not count in the mean.
  Tensor loss = cross_entropy(x, from_indices({-100, 2, -100}, {3}));
  Vec ref_dx;
  BOOST_CHECK_CLOSE(loss.item(), ref_cross_entropy(x.to_vector(), 4, {-100, 2, -100}, -100, &ref_dx), 1e-10);
  loss.backward();
  check_close(x.grad().to_vector(), ref_dx, 1e-14, 1e-12, "ignore_index backward");
  for (int64_t c = 0; c < 4; ++c) BOOST_TEST(x.grad().at({0, c}) == 0.0);
  // Every target ignored: NaN like PyTorch, and a zero gradient.
  Tensor y = leaf(random_tensor({2, 4}, 61));
  Tensor all_ignored = cross_entropy(y, from_indices({7, 7}, {2}), 7);
  BOOST_TEST(std::isnan(all_ignored.item()));
  all_ignored.backward();
  for (double g : y.grad().to_vector()) BOOST_TEST(g == 0.0);
}

BOOST_AUTO_TEST_CASE(cross_entropy_gradchecks) {
  auto ce = [](int64_t ignore) {
    return [ignore](const std::vector<Tensor>& x) { return cross_entropy(x[0], x[1], ignore); };
  };
  check_gradcheck(ce(-100), {leaf(random_tensor({4, 5}, 70)), from_indices({1, -100, 4, 0}, {4})}, "ce [4, 5]");
  check_gradcheck(ce(1), {leaf(random_tensor({2, 2, 3}, 71)), from_indices({1, 0, 2, 1}, {2, 2})}, "ce [2, 2, 3]");
  // Float targets: the targets input is held constant.
  check_gradcheck(ce(-100), {leaf(random_tensor({3, 4}, 72)), from_values(Vec{3, 0, 1}, {3}, DType::f64)},
                  "ce float targets");
}

BOOST_AUTO_TEST_CASE(cross_entropy_errors) {
  Tensor x = random_tensor({3, 5}, 80);
  check_throws<ValueError>([&] { cross_entropy(x, from_values(Vec{1, NAN, 2}, {3}, DType::f32)); },
                           {"cross_entropy", "[1]", "nan"});
  check_throws<ValueError>([&] { cross_entropy(x, from_values(Vec{1, 2, INFINITY}, {3}, DType::f64)); },
                           {"cross_entropy", "[2]"});
  check_throws<ValueError>([&] { cross_entropy(x, from_values(Vec{1.5, 2, 0}, {3}, DType::f64)); },
                           {"cross_entropy", "[0]", "integer"});
  check_throws<ValueError>(
      [&] { cross_entropy(random_tensor({2, 2, 5}, 81), from_values(Vec{1, 2, 0, 0.25}, {2, 2}, DType::f64)); },
      {"cross_entropy", "[1, 1]"});
  check_throws<IndexError>([&] { cross_entropy(x, from_indices({1, 5, 0}, {3})); }, {"cross_entropy", "5", "[1]"});
  check_throws<IndexError>([&] { cross_entropy(x, from_indices({1, 0, -1}, {3})); }, {"cross_entropy", "-1"});
  check_throws<IndexError>([&] { cross_entropy(x, from_values(Vec{1, 0, 9}, {3}, DType::f32)); }, {"cross_entropy"});
  check_throws<ShapeError>([&] { cross_entropy(x, from_indices({1, 0}, {2})); }, {"cross_entropy", "[3, 5]"});
  check_throws<ShapeError>([&] { cross_entropy(x, from_indices({1, 0, 2}, {3, 1})); }, {"cross_entropy"});
  check_throws<ShapeError>([&] { cross_entropy(scalar(1.0), from_indices({0}, {})); }, {"cross_entropy"});
  check_throws<DTypeError>([&] { cross_entropy(from_indices({1, 2}, {1, 2}), from_indices({0}, {1})); },
                           {"cross_entropy"});
}

// ---------------------------------------------------------------- layer_norm

BOOST_AUTO_TEST_CASE(layer_norm_matches_reference) {
  struct Case {
    Shape shape;
    bool weight, bias;
  };
  const std::vector<Case> cases = {{{4, 6}, true, true},  {{4, 6}, false, false}, {{2, 3, 5}, true, false},
                                   {{3, 7}, false, true}, {{3, 1}, true, true},   {{5}, true, true},
                                   {{600, 96}, true, true} /* parallel rows, partial dw/db sums */};
  uint64_t seed = 90;
  for (const Case& c : cases) {
    const int64_t C = c.shape.back();
    Tensor x = random_tensor(c.shape, seed++, DType::f64, -2, 3);
    Tensor w = c.weight ? random_tensor({C}, seed++, DType::f64, 0.5, 1.5) : Tensor();
    Tensor b = c.bias ? random_tensor({C}, seed++) : Tensor();
    Tensor g = random_tensor(c.shape, seed++);
    const LayerNormRef ref = ref_layer_norm(x.to_vector(), C, w.defined() ? w.to_vector() : Vec{},
                                            b.defined() ? b.to_vector() : Vec{}, 1e-5, g.to_vector());
    const std::string what = "layer_norm " + shape_str(c.shape) + (c.weight ? " w" : "") + (c.bias ? " b" : "");
    for (DType dt : {DType::f64, DType::f32}) {
      Tensor xl = leaf(x.to(dt));
      Tensor wl = w.defined() ? leaf(w.to(dt)) : Tensor();
      Tensor bl = b.defined() ? leaf(b.to(dt)) : Tensor();
      Tensor y = layer_norm(xl, wl, bl);
      BOOST_CHECK(y.shape() == c.shape);
      const double tol = dt == DType::f64 ? 1e-11 : 2e-5;
      check_close(y.to_vector(), ref.y, tol, tol, what + " " + dtype_name(dt));
      y.backward(g.to(dt));
      // dx sums C terms that cancel; dw / db sum over all rows.
      const double gtol = dt == DType::f64 ? 1e-10 : 2e-3;
      check_close(xl.grad().to_vector(), ref.dx, gtol, gtol, what + " dx " + dtype_name(dt));
      if (c.weight) check_close(wl.grad().to_vector(), ref.dw, gtol, gtol, what + " dw " + dtype_name(dt));
      if (c.bias) check_close(bl.grad().to_vector(), ref.db, gtol, gtol, what + " db " + dtype_name(dt));
    }
  }
}

BOOST_AUTO_TEST_CASE(layer_norm_float32_two_pass_variance) {
  // mean 1000, std ~0.6: E[x^2] - E[x]^2 would lose every digit in float32.
  Tensor x = random_tensor({8, 64}, 100, DType::f32, 999, 1001);
  const LayerNormRef ref = ref_layer_norm(x.to_vector(), 64, {}, {}, 1e-5);
  check_close(layer_norm(x, Tensor(), Tensor()).to_vector(), ref.y, 2e-3, 0, "layer_norm offset 1000");
}

BOOST_AUTO_TEST_CASE(layer_norm_gradchecks) {
  GradcheckFn ln = [](const std::vector<Tensor>& x) { return layer_norm(x[0], x[1], x[2]); };
  GradcheckFn plain = [](const std::vector<Tensor>& x) { return layer_norm(x[0], Tensor(), Tensor(), 1e-3); };
  check_gradcheck(ln, {leaf(random_tensor({3, 5}, 110)), leaf(random_tensor({5}, 111)), leaf(random_tensor({5}, 112))},
                  "layer_norm affine");
  check_gradcheck(plain, {leaf(random_tensor({2, 2, 4}, 113))}, "layer_norm plain eps 1e-3");
}

BOOST_AUTO_TEST_CASE(layer_norm_errors) {
  Tensor x = zeros({2, 4});
  check_throws<ShapeError>([&] { layer_norm(x, ones({3}), Tensor()); }, {"layer_norm", "[3]", "[2, 4]"});
  check_throws<ShapeError>([&] { layer_norm(x, Tensor(), ones({4, 1})); }, {"layer_norm", "bias"});
  check_throws<DTypeError>([&] { layer_norm(x, ones({4}, DType::f64), Tensor()); }, {"layer_norm"});
  check_throws<DTypeError>([&] { layer_norm(from_indices({1, 2}, {2}), Tensor(), Tensor()); }, {"layer_norm"});
  check_throws<ShapeError>([&] { layer_norm(scalar(1.0), Tensor(), Tensor()); }, {"layer_norm"});
  check_throws<ValueError>([&] { layer_norm(x, Tensor(), Tensor(), -1.0); }, {"layer_norm", "eps"});
}

// ---------------------------------------------------------------- causal_attention

namespace {
struct AttnCase {
  int64_t B, T, d, H;
};
const std::vector<AttnCase> kAttnCases = {
    {2, 5, 6, 2}, {1, 1, 4, 2}, {1, 7, 9, 3}, {2, 70, 8, 2} /* two row blocks */,
    {1, 130, 4, 1} /* three row blocks, single head */, {3, 80, 32, 4} /* parallel over heads */};
}  // namespace

BOOST_AUTO_TEST_CASE(attention_matches_reference) {
  uint64_t seed = 120;
  for (const AttnCase& c : kAttnCases) {
    const Shape s{c.B, c.T, c.d};
    Tensor q = random_tensor(s, seed++), k = random_tensor(s, seed++), v = random_tensor(s, seed++);
    Tensor g = random_tensor(s, seed++);
    const AttentionRef ref = ref_attention(q.to_vector(), k.to_vector(), v.to_vector(), c.B, c.T, c.d, c.H,
                                           g.to_vector());
    const std::string what = "attention B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) +
                             " d=" + std::to_string(c.d) + " H=" + std::to_string(c.H);
    for (DType dt : {DType::f64, DType::f32}) {
      Tensor ql = leaf(q.to(dt)), kl = leaf(k.to(dt)), vl = leaf(v.to(dt));
      Tensor out = causal_attention(ql, kl, vl, c.H);
      BOOST_CHECK(out.shape() == s);
      BOOST_CHECK(out.dtype() == dt);
      const double tol = dt == DType::f64 ? 1e-12 : 1e-5;
      check_close(out.to_vector(), ref.out, tol, tol, what + " " + dtype_name(dt));
      out.backward(g.to(dt));
      check_close(ql.grad().to_vector(), ref.dq, tol, tol, what + " dq " + dtype_name(dt));
      check_close(kl.grad().to_vector(), ref.dk, tol, tol, what + " dk " + dtype_name(dt));
      check_close(vl.grad().to_vector(), ref.dv, tol, tol, what + " dv " + dtype_name(dt));
    }
  }
}

BOOST_AUTO_TEST_CASE(attention_only_needed_gradients) {
  Tensor q = leaf(random_tensor({1, 4, 4}, 140)), k = random_tensor({1, 4, 4}, 141), v = random_tensor({1, 4, 4}, 142);
  causal_attention(q, k, v, 2).backward(ones({1, 4, 4}, DType::f64));
  const Vec ref = ref_attention(q.to_vector(), k.to_vector(), v.to_vector(), 1, 4, 4, 2, Vec(16, 1.0)).dq;
  check_close(q.grad().to_vector(), ref, 1e-12, 1e-12, "dq only");
}

BOOST_AUTO_TEST_CASE(attention_is_causal) {
  const int64_t B = 2, T = 9, d = 6, H = 2;
  Tensor q = random_tensor({B, T, d}, 150), k = random_tensor({B, T, d}, 151), v = random_tensor({B, T, d}, 152);
  const Vec base = causal_attention(q, k, v, H).to_vector();
  for (int64_t p = 0; p < T; ++p) {
    // Change every input at positions > p: outputs at positions <= p must not move.
    Tensor q2 = q.clone(), k2 = k.clone(), v2 = v.clone();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = p + 1; t < T; ++t)
        for (int64_t c = 0; c < d; ++c) {
          q2.set({b, t, c}, 10.0 * (c + 1));
          k2.set({b, t, c}, -7.0 * (t + 1));
          v2.set({b, t, c}, 1e3);
        }
    const Vec moved = causal_attention(q2, k2, v2, H).to_vector();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t <= p; ++t)
        for (int64_t c = 0; c < d; ++c) {
          const int64_t i = (b * T + t) * d + c;
          BOOST_CHECK_MESSAGE(moved[i] == base[i], "output at position " << t << " depends on position > " << p);
        }
    // And the gradient of output row p reaches no input at a position > p.
    Tensor ql = leaf(q), kl = leaf(k), vl = leaf(v);
    Tensor g = zeros({B, T, d}, DType::f64);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < d; ++c) g.set({b, p, c}, 1.0 + c);
    causal_attention(ql, kl, vl, H).backward(g);
    for (const Tensor& grad : {ql.grad(), kl.grad(), vl.grad()})
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = p + 1; t < T; ++t)
          for (int64_t c = 0; c < d; ++c)
            BOOST_CHECK_MESSAGE(grad.at({b, t, c}) == 0.0, "gradient of row " << p << " reaches position " << t);
  }
}

BOOST_AUTO_TEST_CASE(attention_gradchecks) {
  auto attn = [](int64_t H) {
    return [H](const std::vector<Tensor>& x) { return causal_attention(x[0], x[1], x[2], H); };
  };
  for (const AttnCase& c : {AttnCase{2, 3, 4, 2}, AttnCase{1, 6, 6, 3}, AttnCase{1, 1, 2, 1}}) {
    const Shape s{c.B, c.T, c.d};
    check_gradcheck(attn(c.H),
                    {leaf(random_tensor(s, 160)), leaf(random_tensor(s, 161)), leaf(random_tensor(s, 162))},
                    "attention " + shape_str(s) + " H=" + std::to_string(c.H));
  }
}

BOOST_AUTO_TEST_CASE(attention_errors) {
  Tensor a = zeros({2, 3, 6});
  check_throws<ShapeError>([&] { causal_attention(a, a, a, 4); }, {"causal_attention", "n_head = 4", "[2, 3, 6]"});
  check_throws<ShapeError>([&] { causal_attention(a, a, a, 0); }, {"causal_attention", "n_head"});
  check_throws<ShapeError>([&] { causal_attention(a, zeros({2, 4, 6}), a, 2); }, {"causal_attention", "[2, 4, 6]"});
  check_throws<ShapeError>([&] { causal_attention(zeros({3, 6}), zeros({3, 6}), zeros({3, 6}), 2); },
                           {"causal_attention", "[3, 6]"});
  check_throws<DTypeError>([&] { causal_attention(a, a, zeros({2, 3, 6}, DType::f64), 2); },
                           {"causal_attention", "float64"});
}

// ---------------------------------------------------------------- float32 vs float64

BOOST_AUTO_TEST_CASE(float32_agrees_with_float64) {
  auto agree = [](const Tensor& y32, const Tensor& y64, double tol, const std::string& what) {
    BOOST_CHECK(y32.dtype() == DType::f32);
    check_close(y32.to_vector(), y64.to_vector(), tol, tol, what);
  };
  Tensor x = random_tensor({64, 256}, 170, DType::f64, -6, 6);
  Tensor x32 = x.to(DType::f32);
  agree(softmax(x32), softmax(x), 1e-6, "softmax");
  agree(log_softmax(x32, 0), log_softmax(x, 0), 1e-5, "log_softmax dim 0");
  Generator gen(171);
  Tensor t = randint({64}, 0, 256, gen);
  agree(cross_entropy(x32, t), cross_entropy(x, t), 1e-6, "cross_entropy");
  Tensor w = random_tensor({256}, 172), b = random_tensor({256}, 173);
  agree(layer_norm(x32, w.to(DType::f32), b.to(DType::f32)), layer_norm(x, w, b), 1e-5, "layer_norm");
  Tensor q = random_tensor({2, 96, 64}, 174), k = random_tensor({2, 96, 64}, 175), v = random_tensor({2, 96, 64}, 176);
  agree(causal_attention(q.to(DType::f32), k.to(DType::f32), v.to(DType::f32), 4), causal_attention(q, k, v, 4), 1e-5,
        "causal_attention");
}

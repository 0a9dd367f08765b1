// Values and bad input for the elementwise ops and matrix products.
#define BOOST_TEST_MODULE elementwise_matmul
#include <boost/test/unit_test.hpp>

#include <cmath>

#include "loragrad/ops.hpp"

using namespace loragrad;

template <class E>
static bool message_has(const E& e, const std::string& part) {
  return std::string(e.what()).find(part) != std::string::npos;
}
static Tensor vals(std::vector<double> v, Shape s, DType dt = DType::f64) { return from_values(v, s, dt); }

BOOST_AUTO_TEST_CASE(broadcasting_values) {
  Tensor a = vals({1, 2, 3}, {3, 1});
  Tensor b = vals({10, 20}, {1, 2});
  Tensor c = a + b;
  BOOST_TEST(c.shape() == (Shape{3, 2}));
  BOOST_TEST(c.to_vector() == (std::vector<double>{11, 21, 12, 22, 13, 23}));
  BOOST_TEST((a * 2.0).to_vector() == (std::vector<double>{2, 4, 6}));
  BOOST_TEST((1.0 - a).to_vector() == (std::vector<double>{0, -1, -2}));
  BOOST_TEST((vals({6}, {1}) / vals({2, 3}, {2})).to_vector() == (std::vector<double>{3, 2}));
  BOOST_TEST(broadcast_shapes({2, 1, 3}, {4, 1}, "t") == (Shape{2, 4, 3}));
  // A large broadcast goes through the threaded path; check against the small formula.
  Tensor big = ones({300, 400}, DType::f64) * vals(std::vector<double>(400, 2.0), {400});
  BOOST_TEST(sum(big).item() == 300 * 400 * 2.0);
}

BOOST_AUTO_TEST_CASE(gradient_reduces_to_the_input_shape) {
  Tensor a = vals({1, 2, 3}, {3, 1});
  a.requires_grad_();
  Tensor b = vals({10, 20}, {2});
  b.requires_grad_();
  sum(a * b).backward();
  BOOST_TEST(a.grad().shape() == (Shape{3, 1}));
  BOOST_TEST(a.grad().to_vector() == (std::vector<double>{30, 30, 30}));
  BOOST_TEST(b.grad().shape() == (Shape{2}));
  BOOST_TEST(b.grad().to_vector() == (std::vector<double>{6, 6}));
}

BOOST_AUTO_TEST_CASE(activation_values_match_formulas) {
  Tensor x = vals({-2, -0.5, 0, 0.5, 2}, {5});
  std::vector<double> g = gelu(x).to_vector(), s = silu(x).to_vector(), r = relu(x).to_vector();
  std::vector<double> xs = x.to_vector();
  for (size_t i = 0; i < xs.size(); ++i) {
    double v = xs[i];
    BOOST_TEST(std::abs(g[i] - 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)))) < 1e-15);
    BOOST_TEST(std::abs(s[i] - v / (1 + std::exp(-v))) < 1e-15);
    BOOST_TEST(r[i] == std::max(v, 0.0));
  }
  // gelu(1) in PyTorch: torch.nn.functional.gelu(torch.tensor(1.), approximate='tanh') = 0.8411920070648193
  BOOST_TEST(std::abs(gelu(vals({1}, {1}, DType::f32)).item() - 0.8411920070648193) < 1e-7);
}

BOOST_AUTO_TEST_CASE(masked_fill_and_dropout) {
  Tensor x = vals({1, 2, 3, 4}, {2, 2});
  Tensor m = vals({0, 1}, {2});
  BOOST_TEST(masked_fill(x, m, -9).to_vector() == (std::vector<double>{1, -9, 3, -9}));
  Generator gen(3);
  Tensor big = ones({100000}, DType::f64);
  Tensor d = dropout(big, 0.25, true, gen);
  std::vector<double> v = d.to_vector();
  int64_t zeros_seen = 0;
  for (double e : v) {
    BOOST_REQUIRE(e == 0.0 || std::abs(e - 1 / 0.75) < 1e-12);
    zeros_seen += e == 0.0;
  }
  BOOST_TEST(std::abs(zeros_seen / 100000.0 - 0.25) < 0.01);
  BOOST_TEST(dropout(big, 0.25, false, gen).to_vector() == big.to_vector());  // eval: identity
  // The same seed gives the same mask.
  Generator g1(11), g2(11);
  BOOST_TEST(dropout(big, 0.5, true, g1).to_vector() == dropout(big, 0.5, true, g2).to_vector());
}

BOOST_AUTO_TEST_CASE(matmul_values) {
  Tensor a = vals({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor b = vals({7, 8, 9, 10, 11, 12}, {3, 2});
  BOOST_TEST(matmul(a, b).to_vector() == (std::vector<double>{58, 64, 139, 154}));
  BOOST_TEST(matmul_nt(a, a).to_vector() == (std::vector<double>{14, 32, 32, 77}));
  BOOST_TEST(matmul_tn(a, a).to_vector() == (std::vector<double>{17, 22, 27, 22, 29, 36, 27, 36, 45}));
  Tensor w = vals({1, 0, 1, 0, 1, 0}, {2, 3});
  Tensor bias = vals({0.5, -0.5}, {2});
  BOOST_TEST(linear(a, w, bias).to_vector() == (std::vector<double>{4.5, 1.5, 10.5, 4.5}));
  // Batched with broadcast batch dims: (2, 1, 2, 3) @ (3, 3, 2) -> (2, 3, 2, 2)
  Generator gen(1);
  Tensor A = randn({2, 1, 2, 3}, gen, DType::f64), B = randn({3, 3, 2}, gen, DType::f64);
  Tensor C = matmul(A, B);
  BOOST_TEST(C.shape() == (Shape{2, 3, 2, 2}));
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 3; ++j)
      for (int64_t r = 0; r < 2; ++r)
        for (int64_t c = 0; c < 2; ++c) {
          double ref = 0;
          for (int64_t k = 0; k < 3; ++k) ref += A.at({i, 0, r, k}) * B.at({j, k, c});
          BOOST_TEST(std::abs(C.at({i, j, r, c}) - ref) < 1e-12);
        }
}

BOOST_AUTO_TEST_CASE(bad_input_is_refused_with_the_op_and_shapes) {
  Tensor a = zeros({2, 3}), b = zeros({4, 5}), d = zeros({2, 3}, DType::f64);
  BOOST_CHECK_EXCEPTION(add(a, zeros({2, 4})), ShapeError,
                        [](const ShapeError& e) { return message_has(e, "add") && message_has(e, "[2, 3]") && message_has(e, "[2, 4]"); });
  BOOST_CHECK_EXCEPTION(mul(a, d), DTypeError,
                        [](const DTypeError& e) { return message_has(e, "mul") && message_has(e, "float64"); });
  BOOST_CHECK_EXCEPTION(matmul(a, b), ShapeError,
                        [](const ShapeError& e) { return message_has(e, "matmul") && message_has(e, "[4, 5]"); });
  BOOST_CHECK_EXCEPTION(matmul(zeros({3}), zeros({3})), ShapeError, [](const ShapeError& e) { return message_has(e, "matmul"); });
  BOOST_CHECK_EXCEPTION(matmul_nt(a, zeros({2, 4})), ShapeError, [](const ShapeError& e) { return message_has(e, "matmul_nt"); });
  BOOST_CHECK_EXCEPTION(linear(a, zeros({4, 2})), ShapeError,
                        [](const ShapeError& e) { return message_has(e, "linear") && message_has(e, "[4, 2]"); });
  BOOST_CHECK_EXCEPTION(linear(a, zeros({4, 3}), zeros({3})), ShapeError,
                        [](const ShapeError& e) { return message_has(e, "bias"); });
  BOOST_CHECK_EXCEPTION(exp(from_indices({1, 2}, {2})), DTypeError, [](const DTypeError& e) { return message_has(e, "exp"); });
  BOOST_CHECK_EXCEPTION(masked_fill(a, zeros({3, 3}), 0), ShapeError, [](const ShapeError& e) { return message_has(e, "masked_fill"); });
  Generator gen(0);
  BOOST_CHECK_EXCEPTION(dropout(a, 1.0, true, gen), ValueError, [](const ValueError& e) { return message_has(e, "dropout"); });
  BOOST_CHECK_EXCEPTION(dropout(a, -0.1, true, gen), ValueError, [](const ValueError& e) { return message_has(e, "dropout"); });
  BOOST_CHECK_EXCEPTION(add(a, Tensor()), ValueError, [](const ValueError& e) { return message_has(e, "add"); });
}

// The autograd engine: backward, accumulation, retain_graph, no_grad, detach,
// the saved-tensor version check, long chains, and no leaks.
#define BOOST_TEST_MODULE autograd
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <thread>

#include "loragrad/gradcheck.hpp"
#include "loragrad/ops.hpp"

using namespace loragrad;

template <class E>
static bool message_has(const E& e, const std::string& part) {
  return std::string(e.what()).find(part) != std::string::npos;
}

static Tensor leaf(std::vector<double> v, Shape s) {
  Tensor t = from_values(v, s, DType::f64);
  t.requires_grad_(true);
  return t;
}

BOOST_AUTO_TEST_CASE(simple_backward) {
  Tensor x = leaf({1, 2, 3}, {3});
  Tensor w = leaf({4, 5, 6}, {3});
  Tensor y = sum(x * w + x * x);  // dy/dx = w + 2x, dy/dw = x
  BOOST_TEST(y.item() == 4 + 10 + 18 + 1 + 4 + 9);
  y.backward();
  BOOST_TEST(x.grad().to_vector() == (std::vector<double>{6, 9, 12}));
  BOOST_TEST(w.grad().to_vector() == (std::vector<double>{1, 2, 3}));
  BOOST_TEST(y.grad_fn() != nullptr);
  BOOST_TEST(!y.is_leaf());
  BOOST_TEST(x.is_leaf());
}

BOOST_AUTO_TEST_CASE(gradients_accumulate_and_zero_grad) {
  Tensor x = leaf({2}, {1});
  for (int i = 0; i < 3; ++i) sum(x * x).backward();
  BOOST_TEST(x.grad().item() == 12.0);  // 3 * 2x
  x.zero_grad();
  BOOST_TEST(!x.grad().defined());
  sum(x * 3.0).backward();
  BOOST_TEST(x.grad().item() == 3.0);
}

BOOST_AUTO_TEST_CASE(explicit_upstream_gradient) {
  Tensor x = leaf({1, 2, 3, 4}, {2, 2});
  Tensor y = x * x;
  y.backward(from_values(std::vector<double>{1, 0, 0, 2}, {2, 2}, DType::f64));
  BOOST_TEST(x.grad().to_vector() == (std::vector<double>{2, 0, 0, 16}));
}

BOOST_AUTO_TEST_CASE(backward_errors) {
  Tensor x = leaf({1, 2}, {2});
  Tensor y = x * 2.0;
  BOOST_CHECK_EXCEPTION(y.backward(), AutogradError, [](const AutogradError& e) { return message_has(e, "[2]"); });
  BOOST_CHECK_EXCEPTION(y.backward(ones({3}, DType::f64)), AutogradError,
                        [](const AutogradError& e) { return message_has(e, "[3]"); });
  Tensor c = from_values(std::vector<double>{1}, {1}, DType::f64);
  BOOST_CHECK_EXCEPTION(c.backward(), AutogradError,
                        [](const AutogradError& e) { return message_has(e, "does not require grad"); });
  BOOST_CHECK_THROW(y.requires_grad_(false), AutogradError);  // not a leaf
}

BOOST_AUTO_TEST_CASE(graph_is_freed_unless_retained) {
  Tensor x = leaf({3}, {1});
  Tensor y = sum(exp(x));
  y.backward(Tensor(), /*retain_graph=*/true);
  y.backward();  // allowed: the graph was retained
  BOOST_TEST(std::abs(x.grad().item() - 2 * std::exp(3.0)) < 1e-12);
  BOOST_CHECK_EXCEPTION(y.backward(), AutogradError, [](const AutogradError& e) { return message_has(e, "second time"); });
}

BOOST_AUTO_TEST_CASE(no_grad_guard_and_detach) {
  Tensor x = leaf({1, 2}, {2});
  {
    NoGradGuard ng;
    BOOST_TEST(!grad_enabled());
    Tensor y = x * 2.0;
    BOOST_TEST(!y.requires_grad());
    {
      NoGradGuard nested;
    }
    BOOST_TEST(!grad_enabled());  // the nested guard restores the outer state
  }
  BOOST_TEST(grad_enabled());
  Tensor d = (x * 2.0).detach();
  BOOST_TEST(!d.requires_grad());
  BOOST_TEST(d.is_leaf());
  Tensor y = sum(d * x);  // d is a constant
  y.backward();
  BOOST_TEST(x.grad().to_vector() == (std::vector<double>{2, 4}));
  // grad mode is per thread
  bool other_thread_enabled = false;
  {
    NoGradGuard ng;
    std::thread t([&] { other_thread_enabled = grad_enabled(); });
    t.join();
  }
  BOOST_TEST(other_thread_enabled);
}

BOOST_AUTO_TEST_CASE(in_place_change_of_saved_tensor_is_caught) {
  Tensor x = leaf({1, 2}, {2});
  Tensor y = exp(x);           // exp saves its output
  Tensor z = sum(y * 1.0);
  y.set({0}, 5.0);             // in-place write to a tensor backward needs
  BOOST_CHECK_EXCEPTION(z.backward(), AutogradError,
                        [](const AutogradError& e) { return message_has(e, "modified in place"); });
  // Writing to an input that was saved (mul saves both operands) is caught too.
  Tensor a = leaf({1, 2}, {2}), b = leaf({3, 4}, {2});
  Tensor p = sum(a * b);
  {
    NoGradGuard ng;
    a.add_(ones({2}, DType::f64));
  }
  BOOST_CHECK_THROW(p.backward(), AutogradError);
}

BOOST_AUTO_TEST_CASE(long_chain_does_not_overflow_the_stack) {
  const int n = 100000;
  Tensor x = leaf({0.5}, {1});
  Tensor y = x;
  for (int i = 0; i < n; ++i) y = y * 1.0;
  sum(y).backward();
  BOOST_TEST(x.grad().item() == 1.0);
  // Destroying an un-backwarded chain must not recurse either.
  Tensor z = x;
  for (int i = 0; i < n; ++i) z = z + 0.0;
  z = Tensor();
  BOOST_TEST(true);
}

BOOST_AUTO_TEST_CASE(no_live_tensor_growth_over_many_steps) {
  Tensor w = leaf({0.1, 0.2, 0.3, 0.4, 0.5, 0.6}, {2, 3});
  Tensor b = leaf({0.0, 0.1}, {2});
  Tensor x = from_values(std::vector<double>{1, 2, 3, 4, 5, 6, 7, 8, 9}, {3, 3}, DType::f64);
  auto step = [&] {
    Tensor h = tanh(linear(x, w, b));
    Tensor loss = mean(h * h) + sum(exp(h)) / 10.0;
    loss.backward();
    NoGradGuard ng;
    w.add_(w.grad(), -0.01);
    b.add_(b.grad(), -0.01);
    w.zero_grad();
    b.zero_grad();
  };
  for (int i = 0; i < 10; ++i) step();
  const int64_t before = TensorImpl::live_count();
  for (int i = 0; i < 1000; ++i) step();
  BOOST_TEST(TensorImpl::live_count() == before);
}

BOOST_AUTO_TEST_CASE(gradcheck_reports_a_wrong_gradient) {
  // A deliberately wrong backward: gradcheck must say which input and element.
  auto wrong = [](const std::vector<Tensor>& in) {
    Tensor y = in[0] * 1.0;
    Tensor out = y.detach();
    return record(Op::mul, out * 1.0, {in[0]}, [](const Tensor& g, const NeedsGrad&) -> Grads { return {g * 2.0}; });
  };
  Tensor x = leaf({1, 2, 3}, {3});
  GradcheckResult r = gradcheck(wrong, {x});
  BOOST_TEST(!r.ok);
  BOOST_TEST(r.report.find("input 0") != std::string::npos);
  BOOST_TEST(r.report.find("analytic 2") != std::string::npos);
  BOOST_TEST(r.report.find("numeric 1") != std::string::npos);
  // And passes a right one.
  BOOST_TEST(gradcheck([](const std::vector<Tensor>& in) { return exp(in[0]) * in[1]; },
                       {leaf({0.1, 0.2}, {2}), leaf({1, 2}, {2})}).ok);
  // float32 inputs are refused.
  Tensor f = ones({2});
  f.requires_grad_();
  BOOST_CHECK_THROW(gradcheck([](const std::vector<Tensor>& in) { return in[0] * 1.0; }, {f}), DTypeError);
}

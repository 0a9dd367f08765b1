// Tensor basics: factories, access, dtype, generator, printing, xtensor bridge.
#define BOOST_TEST_MODULE tensor
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <thread>

#include "loragrad/generator.hpp"
#include "loragrad/ops.hpp"
#include "loragrad/xtensor.hpp"

using namespace loragrad;

template <class E>
static bool message_has(const E& e, const std::string& part) {
  return std::string(e.what()).find(part) != std::string::npos;
}

BOOST_AUTO_TEST_CASE(factories_and_access) {
  Tensor z = zeros({2, 3});
  BOOST_TEST(z.dim() == 2);
  BOOST_TEST(z.numel() == 6);
  BOOST_TEST(z.size(-1) == 3);
  BOOST_TEST(z.dtype() == DType::f32);
  BOOST_TEST(z.at({1, 2}) == 0.0);
  Tensor o = ones({4}, DType::f64);
  BOOST_TEST(o.to_vector() == std::vector<double>(4, 1.0));
  Tensor f = full({2, 2}, 2.5);
  BOOST_TEST(f.at({1, 0}) == 2.5);
  Tensor a = arange(5);
  BOOST_TEST(a.to_vector() == (std::vector<double>{0, 1, 2, 3, 4}));
  Tensor a2 = arange(1.0, 2.0, 0.25, DType::f64);
  BOOST_TEST(a2.to_vector() == (std::vector<double>{1, 1.25, 1.5, 1.75}));
  Tensor v = from_values(std::vector<double>{1, 2, 3, 4, 5, 6}, {2, 3}, DType::f64);
  BOOST_TEST(v.at({1, 1}) == 5.0);
  BOOST_TEST(v.at({-1, -1}) == 6.0);
  v.set({0, 0}, 9);
  BOOST_TEST(v.at({0, 0}) == 9.0);
  BOOST_TEST(scalar(3.0).item() == 3.0);
  BOOST_TEST(scalar(3.0).dim() == 0);
  // 64-byte alignment of storage
  BOOST_TEST(reinterpret_cast<uintptr_t>(v.raw_data()) % 64 == 0);
  Tensor idx = from_indices({3, 1, 2}, {3});
  BOOST_TEST(idx.dtype() == DType::i64);
  BOOST_TEST(idx.data<int64_t>()[0] == 3);
}

BOOST_AUTO_TEST_CASE(bad_access_throws) {
  Tensor v = zeros({2, 3});
  BOOST_CHECK_EXCEPTION(v.at({2, 0}), IndexError, [](const IndexError& e) { return message_has(e, "[2, 3]"); });
  BOOST_CHECK_EXCEPTION(v.at({0}), IndexError, [](const IndexError& e) { return message_has(e, "at"); });
  BOOST_CHECK_EXCEPTION(v.item(), ShapeError, [](const ShapeError& e) { return message_has(e, "item"); });
  BOOST_CHECK_EXCEPTION(v.data<double>(), DTypeError, [](const DTypeError& e) { return message_has(e, "float32"); });
  BOOST_CHECK_EXCEPTION(from_values(std::vector<double>{1, 2, 3}, {2, 2}), ShapeError,
                        [](const ShapeError& e) { return message_has(e, "from_values"); });
  BOOST_CHECK_THROW(zeros({2, -1}), ShapeError);
  BOOST_CHECK_THROW(Tensor().shape(), Error);
  BOOST_CHECK_EXCEPTION(from_indices({1}, {1}).requires_grad_(), DTypeError,
                        [](const DTypeError& e) { return message_has(e, "requires_grad_"); });
}

BOOST_AUTO_TEST_CASE(conversion_between_dtypes) {
  Tensor v = from_values(std::vector<double>{1.5, -2.25}, {2}, DType::f64);
  Tensor f = v.to(DType::f32);
  BOOST_TEST(f.dtype() == DType::f32);
  BOOST_TEST(f.to_vector() == v.to_vector());
  Tensor back = f.to(DType::f64);
  BOOST_TEST(back.dtype() == DType::f64);
  Tensor c = v.clone();
  c.set({0}, 7);
  BOOST_TEST(v.at({0}) == 1.5);  // clone is a deep copy
}

BOOST_AUTO_TEST_CASE(generator_is_reproducible_and_thread_independent) {
  Generator g1(42), g2(42), g3(43);
  Tensor a = randn({1000}, g1), b = randn({1000}, g2), c = randn({1000}, g3);
  BOOST_TEST(a.to_vector() == b.to_vector());
  BOOST_TEST(a.to_vector() != c.to_vector());
  // Second draw differs from the first (the counter advances).
  BOOST_TEST(randn({1000}, g1).to_vector() != a.to_vector());
  // Moments of a large sample.
  Generator g(1);
  std::vector<double> n = randn({200000}, g, DType::f64).to_vector();
  double mean = 0, var = 0;
  for (double x : n) mean += x;
  mean /= n.size();
  for (double x : n) var += (x - mean) * (x - mean);
  var /= n.size();
  BOOST_TEST(std::abs(mean) < 0.01);
  BOOST_TEST(std::abs(var - 1.0) < 0.01);
  std::vector<double> u = uniform({100000}, -2, 3, g, DType::f64).to_vector();
  for (double x : u) BOOST_REQUIRE(x >= -2 && x < 3);
  std::vector<double> r = randint({1000}, 5, 9, g).to_vector();
  for (double x : r) BOOST_REQUIRE(x >= 5 && x < 9);
}

BOOST_AUTO_TEST_CASE(generator_shared_between_threads) {
  // Four threads draw 1000 numbers each from one generator: no counter is used
  // twice, so all 4000 values are distinct and equal the serial draw as a set.
  Generator shared(5);
  std::vector<std::vector<double>> parts(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 1000; ++i) parts[t].push_back(shared.uniform());
    });
  for (auto& th : threads) th.join();
  std::vector<double> all;
  for (auto& p : parts) all.insert(all.end(), p.begin(), p.end());
  std::sort(all.begin(), all.end());
  Generator serial(5);
  std::vector<double> expect;
  for (int i = 0; i < 4000; ++i) expect.push_back(serial.uniform());
  std::sort(expect.begin(), expect.end());
  BOOST_TEST(all == expect);
}

BOOST_AUTO_TEST_CASE(printing) {
  Tensor v = from_values(std::vector<double>{1, 2, 3, 4}, {2, 2});
  std::string s = v.str();
  BOOST_TEST(s.find("tensor([[1, 2]") != std::string::npos);
  BOOST_TEST(s.find("shape=[2, 2]") != std::string::npos);
  BOOST_TEST(s.find("float32") != std::string::npos);
  Tensor big = arange(100);
  BOOST_TEST(big.str().find("...") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(xtensor_round_trip) {
  Tensor v = from_values(std::vector<double>{1, 2, 3, 4, 5, 6}, {2, 3}, DType::f64);
  xt::xarray<double> x = to_xarray<double>(v);
  BOOST_TEST(x.dimension() == 2u);
  BOOST_TEST(x(1, 2) == 6.0);
  xt::xarray<double> doubled = 2.0 * x;
  Tensor back = from_xtensor(doubled);
  BOOST_TEST(back.shape() == (Shape{2, 3}));
  BOOST_TEST(back.at({1, 2}) == 12.0);
  auto view = as_xtensor<double>(v);
  view(0, 0) = -1;
  BOOST_TEST(v.at({0, 0}) == -1.0);
}

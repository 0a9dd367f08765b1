// float32 forward results agree with float64 for every op-table sample.
#define BOOST_TEST_MODULE dtype_consistency
#include <boost/test/unit_test.hpp>

#include <cmath>

#include "op_table.hpp"

using namespace loragrad;
using loragrad::testing::op_table;

BOOST_AUTO_TEST_CASE(float32_matches_float64_forward) {
  int compared = 0;
  for (const auto& e : op_table()) {
    for (const auto& s : e.samples) {
      std::vector<Tensor> in32;
      for (const Tensor& t : s.inputs)
        in32.push_back(t.defined() && t.dtype() == DType::f64 ? t.detach().to(DType::f32) : t);
      NoGradGuard ng;
      Tensor y64 = s.fn(s.inputs), y32 = s.fn(in32);
      BOOST_REQUIRE_MESSAGE(y32.shape() == y64.shape(), op_name(e.op) << " [" << s.label << "]: shapes differ");
      const std::vector<double> a = y32.to_vector(), b = y64.to_vector();
      double scale = 1e-30;
      for (double v : b) scale = std::max(scale, std::abs(v));
      double worst = 0;
      for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]) / scale);
      BOOST_CHECK_MESSAGE(worst <= s.f32_tol, op_name(e.op) << " [" << s.label << "]: float32 differs from float64 by "
                                                            << worst << " (relative to max |y|)");
      ++compared;
    }
  }
  BOOST_CHECK_GT(compared, 0);
}

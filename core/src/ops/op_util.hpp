#pragma once
// Helpers that several op files (and gradcheck) need. Internal to core: not
// installed, so nothing here is part of the API.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "loragrad/tensor.hpp"

namespace loragrad::detail {

// s[begin] * ... * s[end - 1]: the element count of a run of dims (1 when the
// run is empty), e.g. the outer and inner sizes around one dim.
inline int64_t prod(const Shape& s, size_t begin, size_t end) {
  int64_t n = 1;
  for (size_t i = begin; i < end; ++i) n *= s[i];
  return n;
}

// Element `flat` (row-major) of a tensor of `shape` written as its index, "[1, 0, 2]",
// so a message can point at it the way a reader would index the tensor.
inline std::string position_str(int64_t flat, const Shape& shape) {
  std::vector<int64_t> idx(shape.size());
  for (int64_t k = static_cast<int64_t>(shape.size()) - 1; k >= 0; --k) {
    idx[k] = flat % shape[k];
    flat /= shape[k];
  }
  return shape_str(idx);
}

// sum_j exp(x[j] - shift) over n values, the terms written to y when y is not
// null. Defined in softmax.cpp (xsimd, so that only one file pays for it);
// attention's causal softmax uses it too.
float exp_shift_sum(const float* x, float* y, int64_t n, float shift);
double exp_shift_sum(const double* x, double* y, int64_t n, double shift);

}  // namespace loragrad::detail

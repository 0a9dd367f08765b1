#pragma once
// A small dense SVD for PiSSA initialisation and for rank-truncating a sum of
// adapters. Matrices here are (out, in) weights of a few thousand entries at
// most, so clarity beats speed: one-sided Jacobi (Hestenes) in double.
//
// Accuracy (double): singular values to a few ulps times ||A|| (one-sided
// Jacobi is backward stable, and relatively accurate for well-scaled columns);
// U and V orthonormal to ~1e-15; ||A - U S Vh|| / ||A|| ~ 1e-15. f32 inputs are
// widened to double and the results rounded back to f32.
#include <cstdint>
#include <utility>

#include "loragrad/tensor.hpp"

namespace loragrad::lora {

// Thin SVD of a (m, n) matrix, k = min(m, n): a = U diag(S) Vh with U (m, k),
// S (k) descending and >= 0, Vh (k, n). Signs are made deterministic: in each
// column of U the entry of largest magnitude is positive (LAPACK's signs are
// arbitrary, so compare with other libraries sign-free). No autograd.
struct Svd {
  Tensor U, S, Vh;
};
Svd svd(const Tensor& a);

// The best rank-r factors of a (m, n) matrix (Eckart-Young): with
// sqrt_S = sqrt(S[:r]), B = U[:, :r] diag(sqrt_S) (m, r), A = diag(sqrt_S) Vh[:r] (r, n),
// so B A is the truncated SVD. The singular values are split evenly between
// the factors, as PiSSA does. Returns {B, A}. Requires 0 < r <= min(m, n).
std::pair<Tensor, Tensor> low_rank_factors(const Tensor& a, int64_t r);

}  // namespace loragrad::lora

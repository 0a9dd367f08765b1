#pragma once
// GEMM kernels, row-major, BLAS-like:
//   C (M, N) = alpha * op(A) @ op(B) + beta * C
// op(A) is (M, K): A is stored (M, K) with row stride lda, or (K, M) when trans_a.
// op(B) is (K, N): B is stored (K, N) with row stride ldb, or (N, K) when trans_b.
// beta == 0 means C is overwritten (never read, so NaN garbage there is harmless).
//
// float: cache-blocked, packed panels, an xsimd micro-kernel, OpenMP over
// blocks when the product is large enough and the caller is not already inside
// a parallel region. double: same interface (used for gradient checking).
#include <cstdint>

namespace loragrad::kernels {

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
          const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
          int64_t ldc);
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha,
          const double* A, int64_t lda, const double* B, int64_t ldb, double beta, double* C,
          int64_t ldc);

}  // namespace loragrad::kernels

#pragma once
// The narrow path of the float GEMM (gemm_narrow.cpp): products with one
// side of at most kNarrowMax, the rank-r products of a LoRA adapter (r = 8
// or 16). Private to core/src/kernels/; gemm() (gemm.cpp) hands such shapes
// here by itself, and tests/test_gemm.cpp checks it white-box.
//
// Why a path of its own: the main kernel's register tile is 12 x 32, so an
// N of 8 or 16 computes 2-4x the useful flops (the padded lanes), and it
// packs the big operand (the activations) for a product that reuses each of
// its elements only r times, a copy that costs about as much as the flops.
// Here the big operand is read in place and only the small one is packed.
#include <cstdint>

namespace loragrad::kernels {

// The narrow side: N (columns of C) or M (rows of C) at most this.
inline constexpr int64_t kNarrowMax = 16;

// Whether gemm() takes the narrow path for this shape. A function of the
// shape (and the instruction set) only, never of the thread count, so that a
// product gives the same bits whatever the number of threads. False when the
// machine has no AVX-512 (the kernels are written for 16-float vectors).
bool narrow_gemm_applies(int64_t M, int64_t N, int64_t K);

// C (M, N) = alpha * op(A) @ op(B) + beta * C, as gemm() (arguments already
// checked; beta == 0 overwrites C without reading it), for a shape that
// narrow_gemm_applies() accepts.
void gemm_narrow(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

}  // namespace loragrad::kernels

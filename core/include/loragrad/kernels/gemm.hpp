#pragma once
// GEMM kernels, row-major, BLAS-like:
//   C (M, N) = alpha * op(A) @ op(B) + beta * C
// op(A) is (M, K): A is stored (M, K) with row stride lda, or (K, M) when trans_a.
// op(B) is (K, N): B is stored (K, N) with row stride ldb, or (N, K) when trans_b.
// beta == 0 means C is overwritten (never read, so NaN garbage there is harmless).
//
// float: cache-blocked, packed panels, an xsimd micro-kernel, OpenMP over
// blocks when the product is large enough and the caller is not already inside
// a parallel region. Products with N or M at most 16 (a LoRA adapter's rank-r
// products) take kernels of their own that read the large operand in place
// (core/src/kernels/gemm_narrow.cpp). double: same interface (used for
// gradient checking).
// gemm_decoded_b: a float B that is decoded on demand (quantised weights).
#include <cstdint>
#include <functional>

namespace loragrad::kernels {

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
          const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
          int64_t ldc);
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha,
          const double* A, int64_t lda, const double* B, int64_t ldb, double beta, double* C,
          int64_t ldc);

// ---------------------------------------------------------------------------
// B decoded on demand (quantised weights)
// ---------------------------------------------------------------------------
// A weight kept in another format (NF4 codes and scales) is multiplied without
// a dense float copy of it: the GEMM asks for one small piece of the stored B
// at a time, decoded to float32 by the caller, and packs it into its panels
// itself (the packing layout stays private to the kernels).
//
//   decode_rows(row0, nrows, col0, ncols, out, ld) writes
//     out[r * ld + c] = B[row0 + r][col0 + c]     for r < nrows, c < ncols
//   where B is the stored matrix: (N, K) when trans_b (a weight W (out, in) in
//   y = x W^T), else (K, N).
//
// A piece spans at most 512 (one depth block) along K and one register tile
// (16-32) along N: at most 64 KiB of floats, so a decoder that works a row
// segment at a time writes into cache. Pieces are asked for from several
// threads at once (decode_rows must be thread-safe and must not throw) and
// the same piece may be asked for more than once (each thread may pack its
// own copy of a small shared block instead of waiting for another's).
using DecodeRows =
    std::function<void(int64_t row0, int64_t nrows, int64_t col0, int64_t ncols, float* out, int64_t ld)>;

// C (M, N) = alpha * op(A) @ op(B) + beta * C, with B read through decode_rows
// (op(B) = B^T when trans_b). Otherwise the same as gemm(): row-major, beta ==
// 0 overwrites C, bad sizes throw ShapeError, an empty decode_rows ValueError.
void gemm_decoded_b(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                    int64_t lda, const DecodeRows& decode_rows, float beta, float* C, int64_t ldc);

}  // namespace loragrad::kernels

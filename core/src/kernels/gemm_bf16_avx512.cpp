// The AVX512_BF16 kernel of the bf16 GEMM: a (kAvx512MR, kNR) = (12, 32)
// register tile of C accumulated with vdpbf16ps, which multiplies 16 lanes of
// bf16 pairs and adds both products to a float32 lane. Per pair row of the
// packed B sliver (two 512-bit loads, 32 columns x 2 k), each of the 12 rows
// of A contributes one 32-bit word (its pair at the same k), broadcast from
// memory into the instruction: 24 vdpbf16ps per 14 loads. 24 accumulators + 2
// B vectors leave 6 of the 32 zmm registers spare.
//
// Compiled for AVX-512 BF16 through a target pragma (the library itself may
// be built for less); called only when CPUID reports the instructions.
#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include "gemm_bf16_kernels.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")

namespace loragrad::kernels::bf16_detail {
namespace {

constexpr int64_t MR = kAvx512MR;

// c[0:R, 0:32] = alpha * a @ b + beta * c, columns limited by the lane masks
// m0 (columns 0-15) and m1 (16-31) (beta == 0: c not read).
//   a: R rows of the packed A block, row stride lda (bf16), kq pairs each
//   b: the packed sliver, kq pair rows of 2 * kNR bf16
template <int R>
void tile(int64_t kq, const uint16_t* __restrict a, int64_t lda, const uint16_t* __restrict b, float alpha,
          float beta, float* __restrict c, int64_t ldc, __mmask16 m0, __mmask16 m1) {
  __m512 acc[R][2];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();

  const char* ap = reinterpret_cast<const char*>(a);  // row r, pair q at ap + r*lda*2 + q*4
  const int64_t row_bytes = lda * 2;
  for (int64_t q = 0; q < kq; ++q, b += 2 * kNR, ap += 4) {
    const __m512bh b0 = (__m512bh)_mm512_load_si512(b);
    const __m512bh b1 = (__m512bh)_mm512_load_si512(b + kNR);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      uint32_t pair;
      std::memcpy(&pair, ap + r * row_bytes, 4);
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(pair));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], b0, av);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], b1, av);
    }
  }

  const __m512 va = _mm512_set1_ps(alpha);
  if (beta == 0.0f) {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      _mm512_mask_storeu_ps(c + r * ldc, m0, _mm512_mul_ps(acc[r][0], va));
      _mm512_mask_storeu_ps(c + r * ldc + 16, m1, _mm512_mul_ps(acc[r][1], va));
    }
  } else {
    const __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      float* cr = c + r * ldc;
      const __m512 c0 = _mm512_maskz_loadu_ps(m0, cr), c1 = _mm512_maskz_loadu_ps(m1, cr + 16);
      _mm512_mask_storeu_ps(cr, m0, _mm512_fmadd_ps(acc[r][0], va, _mm512_mul_ps(vb, c0)));
      _mm512_mask_storeu_ps(cr + 16, m1, _mm512_fmadd_ps(acc[r][1], va, _mm512_mul_ps(vb, c1)));
    }
  }
}

using TileFn = void (*)(int64_t, const uint16_t*, int64_t, const uint16_t*, float, float, float*, int64_t,
                        __mmask16, __mmask16);
template <size_t... I>
constexpr std::array<TileFn, MR> make_tiles(std::index_sequence<I...>) {
  return {&tile<int(I) + 1>...};
}
// kTiles[r - 1] computes r rows (the last, partial row tile costs r / MR of a full one).
constexpr std::array<TileFn, MR> kTiles = make_tiles(std::make_index_sequence<MR>{});

inline __mmask16 lanes16(int64_t n) {
  return n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : static_cast<__mmask16>((1u << n) - 1);
}

}  // namespace

void compute_avx512bf16(int64_t mc, int64_t nc, int64_t kp, const bf16* apack, const bf16* bpack, float alpha,
                        float beta, float* C, int64_t ldc) {
  const uint16_t* a = reinterpret_cast<const uint16_t*>(apack);
  const uint16_t* b = reinterpret_cast<const uint16_t*>(bpack);
  const int64_t lda = a_stride(kp);
  // Sliver outer, row tiles inner: the (kp, 32) sliver is reused by every
  // row tile of the block while the A block streams from L2.
  for (int64_t s = 0; s * kNR < nc; ++s) {
    const int64_t cols = std::min(kNR, nc - s * kNR);
    const __mmask16 m0 = lanes16(cols), m1 = lanes16(cols - 16);
    const uint16_t* bs = b + s * kp * kNR;
    for (int64_t ir = 0; ir < mc; ir += MR) {
      const int64_t rows = std::min(MR, mc - ir);
      kTiles[rows - 1](kp / 2, a + ir * lda, lda, bs, alpha, beta, C + ir * ldc + s * kNR, ldc, m0, m1);
    }
  }
}

}  // namespace loragrad::kernels::bf16_detail

#pragma GCC pop_options
#else
#include <cstdlib>
namespace loragrad::kernels::bf16_detail {
void compute_avx512bf16(int64_t, int64_t, int64_t, const bf16*, const bf16*, float, float, float*, int64_t) {
  std::abort();  // never selected off x86-64
}
}  // namespace loragrad::kernels::bf16_detail
#endif

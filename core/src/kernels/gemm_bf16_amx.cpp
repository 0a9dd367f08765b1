// The AMX-BF16 kernel of the bf16 GEMM. A tile register holds 16 rows of 64
// bytes; tdpbf16ps C += A B takes a (16, 32) bf16 A tile, a B tile of 16 pair
// rows x 16 columns (the packed sliver's layout, gemm_bf16_kernels.hpp) and
// accumulates a (16, 16) float32 C tile: 16K flops per instruction. Of the 8
// tiles, 4 hold a (32, 32) block of C, 2 the A rows and 2 the B columns of one
// 32-deep step, so each tile loaded is used twice.
//
// A block of C is accumulated over the whole packed depth in the tiles. With
// alpha == 1 and beta 0 or 1 (what the layers ask for) a full block is then
// stored straight into C (beta 1: the tiles started from C); otherwise it goes
// to a (32, 32) float scratch and is merged into C with alpha and beta by
// AVX-512. A block with at most 16 valid rows runs half the tiles.
//
// The tile state must have been granted to the process (arch_prctl, done by
// the dispatch in gemm_bf16.cpp before this kernel is ever chosen). Each call
// loads the tile configuration and releases the tiles at the end, so a
// thread holds the (8 KiB) tile state only while it computes.
#include <algorithm>
#include <cstring>

#include "gemm_bf16_kernels.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,fma")

namespace loragrad::kernels::bf16_detail {
namespace {

// ldtilecfg's 64-byte operand (palette 1). A constant in read-only memory:
// GCC's _tile_loadconfig tells the compiler it reads only 8 bytes, so a
// configuration built on the stack could lose its other stores.
struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];  // bytes per row of tile t
  uint8_t rows[16];    // rows of tile t
};
// tmm0-3: C (16 x 16 float), tmm4-5: A (16 x 32 bf16), tmm6-7: B (16 pair rows x 16 columns).
constexpr TileConfig kConfig = {1, 0, {}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};

inline __mmask16 lanes16(int64_t n) {
  return n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : static_cast<__mmask16>((1u << n) - 1);
}

// c[0:rows, 0:cols] = alpha * acc + beta * c, acc (32, 32) row-major.
void merge(const float* acc, int64_t rows, int64_t cols, float alpha, float beta, float* c, int64_t ldc) {
  const __mmask16 m0 = lanes16(cols), m1 = lanes16(cols - 16);
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  for (int64_t r = 0; r < rows; ++r, acc += 32, c += ldc) {
    const __m512 a0 = _mm512_load_ps(acc), a1 = _mm512_load_ps(acc + 16);
    if (beta == 0.0f) {
      _mm512_mask_storeu_ps(c, m0, _mm512_mul_ps(a0, va));
      _mm512_mask_storeu_ps(c + 16, m1, _mm512_mul_ps(a1, va));
    } else {
      const __m512 c0 = _mm512_maskz_loadu_ps(m0, c), c1 = _mm512_maskz_loadu_ps(m1, c + 16);
      _mm512_mask_storeu_ps(c, m0, _mm512_fmadd_ps(a0, va, _mm512_mul_ps(vb, c0)));
      _mm512_mask_storeu_ps(c + 16, m1, _mm512_fmadd_ps(a1, va, _mm512_mul_ps(vb, c1)));
    }
  }
}

}  // namespace

namespace {

// One (rows, cols) <= (32, 32) block of C from A rows `as` (row stride lda)
// and the B sliver `bs`, kp deep. With alpha == 1 and beta 0 or 1 a full
// block goes straight between C and the tiles (beta 1: the tiles start from
// C); otherwise the tiles start from zero, go to a scratch block, and are
// merged with alpha and beta.
void block(const uint16_t* as, int64_t lda, const uint16_t* bs, int64_t kp, int64_t rows, int64_t cols,
           float alpha, float beta, float* c, int64_t ldc) {
  const int64_t a_bytes = lda * 2;      // tile row stride of A: one row of the block
  const int64_t b_bytes = 2 * kNR * 2;  // ... of B: one pair row of the sliver (128 bytes)
  const int64_t c_bytes = ldc * 4;
  // k0 values of op(A) are columns k0.. of the A rows and pair rows k0/2.. of the sliver.
  if (rows > 16) {
    const bool direct = rows == 32 && cols == 32 && alpha == 1.0f && (beta == 0.0f || beta == 1.0f);
    if (direct && beta == 1.0f) {
      _tile_loadd(0, c, c_bytes);
      _tile_loadd(1, c + 16, c_bytes);
      _tile_loadd(2, c + 16 * ldc, c_bytes);
      _tile_loadd(3, c + 16 * ldc + 16, c_bytes);
    } else {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
    }
    for (int64_t k0 = 0; k0 < kp; k0 += 32) {
      _tile_loadd(4, as + k0, a_bytes);
      _tile_loadd(5, as + 16 * lda + k0, a_bytes);
      _tile_loadd(6, bs + k0 * kNR, b_bytes);
      _tile_loadd(7, bs + k0 * kNR + 32, b_bytes);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
    if (direct) {
      _tile_stored(0, c, c_bytes);
      _tile_stored(1, c + 16, c_bytes);
      _tile_stored(2, c + 16 * ldc, c_bytes);
      _tile_stored(3, c + 16 * ldc + 16, c_bytes);
      return;
    }
    alignas(64) float acc[32 * 32];  // (32, 32) block of C as the tiles left it
    _tile_stored(0, acc, 128);
    _tile_stored(1, acc + 16, 128);
    _tile_stored(2, acc + 16 * 32, 128);
    _tile_stored(3, acc + 16 * 32 + 16, 128);
    merge(acc, rows, cols, alpha, beta, c, ldc);
  } else {
    _tile_zero(0);
    _tile_zero(1);
    for (int64_t k0 = 0; k0 < kp; k0 += 32) {
      _tile_loadd(4, as + k0, a_bytes);
      _tile_loadd(6, bs + k0 * kNR, b_bytes);
      _tile_loadd(7, bs + k0 * kNR + 32, b_bytes);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
    }
    alignas(64) float acc[16 * 32];
    _tile_stored(0, acc, 128);
    _tile_stored(1, acc + 16, 128);
    merge(acc, rows, cols, alpha, beta, c, ldc);
  }
}

}  // namespace

void compute_amx(int64_t mc, int64_t nc, int64_t kp, const bf16* apack, const bf16* bpack, float alpha, float beta,
                 float* C, int64_t ldc) {
  const uint16_t* a = reinterpret_cast<const uint16_t*>(apack);
  const uint16_t* b = reinterpret_cast<const uint16_t*>(bpack);
  const int64_t lda = a_stride(kp);
  _tile_loadconfig(&kConfig);
  // Row blocks outer, slivers inner: the 32 rows of A (32 x kp bf16, 16 KiB
  // for kp = 256) stay in L1 while the slivers stream from L2. Measured on
  // Emerald Rapids (one thread, loaded machine): 2048 x 1024 x 256 470-490
  // GFLOP/s against 310-390 with slivers outer; the other shapes of the
  // model within noise of each other. KC 256 or 512 instead of 1024 was
  // slower on K = 1024 (C merged, A packed once per depth block).
  for (int64_t ir = 0; ir < mc; ir += 32)
    for (int64_t s = 0; s * kNR < nc; ++s)
      block(a + ir * lda, lda, b + s * kp * kNR, kp, std::min<int64_t>(32, mc - ir), std::min(kNR, nc - s * kNR),
            alpha, beta, C + ir * ldc + s * kNR, ldc);
  _tile_release();
}

}  // namespace loragrad::kernels::bf16_detail

#pragma GCC pop_options
#else
#include <cstdlib>
namespace loragrad::kernels::bf16_detail {
void compute_amx(int64_t, int64_t, int64_t, const bf16*, const bf16*, float, float, float*, int64_t) {
  std::abort();  // never selected off x86-64
}
}  // namespace loragrad::kernels::bf16_detail
#endif

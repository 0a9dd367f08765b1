// Packing for the bf16 GEMM (layouts: gemm_bf16_kernels.hpp). Compiled for
// AVX-512 F/BW/VL through a target pragma, whatever the library's own
// instruction set: both bf16 kernels run only on CPUs that have it (every
// AVX512_BF16 and AMX CPU does), and the driver calls these only then.
#include <algorithm>
#include <cstring>

#include "gemm_bf16_kernels.hpp"
#include "bf16_simd.hpp"

#if defined(LORAGRAD_BF16_SIMD_AVAILABLE)
// After every #include: only the functions below are compiled for AVX-512,
// not inline functions of headers that other files share.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")

namespace loragrad::kernels::bf16_detail {
namespace {

inline uint16_t* bits(bf16* p) { return reinterpret_cast<uint16_t*>(p); }
inline const uint16_t* bits(const bf16* p) { return reinterpret_cast<const uint16_t*>(p); }

// Mask of the first n (<= 16) lanes.
inline __mmask16 lanes16(int64_t n) {
  return n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : static_cast<__mmask16>((1u << n) - 1);
}
// Mask of the first n (<= 32) 16-bit lanes.
inline __mmask32 lanes32(int64_t n) {
  return n >= 32 ? __mmask32(0xffffffffu) : n <= 0 ? __mmask32(0) : static_cast<__mmask32>((1u << n) - 1);
}

// op(A) block rows from a transposed A (stored (K, M)): row i of the block
// is column i0 + i of A, so 16 rows are filled at a time, each step k of them
// being one contiguous run of 16 values of A (widened to 32-bit lanes, then
// stored one by one: there is no 16-bit scatter). Not the hot path: the
// layers of the model only pass A untransposed.
void pack_a_transposed(const AOperand& a, int64_t i0, int64_t mc, int64_t k0, int64_t kc, int64_t kp,
                       uint16_t* dst) {
  const int64_t ld = a_stride(kp);
  alignas(64) uint32_t lane[16];
  for (int64_t ib = 0; ib < mc; ib += 16) {
    const int64_t rows = std::min<int64_t>(16, mc - ib);
    const __mmask16 m = lanes16(rows);
    for (int64_t k = 0; k < kc; ++k) {
      const int64_t off = (k0 + k) * a.ld + i0 + ib;
      const __m512i v = a.a32 ? bf16_simd::round_lanes(_mm512_maskz_loadu_ps(m, a.a32 + off))
                              : _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, bits(a.a16) + off));
      _mm512_store_si512(lane, v);
      for (int64_t r = 0; r < rows; ++r) dst[(ib + r) * ld + k] = static_cast<uint16_t>(lane[r]);
    }
    for (int64_t r = 0; r < rows; ++r) std::memset(dst + (ib + r) * ld + kc, 0, size_t(kp - kc) * 2);
  }
}

}  // namespace

void pack_a(const AOperand& a, int64_t i0, int64_t mc, int64_t rows_pad, int64_t k0, int64_t kc, int64_t kp,
            bf16* dst_bf16) {
  uint16_t* dst = bits(dst_bf16);
  const int64_t ld = a_stride(kp);
  if (a.trans) {
    pack_a_transposed(a, i0, mc, k0, kc, kp, dst);
  } else {
    // Rows of A are rows of the block: a copy, or a rounding of floats.
    for (int64_t i = 0; i < mc; ++i) {
      uint16_t* d = dst + i * ld;
      const int64_t off = (i0 + i) * a.ld + k0;
      if (a.a32)
        bf16_simd::to_bf16_row(a.a32 + off, d, kc);
      else
        std::memcpy(d, bits(a.a16) + off, size_t(kc) * 2);
      std::memset(d + kc, 0, size_t(kp - kc) * 2);
    }
  }
  for (int64_t i = mc; i < rows_pad; ++i) std::memset(dst + i * ld, 0, size_t(kp) * 2);
}

void pack_b(const BOperand& b, int64_t k0, int64_t kc, int64_t kp, int64_t n0, int64_t nc, bf16* dst_bf16) {
  uint16_t* dst = bits(dst_bf16);
  const uint16_t* B = bits(b.b);
  const int64_t pairs = kc / 2;        // pair rows with two values of op(B)
  const int64_t filled = (kc + 1) / 2;  // ... and the one with a single value when kc is odd
  const int64_t q_end = kp / 2;         // pair rows of the padded sliver
  // Interleaving indices for vpermt2w: {r0[0], r1[0], r0[1], r1[1], ...}.
  alignas(64) uint16_t lo[32], hi[32];
  for (int c = 0; c < 16; ++c) {
    lo[2 * c] = uint16_t(c), lo[2 * c + 1] = uint16_t(32 + c);
    hi[2 * c] = uint16_t(16 + c), hi[2 * c + 1] = uint16_t(48 + c);
  }
  const __m512i idx_lo = _mm512_load_si512(lo), idx_hi = _mm512_load_si512(hi);
  const __m512i zero = _mm512_setzero_si512();
  // Gathers address rows of B by 32-bit offsets (scale 2): fine up to rows of 2^25 values.
  const bool gather = b.ld <= (int64_t(1) << 25);
  alignas(64) int32_t offs[16];
  for (int c = 0; c < 16; ++c) offs[c] = static_cast<int32_t>(c * (gather ? b.ld : 0));
  const __m512i vindex = _mm512_load_si512(offs);

  for (int64_t s = 0; s * kNR < nc; ++s, dst += kp * kNR) {
    const int64_t cols = std::min(kNR, nc - s * kNR);
    const int64_t jb = n0 + s * kNR;
    if (!b.trans) {
      // op(B)[k][j] = B[k*ld + j]: pair row q interleaves two rows of B.
      const __mmask32 m = lanes32(cols);
      for (int64_t q = 0; q < filled; ++q) {
        const uint16_t* r0 = B + (k0 + 2 * q) * b.ld + jb;
        const __m512i v0 = _mm512_maskz_loadu_epi16(m, r0);
        const __m512i v1 = 2 * q + 1 < kc ? _mm512_maskz_loadu_epi16(m, r0 + b.ld) : zero;
        _mm512_store_si512(dst + q * 2 * kNR, _mm512_permutex2var_epi16(v0, idx_lo, v1));
        _mm512_store_si512(dst + q * 2 * kNR + kNR, _mm512_permutex2var_epi16(v0, idx_hi, v1));
      }
    } else {
      // op(B)[k][j] = B[j*ld + k]: column c of the sliver is row jb + c of
      // B, in which a pair (k, k+1) is one 32-bit word: a pair row is a
      // gather of 16 words from 16 rows of B, twice.
      const uint16_t* col0 = B + jb * b.ld + k0;
      if (gather) {
        const __mmask16 m0 = lanes16(cols), m1 = lanes16(cols - 16);
        for (int64_t q = 0; q < pairs; ++q) {
          const uint16_t* p = col0 + 2 * q;
          _mm512_store_si512(dst + q * 2 * kNR, _mm512_mask_i32gather_epi32(zero, m0, vindex, p, 2));
          _mm512_store_si512(dst + q * 2 * kNR + kNR,
                             _mm512_mask_i32gather_epi32(zero, m1, vindex, p + 16 * b.ld, 2));
        }
      } else {
        for (int64_t q = 0; q < pairs; ++q) {
          uint16_t* d = dst + q * 2 * kNR;
          for (int64_t c = 0; c < kNR; ++c) {
            d[2 * c] = c < cols ? col0[c * b.ld + 2 * q] : 0;
            d[2 * c + 1] = c < cols ? col0[c * b.ld + 2 * q + 1] : 0;
          }
        }
      }
      if (filled > pairs) {  // kc odd: the last pair holds one value (reading its partner could run off B)
        uint16_t* d = dst + pairs * 2 * kNR;
        for (int64_t c = 0; c < kNR; ++c) {
          d[2 * c] = c < cols ? col0[c * b.ld + kc - 1] : 0;
          d[2 * c + 1] = 0;
        }
      }
    }
    for (int64_t q = filled; q < q_end; ++q) {  // depth padding
      _mm512_store_si512(dst + q * 2 * kNR, zero);
      _mm512_store_si512(dst + q * 2 * kNR + kNR, zero);
    }
  }
}

}  // namespace loragrad::kernels::bf16_detail

#pragma GCC pop_options
#else
#include <cstdlib>
namespace loragrad::kernels::bf16_detail {
// Not x86-64: the driver never selects a bf16 kernel (bf16_kernel() is "fp32").
void pack_a(const AOperand&, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bf16*) { std::abort(); }
void pack_b(const BOperand&, int64_t, int64_t, int64_t, int64_t, int64_t, bf16*) { std::abort(); }
}  // namespace loragrad::kernels::bf16_detail
#endif

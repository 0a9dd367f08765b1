#pragma once
// AVX-512 float <-> bf16 conversion of 16 values, private to core/src/kernels/.
// Shared by the row conversions (bf16.cpp, compiled for the library's ISA)
// and the bf16 GEMM's packing (compiled for AVX-512 whatever the library's
// ISA, chosen at run time). Each function carries its own target attribute
// and internal linkage (static), so every translation unit that includes this
// gets its own AVX-512 copy and no other code is compiled for AVX-512 by it;
// callers must only reach them on a CPU with AVX-512 F/BW/VL.
//
// Bit-for-bit the scalar to_bf16() of loragrad/kernels/bf16.hpp (round to
// nearest even, subnormals rounded, NaN made quiet), written with integer
// operations because vcvtneps2bf16 flushes subnormal inputs to zero.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#include <cstdint>

#define LORAGRAD_BF16_SIMD_AVAILABLE 1
#define LORAGRAD_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

namespace loragrad::kernels::bf16_simd {

// 16 floats -> 16 bf16 in the low 16 bits of each 32-bit lane.
static inline LORAGRAD_TARGET_AVX512 __m512i round_lanes(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan =
      _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
  const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x0040));
  return _mm512_mask_mov_epi32(rounded, nan, quiet);
}

// 16 floats -> 16 packed bf16.
static inline LORAGRAD_TARGET_AVX512 __m256i to_bf16x16(__m512 x) { return _mm512_cvtepi32_epi16(round_lanes(x)); }

// dst[0:n] = to_bf16(src[0:n]), n >= 0 any.
static inline LORAGRAD_TARGET_AVX512 void to_bf16_row(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), to_bf16x16(_mm512_loadu_ps(src + i)));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_cvtepi32_storeu_epi16(dst + i, m, round_lanes(_mm512_maskz_loadu_ps(m, src + i)));
  }
}

// dst[0:n] = to_float(src[0:n]).
static inline LORAGRAD_TARGET_AVX512 void to_float_row(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)));
    _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
  }
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, src + i));
    _mm512_mask_storeu_ps(dst + i, m, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
  }
}

}  // namespace loragrad::kernels::bf16_simd
#endif

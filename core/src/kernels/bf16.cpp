// Row conversions between float32 and bf16 (loragrad/kernels/bf16.hpp): the
// AVX-512 ones of bf16_simd.hpp when the library is compiled for AVX-512,
// else a branch-free form of the scalar rounding that the compiler vectorises.
#include "loragrad/kernels/bf16.hpp"

#include <cstring>

#include "bf16_simd.hpp"

namespace loragrad::kernels {

#if defined(LORAGRAD_BF16_SIMD_AVAILABLE) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define LORAGRAD_BF16_ROWS_AVX512 1
#endif

void to_bf16(const float* src, bf16* dst, int64_t n) {
  if (n <= 0) return;
#ifdef LORAGRAD_BF16_ROWS_AVX512
  bf16_simd::to_bf16_row(src, reinterpret_cast<uint16_t*>(dst), n);
#else
  // bf16 is a standard-layout struct of one uint16_t: its bits are the object.
  uint16_t* out = reinterpret_cast<uint16_t*>(dst);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, src + i, 4);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const uint32_t quiet = (u >> 16) | 0x0040u;
    out[i] = static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? quiet : rounded);
  }
#endif
}

void to_float(const bf16* src, float* dst, int64_t n) {
  if (n <= 0) return;
#ifdef LORAGRAD_BF16_ROWS_AVX512
  bf16_simd::to_float_row(reinterpret_cast<const uint16_t*>(src), dst, n);
#else
  const uint16_t* in = reinterpret_cast<const uint16_t*>(src);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = static_cast<uint32_t>(in[i]) << 16;
    std::memcpy(dst + i, &u, 4);
  }
#endif
}

}  // namespace loragrad::kernels

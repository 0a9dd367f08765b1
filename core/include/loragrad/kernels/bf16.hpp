#pragma once
// bfloat16 storage: the type and its conversions to and from float32.
//
// A bfloat16 is the upper half of an IEEE binary32: sign, the same 8-bit
// exponent (so the same range, about 1e-38 .. 3e38, and inf / NaN), and 7
// explicit mantissa bits (relative spacing 2^-8 = 0.4%). Widening to float is
// therefore exact (a shift), and narrowing only rounds the mantissa.
//
// It is a storage format here: loragrad never does arithmetic in bfloat16. The
// products of the bf16 GEMM (gemm_bf16.hpp) are exact in float32 and are
// accumulated in float32.
//
// Rounding (to_bf16): to nearest, ties to even, on every input, as PyTorch's
// c10::BFloat16 does:
//   * a finite value that rounds past the largest bf16 (above 3.3961e38)
//     becomes inf, as IEEE rounding does;
//   * subnormal floats are rounded like the rest (bf16 has subnormals too:
//     they are the top halves of subnormal floats), not flushed to zero;
//   * NaN stays NaN, with its sign, and is made quiet: its top mantissa bit
//     is set, so a NaN whose payload sat only in the low 16 bits does not turn
//     into inf when they are cut off.
// The vector row conversions give bit-for-bit the same results as the scalar
// ones. (AVX512_BF16's own vcvtneps2bf16 flushes subnormal inputs to zero,
// which is why it is not used for them.)
#include <cstdint>
#include <cstring>

namespace loragrad {

// One bfloat16 value, as its 16 bits. A struct rather than a bare uint16_t so
// that a bf16 buffer cannot be passed where integers are meant, nor the other
// way round; it has the size and alignment of uint16_t, so arrays of it are
// plain 16-bit arrays (safetensors' BF16 layout, little-endian).
struct bf16 {
  uint16_t bits;
};
static_assert(sizeof(bf16) == 2 && alignof(bf16) == 2, "bf16 must be a plain 16-bit value");

// float -> bf16, round to nearest even (see above).
inline bf16 to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<uint16_t>((u >> 16) | 0x0040u)};  // NaN: quiet
  // Adding 0x7fff plus the lowest kept bit carries into the kept half exactly
  // when the dropped half is above one half, or equal to it with an odd kept
  // half: ties to even. A carry out of the mantissa steps the exponent, which
  // is the right answer too (up to inf).
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{static_cast<uint16_t>(u >> 16)};
}

// bf16 -> float, exact.
inline float to_float(bf16 x) {
  const uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// float rounded to the nearest bf16 and widened again: the value a float
// stands for once stored in bf16.
inline float round_to_bf16(float x) { return to_float(to_bf16(x)); }

namespace kernels {

// dst[i] = to_bf16(src[i]) for i < n (vectorised; same bits as the scalar
// function). src and dst must not overlap.
void to_bf16(const float* src, bf16* dst, int64_t n);
// dst[i] = to_float(src[i]) for i < n (vectorised, exact).
void to_float(const bf16* src, float* dst, int64_t n);

}  // namespace kernels
}  // namespace loragrad

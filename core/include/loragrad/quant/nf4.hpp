#pragma once
// NF4 (4-bit NormalFloat) weights, as QLoRA / bitsandbytes store them: the
// format, quantisation and decoding. The op that multiplies by one without a
// dense copy is nf4_linear (ops.hpp); the frozen layer holding one is lora's
// Linear4bit (loragrad/lora/nf4_linear.hpp).
// Format: docs/nf4.md. In short:
//
//   weight (out, in) float32, flattened row-major, cut into blocks of
//   `blocksize` elements (the last may be partial; a block may span rows):
//     absmax[b] = max |w| over block b
//     code      = nearest of the 16 NF4 values to w / absmax[b]    (4 bits)
//     w'        = nf4_code_book()[code] * absmax[b]
//   two codes per byte, element 2i in the HIGH nibble.
//   Double quantisation stores absmax itself in 8 bits:
//     offset    = mean(absmax)
//     q[b]      = nearest of the 256 dynamic_map() values to
//                 (absmax[b] - offset) / nested_absmax[b / 256]
//     absmax'   = dynamic_map()[q[b]] * nested_absmax[b / 256] + offset
//
// Quantising is done in float32 the way bitsandbytes' kernels do it (x times
// the reciprocal of absmax, the same decision thresholds, two roundings in
// absmax'), so codes and dequantised values are those bitsandbytes produces,
// except in three documented corners: a block that is all zeros gets the
// zero code (bitsandbytes computes 0 * inf = NaN there and stores code 0,
// dequantising to -0.0 instead of 0.0), the offset is the float64 mean of the
// absmax values rounded to float32 (torch's float32 mean may differ in the
// last bit), and a value exactly on a dynamic-map midpoint goes to the lower
// neighbour (bitsandbytes' binary search picks either, by search path).
#include <array>
#include <cstdint>
#include <vector>

#include "loragrad/tensor.hpp"

namespace loragrad {

// The 16 NF4 values, index = 4-bit code (float32, as in docs/nf4.md and bitsandbytes).
const std::array<float, 16>& nf4_code_book();

// bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8):
// 256 sorted values, 0 at index 127, 1.0 at 255, smallest -0.99296875 (there is
// no -1: the map has 127 negative and 128 positive entries). Built by the same
// float32 arithmetic as torch 2.11 on an AVX2/AVX-512 CPU (torch's linspace
// uses fused multiply-adds there; its plain-C path differs in 42 last bits).
const std::array<float, 256>& dynamic_map();

// NF4 decision thresholds: code = number of thresholds t with x > t. They are
// the midpoints of neighbouring code-book values exactly as bitsandbytes'
// dQuantizeNF4 writes them (decimal literals read as float; four of them are
// one float away from (a + b) / 2 computed in float32).
const std::array<float, 15>& nf4_thresholds();

// A 2-d weight in NF4. Immutable once made (a layer requantising swaps in a new one).
struct NF4Tensor {
  static constexpr int64_t kNestedBlock = 256;  // absmax values per nested scale

  Shape shape;                 // (out, in) of the dense weight
  int64_t blocksize = 64;      // elements per absmax block of the flattened weight
  std::vector<uint8_t> codes;  // (ceil(numel / 2)) element 2i high nibble, 2i+1 low; odd count padded with 0
  bool double_quant = false;
  // !double_quant: one float32 scale per block.
  std::vector<float> absmax;          // (num_blocks)
  // double_quant: the scales in 8 bits, see the top of this file.
  std::vector<uint8_t> absmax_codes;  // (num_blocks) indices into dynamic_map()
  std::vector<float> nested_absmax;   // (ceil(num_blocks / 256))
  float offset = 0.0f;

  int64_t rows() const { return shape[0]; }  // out
  int64_t cols() const { return shape[1]; }  // in
  int64_t numel() const { return shape[0] * shape[1]; }
  int64_t num_blocks() const { return (numel() + blocksize - 1) / blocksize; }

  uint8_t code_at(int64_t i) const {  // 4-bit code of flat element i
    const uint8_t byte = codes[static_cast<size_t>(i >> 1)];
    return (i & 1) ? (byte & 0x0F) : (byte >> 4);
  }
  float block_absmax(int64_t b) const;  // the (dequantised) scale of block b
  // out[0 : count] = dequantised flat elements [start, start + count).
  void decode(int64_t start, int64_t count, float* out) const;
  // The same widened to float64 (the values are float32 ones; for gradient
  // checks and row-wise float64 maths).
  void decode(int64_t start, int64_t count, double* out) const;
  Tensor dequantize() const;  // (out, in) float32

  // Storage this tensor owns: codes + scales (+ nested scales + offset). The
  // two shared tables (16 + 256 floats, one copy per program) are not counted.
  size_t bytes() const;
  double bits_per_weight() const { return 8.0 * static_cast<double>(bytes()) / static_cast<double>(numel()); }
};

// w (out, in) float32; a float64 weight is rounded to float32 first (NF4
// scales are float32 quantities either way). blocksize: a power of two in
// [32, 4096]. Errors: ShapeError (not 2-d, or an empty dim), DTypeError (not
// a float tensor), ValueError (bad blocksize, non-finite value).
NF4Tensor quantize_nf4(const Tensor& w, int64_t blocksize = 64, bool double_quant = true);

}  // namespace loragrad

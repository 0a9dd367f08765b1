// NF4 quantisation: the code book, the dynamic map of double quantisation,
// quantize_nf4, and decoding (see loragrad/quant/nf4.hpp and docs/nf4.md).
#include "loragrad/quant/nf4.hpp"

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <string>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "loragrad/parallel.hpp"

namespace loragrad {

// ============================ tables ============================

const std::array<float, 16>& nf4_code_book() {
  static const std::array<float, 16> book = {
      -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
      -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
      0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
      0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};
  return book;
}

// bitsandbytes' kernel compares against the float64 midpoints printed as the
// shortest decimal that reads back as that double, compiled as float literals.
// Reading that decimal as a float is not always the float nearest the double:
// four midpoints lie exactly halfway between two floats, and the decimal's
// tiny excess decides the side. So rebuild the literal, then read it as float.
const std::array<float, 15>& nf4_thresholds() {
  static const std::array<float, 15> thresholds = [] {
    const auto& book = nf4_code_book();
    std::array<float, 15> t{};
    for (size_t i = 0; i < t.size(); ++i) {
      const double mid = (double(book[i]) + double(book[i + 1])) / 2.0;  // exact in double
      char buf[64];
      const auto res = std::to_chars(buf, buf + sizeof(buf) - 1, mid);  // shortest round-trip form
      *res.ptr = '\0';
      t[i] = std::strtof(buf, nullptr);  // correctly rounded decimal -> float
    }
    return t;
  }();
  return thresholds;
}

// create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), step by
// step in float32 as torch evaluates it:
//   for i in 0..6:  b = linspace(0.1, 1, 2^i + 1)            (float32)
//                   means = (b[:-1] + b[1:]) / 2             (float32)
//                   data += 10^(i-6) * means, and the negatives
//   data += [0, 1.0]; sort.   2 * (1 + 2 + ... + 64) + 2 = 256 values.
// torch's CPU linspace computes b[j] = start + step * j (j < n/2) and
// end - step * (n - 1 - j) (j >= n/2) with step = (end - start) / (n - 1);
// its AVX2 / AVX-512 kernels fuse the multiply-add (one rounding), which is
// what std::fma reproduces. The scale 10^(i-6) is a Python float that torch
// rounds to float32 before the float32 multiply.
const std::array<float, 256>& dynamic_map() {
  static const std::array<float, 256> map = [] {
    std::vector<float> data;
    for (int i = 0; i < 7; ++i) {
      const int n = (1 << i) + 1;
      const float start = 0.1f, end = 1.0f;
      const float step = (end - start) / float(n - 1);
      std::vector<float> b(static_cast<size_t>(n));
      for (int j = 0; j < n; ++j)
        b[j] = j < n / 2 ? std::fma(step, float(j), start) : std::fma(-step, float(n - 1 - j), end);
      const float scale = static_cast<float>(std::pow(10.0, i - 6));
      for (int j = 0; j + 1 < n; ++j) {
        const float mean = (b[j] + b[j + 1]) / 2.0f;
        data.push_back(scale * mean);
        data.push_back(-(scale * mean));
      }
    }
    data.push_back(0.0f);
    data.push_back(1.0f);
    std::sort(data.begin(), data.end());
    std::array<float, 256> out{};
    if (data.size() != out.size()) throw Error("dynamic_map: built " + std::to_string(data.size()) + " values, expected 256");
    std::copy(data.begin(), data.end(), out.begin());
    return out;
  }();
  return map;
}

namespace {

// Midpoints of neighbouring dynamic-map values, in float32 like bitsandbytes'
// dQuantize: (lower + upper) * 0.5f.
const std::array<float, 255>& dynamic_map_midpoints() {
  static const std::array<float, 255> mids = [] {
    const auto& m = dynamic_map();
    std::array<float, 255> t{};
    for (size_t i = 0; i < t.size(); ++i) t[i] = (m[i] + m[i + 1]) * 0.5f;
    return t;
  }();
  return mids;
}

// a * b rounded to float32 before it is used: GCC would otherwise fuse it with
// a following add into one FMA (one rounding), where bitsandbytes rounds twice.
inline float rounded_product(float a, float b) {
  volatile float p = a * b;
  return p;
}

// NF4 code of x = w / absmax: the number of thresholds below x (ties go down).
inline uint8_t nf4_code(float x, const std::array<float, 15>& thresholds) {
  uint8_t code = 0;
  for (float t : thresholds) code += x > t ? 1 : 0;
  return code;
}

// Index of the dynamic-map value nearest x (ties go down).
inline uint8_t dynamic_code(float x) {
  const auto& mids = dynamic_map_midpoints();
  // first midpoint >= x  ==  number of midpoints strictly below x
  return static_cast<uint8_t>(std::lower_bound(mids.begin(), mids.end(), x) - mids.begin());
}

void check_blocksize(int64_t blocksize) {
  const bool power_of_two = blocksize > 0 && (blocksize & (blocksize - 1)) == 0;
  if (!power_of_two || blocksize < 32 || blocksize > 4096)
    throw ValueError("quantize_nf4: blocksize must be a power of two in [32, 4096], got " + std::to_string(blocksize));
}

}  // namespace

// ============================ quantise ============================

NF4Tensor quantize_nf4(const Tensor& w, int64_t blocksize, bool double_quant) {
  check_defined(w, "quantize_nf4");
  if (!is_floating(w.dtype()))
    throw DTypeError(std::string("quantize_nf4: expected a float32 or float64 weight, got ") + dtype_name(w.dtype()));
  if (w.dim() != 2 || w.size(0) <= 0 || w.size(1) <= 0)
    throw ShapeError("quantize_nf4: expected a 2-d weight (out, in) with positive sizes, got " + shape_str(w.shape()));
  check_blocksize(blocksize);

  const Tensor w32 = w.dtype() == DType::f32 ? w : w.detach().to(DType::f32);
  const float* src = w32.data<float>();  // (out * in) flattened row-major

  NF4Tensor q;
  q.shape = w.shape();
  q.blocksize = blocksize;
  q.double_quant = double_quant;
  const int64_t n = q.numel(), nblocks = q.num_blocks();
  q.codes.assign(static_cast<size_t>((n + 1) / 2), 0);  // zero padding nibble for odd n
  std::vector<float> absmax(static_cast<size_t>(nblocks));

  // Blocks are independent; blocksize is even, so no two blocks share a byte.
  const auto& thresholds = nf4_thresholds();
  std::atomic<bool> finite{true};  // cleared by any block holding a NaN or an infinity
  parallel_for(nblocks, n, [&](int64_t b) {
    const int64_t lo = b * blocksize, hi = std::min(n, lo + blocksize);
    float amax = 0.0f;
    bool block_finite = true;
    for (int64_t i = lo; i < hi; ++i) {
      block_finite = block_finite && std::isfinite(src[i]);
      amax = std::max(amax, std::abs(src[i]));
    }
    if (!block_finite) finite.store(false, std::memory_order_relaxed);
    absmax[b] = amax;
    // Like bitsandbytes: multiply by the reciprocal (not divide). An all-zero
    // block gets the zero code (7) everywhere.
    const float inv = amax > 0.0f ? 1.0f / amax : 0.0f;
    for (int64_t i = lo; i < hi; ++i) {
      const uint8_t c = nf4_code(src[i] * inv, thresholds);
      uint8_t& byte = q.codes[static_cast<size_t>(i >> 1)];
      byte = (i & 1) ? uint8_t(byte | c) : uint8_t(c << 4);
    }
  });
  if (!finite.load()) {
    for (int64_t i = 0; i < n; ++i)
      if (!std::isfinite(src[i]))
        throw ValueError("quantize_nf4: weight " + shape_str(w.shape()) + " has a non-finite value at flat index " +
                         std::to_string(i));
  }

  if (!double_quant) {
    q.absmax = std::move(absmax);
    return q;
  }

  // Double quantisation: (absmax - offset) in blocks of 256, 8-bit dynamic codes.
  double sum = 0.0;
  for (float a : absmax) sum += a;
  q.offset = static_cast<float>(sum / static_cast<double>(nblocks));
  const int64_t nnested = (nblocks + NF4Tensor::kNestedBlock - 1) / NF4Tensor::kNestedBlock;
  q.absmax_codes.resize(static_cast<size_t>(nblocks));
  q.nested_absmax.resize(static_cast<size_t>(nnested));
  const uint8_t zero_code = dynamic_code(0.0f);
  for (int64_t g = 0; g < nnested; ++g) {
    const int64_t lo = g * NF4Tensor::kNestedBlock, hi = std::min(nblocks, lo + NF4Tensor::kNestedBlock);
    float amax = 0.0f;
    for (int64_t b = lo; b < hi; ++b) amax = std::max(amax, std::abs(absmax[b] - q.offset));
    q.nested_absmax[g] = amax;
    const float inv = amax > 0.0f ? 1.0f / amax : 0.0f;
    for (int64_t b = lo; b < hi; ++b)
      q.absmax_codes[b] = amax > 0.0f ? dynamic_code((absmax[b] - q.offset) * inv) : zero_code;
  }
  return q;
}

// ============================ dequantise ============================

float NF4Tensor::block_absmax(int64_t b) const {
  if (!double_quant) return absmax[static_cast<size_t>(b)];
  // bitsandbytes: dequantize_blockwise (code * absmax, float32), then += offset.
  const float scaled = rounded_product(dynamic_map()[absmax_codes[static_cast<size_t>(b)]],
                                       nested_absmax[static_cast<size_t>(b / kNestedBlock)]);
  return scaled + offset;
}

namespace {

// out[0 : n] = book[code(start + k)] * scale, all elements in one block.
void decode_segment(const uint8_t* codes, int64_t start, int64_t n, float scale, float* out) {
  const auto& book = nf4_code_book();
  int64_t i = start;
  const int64_t end = start + n;
  if ((i & 1) && i < end) {  // an odd start: the low nibble of its byte
    *out++ = book[codes[i >> 1] & 0x0F] * scale;
    ++i;
  }
#if defined(__AVX512F__)
  // 32 codes (16 bytes) per step: widen bytes to 32-bit lanes, look both nibbles
  // up in the code book held in one register (permutexvar reads the low 4 bits
  // of each index), interleave high/low back into element order, scale.
  const __m512 vbook = _mm512_loadu_ps(book.data());
  const __m512 vscale = _mm512_set1_ps(scale);
  const __m512i first_half = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i second_half = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  for (; i + 32 <= end; i += 32, out += 32) {
    const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + (i >> 1))));
    const __m512 high = _mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), vbook);  // elements 0, 2, 4, ...
    const __m512 low = _mm512_permutexvar_ps(bytes, vbook);                         // elements 1, 3, 5, ...
    _mm512_storeu_ps(out, _mm512_mul_ps(_mm512_permutex2var_ps(high, first_half, low), vscale));
    _mm512_storeu_ps(out + 16, _mm512_mul_ps(_mm512_permutex2var_ps(high, second_half, low), vscale));
  }
#endif
  for (; i + 2 <= end; i += 2, out += 2) {
    const uint8_t byte = codes[i >> 1];
    out[0] = book[byte >> 4] * scale;
    out[1] = book[byte & 0x0F] * scale;
  }
  if (i < end) *out = book[codes[i >> 1] >> 4] * scale;  // a last even element: high nibble
}

}  // namespace

void NF4Tensor::decode(int64_t start, int64_t count, float* out) const {
  const uint8_t* c = codes.data();
  while (count > 0) {
    const int64_t b = start / blocksize;
    const int64_t seg = std::min(count, (b + 1) * blocksize - start);  // up to the block's end
    decode_segment(c, start, seg, block_absmax(b), out);
    start += seg;
    out += seg;
    count -= seg;
  }
}

void NF4Tensor::decode(int64_t start, int64_t count, double* out) const {
  float chunk[1024];  // decoded in float32 (the format's values), then widened
  while (count > 0) {
    const int64_t n = std::min<int64_t>(count, 1024);
    decode(start, n, chunk);
    for (int64_t i = 0; i < n; ++i) out[i] = chunk[i];
    start += n;
    out += n;
    count -= n;
  }
}

Tensor NF4Tensor::dequantize() const {
  Tensor w = uninitialized(shape, DType::f32);
  float* dst = w.data<float>();  // (out, in)
  const int64_t n = numel(), chunk = 1 << 14;  // chunks of whole blocks (blocksize <= 4096)
  const int64_t nchunks = (n + chunk - 1) / chunk;
  parallel_for(nchunks, n, [&](int64_t c) {
    const int64_t lo = c * chunk;
    decode(lo, std::min(chunk, n - lo), dst + lo);
  });
  return w;
}

size_t NF4Tensor::bytes() const {
  size_t total = codes.size();
  if (double_quant)
    total += absmax_codes.size() + nested_absmax.size() * sizeof(float) + sizeof(offset);
  else
    total += absmax.size() * sizeof(float);
  return total;
}

}  // namespace loragrad

// NF4 quantisation (docs/nf4.md), the frozen NF4 linear layer, and the
// table of base-layer storages that makes it.
#define BOOST_TEST_MODULE nf4
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "loragrad/generator.hpp"
#include "loragrad/gradcheck.hpp"
#include "loragrad/lora/base_storage.hpp"
#include "loragrad/lora/nf4_linear.hpp"
#include "loragrad/nn/layers.hpp"
#include "loragrad/ops.hpp"
#include "loragrad/quant/nf4.hpp"

using namespace loragrad;
using namespace loragrad::lora;

namespace {

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8) as torch
// 2.11 made it on an AVX-512 CPU (ATEN_CPU_CAPABILITY avx2 and avx512 agree;
// torch's "default" plain-C kernel differs in 42 last bits), float32 bit patterns.
const uint32_t kTorchDynamicMap[256] = {
    0xbf7e3333u, 0xbf7a999au, 0xbf770000u, 0xbf736666u, 0xbf6fcccdu, 0xbf6c3333u, 0xbf68999au, 0xbf650000u,
    0xbf616666u, 0xbf5dcccdu, 0xbf5a3333u, 0xbf56999au, 0xbf530000u, 0xbf4f6666u, 0xbf4bcccdu, 0xbf483333u,
    0xbf44999au, 0xbf410000u, 0xbf3d6666u, 0xbf39cccdu, 0xbf363334u, 0xbf32999au, 0xbf2f0000u, 0xbf2b6666u,
    0xbf27cccdu, 0xbf243334u, 0xbf20999au, 0xbf1d0000u, 0xbf196666u, 0xbf15cccdu, 0xbf123334u, 0xbf0e999au,
    0xbf0b0000u, 0xbf076666u, 0xbf03ccccu, 0xbf003333u, 0xbef93332u, 0xbef20000u, 0xbeeaccccu, 0xbee3999au,
    0xbedc6666u, 0xbed53333u, 0xbece0000u, 0xbec6ccccu, 0xbebf999au, 0xbeb86666u, 0xbeb13333u, 0xbeaa0000u,
    0xbea2ccccu, 0xbe9b999au, 0xbe946666u, 0xbe8d3334u, 0xbe860000u, 0xbe7d9999u, 0xbe6f3333u, 0xbe60cccdu,
    0xbe526666u, 0xbe440000u, 0xbe35999au, 0xbe273333u, 0xbe18cccdu, 0xbe0a6666u, 0xbdf80000u, 0xbddb3334u,
    0xbdc9eb85u, 0xbdc428f7u, 0xbdbe6667u, 0xbdb8a3d7u, 0xbdb2e148u, 0xbdad1eb8u, 0xbda75c2au, 0xbda1999au,
    0xbd9bd70au, 0xbd96147bu, 0xbd9051ebu, 0xbd8a8f5du, 0xbd84cccdu, 0xbd7e147bu, 0xbd728f5du, 0xbd670a3du,
    0xbd5b851fu, 0xbd500000u, 0xbd447ae1u, 0xbd38f5c3u, 0xbd2d70a3u, 0xbd21eb85u, 0xbd166667u, 0xbd0ae148u,
    0xbcfeb852u, 0xbce7ae15u, 0xbcd0a3d7u, 0xbcb9999au, 0xbca28f5du, 0xbc8b851fu, 0xbc68f5c3u, 0xbc3ae148u,
    0xbc1f3b64u, 0xbc160418u, 0xbc0ccccdu, 0xbc039581u, 0xbbf4bc6au, 0xbbe24dd3u, 0xbbcfdf3bu, 0xbbbd70a4u,
    0xbbab020du, 0xbb989374u, 0xbb8624ddu, 0xbb676c8au, 0xbb428f5cu, 0xbb1db22du, 0xbaf1a9fcu, 0xbaa7ef9du,
    0xba7765ffu, 0xba59e83eu, 0xba3c6a80u, 0xba1eecc1u, 0xba016f01u, 0xb9c7e283u, 0xb98ce705u, 0xb923d70bu,
    0xb8ba1f4bu, 0xb88aefb3u, 0xb8378034u, 0xb7b24206u, 0xb70205ffu, 0xb65a1a94u, 0xb513a3b7u, 0x00000000u,
    0x3513a3b7u, 0x365a1a94u, 0x370205ffu, 0x37b24206u, 0x38378034u, 0x388aefb3u, 0x38ba1f4bu, 0x3923d70bu,
    0x398ce705u, 0x39c7e283u, 0x3a016f01u, 0x3a1eecc1u, 0x3a3c6a80u, 0x3a59e83eu, 0x3a7765ffu, 0x3aa7ef9du,
    0x3af1a9fcu, 0x3b1db22du, 0x3b428f5cu, 0x3b676c8au, 0x3b8624ddu, 0x3b989374u, 0x3bab020du, 0x3bbd70a4u,
    0x3bcfdf3bu, 0x3be24dd3u, 0x3bf4bc6au, 0x3c039581u, 0x3c0ccccdu, 0x3c160418u, 0x3c1f3b64u, 0x3c3ae148u,
    0x3c68f5c3u, 0x3c8b851fu, 0x3ca28f5du, 0x3cb9999au, 0x3cd0a3d7u, 0x3ce7ae15u, 0x3cfeb852u, 0x3d0ae148u,
    0x3d166667u, 0x3d21eb85u, 0x3d2d70a3u, 0x3d38f5c3u, 0x3d447ae1u, 0x3d500000u, 0x3d5b851fu, 0x3d670a3du,
    0x3d728f5du, 0x3d7e147bu, 0x3d84cccdu, 0x3d8a8f5du, 0x3d9051ebu, 0x3d96147bu, 0x3d9bd70au, 0x3da1999au,
    0x3da75c2au, 0x3dad1eb8u, 0x3db2e148u, 0x3db8a3d7u, 0x3dbe6667u, 0x3dc428f7u, 0x3dc9eb85u, 0x3ddb3334u,
    0x3df80000u, 0x3e0a6666u, 0x3e18cccdu, 0x3e273333u, 0x3e35999au, 0x3e440000u, 0x3e526666u, 0x3e60cccdu,
    0x3e6f3333u, 0x3e7d9999u, 0x3e860000u, 0x3e8d3334u, 0x3e946666u, 0x3e9b999au, 0x3ea2ccccu, 0x3eaa0000u,
    0x3eb13333u, 0x3eb86666u, 0x3ebf999au, 0x3ec6ccccu, 0x3ece0000u, 0x3ed53333u, 0x3edc6666u, 0x3ee3999au,
    0x3eeaccccu, 0x3ef20000u, 0x3ef93332u, 0x3f003333u, 0x3f03ccccu, 0x3f076666u, 0x3f0b0000u, 0x3f0e999au,
    0x3f123334u, 0x3f15cccdu, 0x3f196666u, 0x3f1d0000u, 0x3f20999au, 0x3f243334u, 0x3f27cccdu, 0x3f2b6666u,
    0x3f2f0000u, 0x3f32999au, 0x3f363334u, 0x3f39cccdu, 0x3f3d6666u, 0x3f410000u, 0x3f44999au, 0x3f483333u,
    0x3f4bcccdu, 0x3f4f6666u, 0x3f530000u, 0x3f56999au, 0x3f5a3333u, 0x3f5dcccdu, 0x3f616666u, 0x3f650000u,
    0x3f68999au, 0x3f6c3333u, 0x3f6fcccdu, 0x3f736666u, 0x3f770000u, 0x3f7a999au, 0x3f7e3333u, 0x3f800000u,
};

// max |a - b| / max |b|, over all elements (both any float dtype)
double rel_diff(const Tensor& a, const Tensor& b) {
  BOOST_REQUIRE(a.shape() == b.shape());
  const std::vector<double> va = a.to_vector(), vb = b.to_vector();
  double scale = 1e-30, worst = 0.0;
  for (double v : vb) scale = std::max(scale, std::abs(v));
  for (size_t i = 0; i < va.size(); ++i) worst = std::max(worst, std::abs(va[i] - vb[i]));
  return worst / scale;
}

// The scale of block b, recomputed here from the stored fields (two roundings
// for double quantisation, as bitsandbytes: the volatile keeps GCC from fusing
// the multiply and add).
float scale_of(const NF4Tensor& q, int64_t b) {
  if (!q.double_quant) return q.absmax[b];
  volatile float scaled = dynamic_map()[q.absmax_codes[b]] * q.nested_absmax[b / 256];
  return scaled + q.offset;
}

// Dequantise element by element from the raw fields: independent of decode().
std::vector<float> reference_dequant(const NF4Tensor& q) {
  std::vector<float> out(static_cast<size_t>(q.numel()));
  for (int64_t i = 0; i < q.numel(); ++i) {
    const uint8_t byte = q.codes[i / 2];
    const uint8_t code = i % 2 == 0 ? byte >> 4 : byte & 0x0F;
    out[i] = nf4_code_book()[code] * scale_of(q, i / q.blocksize);
  }
  return out;
}

std::vector<float> floats(const Tensor& t) {
  const Tensor f = t.dtype() == DType::f32 ? t : t.to(DType::f32);
  return std::vector<float>(f.data<float>(), f.data<float>() + f.numel());
}

double largest_gap(const float* v, size_t n) {
  double g = 0.0;
  for (size_t i = 0; i + 1 < n; ++i) g = std::max(g, double(v[i + 1]) - double(v[i]));
  return g;
}

template <class E, class F>
void check_throws(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
  } catch (const E& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) BOOST_CHECK_MESSAGE(msg.find(p) != std::string::npos, "message '" << msg << "' lacks '" << p << "'");
    return;
  } catch (const std::exception& e) {
    BOOST_ERROR("wrong exception type: " << e.what());
    return;
  }
  BOOST_ERROR("no exception thrown");
}

}  // namespace

// ---------------------------------------------------------------- tables

BOOST_AUTO_TEST_CASE(code_book_is_the_spec_table) {
  const float spec[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                          -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                          0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
                          0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};
  const auto& book = nf4_code_book();
  for (int i = 0; i < 16; ++i) BOOST_CHECK_EQUAL(book[i], spec[i]);
}

BOOST_AUTO_TEST_CASE(thresholds_are_bitsandbytes_midpoints) {
  // dQuantizeNF4's decimal literals, read as float.
  const float bnb[15] = {-0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f,
                         -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
                         0.1202552504837513f, 0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,
                         0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f};
  const auto& t = nf4_thresholds();
  const auto& book = nf4_code_book();
  int off_by_one_float = 0;
  for (int i = 0; i < 15; ++i) {
    BOOST_CHECK_EQUAL(t[i], bnb[i]);
    const float mid = (book[i] + book[i + 1]) * 0.5f;
    if (t[i] != mid) {
      ++off_by_one_float;
      BOOST_CHECK(t[i] == std::nextafter(mid, 1.0f) || t[i] == std::nextafter(mid, -1.0f));
    }
  }
  BOOST_CHECK_EQUAL(off_by_one_float, 4);  // the four midpoints that are exact float ties
}

BOOST_AUTO_TEST_CASE(dynamic_map_is_the_bitsandbytes_map) {
  const auto& m = dynamic_map();
  BOOST_CHECK_EQUAL(m.size(), 256u);
  for (int i = 0; i < 256; ++i) BOOST_CHECK_MESSAGE(m[i] == from_bits(kTorchDynamicMap[i]), "index " << i << ": " << m[i]);
  for (int i = 0; i + 1 < 256; ++i) BOOST_CHECK_LT(m[i], m[i + 1]);  // sorted, no duplicates
  BOOST_CHECK_EQUAL(m[127], 0.0f);
  BOOST_CHECK_EQUAL(m[255], 1.0f);
  BOOST_CHECK_EQUAL(m[0], -m[254]);  // -0.99296875 (rounded): the map has no -1
  BOOST_CHECK_CLOSE(m[0], -0.99296875f, 1e-5);
  BOOST_CHECK(std::find(m.begin(), m.end(), -1.0f) == m.end());
  for (int i = 0; i < 127; ++i) BOOST_CHECK_EQUAL(m[i], -m[254 - i]);  // negatives mirror the positives below 1
  // Finest resolution near zero: 10^-6 * 0.55 next to 0.
  BOOST_CHECK_CLOSE(m[128], 5.5e-7f, 1e-4);
}

// ---------------------------------------------------------------- quantise

BOOST_AUTO_TEST_CASE(nibble_order_and_exact_codes) {
  const auto& book = nf4_code_book();
  // codes: 1 -> 15, -1 -> 0, 0 -> 7, book[13] -> 13, book[6] -> 6, 0.3 -> 11 (0.3 > 0.29201, nearest 0.33792)
  for (float scale : {1.0f, 2.0f}) {
    const std::vector<float> v = {1.0f, -1.0f, 0.0f, book[13], book[6], 0.3f};
    std::vector<float> w;
    for (float x : v) w.push_back(x * scale);
    NF4Tensor q = quantize_nf4(from_values(w, {1, 6}), 64, false);
    BOOST_REQUIRE_EQUAL(q.codes.size(), 3u);
    BOOST_CHECK_EQUAL(int(q.codes[0]), 0xF0);  // element 0 in the HIGH nibble
    BOOST_CHECK_EQUAL(int(q.codes[1]), 0x7D);
    BOOST_CHECK_EQUAL(int(q.codes[2]), 0x6B);
    BOOST_REQUIRE_EQUAL(q.absmax.size(), 1u);
    BOOST_CHECK_EQUAL(q.absmax[0], scale);
    const std::vector<float> back = floats(q.dequantize());
    const float expect[6] = {1.0f, -1.0f, 0.0f, book[13], book[6], book[11]};
    for (int i = 0; i < 6; ++i) BOOST_CHECK_EQUAL(back[i], expect[i] * scale);
  }
}

BOOST_AUTO_TEST_CASE(ties_go_to_the_lower_code) {
  // absmax 1 (so x / absmax is x exactly): each threshold and the next float above it.
  const auto& t = nf4_thresholds();
  std::vector<float> w = {1.0f};
  for (float ti : t) {
    w.push_back(ti);
    w.push_back(std::nextafter(ti, 2.0f));
  }
  NF4Tensor q = quantize_nf4(from_values(w, {1, int64_t(w.size())}), 32, false);
  BOOST_CHECK_EQUAL(int(q.code_at(0)), 15);
  for (int i = 0; i < 15; ++i) {
    BOOST_CHECK_EQUAL(int(q.code_at(1 + 2 * i)), i);      // x == threshold: lower code
    BOOST_CHECK_EQUAL(int(q.code_at(2 + 2 * i)), i + 1);  // just above: upper code
  }
}

BOOST_AUTO_TEST_CASE(odd_count_partial_last_block_and_blocks_spanning_rows) {
  Generator gen(1);
  Tensor w = normal({3, 33}, 0.0, 0.1, gen);  // 99 elements: blocks [0, 64) and [64, 99), block 1 starts at row 1 col 31
  NF4Tensor q = quantize_nf4(w, 64, false);
  BOOST_CHECK_EQUAL(q.num_blocks(), 2);
  BOOST_REQUIRE_EQUAL(q.codes.size(), 50u);
  BOOST_CHECK_EQUAL(int(q.codes[49] & 0x0F), 0);  // padding nibble
  const std::vector<float> v = floats(w);
  float a0 = 0, a1 = 0;
  for (int i = 0; i < 64; ++i) a0 = std::max(a0, std::abs(v[i]));
  for (int i = 64; i < 99; ++i) a1 = std::max(a1, std::abs(v[i]));
  BOOST_CHECK_EQUAL(q.absmax[0], a0);
  BOOST_CHECK_EQUAL(q.absmax[1], a1);  // over the 35 elements of the partial block only
  const std::vector<float> back = floats(q.dequantize()), ref = reference_dequant(q);
  for (int i = 0; i < 99; ++i) BOOST_CHECK_EQUAL(back[i], ref[i]);
  // the largest element of each block comes back exactly (it maps to +-1)
  for (int i = 0; i < 99; ++i)
    if (std::abs(v[i]) == (i < 64 ? a0 : a1)) BOOST_CHECK_EQUAL(back[i], v[i]);
}

BOOST_AUTO_TEST_CASE(round_trip_error_is_at_most_half_the_largest_gap) {
  const auto& book = nf4_code_book();
  const double half_gap = 0.5 * largest_gap(book.data(), 16);  // (1 - 0.72296) / 2
  Generator gen(2);
  Tensor w = randn({37, 50}, gen);
  for (int64_t bs : {32, 64, 128, 4096}) {
    NF4Tensor q = quantize_nf4(w, bs, false);
    const std::vector<float> v = floats(w), back = floats(q.dequantize());
    for (int64_t i = 0; i < q.numel(); ++i) {
      const double a = q.absmax[i / bs];
      BOOST_CHECK_LE(std::abs(double(v[i]) - back[i]), half_gap * a * (1 + 1e-6));
      // and the code is the nearest one
      const double x = v[i] / a;
      const double mine = std::abs(x - book[q.code_at(i)]);
      for (int c = 0; c < 16; ++c) BOOST_CHECK_LE(mine, std::abs(x - book[c]) + 1e-6);
    }
  }
}

BOOST_AUTO_TEST_CASE(decode_of_any_range_matches_the_reference) {
  // Odd starts, ranges across blocks, long runs (the vector path), tails.
  Generator gen(3);
  Tensor w = randn({9, 77}, gen);  // 693 elements, odd
  for (bool dq : {false, true}) {
    NF4Tensor q = quantize_nf4(w, 32, dq);
    const std::vector<float> ref = reference_dequant(q);
    std::vector<float> out(ref.size());
    const int64_t n = q.numel();
    for (int64_t start : {0, 1, 31, 32, 33, 63, 100, 691, 692})
      for (int64_t count : {1, 2, 3, 31, 32, 33, 64, 65, 97, 200}) {
        if (start + count > n) continue;
        q.decode(start, count, out.data());
        for (int64_t k = 0; k < count; ++k)
          BOOST_CHECK_MESSAGE(out[k] == ref[start + k], "start " << start << " count " << count << " k " << k);
      }
    const std::vector<float> all = floats(q.dequantize());
    BOOST_CHECK(all == ref);
  }
}

BOOST_AUTO_TEST_CASE(double_quantisation) {
  Generator gen(4);
  Tensor w = randn({300, 64}, gen);  // 300 blocks of 64: nested blocks of 256 and 44
  NF4Tensor plain = quantize_nf4(w, 64, false), dq = quantize_nf4(w, 64, true);
  BOOST_CHECK(dq.double_quant);
  BOOST_CHECK(plain.codes == dq.codes);  // the 4-bit codes use the exact absmax either way
  BOOST_CHECK(dq.absmax.empty());
  BOOST_REQUIRE_EQUAL(dq.absmax_codes.size(), 300u);
  BOOST_REQUIRE_EQUAL(dq.nested_absmax.size(), 2u);
  double mean = 0;
  for (float a : plain.absmax) mean += a;
  BOOST_CHECK_EQUAL(dq.offset, float(mean / 300));
  const auto& m = dynamic_map();
  const double half_gap = 0.5 * largest_gap(m.data(), 256);
  for (int g = 0; g < 2; ++g) {
    float amax = 0;
    for (int b = g * 256; b < std::min(300, g * 256 + 256); ++b) amax = std::max(amax, std::abs(plain.absmax[b] - dq.offset));
    BOOST_CHECK_EQUAL(dq.nested_absmax[g], amax);
  }
  for (int b = 0; b < 300; ++b) {
    const double err = std::abs(double(dq.block_absmax(b)) - plain.absmax[b]);
    BOOST_CHECK_LE(err, half_gap * dq.nested_absmax[b / 256] + 1e-6 * plain.absmax[b]);
    BOOST_CHECK_EQUAL(dq.block_absmax(b), scale_of(dq, b));
    // the code is the nearest map value
    const double x = (double(plain.absmax[b]) - dq.offset) / dq.nested_absmax[b / 256];
    const double mine = std::abs(x - m[dq.absmax_codes[b]]);
    for (int c = 0; c < 256; ++c) BOOST_CHECK_LE(mine, std::abs(x - m[c]) + 1e-6);
  }
  const std::vector<float> back = floats(dq.dequantize()), ref = reference_dequant(dq);
  BOOST_CHECK(back == ref);
}

BOOST_AUTO_TEST_CASE(constant_and_zero_blocks) {
  // All-zero blocks dequantise to zeros; equal absmax everywhere gives nested scale 0.
  Tensor w = zeros({2, 64});
  w.set({1, 5}, 0.5);
  NF4Tensor q = quantize_nf4(w, 64, true);
  const std::vector<float> back = floats(q.dequantize());
  for (int i = 0; i < 128; ++i) BOOST_CHECK_EQUAL(back[i], i == 69 ? 0.5f : 0.0f);
  NF4Tensor c = quantize_nf4(full({4, 64}, -0.25), 64, true);
  BOOST_CHECK_EQUAL(c.nested_absmax[0], 0.0f);
  for (float x : floats(c.dequantize())) BOOST_CHECK_EQUAL(x, -0.25f);
}

BOOST_AUTO_TEST_CASE(bits_per_weight_of_a_4096_square_weight) {
  Generator gen(5);
  Tensor w = uniform({4096, 4096}, -0.05, 0.05, gen);
  const double n = 4096.0 * 4096.0;
  NF4Tensor dq = quantize_nf4(w, 64, true);
  // codes n/2 bytes + one 8-bit code per block + 4 bytes per 256 blocks + the offset
  BOOST_CHECK_EQUAL(dq.bytes(), size_t(n / 2 + n / 64 + 4 * n / (64 * 256) + 4));
  BOOST_CHECK_CLOSE(dq.bits_per_weight(), 4.0 + 8.0 / 64 + 32.0 / (64 * 256), 1e-4);  // 4.12695...
  BOOST_CHECK_LT(dq.bits_per_weight(), 4.127);
  BOOST_CHECK_CLOSE(32.0 / dq.bits_per_weight(), 7.754, 0.01);  // shrink factor against float32
  NF4Tensor plain = quantize_nf4(w, 64, false);
  BOOST_CHECK_EQUAL(plain.bits_per_weight(), 4.5);
}

// ---------------------------------------------------------------- the layer

namespace {

struct Case {
  int64_t rows, in, out, blocksize;
  bool dq;
};

// M, N, K off the GEMM's tiles (MR 12, NR 32, KC 512), in % 64 != 0 (blocks
// across rows), K > KC (several depth blocks), N > NC = 4096 (several panels).
const std::vector<Case> kCases = {{5, 40, 48, 64, true},   {37, 100, 70, 64, false}, {130, 1030, 45, 64, true},
                                  {3, 64, 33, 32, true},   {1, 7, 1, 32, false},     {200, 96, 300, 128, true},
                                  {3, 8, 4100, 64, false}, {64, 600, 20, 256, true}};

}  // namespace

BOOST_AUTO_TEST_CASE(forward_equals_dense_linear_with_the_dequantised_weight) {
  Generator gen(6);
  for (const Case& c : kCases) {
    auto layer = make_nf4_linear(normal({c.out, c.in}, 0.0, 0.05, gen), uniform({c.out}, -1, 1, gen), c.blocksize,
                                 c.dq);
    Tensor x = randn({c.rows, c.in}, gen);
    Tensor y = layer->forward(x);
    Tensor ref = linear(x, layer->dense_weight(), layer->bias);
    BOOST_CHECK_MESSAGE(rel_diff(y, ref) <= 1e-6, "case rows=" << c.rows << " in=" << c.in << " out=" << c.out
                                                                << ": " << rel_diff(y, ref));
  }
  // leading batch dims and no bias
  auto layer = make_nf4_linear(randn({48, 40}, gen), Tensor());
  Tensor x = randn({2, 7, 40}, gen);
  Tensor y = layer->forward(x);
  BOOST_CHECK(y.shape() == (Shape{2, 7, 48}));
  BOOST_CHECK_LE(rel_diff(y, linear(x, layer->dense_weight())), 1e-6);
  BOOST_CHECK(layer->forward(randn({40}, gen)).shape() == Shape{48});
  BOOST_CHECK(layer->forward(zeros({0, 40})).shape() == (Shape{0, 48}));
}

BOOST_AUTO_TEST_CASE(input_gradient_equals_g_times_the_dequantised_weight) {
  Generator gen(7);
  for (const Case& c : kCases) {
    auto layer = make_nf4_linear(normal({c.out, c.in}, 0.0, 0.05, gen), uniform({c.out}, -1, 1, gen), c.blocksize,
                                 c.dq);
    Tensor x = randn({c.rows, c.in}, gen);
    x.requires_grad_(true);
    Tensor g = randn({c.rows, c.out}, gen);
    layer->forward(x).backward(g);
    Tensor ref = matmul(g, layer->dense_weight());
    BOOST_CHECK_MESSAGE(rel_diff(x.grad(), ref) <= 1e-6, "case rows=" << c.rows << " in=" << c.in << " out=" << c.out
                                                                       << ": " << rel_diff(x.grad(), ref));
    BOOST_CHECK(!layer->bias.grad().defined());  // frozen
  }
}

BOOST_AUTO_TEST_CASE(nf4_linear_is_frozen_and_small) {
  Generator gen(8);
  nn::Linear dense(40, 48, true, gen);
  auto layer = quantize_base("nf4", dense);
  BOOST_CHECK_EQUAL(layer->in_features, 40);
  BOOST_CHECK_EQUAL(layer->out_features, 48);
  BOOST_CHECK_EQUAL(layer->num_parameters(/*trainable_only=*/true), 0);
  const NamedTensors params = layer->named_parameters();
  BOOST_REQUIRE_EQUAL(params.size(), 1u);
  BOOST_CHECK_EQUAL(params[0].first, "bias");
  BOOST_CHECK(!layer->bias.requires_grad());
  BOOST_CHECK_EQUAL(rel_diff(layer->bias, dense.bias), 0.0);
  BOOST_CHECK_EQUAL(layer->type_name(), "Linear4bit");
  BOOST_CHECK(layer->repr().find("in_features=40, out_features=48, bias=True") != std::string::npos);
  // Only x asks for a gradient: the graph has no weight input at all.
  Tensor x = randn({3, 40}, gen);
  x.requires_grad_(true);
  Tensor y = layer->forward(x);
  BOOST_REQUIRE(y.grad_fn());
  BOOST_CHECK_EQUAL(std::string(y.grad_fn()->name()), "nf4_linear");
  sum(y).backward();
  BOOST_CHECK(x.grad().defined());
  BOOST_CHECK(!layer->bias.grad().defined());
  BOOST_CHECK(!dense.weight.grad().defined());
  // memory: 40 * 48 weights in 4.5 bits (single 30-block nested group: 4 bytes for its scale + offset)
  BOOST_CHECK_EQUAL(layer->weight_bytes(), size_t(40 * 48 / 2 + 30 + 4 + 4));
}

BOOST_AUTO_TEST_CASE(float64_path_and_gradcheck) {
  Generator gen(9);
  auto w = std::make_shared<const NF4Tensor>(quantize_nf4(randn({6, 13}, gen), 32, true));
  Tensor wd = w->dequantize().to(DType::f64);
  Tensor x = randn({4, 13}, gen, DType::f64), b = randn({6}, gen, DType::f64);
  Tensor y = nf4_linear(x, w, b);
  BOOST_CHECK(y.dtype() == DType::f64);
  BOOST_CHECK_LE(rel_diff(y, linear(x, wd, b)), 1e-13);
  x.requires_grad_(true);
  b.requires_grad_(true);
  GradcheckResult r = gradcheck([w](const std::vector<Tensor>& in) { return nf4_linear(in[0], w, in[1]); }, {x, b});
  BOOST_CHECK_MESSAGE(r.ok, r.report);
  // float32 and float64 agree to float32 round-off
  Tensor y32 = nf4_linear(x.detach().to(DType::f32), w, b.detach().to(DType::f32));
  BOOST_CHECK_LE(rel_diff(y32, y), 1e-6);
}

BOOST_AUTO_TEST_CASE(requantize_from_a_merged_weight) {
  Generator gen(10);
  Tensor x = randn({5, 70}, gen);
  // plain blocks: quantising a dequantised weight gives it back exactly (each block's largest value is +-absmax)
  NF4Linear plain(randn({20, 70}, gen), Tensor(), 64, false);
  const std::vector<uint8_t> codes = plain.qweight().codes;
  BOOST_CHECK_EQUAL(plain.requantize_from(plain.dequantize()), 0.0);
  BOOST_CHECK(plain.qweight().codes == codes);
  // a merge: dense = W' + delta, requantised; the returned error is the real one and within the bound
  NF4Linear layer(randn({20, 70}, gen), randn({20}, gen));
  const auto old_weight = layer.qweight_ptr();
  Tensor dense = add(layer.dequantize(), mul(randn({20, 70}, gen), scalar(0.01)));
  const double err = layer.requantize_from(dense);
  BOOST_CHECK(layer.qweight_ptr() != old_weight);
  const std::vector<float> d = floats(dense), back = floats(layer.dequantize());
  double worst = 0, amax = 0;
  for (size_t i = 0; i < d.size(); ++i) {
    worst = std::max(worst, std::abs(double(d[i]) - back[i]));
    amax = std::max(amax, std::abs(double(d[i])));
  }
  BOOST_CHECK_EQUAL(err, worst);
  BOOST_CHECK_GT(err, 0.0);
  BOOST_CHECK_LE(err, 0.5 * largest_gap(nf4_code_book().data(), 16) * amax * 1.01);
  BOOST_CHECK_LE(rel_diff(layer.forward(x), linear(x, layer.dequantize(), layer.bias)), 1e-6);
}

// ---------------------------------------------------------------- base storages

// The table of base storages: "nf4" makes a Linear4bit that answers every
// nn::LinearBase question from its codes; the dense names make an nn::Linear;
// any other name is refused with the list of the known ones.
BOOST_AUTO_TEST_CASE(base_storage_registry) {
  Generator gen(12);
  nn::Linear dense(70, 20, true, gen);
  BOOST_CHECK(base_storages() == (std::vector<std::string>{"f32", "f64", "nf4", "bf16"}));

  std::shared_ptr<nn::LinearBase> q = quantize_base("nf4", dense, {32, false});
  BOOST_CHECK_EQUAL(q->storage(), "nf4");
  BOOST_CHECK(q->quantized());
  BOOST_CHECK_EQUAL(q->type_name(), "Linear4bit");
  BOOST_CHECK_EQUAL(q->in_features, 70);
  BOOST_CHECK_EQUAL(q->out_features, 20);
  const NF4Tensor ref = quantize_nf4(dense.weight, 32, false);
  BOOST_CHECK(floats(q->dense_weight()) == floats(ref.dequantize()));  // bit for bit
  BOOST_CHECK_EQUAL(q->weight_bytes(), ref.bytes());
  BOOST_CHECK_EQUAL(rel_diff(q->bias, dense.bias), 0.0);
  BOOST_CHECK(!q->bias.requires_grad());
  // weight_rows_f64: rows 3..4 decoded, the same values
  std::vector<double> rows(2 * 70);
  q->weight_rows_f64(3, 2, rows.data());
  const std::vector<float> all = floats(ref.dequantize());
  for (size_t i = 0; i < rows.size(); ++i) BOOST_CHECK_EQUAL(rows[i], double(all[3 * 70 + i]));
  // set_weight requantises: new codes, so a new weight version
  const auto before = q->weight_version();
  q->set_weight(mul(q->dense_weight(), scalar(2.0)));
  BOOST_CHECK(q->weight_version().owner != before.owner);
  BOOST_CHECK(floats(q->dense_weight()) == floats(quantize_nf4(mul(ref.dequantize(), scalar(2.0)), 32, false).dequantize()));

  // Dense storages: copies in the named dtype, the weight a parameter.
  for (const char* name : {"f32", "f64"}) {
    std::shared_ptr<nn::LinearBase> d = make_base(name, dense.weight, dense.bias);
    BOOST_CHECK_EQUAL(d->storage(), name);
    BOOST_CHECK(!d->quantized());
    BOOST_CHECK_EQUAL(d->type_name(), "Linear");
    BOOST_CHECK_EQUAL(rel_diff(d->dense_weight(), dense.weight), 0.0);
    BOOST_CHECK(d->dense_weight().impl()->storage != dense.weight.impl()->storage);  // a copy
    const auto v = d->weight_version();
    d->set_weight(zeros({20, 70}));
    BOOST_CHECK(d->weight_version().version != v.version);  // in place: same owner, new version
    BOOST_CHECK(d->weight_version().owner == v.owner);
  }

  check_throws<ValueError>([&] { make_base("int3", dense.weight, dense.bias); },
                           {"make_base", "'int3'", "'f32'", "'f64'", "'nf4'", "'bf16'"});
  check_throws<ValueError>([&] { quantize_base("NF4", dense); }, {"'NF4'", "'nf4'"});
  check_throws<ShapeError>([&] { make_base("nf4", dense.weight, randn({7}, gen)); }, {"NF4Linear", "bias", "[7]"});
}

// ---------------------------------------------------------------- errors

BOOST_AUTO_TEST_CASE(bad_input_is_refused_with_a_message) {
  Generator gen(11);
  for (int64_t bs : {0, 16, 48, 100, 8192})
    check_throws<ValueError>([&] { quantize_nf4(randn({4, 64}, gen), bs); }, {"quantize_nf4", "blocksize", std::to_string(bs)});
  check_throws<ShapeError>([&] { quantize_nf4(randn({64}, gen)); }, {"quantize_nf4", "[64]", "2-d"});
  check_throws<ShapeError>([&] { quantize_nf4(randn({2, 4, 8}, gen)); }, {"quantize_nf4", "[2, 4, 8]"});
  check_throws<ShapeError>([&] { quantize_nf4(zeros({0, 8})); }, {"quantize_nf4", "[0, 8]"});
  check_throws<DTypeError>([&] { quantize_nf4(from_indices({1, 2, 3, 4}, {2, 2})); }, {"quantize_nf4", "int64"});
  Tensor bad = randn({3, 40}, gen);
  bad.set({2, 7}, std::nan(""));
  check_throws<ValueError>([&] { quantize_nf4(bad); }, {"quantize_nf4", "non-finite", "87"});
  // a float64 weight is accepted: rounded to float32 first
  Tensor w64 = randn({4, 64}, gen, DType::f64);
  BOOST_CHECK(quantize_nf4(w64).codes == quantize_nf4(w64.to(DType::f32)).codes);

  auto w = std::make_shared<const NF4Tensor>(quantize_nf4(randn({6, 13}, gen), 32));
  check_throws<ShapeError>([&] { nf4_linear(randn({2, 12}, gen), w); }, {"nf4_linear", "[2, 12]", "[6, 13]"});
  check_throws<ShapeError>([&] { nf4_linear(randn({2, 13}, gen), w, randn({5}, gen)); }, {"nf4_linear", "bias", "[5]"});
  check_throws<DTypeError>([&] { nf4_linear(randn({2, 13}, gen, DType::f64), w, randn({6}, gen)); }, {"nf4_linear"});
  check_throws<DTypeError>([&] { nf4_linear(from_indices({1, 2}, {1, 2}), w); }, {"nf4_linear"});
  check_throws<ValueError>([&] { nf4_linear(randn({2, 13}, gen), nullptr); }, {"nf4_linear", "null"});
  check_throws<ShapeError>([&] { NF4Linear(randn({6, 13}, gen), randn({7}, gen)); }, {"NF4Linear", "bias", "[7]"});
  NF4Linear layer(randn({6, 13}, gen), Tensor());
  check_throws<ShapeError>([&] { layer.requantize_from(randn({6, 12}, gen)); }, {"requantize_from", "[6, 12]", "[6, 13]"});
}

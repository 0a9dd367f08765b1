// safetensors: round trips, the exact byte layout, files built byte by byte the
// way the reference library writes them (BF16 / F16 widening), every malformed
// file the reader must refuse, and atomic writes.
#define BOOST_TEST_MODULE safetensors
#include <boost/test/unit_test.hpp>

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>

#include <nlohmann/json.hpp>

#include "test_util.hpp"
#include "loragrad/safetensors.hpp"

using namespace loragrad;
namespace fs = std::filesystem;

namespace {




std::string u64_le(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

// A safetensors file: length prefix, the header as given, then the data bytes.
std::string st_bytes(const std::string& header, const std::string& data) {
  return u64_le(header.size()) + header + data;
}

// The header as Python's safetensors writes it: compact JSON, padded with spaces
// so that the data starts at a multiple of 8.
std::string padded(std::string header) {
  header.append((8 - header.size() % 8) % 8, ' ');
  return header;
}

template <class T>
std::string le_bytes(const std::vector<T>& values) {
  std::string s(values.size() * sizeof(T), '\0');
  if (!values.empty()) std::memcpy(s.data(), values.data(), s.size());  // this machine is little-endian
  return s;
}

uint32_t float_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

bool same_values(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

// The load must throw IOError whose message names the file and contains `what`.
void expect_refused(const std::string& path, const std::string& what) {
  BOOST_TEST_CONTEXT("file " << path << ", expecting '" << what << "'") {
    bool thrown = false;
    try {
      load_safetensors(path);
    } catch (const IOError& e) {
      thrown = true;
      const std::string msg = e.what();
      BOOST_TEST_MESSAGE(msg);
      BOOST_TEST(msg.find(path) != std::string::npos, "message names the file: " << msg);
      BOOST_TEST(msg.find(what) != std::string::npos, "message says '" << what << "': " << msg);
    }
    BOOST_TEST(thrown);
  }
}

// A one-tensor file with the given header entry for tensor "x" and data bytes.
void expect_entry_refused(const TempDir& tmp, const std::string& case_name, const std::string& entry,
                          const std::string& data, const std::string& what) {
  const std::string path = tmp.file(case_name + ".safetensors");
  write_bytes(path, st_bytes(padded("{\"x\":" + entry + "}"), data));
  expect_refused(path, what);
}

}  // namespace

BOOST_AUTO_TEST_CASE(round_trip_every_written_dtype_with_metadata) {
  TempDir tmp;
  const std::string path = tmp.file("model.safetensors");
  NamedTensors tensors = {
      {"w", from_values(std::vector<float>{1.5f, -2.25f, 3e-39f /* subnormal */, 0.1f, -0.0f, 7.0f}, {2, 3})},
      {"bias", from_values({0.1, -1e300, std::numeric_limits<double>::infinity(), 4.0}, {4}, DType::f64)},
      {"ids", from_indices({-1, 0, std::numeric_limits<int64_t>::max(), 42}, {2, 2})},
      {"scalar", scalar(3.25)},
      {"empty_f32", zeros({0, 3})},
      {"empty_f64", zeros({0}, DType::f64)},
      {"last", from_values({9.0}, {1, 1, 1}, DType::f64)},
  };
  const Metadata metadata = {{"format", "pt"}, {"note", "r=8, \"quoted\" ü"}};
  save_safetensors(path, tensors, metadata);

  SafetensorsFile f = load_safetensors(path);
  BOOST_TEST(f.path == path);
  BOOST_TEST(f.metadata == metadata);
  BOOST_REQUIRE_EQUAL(f.tensors.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    BOOST_TEST_CONTEXT("tensor " << tensors[i].first) {
      BOOST_TEST(f.tensors[i].first == tensors[i].first);  // written order = offset order = read order
      BOOST_TEST(same_values(f.tensors[i].second, tensors[i].second));
      BOOST_TEST(f.contains(tensors[i].first));
      BOOST_TEST(same_values(f.at(tensors[i].first), tensors[i].second));
    }
  }
  BOOST_TEST(f.at("scalar").dim() == 0);
  BOOST_TEST(f.at("scalar").item() == 3.25);
  BOOST_TEST(f.at("empty_f32").numel() == 0);
  BOOST_TEST((f.at("empty_f32").shape() == Shape{0, 3}));
  BOOST_TEST(f.at("ids").at({1, 0}) == static_cast<double>(std::numeric_limits<int64_t>::max()));
  BOOST_TEST(!f.contains("nope"));
  BOOST_TEST(tmp.listing() == std::vector<std::string>{"model.safetensors"}, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(a_large_tensor_round_trips) {
  TempDir tmp;
  const std::string path = tmp.file("big.safetensors");
  std::vector<float> values(1000 * 37);
  for (size_t i = 0; i < values.size(); ++i) values[i] = std::sin(static_cast<float>(i)) * 1e3f;
  save_safetensors(path, {{"big", from_values(values, {1000, 37})}, {"tail", ones({3}, DType::f64)}});
  SafetensorsFile f = load_safetensors(path);
  BOOST_TEST(same_values(f.at("big"), from_values(values, {1000, 37})));
  BOOST_TEST(same_values(f.at("tail"), ones({3}, DType::f64)));
  BOOST_TEST(f.metadata.empty());
}

BOOST_AUTO_TEST_CASE(written_layout_follows_the_spec) {
  TempDir tmp;
  const std::string path = tmp.file("layout.safetensors");
  // Names chosen so that alphabetical order differs from the given order.
  NamedTensors tensors = {{"z", from_values(std::vector<float>{1, 2, 3}, {3})},
                          {"a", from_indices({5, 6}, {2})},
                          {"m", scalar(2.0, DType::f64)},
                          {"e", zeros({2, 0})}};
  save_safetensors(path, tensors, {{"format", "pt"}});
  const std::string bytes = read_bytes(path);
  BOOST_REQUIRE(bytes.size() >= 8);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  BOOST_TEST(n % 8 == 0u);  // so the data, at 8 + n, starts at a multiple of 8
  BOOST_TEST(bytes[8] == '{');
  BOOST_TEST(bytes.size() == 8 + n + 3 * 4 + 2 * 8 + 8);

  const std::string header = bytes.substr(8, n);
  BOOST_TEST(header.find_last_not_of(' ') == header.rfind('}'));  // right-padded with spaces only
  using Json = nlohmann::ordered_json;
  Json j = Json::parse(header);
  BOOST_TEST(j["__metadata__"] == Json({{"format", "pt"}}));
  BOOST_TEST(j["z"]["dtype"] == "F32");
  BOOST_TEST(j["a"]["dtype"] == "I64");
  BOOST_TEST(j["m"]["dtype"] == "F64");
  BOOST_TEST(j["z"]["shape"] == Json({3}));
  BOOST_TEST(j["m"]["shape"] == Json::array());
  BOOST_TEST(j["e"]["shape"] == Json({2, 0}));
  // Laid out in the given order, tiling the buffer.
  BOOST_TEST(j["z"]["data_offsets"] == Json({0, 12}));
  BOOST_TEST(j["a"]["data_offsets"] == Json({12, 28}));
  BOOST_TEST(j["m"]["data_offsets"] == Json({28, 36}));
  BOOST_TEST(j["e"]["data_offsets"] == Json({36, 36}));
  // The data itself, little-endian.
  const std::string data = bytes.substr(8 + n);
  BOOST_TEST(data.substr(0, 12) == le_bytes(std::vector<float>{1, 2, 3}));
  BOOST_TEST(data.substr(12, 16) == le_bytes(std::vector<int64_t>{5, 6}));
  BOOST_TEST(data.substr(28, 8) == le_bytes(std::vector<double>{2.0}));
  BOOST_TEST(u64_le(1).substr(0, 1) == std::string(1, '\x01'));  // le_bytes agrees with explicit LE
  BOOST_TEST(le_bytes(std::vector<int64_t>{1}) == u64_le(1));
}

// A file laid out byte for byte as Python's safetensors.torch.save_file writes
// it: metadata first, compact JSON, space padding to 8. The header lists the
// tensors in a different order from their offsets; reading keeps offset order.
BOOST_AUTO_TEST_CASE(reads_a_reference_style_file_with_bf16_and_f16) {
  TempDir tmp;
  const std::string path = tmp.file("reference.safetensors");
  // BF16: 1.0, -2.5, 65280 (largest bf16 below 2^16), smallest subnormal 2^-133, inf, NaN.
  const std::vector<uint16_t> bf16 = {0x3f80, 0xc020, 0x477f, 0x0001, 0x7f80, 0x7fc0};
  // F16: 1.0, -2.5, 65504 (max), 2^-24 (smallest subnormal), inf, -inf, -0,
  // largest subnormal 1023 * 2^-24, smallest normal 2^-14, NaN.
  const std::vector<uint16_t> f16 = {0x3c00, 0xc100, 0x7bff, 0x0001, 0x7c00, 0xfc00, 0x8000, 0x03ff, 0x0400, 0x7e00};
  const std::vector<float> f32 = {0.5f, -1.0f};
  const std::vector<int64_t> i64 = {-7, 1LL << 40, 3};
  const std::vector<double> f64 = {1.0 / 3.0};
  std::string data = le_bytes(f32) + le_bytes(i64) + le_bytes(bf16) + le_bytes(f16) + le_bytes(f64);
  // Offsets: f32 [0,8) i64 [8,32) bf16 [32,44) f16 [44,64) f64 [64,72), scalar f32 empty at 72.
  const std::string header = padded(
      "{\"__metadata__\":{\"format\":\"pt\"},"
      "\"h16\":{\"dtype\":\"F16\",\"shape\":[2,5],\"data_offsets\":[44,64]},"
      "\"b16\":{\"dtype\":\"BF16\",\"shape\":[6],\"data_offsets\":[32,44]},"
      "\"ids\":{\"dtype\":\"I64\",\"shape\":[3,1],\"data_offsets\":[8,32]},"
      "\"none\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[72,72]},"
      "\"third\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[64,72]},"
      "\"w\":{\"dtype\":\"F32\",\"shape\":[1,2],\"data_offsets\":[0,8]}}");
  write_bytes(path, st_bytes(header, data));

  SafetensorsFile f = load_safetensors(path);
  std::vector<std::string> names;
  for (const auto& [name, t] : f.tensors) names.push_back(name);
  BOOST_TEST(names == (std::vector<std::string>{"w", "ids", "b16", "h16", "third", "none"}),
             boost::test_tools::per_element());
  BOOST_TEST(f.metadata == (Metadata{{"format", "pt"}}));

  BOOST_TEST(same_values(f.at("w"), from_values(f32, {1, 2})));
  BOOST_TEST(same_values(f.at("ids"), from_indices(i64, {3, 1})));
  BOOST_TEST(same_values(f.at("third"), scalar(1.0 / 3.0, DType::f64)));
  BOOST_TEST((f.at("none").shape() == Shape{0}));

  const Tensor& b = f.at("b16");
  BOOST_TEST(b.dtype() == DType::f32);
  BOOST_TEST((b.shape() == Shape{6}));
  const float* pb = b.data<float>();
  BOOST_TEST(pb[0] == 1.0f);
  BOOST_TEST(pb[1] == -2.5f);
  BOOST_TEST(pb[2] == 65280.0f);
  BOOST_TEST(pb[3] == std::ldexp(1.0f, -133));
  BOOST_TEST(pb[4] == std::numeric_limits<float>::infinity());
  BOOST_TEST(std::isnan(pb[5]));

  const Tensor& h = f.at("h16");
  BOOST_TEST(h.dtype() == DType::f32);
  BOOST_TEST((h.shape() == Shape{2, 5}));
  const float* ph = h.data<float>();
  BOOST_TEST(ph[0] == 1.0f);
  BOOST_TEST(ph[1] == -2.5f);
  BOOST_TEST(ph[2] == 65504.0f);
  BOOST_TEST(ph[3] == std::ldexp(1.0f, -24));
  BOOST_TEST(ph[4] == std::numeric_limits<float>::infinity());
  BOOST_TEST(ph[5] == -std::numeric_limits<float>::infinity());
  BOOST_TEST(float_bits(ph[6]) == 0x80000000u);  // -0 keeps its sign
  BOOST_TEST(ph[7] == std::ldexp(1023.0f, -24));
  BOOST_TEST(ph[8] == std::ldexp(1.0f, -14));
  BOOST_TEST(std::isnan(ph[9]));
}

// Every one of the 65536 F16 and BF16 bit patterns, against the textbook
// formula for the value (a second, independent derivation).
BOOST_AUTO_TEST_CASE(every_f16_and_bf16_value_widens_exactly) {
  TempDir tmp;
  const std::string path = tmp.file("all_halves.safetensors");
  std::vector<uint16_t> all(65536);
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<uint16_t>(i);
  write_bytes(path, st_bytes(padded("{\"f16\":{\"dtype\":\"F16\",\"shape\":[65536],\"data_offsets\":[0,131072]},"
                                    "\"bf16\":{\"dtype\":\"BF16\",\"shape\":[256,256],\"data_offsets\":[131072,262144]}}"),
                             le_bytes(all) + le_bytes(all)));
  SafetensorsFile f = load_safetensors(path);
  const float* h = f.at("f16").data<float>();
  const float* b = f.at("bf16").data<float>();
  int f16_bad = 0, bf16_bad = 0;
  for (uint32_t i = 0; i < 65536; ++i) {
    const float sign = (i & 0x8000) ? -1.0f : 1.0f;
    // f16: exponent 5 bits (bias 15), mantissa 10 bits.
    const int e16 = (i >> 10) & 0x1f, m16 = i & 0x3ff;
    if (e16 == 0x1f) {
      if (m16 == 0 ? h[i] != sign * INFINITY : !std::isnan(h[i])) ++f16_bad;
    } else {
      const double v = e16 == 0 ? std::ldexp(m16, -24) : std::ldexp(1024 + m16, e16 - 25);
      if (static_cast<double>(h[i]) != sign * v || std::signbit(h[i]) != bool(i & 0x8000)) ++f16_bad;
    }
    // bf16: exponent 8 bits (bias 127), mantissa 7 bits.
    const int e8 = (i >> 7) & 0xff, m7 = i & 0x7f;
    if (e8 == 0xff) {
      if (m7 == 0 ? b[i] != sign * INFINITY : !std::isnan(b[i])) ++bf16_bad;
    } else {
      const double v = e8 == 0 ? std::ldexp(m7, -133) : std::ldexp(128 + m7, e8 - 134);
      if (static_cast<double>(b[i]) != sign * v || std::signbit(b[i]) != bool(i & 0x8000)) ++bf16_bad;
    }
  }
  BOOST_TEST(f16_bad == 0);
  BOOST_TEST(bf16_bad == 0);
}

BOOST_AUTO_TEST_CASE(refuses_files_that_are_not_safetensors) {
  TempDir tmp;
  expect_refused(tmp.file("missing.safetensors"), "cannot open");
  expect_refused(tmp.dir.string(), "not a regular file");

  const std::string empty = tmp.file("empty.safetensors");
  write_bytes(empty, "");
  expect_refused(empty, "shorter than the 8-byte header length");
  const std::string short_file = tmp.file("short.safetensors");
  write_bytes(short_file, std::string("\x02\0\0\0\0", 5));
  expect_refused(short_file, "shorter than the 8-byte header length");

  const std::string beyond = tmp.file("beyond.safetensors");
  write_bytes(beyond, u64_le(100) + "{}");
  expect_refused(beyond, "runs past the end of the file");
  const std::string huge = tmp.file("huge.safetensors");
  write_bytes(huge, u64_le(100000001) + "{}");
  expect_refused(huge, "exceeds the limit");
  const std::string max_len = tmp.file("max_len.safetensors");
  write_bytes(max_len, u64_le(~0ULL) + "{}");
  expect_refused(max_len, "exceeds the limit");
  const std::string zero_len = tmp.file("zero_len.safetensors");
  write_bytes(zero_len, u64_le(0));
  expect_refused(zero_len, "does not start with '{'");

  const auto header_only = [&](const std::string& name, const std::string& header, const std::string& what) {
    const std::string path = tmp.file(name + ".safetensors");
    write_bytes(path, st_bytes(header, ""));
    expect_refused(path, what);
  };
  header_only("not_json", "{\"a\":", "invalid JSON header");
  header_only("trailing_garbage", "{} x", "invalid JSON header");
  header_only("nul_padding", std::string("{}\0\0", 4), "invalid JSON header: NUL byte at offset 2");
  header_only("nul_then_junk", std::string("{}\0junk", 7), "invalid JSON header");
  header_only("nul_in_string", std::string("{\"a\0\":{}}", 8), "invalid JSON header");
  header_only("bad_utf8", "{\"\xff\":{}}", "invalid JSON header");
  header_only("array", "[1, 2]   ", "does not start with '{'");
  // Deep nesting must not overflow the stack (nlohmann parses and frees iteratively).
  header_only("deep", "{\"a\":" + std::string(500000, '[') + std::string(500000, ']') + "}",
              "entry for tensor 'a' is not an object");
  header_only("deep_unclosed", "{\"a\":" + std::string(500000, '['), "invalid JSON header");
  header_only("leading_space", " {}", "does not start with '{'");
  header_only("metadata_not_object", "{\"__metadata__\":[]}", "__metadata__ is not an object");
  header_only("metadata_number", "{\"__metadata__\":{\"format\":1}}", "__metadata__ value for 'format' is not a string");
  header_only("metadata_null", "{\"__metadata__\":{\"format\":null}}", "__metadata__ value for 'format' is not a string");
  header_only("metadata_duplicate", "{\"__metadata__\":{\"a\":\"1\",\"a\":\"2\"}}", "duplicate key 'a'");

  // A header with no tensors and no data is a valid (empty) file.
  const std::string valid_empty = tmp.file("valid_empty.safetensors");
  write_bytes(valid_empty, st_bytes("{}      ", ""));
  BOOST_TEST(load_safetensors(valid_empty).tensors.empty());
}

BOOST_AUTO_TEST_CASE(refuses_malformed_tensor_entries) {
  TempDir tmp;
  const std::string d8(8, '\0');  // 8 data bytes: one F64, two F32
  const auto entry = [](const std::string& dtype, const std::string& shape, const std::string& offsets) {
    return "{\"dtype\":" + dtype + ",\"shape\":" + shape + ",\"data_offsets\":" + offsets + "}";
  };
  // The well-formed baseline loads.
  const std::string ok = tmp.file("ok.safetensors");
  write_bytes(ok, st_bytes(padded("{\"x\":" + entry("\"F32\"", "[2]", "[0,8]") + "}"), d8));
  BOOST_TEST(load_safetensors(ok).at("x").numel() == 2);

  expect_entry_refused(tmp, "entry_number", "3", d8, "entry for tensor 'x' is not an object");
  expect_entry_refused(tmp, "no_dtype", "{\"shape\":[2],\"data_offsets\":[0,8]}", d8, "missing \"dtype\" for tensor 'x'");
  expect_entry_refused(tmp, "no_shape", "{\"dtype\":\"F32\",\"data_offsets\":[0,8]}", d8, "missing \"shape\" for tensor 'x'");
  expect_entry_refused(tmp, "no_offsets", "{\"dtype\":\"F32\",\"shape\":[2]}", d8, "missing \"data_offsets\" for tensor 'x'");
  expect_entry_refused(tmp, "dtype_number", entry("5", "[2]", "[0,8]"), d8, "\"dtype\" for tensor 'x' is not a string");
  expect_entry_refused(tmp, "shape_string", entry("\"F32\"", "\"2\"", "[0,8]"), d8, "\"shape\" for tensor 'x' is not an array");
  expect_entry_refused(tmp, "shape_negative", entry("\"F32\"", "[-2]", "[0,8]"), d8, "not a non-negative integer: -2");
  expect_entry_refused(tmp, "shape_fraction", entry("\"F32\"", "[1.5]", "[0,8]"), d8, "not a non-negative integer: 1.5");
  expect_entry_refused(tmp, "shape_float", entry("\"F32\"", "[2.0]", "[0,8]"), d8, "not a non-negative integer");
  expect_entry_refused(tmp, "shape_string_dim", entry("\"F32\"", "[\"2\"]", "[0,8]"), d8, "not a non-negative integer");
  expect_entry_refused(tmp, "shape_huge_dim", entry("\"F32\"", "[18446744073709551615]", "[0,8]"), d8, "dimension too large");
  expect_entry_refused(tmp, "offsets_one", entry("\"F32\"", "[2]", "[8]"), d8, "\"data_offsets\" for tensor 'x' is not a pair");
  expect_entry_refused(tmp, "offsets_three", entry("\"F32\"", "[2]", "[0,8,8]"), d8, "is not a pair");
  expect_entry_refused(tmp, "offsets_string", entry("\"F32\"", "[2]", "[0,\"8\"]"), d8, "is not a pair");
  expect_entry_refused(tmp, "offsets_negative", entry("\"F32\"", "[2]", "[-8,0]"), d8, "is not a pair");
  expect_entry_refused(tmp, "offsets_object", entry("\"F32\"", "[2]", "{\"a\":0}"), d8, "is not a pair");
  expect_entry_refused(tmp, "offsets_reversed", entry("\"F32\"", "[0]", "[8,0]"), d8, "end 0 is before begin 8");
  expect_entry_refused(tmp, "unknown_dtype", entry("\"F17\"", "[2]", "[0,8]"), d8, "unknown dtype 'F17' for tensor 'x'");
  expect_entry_refused(tmp, "lowercase_dtype", entry("\"f32\"", "[2]", "[0,8]"), d8, "unknown dtype 'f32'");
  for (const std::string dt : {"I32", "U32", "BOOL", "U8", "I8", "I16", "U16", "U64", "F8_E4M3", "F8_E5M2"})
    expect_entry_refused(tmp, "unsupported_" + dt, entry("\"" + dt + "\"", "[0]", "[0,0]"), "",
                         "unsupported dtype " + dt + " for tensor 'x'");
  // Byte size numel * itemsize against the offsets.
  expect_entry_refused(tmp, "size_small", entry("\"F32\"", "[3]", "[0,8]"), d8, "needs 12 bytes but data_offsets [0, 8] span 8");
  expect_entry_refused(tmp, "size_dtype", entry("\"F64\"", "[2]", "[0,8]"), d8, "needs 16 bytes");
  expect_entry_refused(tmp, "size_scalar", entry("\"F32\"", "[]", "[0,8]"), d8, "needs 4 bytes");
  expect_entry_refused(tmp, "size_overflow", entry("\"F32\"", "[4294967296,4294967296,4]", "[0,8]"), d8,
                       "needs more than 2^64 bytes");
  expect_entry_refused(tmp, "size_wraps_to_8", entry("\"F64\"", "[2305843009213693953]", "[0,8]"), d8, "needs more than 2^64 bytes");
  // Offsets against the data buffer.
  expect_entry_refused(tmp, "out_of_range", entry("\"F32\"", "[2]", "[0,8]"), "", "out of range: the data buffer has 0 bytes");
  expect_entry_refused(tmp, "out_of_range_far", entry("\"F32\"", "[2]", "[8,16]"), d8, "out of range");
  expect_entry_refused(tmp, "hole_at_start", entry("\"F32\"", "[1]", "[4,8]"), d8, "hole in the data buffer: bytes [0, 4)");
  expect_entry_refused(tmp, "trailing_data", entry("\"F32\"", "[1]", "[0,4]"), d8, "cover 4 bytes of the data buffer but it has 8");
  expect_entry_refused(tmp, "empty_tensor_far", entry("\"F32\"", "[0]", "[100,100]"), "", "out of range");
}

BOOST_AUTO_TEST_CASE(refuses_overlaps_holes_and_duplicates_between_tensors) {
  TempDir tmp;
  const auto two = [&](const std::string& name, const std::string& a_offsets, const std::string& b_offsets,
                       size_t data_bytes, const std::string& what) {
    const std::string path = tmp.file(name + ".safetensors");
    write_bytes(path, st_bytes(padded("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":" + a_offsets +
                                      "},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":" + b_offsets + "}}"),
                               std::string(data_bytes, '\0')));
    expect_refused(path, what);
  };
  two("overlap", "[0,8]", "[4,12]", 12, "overlap the previous tensor, which ends at 8");
  two("same_range", "[0,8]", "[0,8]", 8, "overlap");
  two("hole", "[0,8]", "[12,20]", 20, "hole in the data buffer: bytes [8, 12)");
  two("b_out_of_range", "[0,8]", "[8,16]", 12, "out of range");

  const std::string dup = tmp.file("duplicate.safetensors");
  write_bytes(dup, st_bytes(padded("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                                   "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}"),
                            std::string(16, '\0')));
  expect_refused(dup, "duplicate key 'a'");
  const std::string dup_field = tmp.file("duplicate_field.safetensors");
  write_bytes(dup_field, st_bytes(padded("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,8]}}"),
                                  std::string(8, '\0')));
  expect_refused(dup_field, "duplicate key 'dtype'");

  // Empty tensors may share an offset with their neighbours.
  const std::string shared = tmp.file("shared_offset.safetensors");
  write_bytes(shared, st_bytes(padded("{\"e1\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,8]},"
                                      "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                                      "\"e0\":{\"dtype\":\"F64\",\"shape\":[3,0],\"data_offsets\":[0,0]}}"),
                               std::string(8, '\0')));
  SafetensorsFile f = load_safetensors(shared);
  BOOST_REQUIRE_EQUAL(f.tensors.size(), 3u);
  BOOST_TEST(f.tensors[0].first == "e0");
  BOOST_TEST(f.tensors[1].first == "a");
  BOOST_TEST(f.tensors[2].first == "e1");
}

BOOST_AUTO_TEST_CASE(at_names_the_file_and_the_missing_tensor) {
  TempDir tmp;
  const std::string path = tmp.file("one.safetensors");
  save_safetensors(path, {{"present", ones({2})}});
  SafetensorsFile f = load_safetensors(path);
  try {
    f.at("absent");
    BOOST_FAIL("at() should throw");
  } catch (const IOError& e) {
    const std::string msg = e.what();
    BOOST_TEST(msg.find(path) != std::string::npos, msg);
    BOOST_TEST(msg.find("'absent'") != std::string::npos, msg);
  }
}

// save_safetensors must throw IOError naming `path` and containing `what`.
void expect_save_refused(const std::string& path, const NamedTensors& tensors, const std::string& what,
                         const Metadata& metadata = {}) {
  BOOST_TEST_CONTEXT("saving " << path << ", expecting '" << what << "'") {
    bool thrown = false;
    try {
      save_safetensors(path, tensors, metadata);
    } catch (const IOError& e) {
      thrown = true;
      const std::string msg = e.what();
      BOOST_TEST_MESSAGE(msg);
      BOOST_TEST(msg.find(path) != std::string::npos, msg);
      BOOST_TEST(msg.find(what) != std::string::npos, msg);
    }
    BOOST_TEST(thrown);
  }
}

BOOST_AUTO_TEST_CASE(failed_writes_leave_no_trace_and_keep_the_old_file) {
  TempDir tmp;
  // Into a directory that does not exist: refused, nothing created anywhere in tmp.
  const std::string nowhere = tmp.file("no_such_dir/model.safetensors");
  expect_save_refused(nowhere, {{"w", ones({2})}}, "No such file or directory");
  BOOST_TEST(tmp.listing().empty());

  // Over an existing file: a refused write leaves the old bytes intact.
  const std::string path = tmp.file("model.safetensors");
  save_safetensors(path, {{"w", full({2, 2}, 1.5)}}, {{"format", "pt"}});
  const std::string old_bytes = read_bytes(path);
  expect_save_refused(path, {{"w", ones({3})}, {"b", ones({1})}, {"w", zeros({3})}}, "duplicate tensor name 'w'");
  expect_save_refused(path, {{"w", ones({3})}, {"u", Tensor()}}, "tensor 'u' is undefined");
  expect_save_refused(path, {{"__metadata__", ones({3})}}, "cannot be called __metadata__");
  expect_save_refused(path, {{"bad\xff", ones({3})}}, "valid UTF-8");
  BOOST_TEST(read_bytes(path) == old_bytes);
  BOOST_TEST(tmp.listing() == std::vector<std::string>{"model.safetensors"}, boost::test_tools::per_element());

  // A failure after the temp file exists (rename over a non-empty directory):
  // the temp file is removed.
  fs::create_directory(tmp.dir / "occupied");
  write_bytes(tmp.file("occupied/keep"), "x");
  expect_save_refused(tmp.file("occupied"), {{"w", ones({2})}}, "cannot rename");
  BOOST_TEST(tmp.listing() == (std::vector<std::string>{"model.safetensors", "occupied"}), boost::test_tools::per_element());

  // A successful write replaces the old file completely.
  save_safetensors(path, {{"v", from_indices({1, 2, 3}, {3})}});
  SafetensorsFile f = load_safetensors(path);
  BOOST_REQUIRE_EQUAL(f.tensors.size(), 1u);
  BOOST_TEST(f.tensors[0].first == "v");
  BOOST_TEST(f.metadata.empty());
  BOOST_TEST(same_values(f.at("v"), from_indices({1, 2, 3}, {3})));
  BOOST_TEST(tmp.listing() == (std::vector<std::string>{"model.safetensors", "occupied"}), boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(relative_paths_work) {
  TempDir tmp;
  const fs::path cwd = fs::current_path();
  fs::current_path(tmp.dir);
  save_safetensors("rel.safetensors", {{"x", ones({1})}});
  BOOST_TEST(load_safetensors("rel.safetensors").at("x").item() == 1.0);
  fs::current_path(cwd);
}

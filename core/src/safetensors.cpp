// safetensors reading and writing (format: docs/peft-format.md).
//
// Layout: 8-byte little-endian header length N, N bytes of JSON, then the data
// buffer. Each tensor owns the byte range [begin, end) of the buffer; together
// the ranges tile it exactly. The reader trusts nothing in the file: every
// length and offset is checked before a byte of data is read, so a hostile or
// truncated file gives an IOError, never a crash or a huge allocation.
#include "loragrad/safetensors.hpp"

#include "file_util.hpp"
#include "loragrad/files.hpp"
#include "loragrad/json_sax.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <set>
#include <tuple>

#include <nlohmann/json.hpp>

namespace loragrad {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors data is little-endian; this reader copies bytes as they are");

namespace {

// std::map-backed objects: O(log n) per key, so a hostile header with a
// million keys parses in reasonable time (ordered_json's lookups are linear).
using Json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100000000;  // the reference readers' cap
constexpr const char* kMetadataKey = "__metadata__";

// ---------------------------------------------------------------------------
// Half-precision widening. Both are exact: every bf16 and f16 value is a float.

// bf16 is the top half of a float32.
float bf16_to_float(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// f16: 1 sign, 5 exponent (bias 15), 10 mantissa bits.
float f16_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0x1f) {                       // inf (mant 0) or NaN (payload kept, quiet bit maps to quiet bit)
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {                   // normal: rebias 15 -> 127
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {                  // +-0
    bits = sign;
  } else {                                 // subnormal mant * 2^-24: normalise, it is normal in float32
    int32_t e = 113;                       // float32 biased exponent of 2^-14
    while (!(mant & 0x400)) { mant <<= 1; --e; }
    bits = sign | (static_cast<uint32_t>(e) << 23) | ((mant & 0x3ff) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// ---------------------------------------------------------------------------
// Reading

// The dtypes the format defines (the spec's list), with their item sizes in bytes; 0 marks the
// sub-byte float formats, which we do not read anyway.
size_t known_dtype_size(const std::string& s) {
  static const std::pair<const char*, size_t> table[] = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"I16", 2}, {"U16", 2}, {"F16", 2},
      {"BF16", 2}, {"I32", 4}, {"U32", 4}, {"F32", 4}, {"F64", 8}, {"I64", 8},
      {"U64", 8},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"F8_E8M0", 1},
      {"F4", 0}, {"F6_E2M3", 0}, {"F6_E3M2", 0}};
  for (const auto& [name, size] : table)
    if (s == name) return size;
  return std::numeric_limits<size_t>::max();  // not a safetensors dtype at all
}

// Syntax check plus duplicate keys at any depth, without building a value.
struct DuplicateKeyFinder : JsonSaxBase {
  std::vector<std::set<std::string>> keys_per_object;  // one set per open object
  std::string duplicate;                               // the first duplicate key

  bool start_object(std::size_t) override { keys_per_object.emplace_back(); return true; }
  bool end_object() override { keys_per_object.pop_back(); return true; }
  bool key(string_t& k) override {
    if (!keys_per_object.back().insert(k).second && duplicate.empty()) duplicate = k;
    return true;
  }
};

struct Entry {
  std::string name;
  std::string dtype;     // F32, F64, BF16, F16 or I64
  size_t itemsize;
  Shape shape;
  uint64_t begin, end;   // relative to the data buffer
};

class Reader {
 public:
  explicit Reader(const std::string& path) : path_(path) {}
  ~Reader() { if (fd_ >= 0) ::close(fd_); }

  SafetensorsFile read() {
    open_file();
    const std::string header = read_header();
    const Json j = parse_json(header);
    SafetensorsFile out;
    out.path = path_;
    std::vector<Entry> entries = parse_entries(j, out.metadata);
    check_tiling(entries);
    for (const Entry& e : entries) out.tensors.emplace_back(e.name, read_tensor(e));
    return out;
  }

 private:
  [[noreturn]] void fail(const std::string& problem) const {
    throw IOError("load_safetensors: '" + path_ + "': " + problem);
  }

  void open_file() {
    fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) fail(std::string("cannot open: ") + std::strerror(errno));
    struct stat st;
    if (::fstat(fd_, &st) != 0) fail(std::string("cannot stat: ") + std::strerror(errno));
    if (!S_ISREG(st.st_mode)) fail("not a regular file");
    file_size_ = static_cast<uint64_t>(st.st_size);
  }

  // Reads exactly n bytes at offset; the sizes were checked against the file
  // size already, so a short read means the file changed under us.
  void read_at(void* dst, uint64_t n, uint64_t offset) const {
    char* p = static_cast<char*>(dst);
    while (n > 0) {
      ssize_t got = ::pread(fd_, p, n, static_cast<off_t>(offset));
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) fail(std::string("read failed: ") + std::strerror(errno));
      if (got == 0) fail("unexpected end of file (was it truncated while reading?)");
      p += got; n -= static_cast<uint64_t>(got); offset += static_cast<uint64_t>(got);
    }
  }

  std::string read_header() {
    if (file_size_ < 8) fail("file is " + std::to_string(file_size_) + " bytes, shorter than the 8-byte header length");
    unsigned char len_bytes[8];
    read_at(len_bytes, 8, 0);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];  // little-endian u64
    if (n > kMaxHeaderBytes)
      fail("header length " + std::to_string(n) + " exceeds the limit of " + std::to_string(kMaxHeaderBytes) + " bytes");
    if (n > file_size_ - 8)
      fail("header length " + std::to_string(n) + " runs past the end of the file (" + std::to_string(file_size_) +
           " bytes)");
    data_start_ = 8 + n;
    std::string header(n, '\0');
    read_at(header.data(), n, 8);
    if (n == 0 || header[0] != '{') fail("header does not start with '{'");
    // nlohmann stops at a NUL as if the input ended there, so "{}\0junk" would
    // parse. JSON never contains a raw NUL (not even inside strings): refuse it.
    if (header.find('\0') != std::string::npos)
      fail("invalid JSON header: NUL byte at offset " + std::to_string(header.find('\0')));
    return header;
  }

  // nlohmann's parser silently keeps the last of duplicate keys, so a first
  // pass with DuplicateKeyFinder checks syntax and duplicates, then a plain
  // parse builds the value. (A parse callback would do it in one pass, but
  // nlohmann's callback parser is quadratic in the number of keys.)
  Json parse_json(const std::string& header) const {
    DuplicateKeyFinder finder;
    if (!Json::sax_parse(header, &finder)) fail("invalid JSON header: " + finder.error);
    if (!finder.duplicate.empty()) fail("duplicate key '" + printable(finder.duplicate) + "' in the JSON header");
    Json j = Json::parse(header);  // cannot throw: the same text just parsed
    if (!j.is_object()) fail("JSON header is not an object");
    return j;
  }

  // A JSON number that is a non-negative integer (shape entries and offsets).
  static bool as_u64(const Json& v, uint64_t& out) {
    if (!v.is_number_unsigned()) return false;  // rejects negatives, floats (2.0 too), strings
    out = v.get<uint64_t>();
    return true;
  }

  std::vector<Entry> parse_entries(const Json& j, Metadata& metadata) const {
    std::vector<Entry> entries;
    for (const auto& [name, info] : j.items()) {
      if (name == kMetadataKey) {
        if (!info.is_object()) fail("__metadata__ is not an object");
        for (const auto& [key, value] : info.items()) {
          if (!value.is_string()) fail("__metadata__ value for '" + printable(key) + "' is not a string");
          metadata[key] = value.get<std::string>();
        }
        continue;
      }
      const std::string where = " for tensor '" + printable(name) + "'";
      if (!info.is_object()) fail("entry" + where + " is not an object");
      for (const char* field : {"dtype", "shape", "data_offsets"})
        if (!info.contains(field)) fail(std::string("missing \"") + field + "\"" + where);

      Entry e;
      e.name = name;
      const Json& dtype = info["dtype"];
      if (!dtype.is_string()) fail("\"dtype\"" + where + " is not a string");
      e.dtype = dtype.get<std::string>();
      e.itemsize = known_dtype_size(e.dtype);
      if (e.itemsize == std::numeric_limits<size_t>::max()) fail("unknown dtype '" + printable(e.dtype) + "'" + where);
      if (e.dtype != "F32" && e.dtype != "F64" && e.dtype != "BF16" && e.dtype != "F16" && e.dtype != "I64")
        fail("unsupported dtype " + e.dtype + where + " (loragrad reads F32, F64, BF16, F16, I64)");

      const Json& shape = info["shape"];
      if (!shape.is_array()) fail("\"shape\"" + where + " is not an array");
      // numel in 128 bits, saturating at 2^64: no u64 dims can overflow it, a
      // zero dim still makes it 0, and anything >= 2^64 elements cannot match the offsets.
      const unsigned __int128 cap = static_cast<unsigned __int128>(1) << 64;
      unsigned __int128 numel = 1;
      for (const Json& d : shape) {
        uint64_t v;
        if (!as_u64(d, v)) fail("\"shape\"" + where + " has an entry that is not a non-negative integer: " + d.dump());
        if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
          fail("\"shape\"" + where + " has a dimension too large: " + d.dump());
        e.shape.push_back(static_cast<int64_t>(v));
        numel = std::min(numel * v, cap);
      }

      const Json& offsets = info["data_offsets"];
      if (!offsets.is_array() || offsets.size() != 2 || !as_u64(offsets[0], e.begin) || !as_u64(offsets[1], e.end))
        fail("\"data_offsets\"" + where + " is not a pair of non-negative integers: " + offsets.dump());
      if (e.end < e.begin)
        fail("\"data_offsets\"" + where + " end " + std::to_string(e.end) + " is before begin " + std::to_string(e.begin));

      const unsigned __int128 nbytes = numel * e.itemsize;
      if (nbytes != e.end - e.begin)
        fail("shape " + shape_str(e.shape) + " of " + e.dtype + " needs " +
             (nbytes >= cap ? std::string("more than 2^64") : std::to_string(static_cast<uint64_t>(nbytes))) +
             " bytes but data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) + "] span " +
             std::to_string(e.end - e.begin) + where);
      entries.push_back(std::move(e));
    }
    return entries;
  }

  // Sort by offsets, then each tensor must start where the previous one ended,
  // and the last must end exactly at the end of the file. Empty tensors can
  // share an offset: their names break the tie, so the order is deterministic.
  void check_tiling(std::vector<Entry>& entries) const {
    std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
      return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
    });
    const uint64_t data_size = file_size_ - data_start_;
    uint64_t expected = 0;
    for (const Entry& e : entries) {
      if (e.end > data_size)
        fail("data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) + "] of tensor '" + printable(e.name) +
             "' are out of range: the data buffer has " + std::to_string(data_size) + " bytes");
      if (e.begin < expected)
        fail("data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) + "] of tensor '" + printable(e.name) +
             "' overlap the previous tensor, which ends at " + std::to_string(expected));
      if (e.begin > expected)
        fail("hole in the data buffer: bytes [" + std::to_string(expected) + ", " + std::to_string(e.begin) +
             ") belong to no tensor (next tensor '" + printable(e.name) + "')");
      expected = e.end;
    }
    if (expected != data_size)
      fail("the tensors cover " + std::to_string(expected) + " bytes of the data buffer but it has " +
           std::to_string(data_size) + " (trailing bytes belong to no tensor)");
  }

  Tensor read_tensor(const Entry& e) const {
    const uint64_t offset = data_start_ + e.begin;
    const uint64_t nbytes = e.end - e.begin;
    if (e.dtype == "F32" || e.dtype == "F64" || e.dtype == "I64") {
      DType dt = e.dtype == "F32" ? DType::f32 : e.dtype == "F64" ? DType::f64 : DType::i64;
      Tensor t = uninitialized(e.shape, dt);
      if (nbytes) read_at(t.raw_data(), nbytes, offset);
      return t;
    }
    // BF16 / F16: read the halves, widen into a float32 tensor.
    std::vector<uint16_t> halves(nbytes / 2);
    if (nbytes) read_at(halves.data(), nbytes, offset);
    Tensor t = uninitialized(e.shape, DType::f32);
    float* dst = t.data<float>();
    const bool bf16 = e.dtype == "BF16";
    for (size_t i = 0; i < halves.size(); ++i) dst[i] = bf16 ? bf16_to_float(halves[i]) : f16_to_float(halves[i]);
    return t;
  }

  std::string path_;
  int fd_ = -1;
  uint64_t file_size_ = 0;
  uint64_t data_start_ = 0;  // 8 + header length
};

// ---------------------------------------------------------------------------
// Writing

const char* st_dtype(DType dt) {
  switch (dt) {
    case DType::f32: return "F32";
    case DType::f64: return "F64";
    case DType::i64: return "I64";
  }
  return nullptr;
}

using detail::parent_of;
using detail::write_all;

[[noreturn]] void throw_save_error(const std::string& path, const std::string& problem) {
  throw IOError("save_safetensors: '" + path + "': " + problem);
}

}  // namespace

const Tensor& SafetensorsFile::at(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return t;
  throw IOError("safetensors '" + path + "': no tensor named '" + name + "'");
}

bool SafetensorsFile::contains(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return true;
  return false;
}

template <class T>
static int64_t first_non_finite(const T* p, int64_t n) {
  int64_t bad = n;
#pragma omp simd reduction(min : bad)
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i])) bad = std::min(bad, i);
  return bad < n ? bad : -1;
}

void require_finite(const NamedTensors& tensors, const std::string& where) {
  for (const auto& [name, t] : tensors) {
    if (!is_floating(t.dtype())) continue;
    const Tensor& c = t;  // every loragrad tensor is contiguous
    const int64_t i = c.dtype() == DType::f32 ? first_non_finite(c.data<float>(), c.numel())
                                              : first_non_finite(c.data<double>(), c.numel());
    if (i < 0) continue;
    const double v = c.dtype() == DType::f32 ? c.data<float>()[i] : c.data<double>()[i];
    throw IOError(where + ": tensor '" + printable(name) + "' " + shape_str(t.shape()) + " holds " +
                  (std::isnan(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf") + " at flat index " + std::to_string(i) +
                  ": refusing non-finite weights");
  }
}

void SafetensorsFile::require_finite(DType as) const {
  const std::string where = "'" + path + "'";
  loragrad::require_finite(tensors, where);
  if (as != DType::f32) return;
  for (const auto& [name, t] : tensors)  // float64 values beyond float32's range
    if (t.dtype() == DType::f64) loragrad::require_finite({{name, t.to(DType::f32)}}, where + " (as float32)");
}

SafetensorsFile load_safetensors(const std::string& path) {
  refuse_temporary_path(path, "load_safetensors");
  return Reader(path).read();
}

void save_safetensors(const std::string& path, const NamedTensors& tensors, const Metadata& metadata) {
  auto fail = [&](const std::string& problem) { throw_save_error(path, problem); };

  // Everything that can be wrong with the input is checked before the temp
  // file exists, so a refused call leaves the file system untouched.
  // The header is assembled by hand so the tensors appear in the given order
  // (a JSON object type would sort them or look keys up linearly). Field order
  // within an entry follows the reference writer: dtype, shape, data_offsets.
  std::set<std::string> seen;
  std::string text = "{";
  try {
    if (!metadata.empty()) text += std::string("\"") + kMetadataKey + "\":" + Json(metadata).dump();
    uint64_t offset = 0;
    for (const auto& [name, t] : tensors) {
      if (name == kMetadataKey) fail("a tensor cannot be called __metadata__");
      if (!seen.insert(name).second) fail("duplicate tensor name '" + name + "'");
      if (!t.defined()) fail("tensor '" + name + "' is undefined");
      const char* dt = st_dtype(t.dtype());
      if (!dt) fail("tensor '" + name + "' has dtype " + dtype_name(t.dtype()) + "; only float32, float64, int64 are written");
      const uint64_t nbytes = t.nbytes();
      if (text.size() > 1) text += ',';
      text += Json(name).dump() + ":{\"dtype\":\"" + dt + "\",\"shape\":" + Json(t.shape()).dump() +
              ",\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + nbytes) + "]}";
      offset += nbytes;
    }
  } catch (const Json::exception& e) {  // dump() refuses strings that are not valid UTF-8
    fail(std::string("cannot encode the header (tensor names and metadata must be valid UTF-8): ") + e.what());
  }
  text += '}';
  text.append((8 - text.size() % 8) % 8, ' ');  // data starts at 8 + N, a multiple of 8
  unsigned char len_bytes[8];
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<unsigned char>(static_cast<uint64_t>(text.size()) >> (8 * i));

  remove_stale_temporaries(path);
  const std::string tmp = temporary_path(path);
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0) fail("cannot create '" + tmp + "': " + std::strerror(errno));
  auto abandon = [&](const std::string& what) {
    const std::string reason = what + ": " + std::strerror(errno);
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    fail(reason);
  };
  if (!write_all(fd, len_bytes, 8) || !write_all(fd, text.data(), text.size())) abandon("write failed");
  for (const auto& [name, t] : tensors)
    if (t.nbytes() && !write_all(fd, t.raw_data(), t.nbytes())) abandon("write failed");
  if (::fsync(fd) != 0) abandon("fsync failed");
  int rc = ::close(fd);
  fd = -1;
  if (rc != 0) abandon("close failed");
  if (::rename(tmp.c_str(), path.c_str()) != 0) abandon("cannot rename '" + tmp + "' over it");

  // Make the rename itself durable. Best effort: the file is complete either way.
  sync_directory(parent_of(path));
}

}  // namespace loragrad

#pragma once
// Small helpers shared by the Boost.Test files.
#include <boost/test/unit_test.hpp>

#include <stdlib.h>

#include <algorithm>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "loragrad/tensor.hpp"

// f() must throw an E whose message contains every one of parts.
template <class E, class F>
void check_throws(F f, const std::vector<std::string>& parts) {
  try {
    f();
    BOOST_ERROR("expected an exception mentioning '" << parts[0] << "'");
  } catch (const E& e) {
    for (const auto& p : parts)
      BOOST_CHECK_MESSAGE(std::string(e.what()).find(p) != std::string::npos,
                          "message '" << e.what() << "' lacks '" << p << "'");
  } catch (const std::exception& e) {
    BOOST_ERROR("wrong exception type, message: " << e.what());
  }
}

// A fresh private directory (mkdtemp), removed at the end of the test.
struct TempDir {
  std::filesystem::path dir;
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "loragrad_test_XXXXXX").string();
    BOOST_REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    dir = tmpl;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (dir / name).string(); }
  // Names in the directory, sorted (to prove no temporary was left behind).
  std::vector<std::string> listing() const {
    std::vector<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(dir)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }
};

// A whole file's bytes, and writing bytes to a file (test fixtures, not atomic).
inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// An int64 tensor's values (batches' x, y, starts).
inline std::vector<int64_t> values(const loragrad::Tensor& t) {
  const int64_t* p = t.data<int64_t>();
  return std::vector<int64_t>(p, p + t.numel());
}

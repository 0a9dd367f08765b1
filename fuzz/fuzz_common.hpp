#pragma once
// What the harnesses share: the error policy, a per-process scratch directory
// (the library reads files by path), the small base model, the adapter-dir
// input layout, and checks of what a successful load must give.
#include <cxxabi.h>
#include <stdlib.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <typeinfo>
#include <utility>
#include <vector>

#include "loragrad/autograd.hpp"
#include "loragrad/error.hpp"
#include "loragrad/nn/tiny_gpt.hpp"
#include "loragrad/thread_pool.hpp"

namespace fuzz {

namespace fs = std::filesystem;

// A finding: print why, then abort so that libFuzzer (or the replay) reports it.
[[noreturn]] inline void fail(const std::string& why) {
  // "ERROR:" so that libFuzzer's fork mode echoes the line from its child.
  std::fprintf(stderr, "==fuzz== ERROR: FUZZ FINDING: %s\n", why.c_str());
  std::fflush(stderr);
  std::abort();
}

// Runs f. A loragrad::Error is the library refusing bad input: fine (printed
// when FUZZ_VERBOSE is set, to see which check a seed reaches). Any other
// exception escaping the library (nlohmann, std::bad_alloc, std::length_error,
// ...) is a finding.
template <class F>
void guarded(F&& f) {
  try {
    f();
  } catch (const loragrad::Error& e) {
    static const bool verbose = std::getenv("FUZZ_VERBOSE") != nullptr;
    if (verbose) std::fprintf(stderr, "refused: %s\n", e.what());
  } catch (const std::exception& e) {
    int status = 0;
    char* name = abi::__cxa_demangle(typeid(e).name(), nullptr, nullptr, &status);
    fail(std::string("uncaught ") + (name ? name : typeid(e).name()) + ": " + e.what());
  } catch (...) {
    fail("uncaught non-std exception");
  }
}

// One thread: findings must reproduce exactly, and the machines running this
// are small and shared. (The tiny tensors here stay below the threading
// thresholds anyway.)
inline const bool kOneThread = (loragrad::set_num_threads(1), true);

// This process's scratch directory, made on first use under $TMPDIR (the
// Makefile points it into the build dir, which also collects the ones a crash
// leaves behind) and removed at a normal exit.
inline const std::string& temp_dir() {
  struct Dir {
    std::string path;
    ~Dir() {
      std::error_code ignored;
      fs::remove_all(path, ignored);
    }
  };
  static const Dir dir = [] {
    const char* base = std::getenv("TMPDIR");
    std::string templ = std::string(base && *base ? base : "/tmp") + "/loragrad-fuzz-XXXXXX";
    if (!mkdtemp(templ.data())) fail("mkdtemp " + templ + ": " + std::strerror(errno));
    return Dir{templ};
  }();
  return dir.path;
}

inline void write_file(const std::string& path, const uint8_t* data, size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!out.flush()) fail("cannot write " + path);
}

// The base model of the adapter harnesses and of the seeds made for them
// (make_seeds.cpp): small enough that seeds are a few KB, with every kind of
// module a config can target (q/k/v/o_proj, fc_in/fc_out, lm_head, ln_*, emb).
inline std::shared_ptr<loragrad::nn::TinyGPT> tiny_model() {
  loragrad::nn::TinyGPTConfig c;
  c.vocab_size = 16;
  c.block_size = 8;
  c.d_model = 8;
  c.n_layer = 2;
  c.n_head = 2;
  c.d_ff = 16;
  c.seed = 1;
  return std::make_shared<loragrad::nn::TinyGPT>(c);
}

// An adapter directory as one fuzz input: a 4-byte little-endian length n,
// n bytes of adapter_config.json, then adapter_model.safetensors. A length
// past the end takes the whole rest as the config.
inline std::string pack_adapter(const std::string& config, const std::string& weights) {
  std::string out(4, '\0');
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>((config.size() >> (8 * i)) & 0xff);
  return out + config + weights;
}
inline std::pair<std::string, std::string> unpack_adapter(const uint8_t* data, size_t size) {
  if (size < 4) return {};
  size_t n = 0;
  for (int i = 0; i < 4; ++i) n |= static_cast<size_t>(data[i]) << (8 * i);
  const char* p = reinterpret_cast<const char*>(data) + 4;
  n = std::min(n, size - 4);
  return {std::string(p, n), std::string(p + n, size - 4 - n)};
}

// A loaded model must hold finite numbers only (NaN / Inf in a file is bad input).
inline void require_finite(const loragrad::nn::Module& model, const std::string& what) {
  for (const auto& list : {model.named_parameters(), model.named_buffers()})
    for (const auto& [name, t] : list) {
      bool ok = true;
      if (t.dtype() == loragrad::DType::f32)
        for (int64_t i = 0; i < t.numel(); ++i) ok = ok && std::isfinite(t.data<float>()[i]);
      if (t.dtype() == loragrad::DType::f64)
        for (int64_t i = 0; i < t.numel(); ++i) ok = ok && std::isfinite(t.data<double>()[i]);
      if (!ok) fail(what + " accepted a non-finite value in " + name);
    }
}

// One forward pass of a few tokens: the loaded model must be usable.
inline void smoke_forward(loragrad::nn::TinyGPT& model) {
  const auto& c = model.config();
  const int64_t t = std::min<int64_t>(c.block_size, 4);
  std::vector<int64_t> idx(static_cast<size_t>(t));
  for (int64_t i = 0; i < t; ++i) idx[static_cast<size_t>(i)] = (3 * i + 1) % c.vocab_size;
  loragrad::NoGradGuard no_grad;
  model.eval();
  model.forward(loragrad::from_indices(idx, {1, t}));
}

}  // namespace fuzz

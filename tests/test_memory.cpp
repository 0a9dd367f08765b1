// Memory accounting (loragrad/memory.hpp): live and peak tensor bytes, counted
// by Storage, and the block cache's idle bytes, counted apart.
#define BOOST_TEST_MODULE test_memory
#include <boost/test/unit_test.hpp>

#include <thread>
#include <vector>

#include "loragrad/autograd.hpp"
#include "loragrad/memory.hpp"
#include "loragrad/nn/tiny_gpt.hpp"
#include "loragrad/ops.hpp"

using namespace loragrad;
namespace mem = loragrad::memory;

BOOST_AUTO_TEST_CASE(storage_bytes_rounds_to_64) {
  BOOST_TEST(mem::storage_bytes(0) == 64u);  // an empty tensor still holds a block
  BOOST_TEST(mem::storage_bytes(1) == 64u);
  BOOST_TEST(mem::storage_bytes(64) == 64u);
  BOOST_TEST(mem::storage_bytes(65) == 128u);
  BOOST_TEST(mem::storage_bytes(4000) == 4032u);
}

BOOST_AUTO_TEST_CASE(live_and_peak_follow_allocations_exactly) {
  const size_t base = mem::live_bytes();
  const long long storages = mem::live_storages();
  mem::reset_peak();
  BOOST_TEST(mem::peak_bytes() == base);
  {
    Tensor a = zeros({10, 100}, DType::f32);  // 4000 bytes -> 4032
    BOOST_TEST(mem::live_bytes() == base + 4032);
    BOOST_TEST(mem::live_storages() == storages + 1);
    {
      Tensor b = zeros({3}, DType::f64);      // 24 -> 64
      Tensor c = zeros({0}, DType::f32);      // 0 -> 64
      Tensor d = scalar(1.0, DType::f64);     // 8 -> 64
      BOOST_TEST(mem::live_bytes() == base + 4032 + 3 * 64);
      BOOST_TEST(mem::peak_bytes() == base + 4032 + 3 * 64);
      // Views share their storage: no new bytes.
      Tensor r = reshape(a, {100, 10});
      Tensor det = a.detach();
      BOOST_TEST(mem::live_bytes() == base + 4032 + 3 * 64);
      BOOST_TEST(mem::live_storages() == storages + 4);
    }
    BOOST_TEST(mem::live_bytes() == base + 4032);
    BOOST_TEST(mem::peak_bytes() == base + 4032 + 3 * 64);  // the peak stays
    Tensor e = uninitialized({1000}, DType::f64);            // 8000 -> 8000
    BOOST_TEST(mem::live_bytes() == base + 4032 + 8000);
    BOOST_TEST(mem::peak_bytes() == base + 4032 + 8000);
    // A clone is a new storage; a handle copy is not.
    Tensor f = e;
    Tensor g = e.clone();
    BOOST_TEST(mem::live_bytes() == base + 4032 + 2 * 8000);
    BOOST_TEST(mem::peak_bytes() == base + 4032 + 2 * 8000);
  }
  BOOST_TEST(mem::live_bytes() == base);
  BOOST_TEST(mem::live_storages() == storages);
  BOOST_TEST(mem::peak_bytes() == base + 4032 + 2 * 8000);
  mem::reset_peak();
  BOOST_TEST(mem::peak_bytes() == base);
}

BOOST_AUTO_TEST_CASE(cached_blocks_are_not_live) {
  mem::release_cached();
  BOOST_TEST(mem::cached_bytes() == 0u);
  const size_t base = mem::live_bytes();
  {
    Tensor a = zeros({12345}, DType::f32);  // 49380 -> 49408 (a size no other tensor here has)
    BOOST_TEST(mem::live_bytes() == base + 49408);
    BOOST_TEST(mem::cached_bytes() == 0u);
  }
  // Freed: no longer live, kept idle for reuse.
  BOOST_TEST(mem::live_bytes() == base);
  BOOST_TEST(mem::cached_bytes() == 49408u);
  {
    Tensor b = zeros({49380 / 4}, DType::f32);  // the same block size: taken from the cache
    BOOST_TEST(mem::cached_bytes() == 0u);
    BOOST_TEST(mem::live_bytes() == base + 49408);
    BOOST_TEST(b.at({0}) == 0.0);  // and zeroed again
  }
  BOOST_TEST(mem::cached_bytes() == 49408u);
  mem::release_cached();
  BOOST_TEST(mem::cached_bytes() == 0u);
  BOOST_TEST(mem::live_bytes() == base);
}

BOOST_AUTO_TEST_CASE(counters_are_thread_safe) {
  const size_t base = mem::live_bytes();
  const long long storages = mem::live_storages();
  mem::reset_peak();
  constexpr int kThreads = 4, kRounds = 2000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([t] {
      for (int i = 0; i < kRounds; ++i) {
        Tensor a = zeros({16 + (i + t) % 7}, DType::f32);
        Tensor b = zeros({100}, DType::f64);
        Tensor c = add(a, a);
      }
    });
  for (auto& th : threads) th.join();
  BOOST_TEST(mem::live_bytes() == base);
  BOOST_TEST(mem::live_storages() == storages);
  // Each thread held at most a and c (16..22 floats: 64 or 128 bytes each) and b (832) at once.
  BOOST_TEST(mem::peak_bytes() > base);
  BOOST_TEST(mem::peak_bytes() <= base + kThreads * (128 + 832 + 128));
}

// A training step: the graph's saved activations and the gradients make the
// peak exceed what is live once the graph is gone; the parameters and their
// gradients stay live.
BOOST_AUTO_TEST_CASE(forward_backward_peak_exceeds_live_after) {
  nn::TinyGPTConfig cfg;
  cfg.vocab_size = 64;
  cfg.block_size = 32;
  cfg.d_model = 32;
  cfg.n_layer = 2;
  cfg.n_head = 2;
  nn::TinyGPT model(cfg);
  Generator gen(1);
  const Tensor idx = randint({4, 32}, 0, 64, gen);
  const Tensor tgt = randint({4, 32}, 0, 64, gen);

  size_t param_bytes = 0;
  for (const auto& p : model.parameters()) param_bytes += mem::storage_bytes(p.nbytes());
  const size_t before = mem::live_bytes();
  mem::reset_peak();
  {
    Tensor loss = model.loss(idx, tgt);
    BOOST_TEST(mem::live_bytes() > before);  // the graph holds activations
    loss.backward();
  }
  const size_t after = mem::live_bytes();
  // Only the gradients remain: one per parameter, each the parameter's size.
  BOOST_TEST(after == before + param_bytes);
  // The logits alone (4 * 32 * 64 floats) were live at once with the parameters.
  BOOST_TEST(mem::peak_bytes() > after + mem::storage_bytes(4 * 32 * 64 * 4));
  for (auto& p : model.parameters()) p.zero_grad();
  BOOST_TEST(mem::live_bytes() == before);
}

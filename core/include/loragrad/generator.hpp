#pragma once
// A counter-based random generator: the k-th number of a generator is a pure
// function of (seed, k). A draw reserves a range of counters atomically, so
// several threads may share one Generator, and a tensor's values do not
// depend on how many threads filled it.
#include <atomic>
#include <cstdint>

namespace loragrad {

class Generator {
 public:
  explicit Generator(uint64_t seed = 0) : seed_(seed), counter_(0) {}
  Generator(const Generator& o) : seed_(o.seed_), counter_(o.counter_.load()) {}
  Generator& operator=(const Generator& o) {
    seed_ = o.seed_;
    counter_ = o.counter_.load();
    return *this;
  }

  void manual_seed(uint64_t seed) { seed_ = seed; counter_ = 0; }
  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return counter_.load(); }
  void set_offset(uint64_t off) { counter_ = off; }

  // Reserve n consecutive counters; returns the first.
  uint64_t reserve(uint64_t n) { return counter_.fetch_add(n); }

  // Pure functions of (seed, counter).
  static uint64_t bits(uint64_t seed, uint64_t counter);           // 64 random bits
  static double uniform01(uint64_t seed, uint64_t counter);        // [0, 1), 53 bits
  static double normal01(uint64_t seed, uint64_t counter);         // N(0,1), Box-Muller

  double uniform() { return uniform01(seed_, reserve(1)); }
  double normal() { return normal01(seed_, reserve(1)); }
  int64_t randint(int64_t lo, int64_t hi);                          // [lo, hi)

 private:
  uint64_t seed_;
  std::atomic<uint64_t> counter_;
};

Generator& default_generator();  // seeded with 0; prefer passing your own

}  // namespace loragrad

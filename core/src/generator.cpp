// Counter-based random numbers: splitmix64 over (seed, counter).
#include "loragrad/generator.hpp"

#include <cmath>

#include "loragrad/error.hpp"

namespace loragrad {

static inline uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t Generator::bits(uint64_t seed, uint64_t counter) {
  // Two rounds: the seed is mixed first so nearby seeds give unrelated streams.
  return splitmix64(splitmix64(seed) ^ (counter * 0xD1B54A32D192ED03ull));
}

double Generator::uniform01(uint64_t seed, uint64_t counter) {
  return static_cast<double>(bits(seed, counter) >> 11) * 0x1.0p-53;
}

double Generator::normal01(uint64_t seed, uint64_t counter) {
  // Box-Muller from two independent streams derived from the same counter.
  const uint64_t a = bits(seed, counter), b = bits(seed ^ 0x5851F42D4C957F2Dull, counter);
  const double u1 = (static_cast<double>(a >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]: log is finite
  const double u2 = static_cast<double>(b >> 11) * 0x1.0p-53;
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

int64_t Generator::randint(int64_t lo, int64_t hi) {
  if (lo >= hi) throw ValueError("Generator::randint: empty range");
  return lo + static_cast<int64_t>(bits(seed_, reserve(1)) % static_cast<uint64_t>(hi - lo));
}

Generator& default_generator() {
  static Generator gen(0);
  return gen;
}

}  // namespace loragrad

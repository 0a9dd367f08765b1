#include "loragrad/kernels/isa.hpp"

#include <cstdio>
#include <cstdlib>

namespace loragrad::kernels {

std::string compiled_isa() {
#if defined(__AVX512F__)
  return "avx512f";
#elif defined(__AVX2__) && defined(__FMA__)
  return "avx2+fma";
#elif defined(__AVX2__)
  return "avx2";
#else
  return "sse2";
#endif
}

bool cpu_supports_compiled_isa() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
#if defined(__AVX512F__)
  if (!__builtin_cpu_supports("avx512f")) return false;
#endif
#if defined(__AVX2__)
  if (!__builtin_cpu_supports("avx2")) return false;
#endif
#if defined(__FMA__)
  if (!__builtin_cpu_supports("fma")) return false;
#endif
#endif
  return true;
}

void require_cpu_support() {
  if (cpu_supports_compiled_isa()) return;
  std::fprintf(stderr,
               "loragrad: this library was compiled for %s, which this CPU does not have (a -march=native "
               "build from another machine?). Rebuild here, or configure with -DLORAGRAD_NATIVE=OFF "
               "-DLORAGRAD_ARCH=x86-64-v3.\n",
               compiled_isa().c_str());
  std::abort();
}

}  // namespace loragrad::kernels

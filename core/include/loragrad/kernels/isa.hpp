#pragma once
// The instruction set the kernels were compiled for (CMake's LORAGRAD_NATIVE /
// LORAGRAD_ARCH decide it; see cmake/LoragradLibrary.cmake), and whether this
// CPU runs it.
#include <string>

namespace loragrad::kernels {

// "avx512f", "avx2+fma", "avx2" or "sse2": the widest the GEMM tile and the
// xsimd loops use.
std::string compiled_isa();
// True when this CPU has every instruction set compiled_isa() names.
bool cpu_supports_compiled_isa();
// Prints why and aborts unless cpu_supports_compiled_isa(). Runs when the
// library is loaded (a static initialiser in tensor.cpp), so a -march=native
// build copied to an older CPU says so instead of dying of SIGILL in a kernel.
void require_cpu_support();

}  // namespace loragrad::kernels

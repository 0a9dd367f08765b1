#pragma once
// GEMM with bfloat16 operands and float32 accumulation, row-major, BLAS-like
// (the conventions of gemm.hpp):
//   C (M, N) float32 = alpha * op(A) @ op(B) + beta * C
// op(A) is (M, K): A is stored (M, K) with row stride lda, or (K, M) when trans_a.
// op(B) is (K, N): B is stored (K, N) with row stride ldb, or (N, K) when trans_b.
// beta == 0 means C is overwritten (never read). Strides are in elements. Bad
// sizes throw loragrad::ShapeError, as gemm() does.
//
// Every product of two bf16 values is exact in float32, so the only rounding is
// that of the float32 sums: the result is within about 2^-24 * sqrt(K) (random
// signs) of the exact product of the bf16 inputs, relative to sum |a| |b|.
//
// What a linear layer with a frozen bf16 weight W (out, in) needs, and the
// reason for the second form (A in float32, rounded to bf16 as it is packed):
//   forward   y  (T, out) = x  (T, in)  @ W^T   gemm_bf16(false, true,  T, out, in, 1, x,  in,  W, in,  0, y,  out)
//   backward  dx (T, in)  = dy (T, out) @ W     gemm_bf16(false, false, T, in, out, 1, dy, out, W, in,  0, dx, in)
//   (no dW: the weight is frozen; the LoRA matrices stay in float32 and use gemm()).
// The activations x and the gradient dy are float32 tensors in the model; the
// GEMM rounds each element to bf16 while copying it into its packed panels,
// which it does anyway, so no bf16 copy of them is ever made and the result is
// bit-for-bit that of rounding A first (to_bf16) and calling the bf16 x bf16
// form. (PyTorch's autocast rounds the same operands.) trans_a is supported
// for completeness; it packs through a slower, transposing path.
//
// Kernels, chosen once per process from the CPU (CPUID and the OS's consent to
// the register state):
//   "amx"          AMX-BF16 tiles (Intel Sapphire / Emerald Rapids and later);
//                  the process asks Linux for the tile state once
//                  (arch_prctl(ARCH_REQ_XCOMP_PERM)); a refusal means no AMX.
//                  Once granted, signal frames carry the 8 KiB tile state: a
//                  program that runs signal handlers on its own sigaltstack
//                  needs one of at least sysconf(_SC_MINSIGSTKSZ) bytes
//   "avx512_bf16"  vdpbf16ps; the default on AMD (Zen 4: twice the flops of
//                  a float FMA). Intel cores have it too, but issue it at a
//                  quarter of the FMA rate (half the float32 GEMM's speed
//                  measured on Emerald Rapids): there it is never the default
//   "fp32"         everywhere else: the operands widened to float32 (exact) and
//                  multiplied by the float32 GEMM
// The AMX and AVX512_BF16 instructions treat bf16 subnormal inputs (|x| below
// 1.2e-38) as zero, and flush subnormal float32 results to zero; the fp32
// kernel keeps them. Apart from that the kernels differ only in the order of
// their float32 additions.
//
// Determinism: for a given kernel and shape, every element of C is the same
// sum in the same order whatever the number of threads (OpenMP over blocks of
// C, as gemm()).
//
// The environment variable LORAGRAD_BF16_KERNEL=amx|avx512_bf16|fp32 (read at
// the first call) or set_bf16_kernel() picks a kernel instead; asking for one
// this CPU cannot run throws loragrad::ValueError, saying why.
// LORAGRAD_BF16_DISABLE=amx,avx512_bf16 (a comma-separated list, read once)
// makes those kernels count as missing, as on a CPU without them: how the
// tests run the other CPUs' paths (fp32 cannot be disabled).
#include <cstdint>
#include <string>
#include <vector>

#include "loragrad/kernels/bf16.hpp"

namespace loragrad::kernels {

// A and B in bf16.
void gemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const bf16* A,
               int64_t lda, const bf16* B, int64_t ldb, float beta, float* C, int64_t ldc);
// A in float32, rounded to bf16 (to_bf16) as it is read; B in bf16.
void gemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
               int64_t lda, const bf16* B, int64_t ldb, float beta, float* C, int64_t ldc);

// The kernel gemm_bf16 uses: "amx", "avx512_bf16" or "fp32". The first call
// decides it (from LORAGRAD_BF16_KERNEL, else the fastest this CPU runs, as
// above) and throws ValueError if the variable names an unknown or
// unavailable kernel.
std::string bf16_kernel();

// All kernel names: {"amx", "avx512_bf16", "fp32"}.
std::vector<std::string> bf16_kernel_names();

// Whether this CPU (and OS) can run `name`; when not and why_not is given,
// *why_not says what is missing ("this CPU has no AMX-BF16", ...). Unknown
// names are not supported. "fp32" always is.
bool bf16_kernel_supported(const std::string& name, std::string* why_not = nullptr);

// Uses `name` from now on, in every thread ("auto" or "": the default for
// this CPU, ignoring LORAGRAD_BF16_KERNEL). Throws ValueError for an unknown name
// or one this CPU cannot run (the kernel in use is then unchanged). Not meant
// to be called while a gemm_bf16 runs in another thread.
void set_bf16_kernel(const std::string& name);

}  // namespace loragrad::kernels

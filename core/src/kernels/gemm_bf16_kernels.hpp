#pragma once
// The bf16 GEMM's kernels and packing routines, private to core/src/kernels/:
// the driver (gemm_bf16.cpp: blocking, threads, dispatch) is compiled for the
// library's instruction set; the routines declared here live in files
// compiled for AVX-512 / AMX whatever that set is (function-level targets),
// and the driver calls them only after CPUID said the CPU runs them.
//
// ---------------------------------------------------------------------------
// Packed layouts (bf16 elements; kc = depth of the block, kp = kc rounded up
// to the kernel's depth step: 2 for AVX512_BF16, 32 for AMX)
// ---------------------------------------------------------------------------
// B panel = op(B)[k0 : k0+kc, n0 : n0+nc], cut into ceil(nc / kNR) column
// slivers of kNR columns, sliver s at dst + s * kp * kNR. Inside a sliver,
// depth runs in pairs: pair row q (q < kp / 2) is kNR (column) x 2 (k)
// values, the two values of one column adjacent:
//     sliver[q * 2*kNR + 2*c + e] = op(B)[k0 + 2q + e][n0 + s*kNR + c]
// and 0 past kc or past nc. This is the "VNNI" layout both instructions read:
// 16 columns of one pair row are one 512-bit operand of vdpbf16ps (each
// 32-bit lane a pair), and 16 pair rows x 16 columns are one AMX B tile
// (64-byte rows, stride 2*kNR*2 bytes: the two tiles of a sliver sit side by
// side).
//
// A block = op(A)[i0 : i0+mc, k0 : k0+kc], row-major: row i at
// dst + i * a_stride(kp), kp values (0 past kc), rows mc .. rows_pad - 1 all
// zero. A pair (A[i][2q], A[i][2q+1]) is then one 32-bit word, which
// vdpbf16ps broadcasts, and 16 rows x 32 values are one AMX A tile.
#include <cstdint>

#include "loragrad/kernels/bf16.hpp"

namespace loragrad::kernels::bf16_detail {

inline constexpr int64_t kNR = 32;  // columns of a B sliver (two 16-lane vectors / two AMX tiles)

// Row stride of a packed A block: kp plus one 64-byte line, so that with kp a
// multiple of 32 (1024 for a deep block: a 2 KiB row) the 16 or 12 rows a
// kernel reads at once fall in different L1 sets instead of one.
constexpr int64_t a_stride(int64_t kp) { return kp + 32; }
constexpr int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
// bf16 values a packed B panel of kp rows (padded depth) and nc columns holds.
constexpr int64_t packed_b_size(int64_t kp, int64_t nc) { return kp * round_up(nc, kNR); }

// op(A) as the driver sees it: bf16 or float32 (rounded while packing).
struct AOperand {
  const bf16* a16;   // exactly one of a16 / a32 is set
  const float* a32;
  int64_t ld;
  bool trans;        // stored (K, M)
};
// op(B): bf16, stored (K, N), or (N, K) when trans.
struct BOperand {
  const bf16* b;
  int64_t ld;
  bool trans;
};

// Packing (gemm_bf16_pack.cpp; AVX-512 F/BW/VL). Layouts above.
void pack_a(const AOperand& a, int64_t i0, int64_t mc, int64_t rows_pad, int64_t k0, int64_t kc, int64_t kp,
            bf16* dst);
void pack_b(const BOperand& b, int64_t k0, int64_t kc, int64_t kp, int64_t n0, int64_t nc, bf16* dst);

// A kernel computes C[0:mc, 0:nc] = alpha * Ablock @ Bpanel + beta * C (beta ==
// 0: C not read) from a packed A block of mc rows (padded to a multiple of
// its row step) and the packed B slivers covering nc columns, both kp deep.
using ComputeFn = void (*)(int64_t mc, int64_t nc, int64_t kp, const bf16* apack, const bf16* bpack, float alpha,
                           float beta, float* C, int64_t ldc);

// AVX512_BF16 (gemm_bf16_avx512.cpp): register tile of kAvx512MR x kNR.
inline constexpr int64_t kAvx512MR = 12;
void compute_avx512bf16(int64_t mc, int64_t nc, int64_t kp, const bf16* apack, const bf16* bpack, float alpha,
                        float beta, float* C, int64_t ldc);

// AMX-BF16 (gemm_bf16_amx.cpp): 32 x 32 blocks of C in four 16 x 16 tiles.
// The caller must have been granted the tile state (arch_prctl).
inline constexpr int64_t kAmxMR = 32;
void compute_amx(int64_t mc, int64_t nc, int64_t kp, const bf16* apack, const bf16* bpack, float alpha, float beta,
                 float* C, int64_t ldc);

}  // namespace loragrad::kernels::bf16_detail

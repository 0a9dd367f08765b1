// The bf16 GEMM (loragrad/kernels/gemm_bf16.hpp): run-time choice of the
// kernel, the argument checks, the fp32 fallback, and the blocked, threaded
// driver the two bf16 kernels share. The kernels and the packing they read
// are in gemm_bf16_{avx512,amx,pack}.cpp (layouts: gemm_bf16_kernels.hpp);
// this file is compiled for the library's instruction set, so that nothing
// here needs more than the CPU the library was built for.
//
// Driver (the GotoBLAS / BLIS loop nest of gemm.cpp, with bf16 panels):
//
//   for jc in [0, N) step NC                    one column panel of C and op(B)
//     for pc in [0, K) step KC                  one depth block
//       pack op(B)[pc:+kc, jc:+nc] -> bpack     (kp, NC) pair-interleaved slivers
//       for each row block ic (<= MC rows)      a work item; threads take items
//         pack op(A)[ic:+mc, pc:+kc] -> apack   (MC, kp) bf16 rows, per thread
//         kernel: C[ic:+mc, jc:+nc] = alpha * apack @ bpack + beta' * C
//
// with beta' = beta for the first depth block and 1 afterwards. An element of
// C is thus always the same sum in the same order: each depth block is summed
// by the kernel in its fixed order, and the blocks are added in order, by
// whichever thread; the split of rows and columns between threads changes
// which thread computes an element, never how.

#include "loragrad/kernels/gemm_bf16.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#define LORAGRAD_BF16_X86 1
#endif

#include "loragrad/error.hpp"
#include "loragrad/kernels/gemm.hpp"
#include "loragrad/thread_pool.hpp"
#include "aligned_buffer.hpp"
#include "gemm_bf16_kernels.hpp"

namespace loragrad::kernels {
namespace {

using namespace bf16_detail;

// ---------------------------------------------------------------------------
// Which kernel: CPUID, the OS, the environment
// ---------------------------------------------------------------------------
enum Kernel : int { kAmx = 0, kAvx512Bf16 = 1, kFp32 = 2 };
const char* const kNames[] = {"amx", "avx512_bf16", "fp32"};

// What this CPU and OS can run, found once. Both bf16 kernels also need
// AVX-512 F/BW/VL (packing, the merge into C) and the OS saving the zmm state;
// every CPU with AVX512_BF16 or AMX has the former.
struct CpuSupport {
  bool ok[3] = {false, false, true};
  std::string why_not[3];
  // Whether avx512_bf16 may be the default. Its speed depends on the core:
  // on AMD Zen 4 a 512-bit vdpbf16ps issues as often as a 512-bit FMA and
  // does twice its flops, but on Intel's Golden Cove cores (Sapphire /
  // Emerald Rapids) it issues at a quarter of the FMA rate: measured on an
  // Emerald Rapids, 1.3 G instructions/s against 5.0 for vfmadd231ps, so the
  // kernel ran at 0.5-0.8x the float32 GEMM. There (AMX unavailable, e.g. an
  // old kernel) the float32 fallback is the faster default; avx512_bf16 can
  // still be asked for.
  bool avx512_bf16_fast = false;
};

#ifdef LORAGRAD_BF16_X86
uint64_t xgetbv0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}
#endif

CpuSupport detect() {
  CpuSupport s;
#ifdef LORAGRAD_BF16_X86
  unsigned a = 0, b = 0, c = 0, d = 0;
  unsigned b7 = 0, d7 = 0, a7_1 = 0;
  bool osxsave = false;
  if (__get_cpuid(1, &a, &b, &c, &d)) osxsave = c & (1u << 27);
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    b7 = b;
    d7 = d;
    if (a >= 1 && __get_cpuid_count(7, 1, &a, &b, &c, &d)) a7_1 = a;
  }
  const uint64_t xcr0 = osxsave ? xgetbv0() : 0;
  // AVX-512: F (leaf 7 EBX 16), BW (30), VL (31); the OS saves SSE, AVX and
  // the opmask / zmm state (XCR0 bits 1, 2, 5, 6, 7).
  const bool avx512 = (b7 & (1u << 16)) && (b7 & (1u << 30)) && (b7 & (1u << 31));
  const bool os_zmm = (xcr0 & 0xe6) == 0xe6;
  std::string no_avx512;
  if (!avx512) no_avx512 = "this CPU has no AVX-512 (F, BW, VL)";
  else if (!os_zmm) no_avx512 = "the OS does not enable the AVX-512 register state";

  if (!no_avx512.empty()) s.why_not[kAvx512Bf16] = no_avx512;
  else if (!(a7_1 & (1u << 5))) s.why_not[kAvx512Bf16] = "this CPU has no AVX512_BF16";
  else s.ok[kAvx512Bf16] = true;
  unsigned vendor[4] = {};
  __get_cpuid(0, &vendor[3], &vendor[0], &vendor[2], &vendor[1]);  // EBX, EDX, ECX: "AuthenticAMD"
  s.avx512_bf16_fast = std::memcmp(vendor, "AuthenticAMD", 12) == 0;

  // AMX: AMX-BF16 (leaf 7 EDX 22) and AMX-TILE (24); XCR0 bits 17 (XTILECFG)
  // and 18 (XTILEDATA) enabled by the OS; and, since Linux 5.16, the
  // process's own request for the 8 KiB tile data state (ARCH_REQ_XCOMP_PERM
  // = 0x1023, XFEATURE_XTILEDATA = 18). Granted once, for every thread.
  if (!no_avx512.empty()) {
    s.why_not[kAmx] = no_avx512;
  } else if (!(d7 & (1u << 22)) || !(d7 & (1u << 24))) {
    s.why_not[kAmx] = "this CPU has no AMX-BF16";
  } else if ((xcr0 & (3u << 17)) != (3u << 17)) {
    s.why_not[kAmx] = "the OS does not enable the AMX tile state (XCR0)";
  } else if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) {
    s.why_not[kAmx] = "Linux refused the AMX tile state (arch_prctl(ARCH_REQ_XCOMP_PERM); kernel older than 5.16?)";
  } else {
    s.ok[kAmx] = true;
  }
#else
  s.why_not[kAmx] = "not an x86-64 build";
  s.why_not[kAvx512Bf16] = "not an x86-64 build";
#endif
  // LORAGRAD_BF16_DISABLE=amx,avx512_bf16: those kernels count as missing,
  // exactly as on a CPU without them (the default skips them, forcing one
  // throws), so that path can be run, and tested, on any machine.
  if (const char* off = std::getenv("LORAGRAD_BF16_DISABLE")) {
    const std::string list = std::string(",") + off + ",";
    for (int k : {kAmx, kAvx512Bf16})
      if (list.find(std::string(",") + kNames[k] + ",") != std::string::npos) {
        s.ok[k] = false;
        s.why_not[k] = "disabled by LORAGRAD_BF16_DISABLE";
      }
  }
  return s;
}

const CpuSupport& cpu_support() {
  static const CpuSupport s = detect();
  return s;
}

// The default: AMX where it runs, then avx512_bf16 where it is fast (see
// CpuSupport), else fp32.
int best_kernel() {
  const CpuSupport& s = cpu_support();
  if (s.ok[kAmx]) return kAmx;
  if (s.ok[kAvx512Bf16] && s.avx512_bf16_fast) return kAvx512Bf16;
  return kFp32;
}

// "amx, avx512_bf16, fp32", restricted to what this CPU runs.
std::string supported_list() {
  std::string out;
  for (int k = kAmx; k <= kFp32; ++k)
    if (cpu_support().ok[k]) out += (out.empty() ? "" : ", ") + std::string(kNames[k]);
  return out;
}

// The kernel index for a name, or -1 for "auto" / "", or throws.
int kernel_for(const std::string& name, const char* where) {
  if (name.empty() || name == "auto") return -1;
  for (int k = kAmx; k <= kFp32; ++k) {
    if (name != kNames[k]) continue;
    const CpuSupport& s = cpu_support();
    if (!s.ok[k])
      throw ValueError(std::string(where) + ": bf16 kernel '" + name + "' cannot run here: " + s.why_not[k] + " (kernels this CPU runs: " +
                       supported_list() + ")");
    return k;
  }
  throw ValueError(std::string(where) + ": unknown bf16 kernel '" + loragrad::printable(name) +
                   "' (amx, avx512_bf16, fp32 or auto)");
}

std::atomic<int> g_kernel{-1};  // -1: not decided yet

int current_kernel() {
  int k = g_kernel.load(std::memory_order_acquire);
  if (k >= 0) return k;
  const char* env = std::getenv("LORAGRAD_BF16_KERNEL");
  k = env ? kernel_for(env, "LORAGRAD_BF16_KERNEL") : -1;
  if (k < 0) k = best_kernel();
  int expected = -1;  // another thread may have decided meanwhile; the same way
  g_kernel.compare_exchange_strong(expected, k, std::memory_order_acq_rel);
  return g_kernel.load(std::memory_order_acquire);
}

// ---------------------------------------------------------------------------
// Blocks and buffers
// ---------------------------------------------------------------------------
// KC: depth of a packed block. In bf16 a 1024-deep block is the bytes of
// gemm.cpp's 512-deep float one: the A rows of a register tile (12 x 2 KiB)
// and a (1024, 32) B sliver (64 KiB) stream from L2, and C is read and written
// once per block, so every K of the model (256, 1024) is a single block.
// MC: rows of A packed at once, (192, 1056) bf16 = 396 KiB, L2-resident; a
// multiple of both kernels' row steps (12 and 32).
// NC: columns of one B panel, (1024, 4096) bf16 = 8 MiB, in L3.
constexpr int64_t KC = 1024;
constexpr int64_t MC = 192;
constexpr int64_t NC = 4096;
static_assert(KC % 32 == 0 && NC % kNR == 0, "blocks hold whole AMX steps and slivers");
static_assert(MC % kAvx512MR == 0 && MC % kAmxMR == 0, "a row block holds whole register / tile rows");

// Below this many flops a parallel region costs more than it saves (as gemm.cpp).
constexpr double kParallelFlops = 2e6;

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

thread_local AlignedBuffer<bf16> tls_apack;  // (MC, a_stride(kp)) packed A block, per thread
thread_local AlignedBuffer<bf16> tls_bpack;  // (kp, NC) packed B panel: the caller's is shared by its team,
                                // or (one panel) each thread packs its own

// The kernel as the driver uses it.
struct KernelInfo {
  int64_t mr;      // rows of C a kernel step covers (A blocks are padded to a multiple)
  int64_t kstep;   // the packed depth is a multiple of this
  ComputeFn compute;
};
const KernelInfo kInfo[2] = {{kAmxMR, 32, &compute_amx}, {kAvx512MR, 2, &compute_avx512bf16}};

struct Problem {
  AOperand A;
  BOperand B;
  int64_t M, N, K;
  float alpha, beta;
  float* C;
  int64_t ldc;
  KernelInfo kernel;
  bf16* bpack;  // the calling thread's panel (shared by the team when there are several panels)
};

// How one (jc, pc) panel of C is cut into work items, as in gemm.cpp: row
// blocks of whole kernel steps (at most MC rows), and with few rows also
// groups of slivers. Threads take items dynamically.
struct Grid {
  int64_t nb_m, nb_n;
};

Grid choose_grid(int nt, int64_t M, int64_t N, int64_t mr) {
  const int64_t row_tiles = ceil_div(M, mr);
  Grid g{ceil_div(row_tiles, MC / mr), 1};
  if (nt == 1) return g;
  if (row_tiles >= 4 * nt) {
    g.nb_m = std::min(row_tiles, ceil_div(g.nb_m, nt) * nt);
  } else {
    const int64_t slivers = ceil_div(std::min(N, NC), kNR);
    g.nb_m = row_tiles;
    g.nb_n = std::min(slivers, ceil_div(4 * nt, row_tiles));
  }
  return g;
}

struct Panel {
  int64_t jc, nc, slivers;  // columns [jc, jc + nc) of C and op(B)
  int64_t pc, kc, kp;       // depth [pc, pc + kc), packed to kp
  float beta;               // beta for the first depth block, then 1
};

Panel make_panel(const Problem& p, int64_t jc, int64_t pc) {
  Panel P;
  P.jc = jc;
  P.nc = std::min(NC, p.N - jc);
  P.slivers = ceil_div(P.nc, kNR);
  P.pc = pc;
  P.kc = std::min(KC, p.K - pc);
  P.kp = round_up(P.kc, p.kernel.kstep);
  P.beta = pc == 0 ? p.beta : 1.0f;
  return P;
}

// Pack slivers [s0, s1) of the panel into bpack, each at its sliver offset.
void pack_slivers(const Problem& p, const Panel& P, int64_t s0, int64_t s1, bf16* bpack) {
  if (s1 > s0)
    pack_b(p.B, P.pc, P.kc, P.kp, P.jc + s0 * kNR, std::min(P.nc, s1 * kNR) - s0 * kNR, bpack + s0 * P.kp * kNR);
}

struct Item {
  int64_t i0, mc, s_lo, s_hi;  // rows [i0, i0 + mc) x slivers [s_lo, s_hi)
};

Item item_at(const Problem& p, const Panel& P, Grid g, int64_t item) {
  const int64_t mr = p.kernel.mr;
  const int64_t row_tiles = ceil_div(p.M, mr);
  const int64_t bm = item / g.nb_n, bn = item % g.nb_n;
  Item it;
  it.i0 = row_tiles * bm / g.nb_m * mr;
  it.mc = std::min(p.M, row_tiles * (bm + 1) / g.nb_m * mr) - it.i0;
  it.s_lo = P.slivers * bn / g.nb_n;
  it.s_hi = P.slivers * (bn + 1) / g.nb_n;
  return it;
}

void compute_item(const Problem& p, const Panel& P, const Item& it, const bf16* bpack, bf16* apack) {
  if (it.mc <= 0 || it.s_hi <= it.s_lo) return;
  pack_a(p.A, it.i0, it.mc, round_up(it.mc, p.kernel.mr), P.pc, P.kc, P.kp, apack);
  const int64_t j0 = P.jc + it.s_lo * kNR;
  const int64_t nc = std::min(P.jc + P.nc, P.jc + it.s_hi * kNR) - j0;
  p.kernel.compute(it.mc, nc, P.kp, apack, bpack + it.s_lo * P.kp * kNR, p.alpha, P.beta,
                   p.C + it.i0 * p.ldc + j0, p.ldc);
}

// The loop nest; nt == 1: serial; nt > 1: over the pool, items taken one at a
// time. As in gemm.cpp: a one-panel product (K <= KC, N <= NC: every shape of
// the model) is one fork/join, each thread packing the B slivers of the items
// it takes into its own buffer; several panels are packed together into the
// caller's buffer, then used, each step a fork/join.
void run(const Problem& p, int nt, Grid g) {
  const int64_t kp_max = round_up(std::min(p.K, KC), p.kernel.kstep);
  const int64_t apack_size = MC * a_stride(kp_max);  // (MC, a_stride(kp)), per thread
  const int64_t items = g.nb_m * g.nb_n;

  if (nt > 1 && p.N <= NC && p.K <= KC) {
    const Panel P = make_panel(p, 0, 0);
    // packed[t * nb_n + bn]: thread t's own B buffer holds sliver group bn.
    std::vector<uint8_t> packed(static_cast<size_t>(nt * g.nb_n), 0);
    parallel_run(items, [&](int64_t i, int t) {
      bf16* apack = tls_apack.get(apack_size);
      bf16* bown = tls_bpack.get(packed_b_size(P.kp, P.nc));  // this thread's copy
      const Item it = item_at(p, P, g, i);
      const int64_t bn = i % g.nb_n;
      if (!packed[t * g.nb_n + bn]) {
        pack_slivers(p, P, it.s_lo, it.s_hi, bown);
        packed[t * g.nb_n + bn] = 1;
      }
      compute_item(p, P, it, bown, apack);
    }, nt);
    return;
  }

  for (int64_t jc = 0; jc < p.N; jc += NC) {
    for (int64_t pc = 0; pc < p.K; pc += KC) {
      const Panel P = make_panel(p, jc, pc);
      if (nt == 1) {
        bf16* apack = tls_apack.get(apack_size);
        pack_slivers(p, P, 0, P.slivers, p.bpack);
        for (int64_t i = 0; i < items; ++i) compute_item(p, P, item_at(p, P, g, i), p.bpack, apack);
        continue;
      }
      const int64_t pieces = std::min(P.slivers, int64_t(4) * nt);
      parallel_run(pieces, [&](int64_t q, int) {
        pack_slivers(p, P, P.slivers * q / pieces, P.slivers * (q + 1) / pieces, p.bpack);
      });
      parallel_run(items, [&](int64_t i, int) {
        compute_item(p, P, item_at(p, P, g, i), p.bpack, tls_apack.get(apack_size));
      });
    }
  }
}

// C = beta * C: the whole answer when K == 0 or alpha == 0.
void scale_c(int64_t M, int64_t N, float beta, float* C, int64_t ldc) {
  if (beta == 1.0f) return;
  for (int64_t i = 0; i < M; ++i) {
    float* crow = C + i * ldc;
    if (beta == 0.0f)
      std::fill(crow, crow + N, 0.0f);  // overwrite: C may hold NaN
    else
      for (int64_t j = 0; j < N; ++j) crow[j] *= beta;
  }
}

// The "fp32" kernel: the float GEMM on widened operands. B is widened a piece
// at a time as the float GEMM packs it (gemm_decoded_b), so no float copy of
// the weight is made; A is widened (or rounded, for a float A) into a float
// copy of its stored shape, since the float GEMM reads A directly.
void gemm_fp32_fallback(const Problem& p, int64_t lda_rows, int64_t lda_cols) {
  std::vector<float> a(static_cast<size_t>(lda_rows * lda_cols));  // A as stored, rows of lda_cols
  std::vector<bf16> row(p.A.a32 ? static_cast<size_t>(lda_cols) : 0);  // a float row rounded
  for (int64_t r = 0; r < lda_rows; ++r) {
    float* dst = a.data() + r * lda_cols;
    if (p.A.a16) {
      to_float(p.A.a16 + r * p.A.ld, dst, lda_cols);
    } else {
      to_bf16(p.A.a32 + r * p.A.ld, row.data(), lda_cols);
      to_float(row.data(), dst, lda_cols);
    }
  }
  const BOperand B = p.B;
  const DecodeRows widen = [B](int64_t row0, int64_t nrows, int64_t col0, int64_t ncols, float* out, int64_t ld) {
    for (int64_t r = 0; r < nrows; ++r) to_float(B.b + (row0 + r) * B.ld + col0, out + r * ld, ncols);
  };
  gemm_decoded_b(p.A.trans, p.B.trans, p.M, p.N, p.K, p.alpha, a.data(), lda_cols, widen, p.beta, p.C, p.ldc);
}

void check_args(int64_t M, int64_t N, int64_t K, int64_t lda, int64_t a_cols, int64_t ldb, int64_t b_cols,
                int64_t ldc, bool a_null, bool b_null, bool c_null) {
  auto fail = [&](const std::string& what) {
    throw ShapeError("gemm_bf16: " + what + " (M=" + std::to_string(M) + ", N=" + std::to_string(N) +
                     ", K=" + std::to_string(K) + ")");
  };
  if (M < 0 || N < 0 || K < 0) fail("negative dimension");
  if (M > 0 && K > 0 && lda < a_cols) fail("lda=" + std::to_string(lda) + " < " + std::to_string(a_cols));
  if (K > 0 && N > 0 && ldb < b_cols) fail("ldb=" + std::to_string(ldb) + " < " + std::to_string(b_cols));
  if (M > 0 && N > 0 && ldc < N) fail("ldc=" + std::to_string(ldc) + " < N");
  if (M > 0 && N > 0 && K > 0 && (a_null || b_null)) fail("null A or B");
  if (M > 0 && N > 0 && c_null) fail("null C");
}

void drive(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const bf16* A16,
           const float* A32, int64_t lda, const bf16* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  check_args(M, N, K, lda, trans_a ? M : K, ldb, trans_b ? K : N, ldc, !A16 && !A32, !B, !C);
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == 0.0f) {
    scale_c(M, N, beta, C, ldc);
    return;
  }
  const int kernel = current_kernel();
  Problem p{{A16, A32, lda, trans_a}, {B, ldb, trans_b}, M, N, K, alpha, beta, C, ldc, {}, nullptr};
  if (kernel == kFp32) {
    gemm_fp32_fallback(p, trans_a ? K : M, trans_a ? M : K);
    return;
  }
  p.kernel = kInfo[kernel];
  p.bpack = tls_bpack.get(packed_b_size(round_up(std::min(K, KC), p.kernel.kstep), std::min(N, NC)));

  const double flops = 2.0 * double(M) * double(N) * double(K);
  const int nt = (flops >= kParallelFlops && !in_parallel()) ? num_threads() : 1;
  run(p, nt, choose_grid(nt, M, N, p.kernel.mr));
}

}  // namespace

// ---------------------------------------------------------------------------
// Public entry points
// ---------------------------------------------------------------------------
void gemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const bf16* A,
               int64_t lda, const bf16* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  drive(trans_a, trans_b, M, N, K, alpha, A, nullptr, lda, B, ldb, beta, C, ldc);
}

void gemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
               int64_t lda, const bf16* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  drive(trans_a, trans_b, M, N, K, alpha, nullptr, A, lda, B, ldb, beta, C, ldc);
}

std::string bf16_kernel() { return kNames[current_kernel()]; }

std::vector<std::string> bf16_kernel_names() { return {kNames[kAmx], kNames[kAvx512Bf16], kNames[kFp32]}; }

bool bf16_kernel_supported(const std::string& name, std::string* why_not) {
  for (int k = kAmx; k <= kFp32; ++k) {
    if (name != kNames[k]) continue;
    if (!cpu_support().ok[k] && why_not) *why_not = cpu_support().why_not[k];
    return cpu_support().ok[k];
  }
  if (why_not) *why_not = "unknown bf16 kernel '" + loragrad::printable(name) + "'";
  return false;
}

void set_bf16_kernel(const std::string& name) {
  const int k = kernel_for(name, "set_bf16_kernel");
  g_kernel.store(k < 0 ? best_kernel() : k, std::memory_order_release);
}

}  // namespace loragrad::kernels

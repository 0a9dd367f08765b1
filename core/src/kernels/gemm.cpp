// Float and double GEMM, row-major: C (M, N) = alpha * op(A) @ op(B) + beta * C.
// Interface and semantics: loragrad/kernels/gemm.hpp; packed-panel contract:
// gemm_pack.hpp (private, next to this file).
//
// Float algorithm (the GotoBLAS / BLIS loop nest):
//
//   for jc in [0, N) step NC                    one column panel of C and op(B)
//     for pc in [0, K) step KC                  one depth block
//       pack op(B)[pc:+kc, jc:+nc] -> bpack     (KC, NC), L3
//       for each row block ic (<= MC rows)      a work item; threads take items
//         pack op(A)[ic:+mc, pc:+kc] -> apack   (MC, KC), per thread, L2
//         for each NR sliver jr of bpack        (KC, NR), reused across ir
//           for ir in [0, mc) step MR
//             micro-kernel: C[ir:+MR, jr:+NR] = alpha * apack_sliver @ bpack_sliver + beta' * C
//
// with beta' = beta for the first depth block and 1 afterwards. The vector
// dimension is N (contiguous in row-major C and in the packed B sliver); the
// MR rows of A are broadcast one float at a time. Transposes and strides are
// absorbed by the packing routines, so the micro-kernel only ever reads
// unit-stride slivers. Ragged edges: the last row tile runs a kernel
// instantiated for fewer rows; a tile narrower than NR (B's last sliver is
// zero-padded) is computed into a scratch tile and merged by hand.
// Tiny untransposed operands skip packing (see kDirectAFloats).
// Threads: see run(). gemm() hands shapes with N or M at most 16 to the
// narrow path instead (gemm_narrow.cpp).

#include "loragrad/kernels/gemm.hpp"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <memory>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include <xsimd/xsimd.hpp>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "loragrad/error.hpp"
#include "loragrad/thread_pool.hpp"
#include "aligned_buffer.hpp"
#include "gemm_narrow.hpp"
#include "gemm_pack.hpp"

namespace loragrad::kernels {
namespace {

// ---------------------------------------------------------------------------
// Tile and block sizes
// ---------------------------------------------------------------------------
// The instruction set is fixed at compile time (the library is built with
// -march=native), so the micro-kernel is a single instantiation.
#if defined(__AVX512F__)
using Arch = xsimd::avx512f;
#elif defined(__AVX2__) && defined(__FMA__)
using Arch = xsimd::fma3<xsimd::avx2>;
#elif defined(__AVX2__)
using Arch = xsimd::avx2;
#else
using Arch = xsimd::sse2;
#endif
using Vec = xsimd::batch<float, Arch>;

constexpr int64_t MR = kGemmMR;         // rows of the register tile (broadcast from A)
constexpr int64_t NR = kGemmNR;         // columns of the register tile (NV vectors)
constexpr int64_t W = Vec::size;        // floats per vector
constexpr int64_t NV = NR / W;          // vectors per tile row
constexpr int64_t KC = kGemmKC;         // depth block (see gemm_pack.hpp)
static_assert(NR % W == 0, "NR must be a whole number of vectors");
static_assert(KC % 64 == 0, "KC is promised to quantised sources to be a multiple of 64");

// MC: at most this many rows of A are packed at once; the (MC, KC) block
// (384 KiB) stays in L2 (1 MiB per core here) while the B slivers of the
// panel stream past it. 96..288 measured within noise of each other; 384
// is 5-8% slower (the block no longer fits next to the B traffic).
// NC: columns of one B panel; the (KC, NC) panel (8 MiB) lives in L3 and is
// re-read for every row block. Every shape of the model fits one panel.
constexpr int64_t MC = 192;
constexpr int64_t NC = 4096;
static_assert(MC % MR == 0 && NC % NR == 0, "blocks must hold whole tiles");

// Below this many flops a parallel region costs more than it saves (a fork /
// join with hot threads is 1-2 us; 2e6 flops is about 10 us on one core).
constexpr double kParallelFlops = 2e6;

// Tiny operands are read in place instead of packed: an untransposed B (or
// A) spanning at most this many floats (32 KiB, 2/3 of L1) from its first to
// its last row. For such products packing costs 10-20% of the time (64^3:
// 150 -> 180 GFLOP/s with both in place), and a span this short stays in L1
// whatever the leading dimension, so the strided reads cannot thrash it.
constexpr int64_t kDirectBFloats = 8192;
constexpr int64_t kDirectAFloats = 8192;

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Fused multiply-add c + a * b. xsimd 8.1 has no avx512f fma kernel (its
// generic fallback is a separate mul and add, twice the instructions and an
// extra rounding), so the AVX-512 path calls the intrinsic on the register.
inline Vec fmadd(const Vec& a, const Vec& b, const Vec& c) {
#if defined(__AVX512F__)
  return Vec(_mm512_fmadd_ps(a, b, c));
#else
  return xsimd::fma(a, b, c);
#endif
}

// ---------------------------------------------------------------------------
// Pack buffers (aligned_buffer.hpp)
// ---------------------------------------------------------------------------
thread_local AlignedBuffer<float> tls_apack;  // (MC, KC) packed A, MR-row slivers; per thread
thread_local AlignedBuffer<float> tls_bpack;  // (KC, NC) packed B, NR-column slivers: the calling
                                              // thread's is shared with its team (several panels),
                                              // or each thread packs its own (one panel)
thread_local AlignedBuffer<float> tls_decoded;  // (NR, KC) rows of a decoded B before the transposing
                                                // pack (gemm_decoded_b, trans_b); per thread

// ---------------------------------------------------------------------------
// Packing
// ---------------------------------------------------------------------------
// Interleave `rows` rows of length kc (row r starts at src + r*lds) into a
// sliver of width ld:  dst[k*ld + r] = src[r*lds + k]. This is the transpose
// both "row-major A" and "transposed B" need. Element by element it took
// ~10% of the run time of x(2048, 256) @ W(256, 256) (its cost per flop grows
// as 1/N for A, 1/M for B), so rows are handled four at a time with
// in-register 4x4 transposes: per 4 rows and 16 values of k, 4 loads,
// 8 shuffles and 16 128-bit stores (scalar code for the leftovers).
void interleave_rows(const float* src, int64_t lds, int64_t rows, int64_t kc, float* dst,
                     int64_t ld) {
  int64_t r = 0;
#if defined(__SSE2__)
  for (; r + 4 <= rows; r += 4) {
    const float* s0 = src + r * lds;
    const float* s1 = s0 + lds;
    const float* s2 = s1 + lds;
    const float* s3 = s2 + lds;
    float* d = dst + r;
    int64_t k = 0;
#if defined(__AVX512F__)
    for (; k + 16 <= kc; k += 16) {
      // Within each 128-bit lane L: a 4x4 transpose of rows 0..3 x k+4L..k+4L+3.
      const __m512 r0 = _mm512_loadu_ps(s0 + k), r1 = _mm512_loadu_ps(s1 + k);
      const __m512 r2 = _mm512_loadu_ps(s2 + k), r3 = _mm512_loadu_ps(s3 + k);
      const __m512 t0 = _mm512_unpacklo_ps(r0, r1), t1 = _mm512_unpackhi_ps(r0, r1);
      const __m512 t2 = _mm512_unpacklo_ps(r2, r3), t3 = _mm512_unpackhi_ps(r2, r3);
      // u_j lane L = (row0..row3) at k + 4L + j
      const __m512 u0 = _mm512_shuffle_ps(t0, t2, 0x44), u1 = _mm512_shuffle_ps(t0, t2, 0xEE);
      const __m512 u2 = _mm512_shuffle_ps(t1, t3, 0x44), u3 = _mm512_shuffle_ps(t1, t3, 0xEE);
      float* dk = d + k * ld;
#define LORAGRAD_STORE_LANE(L)                                                \
  _mm_storeu_ps(dk + (4 * L + 0) * ld, _mm512_extractf32x4_ps(u0, L));        \
  _mm_storeu_ps(dk + (4 * L + 1) * ld, _mm512_extractf32x4_ps(u1, L));        \
  _mm_storeu_ps(dk + (4 * L + 2) * ld, _mm512_extractf32x4_ps(u2, L));        \
  _mm_storeu_ps(dk + (4 * L + 3) * ld, _mm512_extractf32x4_ps(u3, L));
      LORAGRAD_STORE_LANE(0)
      LORAGRAD_STORE_LANE(1)
      LORAGRAD_STORE_LANE(2)
      LORAGRAD_STORE_LANE(3)
#undef LORAGRAD_STORE_LANE
    }
#endif
    for (; k + 4 <= kc; k += 4) {
      __m128 r0 = _mm_loadu_ps(s0 + k), r1 = _mm_loadu_ps(s1 + k);
      __m128 r2 = _mm_loadu_ps(s2 + k), r3 = _mm_loadu_ps(s3 + k);
      _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
      _mm_storeu_ps(d + (k + 0) * ld, r0);
      _mm_storeu_ps(d + (k + 1) * ld, r1);
      _mm_storeu_ps(d + (k + 2) * ld, r2);
      _mm_storeu_ps(d + (k + 3) * ld, r3);
    }
    for (; k < kc; ++k) {
      float* dk = d + k * ld;
      dk[0] = s0[k];
      dk[1] = s1[k];
      dk[2] = s2[k];
      dk[3] = s3[k];
    }
  }
#endif
  for (; r < rows; ++r) {
    const float* s = src + r * lds;
    for (int64_t k = 0; k < kc; ++k) dst[k * ld + r] = s[k];
  }
}

// Pack op(A)[i0:i0+mc, p0:p0+kc] as ceil(mc/MR) row slivers of (kc, MR):
//   dst[s*kc*MR + k*MR + r] = op(A)[i0 + s*MR + r][p0 + k]
// The micro-kernel then reads the MR values it broadcasts at step k from one
// contiguous run. Rows past mc in the last sliver are left unset: the kernel
// for a partial tile only reads the rows that exist.
void pack_a(bool trans_a, const float* A, int64_t lda, int64_t i0, int64_t mc, int64_t p0,
            int64_t kc, float* dst) {
  for (int64_t s = 0; s * MR < mc; ++s, dst += kc * MR) {
    const int64_t rows = std::min(MR, mc - s * MR);
    const int64_t ib = i0 + s * MR;
    if (trans_a) {
      // op(A)(i, p) = A[p*lda + i]: step k of the sliver is a contiguous run of A.
      for (int64_t k = 0; k < kc; ++k) {
        const float* src = A + (p0 + k) * lda + ib;
        float* d = dst + k * MR;
        for (int64_t r = 0; r < rows; ++r) d[r] = src[r];
      }
    } else {
      // op(A)(i, p) = A[i*lda + p]: rows of A are contiguous along k; interleave.
      interleave_rows(A + ib * lda + p0, lda, rows, kc, dst, MR);
    }
  }
}

// ---------------------------------------------------------------------------
// Micro-kernel
// ---------------------------------------------------------------------------
// c[0:R, 0:NR] = alpha * (a @ b) + beta * c     (beta == 0: c is not read)
//   a: kInPlaceA false: (kc, MR) packed sliver of op(A) (its first R rows used)
//      kInPlaceA true:  R rows of a row-major A read in place, row stride lda
//   b: (kc, NR) sliver of op(B), row k at b + k*ldb (ldb == NR when packed);
//   c has row stride ldc.
// R == MR is the hot kernel; R < MR serves the last, partial row tile so it
// costs R/MR of a full one instead of a full one.
// The R x NV accumulators live in registers for the whole depth loop
// (12 x 2 = 24 of the 32 zmm registers on AVX-512, the rest hold the B
// vectors and the broadcast A value).
template <int R, bool kInPlaceA>
void micro_kernel(int64_t kc, const float* __restrict a, int64_t lda, const float* __restrict b,
                  int64_t ldb, float alpha, float beta, float* __restrict c, int64_t ldc) {
  // op(A)[r][k] = a[r * a_rs + k * a_ks]; compile-time strides for the packed
  // (hot) case keep its addressing to one pointer.
  const int64_t a_rs = kInPlaceA ? lda : 1;
  constexpr int64_t a_ks = kInPlaceA ? 1 : MR;
  Vec acc[R][NV];  // (R, NR) tile of C, in registers
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int64_t v = 0; v < NV; ++v) acc[r][v] = Vec(0.0f);

  for (int64_t k = 0; k < kc; ++k, a += a_ks, b += ldb) {
    Vec bv[NV];  // row k of the B sliver
#pragma GCC unroll 8
    for (int64_t v = 0; v < NV; ++v) bv[v] = Vec::load_unaligned(b + v * W);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const Vec av(a[r * a_rs]);  // broadcast op(A)[r][k]
#pragma GCC unroll 8
      for (int64_t v = 0; v < NV; ++v) acc[r][v] = fmadd(av, bv[v], acc[r][v]);
    }
  }

  const Vec va(alpha);
  if (beta == 0.0f) {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int64_t v = 0; v < NV; ++v) (acc[r][v] * va).store_unaligned(c + r * ldc + v * W);
  } else {
    const Vec vb(beta);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int64_t v = 0; v < NV; ++v) {
        float* cp = c + r * ldc + v * W;
        fmadd(acc[r][v], va, vb * Vec::load_unaligned(cp)).store_unaligned(cp);
      }
  }
}

using KernelFn = void (*)(int64_t, const float*, int64_t, const float*, int64_t, float, float,
                          float*, int64_t);

template <bool kInPlaceA, size_t... I>
constexpr std::array<KernelFn, MR> make_kernels(std::index_sequence<I...>) {
  return {&micro_kernel<int(I) + 1, kInPlaceA>...};
}
// kKernels[in_place_a][r - 1] computes the first r rows of a tile.
constexpr std::array<KernelFn, MR> kKernels[2] = {
    make_kernels<false>(std::make_index_sequence<MR>{}),
    make_kernels<true>(std::make_index_sequence<MR>{})};

// One tile of C: c[0:mr, 0:nr], mr <= MR, nr <= NR. Full-width tiles are
// written directly; a tile at the ragged right edge is computed into a
// scratch tile and only its valid columns are merged (beta == 0: C not read).
inline void compute_tile(int64_t kc, const float* a, int64_t lda, bool in_place_a,
                         const float* b, int64_t ldb, float alpha, float beta, float* c,
                         int64_t ldc, int64_t mr, int64_t nr) {
  const KernelFn kernel = kKernels[in_place_a][mr - 1];
  if (nr == NR) {
    kernel(kc, a, lda, b, ldb, alpha, beta, c, ldc);
    return;
  }
  alignas(64) float tile[MR * NR];  // (MR, NR) scratch, row stride NR
  kernel(kc, a, lda, b, ldb, alpha, 0.0f, tile, NR);
  for (int64_t i = 0; i < mr; ++i) {
    float* crow = c + i * ldc;
    const float* trow = tile + i * NR;
    if (beta == 0.0f) {
      for (int64_t j = 0; j < nr; ++j) crow[j] = trow[j];
    } else {
      for (int64_t j = 0; j < nr; ++j) crow[j] = trow[j] + beta * crow[j];
    }
  }
}

// C = beta * C, the whole answer when K == 0 or alpha == 0.
template <class T>
void scale_c(int64_t M, int64_t N, T beta, T* C, int64_t ldc) {
  if (beta == T(1)) return;
  for (int64_t i = 0; i < M; ++i) {
    T* crow = C + i * ldc;
    if (beta == T(0)) {
      std::fill(crow, crow + N, T(0));  // overwrite: C may hold NaN
    } else {
      for (int64_t j = 0; j < N; ++j) crow[j] *= beta;
    }
  }
}

// ---------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------
struct Problem {
  bool trans_a;
  int64_t M, N, K;
  float alpha;
  const float* A;
  int64_t lda;
  const BPanelSource* B;
  float beta;
  float* C;
  int64_t ldc;
  float* bpack;  // (KC, NC) packed B panel of the calling thread (shared by the team)
  // op(B) as a plain (K, N) row-major matrix with row stride ldb when it is so
  // small (at most kDirectBFloats floats from first to last row) that it sits
  // in L1 as it is: its full slivers are then read in place, unpacked.
  const float* direct_b;
  int64_t ldb;
  // Likewise a small untransposed A (at most kDirectAFloats) is read in place.
  bool in_place_a;
};

// How the C panel of one (jc, pc) step is cut into work items: nb_m row blocks
// (whole MR tiles, at most MC rows) x nb_n groups of NR slivers. Threads take
// items dynamically, so a thread that loses its core to another process does
// not hold the other one back by a whole static share.
//   * Enough rows: only rows are split (every item reuses the same B panel),
//     into a multiple of nt blocks so that an idle machine gets equal shares.
//   * Few rows (e.g. M = 8, N = 4096): columns are split as well; the items of
//     one row block then each pack the same small A block.
struct Grid {
  int64_t nb_m, nb_n;
};

Grid choose_grid(int nt, int64_t M, int64_t N) {
  const int64_t row_tiles = ceil_div(M, MR);
  Grid g{ceil_div(row_tiles, MC / MR), 1};
  if (nt == 1) return g;
  if (row_tiles >= 4 * nt) {
    g.nb_m = std::min(row_tiles, ceil_div(g.nb_m, nt) * nt);
  } else {
    const int64_t slivers = ceil_div(std::min(N, NC), NR);
    g.nb_m = row_tiles;
    g.nb_n = std::min(slivers, ceil_div(4 * nt, row_tiles));
  }
  return g;
}

// One (jc, pc) step of the loop nest, identical in every thread.
struct Panel {
  int64_t jc, nc, slivers;  // columns [jc, jc + nc) of C and op(B), in NR slivers
  int64_t pc, kc;           // depth [pc, pc + kc)
  float beta;               // beta for the first depth block, then 1 (accumulate)
  int64_t first_packed;     // slivers before this one are read in place (direct B)
};

Panel make_panel(const Problem& p, int64_t jc, int64_t pc) {
  Panel P;
  P.jc = jc;
  P.nc = std::min(NC, p.N - jc);
  P.slivers = ceil_div(P.nc, NR);
  P.pc = pc;
  P.kc = std::min(KC, p.K - pc);
  P.beta = pc == 0 ? p.beta : 1.0f;
  P.first_packed = p.direct_b ? P.nc / NR : 0;  // in place: all but a ragged last sliver
  return P;
}

// Pack slivers [s0, s1) of the panel into bpack, each at its sliver offset.
void pack_slivers(const Problem& p, const Panel& P, int64_t s0, int64_t s1, float* bpack) {
  s0 = std::max(s0, P.first_packed);
  if (s1 > s0)
    p.B->pack(P.pc, P.kc, P.jc + s0 * NR, std::min(P.nc, s1 * NR) - s0 * NR,
              bpack + s0 * P.kc * NR);
}

// Work item `item` of the grid: rows [i0, i0 + mc) x slivers [s_lo, s_hi).
struct Item {
  int64_t i0, mc, s_lo, s_hi;
};

Item item_at(const Problem& p, const Panel& P, Grid g, int64_t item) {
  const int64_t row_tiles = ceil_div(p.M, MR);
  const int64_t bm = item / g.nb_n, bn = item % g.nb_n;
  Item it;
  it.i0 = row_tiles * bm / g.nb_m * MR;
  it.mc = std::min(p.M, row_tiles * (bm + 1) / g.nb_m * MR) - it.i0;
  it.s_lo = P.slivers * bn / g.nb_n;
  it.s_hi = P.slivers * (bn + 1) / g.nb_n;
  return it;
}

// C[item rows, item columns] (+)= alpha * op(A) block @ packed B panel.
void compute_item(const Problem& p, const Panel& P, const Item& it, const float* bpack,
                  float* apack) {
  if (it.mc <= 0 || it.s_hi <= it.s_lo) return;
  if (!p.in_place_a) pack_a(p.trans_a, p.A, p.lda, it.i0, it.mc, P.pc, P.kc, apack);

  for (int64_t s = it.s_lo; s < it.s_hi; ++s) {
    const int64_t j = P.jc + s * NR;
    const int64_t nr = std::min(NR, p.N - j);
    // (kc, NR) sliver of op(B), reused by every ir below (L1-resident);
    // k stride NR when packed, ldb when read in place.
    const bool in_place_b = s < P.first_packed;
    const float* bs = in_place_b ? p.direct_b + P.pc * p.ldb + j : bpack + s * P.kc * NR;
    const int64_t ldb = in_place_b ? p.ldb : NR;
    for (int64_t ir = 0; ir < it.mc; ir += MR) {
      const float* as = p.in_place_a ? p.A + (it.i0 + ir) * p.lda + P.pc  // MR rows of A
                                     : apack + ir * P.kc;                 // (kc, MR) sliver
      compute_tile(P.kc, as, p.lda, p.in_place_a, bs, ldb, p.alpha, P.beta,
                   p.C + (it.i0 + ir) * p.ldc + j, p.ldc, std::min(MR, it.mc - ir), nr);
    }
  }
}

// The loop nest. nt == 1: serial, on the calling thread. nt > 1: over the
// pool, whose threads take work items one at a time (parallel_run).
//
// Synchronisation is kept to a minimum because the machine may be shared: a
// thread that has lost its core must hold up the others as little as possible.
//   * One panel (K <= KC, N <= NC; every product up to 512 x 4096 deep/wide):
//     each thread packs into its own buffer the B slivers of the items it
//     takes; one fork/join.
//   * Several panels: for each panel, the threads pack it together into the
//     caller's buffer (a first parallel_run), then compute its items (a
//     second): the joins separate packing a panel from using it, and using it
//     from overwriting it.
// Frozen weights are packed again at every call, by every thread of a one-
// panel product. Keeping their panels instead (a cache keyed by
// nn::LinearBase::weight_version()) was measured and not done (issue 11,
// item 2c): in the M LoRA step, packing the frozen weights (x W^T forward,
// g W backward, every adapted layer) takes 5 ms per thread with the weights
// in cache and 10 ms as sampled in the step, 0.7-1.3% of it on 1 thread (the
// attention's K and V, new at every call, are another 2.2%), about twice
// that share on 2 threads; the cache would hold two packed copies of each
// frozen weight, 36 MiB for M (+10% peak RSS), and over NF4 dense copies
// that undo what NF4 saves.
void run(const Problem& p, int nt, Grid g) {
  const int64_t apack_floats = MC * std::min(p.K, KC);  // (MC, KC) MR-row slivers, per thread
  const int64_t items = g.nb_m * g.nb_n;

  if (nt > 1 && p.N <= NC && p.K <= KC) {
    const Panel P = make_panel(p, 0, 0);
    // packed[t * nb_n + bn]: thread t's own B buffer holds sliver group bn.
    std::vector<uint8_t> packed(static_cast<size_t>(nt * g.nb_n), 0);
    parallel_run(items, [&](int64_t i, int t) {
      float* apack = tls_apack.get(apack_floats);
      float* bown = tls_bpack.get(packed_b_floats(P.kc, P.nc));  // (kc, nc) this thread's copy
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
        float* apack = tls_apack.get(apack_floats);
        pack_slivers(p, P, 0, P.slivers, p.bpack);
        for (int64_t i = 0; i < items; ++i) compute_item(p, P, item_at(p, P, g, i), p.bpack, apack);
        continue;
      }
      // Pack the shared panel in pieces of whole slivers.
      const int64_t pieces = std::min(P.slivers, int64_t(4) * nt);
      parallel_run(pieces, [&](int64_t q, int) {
        pack_slivers(p, P, P.slivers * q / pieces, P.slivers * (q + 1) / pieces, p.bpack);
      });
      parallel_run(items, [&](int64_t i, int) {
        compute_item(p, P, item_at(p, P, g, i), p.bpack, tls_apack.get(apack_floats));
      });
    }
  }
}

void check_args(const char* who, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t a_cols,
                int64_t ldb, int64_t b_cols, int64_t ldc) {
  auto fail = [&](const std::string& what) {
    throw ShapeError(std::string(who) + ": " + what + " (M=" + std::to_string(M) +
                     ", N=" + std::to_string(N) + ", K=" + std::to_string(K) + ")");
  };
  if (M < 0 || N < 0 || K < 0) fail("negative dimension");
  if (M > 0 && K > 0 && lda < a_cols)
    fail("lda=" + std::to_string(lda) + " < " + std::to_string(a_cols));
  if (b_cols >= 0 && K > 0 && N > 0 && ldb < b_cols)
    fail("ldb=" + std::to_string(ldb) + " < " + std::to_string(b_cols));
  if (M > 0 && N > 0 && ldc < N) fail("ldc=" + std::to_string(ldc) + " < N");
}

}  // namespace

// ---------------------------------------------------------------------------
// Public float entry points
// ---------------------------------------------------------------------------
void StridedBSource::pack(int64_t k0, int64_t kc, int64_t n0, int64_t nc, float* dst) const {
  for (int64_t s = 0; s * NR < nc; ++s, dst += kc * NR) {
    const int64_t cols = std::min(NR, nc - s * NR);
    const int64_t jb = n0 + s * NR;
    if (!trans_b_) {
      // op(B)(p, j) = B[p*ldb + j]: step k of the sliver is a contiguous run of B.
      for (int64_t k = 0; k < kc; ++k) {
        const float* src = B_ + (k0 + k) * ldb_ + jb;
        float* d = dst + k * NR;
        if (cols == NR) {
#pragma GCC unroll 8
          for (int64_t v = 0; v < NV; ++v)
            Vec::load_unaligned(src + v * W).store_unaligned(d + v * W);
        } else {
          for (int64_t c = 0; c < cols; ++c) d[c] = src[c];
          for (int64_t c = cols; c < NR; ++c) d[c] = 0.0f;
        }
      }
    } else {
      // op(B)(p, j) = B[j*ldb + p]: a transpose; column c of the sliver is a
      // contiguous run of row jb + c of B.
      if (cols < NR) std::fill(dst, dst + kc * NR, 0.0f);  // the padding columns
      interleave_rows(B_ + jb * ldb_ + k0, ldb_, cols, kc, dst, NR);
    }
  }
}

namespace {

// The float driver behind gemm() and gemm_packed_b(); arguments are checked.
void drive(bool trans_a, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const BPanelSource& B, const float* direct_b, int64_t ldb, float beta, float* C,
           int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == 0.0f) {
    scale_c(M, N, beta, C, ldc);
    return;
  }

  const bool in_place_a = !trans_a && M * lda <= kDirectAFloats;
  Problem p{trans_a, M, N, K, alpha, A, lda, &B, beta, C, ldc, nullptr, direct_b, ldb, in_place_a};
  p.bpack = tls_bpack.get(packed_b_floats(std::min(K, KC), std::min(N, NC)));

  const double flops = 2.0 * double(M) * double(N) * double(K);
  const int nt = (flops >= kParallelFlops && !in_parallel()) ? num_threads() : 1;
  run(p, nt, choose_grid(nt, M, N));
}

}  // namespace

namespace {

// op(B) from a DecodeRows callback (gemm.hpp). The pieces asked for are those
// of one sliver (NR columns of op(B), kc deep), so they stay cache-sized:
//   trans_b: the sliver's columns are NR rows of the stored B (N, K), each a
//     run of kc: decoded into a (NR, kc) scratch of this thread (64 KiB), then
//     interleaved into the panel like a transposed plain B.
//   else: the sliver's rows are kc row segments of the stored B (K, N), each
//     NR wide: decoded straight into the panel (row stride NR); only the
//     padding lanes of a ragged last sliver are written here.
class DecodedBSource final : public BPanelSource {
 public:
  DecodedBSource(const DecodeRows& decode, bool trans_b, int64_t K, int64_t N)
      : decode_(decode), trans_b_(trans_b), K_(K), N_(N) {}
  int64_t rows() const override { return K_; }
  int64_t cols() const override { return N_; }
  void pack(int64_t k0, int64_t kc, int64_t n0, int64_t nc, float* dst) const override {
    for (int64_t s = 0; s * NR < nc; ++s, dst += kc * NR) {
      const int64_t cols = std::min(NR, nc - s * NR);
      const int64_t jb = n0 + s * NR;
      if (trans_b_) {
        float* rows = tls_decoded.get(NR * kc);  // (cols, kc): B[jb + c][k0 : k0 + kc]
        decode_(jb, cols, k0, kc, rows, kc);
        if (cols < NR) std::fill(dst, dst + kc * NR, 0.0f);  // the padding columns
        interleave_rows(rows, kc, cols, kc, dst, NR);
      } else {
        decode_(k0, kc, jb, cols, dst, NR);  // B[k0 + k][jb : jb + cols] -> sliver row k
        if (cols < NR)
          for (int64_t k = 0; k < kc; ++k) std::fill(dst + k * NR + cols, dst + (k + 1) * NR, 0.0f);
      }
    }
  }

 private:
  const DecodeRows& decode_;
  bool trans_b_;
  int64_t K_, N_;
};

}  // namespace

void gemm_decoded_b(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                    int64_t lda, const DecodeRows& decode_rows, float beta, float* C, int64_t ldc) {
  check_args("gemm_decoded_b", M, N, K, lda, trans_a ? M : K, 0, -1, ldc);
  if (!decode_rows) throw ValueError("gemm_decoded_b: decode_rows is empty");
  drive(trans_a, M, N, K, alpha, A, lda, DecodedBSource(decode_rows, trans_b, K, N), nullptr, 0, beta, C, ldc);
}

void gemm_packed_b(bool trans_a, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                   int64_t lda, const BPanelSource& B, float beta, float* C, int64_t ldc) {
  check_args("gemm_packed_b", M, N, K, lda, trans_a ? M : K, 0, -1, ldc);
  if (B.rows() != K || B.cols() != N)
    throw ShapeError("gemm_packed_b: B source is (" + std::to_string(B.rows()) + ", " +
                     std::to_string(B.cols()) + "), expected (K, N) = (" + std::to_string(K) +
                     ", " + std::to_string(N) + ")");
  drive(trans_a, M, N, K, alpha, A, lda, B, nullptr, 0, beta, C, ldc);
}

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
          const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
          int64_t ldc) {
  check_args("gemm", M, N, K, lda, trans_a ? M : K, ldb, trans_b ? K : N, ldc);
  // Rank-r shapes (N or M at most 16) have kernels of their own (gemm_narrow.hpp).
  if (M > 0 && N > 0 && K > 0 && alpha != 0.0f && narrow_gemm_applies(M, N, K)) {
    gemm_narrow(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  const StridedBSource src(B, ldb, trans_b, K, N);
  // A small untransposed B is read in place (see Problem::direct_b).
  const bool in_place = !trans_b && K * ldb <= kDirectBFloats;
  drive(trans_a, M, N, K, alpha, A, lda, src, in_place ? B : nullptr, ldb, beta, C, ldc);
}

// ---------------------------------------------------------------------------
// Double: used for float64 gradient checks, so it is written for obvious
// correctness; it is still vectorised and parallel over rows of C.
// ---------------------------------------------------------------------------
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha,
          const double* A, int64_t lda, const double* B, int64_t ldb, double beta, double* C,
          int64_t ldc) {
  check_args("gemm", M, N, K, lda, trans_a ? M : K, ldb, trans_b ? K : N, ldc);
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == 0.0) {
    scale_c(M, N, beta, C, ldc);
    return;
  }
  // op(A)(i, p) = A[i*sa_i + p*sa_p]
  const int64_t sa_i = trans_a ? 1 : lda, sa_p = trans_a ? lda : 1;
  const double flops = 2.0 * double(M) * double(N) * double(K);
  // Blocks of rows, up to 8 per thread.
  const int64_t tasks = flops >= kParallelFlops && !in_parallel() ? std::min<int64_t>(M, num_threads() * 8) : 1;
  parallel_run(tasks, [&](int64_t t, int) {
    std::vector<double> acc(static_cast<size_t>(N));  // (N,) one row of op(A) @ op(B)
    for (int64_t i = M * t / tasks; i < M * (t + 1) / tasks; ++i) {
      const double* arow = A + i * sa_i;
      double* out = acc.data();
      if (!trans_b) {
        // Row i of C = sum_p op(A)(i,p) * row p of B: contiguous axpys.
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t p = 0; p < K; ++p) {
          const double a = arow[p * sa_p];
          const double* brow = B + p * ldb;
#pragma omp simd
          for (int64_t j = 0; j < N; ++j) out[j] += a * brow[j];
        }
      } else {
        // op(B)(p, j) = B[j*ldb + p]: each C entry is a dot product of two runs.
        for (int64_t j = 0; j < N; ++j) {
          const double* bcol = B + j * ldb;
          double s = 0.0;
#pragma omp simd reduction(+ : s)
          for (int64_t p = 0; p < K; ++p) s += arow[p * sa_p] * bcol[p];
          out[j] = s;
        }
      }
      double* crow = C + i * ldc;
      if (beta == 0.0) {
        for (int64_t j = 0; j < N; ++j) crow[j] = alpha * out[j];
      } else {
        for (int64_t j = 0; j < N; ++j) crow[j] = alpha * out[j] + beta * crow[j];
      }
    }
  });
}

}  // namespace loragrad::kernels

// The narrow path of the float GEMM: products with N <= 16 or M <= 16 (see
// gemm_narrow.hpp for when and why). Row-major, C = alpha op(A) op(B) + beta C.
//
// Two kernels, each reading the big operand in place and packing only the
// small one (K x 16 floats at most):
//
// * rowdot (N <= 16, A not transposed): row i of C is row i of A (contiguous
//   along k) times the small op(B) (K, n). n is rounded up to a power of two
//   n' and one 16-float vector holds P = 16 / n' consecutive k of all n'
//   columns:
//       rp[q*16 + c*P + t] = op(B)[q*P + t][c]          (zero past K and n)
//   The P values A[i][qP .. qP+P-1], repeated over the 16 lanes by one
//   broadcast load (lane l gets A[i][qP + l % P]; no shuffle), multiply that
//   vector lane by lane, so every lane of every FMA does useful work even for
//   n = 8, 4, 2, 1. A lane sums every P-th k of one column; the P lanes of a
//   column are added once at the end (fold). 16 rows share each vector of rp.
//
// * colvec (M <= 16, B not transposed): vectorised along N like the main
//   kernel, with B's rows read in place, a strip of 16 NV columns at a time,
//   and the m rows of op(A) packed (K, R) for the broadcasts: each element
//   of B is loaded once and used for all m rows.
//
// The other two cases are transposes, C^T = op(B)^T op(A)^T, computed by the
// same kernels with the tile written to C transposed:
//   N <= 16, A transposed:  colvec on C^T   (A's rows run along C's rows)
//   M <= 16, B transposed:  rowdot on C^T   (B's rows run along k)
//
// Each element of C is computed by one kernel call, k in increasing order, so
// results do not depend on the thread count (the threads split C, never K).
#include "gemm_narrow.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "loragrad/error.hpp"
#include "loragrad/thread_pool.hpp"
#include "aligned_buffer.hpp"

namespace loragrad::kernels {

#if !defined(__AVX512F__)

bool narrow_gemm_applies(int64_t, int64_t, int64_t) { return false; }

void gemm_narrow(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t, float,
                 float*, int64_t) {
  throw ValueError("gemm_narrow: built without AVX-512 (narrow_gemm_applies() is false)");
}

#else

namespace {

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Depth of a block of the sums: the kernels add k in blocks of this many, each
// block summed from zero and then added to the total, as the main kernel does
// with its depth blocks (kGemmKC). A deep product (dA, dB: K = tokens) summed
// in one run loses accuracy with its length: relative rms error against
// float64, one run / blocks / the main kernel: K = 2048 8.4e-7 / 4.1e-7 /
// 4.1e-7; K = 8192 1.6e-6 / 4.1e-7 / 4.1e-7. The cost is R (x NV) adds and
// stores per block.
constexpr int64_t kSumBlock = 512;

// Below this many flops a parallel region costs more than it saves (as in gemm.cpp).
constexpr double kParallelFlops = 2e6;

// The packed small operand lives in the calling thread's buffer and is read by its whole team.
thread_local AlignedBuffer<float> tls_small;  // the packed small operand: rowdot (ceil(K/P), 16), colvec (K, R)

// Where a kernel's results go: its own rows i and columns j are C's (i, j), or
// C's (j, i) when trans (the kernel computed C^T).
struct Out {
  float* C;
  int64_t ldc;
  bool trans;
  float alpha, beta;

  // Kernel row i, columns [j0, j0 + 16) where mask is set: v (lane l = column j0 + l).
  void store(int64_t i, int64_t j0, __m512 v, __mmask16 mask) const {
    v = _mm512_mul_ps(v, _mm512_set1_ps(alpha));
    if (!trans) {
      float* c = C + i * ldc + j0;
      if (beta != 0.0f) v = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, c), _mm512_set1_ps(beta), v);
      _mm512_mask_storeu_ps(c, mask, v);
      return;
    }
    alignas(64) float t[16];
    _mm512_store_ps(t, v);
    for (int l = 0; l < 16; ++l) {
      if (!((mask >> l) & 1)) continue;
      float* c = C + (j0 + l) * ldc + i;  // a column of C: one float per row
      *c = beta == 0.0f ? t[l] : beta * *c + t[l];
    }
  }
};

__mmask16 first_lanes(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1); }

int team_size(int64_t M, int64_t N, int64_t K) {
  const double flops = 2.0 * double(M) * double(N) * double(K);
  return flops >= kParallelFlops && !in_parallel() ? num_threads() : 1;
}

// Runs body(item) for items [0, n): serially, or over the pool, whose threads
// take items one at a time.
template <class F>
void for_items(int nt, int64_t n, F&& body) {
  if (nt <= 1 || n <= 1) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
  parallel_run(n, [&](int64_t i, int) { body(i); });
}

// ---------------------------------------------------------------------------
// rowdot
// ---------------------------------------------------------------------------
// P consecutive floats at p repeated over the 16 lanes (lane l = p[l % P]):
// one broadcast load each (vbroadcastss / sd / f32x4 / f64x4, a plain load).
template <int P>
inline __m512 bcast(const float* p) {
  if constexpr (P == 1) {
    return _mm512_set1_ps(*p);
  } else if constexpr (P == 2) {
    double d;  // two floats as one 64-bit value (memcpy: no aliasing question)
    std::memcpy(&d, p, sizeof d);
    return _mm512_castpd_ps(_mm512_set1_pd(d));
  } else if constexpr (P == 4) {
    return _mm512_broadcast_f32x4(_mm_loadu_ps(p));
  } else if constexpr (P == 8) {
    return _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(_mm256_loadu_ps(p))));
  } else {
    static_assert(P == 16, "P is a power of two up to 16");
    return _mm512_loadu_ps(p);
  }
}

// The sum of each group of P adjacent lanes (one column's partial sums), the
// group sums moved to lanes 0 .. 16/P - 1 (column order).
template <int P>
inline __m512 fold(__m512 v) {
  if constexpr (P == 1) {
    return v;
  } else {
    // Swaps of neighbouring lanes, pairs, 128-bit and 256-bit halves. (The
    // zero-masking forms with a full mask are the same instructions; GCC 12's
    // plain forms warn about their undefined pass-through operand.)
    constexpr __mmask16 all = 0xFFFF;
    v = _mm512_add_ps(v, _mm512_maskz_shuffle_ps(all, v, v, 0xB1));                           // lanes 2g, 2g+1
    if constexpr (P >= 4) v = _mm512_add_ps(v, _mm512_maskz_shuffle_ps(all, v, v, 0x4E));     // 4g .. 4g+3
    if constexpr (P >= 8) v = _mm512_add_ps(v, _mm512_maskz_shuffle_f32x4(all, v, v, 0xB1));  // 8g .. 8g+7
    if constexpr (P >= 16) v = _mm512_add_ps(v, _mm512_maskz_shuffle_f32x4(all, v, v, 0x4E));  // all 16
    constexpr __mmask16 group_firsts = P == 2 ? 0x5555 : P == 4 ? 0x1111 : P == 8 ? 0x0101 : 0x0001;
    return _mm512_maskz_compress_ps(group_firsts, v);
  }
}

// Kernel rows [row0, row0 + R): out[i][c] = sum_k L[i][k] op(B)[k][c] for c < n,
// L (row stride ldl) read in place, op(B) packed in rp (ceil(K/P) vectors).
// R accumulators (16 = half the zmm registers) for the whole depth.
template <int R, int P>
void rowdot_tile(int64_t K, const float* __restrict L, int64_t ldl, const float* __restrict rp, int64_t n,
                 const Out& o, int64_t row0) {
  __m512 acc[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  const int64_t groups = K / P;  // whole groups of P values of k
  const float* b = rp;
  // Rows addressed in fours, l + {0, 1, 2, 3} * ldl: one pointer per four rows
  // and three shared offsets, where a pointer per row (what the compiler makes
  // of L + r * ldl) runs out of integer registers at R = 16 and spills.
  const int64_t ld3 = 3 * ldl, ld4 = 4 * ldl;
  const float* l = L;
  alignas(64) float part[R][16];  // the sum of the finished depth blocks (see kSumBlock)
  bool have_part = false;
  for (int64_t q = 0; q < groups; ++q, b += 16, l += P) {
    if (q > 0 && q % (kSumBlock / P) == 0) {  // a depth block is complete
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        if (have_part) acc[r] = _mm512_add_ps(_mm512_load_ps(part[r]), acc[r]);
        _mm512_store_ps(part[r], acc[r]);
        acc[r] = _mm512_setzero_ps();
      }
      have_part = true;
    }
    const __m512 bv = _mm512_load_ps(b);
    if constexpr (R >= 4) {
      const float* l4 = l;
#pragma GCC unroll 4
      for (int g = 0; g < R / 4; ++g, l4 += ld4) {
        acc[4 * g + 0] = _mm512_fmadd_ps(bcast<P>(l4), bv, acc[4 * g + 0]);
        acc[4 * g + 1] = _mm512_fmadd_ps(bcast<P>(l4 + ldl), bv, acc[4 * g + 1]);
        acc[4 * g + 2] = _mm512_fmadd_ps(bcast<P>(l4 + 2 * ldl), bv, acc[4 * g + 2]);
        acc[4 * g + 3] = _mm512_fmadd_ps(bcast<P>(l4 + ld3), bv, acc[4 * g + 3]);
      }
    } else {
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(bcast<P>(l + r * ldl), bv, acc[r]);
    }
  }
  if (K % P != 0) {
    // The last, partial group: L past K must not be read (rp is zero there,
    // but the values could be NaN), so they come from a zeroed copy.
    const __m512 bv = _mm512_load_ps(b);
    alignas(64) float tail[16] = {};
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      std::memcpy(tail, L + r * ldl + groups * P, sizeof(float) * size_t(K % P));
      acc[r] = _mm512_fmadd_ps(bcast<P>(tail), bv, acc[r]);
    }
  }
  if (have_part)
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) acc[r] = _mm512_add_ps(_mm512_load_ps(part[r]), acc[r]);
  const __mmask16 mask = first_lanes(n);
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) o.store(row0 + r, 0, fold<P>(acc[r]), mask);
}

struct Rowdot {
  const float* L;  // (rows, K), row stride ldl, read in place
  int64_t ldl, K;
  const float* rp;  // op(B) packed, see the top of the file
  int64_t n;        // valid columns, <= 16
};

// Kernel rows [i0, i1): tiles of 16 rows, the rest in tiles of 8, 4, 2, 1.
template <int P>
void rowdot_rows(const Rowdot& p, const Out& o, int64_t i0, int64_t i1) {
  int64_t i = i0;
  for (; i + 16 <= i1; i += 16) rowdot_tile<16, P>(p.K, p.L + i * p.ldl, p.ldl, p.rp, p.n, o, i);
  if (i + 8 <= i1) rowdot_tile<8, P>(p.K, p.L + i * p.ldl, p.ldl, p.rp, p.n, o, i), i += 8;
  if (i + 4 <= i1) rowdot_tile<4, P>(p.K, p.L + i * p.ldl, p.ldl, p.rp, p.n, o, i), i += 4;
  if (i + 2 <= i1) rowdot_tile<2, P>(p.K, p.L + i * p.ldl, p.ldl, p.rp, p.n, o, i), i += 2;
  if (i + 1 <= i1) rowdot_tile<1, P>(p.K, p.L + i * p.ldl, p.ldl, p.rp, p.n, o, i);
}

// out (rows, n) = L (rows, K) @ S (K, n), S(k, c) = S_base[k * s_ks + c * s_cs].
void rowdot(int nt, int64_t rows, int64_t n, int64_t K, const float* L, int64_t ldl, const float* S, int64_t s_ks,
            int64_t s_cs, const Out& o) {
  int P = 16;  // 16 / n', n' = n rounded up to a power of two
  while (P > 1 && 16 / P < n) P /= 2;
  const int64_t groups = ceil_div(K, P);
  float* rp = tls_small.get(groups * 16);  // (groups, 16)
  std::fill(rp, rp + groups * 16, 0.0f);
  for (int64_t k = 0, q = 0, t = 0; k < K; ++k) {  // k = q P + t
    for (int64_t c = 0; c < n; ++c) rp[q * 16 + c * P + t] = S[k * s_ks + c * s_cs];
    if (++t == P) t = 0, ++q;
  }

  const Rowdot p{L, ldl, K, rp, n};
  // Items of 64 rows (4 tiles): enough of them for dynamic sharing, each long
  // enough (64 x 16 x K FMAs) to make the scheduling negligible.
  constexpr int64_t kRows = 64;
  for_items(nt, ceil_div(rows, kRows), [&](int64_t item) {
    const int64_t i0 = item * kRows, i1 = std::min(rows, i0 + kRows);
    switch (P) {
      case 1: rowdot_rows<1>(p, o, i0, i1); break;
      case 2: rowdot_rows<2>(p, o, i0, i1); break;
      case 4: rowdot_rows<4>(p, o, i0, i1); break;
      case 8: rowdot_rows<8>(p, o, i0, i1); break;
      default: rowdot_rows<16>(p, o, i0, i1); break;
    }
  });
}

// ---------------------------------------------------------------------------
// colvec
// ---------------------------------------------------------------------------
// B's rows are read a strip (16 NV floats) at a time, each at another
// address far from the last (the row stride: 1-4 KiB for these shapes), a
// pattern the hardware prefetchers do not follow: without help the kernel
// waits on every row (measured 36-59% of OpenBLAS's speed at m = 16, K =
// 2048). So it asks for the row this many rows ahead, into L2: with a 4 KiB
// stride every row falls into the same L1 set (12 ways), so an L1 prefetch
// this far ahead would evict itself before use. 8-32 rows, L1 or L2, were
// all within the noise of one another (a shared machine); this is the most
// even of them across shapes.
constexpr int64_t kPrefetchRows = 32;
// Kernel rows [0, m) (m <= R), columns [j0, j0 + 16 NV) where mask is set:
// out[i][j] = sum_k lp[k*R + i] * Bm[k*ldr + j], Bm read in place.
template <int R, int NV>
void colvec_tile(int64_t K, const float* __restrict lp, const float* __restrict Bm, int64_t ldr,
                 const __mmask16* mask, int64_t m, const Out& o, int64_t i0, int64_t j0) {
  __m512 acc[R][NV];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  const float* b = Bm + j0;
  const char* ahead = reinterpret_cast<const char*>(b + kPrefetchRows * ldr);
  alignas(64) float part[R][NV][16];  // the sum of the finished depth blocks (see kSumBlock)
  bool have_part = false;
  for (int64_t k = 0; k < K; ++k, lp += R, b += ldr, ahead += ldr * sizeof(float)) {
    if (k > 0 && k % kSumBlock == 0) {  // a depth block is complete
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) {
          if (have_part) acc[r][v] = _mm512_add_ps(_mm512_load_ps(part[r][v]), acc[r][v]);
          _mm512_store_ps(part[r][v], acc[r][v]);
          acc[r][v] = _mm512_setzero_ps();
        }
      have_part = true;
    }
    if (k + kPrefetchRows < K)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) _mm_prefetch(ahead + 64 * v, _MM_HINT_T1);
    __m512 bv[NV];  // row k of the strip (masked: a ragged last strip reads nothing past N)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_maskz_loadu_ps(mask[v], b + 16 * v);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(lp[r]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(a, bv[v], acc[r][v]);
    }
  }
  if (have_part)
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_add_ps(_mm512_load_ps(part[r][v]), acc[r][v]);
  // Whole unrolled loops, so that acc is only ever indexed by constants (and stays in registers).
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    if (r >= m) break;
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v)
      if (mask[v]) o.store(i0 + r, j0 + 16 * v, acc[r][v], mask[v]);
  }
}

// out (m, width) = S (m, K) @ Bm (K, width), S(i, k) = S_base[i * s_is + k * s_ks],
// m <= 16, Bm row-major (row stride ldr) read in place.
template <int R, int NV>
void colvec_strips(int nt, int64_t m, int64_t width, int64_t K, const float* lp, const float* Bm, int64_t ldr,
                   const Out& o) {
  constexpr int64_t kStrip = 16 * NV;
  for_items(nt, ceil_div(width, kStrip), [&](int64_t s) {
    const int64_t j0 = s * kStrip;
    __mmask16 mask[NV];
    for (int v = 0; v < NV; ++v) mask[v] = first_lanes(std::max<int64_t>(0, width - j0 - 16 * v));
    colvec_tile<R, NV>(K, lp, Bm, ldr, mask, m, o, 0, j0);
  });
}

void colvec(int nt, int64_t m, int64_t width, int64_t K, const float* S, int64_t s_is, int64_t s_ks,
            const float* Bm, int64_t ldr, const Out& o) {
  // R rows of accumulators (m rounded up) by NV vectors: about 24 zmm registers
  // of accumulators, fewer rows taking wider strips.
  const int64_t R = m <= 1 ? 1 : m <= 2 ? 2 : m <= 4 ? 4 : m <= 8 ? 8 : m <= 12 ? 12 : 16;
  float* lp = tls_small.get(K * R);  // (K, R): row k = op(A)[0:m][k], zeros past m
  for (int64_t k = 0; k < K; ++k) {
    float* d = lp + k * R;
    for (int64_t i = 0; i < m; ++i) d[i] = S[i * s_is + k * s_ks];
    for (int64_t i = m; i < R; ++i) d[i] = 0.0f;
  }
  switch (R) {
    case 1: colvec_strips<1, 8>(nt, m, width, K, lp, Bm, ldr, o); break;
    case 2: colvec_strips<2, 8>(nt, m, width, K, lp, Bm, ldr, o); break;
    case 4: colvec_strips<4, 6>(nt, m, width, K, lp, Bm, ldr, o); break;
    case 8: colvec_strips<8, 3>(nt, m, width, K, lp, Bm, ldr, o); break;
    case 12: colvec_strips<12, 2>(nt, m, width, K, lp, Bm, ldr, o); break;
    default: colvec_strips<16, 1>(nt, m, width, K, lp, Bm, ldr, o); break;
  }
}

}  // namespace

bool narrow_gemm_applies(int64_t M, int64_t N, int64_t K) { return N <= kNarrowMax || M <= kNarrowMax; }

void gemm_narrow(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  const int nt = team_size(M, N, K);
  // op(A)(i, k) = A[i * a_is + k * a_ks],  op(B)(k, j) = B[k * b_ks + j * b_js]
  const int64_t a_is = trans_a ? 1 : lda, a_ks = trans_a ? lda : 1;
  const int64_t b_ks = trans_b ? 1 : ldb, b_js = trans_b ? ldb : 1;
  if (N <= kNarrowMax) {
    if (!trans_a) {  // rows of A run along k: rowdot, C as it is
      rowdot(nt, M, N, K, A, lda, B, b_ks, b_js, Out{C, ldc, false, alpha, beta});
    } else {  // A (K, M) row-major: colvec on C^T (N, M) = op(B)^T (N, K) @ A
      colvec(nt, N, M, K, B, b_js, b_ks, A, lda, Out{C, ldc, true, alpha, beta});
    }
  } else if (!trans_b) {  // M small, B (K, N) row-major: colvec, C as it is
    colvec(nt, M, N, K, A, a_is, a_ks, B, ldb, Out{C, ldc, false, alpha, beta});
  } else {  // M small, B (N, K): rowdot on C^T (N, M) = B (N, K) @ op(A)^T (K, M)
    rowdot(nt, N, M, K, B, ldb, A, a_ks, a_is, Out{C, ldc, true, alpha, beta});
  }
}

#endif  // __AVX512F__

}  // namespace loragrad::kernels

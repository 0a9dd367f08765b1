// loragrad::kernels::gemm (float and double), gemm_decoded_b and the private
// gemm_packed_b against a naive double-precision reference: all transposition
// combinations, ragged shapes, shapes spanning several cache blocks,
// alpha/beta, strided sub-matrices.
#define BOOST_TEST_MODULE gemm
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "loragrad/error.hpp"
#include "loragrad/kernels/gemm.hpp"
#include "loragrad/thread_pool.hpp"
// White-box: the packing contract and the narrow path are private to the kernels.
#include "../core/src/kernels/gemm_narrow.hpp"
#include "../core/src/kernels/gemm_pack.hpp"

using loragrad::kernels::BPanelSource;
using loragrad::kernels::gemm;
using loragrad::kernels::gemm_decoded_b;
using loragrad::kernels::gemm_packed_b;
using loragrad::kernels::kGemmKC;
using loragrad::kernels::kGemmNR;
using loragrad::kernels::kNarrowMax;
using loragrad::kernels::narrow_gemm_applies;
using loragrad::kernels::StridedBSource;

namespace {

struct Shape {
  int64_t M, N, K;
};

// Shapes below, at and above one register tile, one cache block, and ones that
// span several MC / KC / NC blocks with ragged remainders everywhere.
const std::vector<Shape> kShapes = {
    {1, 1, 1},     {1, 7, 3},      {5, 1, 9},      {2, 3, 1},       {7, 13, 5},
    {12, 32, 16},  {13, 33, 17},   {17, 33, 65},   {31, 64, 257},   {64, 64, 64},
    {129, 257, 31}, {100, 70, 300}, {300, 700, 600}, {200, 4200, 40},
};

// Operands stored with padding: op(A) (M, K) lives in a buffer with row stride
// lda >= its stored width, and so on, so strided sub-matrices are exercised.
template <class T>
struct Case {
  bool ta, tb;
  int64_t M, N, K, lda, ldb, ldc;
  std::vector<T> A, B, C;
  T a(int64_t i, int64_t p) const { return ta ? A[p * lda + i] : A[i * lda + p]; }
  T b(int64_t p, int64_t j) const { return tb ? B[j * ldb + p] : B[p * ldb + j]; }
};

template <class T>
Case<T> make_case(bool ta, bool tb, Shape s, int64_t pad, std::mt19937& rng) {
  Case<T> c{ta, tb, s.M, s.N, s.K, 0, 0, 0, {}, {}, {}};
  const int64_t a_rows = ta ? s.K : s.M, a_cols = ta ? s.M : s.K;
  const int64_t b_rows = tb ? s.N : s.K, b_cols = tb ? s.K : s.N;
  c.lda = a_cols + pad;
  c.ldb = b_cols + 2 * pad;
  c.ldc = s.N + 3 * pad;
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  c.A.resize(a_rows * c.lda);
  c.B.resize(b_rows * c.ldb);
  c.C.resize(s.M * c.ldc);
  for (T& x : c.A) x = T(dist(rng));
  for (T& x : c.B) x = T(dist(rng));
  for (T& x : c.C) x = T(dist(rng));
  return c;
}

// Naive reference in double: alpha * op(A) @ op(B) + beta * C_in (beta == 0:
// C_in ignored).
template <class T>
std::vector<double> reference(const Case<T>& c, double alpha, double beta) {
  std::vector<double> out(c.M * c.ldc, 0.0);
  for (int64_t i = 0; i < c.M; ++i)
    for (int64_t j = 0; j < c.N; ++j) {
      double s = 0.0;
      for (int64_t p = 0; p < c.K; ++p) s += double(c.a(i, p)) * double(c.b(p, j));
      out[i * c.ldc + j] = alpha * s + (beta == 0.0 ? 0.0 : beta * double(c.C[i * c.ldc + j]));
    }
  return out;
}

// Max error allowed: rounding grows with the depth of the sums; the reference
// is exact enough in double that the bound is all the kernel's own rounding.
template <class T>
double tolerance(int64_t K) {
  const double eps = std::numeric_limits<T>::epsilon();
  return 4.0 * eps * (double(K) + 8.0);
}

std::string describe(bool ta, bool tb, Shape s, double alpha, double beta, int64_t pad) {
  std::ostringstream os;
  os << "ta=" << ta << " tb=" << tb << " M=" << s.M << " N=" << s.N << " K=" << s.K
     << " alpha=" << alpha << " beta=" << beta << " pad=" << pad;
  return os.str();
}

// Run gemm on one case and compare the whole C buffer: the padding columns of
// C (beyond N) must be left untouched. decoded: through gemm_decoded_b, B read
// by a callback that checks every piece it is asked for is inside B and
// cache-sized (at most one register tile by one depth block).
template <class T>
void check_one(bool ta, bool tb, Shape s, double alpha, double beta, int64_t pad,
               std::mt19937& rng, bool decoded = false) {
  Case<T> c = make_case<T>(ta, tb, s, pad, rng);
  if (beta == 0.0) {
    // beta == 0 must overwrite without reading: NaN in C would otherwise leak.
    for (int64_t i = 0; i < c.M; ++i)
      for (int64_t j = 0; j < c.N; ++j) c.C[i * c.ldc + j] = std::numeric_limits<T>::quiet_NaN();
  }
  const std::vector<double> want = reference(c, alpha, beta);
  std::vector<T> C = c.C;
  if constexpr (std::is_same_v<T, float>) {
    if (decoded) {
      const int64_t b_rows = tb ? s.N : s.K, b_cols = tb ? s.K : s.N;
      bool contract_ok = true;  // only ever written false: benign across threads
      const loragrad::kernels::DecodeRows decode = [&](int64_t row0, int64_t nrows, int64_t col0,
                                                       int64_t ncols, float* out, int64_t ld) {
        const int64_t n_max = tb ? nrows : ncols, k_max = tb ? ncols : nrows;
        if (row0 < 0 || nrows < 1 || row0 + nrows > b_rows || col0 < 0 || ncols < 1 ||
            col0 + ncols > b_cols || ld < ncols || n_max > kGemmNR || k_max > kGemmKC)
          contract_ok = false;
        for (int64_t r = 0; r < nrows; ++r)
          for (int64_t j = 0; j < ncols; ++j) out[r * ld + j] = c.B[(row0 + r) * c.ldb + col0 + j];
      };
      gemm_decoded_b(ta, tb, s.M, s.N, s.K, T(alpha), c.A.data(), c.lda, decode, T(beta), C.data(),
                     c.ldc);
      BOOST_TEST_INFO(describe(ta, tb, s, alpha, beta, pad) << " decoded");
      BOOST_TEST(contract_ok);
    }
  }
  if (!decoded)
    gemm(ta, tb, s.M, s.N, s.K, T(alpha), c.A.data(), c.lda, c.B.data(), c.ldb, T(beta), C.data(),
         c.ldc);

  const double tol = tolerance<T>(s.K) * std::max(1.0, std::fabs(alpha));
  double worst = 0.0;
  int64_t bad = 0;
  for (int64_t i = 0; i < c.M; ++i)
    for (int64_t j = 0; j < c.ldc; ++j) {
      const int64_t idx = i * c.ldc + j;
      if (j >= c.N) {
        if (!(C[idx] == c.C[idx])) ++bad;  // outside the matrix: unchanged
        continue;
      }
      const double err = std::fabs(double(C[idx]) - want[idx]);
      if (!(err <= tol)) ++bad;  // also catches NaN
      if (!(err <= worst)) worst = err;
    }
  BOOST_TEST_INFO(describe(ta, tb, s, alpha, beta, pad) << (decoded ? " decoded" : "")
                                                       << " worst=" << worst << " tol=" << tol);
  BOOST_TEST(bad == 0);
}

// Every shape x transposition combination; small shapes also try every
// (alpha, beta) with and without padding, large ones (where the naive
// reference dominates the run time) one (alpha, beta, pad) per combination.
template <class T>
void sweep(const std::vector<std::pair<double, double>>& alpha_beta) {
  std::mt19937 rng(1234);
  for (const Shape& s : kShapes)
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        if (s.M * s.N * s.K <= 2000000) {
          for (auto [alpha, beta] : alpha_beta)
            for (int64_t pad : {0, 5}) check_one<T>(ta, tb, s, alpha, beta, pad, rng);
        } else {
          const int combo = 2 * ta + tb;
          const auto [alpha, beta] = alpha_beta[combo % alpha_beta.size()];
          check_one<T>(ta, tb, s, alpha, beta, combo % 2 ? 5 : 0, rng);
        }
      }
}

}  // namespace

BOOST_AUTO_TEST_CASE(float_all_transposes_shapes_alpha_beta) {
  sweep<float>({{1.0, 0.0}, {-0.5, 0.0}, {1.0, 1.0}, {0.75, -2.0}});
}

BOOST_AUTO_TEST_CASE(double_all_transposes_shapes_alpha_beta) {
  sweep<double>({{1.0, 0.0}, {-0.5, 0.0}, {1.0, 1.0}, {0.75, -2.0}});
}

// The same products computed serially (forced by calling from inside a
// parallel region, as attention does) and with the default thread count must
// agree: each thread accumulates its own tiles in the same order, so the two
// are bitwise equal.
BOOST_AUTO_TEST_CASE(float_serial_inside_parallel_region_matches) {
  std::mt19937 rng(7);
  for (Shape s : std::vector<Shape>{{300, 700, 600}, {33, 900, 70}, {4, 2000, 300}}) {
    Case<float> c = make_case<float>(false, true, s, 3, rng);
    std::vector<float> outside = c.C, inside = c.C;
    gemm(false, true, s.M, s.N, s.K, 1.5f, c.A.data(), c.lda, c.B.data(), c.ldb, 0.5f,
         outside.data(), c.ldc);
    bool was_in_parallel = false;
    loragrad::parallel_run(1, [&](int64_t, int) {  // one task, as a parallel region sees it
      was_in_parallel = loragrad::in_parallel();
      gemm(false, true, s.M, s.N, s.K, 1.5f, c.A.data(), c.lda, c.B.data(), c.ldb, 0.5f,
           inside.data(), c.ldc);
    });
    BOOST_TEST(was_in_parallel);
    BOOST_TEST_INFO("M=" << s.M << " N=" << s.N << " K=" << s.K);
    BOOST_TEST((outside == inside));
  }
}

// ---------------------------------------------------------------------------
// The narrow path (gemm_narrow.hpp): N <= 16 or M <= 16, chosen by gemm()
// ---------------------------------------------------------------------------
// Every narrow width 1..16 on either side (each packing period P = 16 / n'
// and its rounding up of n), ragged row counts (tiles of 16, 8, 4, 2, 1) and
// depths (K not a multiple of P), all transposes, alpha / beta, padding.
BOOST_AUTO_TEST_CASE(narrow_path_all_transposes_widths_alpha_beta) {
#if defined(__AVX512F__)
  BOOST_TEST(narrow_gemm_applies(2048, 16, 256));  // x A^T, r = 16
  BOOST_TEST(narrow_gemm_applies(16, 256, 2048));  // dA = dh^T x
  BOOST_TEST(!narrow_gemm_applies(2048, 32, 256));
#endif
  const std::vector<std::pair<double, double>> alpha_beta = {{1.0, 0.0}, {-0.5, 0.0}, {1.0, 1.0}, {0.75, -2.0}};
  std::mt19937 rng(4321);
  int combo = 0;
  for (int64_t narrow = 1; narrow <= kNarrowMax; ++narrow)
    for (int64_t wide : {1, 7, 16, 37, 130})
      for (int64_t K : {1, 5, 16, 67})
        for (bool ta : {false, true})
          for (bool tb : {false, true}) {
            const auto [alpha, beta] = alpha_beta[combo % alpha_beta.size()];
            const int64_t pad = combo % 3 == 0 ? 3 : 0;
            ++combo;
            check_one<float>(ta, tb, {wide, narrow, K}, alpha, beta, pad, rng);  // N narrow
            check_one<float>(ta, tb, {narrow, wide, K}, alpha, beta, pad, rng);  // M narrow
          }
}

// The LoRA shapes themselves (rows = 2048 tokens, r = 8 and 16), all
// transposes: deep sums, many row tiles, several threads.
BOOST_AUTO_TEST_CASE(narrow_path_rank_r_shapes) {
  std::mt19937 rng(77);
  for (int64_t r : {8, 16})
    for (Shape s : std::vector<Shape>{{2048, r, 256}, {256, r, 2048}, {r, 256, 2048}, {2048, r, 1024}})
      for (bool ta : {false, true})
        for (bool tb : {false, true}) check_one<float>(ta, tb, s, 0.5, ta ? 1.0 : 0.0, 0, rng);
}

BOOST_AUTO_TEST_CASE(degenerate_sizes) {
  // K == 0: C = beta * C; beta == 0 overwrites NaN with zeros.
  std::vector<float> C(6, std::numeric_limits<float>::quiet_NaN());
  gemm(false, false, 2, 3, 0, 1.0f, nullptr, 1, nullptr, 3, 0.0f, C.data(), 3);
  for (float x : C) BOOST_TEST(x == 0.0f);
  std::vector<double> Cd(6, 2.0);
  gemm(true, true, 2, 3, 0, 1.0, nullptr, 2, nullptr, 1, 0.5, Cd.data(), 3);
  for (double x : Cd) BOOST_TEST(x == 1.0);
  // alpha == 0 does not read A or B.
  std::vector<float> A(4, std::numeric_limits<float>::quiet_NaN()), B(4, 1.0f), C2(4, 3.0f);
  gemm(false, false, 2, 2, 2, 0.0f, A.data(), 2, B.data(), 2, 2.0f, C2.data(), 2);
  for (float x : C2) BOOST_TEST(x == 6.0f);
  // M == 0 or N == 0: nothing to do, nothing touched.
  gemm(false, false, 0, 3, 4, 1.0f, nullptr, 4, nullptr, 3, 0.0f, nullptr, 3);
  gemm(false, false, 3, 0, 4, 1.0f, nullptr, 4, nullptr, 0, 0.0f, nullptr, 0);
}

BOOST_AUTO_TEST_CASE(bad_arguments_throw) {
  std::vector<float> A(100), B(100), C(100);
  BOOST_CHECK_THROW(gemm(false, false, 4, 4, 4, 1.0f, A.data(), 3, B.data(), 4, 0.0f, C.data(), 4),
                    loragrad::ShapeError);  // lda < K
  BOOST_CHECK_THROW(gemm(false, true, 4, 4, 5, 1.0f, A.data(), 5, B.data(), 4, 0.0f, C.data(), 4),
                    loragrad::ShapeError);  // trans_b: ldb < K
  BOOST_CHECK_THROW(gemm(false, false, 4, 5, 4, 1.0f, A.data(), 4, B.data(), 5, 0.0f, C.data(), 4),
                    loragrad::ShapeError);  // ldc < N
  BOOST_CHECK_THROW(gemm(false, false, -1, 4, 4, 1.0f, A.data(), 4, B.data(), 4, 0.0f, C.data(), 4),
                    loragrad::ShapeError);
}

// ---------------------------------------------------------------------------
// The packed-source API
// ---------------------------------------------------------------------------
namespace {

// A source that computes op(B)(p, j) from a formula instead of reading memory
// (the way an NF4 source dequantises), and records every call so the test can
// check the contract the driver promises (k0 multiple of KC, n0 multiple of
// NR, padding) and that it writes exactly the documented layout.
class FormulaSource final : public BPanelSource {
 public:
  FormulaSource(int64_t K, int64_t N) : K_(K), N_(N) {}
  static float value(int64_t p, int64_t j) {
    return float(((p * 7 + j * 13) % 17) - 8) / 8.0f;  // exact in float
  }
  int64_t rows() const override { return K_; }
  int64_t cols() const override { return N_; }
  void pack(int64_t k0, int64_t kc, int64_t n0, int64_t nc, float* dst) const override {
    if (k0 % kGemmKC != 0 || kc < 1 || kc > kGemmKC || k0 + kc > K_) contract_ok_ = false;
    if (n0 % kGemmNR != 0 || nc < 1 || n0 + nc > N_) contract_ok_ = false;
    if (reinterpret_cast<uintptr_t>(dst) % 64 != 0) contract_ok_ = false;
    const int64_t slivers = (nc + kGemmNR - 1) / kGemmNR;
    for (int64_t s = 0; s < slivers; ++s)
      for (int64_t k = 0; k < kc; ++k)
        for (int64_t c = 0; c < kGemmNR; ++c) {
          const int64_t j = s * kGemmNR + c;
          dst[s * kc * kGemmNR + k * kGemmNR + c] = j < nc ? value(k0 + k, n0 + j) : 0.0f;
        }
    calls_++;
  }
  bool contract_ok() const { return contract_ok_; }
  int64_t calls() const { return calls_; }

 private:
  int64_t K_, N_;
  mutable bool contract_ok_ = true;  // only ever written false: benign across threads
  mutable std::atomic<int64_t> calls_{0};  // pack() runs on several threads
};

}  // namespace

BOOST_AUTO_TEST_CASE(packed_b_custom_source) {
  std::mt19937 rng(99);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (Shape s : std::vector<Shape>{{1, 1, 1}, {7, 13, 5}, {37, 70, 600}, {300, 700, 600}}) {
    for (bool ta : {false, true}) {
      const int64_t lda = (ta ? s.M : s.K) + 2, ldc = s.N + 1;
      std::vector<float> A((ta ? s.K : s.M) * lda);
      for (float& x : A) x = dist(rng);
      std::vector<float> C(s.M * ldc, std::numeric_limits<float>::quiet_NaN());
      FormulaSource src(s.K, s.N);
      gemm_packed_b(ta, s.M, s.N, s.K, 2.0f, A.data(), lda, src, 0.0f, C.data(), ldc);
      double worst = 0.0;
      for (int64_t i = 0; i < s.M; ++i)
        for (int64_t j = 0; j < s.N; ++j) {
          double want = 0.0;
          for (int64_t p = 0; p < s.K; ++p)
            want += double(ta ? A[p * lda + i] : A[i * lda + p]) * FormulaSource::value(p, j);
          const double err = std::fabs(2.0 * want - double(C[i * ldc + j]));
          if (!(err <= worst)) worst = err;
        }
      BOOST_TEST_INFO("ta=" << ta << " M=" << s.M << " N=" << s.N << " K=" << s.K);
      BOOST_TEST(worst <= 2.0 * tolerance<float>(s.K));
      BOOST_TEST(src.contract_ok());
      BOOST_TEST(src.calls() >= 1);
    }
  }
}

BOOST_AUTO_TEST_CASE(strided_source_writes_documented_layout) {
  // Pack a block by hand through StridedBSource and check every float of the
  // panel against the contract in gemm_pack.hpp, for both storage orders.
  const int64_t K = 40, N = 2 * kGemmNR + 5, ld = N + 3;
  for (bool tb : {false, true}) {
    std::vector<float> B((tb ? N : K) * ld + ld);
    for (size_t i = 0; i < B.size(); ++i) B[i] = float(i % 1001) * 0.5f;
    auto opb = [&](int64_t p, int64_t j) { return tb ? B[j * ld + p] : B[p * ld + j]; };
    StridedBSource src(B.data(), tb ? ld : ld, tb, K, N);
    const int64_t k0 = 3, kc = 29, n0 = kGemmNR, nc = N - kGemmNR;  // 1 full + 1 ragged sliver
    std::vector<float> panel(loragrad::kernels::packed_b_floats(kc, nc), -1.0f);
    src.pack(k0, kc, n0, nc, panel.data());
    int64_t bad = 0;
    for (int64_t s = 0; s * kGemmNR < nc; ++s)
      for (int64_t k = 0; k < kc; ++k)
        for (int64_t c = 0; c < kGemmNR; ++c) {
          const int64_t j = s * kGemmNR + c;
          const float want = j < nc ? opb(k0 + k, n0 + j) : 0.0f;
          if (panel[s * kc * kGemmNR + k * kGemmNR + c] != want) ++bad;
        }
    BOOST_TEST_INFO("trans_b=" << tb);
    BOOST_TEST(bad == 0);
  }
}

// ---------------------------------------------------------------------------
// gemm_decoded_b: B read through a decode callback (quantised weights)
// ---------------------------------------------------------------------------
BOOST_AUTO_TEST_CASE(decoded_b_all_transposes_shapes_alpha_beta) {
  std::mt19937 rng(4321);
  // Small and ragged, K > KC (several depth blocks), N > NC (several panels),
  // few rows over many columns (threads split the columns).
  for (Shape s : std::vector<Shape>{{1, 1, 1}, {7, 13, 5}, {13, 33, 17}, {31, 64, 257}, {37, 70, 600},
                                    {300, 700, 600}, {8, 4200, 40}, {4, 2000, 300}})
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        check_one<float>(ta, tb, s, 1.0, 0.0, 3, rng, /*decoded=*/true);
        check_one<float>(ta, tb, s, 0.75, -2.0, 0, rng, /*decoded=*/true);
      }
}

BOOST_AUTO_TEST_CASE(decoded_b_bad_arguments_throw) {
  std::vector<float> A(100), C(100);
  const loragrad::kernels::DecodeRows zeros = [](int64_t, int64_t nrows, int64_t, int64_t ncols, float* out,
                                                 int64_t ld) {
    for (int64_t r = 0; r < nrows; ++r) std::fill(out + r * ld, out + r * ld + ncols, 0.0f);
  };
  BOOST_CHECK_THROW(gemm_decoded_b(false, true, 4, 4, 4, 1.0f, A.data(), 3, zeros, 0.0f, C.data(), 4),
                    loragrad::ShapeError);  // lda < K
  BOOST_CHECK_THROW(gemm_decoded_b(false, true, 4, 5, 4, 1.0f, A.data(), 4, zeros, 0.0f, C.data(), 4),
                    loragrad::ShapeError);  // ldc < N
  BOOST_CHECK_THROW(gemm_decoded_b(false, true, 4, 4, 4, 1.0f, A.data(), 4, {}, 0.0f, C.data(), 4),
                    loragrad::ValueError);  // no callback
}

BOOST_AUTO_TEST_CASE(packed_b_shape_mismatch_throws) {
  FormulaSource src(5, 6);
  std::vector<float> A(100), C(100);
  BOOST_CHECK_THROW(gemm_packed_b(false, 2, 6, 4, 1.0f, A.data(), 4, src, 0.0f, C.data(), 6),
                    loragrad::ShapeError);
}

// bfloat16: the conversions (loragrad/kernels/bf16.hpp) against an
// independent rounding reference, and the bf16 GEMM (gemm_bf16.hpp), every
// kernel this CPU runs forced in turn, against a float64 product of the same
// bf16-rounded inputs: all transpositions, ragged and odd sizes, several
// cache blocks, alpha / beta, strided operands whose padding holds NaN (a
// read outside the matrix shows), thread-count determinism, the float-A form
// against rounding first, and the kernels against each other.
#define BOOST_TEST_MODULE gemm_bf16
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <limits>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "loragrad/error.hpp"
#include "loragrad/kernels/bf16.hpp"
#include "loragrad/kernels/gemm_bf16.hpp"
#include "loragrad/thread_pool.hpp"

using loragrad::bf16;
using loragrad::ValueError;
namespace k = loragrad::kernels;

namespace {

uint32_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
float float_of(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

// Round to nearest even, worked out from values rather than bit tricks: the
// two bf16 neighbours of x (truncation, and one step away from zero) compared
// by distance in double; the one with an even last bit wins a tie. Beyond the
// largest bf16 the step away is inf, weighed as 2^128 (IEEE's rule).
uint16_t reference_round(float x) {
  const uint32_t u = bits_of(x);
  if (std::isnan(x)) return static_cast<uint16_t>((u >> 16) | 0x40);
  const uint16_t lo = static_cast<uint16_t>(u >> 16);
  if ((u & 0xffff) == 0 || std::isinf(x)) return lo;
  const uint16_t hi = static_cast<uint16_t>(lo + 1);
  const double v = std::fabs(double(x));
  const double vlo = std::fabs(double(float_of(uint32_t(lo) << 16)));
  const double vhi = (hi & 0x7fff) == 0x7f80 ? std::ldexp(1.0, 128) : std::fabs(double(float_of(uint32_t(hi) << 16)));
  if (v - vlo < vhi - v) return lo;
  if (v - vlo > vhi - v) return hi;
  return (lo & 1) ? hi : lo;
}

}  // namespace

// ---------------------------------------------------------------------------
// Conversions
// ---------------------------------------------------------------------------
BOOST_AUTO_TEST_CASE(rounding_special_cases) {
  struct Case {
    uint32_t in;
    uint16_t out;
    const char* what;
  };
  const Case cases[] = {
      {0x3f800000, 0x3f80, "1"},
      {0x3f808000, 0x3f80, "1 + 2^-8: a tie, to the even 1"},
      {0x3f818000, 0x3f82, "1 + 3 * 2^-8: a tie, to the even 1 + 2^-6"},
      {0x3f808001, 0x3f81, "just above a tie: up"},
      {0x3f807fff, 0x3f80, "just below a tie: down"},
      {0xbf808000, 0xbf80, "-1 - 2^-8: ties to even by magnitude"},
      {0xbf818000, 0xbf82, "negative tie, odd: away from zero"},
      {0x00000000, 0x0000, "+0"},
      {0x80000000, 0x8000, "-0"},
      {0x7f800000, 0x7f80, "inf"},
      {0xff800000, 0xff80, "-inf"},
      {0x7f7fffff, 0x7f80, "FLT_MAX rounds to inf"},
      {0x7f7f7fff, 0x7f7f, "below the midpoint to inf: the largest bf16"},
      {0x7f7f8000, 0x7f80, "the midpoint to inf, odd: inf"},
      {0xff7fffff, 0xff80, "-FLT_MAX: -inf"},
      {0x7fc00000, 0x7fc0, "quiet NaN"},
      {0xffc00000, 0xffc0, "negative quiet NaN keeps its sign"},
      {0x7f800001, 0x7fc0, "NaN with its payload in the dropped half: still NaN, made quiet"},
      {0xff800001, 0xffc0, "same, negative"},
      {0x7fa00000, 0x7fe0, "signalling NaN, payload kept, made quiet"},
      {0x00000001, 0x0000, "smallest subnormal float: to 0"},
      {0x00008000, 0x0000, "subnormal tie, even: 0"},
      {0x00018000, 0x0002, "subnormal tie, odd: up"},
      {0x00010000, 0x0001, "smallest bf16 subnormal, exact"},
      {0x0000ffff, 0x0001, "subnormal, above the tie: up"},
      {0x007fffff, 0x0080, "largest subnormal float rounds to the smallest normal"},
      {0x807fffff, 0x8080, "same, negative"},
  };
  for (const Case& c : cases) {
    const float x = float_of(c.in);
    BOOST_TEST_INFO(c.what);
    BOOST_TEST(loragrad::to_bf16(x).bits == c.out);
    BOOST_TEST_INFO(c.what << " (reference)");
    BOOST_TEST(reference_round(x) == c.out);
    bf16 v;
    k::to_bf16(&x, &v, 1);
    BOOST_TEST_INFO(c.what << " (row)");
    BOOST_TEST(v.bits == c.out);
  }
}

BOOST_AUTO_TEST_CASE(every_bf16_widens_exactly_and_rounds_back_to_itself) {
  std::vector<bf16> all(65536), back(65536);
  std::vector<float> wide(65536);
  for (uint32_t i = 0; i < 65536; ++i) all[i].bits = static_cast<uint16_t>(i);
  k::to_float(all.data(), wide.data(), 65536);
  k::to_bf16(wide.data(), back.data(), 65536);
  int64_t bad = 0;
  for (uint32_t i = 0; i < 65536; ++i) {
    if (bits_of(wide[i]) != i << 16) ++bad;                            // widening is a shift
    if (bits_of(loragrad::to_float(all[i])) != i << 16) ++bad;         // scalar too
    const bool nan = (i & 0x7fff) > 0x7f80;
    const uint16_t want = nan ? static_cast<uint16_t>(i | 0x40) : static_cast<uint16_t>(i);  // NaN: made quiet
    if (back[i].bits != want || loragrad::to_bf16(wide[i]).bits != want) ++bad;
  }
  BOOST_TEST(bad == 0);
}

// Random bit patterns (every class of float: normal, subnormal, inf, NaN, the
// ties forced by zeroing the low 15 bits of some) through the scalar and the
// row conversion, against the reference; row lengths that exercise the
// vector tails.
BOOST_AUTO_TEST_CASE(random_floats_round_like_the_reference) {
  std::mt19937 rng(2024);
  const int64_t n = 1 << 20;
  std::vector<float> x(n);
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u = rng();
    if (i % 4 == 1) u = (u & 0xffff0000u) | 0x8000u;        // exact ties
    if (i % 8 == 2) u &= 0x807fffffu;                       // subnormals
    if (i % 16 == 3) u |= 0x7f800000u;                      // inf / NaN
    x[i] = float_of(u);
  }
  std::vector<bf16> row(n);
  int64_t bad = 0;
  for (int64_t start = 0, piece = 0; start < n; ++piece) {  // pieces of 1..97 values
    const int64_t m = std::min<int64_t>(1 + (piece * 7 + 5) % 97, n - start);
    k::to_bf16(x.data() + start, row.data() + start, m);
    start += m;
  }
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t want = reference_round(x[i]);
    if (row[i].bits != want || loragrad::to_bf16(x[i]).bits != want) ++bad;
  }
  BOOST_TEST(bad == 0);
  // Row lengths 0..40: nothing past n is written.
  for (int64_t len = 0; len <= 40; ++len) {
    std::vector<bf16> out(48, bf16{0x1234});
    std::vector<float> wide(48, -7.0f);
    k::to_bf16(x.data(), out.data(), len);
    k::to_float(out.data(), wide.data(), len);
    for (int64_t i = 0; i < 48; ++i) {
      if (i < len) {
        BOOST_TEST(out[i].bits == reference_round(x[i]));
        BOOST_TEST(bits_of(wide[i]) == uint32_t(out[i].bits) << 16);
      } else {
        BOOST_TEST(out[i].bits == 0x1234);
        BOOST_TEST(wide[i] == -7.0f);
      }
    }
  }
}

// ---------------------------------------------------------------------------
// GEMM
// ---------------------------------------------------------------------------
namespace {

struct Shape {
  int64_t M, N, K;
};

// Below, at and above one register tile (12 x 32) and one AMX block (32 x
// 32, 32 deep), odd K everywhere, one MC block (192 rows), and shapes that
// span several depth blocks (KC = 1024) or column panels (NC = 4096).
const std::vector<Shape> kShapes = {
    {1, 1, 1},      {1, 7, 3},      {5, 1, 9},       {2, 3, 1},      {7, 13, 5},      {12, 32, 16},
    {13, 33, 17},   {16, 16, 32},   {17, 31, 33},    {32, 32, 31},   {33, 65, 63},    {64, 64, 64},
    {129, 257, 31}, {100, 70, 301}, {193, 97, 255},  {250, 300, 400}, {40, 50, 1025}, {7, 9, 2051},
    {20, 4130, 9},
};

constexpr uint16_t kNaN16 = 0x7fc0;

// A case: op(A) (M, K), op(B) (K, N) stored with padding that holds NaN
// (strided sub-matrices; a read outside the matrix poisons the result), C
// with padding columns that must stay untouched.
struct Case {
  bool ta, tb;
  Shape s;
  int64_t lda, ldb, ldc;
  std::vector<float> A32;  // A as floats (not rounded): the float-A form's input
  std::vector<bf16> A16;   // A rounded
  std::vector<bf16> B;
  std::vector<float> C;
  double a(int64_t i, int64_t p) const { return loragrad::to_float(ta ? A16[p * lda + i] : A16[i * lda + p]); }
  double b(int64_t p, int64_t j) const { return loragrad::to_float(tb ? B[j * ldb + p] : B[p * ldb + j]); }
};

Case make_case(bool ta, bool tb, Shape s, int64_t pad, std::mt19937& rng) {
  Case c{ta, tb, s, 0, 0, 0, {}, {}, {}, {}};
  const int64_t a_rows = ta ? s.K : s.M, a_cols = ta ? s.M : s.K;
  const int64_t b_rows = tb ? s.N : s.K, b_cols = tb ? s.K : s.N;
  c.lda = a_cols + pad;
  c.ldb = b_cols + 2 * pad;
  c.ldc = s.N + 3 * pad;
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  c.A32.assign(a_rows * c.lda, std::numeric_limits<float>::quiet_NaN());
  c.A16.assign(a_rows * c.lda, bf16{kNaN16});
  c.B.assign(b_rows * c.ldb, bf16{kNaN16});
  for (int64_t r = 0; r < a_rows; ++r)
    for (int64_t j = 0; j < a_cols; ++j) {
      c.A32[r * c.lda + j] = dist(rng);
      c.A16[r * c.lda + j] = loragrad::to_bf16(c.A32[r * c.lda + j]);
    }
  for (int64_t r = 0; r < b_rows; ++r)
    for (int64_t j = 0; j < b_cols; ++j) c.B[r * c.ldb + j] = loragrad::to_bf16(dist(rng));
  c.C.resize(s.M * c.ldc);
  for (float& x : c.C) x = dist(rng);
  return c;
}

struct Reference {
  std::vector<double> value;  // alpha * op(A) op(B) + beta * C, exact enough in double
  std::vector<double> scale;  // |alpha| * sum |a| |b| + |beta C|: what the rounding is relative to
};

Reference reference(const Case& c, double alpha, double beta) {
  Reference r{std::vector<double>(c.s.M * c.ldc), std::vector<double>(c.s.M * c.ldc)};
  for (int64_t i = 0; i < c.s.M; ++i)
    for (int64_t j = 0; j < c.s.N; ++j) {
      double s = 0.0, sa = 0.0;
      for (int64_t p = 0; p < c.s.K; ++p) {
        const double t = c.a(i, p) * c.b(p, j);
        s += t;
        sa += std::fabs(t);
      }
      const double c0 = beta == 0.0 ? 0.0 : beta * double(c.C[i * c.ldc + j]);
      r.value[i * c.ldc + j] = alpha * s + c0;
      r.scale[i * c.ldc + j] = std::fabs(alpha) * sa + std::fabs(c0);
    }
  return r;
}

// The float32 sums round once per addition (each product of two bf16 is
// exact): random-sign errors grow like sqrt(K) units of 2^-24 of the sum of
// magnitudes; the kernels add a few more roundings (alpha, beta, the split of
// the depth into blocks). A wrong or missing product is of order 1/K of the
// scale, far above this for every K tested.
double tolerance(int64_t K) { return std::ldexp(1.0, -24) * (3.0 * std::sqrt(double(K)) + 6.0); }

std::string describe(const std::string& kernel, bool f32a, bool ta, bool tb, Shape s, double alpha, double beta,
                     int64_t pad) {
  std::ostringstream os;
  os << kernel << (f32a ? " A=f32" : " A=bf16") << " ta=" << ta << " tb=" << tb << " M=" << s.M << " N=" << s.N
     << " K=" << s.K << " alpha=" << alpha << " beta=" << beta << " pad=" << pad;
  return os.str();
}

std::vector<float> run_gemm(const Case& c, bool f32a, float alpha, float beta, std::vector<float> C) {
  if (f32a)
    k::gemm_bf16(c.ta, c.tb, c.s.M, c.s.N, c.s.K, alpha, c.A32.data(), c.lda, c.B.data(), c.ldb, beta, C.data(),
                 c.ldc);
  else
    k::gemm_bf16(c.ta, c.tb, c.s.M, c.s.N, c.s.K, alpha, c.A16.data(), c.lda, c.B.data(), c.ldb, beta, C.data(),
                 c.ldc);
  return C;
}

bool same_bits(const std::vector<float>& x, const std::vector<float>& y) {
  return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
}

// The kernels this CPU runs, each announced; the others announced as skipped.
std::vector<std::string> runnable_kernels() {
  std::vector<std::string> out;
  for (const std::string& name : k::bf16_kernel_names()) {
    std::string why;
    if (k::bf16_kernel_supported(name, &why)) {
      out.push_back(name);
    } else {
      std::cout << "gemm_bf16: kernel " << name << " NOT RUN on this CPU: " << why << "\n";
    }
  }
  return out;
}

// Restores the automatic choice when a test ends (pass or fail).
struct KernelGuard {
  ~KernelGuard() { k::set_bf16_kernel("auto"); }
};

double worst_seen = 0.0;  // largest error / (scale * 2^-24 * sqrt(K)) over all checks, reported at the end

// One case against the reference; returns the result for comparisons.
std::vector<float> check_case(const std::string& kernel, const Case& c, bool f32a, double alpha, double beta,
                              int64_t pad) {
  std::vector<float> C0 = c.C;
  if (beta == 0.0)  // beta == 0 must overwrite without reading: NaN in C would leak
    for (int64_t i = 0; i < c.s.M; ++i)
      for (int64_t j = 0; j < c.s.N; ++j) C0[i * c.ldc + j] = std::numeric_limits<float>::quiet_NaN();
  const Reference want = reference(c, alpha, beta);
  const std::vector<float> got = run_gemm(c, f32a, float(alpha), float(beta), C0);
  const double tol = tolerance(c.s.K);
  int64_t bad = 0;
  double worst = 0.0;
  for (int64_t i = 0; i < c.s.M; ++i)
    for (int64_t j = 0; j < c.ldc; ++j) {
      const int64_t idx = i * c.ldc + j;
      if (j >= c.s.N) {
        if (!(bits_of(got[idx]) == bits_of(C0[idx]))) ++bad;  // outside the matrix: untouched
        continue;
      }
      const double err = std::fabs(double(got[idx]) - want.value[idx]);
      const double rel = err / std::max(want.scale[idx], 1e-300);
      if (!(err <= tol * want.scale[idx])) ++bad;  // also catches NaN
      worst = std::max(worst, rel);
    }
  worst_seen = std::max(worst_seen, worst / (std::ldexp(1.0, -24) * std::sqrt(double(std::max<int64_t>(c.s.K, 1)))));
  BOOST_TEST_INFO(describe(kernel, f32a, c.ta, c.tb, c.s, alpha, beta, pad)
                  << " worst relative error " << worst << ", tolerance " << tol);
  BOOST_TEST(bad == 0);
  return got;
}

}  // namespace

BOOST_AUTO_TEST_CASE(the_kernel_in_use_is_one_this_cpu_runs) {
  const std::string in_use = k::bf16_kernel();
  std::cout << "gemm_bf16: kernel in use by default: " << in_use << "\n";
  BOOST_TEST(k::bf16_kernel_supported(in_use));
  BOOST_TEST(k::bf16_kernel_supported("fp32"));
  BOOST_TEST(!k::bf16_kernel_supported("bogus"));
  // AMX wherever it runs; otherwise avx512_bf16 (AMD) or fp32 (Intel, where
  // vdpbf16ps is slower than float FMAs).
  if (k::bf16_kernel_supported("amx"))
    BOOST_TEST(in_use == "amx");
  else
    BOOST_TEST((in_use == "avx512_bf16" || in_use == "fp32"));
}

BOOST_AUTO_TEST_CASE(forcing_a_kernel_this_cpu_lacks_or_an_unknown_one_throws) {
  KernelGuard guard;
  const std::string before = k::bf16_kernel();
  try {
    k::set_bf16_kernel("avx1024_bf16");
    BOOST_ERROR("an unknown kernel name was accepted");
  } catch (const ValueError& e) {
    BOOST_TEST(std::string(e.what()).find("unknown bf16 kernel 'avx1024_bf16'") != std::string::npos);
  }
  BOOST_TEST(k::bf16_kernel() == before);
  for (const std::string& name : k::bf16_kernel_names()) {
    std::string why;
    if (k::bf16_kernel_supported(name, &why)) {
      k::set_bf16_kernel(name);
      BOOST_TEST(k::bf16_kernel() == name);
      continue;
    }
    try {
      k::set_bf16_kernel(name);
      BOOST_ERROR("forcing " << name << " on a CPU without it was accepted");
    } catch (const ValueError& e) {
      BOOST_TEST(std::string(e.what()).find(why) != std::string::npos, "message: " << e.what());
    }
  }
}

// Every runnable kernel, both forms (A in bf16, A in float32), every shape and
// transposition; small shapes every (alpha, beta) with and without padding.
BOOST_AUTO_TEST_CASE(every_kernel_against_float64_reference) {
  KernelGuard guard;
  const std::vector<std::pair<double, double>> alpha_beta = {{1.0, 0.0}, {-0.5, 0.0}, {1.0, 1.0}, {0.75, -2.0}};
  const std::vector<std::string> kernels = runnable_kernels();
  BOOST_REQUIRE(!kernels.empty());
  for (const std::string& kernel : kernels) {
    k::set_bf16_kernel(kernel);
    std::cout << "gemm_bf16: testing kernel " << kernel << "\n";
    std::mt19937 rng(99);
    for (const Shape& s : kShapes)
      for (bool ta : {false, true})
        for (bool tb : {false, true}) {
          const int combo = 2 * ta + tb;
          if (s.M * s.N * s.K <= 300000) {
            for (auto [alpha, beta] : alpha_beta)
              for (int64_t pad : {0, 3}) {
                const Case c = make_case(ta, tb, s, pad, rng);
                check_case(kernel, c, (combo + pad) % 2 == 0, alpha, beta, pad);
              }
          } else {
            const auto [alpha, beta] = alpha_beta[combo % alpha_beta.size()];
            const int64_t pad = combo % 2 ? 3 : 0;
            const Case c = make_case(ta, tb, s, pad, rng);
            check_case(kernel, c, combo < 2, alpha, beta, pad);
          }
        }
  }
  std::cout << "gemm_bf16: largest error seen: " << worst_seen
            << " x 2^-24 x sqrt(K) of the sum of |products| (tolerance 3 sqrt(K) + 6 units)\n";
}

// The float-A form rounds A as it packs: bit-for-bit the bf16 form on a
// rounded copy, for every kernel and transposition.
BOOST_AUTO_TEST_CASE(float_a_is_rounding_a_first) {
  KernelGuard guard;
  for (const std::string& kernel : runnable_kernels()) {
    k::set_bf16_kernel(kernel);
    std::mt19937 rng(5);
    for (Shape s : std::vector<Shape>{{13, 33, 17}, {200, 70, 301}, {64, 40, 1100}})
      for (bool ta : {false, true})
        for (bool tb : {false, true}) {
          const Case c = make_case(ta, tb, s, 1, rng);
          const std::vector<float> x = run_gemm(c, true, 0.5f, 1.0f, c.C);
          const std::vector<float> y = run_gemm(c, false, 0.5f, 1.0f, c.C);
          BOOST_TEST_INFO(describe(kernel, true, ta, tb, s, 0.5, 1.0, 1));
          BOOST_TEST(same_bits(x, y));
        }
  }
}

// Each element's sum has a fixed order: 1, 2 and 3 threads give the same bits
// (one panel: threads pack their own slivers; several panels or depth blocks:
// shared packing), and a call from inside a parallel region (serial) too.
BOOST_AUTO_TEST_CASE(results_do_not_depend_on_the_thread_count) {
  KernelGuard guard;
  const int saved = loragrad::num_threads();
  for (const std::string& kernel : runnable_kernels()) {
    k::set_bf16_kernel(kernel);
    std::mt19937 rng(11);
    for (Shape s : std::vector<Shape>{{300, 200, 600}, {37, 500, 70}, {5, 900, 300}, {100, 4200, 50}, {90, 60, 2100}})
      for (bool tb : {false, true}) {
        const Case c = make_case(false, tb, s, 2, rng);
        std::vector<std::vector<float>> results;
        for (int nt : {1, 2, 3}) {
          loragrad::set_num_threads(nt);
          results.push_back(run_gemm(c, true, 1.0f, 0.5f, c.C));
        }
        loragrad::set_num_threads(saved);
        std::vector<float> inside = c.C;
        loragrad::parallel_run(1, [&](int64_t, int) { inside = run_gemm(c, true, 1.0f, 0.5f, c.C); });
        BOOST_TEST_INFO(describe(kernel, true, false, tb, s, 1.0, 0.5, 2));
        BOOST_TEST(same_bits(results[0], results[1]));
        BOOST_TEST_INFO(describe(kernel, true, false, tb, s, 1.0, 0.5, 2));
        BOOST_TEST(same_bits(results[0], results[2]));
        BOOST_TEST_INFO(describe(kernel, true, false, tb, s, 1.0, 0.5, 2));
        BOOST_TEST(same_bits(results[0], inside));
      }
  }
  loragrad::set_num_threads(saved);
}

// The kernels differ only in the order of their float32 additions: any two
// agree within twice the tolerance each has against the exact result.
BOOST_AUTO_TEST_CASE(kernels_agree_with_each_other) {
  KernelGuard guard;
  const std::vector<std::string> kernels = runnable_kernels();
  std::mt19937 rng(3);
  for (Shape s : std::vector<Shape>{{2048 / 8, 256, 1024}, {256, 1024, 256}, {77, 45, 333}})
    for (bool tb : {false, true}) {
      const Case c = make_case(false, tb, s, 0, rng);
      const Reference want = reference(c, 1.0, 0.0);
      std::map<std::string, std::vector<float>> out;
      for (const std::string& kernel : kernels) {
        k::set_bf16_kernel(kernel);
        out[kernel] = run_gemm(c, true, 1.0f, 0.0f, c.C);
      }
      for (size_t x = 0; x < kernels.size(); ++x)
        for (size_t y = x + 1; y < kernels.size(); ++y) {
          int64_t bad = 0;
          for (size_t i = 0; i < want.value.size(); ++i)
            if (!(std::fabs(double(out[kernels[x]][i]) - double(out[kernels[y]][i])) <=
                  2.0 * tolerance(s.K) * want.scale[i]))
              ++bad;
          BOOST_TEST_INFO(kernels[x] << " vs " << kernels[y] << " M=" << s.M << " N=" << s.N << " K=" << s.K
                                     << " tb=" << tb);
          BOOST_TEST(bad == 0);
        }
    }
}

BOOST_AUTO_TEST_CASE(degenerate_sizes_and_bad_arguments) {
  KernelGuard guard;
  for (const std::string& kernel : runnable_kernels()) {
    k::set_bf16_kernel(kernel);
    const std::vector<bf16> A(12, loragrad::to_bf16(1.0f)), B(12, loragrad::to_bf16(2.0f));
    // K == 0: C = beta * C; beta == 0 overwrites NaN.
    std::vector<float> C = {1.0f, 2.0f, 3.0f, 4.0f};
    k::gemm_bf16(false, false, 2, 2, 0, 1.0f, A.data(), 1, B.data(), 2, 3.0f, C.data(), 2);
    BOOST_TEST(C == (std::vector<float>{3.0f, 6.0f, 9.0f, 12.0f}), boost::test_tools::per_element());
    C.assign(4, std::numeric_limits<float>::quiet_NaN());
    k::gemm_bf16(false, false, 2, 2, 3, 0.0f, A.data(), 3, B.data(), 2, 0.0f, C.data(), 2);
    BOOST_TEST(C == (std::vector<float>(4, 0.0f)), boost::test_tools::per_element());
    // Empty C: nothing to do, nothing read.
    k::gemm_bf16(false, false, 0, 5, 3, 1.0f, static_cast<const bf16*>(nullptr), 3, B.data(), 5, 0.0f, nullptr, 5);
    // A small exact product: (2, 3) ones @ (3, 2) twos = 6.
    C.assign(4, -1.0f);
    k::gemm_bf16(false, false, 2, 2, 3, 1.0f, A.data(), 3, B.data(), 2, 0.0f, C.data(), 2);
    BOOST_TEST(C == (std::vector<float>(4, 6.0f)), boost::test_tools::per_element());
    // inf in A gives inf (not NaN) where it meets a positive B.
    std::vector<float> Af = {std::numeric_limits<float>::infinity(), 1.0f, 1.0f};
    C.assign(2, 0.0f);
    k::gemm_bf16(false, false, 1, 2, 3, 1.0f, Af.data(), 3, B.data(), 2, 0.0f, C.data(), 2);
    BOOST_TEST(std::isinf(C[0]));
    BOOST_TEST(std::isinf(C[1]));
    BOOST_CHECK_THROW(k::gemm_bf16(false, false, 2, 2, 3, 1.0f, A.data(), 2, B.data(), 2, 0.0f, C.data(), 2),
                      loragrad::ShapeError);  // lda < K
    BOOST_CHECK_THROW(k::gemm_bf16(false, true, 2, 2, 3, 1.0f, A.data(), 3, B.data(), 2, 0.0f, C.data(), 2),
                      loragrad::ShapeError);  // trans_b: ldb < K
    BOOST_CHECK_THROW(k::gemm_bf16(false, false, -1, 2, 3, 1.0f, A.data(), 3, B.data(), 2, 0.0f, C.data(), 2),
                      loragrad::ShapeError);
  }
}

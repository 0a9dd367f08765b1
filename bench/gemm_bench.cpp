// GEMM throughput: loragrad::kernels::gemm (float) vs a naive triple loop vs
// OpenBLAS cblas_sgemm, GFLOP/s (median of several timed samples), for 1 and
// 2 threads. Usage: gemm_bench [--quick] [--rank-r] [--threads N]
//
// OpenBLAS is optional (LORAGRAD_BENCH_HAVE_CBLAS, set by CMake when found).
// Its speed on this machine depends on OPENBLAS_CORETYPE (Debian's build does
// not recognise every CPU and may fall back to old kernels), so the value in
// effect is printed first.

#include <dlfcn.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "loragrad/app/args.hpp"
#include "loragrad/kernels/gemm.hpp"

#ifdef LORAGRAD_BENCH_HAVE_CBLAS
#include <cblas.h>
#endif

namespace {

using Clock = std::chrono::steady_clock;
using loragrad::kernels::gemm;

struct Shape {
  std::string label;
  bool trans_a, trans_b;
  int64_t M, N, K;
};

// The classic i-j-p loop with a scalar accumulator (what "naive" usually means).
void naive_sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A, const float* B,
                 float* C) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      float s = 0.0f;
      for (int64_t p = 0; p < K; ++p)
        s += (trans_a ? A[p * M + i] : A[i * K + p]) * (trans_b ? B[j * K + p] : B[p * N + j]);
      C[i * N + j] = s;
    }
}

// GFLOP/s of one timed sample: fn repeated until it has run at least
// min_seconds, so that short calls are not dominated by timer noise.
template <class F>
double sample_gflops(double flops, double min_seconds, F&& fn) {
  int reps = 0;
  const auto t0 = Clock::now();
  double elapsed = 0.0;
  do {
    fn();
    ++reps;
    elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  } while (elapsed < min_seconds);
  return flops * reps / elapsed / 1e9;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Both OpenMP (libgomp) and OpenBLAS's pthreads spin for a while after a call
// before sleeping; on a 2-core machine a spinning pool steals a core from the
// next library. Pause between libraries so each is measured alone.
void let_spinners_sleep() { std::this_thread::sleep_for(std::chrono::milliseconds(150)); }

using SetThreadsFn = void (*)(int);
using CoreNameFn = char* (*)();

}  // namespace

int main(int argc, char** argv) {
  loragrad::app::Args a("gemm_bench", "loragrad's float GEMM against a naive loop and OpenBLAS cblas_sgemm.", "");
  a.flag("--quick", "fewer shapes and repetitions");
  a.flag("--rank-r", "only the rank-r products of a LoRA layer");
  a.option("--threads", "N", "one thread count (default: 1 and 2)");
  bool quick = false, rank_r_only = false;
  std::vector<int> thread_counts = {1, 2};
  try {
    if (!a.parse(argc, argv, 1)) return 0;
    quick = a.is_set("--quick");
    rank_r_only = a.is_set("--rank-r");
    if (a.given("--threads")) thread_counts = {static_cast<int>(a.integer("--threads", 1, 1024))};
  } catch (const loragrad::app::UsageError& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }

  auto env = [](const char* name) {
    const char* v = std::getenv(name);
    return v ? v : "(unset)";
  };
  std::printf("OPENBLAS_CORETYPE=%s\n", env("OPENBLAS_CORETYPE"));
  // Both libraries' threads spin-wait; on a machine shared with other work
  // the wait policy and the load decide the 2-thread numbers as much as the
  // kernels do (libgomp spins 300000 PAUSEs by default, ~6 ms on Zen 5).
  std::printf("OMP_WAIT_POLICY=%s GOMP_SPINCOUNT=%s\n", env("OMP_WAIT_POLICY"),
              env("GOMP_SPINCOUNT"));
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
    char buf[128] = {};
    if (std::fgets(buf, sizeof buf, f)) std::printf("load average at start: %s", buf);
    std::fclose(f);
  }
#ifdef LORAGRAD_BENCH_HAVE_CBLAS
  // Looked up at run time: these are OpenBLAS extensions, not part of CBLAS.
  auto set_blas_threads =
      reinterpret_cast<SetThreadsFn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  auto corename = reinterpret_cast<CoreNameFn>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  std::printf("OpenBLAS core in use: %s\n", corename ? corename() : "(unknown)");
#else
  std::printf("OpenBLAS: not linked (cblas.h / libopenblas not found at configure time)\n");
#endif

  std::vector<Shape> shapes;
  const std::vector<int64_t> squares =
      quick ? std::vector<int64_t>{128, 512} : std::vector<int64_t>{64, 128, 256, 512, 1024};
  for (int64_t n : squares) shapes.push_back({"square", false, false, n, n, n});
  const std::vector<int64_t> ms =
      quick ? std::vector<int64_t>{2048} : std::vector<int64_t>{2048, 4096};
  const std::vector<int64_t> kns =
      quick ? std::vector<int64_t>{256, 1024} : std::vector<int64_t>{128, 256, 512, 1024};
  for (bool tb : {false, true})
    for (int64_t m : ms)
      for (int64_t kn : kns)
        shapes.push_back({tb ? "x@W^T" : "x@W", false, tb, m, kn, kn});
  if (rank_r_only) shapes.clear();
  // The rank-r products of a LoRA layer (y = x W^T + s (x A^T) B^T) over the
  // workloads' 2048 tokens (S: r = 8, M: r = 16; d = 256, fc_in / fc_out 1024):
  //   h = x A^T   (T, r) = x (T, in) A (r, in)^T       forward
  //   dh = g B    (T, r) = g (T, out) B (out, r)        backward
  //   dB = g^T h  (out, r) = g (T, out)^T h (T, r)
  //   dA = dh^T x (r, in) = dh (T, r)^T x (T, in)
  const std::vector<int64_t> ranks = quick ? std::vector<int64_t>{16} : std::vector<int64_t>{8, 16};
  const std::vector<int64_t> dims = quick ? std::vector<int64_t>{256} : std::vector<int64_t>{256, 1024};
  for (int64_t r : ranks)
    for (int64_t d : dims) {
      shapes.push_back({"xA^T", false, true, 2048, r, d});
      shapes.push_back({"gB", false, false, 2048, r, d});
      shapes.push_back({"g^Th", true, false, d, r, 2048});
      shapes.push_back({"dh^Tx", true, false, r, d, 2048});
    }

  const int samples = quick ? 3 : 5;
  const double min_seconds = quick ? 0.02 : 0.05;
  const int64_t naive_max = 512;

  std::printf("GFLOP/s, median of %d samples (each >= %.0f ms, loragrad and OpenBLAS "
              "alternating; naive: one sample). x@W: A(M,K) @ B(K,N); "
              "x@W^T: A(M,K) @ W(N,K)^T (trans_b); xA^T, gB, g^Th, dh^Tx: a LoRA layer's rank-r "
              "products (g^T, dh^T: A transposed).\n",
              samples, min_seconds * 1e3);

  std::mt19937 rng(42);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);

  for (int threads : thread_counts) {
    omp_set_num_threads(threads);
#ifdef LORAGRAD_BENCH_HAVE_CBLAS
    if (set_blas_threads) set_blas_threads(threads);
#endif
    std::printf("\nthreads = %d\n", threads);
    std::printf("%-8s %5s %5s %5s | %9s %9s %9s | %8s | %s\n", "shape", "M", "N", "K", "loragrad",
                "naive", "OpenBLAS", "lg/BLAS", "max|diff|/K");
    for (const Shape& s : shapes) {
      const int64_t M = s.M, N = s.N, K = s.K;
      std::vector<float> A(M * K), B(K * N), C(M * N), Cref(M * N);
      for (float& x : A) x = dist(rng);
      for (float& x : B) x = dist(rng);
      const int64_t lda = s.trans_a ? M : K, ldb = s.trans_b ? K : N;
      const double flops = 2.0 * M * N * K;

      auto run_loragrad = [&] {
        gemm(s.trans_a, s.trans_b, M, N, K, 1.0f, A.data(), lda, B.data(), ldb, 0.0f, C.data(), N);
      };
#ifdef LORAGRAD_BENCH_HAVE_CBLAS
      auto run_blas = [&] {
        cblas_sgemm(CblasRowMajor, s.trans_a ? CblasTrans : CblasNoTrans, s.trans_b ? CblasTrans : CblasNoTrans,
                    M, N, K, 1.0f, A.data(), lda, B.data(), ldb, 0.0f, Cref.data(), N);
      };
#endif
      // Samples of the two libraries alternate, so a change in the machine's
      // load during the row affects both columns alike.
      std::vector<double> lg_rates, blas_rates;
      run_loragrad();  // warm-up: page faults, pack buffers, thread start
#ifdef LORAGRAD_BENCH_HAVE_CBLAS
      run_blas();
#endif
      for (int i = 0; i < samples; ++i) {
        let_spinners_sleep();
        lg_rates.push_back(sample_gflops(flops, min_seconds, run_loragrad));
#ifdef LORAGRAD_BENCH_HAVE_CBLAS
        let_spinners_sleep();
        blas_rates.push_back(sample_gflops(flops, min_seconds, run_blas));
#endif
      }
      const double lg = median(lg_rates);
      double blas = NAN, diff = NAN;
#ifdef LORAGRAD_BENCH_HAVE_CBLAS
      blas = median(blas_rates);
      diff = 0.0;
      for (int64_t i = 0; i < M * N; ++i) diff = std::max(diff, double(std::fabs(C[i] - Cref[i])));
      diff /= double(K);
#endif
      double naive = NAN;
      if (M <= naive_max && N <= naive_max && K <= naive_max)
        naive = sample_gflops(flops, min_seconds, [&] {
          naive_sgemm(s.trans_a, s.trans_b, M, N, K, A.data(), B.data(), Cref.data());
        });

      auto cell = [](double v) {
        static char buf[4][32];
        static int i = 0;
        i = (i + 1) % 4;
        if (std::isnan(v))
          std::snprintf(buf[i], sizeof buf[i], "%9s", "-");
        else
          std::snprintf(buf[i], sizeof buf[i], "%9.1f", v);
        return buf[i];
      };
      char ratio[32];
      if (std::isnan(blas))
        std::snprintf(ratio, sizeof ratio, "%8s", "-");
      else
        std::snprintf(ratio, sizeof ratio, "%7.0f%%", 100.0 * lg / blas);
      std::printf("%-8s %5lld %5lld %5lld | %s %s %s | %s | %.1e\n", s.label.c_str(),
                  (long long)M, (long long)N, (long long)K, cell(lg), cell(naive), cell(blas),
                  ratio, diff);
      std::fflush(stdout);
    }
  }
  return 0;
}

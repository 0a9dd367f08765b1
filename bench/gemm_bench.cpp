// GEMM throughput: loragrad::kernels::gemm (float) vs a naive triple loop vs
// OpenBLAS cblas_sgemm, GFLOP/s (median of several timed samples), for 1 and
// 2 threads, and loragrad's share of the FMA peak measured at the start of
// each thread count (app/fma_peak.hpp). Then the bf16 GEMM
// (kernels::gemm_bf16, A in float32 rounded while packed, B in bf16: what a
// linear layer with a frozen bf16 weight runs) with each kernel this CPU has,
// on the linear layers' shapes of the reference workloads, against the float
// GEMM on the same (widened) numbers.
// Usage: gemm_bench [--quick] [--rank-r] [--threads N] [--tables fp32|bf16|all]
//
// OpenBLAS is optional (LORAGRAD_BENCH_HAVE_CBLAS, set by CMake when found).
// Its speed on this machine depends on OPENBLAS_CORETYPE (Debian's build does
// not recognise every CPU and may fall back to old kernels), so the value in
// effect is printed first.

#include <dlfcn.h>

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
#include "loragrad/app/fma_peak.hpp"
#include "loragrad/kernels/gemm.hpp"
#include "loragrad/kernels/gemm_bf16.hpp"
#include "loragrad/thread_pool.hpp"

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

// Both loragrad's pool and OpenBLAS's threads (pthreads or OpenMP) spin for a
// while after a call before sleeping; on a 2-core machine a spinning pool
// steals a core from the next library. Pause between libraries so each is measured alone.
void let_spinners_sleep() { std::this_thread::sleep_for(std::chrono::milliseconds(150)); }

// The bf16 table: per shape, the float GEMM and gemm_bf16 with each kernel
// this CPU runs, samples alternating, GFLOP/s (and % of the float FMA peak:
// bf16 kernels can exceed 100%) and the ratio to the float GEMM.
void bf16_rows(bool quick, int samples, double min_seconds, double peak_gflops, std::mt19937& rng) {
  namespace k = loragrad::kernels;
  std::vector<std::string> kernels;
  for (const std::string& name : k::bf16_kernel_names()) {
    std::string why;
    if (k::bf16_kernel_supported(name, &why))
      kernels.push_back(name);
    else
      std::printf("bf16 kernel %s: not on this CPU (%s)\n", name.c_str(), why.c_str());
  }
  const std::string default_kernel = k::bf16_kernel();
  // The linear layers of the reference workloads (T = batch x seq = 2048
  // tokens): forward y = x W^T (x@W^T) and input gradient dx = dy W (x@W).
  struct Bf16Shape {
    std::string label;
    bool trans_b;
    int64_t M, N, K;
  };
  std::vector<Bf16Shape> shapes = {
      {"M qkvo fwd", true, 2048, 256, 256},   {"M qkvo bwd", false, 2048, 256, 256},
      {"M fc_in fwd", true, 2048, 1024, 256}, {"M fc_in bwd", false, 2048, 256, 1024},
      {"M fc_out fwd", true, 2048, 256, 1024}, {"M fc_out bwd", false, 2048, 1024, 256},
  };
  if (!quick) {
    shapes.push_back({"S qkvo fwd", true, 2048, 128, 128});
    shapes.push_back({"S qkvo bwd", false, 2048, 128, 128});
    shapes.push_back({"square", true, 1024, 1024, 1024});
  }
  std::printf("\nbf16 GEMM (A float32 rounded while packed, B bf16), GFLOP/s, %% of the float FMA peak, "
              "ratio to the float GEMM; default kernel here: %s\n", default_kernel.c_str());
  std::printf("%-13s %5s %5s %5s | %9s", "layer", "M", "N", "K", "fp32 gemm");
  for (const std::string& kn : kernels) std::printf(" | %11s %6s %6s", kn.c_str(), "%peak", "xfp32");
  std::printf(" | %s\n", "max|bf16-fp32|/K");
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (const Bf16Shape& s : shapes) {
    const int64_t M = s.M, N = s.N, K = s.K;
    std::vector<float> A(M * K), Bf(K * N), C(M * N), Cb(M * N);
    std::vector<loragrad::bf16> B(K * N);
    for (float& x : A) x = loragrad::round_to_bf16(dist(rng));  // the same numbers for both GEMMs
    for (int64_t i = 0; i < K * N; ++i) {
      B[i] = loragrad::to_bf16(dist(rng));
      Bf[i] = loragrad::to_float(B[i]);
    }
    const int64_t ldb = s.trans_b ? K : N;
    const double flops = 2.0 * M * N * K;
    auto run_fp32 = [&] { gemm(false, s.trans_b, M, N, K, 1.0f, A.data(), K, Bf.data(), ldb, 0.0f, C.data(), N); };
    auto run_bf16 = [&] {
      loragrad::kernels::gemm_bf16(false, s.trans_b, M, N, K, 1.0f, A.data(), K, B.data(), ldb, 0.0f, Cb.data(), N);
    };
    std::vector<double> fp32_rates;
    std::vector<std::vector<double>> rates(kernels.size());
    run_fp32();
    for (const std::string& kn : kernels) {
      k::set_bf16_kernel(kn);
      run_bf16();
    }
    for (int i = 0; i < samples; ++i) {
      let_spinners_sleep();
      fp32_rates.push_back(sample_gflops(flops, min_seconds, run_fp32));
      for (size_t j = 0; j < kernels.size(); ++j) {
        k::set_bf16_kernel(kernels[j]);
        let_spinners_sleep();
        rates[j].push_back(sample_gflops(flops, min_seconds, run_bf16));
      }
    }
    // Largest difference to the float GEMM over the kernels (the last run of each).
    double diff = 0.0;
    for (const std::string& kn : kernels) {
      k::set_bf16_kernel(kn);
      run_bf16();
      for (int64_t i = 0; i < M * N; ++i) diff = std::max(diff, double(std::fabs(C[i] - Cb[i])));
    }
    const double f = median(fp32_rates);
    std::printf("%-13s %5lld %5lld %5lld | %9.1f", s.label.c_str(), (long long)M, (long long)N, (long long)K, f);
    for (size_t j = 0; j < kernels.size(); ++j) {
      const double r = median(rates[j]);
      std::printf(" | %11.1f %5.0f%% %5.2fx", r, 100.0 * r / peak_gflops, r / f);
    }
    std::printf(" | %.1e\n", diff / double(K));
    std::fflush(stdout);
  }
  k::set_bf16_kernel(default_kernel);
}

using SetThreadsFn = void (*)(int);
using CoreNameFn = char* (*)();

}  // namespace

int main(int argc, char** argv) {
  loragrad::app::Args a("gemm_bench", "loragrad's float GEMM against a naive loop and OpenBLAS cblas_sgemm.", "");
  a.flag("--quick", "fewer shapes and repetitions");
  a.flag("--rank-r", "only the rank-r products of a LoRA layer");
  a.option("--threads", "N", "one thread count (default: 1 and 2)");
  a.option("--tables", "WHICH", "fp32 (float GEMM vs naive vs OpenBLAS), bf16 (bf16 kernels vs float GEMM) or all", "all");
  bool quick = false, rank_r_only = false;
  bool fp32_table = true, bf16_table = true;
  std::vector<int> thread_counts = {1, 2};
  try {
    if (!a.parse(argc, argv, 1)) return 0;
    quick = a.is_set("--quick");
    rank_r_only = a.is_set("--rank-r");
    if (a.given("--threads")) thread_counts = {static_cast<int>(a.integer("--threads", 1, 1024))};
    const std::string tables = a.str("--tables");
    if (tables != "fp32" && tables != "bf16" && tables != "all")
      throw loragrad::app::UsageError("gemm_bench: --tables must be fp32, bf16 or all, got '" + tables + "'");
    fp32_table = tables != "bf16";
    bf16_table = tables != "fp32";
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
  // kernels do (libgomp, OpenMP OpenBLAS's runtime, spins 300000 PAUSEs by
  // default, ~6 ms on Zen 5; OMP_WAIT_POLICY and GOMP_SPINCOUNT are its).
  std::printf("loragrad threads: %s\n", loragrad::wait_strategy().c_str());
  std::printf("OpenBLAS (if OpenMP): OMP_WAIT_POLICY=%s GOMP_SPINCOUNT=%s\n", env("OMP_WAIT_POLICY"),
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
    loragrad::set_num_threads(threads);
#ifdef LORAGRAD_BENCH_HAVE_CBLAS
    if (set_blas_threads) set_blas_threads(threads);
#endif
    const loragrad::app::FmaPeak peak = loragrad::app::measure_fma_peak(threads);
    std::printf("\nthreads = %d; FMA peak %s\n", threads, peak.str().c_str());
    if (fp32_table)
      std::printf("%-8s %5s %5s %5s | %9s %6s %9s %9s | %8s | %s\n", "shape", "M", "N", "K", "loragrad",
                  "%peak", "naive", "OpenBLAS", "lg/BLAS", "max|diff|/K");
    for (const Shape& s : fp32_table ? shapes : std::vector<Shape>{}) {
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
      std::printf("%-8s %5lld %5lld %5lld | %s %5.0f%% %s %s | %s | %.1e\n", s.label.c_str(),
                  (long long)M, (long long)N, (long long)K, cell(lg), 100.0 * lg / peak.gflops,
                  cell(naive), cell(blas), ratio, diff);
      std::fflush(stdout);
    }
    if (bf16_table) bf16_rows(quick, samples, min_seconds, peak.gflops, rng);
  }
  return 0;
}

#include "loragrad/app/fma_peak.hpp"

#include <time.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <thread>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "loragrad/kernels/isa.hpp"

namespace loragrad::app {

namespace {

using Batch = xsimd::batch<float>;  // the widest vector this file is compiled for (-march, as the library)

// Independent accumulators: an FMA's result is ready after ~4 cycles and
// two issue per cycle on the CPUs seen so far, so at least 8 chains are
// needed to keep both units busy. 12 chains plus the two operands fit in
// the 16 registers of AVX2 (AVX-512 has 32), so nothing spills to memory.
constexpr int kChains = 12;

volatile float g_sink;  // keeps the compiler from dropping the loop

// `iters` rounds of kChains FMAs. acc = acc * m + c with 0 < m < 1 converges
// to c / (1 - m): the values stay normal floats, never overflow nor denormal.
void fma_loop(int64_t iters, float seed) {
  Batch acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = Batch(seed + static_cast<float>(c));
  const Batch m(0.999999f), add(seed * 1e-3f);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int c = 0; c < kChains; ++c) acc[c] = xsimd::fma(acc[c], m, add);
  }
  Batch s = acc[0];
  for (int c = 1; c < kChains; ++c) s += acc[c];
  g_sink = xsimd::hadd(s);
}

double flops_per_iter() { return 2.0 * kChains * Batch::size; }

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// GFLOP/s of `threads` threads each running fma_loop(iters), each timed by
// its own CPU time and summed: on a shared machine another process's share of
// a core would lower a wall-clock figure, while the peak wanted is what the
// cores can do. (Two threads on one core's SMT siblings still count once:
// each gets half the FMAs per CPU second.)
// Plain std::threads, not the pool: every thread must run its loop at once
// (the pool lets one thread take several tasks).
double timed_run(int threads, int64_t iters) {
  std::vector<double> gflops(static_cast<size_t>(threads));  // (threads) each one's rate
  auto one = [&](int t) {
    const double t0 = thread_cpu_seconds();
    fma_loop(iters, 1.0f + static_cast<float>(t));
    gflops[t] = flops_per_iter() * static_cast<double>(iters) / std::max(thread_cpu_seconds() - t0, 1e-9) / 1e9;
  };
  std::vector<std::thread> others;
  for (int t = 1; t < threads; ++t) others.emplace_back(one, t);
  one(0);
  for (std::thread& th : others) th.join();
  double sum = 0;
  for (double g : gflops) sum += g;
  return sum;
}

}  // namespace

std::string FmaPeak::str() const {
  char buf[160];
  std::snprintf(buf, sizeof buf, "%.1f GFLOP/s (%d thread%s, %s: %d-float FMAs)", gflops, threads,
                threads == 1 ? "" : "s", isa.c_str(), lanes);
  return buf;
}

FmaPeak measure_fma_peak(int threads, double seconds, int trials) {
  threads = std::max(threads, 1);
  // Calibrate on one thread: grow the count until a run lasts ~1/10 of the target.
  int64_t iters = 1 << 12;
  for (;;) {
    const double t0 = thread_cpu_seconds();
    fma_loop(iters, 1.0f);
    const double s = thread_cpu_seconds() - t0;
    if (s >= seconds / 10 || iters > (int64_t{1} << 40)) {
      iters = static_cast<int64_t>(static_cast<double>(iters) * seconds / std::max(s, 1e-9));
      break;
    }
    iters *= 4;
  }
  iters = std::max<int64_t>(iters, 1);
  FmaPeak p;
  p.threads = threads;
  p.lanes = static_cast<int>(Batch::size);
  p.isa = kernels::compiled_isa();
  for (int t = 0; t < std::max(trials, 1); ++t) {
    p.gflops = std::max(p.gflops, timed_run(threads, iters));
  }
  return p;
}

}  // namespace loragrad::app

#pragma once
// The machine's float32 FMA peak, measured rather than looked up: the CPUs
// the project runs on differ (and so do their clocks under load), and a
// benchmark's "% of peak" only means something against a peak measured in
// the same run. Used by `loragrad bench` and bench/gemm_bench.
#include <string>

namespace loragrad::app {

struct FmaPeak {
  double gflops = 0;  // float32 GFLOP/s of all threads together (an FMA is 2 FLOPs per lane)
  int threads = 0;
  int lanes = 0;      // floats per FMA instruction: 16 (AVX-512), 8 (AVX2), 4 (SSE2)
  std::string isa;    // the vector width measured: kernels::compiled_isa(), e.g. "avx512f"
  std::string str() const;  // "321.4 GFLOP/s (2 threads, avx512f: 16-float FMAs)"
};

// Each of `threads` threads runs a loop of independent FMAs on
// registers only (no memory traffic), with the widest vector the library is
// compiled for, for about `seconds`, timed by its own CPU time (so other
// processes on a shared machine do not lower the figure); the threads' rates
// are summed, and the best of `trials` runs is kept.
FmaPeak measure_fma_peak(int threads, double seconds = 0.1, int trials = 3);

}  // namespace loragrad::app

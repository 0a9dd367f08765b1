#pragma once
// When to use threads. Small tensors run on the calling thread: an OpenMP
// fork/join costs a few microseconds, more than the whole op on a tiny tensor.
#include <cstdint>

#include <omp.h>

namespace loragrad {

// Elementwise loops go parallel above this many elements.
inline constexpr int64_t kParallelElements = 1 << 16;
// Row loops (softmax, layer norm, ...) go parallel above this much work (rows * cols).
inline constexpr int64_t kParallelWork = 1 << 15;

inline bool use_threads(int64_t work) { return work >= kParallelWork && !omp_in_parallel(); }

// for (i in [0, n)) body(i), over threads when `work` is large enough.
template <class F>
inline void parallel_for(int64_t n, int64_t work, F&& body) {
  if (use_threads(work) && n > 1) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) body(i);
  } else {
    for (int64_t i = 0; i < n; ++i) body(i);
  }
}

// libgomp's default lets idle threads spin for a while at every barrier. On a
// machine whose cores are busy with other work (a shared box, a parallel
// build) a spinning thread takes the core its partner needs, and a training
// step runs 5-8x slower (measured: 1-3 steps/s instead of 8-12). Sleeping
// threads cost up to a fifth on an idle machine. libgomp reads OMP_WAIT_POLICY
// only when it loads, before main, so a program calls this first thing in
// main: it sets the variable and restarts itself once (via /proc/self/exe);
// a value the user set is kept, and if the restart fails it runs as it is.
void prefer_passive_openmp_threads(char** argv);

}  // namespace loragrad

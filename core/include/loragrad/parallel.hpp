#pragma once
// When to use threads, and loops over the pool (thread_pool.hpp). Small
// tensors run on the calling thread: a fork/join costs a few microseconds,
// more than the whole op on a tiny tensor.
#include <algorithm>
#include <cstdint>

#include "loragrad/thread_pool.hpp"

namespace loragrad {

// Elementwise loops go parallel above this many elements.
inline constexpr int64_t kParallelElements = 1 << 16;
// Row loops (softmax, layer norm, ...) go parallel above this much work (rows * cols).
inline constexpr int64_t kParallelWork = 1 << 15;
// A parallel loop is cut into up to this many tasks per thread, handed out one
// at a time: a thread whose core is shared with another process takes fewer,
// and the last task, the one the others may wait for, is short.
inline constexpr int64_t kTasksPerThread = 8;

inline bool use_threads(int64_t work) { return work >= kParallelWork && !in_parallel() && num_threads() > 1; }

// body(begin, end) over consecutive ranges covering [0, n), over threads when
// `work` is large enough (then up to kTasksPerThread ranges per thread; else
// one range). The split follows the thread count: body must give every i the
// same result whatever range it is in.
template <class F>
inline void parallel_ranges(int64_t n, int64_t work, F&& body) {
  if (n > 1 && use_threads(work)) {
    const int64_t tasks = std::min(n, num_threads() * kTasksPerThread);
    parallel_run(tasks, [&](int64_t t, int) { body(n * t / tasks, n * (t + 1) / tasks); });
  } else if (n > 0) {
    body(int64_t{0}, n);
  }
}

// for (i in [0, n)) body(i), over threads when `work` is large enough.
template <class F>
inline void parallel_for(int64_t n, int64_t work, F&& body) {
  parallel_ranges(n, work, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) body(i);
  });
}

}  // namespace loragrad

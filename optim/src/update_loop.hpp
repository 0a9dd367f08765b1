#pragma once
// The optimizers' elementwise loops: body(begin, end) over [0, n) in chunks,
// over threads when n is large (small parameters stay on the calling thread:
// a fork/join would cost more than the update).
#include <algorithm>
#include <cstdint>

#include "loragrad/parallel.hpp"

namespace loragrad::optim::detail {

template <class F>
inline void for_each_chunk(int64_t n, F&& body) {
  constexpr int64_t kChunk = 1 << 14;
  if (n >= kParallelElements && !in_parallel()) {
    const int64_t n_chunks = (n + kChunk - 1) / kChunk;
    parallel_for(n_chunks, n, [&](int64_t c) { body(c * kChunk, std::min(n, (c + 1) * kChunk)); });
  } else {
    body(int64_t{0}, n);
  }
}

}  // namespace loragrad::optim::detail

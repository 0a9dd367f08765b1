#pragma once
// Memory accounting of tensor storage: how many bytes live tensors hold now,
// the most they held at once (the peak), and how many freed bytes the block
// cache keeps for reuse. Every tensor's bytes come from one Storage
// (tensor.hpp), so the counters are kept by Storage's constructor and
// destructor: exact, cheap (two atomic adds per allocation) and thread-safe.
//
// What is counted: each live Storage counts storage_bytes(n) for its n
// requested bytes, i.e. the block it actually holds: n rounded up to a
// multiple of 64 (the allocation alignment), and 64 for an empty tensor. Views
// that share a storage (reshape, detach, a SavedTensor) count once. So
// live_bytes() is the sum of storage_bytes(t.nbytes()) over distinct storages,
// at most 63 bytes per tensor above the sum of t.nbytes(), and
// live_bytes() + cached_bytes() is every byte the allocator has taken from the
// system and not returned.
//
// Not counted: memory that is not tensor storage, e.g. an NF4 weight's packed
// codes and scales (NF4Tensor holds std::vectors; see NF4Tensor::bytes()),
// GEMM packing buffers and other scratch.
//
//   memory::reset_peak();
//   loss = model.forward(...); loss.backward();
//   std::printf("peak %zu bytes\n", memory::peak_bytes());
#include <cstddef>

namespace loragrad::memory {

// Bytes held by live tensor storages now (rounded sizes, see above).
size_t live_bytes();
// The largest live_bytes() seen since the program started or the last
// reset_peak(). Under concurrent allocation it is the largest value any one
// allocation brought live_bytes() to.
size_t peak_bytes();
// Starts a new peak measurement: peak_bytes() = live_bytes() now.
void reset_peak();
// Freed blocks the block cache keeps for reuse (idle, NOT live tensor bytes).
size_t cached_bytes();
// Returns the block cache's idle blocks to the system (cached_bytes() becomes 0).
void release_cached();
// Live Storage objects now (a count, not bytes).
long long live_storages();
// The bytes a storage of `nbytes` requested bytes holds and is counted as:
// max(nbytes, 1) rounded up to a multiple of 64.
size_t storage_bytes(size_t nbytes);

// The process's peak resident set size in bytes (getrusage's ru_maxrss): all
// memory, not only tensors; it never goes down.
size_t peak_rss_bytes();

}  // namespace loragrad::memory

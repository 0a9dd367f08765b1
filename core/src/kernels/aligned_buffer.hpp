#pragma once
// A grow-only, 64-byte aligned buffer of T, for the GEMMs' packed panels. One
// per thread and purpose (thread_local; the pool's worker threads persist
// between calls), so repeated calls allocate nothing once the largest shape
// has been seen. Private to the kernels.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

namespace loragrad::kernels {

template <class T>
class AlignedBuffer {
 public:
  // At least n elements; the contents are not kept when it grows.
  T* get(int64_t n) {
    if (n > capacity_) {
      const size_t bytes = (static_cast<size_t>(n) * sizeof(T) + 63) / 64 * 64;
      T* p = static_cast<T*>(std::aligned_alloc(64, bytes));
      if (!p) throw std::bad_alloc();
      data_.reset(p);
      capacity_ = n;
    }
    return data_.get();
  }

 private:
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> data_;
  int64_t capacity_ = 0;
};

}  // namespace loragrad::kernels

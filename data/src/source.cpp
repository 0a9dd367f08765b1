// The parts of the data Source interface that every source shares.
#include "loragrad/data/source.hpp"

#include "loragrad/error.hpp"

namespace loragrad::data {

const char* split_name(Split s) { return s == Split::train ? "train" : "validation"; }

int64_t Batch::num_targets() const {
  const int64_t* t = y.data<int64_t>();  // (B, T)
  int64_t n = 0;
  for (int64_t i = 0; i < y.numel(); ++i) n += t[i] != kIgnoreIndex;
  return n;
}

std::vector<Batch> Source::fixed_batches(Split split, int64_t n_batches, int64_t batch, int64_t seq,
                                         uint64_t seed) const {
  if (n_batches < 1) throw ValueError("fixed_batches: n_batches must be >= 1, got " + std::to_string(n_batches));
  Generator gen(seed);
  std::vector<Batch> batches;
  batches.reserve(static_cast<size_t>(n_batches));
  for (int64_t i = 0; i < n_batches; ++i) batches.push_back(sample(split, batch, seq, gen));
  return batches;
}

}  // namespace loragrad::data

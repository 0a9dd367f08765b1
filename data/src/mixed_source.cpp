// MixedSource: a share of general rows in every training batch.
#include "loragrad/data/mixed_source.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "loragrad/error.hpp"

namespace loragrad::data {

MixedSource::MixedSource(const Source& primary, const Source& general, double fraction)
    : primary_(primary), general_(general), fraction_(fraction) {
  if (!(fraction >= 0.0 && fraction < 1.0))
    throw ValueError("MixedSource: the fraction must be in [0, 1), got " + std::to_string(fraction));
}

int64_t MixedSource::general_rows_before(int64_t batch, uint64_t n) const {
  return static_cast<int64_t>(std::floor(fraction_ * static_cast<double>(batch) * static_cast<double>(n) + 0.5));
}

int64_t MixedSource::general_rows(int64_t batch, uint64_t n) const {
  const int64_t k = general_rows_before(batch, n + 1) - general_rows_before(batch, n);
  return std::clamp<int64_t>(k, 0, batch);
}

uint64_t MixedSource::batch_number(const Generator& gen) {
  const uint64_t off = gen.offset();
  return off / kBlock + (off % kBlock != 0 ? 1 : 0);
}

Batch MixedSource::sample(Split split, int64_t batch, int64_t seq, Generator& gen) const {
  if (split == Split::validation) return primary_.sample(split, batch, seq, gen);
  if (batch < 1 || seq < 1)
    throw ValueError("MixedSource::sample: batch and seq must be >= 1, got batch " + std::to_string(batch) + ", seq " +
                     std::to_string(seq));
  const uint64_t n = batch_number(gen);
  if (n >= (uint64_t{1} << 32) - 1) throw ValueError("MixedSource::sample: the generator's counters are used up");
  const uint64_t start = n * kBlock;
  gen.set_offset(start);
  const int64_t k = general_rows(batch, n);
  Batch out;
  if (batch - k > 0) out = primary_.sample(split, batch - k, seq, gen);
  if (k > 0) {
    Batch g = general_.sample(Split::train, k, seq, gen);
    out = out.x.defined() ? concat_rows(out, g) : std::move(g);
  }
  if (gen.offset() - start > kBlock)
    throw ValueError("MixedSource::sample: a batch drew more than 2^32 numbers");  // not with any real batch
  gen.set_offset(start + kBlock);
  return out;
}

std::vector<Batch> MixedSource::fixed_batches(Split split, int64_t n_batches, int64_t batch, int64_t seq,
                                              uint64_t seed) const {
  return primary_.fixed_batches(split, n_batches, batch, seq, seed);
}

std::string MixedSource::cannot_sample(Split split, int64_t seq) const {
  std::string why = primary_.cannot_sample(split, seq);
  if (!why.empty() || split == Split::validation) return why;
  why = general_.cannot_sample(Split::train, seq);
  return why.empty() ? "" : "the mixed-in data: " + why;
}

Batch concat_rows(const Batch& a, const Batch& b) {
  const int64_t seq = a.x.size(1);
  if (b.x.size(1) != seq)
    throw ShapeError("concat_rows: rows of " + std::to_string(seq) + " and " + std::to_string(b.x.size(1)) +
                     " positions");
  const int64_t ra = a.x.size(0), rb = b.x.size(0);
  const bool packed = a.starts.defined() || b.starts.defined();
  Batch out;
  out.x = uninitialized({ra + rb, seq}, DType::i64);
  out.y = uninitialized({ra + rb, seq}, DType::i64);
  if (packed) out.starts = uninitialized({ra + rb, seq}, DType::i64);
  const size_t na = static_cast<size_t>(ra * seq), nb = static_cast<size_t>(rb * seq);
  auto copy = [](Tensor& dst, const Tensor& src, size_t at, size_t n) {
    int64_t* d = dst.data<int64_t>() + at;
    if (src.defined()) std::memcpy(d, src.data<int64_t>(), n * sizeof(int64_t));
    else std::fill(d, d + n, int64_t{0});  // a plain-text row: one causal context from position 0
  };
  copy(out.x, a.x, 0, na);
  copy(out.x, b.x, na, nb);
  copy(out.y, a.y, 0, na);
  copy(out.y, b.y, na, nb);
  if (packed) {
    copy(out.starts, a.starts, 0, na);
    copy(out.starts, b.starts, na, nb);
  }
  return out;
}

}  // namespace loragrad::data

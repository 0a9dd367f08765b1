#pragma once
// Data mixing: a share of general text in every training batch, so that an
// adaptation keeps seeing the kind of text the base was trained on (the
// "replay" that limits forgetting).
//
// MixedSource wraps the primary source (what is adapted to) and a general one
// with a fraction f in [0, 1). Of a train batch of B rows, k come whole from
// the general source's train split and B - k from the primary's:
//
//   - how many: the general rows of the first n batches number
//     round(f * B * n) (halves up), so batch n takes
//     k_n = round(f * B * (n + 1)) - round(f * B * n), which is
//     floor(f * B) or ceil(f * B): every batch is within one row of f * B,
//     and the long-run share is f exactly (f = 0.1, B = 8: 1 general row in
//     4 of every 5 batches, none in the fifth);
//   - where: the last k rows; the first B - k are the primary's, as its own
//     sample() would draw B - k rows (the primary first, then the general
//     rows, each stream's draws from gen);
//   - n, the batch's number, is gen's: each mixed batch draws inside its own
//     block of 2^32 counters of gen, [n * 2^32, (n + 1) * 2^32), and leaves
//     gen's offset at the next block. n is a function of the offset alone, so
//     the Trainer's checkpoint (generator offsets only) resumes the same
//     mixture bit for bit, and the batch's rows are a function of (seed, n).
//
// Packed rows: when either part has starts (instruction data), the merged
// batch has them, and a row of the other part gets starts 0 at every
// position (one causal context, all its targets count, as plain text is);
// when neither has, neither does the merged batch.
//
// The validation split is the primary's alone: sample(validation),
// fixed_batches, cannot_sample(validation), size and scored_bytes all
// delegate to it, so the new domain's validation loss means the same with or
// without mixing. The general rows come from the general source's train
// split only (its held-out part stays available to measure forgetting on).
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "loragrad/data/source.hpp"

namespace loragrad::data {

class MixedSource : public Source {
 public:
  // Counters of gen per mixed batch (see above).
  static constexpr uint64_t kBlock = uint64_t{1} << 32;

  // Both sources must outlive this one. ValueError unless fraction is in [0, 1).
  MixedSource(const Source& primary, const Source& general, double fraction);

  const Source& primary() const { return primary_; }
  const Source& general() const { return general_; }
  double fraction() const { return fraction_; }

  // General rows in batch n (from 0) of `batch` rows, and in the first n
  // batches: the rule above.
  int64_t general_rows(int64_t batch, uint64_t n) const;
  int64_t general_rows_before(int64_t batch, uint64_t n) const;
  // The number of the batch that sample() draws next with gen: the block gen's offset is in or at.
  static uint64_t batch_number(const Generator& gen);

  Batch sample(Split split, int64_t batch, int64_t seq, Generator& gen) const override;
  std::vector<Batch> fixed_batches(Split split, int64_t n_batches, int64_t batch, int64_t seq,
                                   uint64_t seed) const override;
  // The primary's reason, and for the train split the general's.
  std::string cannot_sample(Split split, int64_t seq) const override;
  int64_t size(Split split) const override { return primary_.size(split); }
  std::string_view scored_bytes(Split split) const override { return primary_.scored_bytes(split); }

 private:
  const Source& primary_;
  const Source& general_;
  double fraction_;
};

// Rows of a then rows of b, as one batch (x, y, and starts as described above).
Batch concat_rows(const Batch& a, const Batch& b);

}  // namespace loragrad::data

#pragma once
// Instruction (supervised fine-tuning) data: examples of a prompt and a
// response, trained on the response bytes only, several examples packed per
// sequence.
//
// One example is the bytes s = prompt + response, as inputs x = s[0 .. n-1]
// and targets y = s[1 .. n], n = |s| - 1. A target that is a prompt byte is
// kIgnoreIndex (-100, HF's label for "no loss here"): the loss is the mean
// over response bytes. An example longer than seq + 1 bytes keeps its first
// seq + 1 (right truncation, the end of the response is lost; the dataset
// counts them: stats()); one whose prompt alone fills the window keeps no
// response byte and is skipped.
//
// Packing: a row of seq positions holds as many whole examples as fit, one
// after another, the rest padded (x = 0, y = -100). Batch::starts records
// where each example begins, and TinyGPT computes every example as if it
// were alone (attention inside the example, positions from its start), so a
// packed row's summed loss equals the sum of its examples' losses computed
// one by one. HF's padding-free packing (DataCollatorWithFlattening with
// position_ids and FlashAttention's varlen kernel) does the same; TRL's
// older constant-length packing lets a later example attend to earlier ones.
#include <cstdint>
#include <string>
#include <vector>

#include "loragrad/data/jsonl.hpp"
#include "loragrad/data/source.hpp"

namespace loragrad::data {

// The positions an example fills in a row of seq: min(|prompt| + |response| - 1, seq).
int64_t packed_length(const Example& e, int64_t seq);
// Its targets that count (response bytes within the window).
int64_t packed_targets(const Example& e, int64_t seq);

// Packs examples into rows of seq positions, greedily and in order: an
// example goes into the current row when it fits (an empty row takes any
// example, truncated to seq), else it starts the next row. Examples without
// a target at this seq must not be passed. The building block of the
// datasets' batches; public for tests.
class Packer {
 public:
  Packer(int64_t rows, int64_t seq);
  // Places e in the current row; false (nothing placed) when the row is not
  // empty and e does not fit: call next_row(), then add e again.
  bool add(const Example& e);
  // Closes the current row; false when it was the last one.
  bool next_row();
  int64_t row() const { return row_; }
  bool row_empty() const { return cursor_ == 0; }
  // The batch: x, y, starts (rows, seq). Call once.
  Batch finish();

 private:
  int64_t rows_, seq_, row_ = 0, cursor_ = 0;
  std::vector<int64_t> x_, y_, starts_;  // (rows, seq) each
};

struct PackStats {
  int64_t examples = 0;   // in the split
  int64_t truncated = 0;  // longer than seq + 1 bytes: the end of the response is cut
  int64_t skipped = 0;    // no target: the prompt fills the window, or a single byte in all (empty prompt)
  int64_t truncated_skipped = 0;  // skipped ones that were truncated (the prompt fills the window)
  int64_t targets = 0;    // response bytes scored, after truncation
  std::string str() const;  // "120 examples, 3 truncated (1 without a response byte left, skipped)"
};

class InstructionDataset : public Source {
 public:
  // validation_fraction in [0, 1): the last floor(n * fraction) examples are
  // the validation split. ValueError on no examples or an empty response.
  explicit InstructionDataset(std::vector<Example> examples, double validation_fraction = 0.1);
  // read_jsonl(path); IOError naming the file and line on bad input.
  static InstructionDataset from_file(const std::string& path, double validation_fraction = 0.1);

  const std::vector<Example>& examples() const { return examples_; }
  int64_t num_examples(Split s) const;
  const Example& example(Split s, int64_t i) const;  // the split's i-th
  PackStats stats(Split s, int64_t seq) const;

  // `batch` rows packed with examples drawn uniformly (with replacement) from
  // the split's usable ones: each draw is gen.randint, so the stream is a
  // function of gen's offset. An example that does not fit starts the next
  // row; the one left over at the end of the batch is dropped.
  Batch sample(Split split, int64_t batch, int64_t seq, Generator& gen) const override;
  // Every usable example of the split once, in order, packed into rows, up to
  // n_batches batches of `batch` rows (the last may hold fewer rows); what
  // does not fit is left out. The seed is not used: nothing is drawn.
  std::vector<Batch> fixed_batches(Split split, int64_t n_batches, int64_t batch, int64_t seq,
                                   uint64_t seed) const override;
  std::string cannot_sample(Split split, int64_t seq) const override;
  int64_t size(Split s) const override;
  std::string_view scored_bytes(Split s) const override;

 private:
  std::vector<int64_t> usable(Split s, int64_t seq) const;  // indices into the split

  std::vector<Example> examples_;
  size_t n_train_;
  std::string responses_[2];  // each split's responses, concatenated (scored_bytes)
};

}  // namespace loragrad::data

#pragma once
// What the training loop draws batches from: a text (ByteDataset) or
// instruction examples (InstructionDataset), each split into a train and a
// validation part. The Trainer sees only this interface, so plain text and
// instruction data share one loop, one checkpoint format and one resume.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "loragrad/generator.hpp"
#include "loragrad/tensor.hpp"

namespace loragrad::data {

enum class Split { train, validation };
const char* split_name(Split s);  // "train", "validation"

// The target that the loss skips (PyTorch's and HF's ignore_index).
constexpr int64_t kIgnoreIndex = -100;

struct Batch {
  Tensor x;  // (B, T) i64 byte values: the inputs
  Tensor y;  // (B, T) i64: the next byte at each position, or kIgnoreIndex where nothing is learned
  // (B, T) i64, packed rows only: where the example holding each position
  // begins (TinyGPT::forward: attention and positions stay inside it).
  // Undefined for plain text: each row is one causal context.
  Tensor starts = Tensor();

  // Targets that count (y != kIgnoreIndex): the loss is their mean.
  int64_t num_targets() const;
};

class Source {
 public:
  virtual ~Source() = default;

  // `batch` rows of `seq` positions from the split, drawn with gen (only gen's
  // offset moves, so a checkpointed offset resumes the same stream).
  virtual Batch sample(Split split, int64_t batch, int64_t seq, Generator& gen) const = 0;

  // The same validation set at every evaluation: by default n_batches
  // batches sampled with a generator seeded with `seed`. Sources that can
  // enumerate their split (instruction examples) override it.
  virtual std::vector<Batch> fixed_batches(Split split, int64_t n_batches, int64_t batch, int64_t seq,
                                           uint64_t seed) const;

  // "" when sample(split, ., seq, .) can draw; otherwise why not, as a
  // sentence fragment ("the split holds 12 bytes; seq 64 needs at least 65").
  virtual std::string cannot_sample(Split split, int64_t seq) const = 0;

  // Bytes the split holds (a text's; all examples' prompt and response bytes).
  virtual int64_t size(Split split) const = 0;

  // The bytes the loss is measured on: the split's text, or its responses
  // (for the unigram baseline a model must beat).
  virtual std::string_view scored_bytes(Split split) const = 0;
};

}  // namespace loragrad::data

#pragma once
// A byte-level language-modelling dataset: the bytes of one text, split into
// a train part (the first 1 - validation_fraction of the bytes) and a
// validation part (the rest), sampled as random windows.
#include <cstdint>
#include <string>
#include <string_view>

#include "loragrad/data/source.hpp"
#include "loragrad/generator.hpp"
#include "loragrad/tensor.hpp"

namespace loragrad::data {

class ByteDataset : public Source {
 public:
  // validation_fraction in [0, 1); the validation part is the last
  // floor(size * validation_fraction) bytes. ValueError on an empty text.
  explicit ByteDataset(std::string text, double validation_fraction = 0.1);
  // The file's bytes; IOError naming the path if it cannot be read or is empty.
  static ByteDataset from_file(const std::string& path, double validation_fraction = 0.1);

  const std::string& text() const { return text_; }
  std::string_view bytes(Split s) const;  // the part's bytes (a view into text())
  int64_t size(Split s) const override { return static_cast<int64_t>(bytes(s).size()); }
  std::string_view scored_bytes(Split s) const override { return bytes(s); }

  // `batch` windows of seq + 1 consecutive bytes from the split, each starting
  // at a uniform random offset drawn from gen (reproducible for a given seed);
  // a window never crosses into the other split. ValueError if the split holds
  // fewer than seq + 1 bytes or batch, seq < 1. Every target counts (no -100)
  // and starts stays undefined.
  Batch sample(Split split, int64_t batch, int64_t seq, Generator& gen) const override;
  std::string cannot_sample(Split split, int64_t seq) const override;

  // The baseline loss: cross-entropy in nats per byte of the split's bytes
  // under the train split's byte frequencies with add-one smoothing,
  //   p(b) = (count_train(b) + 1) / (n_train + 256),   H = -mean_{b in split} log p(b).
  // This is the loss of a model that predicts every byte from the unigram
  // distribution alone; a language model must get below it.
  double unigram_entropy(Split split) const;

 private:
  std::string text_;
  size_t n_train_;
};

// -mean log p(b) over eval's bytes with p from train's add-one smoothed byte counts.
double unigram_cross_entropy(std::string_view train, std::string_view eval);
// -mean log p(b_i | b_{i-1}) over eval's byte pairs, p from train's add-one
// smoothed pair counts: p(b | a) = (count(a, b) + 1) / (count(a, *) + 256).
// A stronger baseline, and a cheap check of how two texts differ.
double bigram_cross_entropy(std::string_view train, std::string_view eval);

}  // namespace loragrad::data

// InstructionDataset: prompt-masked targets and packing.
#include "loragrad/data/instruction_dataset.hpp"

#include <algorithm>
#include <cmath>

#include "loragrad/error.hpp"

namespace loragrad::data {

int64_t packed_length(const Example& e, int64_t seq) {
  const int64_t n = static_cast<int64_t>(e.prompt.size() + e.response.size()) - 1;
  return std::min(std::max<int64_t>(n, 0), seq);
}

int64_t packed_targets(const Example& e, int64_t seq) {
  // Target i (0-based) is byte i + 1 of prompt + response: a response byte when i + 1 >= |prompt|.
  const int64_t first = std::max<int64_t>(static_cast<int64_t>(e.prompt.size()) - 1, 0);
  return std::max<int64_t>(packed_length(e, seq) - first, 0);
}

// ============================ Packer ============================

Packer::Packer(int64_t rows, int64_t seq) : rows_(rows), seq_(seq) {
  if (rows < 1 || seq < 1)
    throw ValueError("Packer: rows and seq must be >= 1, got rows " + std::to_string(rows) + ", seq " +
                     std::to_string(seq));
  const size_t n = static_cast<size_t>(rows * seq);
  x_.assign(n, 0);
  y_.assign(n, kIgnoreIndex);
  starts_.assign(n, 0);
}

bool Packer::add(const Example& e) {
  if (row_ >= rows_) throw ValueError("Packer::add: every row is closed");
  const int64_t len = packed_length(e, seq_);
  if (len < 1 || packed_targets(e, seq_) < 1)
    throw ValueError("Packer::add: the example has no response byte within seq " + std::to_string(seq_));
  if (cursor_ > 0 && cursor_ + len > seq_) return false;
  const std::string s = e.prompt + e.response;
  const int64_t first_target = std::max<int64_t>(static_cast<int64_t>(e.prompt.size()) - 1, 0);
  const int64_t base = row_ * seq_ + cursor_;
  for (int64_t i = 0; i < len; ++i) {
    x_[static_cast<size_t>(base + i)] = static_cast<unsigned char>(s[static_cast<size_t>(i)]);
    y_[static_cast<size_t>(base + i)] =
        i >= first_target ? static_cast<unsigned char>(s[static_cast<size_t>(i + 1)]) : kIgnoreIndex;
    starts_[static_cast<size_t>(base + i)] = cursor_;
  }
  cursor_ += len;
  return true;
}

bool Packer::next_row() {
  // Padding after the last example: its own segment (x = 0, y = -100), which
  // no earlier position can see under the causal mask.
  for (int64_t i = cursor_; i < seq_; ++i) starts_[static_cast<size_t>(row_ * seq_ + i)] = cursor_;
  ++row_;
  cursor_ = 0;
  return row_ < rows_;
}

Batch Packer::finish() {
  if (row_ < rows_ && cursor_ > 0) next_row();
  const int64_t rows = std::max<int64_t>(row_, 1);  // rows actually used
  const auto take = [&](const std::vector<int64_t>& v) {
    return from_indices(std::vector<int64_t>(v.begin(), v.begin() + rows * seq_), {rows, seq_});
  };
  Batch b;
  b.x = take(x_);       // (rows, seq)
  b.y = take(y_);       // (rows, seq)
  b.starts = take(starts_);  // (rows, seq)
  return b;
}

std::string PackStats::str() const {
  std::string s = std::to_string(examples) + " examples, " + std::to_string(targets) + " response bytes scored";
  // Skipped examples are usually truncated ones whose prompt fills the window;
  // a one-byte example (empty prompt, one response byte) has no target at any
  // seq and is skipped without being truncated.
  const int64_t short_skipped = skipped - truncated_skipped;
  if (truncated > 0) {
    s += ", " + std::to_string(truncated) + " truncated";
    if (truncated_skipped > 0) s += " (" + std::to_string(truncated_skipped) + " without a response byte left, skipped)";
  }
  if (short_skipped > 0)
    s += ", " + std::to_string(short_skipped) + " of a single byte (nothing to predict, skipped)";
  return s;
}

// ============================ InstructionDataset ============================

InstructionDataset::InstructionDataset(std::vector<Example> examples, double validation_fraction)
    : examples_(std::move(examples)) {
  if (examples_.empty()) throw ValueError("InstructionDataset: no examples");
  if (!(validation_fraction >= 0.0 && validation_fraction < 1.0))
    throw ValueError("InstructionDataset: validation_fraction must be in [0, 1), got " +
                     std::to_string(validation_fraction));
  for (size_t i = 0; i < examples_.size(); ++i)
    if (examples_[i].response.empty())
      throw ValueError("InstructionDataset: example " + std::to_string(i) + " has an empty response");
  const size_t n_val =
      static_cast<size_t>(std::floor(static_cast<double>(examples_.size()) * validation_fraction));
  n_train_ = examples_.size() - n_val;
  for (size_t i = 0; i < examples_.size(); ++i) responses_[i < n_train_ ? 0 : 1] += examples_[i].response;
}

InstructionDataset InstructionDataset::from_file(const std::string& path, double validation_fraction) {
  return InstructionDataset(read_jsonl(path), validation_fraction);
}

int64_t InstructionDataset::num_examples(Split s) const {
  return static_cast<int64_t>(s == Split::train ? n_train_ : examples_.size() - n_train_);
}

const Example& InstructionDataset::example(Split s, int64_t i) const {
  if (i < 0 || i >= num_examples(s))
    throw IndexError("InstructionDataset::example: index " + std::to_string(i) + " outside the " + split_name(s) +
                     " split's " + std::to_string(num_examples(s)) + " examples");
  return examples_[static_cast<size_t>(i) + (s == Split::train ? 0 : n_train_)];
}

PackStats InstructionDataset::stats(Split s, int64_t seq) const {
  PackStats st;
  st.examples = num_examples(s);
  for (int64_t i = 0; i < st.examples; ++i) {
    const Example& e = example(s, i);
    const int64_t targets = packed_targets(e, seq);
    const bool truncated = static_cast<int64_t>(e.prompt.size() + e.response.size()) - 1 > seq;
    st.truncated += truncated;
    st.skipped += targets == 0;
    st.truncated_skipped += truncated && targets == 0;
    st.targets += targets;
  }
  return st;
}

std::vector<int64_t> InstructionDataset::usable(Split s, int64_t seq) const {
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < num_examples(s); ++i)
    if (packed_targets(example(s, i), seq) > 0) idx.push_back(i);
  return idx;
}

std::string InstructionDataset::cannot_sample(Split split, int64_t seq) const {
  if (num_examples(split) == 0) return "the " + std::string(split_name(split)) + " split holds no examples";
  if (usable(split, seq).empty())
    return "none of the " + std::to_string(num_examples(split)) + " " + split_name(split) +
           " examples keeps a response byte within seq " + std::to_string(seq) +
           " (each prompt fills the window, or the example is a single byte)";
  return "";
}

Batch InstructionDataset::sample(Split split, int64_t batch, int64_t seq, Generator& gen) const {
  const std::string op = std::string("InstructionDataset::sample(") + split_name(split) + ")";
  if (batch < 1 || seq < 1)
    throw ValueError(op + ": batch and seq must be >= 1, got batch " + std::to_string(batch) + ", seq " +
                     std::to_string(seq));
  const std::string why = cannot_sample(split, seq);
  if (!why.empty()) throw ValueError(op + ": " + why);
  const std::vector<int64_t> pool = usable(split, seq);
  const int64_t n = static_cast<int64_t>(pool.size());
  Packer p(batch, seq);
  const Example* pending = nullptr;  // drawn, did not fit the last row: opens the next one
  do {
    for (;;) {
      const Example& e = pending ? *pending : example(split, pool[static_cast<size_t>(gen.randint(0, n))]);
      pending = nullptr;
      if (!p.add(e)) {
        pending = &e;
        break;
      }
    }
  } while (p.next_row());
  return p.finish();
}

std::vector<Batch> InstructionDataset::fixed_batches(Split split, int64_t n_batches, int64_t batch, int64_t seq,
                                                     uint64_t /*seed*/) const {
  if (n_batches < 1) throw ValueError("fixed_batches: n_batches must be >= 1, got " + std::to_string(n_batches));
  const std::vector<int64_t> pool = usable(split, seq);
  std::vector<Batch> out;
  size_t next = 0;
  while (next < pool.size() && static_cast<int64_t>(out.size()) < n_batches) {
    Packer p(batch, seq);
    bool open = true;
    while (open && next < pool.size()) {
      if (p.add(example(split, pool[next]))) ++next;
      else open = p.next_row();
    }
    out.push_back(p.finish());
  }
  return out;
}

int64_t InstructionDataset::size(Split s) const {
  int64_t n = 0;
  for (int64_t i = 0; i < num_examples(s); ++i) n += static_cast<int64_t>(example(s, i).prompt.size() + example(s, i).response.size());
  return n;
}

std::string_view InstructionDataset::scored_bytes(Split s) const { return responses_[s == Split::train ? 0 : 1]; }

}  // namespace loragrad::data

// ByteDataset and the unigram / bigram baselines.
#include "loragrad/data/byte_dataset.hpp"

#include <array>
#include <cmath>
#include <fstream>
#include <sstream>
#include <vector>

namespace loragrad::data {

ByteDataset::ByteDataset(std::string text, double validation_fraction) : text_(std::move(text)) {
  if (text_.empty()) throw ValueError("ByteDataset: the text is empty");
  if (!(validation_fraction >= 0.0 && validation_fraction < 1.0))
    throw ValueError("ByteDataset: validation_fraction must be in [0, 1), got " + std::to_string(validation_fraction));
  const size_t n_val = static_cast<size_t>(std::floor(static_cast<double>(text_.size()) * validation_fraction));
  n_train_ = text_.size() - n_val;
}

ByteDataset ByteDataset::from_file(const std::string& path, double validation_fraction) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IOError("ByteDataset::from_file: cannot open '" + path + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw IOError("ByteDataset::from_file: error reading '" + path + "'");
  std::string text = ss.str();
  if (text.empty()) throw IOError("ByteDataset::from_file: '" + path + "' is empty");
  return ByteDataset(std::move(text), validation_fraction);
}

std::string_view ByteDataset::bytes(Split s) const {
  const std::string_view all(text_);
  return s == Split::train ? all.substr(0, n_train_) : all.substr(n_train_);
}

Batch ByteDataset::sample(Split split, int64_t batch, int64_t seq, Generator& gen) const {
  const std::string op = std::string("ByteDataset::sample(") + split_name(split) + ")";
  if (batch < 1 || seq < 1)
    throw ValueError(op + ": batch and seq must be >= 1, got batch " + std::to_string(batch) + ", seq " +
                     std::to_string(seq));
  const std::string_view part = bytes(split);
  const int64_t n = static_cast<int64_t>(part.size());
  if (n < seq + 1)
    throw ValueError(op + ": the split has " + std::to_string(n) + " bytes, a window of seq " + std::to_string(seq) +
                     " needs " + std::to_string(seq + 1));
  Batch b;
  b.x = uninitialized({batch, seq}, DType::i64);
  b.y = uninitialized({batch, seq}, DType::i64);
  int64_t* x = b.x.data<int64_t>();  // (B, T)
  int64_t* y = b.y.data<int64_t>();  // (B, T)
  for (int64_t r = 0; r < batch; ++r) {
    const int64_t start = gen.randint(0, n - seq);  // the window is part[start, start + seq]
    const unsigned char* w = reinterpret_cast<const unsigned char*>(part.data()) + start;
    for (int64_t t = 0; t < seq; ++t) {
      x[r * seq + t] = w[t];
      y[r * seq + t] = w[t + 1];
    }
  }
  return b;
}

std::string ByteDataset::cannot_sample(Split split, int64_t seq) const {
  if (size(split) >= seq + 1) return "";
  return "the " + std::string(split_name(split)) + " text holds " + std::to_string(size(split)) + " bytes; seq " +
         std::to_string(seq) + " needs at least seq + 1";
}

double ByteDataset::unigram_entropy(Split split) const { return unigram_cross_entropy(bytes(Split::train), bytes(split)); }

double unigram_cross_entropy(std::string_view train, std::string_view eval) {
  if (eval.empty()) throw ValueError("unigram_cross_entropy: the evaluated text is empty");
  std::array<double, 256> count{};
  for (unsigned char c : train) count[c] += 1.0;
  const double denom = static_cast<double>(train.size()) + 256.0;
  double nll = 0.0;
  for (unsigned char c : eval) nll -= std::log((count[c] + 1.0) / denom);
  return nll / static_cast<double>(eval.size());
}

double bigram_cross_entropy(std::string_view train, std::string_view eval) {
  if (eval.size() < 2) throw ValueError("bigram_cross_entropy: the evaluated text needs at least 2 bytes");
  std::vector<double> pair(256 * 256, 0.0);  // (prev, next)
  std::array<double, 256> row{};             // count(prev, *)
  for (size_t i = 1; i < train.size(); ++i) {
    const unsigned char a = train[i - 1], b = train[i];
    pair[a * 256 + b] += 1.0;
    row[a] += 1.0;
  }
  double nll = 0.0;
  for (size_t i = 1; i < eval.size(); ++i) {
    const unsigned char a = eval[i - 1], b = eval[i];
    nll -= std::log((pair[a * 256 + b] + 1.0) / (row[a] + 256.0));
  }
  return nll / static_cast<double>(eval.size() - 1);
}

}  // namespace loragrad::data

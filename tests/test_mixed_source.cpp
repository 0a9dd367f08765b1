// Data mixing (issue 12, item 3) without a model: data::MixedSource's count
// of general rows per batch (within one row of f * batch, exact in the long
// run), where they go, where each row's bytes come from, determinism under
// the seed and from the generator's offset alone, and the packed rows
// (starts and masks) next to instruction data. The Trainer's resume with a
// mixture is in test_trainer; the --mix flag in test_cli_train.sh.
#define BOOST_TEST_MODULE mixed_source
#include <boost/test/unit_test.hpp>

#include <cmath>

#include "loragrad/data/byte_dataset.hpp"
#include "loragrad/data/instruction_dataset.hpp"
#include "loragrad/data/mixed_source.hpp"
#include "test_util.hpp"

using namespace loragrad;
using namespace loragrad::data;

namespace {

// A text of random bytes from `alphabet`: two texts on disjoint alphabets
// tell which source a row came from.
std::string random_text(const std::string& alphabet, size_t n, uint64_t seed) {
  Generator g(seed);
  std::string s(n, ' ');
  for (char& c : s) c = alphabet[static_cast<size_t>(g.randint(0, static_cast<int64_t>(alphabet.size())))];
  return s;
}

const ByteDataset& letters() {
  static const ByteDataset d(random_text("abcdefghijklmnopqrstuvwxyz", 4000, 1), 0.1);
  return d;
}
const ByteDataset& digits() {
  static const ByteDataset d(random_text("0123456789", 4000, 2), 0.1);
  return d;
}

// Row r of a batch as bytes: its inputs and its last target (the window).
std::string window(const Batch& b, int64_t r) {
  const int64_t T = b.x.size(1);
  const std::vector<int64_t> x = values(b.x), y = values(b.y);
  std::string s;
  for (int64_t t = 0; t < T; ++t) s += static_cast<char>(x[static_cast<size_t>(r * T + t)]);
  s += static_cast<char>(y[static_cast<size_t>(r * T + T - 1)]);
  return s;
}

bool is_digits(const std::string& s) { return s.find_first_not_of("0123456789") == std::string::npos; }

}  // namespace

// The issue's done-when: "mixing fractions are honoured within one example
// per batch". Every batch holds floor(f * B) or ceil(f * B) general rows, the
// first n batches round(f * B * n) of them, and they are the last rows.
BOOST_AUTO_TEST_CASE(fractions_are_honoured_within_one_row_per_batch) {
  const int64_t seq = 8;
  for (double f : {0.0, 0.1, 0.25, 1.0 / 3.0, 0.5, 0.6, 0.95}) {
    for (int64_t B : {1, 3, 8}) {
      BOOST_TEST_CONTEXT("f " << f << ", batch " << B) {
        const MixedSource mix(letters(), digits(), f);
        Generator gen(7);
        int64_t total = 0;
        const int64_t n_batches = 300;
        for (int64_t n = 0; n < n_batches; ++n) {
          BOOST_TEST(MixedSource::batch_number(gen) == static_cast<uint64_t>(n));
          const Batch b = mix.sample(Split::train, B, seq, gen);
          BOOST_REQUIRE(b.x.shape() == (Shape{B, seq}));
          BOOST_TEST(!b.starts.defined());  // plain text on both sides: no starts
          int64_t k = 0;
          for (int64_t r = 0; r < B; ++r) {
            const std::string w = window(b, r);
            const bool general = is_digits(w);
            // Whole rows, each a window of its own source's train split.
            if (general) BOOST_TEST(digits().bytes(Split::train).find(w) != std::string_view::npos);
            else BOOST_TEST(letters().bytes(Split::train).find(w) != std::string_view::npos);
            // The general rows are the last k.
            if (!general) BOOST_TEST(k == 0);
            k += general;
          }
          BOOST_TEST(k == mix.general_rows(B, static_cast<uint64_t>(n)));
          BOOST_TEST(std::abs(static_cast<double>(k) - f * static_cast<double>(B)) < 1.0);
          total += k;
          BOOST_TEST(total == static_cast<int64_t>(std::floor(f * B * static_cast<double>(n + 1) + 0.5)));
        }
        BOOST_TEST(std::abs(static_cast<double>(total) - f * static_cast<double>(B * n_batches)) <= 0.5);
      }
    }
  }
}

// A share below one row per batch does not vanish: 10% of 8 rows is one
// general row in 4 of every 5 batches.
BOOST_AUTO_TEST_CASE(a_share_below_one_row_still_mixes) {
  const MixedSource mix(letters(), digits(), 0.1);
  std::vector<int64_t> k;
  for (uint64_t n = 0; n < 10; ++n) k.push_back(mix.general_rows(8, n));
  BOOST_TEST(k == (std::vector<int64_t>{1, 1, 0, 1, 1, 1, 1, 0, 1, 1}));
  const MixedSource small(letters(), digits(), 0.02);  // 1 row in 50 batches of 1
  int64_t total = 0;
  for (uint64_t n = 0; n < 500; ++n) total += small.general_rows(1, n);
  BOOST_TEST(total == 10);
}

// The same seed draws the same batches; another seed others. Batch n depends
// on gen's offset alone (its block of counters): a generator moved to the
// offset a checkpoint holds continues the same stream.
BOOST_AUTO_TEST_CASE(deterministic_under_the_seed_and_the_offset) {
  const MixedSource mix(letters(), digits(), 0.3);
  auto draw = [&](uint64_t seed, int64_t n) {
    Generator g(seed);
    std::vector<std::vector<int64_t>> out;
    for (int64_t i = 0; i < n; ++i) out.push_back(values(mix.sample(Split::train, 5, 12, g).x));
    return std::make_pair(out, g.offset());
  };
  const auto [a, offset_a] = draw(3, 6);
  const auto [b, offset_b] = draw(3, 6);
  const auto [c, offset_c] = draw(4, 6);
  BOOST_TEST(a == b);
  BOOST_TEST(a != c);
  BOOST_TEST(offset_a == 6 * MixedSource::kBlock);

  // Resume at batch 2 from the offset alone.
  Generator g(3);
  g.set_offset(2 * MixedSource::kBlock);
  for (int64_t i = 2; i < 6; ++i) BOOST_TEST(values(mix.sample(Split::train, 5, 12, g).x) == a[static_cast<size_t>(i)]);
  // An offset inside a block (another draw shared the generator) moves on to the next block.
  Generator h(3);
  h.set_offset(MixedSource::kBlock + 5);
  BOOST_TEST(MixedSource::batch_number(h) == 2u);
  BOOST_TEST(values(mix.sample(Split::train, 5, 12, h).x) == a[2]);
}

// Instruction data as the primary: its rows are what its own sample() draws
// (packed, prompt-masked, with starts); the general rows have starts 0 at
// every position (one causal context) and every target counts.
BOOST_AUTO_TEST_CASE(instruction_primary_keeps_its_packing_and_general_rows_are_unmasked) {
  std::vector<Example> ex;
  for (int i = 0; i < 40; ++i) ex.push_back({"Q" + std::to_string(i) + "? ", "a" + std::to_string(i % 7) + ".\n"});
  const InstructionDataset ins(ex, 0.1);
  const int64_t B = 4, seq = 16;
  const MixedSource mix(ins, digits(), 0.5);
  Generator gen(11);
  for (uint64_t n = 0; n < 5; ++n) {
    const int64_t k = mix.general_rows(B, n);
    BOOST_REQUIRE(k == 2);
    Generator alone(11);
    alone.set_offset(n * MixedSource::kBlock);
    const Batch primary = ins.sample(Split::train, B - k, seq, alone);
    const Batch b = mix.sample(Split::train, B, seq, gen);
    BOOST_REQUIRE(b.starts.defined());
    BOOST_REQUIRE(b.x.shape() == (Shape{B, seq}));
    const std::vector<int64_t> x = values(b.x), y = values(b.y), s = values(b.starts);
    const std::vector<int64_t> px = values(primary.x), py = values(primary.y), ps = values(primary.starts);
    const size_t np = static_cast<size_t>((B - k) * seq);
    BOOST_TEST(std::vector<int64_t>(x.begin(), x.begin() + np) == px);
    BOOST_TEST(std::vector<int64_t>(y.begin(), y.begin() + np) == py);
    BOOST_TEST(std::vector<int64_t>(s.begin(), s.begin() + np) == ps);
    int64_t masked = 0;
    for (size_t i = 0; i < np; ++i) masked += py[i] == kIgnoreIndex;
    BOOST_TEST(masked > 0);  // prompts (and padding) stay masked
    for (int64_t r = B - k; r < B; ++r) {
      BOOST_TEST(is_digits(window(b, r)));
      for (int64_t t = 0; t < seq; ++t) {
        const size_t i = static_cast<size_t>(r * seq + t);
        BOOST_TEST(s[i] == 0);
        BOOST_TEST(y[i] != kIgnoreIndex);
        if (t + 1 < seq) BOOST_TEST(y[i] == x[i + 1]);
      }
    }
    BOOST_TEST(b.num_targets() == primary.num_targets() + k * seq);
  }
}

// Instruction data as the general source next to plain text: the merged
// batch has starts, 0 on the plain rows; the general rows keep their masks.
BOOST_AUTO_TEST_CASE(instruction_general_next_to_plain_text) {
  std::vector<Example> ex;
  for (int i = 0; i < 20; ++i) ex.push_back({"Q? ", "A" + std::to_string(i) + "\n"});
  const InstructionDataset ins(ex, 0.1);
  const MixedSource mix(letters(), ins, 0.25);
  Generator gen(5);
  const Batch b = mix.sample(Split::train, 4, 10, gen);  // k = 1
  BOOST_REQUIRE(b.starts.defined());
  const std::vector<int64_t> s = values(b.starts), y = values(b.y);
  for (size_t i = 0; i < 30; ++i) BOOST_TEST(s[i] == 0);
  for (size_t i = 0; i < 30; ++i) BOOST_TEST(y[i] != kIgnoreIndex);
  int64_t masked = 0;
  for (size_t i = 30; i < 40; ++i) masked += y[i] == kIgnoreIndex;
  BOOST_TEST(masked > 0);
}

// Validation is the primary's alone: the same batches, sizes and scored
// bytes as without mixing.
BOOST_AUTO_TEST_CASE(validation_stays_on_the_primary) {
  const MixedSource mix(letters(), digits(), 0.5);
  const std::vector<Batch> mixed = mix.fixed_batches(Split::validation, 3, 4, 8, 9);
  const std::vector<Batch> plain = letters().fixed_batches(Split::validation, 3, 4, 8, 9);
  BOOST_REQUIRE(mixed.size() == plain.size());
  for (size_t i = 0; i < plain.size(); ++i) BOOST_TEST(values(mixed[i].x) == values(plain[i].x));
  Generator g1(2), g2(2);
  BOOST_TEST(values(mix.sample(Split::validation, 4, 8, g1).x) == values(letters().sample(Split::validation, 4, 8, g2).x));
  BOOST_TEST(g1.offset() == g2.offset());
  for (Split s : {Split::train, Split::validation}) {
    BOOST_TEST(mix.size(s) == letters().size(s));
    BOOST_TEST(mix.scored_bytes(s) == letters().scored_bytes(s));
  }
}

BOOST_AUTO_TEST_CASE(what_cannot_be_sampled_is_said) {
  const ByteDataset tiny("0123456789", 0.0);
  const MixedSource mix(letters(), tiny, 0.5);
  BOOST_TEST(mix.cannot_sample(Split::train, 8) == "");
  const std::string why = mix.cannot_sample(Split::train, 32);
  BOOST_TEST(why.find("the mixed-in data") != std::string::npos);
  BOOST_TEST(mix.cannot_sample(Split::validation, 32) == "");  // validation does not mix
  BOOST_TEST(mix.cannot_sample(Split::train, 4000) == letters().cannot_sample(Split::train, 4000));
  for (double f : {-0.1, 1.0, 1.5, std::nan("")})
    check_throws<ValueError>([&] { MixedSource(letters(), digits(), f); }, {"fraction must be in [0, 1)"});
}

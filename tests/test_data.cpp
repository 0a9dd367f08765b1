// Byte datasets (splits, sampling, baselines) and the built-in corpora.
#define BOOST_TEST_MODULE data
#include <boost/test/unit_test.hpp>

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>

#include "loragrad/data/byte_dataset.hpp"
#include "loragrad/data/corpus.hpp"

using namespace loragrad;
using namespace loragrad::data;

template <class E>
static void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
    BOOST_FAIL("no exception; expected one naming " << parts.front());
  } catch (const E& e) {
    for (const std::string& p : parts)
      BOOST_TEST(std::string(e.what()).find(p) != std::string::npos, "'" << e.what() << "' lacks '" << p << "'");
  }
}

static std::vector<int64_t> row(const Tensor& t, int64_t r) {
  const int64_t T = t.size(1);
  const int64_t* p = t.data<int64_t>() + r * T;
  return std::vector<int64_t>(p, p + T);
}

static std::string as_text(const std::vector<int64_t>& ids) {
  std::string s;
  for (int64_t v : ids) s += static_cast<char>(v);
  return s;
}

// ---- ByteDataset ----

BOOST_AUTO_TEST_CASE(split_boundaries) {
  std::string text(1000, 'x');
  ByteDataset ds(text);  // default validation fraction 0.1
  BOOST_TEST(ds.size(Split::train) == 900);
  BOOST_TEST(ds.size(Split::validation) == 100);
  BOOST_TEST(ByteDataset(text, 0.25).size(Split::validation) == 250);
  BOOST_TEST(ByteDataset(text, 0.0).size(Split::validation) == 0);
  BOOST_TEST(ByteDataset("abcdefghij", 0.35).size(Split::validation) == 3);  // floor(3.5)

  ByteDataset letters("abcdefghij0123", 0.3);  // last floor(4.2) = 4 bytes
  BOOST_TEST(std::string(letters.bytes(Split::train)) == "abcdefghij");
  BOOST_TEST(std::string(letters.bytes(Split::validation)) == "0123");
}

BOOST_AUTO_TEST_CASE(sample_shapes_shift_and_determinism) {
  const std::string text = builtin_corpus(Domain::stories, 5000, 1);
  ByteDataset ds(text);
  Generator gen(42);
  const Batch b = ds.sample(Split::train, 4, 16, gen);
  BOOST_TEST(b.x.shape() == (Shape{4, 16}));
  BOOST_TEST(b.y.shape() == (Shape{4, 16}));
  BOOST_TEST(b.x.dtype() == DType::i64);
  BOOST_TEST(b.y.dtype() == DType::i64);
  const std::string train(ds.bytes(Split::train));
  for (int64_t r = 0; r < 4; ++r) {
    const std::vector<int64_t> x = row(b.x, r), y = row(b.y, r);
    for (int64_t t = 0; t + 1 < 16; ++t) BOOST_TEST(y[t] == x[t + 1]);
    // x followed by y's last byte is a window of the train text.
    const std::string window = as_text(x) + static_cast<char>(y.back());
    BOOST_TEST(train.find(window) != std::string::npos, "row " << r << " is not a window of the train split");
    for (int64_t v : x) BOOST_TEST((v >= 0 && v < 256));
  }

  Generator same(42), other(43);
  const Batch again = ds.sample(Split::train, 4, 16, same);
  BOOST_TEST(again.x.to_vector() == b.x.to_vector());
  BOOST_TEST(again.y.to_vector() == b.y.to_vector());
  BOOST_TEST(ds.sample(Split::train, 4, 16, other).x.to_vector() != b.x.to_vector());
  // The generator advances: the next batch differs.
  BOOST_TEST(ds.sample(Split::train, 4, 16, same).x.to_vector() != b.x.to_vector());
}

BOOST_AUTO_TEST_CASE(windows_never_cross_the_split) {
  // Train is letters ('A' first, 'Z' last), validation is digits: a train
  // window holding a digit (or the reverse) would be a leak.
  std::string text = "A";
  for (int i = 0; i < 268; ++i) text += static_cast<char>('a' + i % 26);
  text += "Z";
  for (int i = 0; i < 30; ++i) text += static_cast<char>('0' + i % 10);
  ByteDataset ds(text, 0.1);
  BOOST_REQUIRE(ds.size(Split::train) == 270);
  auto letter = [](double v) { return (v >= 'a' && v <= 'z') || v == 'A' || v == 'Z'; };
  Generator gen(7);
  bool saw_first_train_byte = false, saw_last_train_byte = false;
  for (int k = 0; k < 50; ++k) {
    const Batch tr = ds.sample(Split::train, 8, 200, gen);  // 70 possible starts
    for (double v : tr.x.to_vector()) BOOST_TEST(letter(v));
    for (double v : tr.y.to_vector()) BOOST_TEST(letter(v));
    for (int64_t r = 0; r < 8; ++r) {
      saw_first_train_byte = saw_first_train_byte || tr.x.at({r, 0}) == 'A';
      saw_last_train_byte = saw_last_train_byte || tr.y.at({r, 199}) == 'Z';
    }
    const Batch va = ds.sample(Split::validation, 8, 20, gen);
    for (double v : va.x.to_vector()) BOOST_TEST((v >= '0' && v <= '9'));
    for (double v : va.y.to_vector()) BOOST_TEST((v >= '0' && v <= '9'));
  }
  BOOST_TEST(saw_first_train_byte);  // windows reach both ends of the split
  BOOST_TEST(saw_last_train_byte);

  // The longest window (seq = size - 1) is the whole split.
  const Batch whole = ds.sample(Split::validation, 2, 29, gen);
  BOOST_TEST(as_text(row(whole.x, 1)) == text.substr(270, 29));
  BOOST_TEST(as_text(row(whole.y, 1)) == text.substr(271, 29));
}

BOOST_AUTO_TEST_CASE(dataset_errors) {
  ByteDataset ds(std::string(100, 'q'));  // train 90, validation 10
  Generator gen(0);
  expect_error<ValueError>([&] { ds.sample(Split::validation, 1, 10, gen); },
                           {"ByteDataset::sample(validation)", "10 bytes", "needs 11"});
  ds.sample(Split::validation, 1, 9, gen);  // exactly enough
  expect_error<ValueError>([&] { ds.sample(Split::train, 0, 4, gen); }, {"ByteDataset::sample(train)", "batch"});
  expect_error<ValueError>([&] { ds.sample(Split::train, 2, 0, gen); }, {"seq"});
  expect_error<ValueError>([] { ByteDataset(""); }, {"ByteDataset", "empty"});
  expect_error<ValueError>([] { ByteDataset("abc", 1.0); }, {"validation_fraction"});
  expect_error<ValueError>([] { ByteDataset("abc", -0.1); }, {"validation_fraction"});
  ByteDataset no_val("abcdef", 0.0);
  expect_error<ValueError>([&] { no_val.sample(Split::validation, 1, 1, gen); }, {"has 0 bytes"});
}

BOOST_AUTO_TEST_CASE(from_file_and_its_errors) {
  const std::string dir = "/tmp/loragrad_test_data_" + std::to_string(getpid());
  const std::string path = dir + "_text.txt", empty = dir + "_empty.txt";
  std::string bytes = "hello\n";
  bytes += '\0';
  bytes += "\xff world";  // binary-safe: every byte is a token
  { std::ofstream(path, std::ios::binary) << bytes; }
  { std::ofstream(empty, std::ios::binary); }
  const ByteDataset ds = ByteDataset::from_file(path, 0.0);
  BOOST_TEST(ds.text() == bytes);
  Generator gen(1);
  const Batch b = ds.sample(Split::train, 1, static_cast<int64_t>(bytes.size()) - 1, gen);
  BOOST_TEST(b.x.at({0, 6}) == 0.0);
  BOOST_TEST(b.x.at({0, 7}) == 255.0);
  expect_error<IOError>([&] { ByteDataset::from_file(empty); }, {empty, "empty"});
  expect_error<IOError>([&] { ByteDataset::from_file(dir + "_missing.txt"); }, {dir + "_missing.txt"});
  std::remove(path.c_str());
  std::remove(empty.c_str());
}

BOOST_AUTO_TEST_CASE(unigram_and_bigram_baselines_on_known_text) {
  // Train "aaaabbbb" (8 bytes), validation "cc". Add-one over 256 byte values:
  // p(a) = p(b) = 5/264, p(c) = 1/264.
  ByteDataset ds("aaaabbbbcc", 0.2);
  BOOST_TEST(std::abs(ds.unigram_entropy(Split::train) - std::log(264.0 / 5.0)) < 1e-12);
  BOOST_TEST(std::abs(ds.unigram_entropy(Split::validation) - std::log(264.0)) < 1e-12);
  // "abab": pairs ab, ba, ab; p(b | a) = (2 + 1) / (2 + 256).
  BOOST_TEST(std::abs(bigram_cross_entropy("abab", "ab") - std::log(258.0 / 3.0)) < 1e-12);
  // "abab" eval "aba": p(b|a) = 3/258, p(a|b) = (1 + 1) / (1 + 256).
  BOOST_TEST(std::abs(bigram_cross_entropy("abab", "aba") - 0.5 * (std::log(258.0 / 3.0) + std::log(257.0 / 2.0))) < 1e-12);
  expect_error<ValueError>([] { unigram_cross_entropy("abc", ""); }, {"unigram_cross_entropy"});
  expect_error<ValueError>([] { bigram_cross_entropy("abc", "a"); }, {"bigram_cross_entropy"});
}

// ---- built-in corpora ----

static const Domain kDomains[] = {Domain::stories, Domain::recipes, Domain::code};

BOOST_AUTO_TEST_CASE(corpus_is_deterministic_and_exact_length) {
  for (Domain d : kDomains) {
    const std::string a = builtin_corpus(d, 3000, 5);
    BOOST_TEST(a.size() == 3000u);
    BOOST_TEST(a == builtin_corpus(d, 3000, 5));
    BOOST_TEST(a != builtin_corpus(d, 3000, 6));
    BOOST_TEST(builtin_corpus(d, 1000, 5) == a.substr(0, 1000));  // a prefix of the longer text
    BOOST_TEST(builtin_corpus(d, 0, 5).empty());
    for (char c : a) BOOST_TEST(((c >= 32 && c < 127) || c == '\n'), domain_name(d) << ": byte " << int(c));
  }
  BOOST_TEST(builtin_corpus(Domain::stories, 100, 1) != builtin_corpus(Domain::recipes, 100, 1));
}

BOOST_AUTO_TEST_CASE(corpus_domains_look_like_their_names) {
  const std::string stories = builtin_corpus(Domain::stories, 4000, 2);
  BOOST_TEST(stories.rfind("Once upon a time, there was a ", 0) == 0);
  BOOST_TEST(stories.find("The end.\n\nOnce upon a time") != std::string::npos);
  const std::string recipes = builtin_corpus(Domain::recipes, 4000, 2);
  BOOST_TEST(recipes.rfind("Recipe: ", 0) == 0);
  BOOST_TEST(recipes.find("\nIngredients:\n- ") != std::string::npos);
  BOOST_TEST(recipes.find("\nSteps:\n1. ") != std::string::npos);
  const std::string code = builtin_corpus(Domain::code, 4000, 2);
  BOOST_TEST(code.rfind("def ", 0) == 0);
  BOOST_TEST(code.find("):\n    ") != std::string::npos);
  BOOST_TEST(code.find("\n    return ") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(domains_are_learnable_and_differ) {
  // Bigram models fit on 100 kB of each domain, evaluated on 20 kB of fresh
  // text (another seed): within a domain the bigram loss is far below the
  // unigram baseline (structure to learn), and a bigram of another domain
  // does far worse (distinct statistics to adapt to).
  std::vector<std::string> train, held_out;
  for (Domain d : kDomains) {
    train.push_back(builtin_corpus(d, 100000, 11));
    held_out.push_back(builtin_corpus(d, 20000, 12));
  }
  for (size_t e = 0; e < 3; ++e) {
    const double unigram = unigram_cross_entropy(train[e], held_out[e]);
    const double same = bigram_cross_entropy(train[e], held_out[e]);
    BOOST_TEST_MESSAGE(domain_name(kDomains[e]) << ": unigram " << unigram << ", bigram " << same);
    BOOST_TEST(unigram > 2.5);  // not trivial...
    BOOST_TEST(same < unigram - 0.8);  // ...but learnable
    for (size_t t = 0; t < 3; ++t) {
      if (t == e) continue;
      const double cross = bigram_cross_entropy(train[t], held_out[e]);
      BOOST_TEST_MESSAGE("  bigram of " << domain_name(kDomains[t]) << " on it: " << cross);
      BOOST_TEST(cross > same + 1.2, domain_name(kDomains[t]) << " -> " << domain_name(kDomains[e]) << ": " << cross
                                                              << " vs in-domain " << same);
    }
  }
}

BOOST_AUTO_TEST_CASE(domain_names) {
  for (Domain d : kDomains) BOOST_TEST((parse_domain(domain_name(d)) == d));
  expect_error<ValueError>([] { parse_domain("poems"); }, {"parse_domain", "'poems'", "stories, recipes or code"});
}

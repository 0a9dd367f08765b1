// Instruction data without a model: JSONL parsing and its errors, prompt
// masking and packing (Packer), InstructionDataset's splits, statistics and
// sampling, and the built-in recipe-qa task.
#define BOOST_TEST_MODULE instruction_data
#include <boost/test/unit_test.hpp>

#include <set>

#include "loragrad/data/corpus.hpp"
#include "loragrad/data/instruction_dataset.hpp"
#include "loragrad/data/jsonl.hpp"
#include "test_util.hpp"

using namespace loragrad;
using namespace loragrad::data;

namespace {

std::vector<int64_t> bytes_of(const std::string& s) {
  std::vector<int64_t> v;
  for (unsigned char c : s) v.push_back(c);
  return v;
}

constexpr int64_t M = kIgnoreIndex;

}  // namespace

// ---------------------------------------------------------------- JSONL

BOOST_AUTO_TEST_CASE(jsonl_lines_blank_lines_crlf_and_other_keys) {
  const std::string text =
      "{\"prompt\": \"Q: 2+2?\\nA: \", \"response\": \"4\\n\"}\n"
      "\n"
      "   \n"
      "{\"id\": 7, \"response\": \"caf\\u00e9\", \"prompt\": \"\"}\r\n"
      "{\"prompt\":\"a\",\"response\":\"b\"}";  // no final newline
  const std::vector<Example> ex = parse_jsonl(text, "t.jsonl");
  BOOST_REQUIRE_EQUAL(ex.size(), 3u);
  BOOST_TEST(ex[0].prompt == "Q: 2+2?\nA: ");
  BOOST_TEST(ex[0].response == "4\n");
  BOOST_TEST(ex[1].prompt == "");
  BOOST_TEST(ex[1].response == "caf\xc3\xa9");  // \u00e9 as UTF-8
  BOOST_TEST(ex[2].prompt == "a");
  BOOST_TEST(ex[2].response == "b");
}

// Bytes a JSON parser would refuse (invalid UTF-8) are data to a byte model:
// they come through byte for byte, next to valid multi-byte characters.
BOOST_AUTO_TEST_CASE(jsonl_keeps_invalid_utf8_as_bytes) {
  const std::string line = std::string("{\"prompt\": \"x\xff\xfe y\", \"response\": \"\xc3\xa9\x80\xc0\xaf") +
                           "\\n\xed\xa0\x80\xf4\x90\x80\x80 z\"}";
  const std::vector<Example> ex = parse_jsonl(line, "bytes.jsonl");
  BOOST_REQUIRE_EQUAL(ex.size(), 1u);
  BOOST_TEST(ex[0].prompt == std::string("x\xff\xfe y"));
  // \xc3\xa9 is valid (kept as it is); \x80, the overlong \xc0\xaf, the
  // surrogate \xed\xa0\x80 and \xf4\x90.. (above U+10FFFF) are invalid: kept as bytes.
  BOOST_TEST(ex[0].response == std::string("\xc3\xa9\x80\xc0\xaf\n\xed\xa0\x80\xf4\x90\x80\x80 z"));
  // A line holding both invalid bytes and the code points that carry them is refused, not misread.
  check_throws<IOError>([] { parse_jsonl("{\"prompt\": \"\xff\", \"response\": \"\xf4\x8f\xbe\x80\"}", "m.jsonl"); },
                        {"m.jsonl:1:", "U+10FF80"});
  // Without invalid bytes the same code point is just text.
  BOOST_TEST(parse_jsonl("{\"prompt\": \"\", \"response\": \"\xf4\x8f\xbe\x80\"}", "m.jsonl")[0].response ==
             "\xf4\x8f\xbe\x80");
}

BOOST_AUTO_TEST_CASE(jsonl_errors_name_the_file_line_and_key) {
  const std::string ok = "{\"prompt\": \"p\", \"response\": \"r\"}\n";
  check_throws<IOError>([] { parse_jsonl("", "e.jsonl"); }, {"e.jsonl", "no examples"});
  check_throws<IOError>([] { parse_jsonl("\n  \n\r\n", "e.jsonl"); }, {"e.jsonl", "no examples"});
  // Line numbers count blank lines too.
  check_throws<IOError>([&] { parse_jsonl(ok + "\n{\"prompt\": \"p\"}\n", "d.jsonl"); },
                        {"d.jsonl:3:", "missing key \"response\""});
  check_throws<IOError>([&] { parse_jsonl(ok + "{\"response\": \"r\"}", "d.jsonl"); },
                        {"d.jsonl:2:", "missing key \"prompt\""});
  check_throws<IOError>([&] { parse_jsonl("{\"prompt\": 3, \"response\": \"r\"}", "d.jsonl"); },
                        {"d.jsonl:1:", "key \"prompt\" must be a string, got a number"});
  check_throws<IOError>([&] { parse_jsonl("{\"prompt\": \"p\", \"response\": null}", "d.jsonl"); },
                        {"d.jsonl:1:", "key \"response\" must be a string, got null"});
  check_throws<IOError>([&] { parse_jsonl("{\"prompt\": \"p\", \"response\": [\"r\"]}", "d.jsonl"); },
                        {"d.jsonl:1:", "\"response\"", "an array"});
  check_throws<IOError>([&] { parse_jsonl(ok + ok + "{\"prompt\": \"p\", \"response\": \"r\",}", "d.jsonl"); },
                        {"d.jsonl:3:", "invalid JSON"});
  check_throws<IOError>([&] { parse_jsonl("[\"p\", \"r\"]", "d.jsonl"); }, {"d.jsonl:1:", "expected an object"});
  check_throws<IOError>([&] { parse_jsonl("{\"prompt\": \"p\", \"response\": \"\"}", "d.jsonl"); },
                        {"d.jsonl:1:", "\"response\" is empty"});
  // One object per line: a pretty-printed file is an error on its first line.
  check_throws<IOError>([&] { parse_jsonl("{\n\"prompt\": \"p\", \"response\": \"r\"}", "d.jsonl"); },
                        {"d.jsonl:1:", "invalid JSON"});
  // A number beyond double, even in a key loragrad ignores: nlohmann throws
  // out_of_range, not parse_error; found by fuzz_instruction_jsonl
  // (fuzz/corpus/instruction_jsonl/regress-number-1e400.jsonl).
  check_throws<IOError>([&] { parse_jsonl(ok + "{\"prompt\": \"p\", \"response\": \"r\", \"n\": 1e400}", "d.jsonl"); },
                        {"d.jsonl:2:", "invalid JSON", "number overflow", "1e400"});
}

BOOST_AUTO_TEST_CASE(jsonl_files) {
  TempDir tmp;
  write_bytes(tmp.file("a.jsonl"), "{\"prompt\": \"p\", \"response\": \"r\"}\n");
  BOOST_TEST(read_jsonl(tmp.file("a.jsonl")).size() == 1u);
  write_bytes(tmp.file("empty.jsonl"), "");
  check_throws<IOError>([&] { read_jsonl(tmp.file("empty.jsonl")); }, {"empty.jsonl", "no examples"});
  check_throws<IOError>([&] { read_jsonl(tmp.file("missing.jsonl")); }, {"missing.jsonl", "cannot open"});
  BOOST_TEST(is_jsonl_path("data/sft.jsonl"));
  BOOST_TEST(!is_jsonl_path("notes.txt"));
  BOOST_TEST(!is_jsonl_path(".jsonl"));
  BOOST_TEST(!is_jsonl_path("x.json"));
}

// ---------------------------------------------------------------- masking and packing

// The sequence of an example is prompt + response; x its bytes but the last,
// y the next byte with every prompt byte masked.
BOOST_AUTO_TEST_CASE(prompt_targets_are_masked) {
  Packer p(1, 8);
  BOOST_REQUIRE(p.add({"abc", "XY"}));  // s = abcXY: x = abcX, y = (b c masked) X Y
  const Batch b = p.finish();
  BOOST_TEST(values(b.x) == (std::vector<int64_t>{'a', 'b', 'c', 'X', 0, 0, 0, 0}));
  BOOST_TEST(values(b.y) == (std::vector<int64_t>{M, M, 'X', 'Y', M, M, M, M}));
  BOOST_TEST(values(b.starts) == (std::vector<int64_t>{0, 0, 0, 0, 4, 4, 4, 4}));  // the padding: a segment of its own
  BOOST_TEST(b.num_targets() == 2);
  // An empty prompt: the response's first byte has nothing to be predicted from.
  Packer q(1, 4);
  BOOST_REQUIRE(q.add({"", "wxyz"}));
  const Batch c = q.finish();
  BOOST_TEST(values(c.x) == (std::vector<int64_t>{'w', 'x', 'y', 0}));
  BOOST_TEST(values(c.y) == (std::vector<int64_t>{'x', 'y', 'z', M}));
  BOOST_TEST(packed_targets({"", "wxyz"}, 4) == 3);
}

BOOST_AUTO_TEST_CASE(packing_places_whole_examples_and_records_their_starts) {
  Packer p(2, 10);
  BOOST_TEST(p.add({"ab", "c"}));    // 2 positions
  BOOST_TEST(p.add({"de", "fgh"}));  // 4 positions: row 0 holds 6
  BOOST_TEST(!p.add({"ijk", "lmn"}));  // 5 more would make 11 > 10: refused, nothing placed
  BOOST_TEST(p.next_row());
  BOOST_TEST(p.add({"ijk", "lmn"}));
  BOOST_TEST(!p.next_row());  // the last row
  const Batch b = p.finish();
  BOOST_TEST(b.x.shape() == (Shape{2, 10}));
  BOOST_TEST(values(b.x) == (std::vector<int64_t>{'a', 'b', 'd', 'e', 'f', 'g', 0, 0, 0, 0,  //
                                                  'i', 'j', 'k', 'l', 'm', 0, 0, 0, 0, 0}));
  BOOST_TEST(values(b.y) == (std::vector<int64_t>{M, 'c', M, 'f', 'g', 'h', M, M, M, M,  //
                                                  M, M, 'l', 'm', 'n', M, M, M, M, M}));
  BOOST_TEST(values(b.starts) == (std::vector<int64_t>{0, 0, 2, 2, 2, 2, 6, 6, 6, 6,  //
                                                       0, 0, 0, 0, 0, 5, 5, 5, 5, 5}));
  BOOST_TEST(b.num_targets() == 1 + 3 + 3);
}

BOOST_AUTO_TEST_CASE(truncation_keeps_the_first_seq_plus_one_bytes) {
  // 3 + 6 bytes, seq 5: positions abcDE, targets (masked) (masked) D E F; G H I are cut.
  Packer p(1, 5);
  BOOST_TEST(p.add({"abc", "DEFGHI"}));
  const Batch b = p.finish();
  BOOST_TEST(values(b.x) == (std::vector<int64_t>{'a', 'b', 'c', 'D', 'E'}));
  BOOST_TEST(values(b.y) == (std::vector<int64_t>{M, M, 'D', 'E', 'F'}));
  // A prompt that fills the window leaves nothing to learn: refused.
  Packer q(1, 5);
  check_throws<ValueError>([&] { q.add({"abcdefgh", "X"}); }, {"no response byte within seq 5"});
  BOOST_TEST(packed_targets({"abcdef", "X"}, 5) == 0);  // the target X would be at position 5
  BOOST_TEST(packed_targets({"abcde", "X"}, 5) == 1);   // ... here it is at position 4
}

// ---------------------------------------------------------------- InstructionDataset

std::vector<Example> numbered(int n, int prompt_len = 3) {
  std::vector<Example> ex;
  for (int i = 0; i < n; ++i) ex.push_back({std::string(static_cast<size_t>(prompt_len), 'p'), "r" + std::to_string(i) + "."});
  return ex;
}

BOOST_AUTO_TEST_CASE(splits_are_by_examples) {
  InstructionDataset ds(numbered(10), 0.25);  // the last floor(2.5) = 2 validate
  BOOST_TEST(ds.num_examples(Split::train) == 8);
  BOOST_TEST(ds.num_examples(Split::validation) == 2);
  BOOST_TEST(ds.example(Split::validation, 0).response == "r8.");
  BOOST_TEST(std::string(ds.scored_bytes(Split::validation)) == "r8.r9.");
  BOOST_TEST(ds.size(Split::validation) == 2 * (3 + 3));
  check_throws<IndexError>([&] { ds.example(Split::validation, 2); }, {"2 examples"});
  check_throws<ValueError>([] { InstructionDataset(std::vector<Example>{}, 0.1); }, {"no examples"});
  check_throws<ValueError>([] { InstructionDataset(numbered(3), 1.0); }, {"validation_fraction"});
  check_throws<ValueError>([] { InstructionDataset({{"p", ""}}, 0.0); }, {"empty response"});
}

BOOST_AUTO_TEST_CASE(stats_count_truncated_and_skipped_examples) {
  // seq 6: "ppp" + "rN." is 6 bytes = 5 positions: whole. A prompt of 7 fills the window.
  std::vector<Example> ex = numbered(4);
  ex.push_back({"ppp", "a long answer"});  // truncated, keeps 3 response targets
  ex.push_back({"ppppppp", "x"});          // truncated, no response byte left: skipped
  const InstructionDataset ds(ex, 0.0);
  const PackStats st = ds.stats(Split::train, 6);
  BOOST_TEST(st.examples == 6);
  BOOST_TEST(st.truncated == 2);
  BOOST_TEST(st.skipped == 1);
  BOOST_TEST(st.targets == 4 * 3 + 4);  // "rN." each, and a long answer's first 4 bytes ("a lo": targets 2..5)
  BOOST_TEST(st.str() == "6 examples, 16 response bytes scored, 2 truncated (1 without a response byte left, skipped)");
  BOOST_TEST(ds.cannot_sample(Split::train, 6) == "");
  const InstructionDataset all_long({{"ppppppp", "x"}, {"pppppppp", "y"}}, 0.0);
  BOOST_TEST(all_long.cannot_sample(Split::train, 6).find("none of the 2 train examples keeps a response byte") == 0);
  check_throws<ValueError>([&] { Generator g(1); all_long.sample(Split::train, 2, 6, g); }, {"none of the 2"});
  // A single byte in all (empty prompt, one response byte) has nothing to
  // predict at any seq: skipped, said apart from the truncated ones.
  ex.push_back({"", "z"});
  const PackStats st1 = InstructionDataset(ex, 0.0).stats(Split::train, 6);
  BOOST_TEST(st1.skipped == 2);
  BOOST_TEST(st1.str() == "7 examples, 16 response bytes scored, 2 truncated (1 without a response byte left, skipped), "
                          "1 of a single byte (nothing to predict, skipped)");
  const InstructionDataset one_byte({{"", "a"}, {"", "b"}}, 0.0);
  BOOST_TEST(one_byte.cannot_sample(Split::train, 64).find("or the example is a single byte") != std::string::npos);
  BOOST_TEST(ds.cannot_sample(Split::validation, 6) == "the validation split holds no examples");
}

// Sampling packs random whole examples of the split, reproducibly, with a
// target in every row; validation batches take every example once, in order.
BOOST_AUTO_TEST_CASE(sampling_is_reproducible_and_rows_hold_whole_examples) {
  const InstructionDataset ds(recipe_questions(300, 5), 0.1);
  std::set<std::string> train_sequences;
  for (int64_t i = 0; i < ds.num_examples(Split::train); ++i)
    train_sequences.insert(ds.example(Split::train, i).prompt + ds.example(Split::train, i).response);
  Generator g(9);
  const Batch b = ds.sample(Split::train, 4, 128, g);
  BOOST_TEST(b.x.shape() == (Shape{4, 128}));
  BOOST_TEST(b.y.shape() == (Shape{4, 128}));
  BOOST_TEST(b.starts.shape() == (Shape{4, 128}));
  const std::vector<int64_t> x = values(b.x), y = values(b.y), st = values(b.starts);
  int64_t examples = 0;
  for (int64_t r = 0; r < 4; ++r) {
    int64_t row_targets = 0;
    for (int64_t t = 0; t < 128;) {  // each segment [t, end) is one example, or the padding
      const int64_t s = st[static_cast<size_t>(r * 128 + t)];
      BOOST_REQUIRE(s == t);
      int64_t end = t + 1;
      while (end < 128 && st[static_cast<size_t>(r * 128 + end)] == t) ++end;
      std::string seq;
      for (int64_t i = t; i < end; ++i) seq += static_cast<char>(x[static_cast<size_t>(r * 128 + i)]);
      const int64_t last_y = y[static_cast<size_t>(r * 128 + end - 1)];
      if (last_y != M) {  // an example: x then its last target make the whole sequence
        seq += static_cast<char>(last_y);
        BOOST_TEST(train_sequences.count(seq) == 1u, "row " << r << " holds '" << seq << "', not a train example");
        ++examples;
      }
      for (int64_t i = t; i < end; ++i) row_targets += y[static_cast<size_t>(r * 128 + i)] != M;
      t = end;
    }
    BOOST_TEST(row_targets > 0);
  }
  BOOST_TEST(examples >= 4 * 2);  // examples of <= 64 positions: at least two a row of 128
  Generator same(9);
  const Batch again = ds.sample(Split::train, 4, 128, same);
  BOOST_TEST(values(again.x) == x);
  BOOST_TEST(values(again.y) == y);
  BOOST_TEST(same.offset() == g.offset());  // the stream is the generator's offset: checkpointed, resumed

  // Validation: every example once, in order, until n_batches batches are full.
  const std::vector<Batch> val = ds.fixed_batches(Split::validation, 100, 4, 128, 0);
  int64_t targets = 0;
  for (const Batch& v : val) targets += v.num_targets();
  BOOST_TEST(targets == ds.stats(Split::validation, 128).targets);
  BOOST_TEST(val.back().x.size(0) <= 4);
  BOOST_TEST(ds.fixed_batches(Split::validation, 1, 2, 128, 0).size() == 1u);
  const Batch first = ds.fixed_batches(Split::validation, 1, 1, 128, 0)[0];
  const Example& e0 = ds.example(Split::validation, 0);
  const std::vector<int64_t> want = bytes_of(e0.prompt + e0.response);
  for (size_t i = 0; i + 1 < want.size(); ++i) BOOST_TEST(values(first.x)[i] == want[i]);
}

// ---------------------------------------------------------------- the built-in task

BOOST_AUTO_TEST_CASE(recipe_questions_are_short_deterministic_and_well_formed) {
  const std::vector<Example> a = recipe_questions(500, 1), b = recipe_questions(500, 1), c = recipe_questions(500, 2);
  BOOST_REQUIRE_EQUAL(a.size(), 500u);
  size_t same_as_c = 0;
  std::set<std::string> kinds;
  for (size_t i = 0; i < a.size(); ++i) {
    BOOST_TEST(a[i].prompt == b[i].prompt);
    BOOST_TEST(a[i].response == b[i].response);
    same_as_c += a[i].prompt == c[i].prompt;
    BOOST_TEST(a[i].prompt.size() + a[i].response.size() <= 65u, a[i].prompt << a[i].response);
    BOOST_TEST(a[i].prompt.rfind("Q: ", 0) == 0u);
    BOOST_TEST(a[i].prompt.substr(a[i].prompt.size() - 4) == "\nA: ");
    BOOST_TEST(a[i].response.back() == '\n');
    kinds.insert(a[i].prompt.substr(0, 8));
  }
  BOOST_TEST(same_as_c < 100u);
  // Whole in the default block (64 positions): nothing is truncated.
  BOOST_TEST(InstructionDataset(a, 0.0).stats(Split::train, 64).truncated == 0);
  // A few answers, by their rule.
  for (const Example& e : a) {
    if (e.prompt.find("Do you bake the") != std::string::npos) {
      const bool baked = e.prompt.find(" Pie?") != std::string::npos || e.prompt.find(" Bread?") != std::string::npos ||
                         e.prompt.find(" Cake?") != std::string::npos || e.prompt.find(" Tart?") != std::string::npos;
      BOOST_TEST(e.response == (baked ? "Yes, in the oven.\n" : "No, in a pan.\n"));
    }
    if (e.prompt.find(" serves ") != std::string::npos) {
      const size_t at = e.prompt.find(" serves ") + 8;
      BOOST_TEST(e.response == e.prompt.substr(at, 1) + " people.\n");
    }
  }
}

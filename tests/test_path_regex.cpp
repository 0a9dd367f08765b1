// PathRegex against Python's re (fixtures/regex/python_re.json, written by
// tests/reference/make_regex_fixtures.py), and the hostile patterns that
// crashed or hung std::regex.
#define BOOST_TEST_MODULE path_regex
#include <boost/test/unit_test.hpp>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "loragrad/error.hpp"
#include "loragrad/lora/path_regex.hpp"
#include "test_util.hpp"

using loragrad::ValueError;
using loragrad::lora::PathRegex;

BOOST_AUTO_TEST_CASE(agrees_with_python_re) {
  std::ifstream in(std::string(LORAGRAD_FIXTURE_DIR) + "/regex/python_re.json");
  BOOST_REQUIRE(in);
  const nlohmann::json j = nlohmann::json::parse(in);
  size_t checked = 0, refused = 0;
  for (const auto& c : j.at("cases")) {
    const std::string pattern = c.at("pattern");
    if (c.at("error").get<bool>()) {
      BOOST_CHECK_THROW(PathRegex(pattern, "test"), ValueError);
      ++refused;
      continue;
    }
    const std::string text = c.at("text");
    PathRegex re(pattern, "test");
    BOOST_CHECK_MESSAGE(re.full_match(text) == c.at("full").get<bool>(),
                        "fullmatch('" << pattern << "', '" << text << "')");
    BOOST_CHECK_MESSAGE(re.match(text) == c.at("match").get<bool>(), "match('" << pattern << "', '" << text << "')");
    ++checked;
  }
  BOOST_TEST(checked > 1500u);
  BOOST_TEST(refused > 20u);
}

BOOST_AUTO_TEST_CASE(errors_name_the_field_pattern_and_position) {
  check_throws<ValueError>([] { PathRegex("blocks\\.(0|1", "LoraConfig: target_modules"); },
                           {"LoraConfig: target_modules", "blocks\\.(0|1", "missing )", "position 8"});
  check_throws<ValueError>([] { PathRegex("a**", "f"); }, {"multiple repeat", "position 2"});
  check_throws<ValueError>([] { PathRegex("(a)\\1", "f"); }, {"back-references are not supported"});
  // Control bytes in the pattern are escaped in the message.
  check_throws<ValueError>([] { PathRegex("\x1b[31m(", "f"); }, {"\\x1b[31m("});
}

// The crash: 20,000 nested parentheses (a 40 KB config) overflowed the
// stack inside std::regex's compiler. Now: one clear error, at any depth.
BOOST_AUTO_TEST_CASE(deep_nesting_is_refused_not_a_crash) {
  for (size_t depth : {65u, 5000u, 20000u, 1000000u}) {
    const std::string p = std::string(depth, '(') + "q_proj" + std::string(depth, ')');
    check_throws<ValueError>([&] { PathRegex(p, "target_modules"); },
                             {"target_modules", depth > 4000 ? "longer than" : "nested deeper than 64"});
  }
  const std::string ok = std::string(64, '(') + "q_proj" + std::string(64, ')');
  BOOST_TEST(PathRegex(ok, "t").full_match("q_proj"));
  check_throws<ValueError>([] { PathRegex("(((a{1000}){1000}){1000})", "t"); }, {"pattern too large"});
  check_throws<ValueError>([] { PathRegex("a{99999999999999999999}", "t"); }, {"repetition count too large"});
}

// Backtracking engines take 2^n steps on these; an NFA simulation takes n.
BOOST_AUTO_TEST_CASE(catastrophic_patterns_match_in_linear_time) {
  const auto start = std::chrono::steady_clock::now();
  const std::string text(5000, 'a');
  for (const char* p : {"(a*)*b", "(a|a)*b", "((a+)+)+b", "(a|aa)*c", "(.*)*x", "(a?){50}a{50}b"})
    BOOST_TEST(!PathRegex(p, "t").full_match(text));
  BOOST_TEST(PathRegex("(a?){50}a{50}", "t").full_match(std::string(50, 'a')));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  BOOST_TEST(seconds < 5.0);  // minutes (or forever) with a backtracking engine
}

// What the programs share: the argument parser (loragrad/app/args.hpp) and the
// number formatting (loragrad/format.hpp) every table and report uses.
#define BOOST_TEST_MODULE test_app
#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "loragrad/app/args.hpp"
#include "loragrad/format.hpp"

using loragrad::app::Args;
using loragrad::app::UsageError;

namespace {

// argv for Args::parse: {"prog", words...}; parse(first = 1).
struct Argv {
  std::vector<std::string> words;
  std::vector<char*> ptrs;
  explicit Argv(std::vector<std::string> w) : words(std::move(w)) {
    words.insert(words.begin(), "prog");
    for (std::string& s : words) ptrs.push_back(s.data());
  }
  int argc() const { return static_cast<int>(ptrs.size()); }
  char** argv() { return ptrs.data(); }
};

Args example() {
  Args a("train", "train something", "");
  a.option("--steps", "N", "steps", "10");
  a.option("--lr", "X", "learning rate");
  a.option("--out", "DIR", "where");
  a.option("--targets", "LIST", "modules");
  a.repeatable("--tag", "T", "a tag");
  a.flag("--quiet", "no bars");
  return a;
}

// The UsageError message of parsing `words` then reading with `read`.
template <class Read>
std::string error_of(std::vector<std::string> words, Read read) {
  Args a = example();
  Argv v(std::move(words));
  try {
    a.parse(v.argc(), v.argv(), 1);
    read(a);
  } catch (const UsageError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

BOOST_AUTO_TEST_CASE(values_defaults_and_flags) {
  Args a = example();
  Argv v({"--lr=0.5", "--quiet", "--tag", "x", "--tag=y", "--targets", "q_proj,v_proj"});
  BOOST_TEST(a.parse(v.argc(), v.argv(), 1));
  BOOST_TEST(a.integer("--steps", 1, 100) == 10);  // the default
  BOOST_TEST(!a.given("--steps"));
  BOOST_TEST(a.has("--steps"));
  BOOST_TEST(a.real("--lr", 0, 1) == 0.5);
  BOOST_TEST(a.is_set("--quiet"));
  BOOST_TEST(!a.has("--out"));
  BOOST_TEST((a.all("--tag") == std::vector<std::string>{"x", "y"}));
  BOOST_TEST((a.list("--targets") == std::vector<std::string>{"q_proj", "v_proj"}));
}

BOOST_AUTO_TEST_CASE(every_mistake_is_one_usage_error_naming_the_flag) {
  auto nothing = [](const Args&) {};
  BOOST_TEST(error_of({"--nope"}, nothing) == "train: unknown flag '--nope' (see train --help)");
  BOOST_TEST(error_of({"stray"}, nothing).find("unexpected argument 'stray'") != std::string::npos);
  BOOST_TEST(error_of({"--quiet=1"}, nothing) == "train: --quiet takes no value");
  BOOST_TEST(error_of({"--steps"}, nothing) == "train: --steps expects a value (N)");
  BOOST_TEST(error_of({"--steps", "--quiet"}, nothing) == "train: --steps expects a value (N)");
  BOOST_TEST(error_of({"--out="}, nothing) == "train: --out expects a path (DIR), got ''");
  BOOST_TEST(error_of({"--steps", "1", "--steps", "2"}, nothing) == "train: --steps given twice");
  BOOST_TEST(error_of({}, [](const Args& a) { a.str("--out"); }) == "train: --out DIR is required");
  auto steps = [](const Args& a) { a.integer("--steps", 1, 100); };
  BOOST_TEST(error_of({"--steps", "ten"}, steps) == "train: --steps expects an integer, got 'ten'");
  BOOST_TEST(error_of({"--steps", "3x"}, steps) == "train: --steps expects an integer, got '3x'");
  BOOST_TEST(error_of({"--steps", "0"}, steps) == "train: --steps must be in [1, 100], got 0");
  BOOST_TEST(error_of({"--steps", "99999999999999999999"}, steps) ==
             "train: --steps must be in [1, 100], got 99999999999999999999");
  auto lr = [](const Args& a) { a.real("--lr", 0, 1, true); };
  BOOST_TEST(error_of({"--lr", "nan"}, lr) == "train: --lr expects a finite number, got 'nan'");
  BOOST_TEST(error_of({"--lr", " 1"}, lr) == "train: --lr expects a finite number, got ' 1'");
  BOOST_TEST(error_of({"--lr", "1"}, lr) == "train: --lr must be in [0, 1), got 1");
  BOOST_TEST(error_of({"--lr", "1e-400"}, lr).empty());  // underflow rounds to 0: in range
  auto targets = [](const Args& a) { a.list("--targets"); };
  BOOST_TEST(error_of({"--targets", "a,,b"}, targets).find("comma-separated") != std::string::npos);
  BOOST_TEST(error_of({"--targets", "a,"}, targets).find("comma-separated") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(help_names_the_program) {
  Args sub("finetune", "adapt");  // a loragrad subcommand
  Args own("demo", "the demo", "");  // a program of its own
  BOOST_TEST(sub.usage().rfind("usage: loragrad finetune [flags]\n", 0) == 0);
  BOOST_TEST(own.usage().rfind("usage: demo [flags]\n", 0) == 0);
  Args a = example();
  const std::string u = a.usage();
  BOOST_TEST(u.find("--steps N") != std::string::npos);
  BOOST_TEST(u.find("(default 10)") != std::string::npos);
  BOOST_TEST(u.find("(repeatable)") != std::string::npos);
  BOOST_TEST(u.rfind("--help") > u.rfind("--quiet"));  // --help last
  Argv v({"--help"});
  BOOST_TEST(!a.parse(v.argc(), v.argv(), 1));  // prints usage; the caller exits 0
}

BOOST_AUTO_TEST_CASE(numbers_as_people_read_them) {
  using loragrad::fixed, loragrad::with_commas, loragrad::format_bytes;
  BOOST_TEST(fixed(3.14159, 2) == "3.14");
  BOOST_TEST(fixed(-0.5, 0) == "-0");  // printf's rounding, kept
  BOOST_TEST(with_commas(0) == "0");
  BOOST_TEST(with_commas(999) == "999");
  BOOST_TEST(with_commas(1000) == "1,000");
  BOOST_TEST(with_commas(1234567) == "1,234,567");
  BOOST_TEST(with_commas(-1234567) == "-1,234,567");
  BOOST_TEST(with_commas(std::numeric_limits<int64_t>::min()) == "-9,223,372,036,854,775,808");
  BOOST_TEST(format_bytes(0) == "0 B");
  BOOST_TEST(format_bytes(1023) == "1023 B");
  BOOST_TEST(format_bytes(1024) == "1.00 KiB");
  BOOST_TEST(format_bytes(12 * 1024) == "12.0 KiB");
  BOOST_TEST(format_bytes(1.5 * 1024 * 1024) == "1.50 MiB");
  BOOST_TEST(format_bytes(264.4 * 1024 * 1024) == "264 MiB");
  BOOST_TEST(format_bytes(9.999 * 1024) == "10.0 KiB");   // rounds into the next precision, never "10.00"
  BOOST_TEST(format_bytes(99.97 * 1024) == "100 KiB");
  BOOST_TEST(format_bytes(2.0 * 1024 * 1024 * 1024) == "2.00 GiB");
}

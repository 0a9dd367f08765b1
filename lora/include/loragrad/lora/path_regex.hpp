#pragma once
// Regular expressions over module paths, as PEFT's configs write them
// (target_modules / exclude_modules as one string, rank_pattern and
// alpha_pattern keys): the subset of Python's `re` that such patterns use,
// giving re.fullmatch's and re.match's answers.
//
// Why not std::regex: the patterns come from files (adapter_config.json), and
// libstdc++'s engine recurses once per nesting level and per pattern term when
// compiling and backtracks exponentially when matching: a 40 KB config nested
// 20,000 deep overflowed the stack. Here parsing recurses only per group
// nesting level, capped at kMaxNesting; matching is Thompson's NFA simulation
// (Russ Cox, "Regular Expression Matching Can Be Simple And Fast"): no
// recursion, time O(pattern states x path length) whatever the pattern.
//
// Supported: literals, '.', escapes (\d \D \w \W \s \S, \. and other escaped
// punctuation, \n \t \r \f \v \a \0 \xHH, \A \Z), classes [a-z_] [^.] with
// escapes, groups ( ) (?: ) (?P<name> ), alternation |, anchors ^ $,
// quantifiers * + ? {m} {m,} {,n} {m,n}, each optionally lazy (?): laziness
// cannot change whether a match exists. Refused with a clear error:
// back-references, look-arounds, inline flags, possessive quantifiers, \b \B,
// \u \U \N. Bytes are matched as bytes: module paths are ASCII.
#include <bitset>
#include <cstdint>
#include <string>
#include <vector>

namespace loragrad::lora {

class PathRegex {
 public:
  static constexpr size_t kMaxPatternBytes = 8192;  // longer than any list of module names
  static constexpr int kMaxNesting = 64;            // groups inside groups
  static constexpr size_t kMaxStates = 100000;      // NFA size after expanding {m,n}

  // Throws ValueError "<field> regex '<pattern>': <problem> at position N"
  // (the pattern escaped and shortened for the message).
  PathRegex(const std::string& pattern, const std::string& field);

  bool full_match(const std::string& text) const;  // re.fullmatch(pattern, text) is not None
  bool match(const std::string& text) const;       // re.match: anchored at the start, any end

  // One NFA instruction.
  struct Inst {
    enum Op : uint8_t { kByteSet, kSplit, kJump, kAssertBegin, kAssertEnd, kAssertEndOfString, kMatch };
    Op op = kMatch;
    int x = 0, y = 0;  // kSplit: both targets; kJump: x; kByteSet: x indexes sets_
  };

 private:
  bool run(const std::string& text, bool whole) const;

  std::vector<Inst> prog_;             // prog_[0] is the start; one kMatch, last
  std::vector<std::bitset<256>> sets_; // the bytes each kByteSet accepts
};

}  // namespace loragrad::lora

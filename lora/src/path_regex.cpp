// PathRegex: parse Python `re` syntax into a small tree, compile the tree to
// an NFA program (Thompson's construction), run it as a set of threads that
// advance one byte at a time (Pike's VM without captures).
#include "loragrad/lora/path_regex.hpp"

#include <cctype>
#include <utility>

#include "loragrad/error.hpp"

namespace loragrad::lora {

namespace {

using ByteSet = std::bitset<256>;
constexpr int kUnbounded = -1;

struct Node {
  enum Kind { kSet, kConcat, kAlt, kRepeat, kBegin, kEnd, kEndOfString } kind;
  explicit Node(Kind k) : kind(k) {}
  int set = -1;              // kSet: index into the set table
  std::vector<Node> kids;    // kConcat / kAlt: the parts; kRepeat: the one repeated
  int min = 0, max = 0;      // kRepeat; max may be kUnbounded
};

ByteSet range(int lo, int hi) {
  ByteSet s;
  for (int c = lo; c <= hi; ++c) s.set(static_cast<size_t>(c));
  return s;
}
ByteSet digits() { return range('0', '9'); }
ByteSet word() { return range('a', 'z') | range('A', 'Z') | digits() | range('_', '_'); }
ByteSet space() {  // str.isspace on ASCII: \t \n \v \f \r, the separators \x1c-\x1f, and ' '
  return range('\t', '\r') | range(0x1c, 0x1f) | range(' ', ' ');
}

// Recursive descent over the pattern; recursion only at '(' (bounded by kMaxNesting).
class Parser {
 public:
  Parser(const std::string& p, std::vector<ByteSet>& sets, std::string field)
      : p_(p), sets_(sets), field_(std::move(field)) {}

  Node parse() {
    Node n = alternation(0);
    if (pos_ < p_.size()) fail("unbalanced parenthesis", pos_);  // only ')' stops alternation early
    return n;
  }

  [[noreturn]] void fail(const std::string& problem, size_t at) const {
    std::string shown = printable(p_.substr(0, 120));
    if (p_.size() > 120) shown += "... (" + std::to_string(p_.size()) + " bytes)";
    throw ValueError(field_ + " regex '" + shown + "': " + problem + " at position " + std::to_string(at));
  }

 private:
  bool at_end() const { return pos_ >= p_.size(); }
  char peek() const { return p_[pos_]; }
  bool eat(char c) {
    if (at_end() || peek() != c) return false;
    ++pos_;
    return true;
  }
  Node leaf(const ByteSet& s) {
    sets_.push_back(s);
    Node n(Node::kSet);
    n.set = static_cast<int>(sets_.size()) - 1;
    return n;
  }

  Node alternation(int depth) {
    Node alt(Node::kAlt);
    alt.kids.push_back(concatenation(depth));
    while (eat('|')) alt.kids.push_back(concatenation(depth));
    return alt.kids.size() == 1 ? std::move(alt.kids[0]) : alt;
  }

  Node concatenation(int depth) {
    Node cat(Node::kConcat);
    while (!at_end() && peek() != '|' && peek() != ')') {
      const size_t here = pos_;
      const char c = p_[pos_];
      if (c == '*' || c == '+' || c == '?' || (c == '{' && quantifier_follows())) {
        int lo = 0, hi = 0;
        quantifier(lo, hi);
        if (cat.kids.empty() || cat.kids.back().kind == Node::kBegin || cat.kids.back().kind == Node::kEnd ||
            cat.kids.back().kind == Node::kEndOfString)
          fail("nothing to repeat", here);
        if (last_was_quantified_) fail("multiple repeat", here);
        if (eat('?')) {
          // lazy: same set of matches
        } else if (!at_end() && peek() == '+') {
          fail("possessive quantifiers are not supported", pos_);
        }
        Node rep(Node::kRepeat);
        rep.min = lo;
        rep.max = hi;
        rep.kids.push_back(std::move(cat.kids.back()));
        cat.kids.back() = std::move(rep);
        last_was_quantified_ = true;
        continue;
      }
      cat.kids.push_back(atom(depth));
      last_was_quantified_ = false;
    }
    last_was_quantified_ = false;
    return cat;
  }

  // Python reads '{' as a quantifier only as {m}, {m,}, {,n}, {m,n} or {,}; otherwise it is a literal.
  bool quantifier_follows() const {
    size_t i = pos_ + 1;
    while (i < p_.size() && std::isdigit(static_cast<unsigned char>(p_[i]))) ++i;
    if (i < p_.size() && p_[i] == ',') {
      ++i;
      while (i < p_.size() && std::isdigit(static_cast<unsigned char>(p_[i]))) ++i;
    }
    return i < p_.size() && p_[i] == '}' && i != pos_ + 1;  // "{}" is two literals
  }

  int number(size_t from, size_t to) const {
    long v = 0;
    for (size_t i = from; i < to; ++i) {
      v = v * 10 + (p_[i] - '0');
      if (v > static_cast<long>(PathRegex::kMaxStates)) fail("repetition count too large", from);
    }
    return static_cast<int>(v);
  }

  void quantifier(int& lo, int& hi) {
    const char c = p_[pos_++];
    if (c == '*') { lo = 0; hi = kUnbounded; return; }
    if (c == '+') { lo = 1; hi = kUnbounded; return; }
    if (c == '?') { lo = 0; hi = 1; return; }
    const size_t start = pos_ - 1;
    size_t a = pos_;
    while (std::isdigit(static_cast<unsigned char>(p_[pos_]))) ++pos_;
    const size_t a_end = pos_;
    lo = a_end > a ? number(a, a_end) : 0;
    if (eat(',')) {
      const size_t b = pos_;
      while (std::isdigit(static_cast<unsigned char>(p_[pos_]))) ++pos_;
      hi = pos_ > b ? number(b, pos_) : kUnbounded;
    } else {
      hi = lo;
    }
    ++pos_;  // '}'
    if (hi != kUnbounded && hi < lo) fail("min repeat greater than max repeat", start + 1);
  }

  Node atom(int depth) {
    const size_t here = pos_;
    const char c = p_[pos_++];
    switch (c) {
      case '(': return group(depth, here);
      case '[': return bracket(here);
      case '.': return leaf(~range('\n', '\n'));
      case '^': return Node(Node::kBegin);
      case '$': return Node(Node::kEnd);
      case '\\': return escape(here);
      default: return leaf(range(static_cast<unsigned char>(c), static_cast<unsigned char>(c)));
    }
  }

  Node group(int depth, size_t here) {
    if (depth + 1 > PathRegex::kMaxNesting)
      fail("groups nested deeper than " + std::to_string(PathRegex::kMaxNesting), here);
    if (eat('?')) {
      if (eat(':')) {
        // non-capturing
      } else if (eat('P') && eat('<')) {
        while (!at_end() && (std::isalnum(static_cast<unsigned char>(peek())) || peek() == '_')) ++pos_;
        if (!eat('>')) fail("bad group name", here);
      } else {
        fail("'(?" + printable(p_.substr(here + 2, 1)) +
                 "' (look-around, flags, back-reference or comment) is not supported",
             here);
      }
    }
    Node inner(Node::kConcat);  // a group is one item: "(^)*" repeats it, "^*" has nothing to repeat
    inner.kids.push_back(alternation(depth + 1));
    if (!eat(')')) fail("missing ), unterminated subpattern", here);
    return inner;
  }

  // The byte an escape stands for, or false with `set` filled for \d \w \s and friends.
  bool escaped_byte(size_t here, bool in_class, int& byte, ByteSet& set) {
    if (at_end()) fail("bad escape (end of pattern)", here);
    const char e = p_[pos_++];
    switch (e) {
      case 'd': set = digits(); return false;
      case 'D': set = ~digits(); return false;
      case 'w': set = word(); return false;
      case 'W': set = ~word(); return false;
      case 's': set = space(); return false;
      case 'S': set = ~space(); return false;
      case 'n': byte = '\n'; return true;
      case 't': byte = '\t'; return true;
      case 'r': byte = '\r'; return true;
      case 'f': byte = '\f'; return true;
      case 'v': byte = '\v'; return true;
      case 'a': byte = '\a'; return true;
      case '0': {  // up to two more octal digits
        int v = 0;
        for (int k = 0; k < 2 && !at_end() && peek() >= '0' && peek() <= '7'; ++k) v = v * 8 + (p_[pos_++] - '0');
        byte = v;
        return true;
      }
      case 'x': {
        int v = 0;
        for (int k = 0; k < 2; ++k) {
          if (at_end() || !std::isxdigit(static_cast<unsigned char>(peek()))) fail("incomplete escape \\x", here);
          const char h = p_[pos_++];
          v = v * 16 + (std::isdigit(static_cast<unsigned char>(h)) ? h - '0' : (std::tolower(h) - 'a' + 10));
        }
        byte = v;
        return true;
      }
      case 'b':
        if (in_class) { byte = '\b'; return true; }
        fail("\\b (word boundary) is not supported", here);
      case 'B': case 'u': case 'U': case 'N':
        if (!in_class || e != 'B') fail("\\" + std::string(1, e) + " is not supported", here);
        break;
      default:
        break;
    }
    const auto octal = [&](size_t i) { return i < p_.size() && p_[i] >= '0' && p_[i] <= '7'; };
    if (e >= '1' && e <= '7' && octal(pos_) && octal(pos_ + 1)) {  // \141: three octal digits are a byte
      const int v = (e - '0') * 64 + (p_[pos_] - '0') * 8 + (p_[pos_ + 1] - '0');
      if (v > 0377) fail("octal escape value outside of range 0-0o377", here);
      pos_ += 2;
      byte = v;
      return true;
    }
    if (e >= '1' && e <= '9') fail("back-references are not supported", here);
    if (std::isalpha(static_cast<unsigned char>(e)) && static_cast<unsigned char>(e) < 128)
      fail("bad escape \\" + std::string(1, e), here);
    byte = static_cast<unsigned char>(e);  // escaped punctuation (or a non-ASCII byte) is itself
    return true;
  }

  Node escape(size_t here) {
    if (!at_end() && (peek() == 'A' || peek() == 'Z')) {
      return Node(p_[pos_++] == 'A' ? Node::kBegin : Node::kEndOfString);
    }
    int byte = 0;
    ByteSet set;
    if (escaped_byte(here, false, byte, set)) return leaf(range(byte, byte));
    return leaf(set);
  }

  Node bracket(size_t here) {
    const bool negate = eat('^');
    const size_t first = pos_;
    ByteSet set;
    for (;;) {
      if (at_end()) fail("unterminated character set", here);
      const size_t item = pos_;
      if (peek() == ']' && pos_ != first) { ++pos_; break; }
      int lo = 0;
      ByteSet category;
      bool is_byte = true;
      if (eat('\\')) is_byte = escaped_byte(item, true, lo, category);
      else lo = static_cast<unsigned char>(p_[pos_++]);
      // A range "x-y", unless the '-' is last ("[a-]").
      if (pos_ + 1 < p_.size() && peek() == '-' && p_[pos_ + 1] != ']') {
        ++pos_;
        int hi = 0;
        ByteSet hi_category;
        bool hi_is_byte = true;
        if (eat('\\')) hi_is_byte = escaped_byte(pos_ - 1, true, hi, hi_category);
        else hi = static_cast<unsigned char>(p_[pos_++]);
        if (!is_byte || !hi_is_byte || hi < lo)
          fail("bad character range " + printable(p_.substr(item, pos_ - item)), item);
        set |= range(lo, hi);
        continue;
      }
      set |= is_byte ? range(lo, lo) : category;
    }
    return leaf(negate ? ~set : set);
  }

  const std::string& p_;
  std::vector<ByteSet>& sets_;
  std::string field_;
  size_t pos_ = 0;
  bool last_was_quantified_ = false;
};

// Emits a tree as NFA instructions. Recursion follows the tree, whose depth
// the parser bounded; the program size is checked at every instruction, so
// nested counted repeats cannot blow up.
class Compiler {
 public:
  Compiler(std::vector<PathRegex::Inst>& prog, const Parser& parser) : prog_(prog), parser_(parser) {}

  void emit(const Node& n) {
    using I = PathRegex::Inst;
    switch (n.kind) {
      case Node::kSet: push({I::kByteSet, n.set, 0}); return;
      case Node::kBegin: push({I::kAssertBegin, 0, 0}); return;
      case Node::kEnd: push({I::kAssertEnd, 0, 0}); return;
      case Node::kEndOfString: push({I::kAssertEndOfString, 0, 0}); return;
      case Node::kConcat:
        for (const Node& k : n.kids) emit(k);
        return;
      case Node::kAlt: {
        // split L1, next; L1: a; jmp end; next: split L2, next2; ...
        std::vector<int> jumps;
        for (size_t i = 0; i < n.kids.size(); ++i) {
          int split = -1;
          if (i + 1 < n.kids.size()) split = push({I::kSplit, 0, 0});
          if (split >= 0) prog_[split].x = here();
          emit(n.kids[i]);
          if (i + 1 < n.kids.size()) {
            jumps.push_back(push({I::kJump, 0, 0}));
            prog_[split].y = here();
          }
        }
        for (int j : jumps) prog_[j].x = here();
        return;
      }
      case Node::kRepeat: {
        const Node& body = n.kids[0];
        for (int i = 0; i < n.min; ++i) emit(body);
        if (n.max == kUnbounded) {  // L: split body, out; body; jmp L
          const int loop = push({I::kSplit, 0, 0});
          prog_[loop].x = here();
          emit(body);
          push({I::kJump, loop, 0});
          prog_[loop].y = here();
        } else {  // (body (body ...)?)? : each optional copy may stop the run
          std::vector<int> splits;
          for (int i = n.min; i < n.max; ++i) {
            const int s = push({I::kSplit, 0, 0});
            splits.push_back(s);
            prog_[s].x = here();
            emit(body);
          }
          for (int s : splits) prog_[s].y = here();
        }
        return;
      }
    }
  }

  int push(const PathRegex::Inst& inst) {
    if (prog_.size() >= PathRegex::kMaxStates)
      parser_.fail("pattern too large (more than " + std::to_string(PathRegex::kMaxStates) +
                       " NFA states after expanding repeats)",
                   0);
    prog_.push_back(inst);
    return static_cast<int>(prog_.size()) - 1;
  }
  int here() const { return static_cast<int>(prog_.size()); }

 private:
  std::vector<PathRegex::Inst>& prog_;
  const Parser& parser_;
};

}  // namespace

PathRegex::PathRegex(const std::string& pattern, const std::string& field) {
  Parser parser(pattern, sets_, field);
  if (pattern.size() > kMaxPatternBytes)
    parser.fail("pattern longer than " + std::to_string(kMaxPatternBytes) + " bytes", kMaxPatternBytes);
  const Node tree = parser.parse();
  Compiler compiler(prog_, parser);
  compiler.emit(tree);
  compiler.push({Inst::kMatch, 0, 0});
}

bool PathRegex::full_match(const std::string& text) const { return run(text, true); }
bool PathRegex::match(const std::string& text) const { return run(text, false); }

// The threads alive before byte `pos` are a set of program counters, each a
// kByteSet or kMatch (the epsilon moves are followed when a thread is added).
bool PathRegex::run(const std::string& text, bool whole) const {
  const size_t n = text.size();
  const size_t states = prog_.size();
  std::vector<int> current, next, stack;
  std::vector<size_t> seen(states, static_cast<size_t>(-1));  // the step that last added each pc
  size_t step = 0;

  // Adds pc and everything reachable from it without consuming a byte, at position pos.
  auto add = [&](std::vector<int>& list, int start, size_t pos) {
    stack.push_back(start);
    while (!stack.empty()) {
      const int pc = stack.back();
      stack.pop_back();
      if (seen[static_cast<size_t>(pc)] == step) continue;
      seen[static_cast<size_t>(pc)] = step;
      const Inst& in = prog_[static_cast<size_t>(pc)];
      switch (in.op) {
        case Inst::kJump: stack.push_back(in.x); break;
        case Inst::kSplit: stack.push_back(in.y); stack.push_back(in.x); break;
        case Inst::kAssertBegin: if (pos == 0) stack.push_back(pc + 1); break;
        case Inst::kAssertEnd:  // Python's $: the end, or just before a final newline
          if (pos == n || (pos + 1 == n && text[pos] == '\n')) stack.push_back(pc + 1);
          break;
        case Inst::kAssertEndOfString: if (pos == n) stack.push_back(pc + 1); break;
        case Inst::kByteSet:
        case Inst::kMatch: list.push_back(pc); break;
      }
    }
  };

  add(current, 0, 0);
  for (size_t pos = 0;; ++pos) {
    bool matched = false;
    for (int pc : current) matched |= prog_[static_cast<size_t>(pc)].op == Inst::kMatch;
    if (matched && (!whole || pos == n)) return true;
    if (pos == n || current.empty()) return false;
    ++step;
    next.clear();
    const unsigned char byte = static_cast<unsigned char>(text[pos]);
    for (int pc : current) {
      const Inst& in = prog_[static_cast<size_t>(pc)];
      if (in.op == Inst::kByteSet && sets_[static_cast<size_t>(in.x)][byte]) add(next, pc + 1, pos + 1);
    }
    current.swap(next);
  }
}

}  // namespace loragrad::lora

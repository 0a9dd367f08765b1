#pragma once
// The command-line parser of every loragrad program (the `loragrad`
// subcommands, the demo): each declares its flags (with a help line), parses
// argv, then reads typed values.
//
//   Args a("finetune", "adapt a checkpoint to new text");  // loragrad finetune ...
//   Args d("demo", "...", "");                              // a program of its own: demo ...
//   a.option("--r", "N", "LoRA rank", "8");
//   a.flag("--force", "replace an existing --out");
//   if (!a.parse(argc, argv)) return 0;       // --help was printed
//   int64_t r = a.integer("--r", 1, 4096);    // UsageError unless 1 <= r <= 4096
//
// Values come as "--r 8" or "--r=8"; a value may not start with "--" (so
// "--steps --quiet" is a missing value). A flag whose metavar names a path
// (FILE, DIR, CKPT, OUT) may not be given an empty value. Every mistake is a
// UsageError whose message is one line; the caller prints it and exits with
// status 2.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace loragrad::app {

// A command-line mistake: exit status 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Args {
 public:
  // `program` "loragrad" and command "finetune": usage "loragrad finetune [flags]";
  // program "" and command "demo": a program of its own, "demo [flags]".
  Args(std::string command, std::string summary, std::string program = "loragrad");

  // A flag with a value. default_value "" means "no default" (has() is false
  // until given); it is shown in --help otherwise.
  void option(const std::string& name, const std::string& metavar, const std::string& help,
              const std::string& default_value = "");
  // A flag with a value that may be given several times (all() has every value, in order).
  void repeatable(const std::string& name, const std::string& metavar, const std::string& help);
  // A flag without a value.
  void flag(const std::string& name, const std::string& help);
  // Free text appended to --help (examples, notes).
  void epilog(const std::string& text) { epilog_ = text; }

  // Parses argv[first..argc) (first: 2 after "loragrad COMMAND", 1 for a
  // program of its own). Prints usage() and returns false on --help.
  bool parse(int argc, char** argv, int first = 2);

  bool has(const std::string& name) const;   // given on the command line, or has a default
  bool given(const std::string& name) const; // given on the command line
  bool is_set(const std::string& name) const;  // a flag without value was given
  std::string str(const std::string& name) const;  // UsageError "--x is required" when absent
  int64_t integer(const std::string& name, int64_t lo, int64_t hi) const;
  // A finite number in [lo, hi] (hi_open: [lo, hi)).
  double real(const std::string& name, double lo, double hi, bool hi_open = false) const;
  // A comma-separated list, each entry non-empty.
  std::vector<std::string> list(const std::string& name) const;
  // Every value given to a flag, in command-line order (empty when not given).
  std::vector<std::string> all(const std::string& name) const;

  std::string usage() const;

 private:
  struct Spec {
    std::string name, metavar, help, default_value;
    bool takes_value = true;
    bool repeatable = false;
  };
  const Spec* find(const std::string& name) const;
  const Spec& spec(const std::string& name) const;

  std::string invocation() const;  // "loragrad finetune", or "demo"

  std::string command_, summary_, program_, epilog_;
  std::vector<Spec> specs_;
  std::vector<std::pair<std::string, std::string>> values_;  // given on the command line
};

}  // namespace loragrad::app

// loragrad: pretrain a TinyGPT, adapt it with LoRA / LoRA+ / DoRA / QLoRA,
// and use the result, from the command line.
//
//   loragrad pretrain --domain stories --out base.safetensors
//   loragrad finetune --base base.safetensors --data my.txt --method lora --out my_adapter
//   loragrad generate --base base.safetensors --adapter my_adapter --prompt "Once"
//
// Exit status: 0 done, 1 a runtime error (a file that cannot be read, an
// output that exists), 2 a command-line mistake. Every error is one line on
// stderr starting with "loragrad: ".
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>

#include "args.hpp"
#include "common.hpp"
#include "loragrad/parallel.hpp"
#include "loragrad/error.hpp"

using namespace loragrad::cli;

namespace {

struct Command {
  const char* name;
  int (*run)(int, char**);
  const char* summary;
};

const Command kCommands[] = {
    {"pretrain", run_pretrain, "train a TinyGPT from scratch and write a checkpoint"},
    {"finetune", run_finetune, "adapt a checkpoint to a text (full, lora, loraplus, dora, qlora)"},
    {"generate", run_generate, "sample text from a checkpoint, optionally with an adapter"},
    {"info", run_info, "parameter and memory table of a checkpoint and adapter"},
    {"eval", run_eval, "mean loss on a text file (nats/byte), or dump logits"},
    {"merge", run_merge, "merge an adapter into its base: a standalone checkpoint"},
    {"gradcheck", run_gradcheck, "float64 gradient check of LoRA on a TinyGPT and some ops"},
};

void print_usage(std::ostream& os) {
  os << "usage: loragrad COMMAND [flags]   (loragrad COMMAND --help for its flags)\n\ncommands:\n";
  for (const Command& c : kCommands) {
    std::string name = c.name;
    name.resize(12, ' ');
    os << "  " << name << c.summary << "\n";
  }
}

// One line: newlines inside a message become "; ", other control bytes \xHH.
std::string one_line(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  std::string out;
  for (char c : s) {
    if (c == '\n') out += "; ";
    else out += c;
  }
  return loragrad::printable(out);  // file text inside a message: no raw control bytes or invalid UTF-8
}


}  // namespace

int main(int argc, char** argv) {
  loragrad::prefer_passive_openmp_threads(argv);  // see parallel.hpp
  if (argc < 2) {
    print_usage(std::cerr);
    return 2;
  }
  const std::string cmd = argv[1];
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    print_usage(std::cout);
    return 0;
  }
  for (const Command& c : kCommands) {
    if (cmd != c.name) continue;
    try {
      return c.run(argc, argv);
    } catch (const UsageError& e) {
      std::cerr << "loragrad: " << one_line(e.what()) << "\n";
      return 2;
    } catch (const loragrad::Error& e) {
      std::cerr << "loragrad: " << cmd << ": " << one_line(e.what()) << "\n";
      return 1;
    } catch (const std::exception& e) {
      std::cerr << "loragrad: " << cmd << ": " << one_line(e.what()) << "\n";
      return 1;
    }
  }
  std::cerr << "loragrad: unknown command '" << cmd << "' (commands: pretrain, finetune, generate, info, eval, merge, "
            << "gradcheck; see loragrad --help)\n";
  return 2;
}

// loragrad: pretrain a TinyGPT, adapt it with LoRA / LoRA+ / DoRA / QLoRA,
// and use the result, from the command line.
//
//   loragrad pretrain --domain stories --out base.safetensors
//   loragrad finetune --base base.safetensors --data my.txt --method lora --out my_adapter
//   loragrad generate --base base.safetensors --adapter my_adapter --prompt "Once"
//
//   loragrad --version
//
// Exit status: 0 done, 1 a runtime error (a file that cannot be read, an
// output that exists), 2 a command-line mistake. Every error is one line on
// stderr starting with "loragrad: ".
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>

#include "common.hpp"
#include "loragrad/error.hpp"
#include "loragrad/kernels/gemm_bf16.hpp"
#include "loragrad/kernels/isa.hpp"
#include "loragrad/version.hpp"

// LORAGRAD_VERSION (loragrad/version.hpp) comes from the top-level
// CMakeLists' project(VERSION): the one place it is written.

using namespace loragrad::cli;

namespace {

// loragrad version (also loragrad --version): "loragrad X.Y.Z", the
// instruction set the kernels were compiled for, and the bf16 GEMM kernel this
// CPU gets (or LORAGRAD_BF16_KERNEL names).
int run_version(int argc, char** argv) {
  Args a("version",
         "Print the version: \"loragrad X.Y.Z\", then the instruction set of the kernels and the bf16 GEMM "
         "kernel this CPU runs (amx, avx512_bf16 or fp32; LORAGRAD_BF16_KERNEL overrides it) (also: loragrad --version).");
  if (!a.parse(argc, argv)) return 0;
  // First, so that a bad LORAGRAD_BF16_KERNEL fails before anything is printed.
  const std::string bf16 = loragrad::kernels::bf16_kernel();
  std::cout << "loragrad " << LORAGRAD_VERSION << "\n";
  std::cout << "kernels: " << loragrad::kernels::compiled_isa() << "\n";
  std::cout << "bf16 kernel: " << bf16 << "\n";
  return 0;
}

struct Command {
  const char* name;
  int (*run)(int, char**);
  const char* summary;
};

const Command kCommands[] = {
    {"pretrain", run_pretrain, "train a TinyGPT from scratch and write a checkpoint"},
    {"finetune", run_finetune, "adapt a checkpoint to a text (full, lora, loraplus, dora, qlora)"},
    {"generate", run_generate, "sample text from a checkpoint, optionally with an adapter"},
    {"info", run_info, "parameter and memory table of a checkpoint and adapter (--json: as JSON)"},
    {"eval", run_eval, "mean loss on a text file (nats/byte), or dump logits"},
    {"merge", run_merge, "merge an adapter into its base: a standalone checkpoint"},
    {"gradcheck", run_gradcheck, "float64 gradient check of LoRA on a TinyGPT and some ops"},
    {"bench", run_bench, "time the training step on the reference workload (ms, GFLOP/s, % of FMA peak)"},
    {"version", run_version, "print the version (also: loragrad --version)"},
};

void print_usage(std::ostream& os) {
  os << "usage: loragrad COMMAND [flags]   (loragrad COMMAND --help for its flags)\n"
     << "       loragrad --version\n\ncommands:\n";
  for (const Command& c : kCommands) {
    std::string name = c.name;
    name.resize(12, ' ');
    os << "  " << name << c.summary << "\n";
  }
}

// "pretrain, finetune, ..., version"
std::string command_names() {
  std::string out;
  for (const Command& c : kCommands) out += (out.empty() ? "" : ", ") + std::string(c.name);
  return out;
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

// A command's output must have reached stdout (a full disk, a closed pipe):
// otherwise the run failed, whatever the command returned.
int finish(const std::string& cmd, int status) {
  std::cout.flush();
  if (std::cout) return status;
  const int err = errno;
  std::cerr << "loragrad: " << cmd << ": cannot write to standard output" << (err ? ": " : "")
            << (err ? std::strerror(err) : "") << "\n";
  return status == 0 ? 1 : status;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "loragrad: give a command (" << command_names() << "; see loragrad --help)\n";
    return 2;
  }
  std::string cmd = argv[1];
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    if (argc > 2) {
      std::cerr << "loragrad: unexpected argument '" << one_line(argv[2]) << "' after " << cmd
                << " (see loragrad COMMAND --help)\n";
      return 2;
    }
    print_usage(std::cout);
    return finish(cmd, 0);
  }
  if (cmd == "--version") cmd = "version";
  for (const Command& c : kCommands) {
    if (cmd != c.name) continue;
    try {
      return finish(cmd, c.run(argc, argv));
    } catch (const UsageError& e) {
      // "loragrad: COMMAND: ...", whether or not the thrower named the command.
      const std::string msg = one_line(e.what());
      std::cerr << "loragrad: " << (msg.rfind(cmd + ": ", 0) == 0 ? "" : cmd + ": ") << msg << "\n";
      return 2;
    } catch (const loragrad::Error& e) {
      std::cerr << "loragrad: " << cmd << ": " << one_line(e.what()) << "\n";
      return 1;
    } catch (const std::exception& e) {
      std::cerr << "loragrad: " << cmd << ": " << one_line(e.what()) << "\n";
      return 1;
    }
  }
  if (cmd.rfind("-", 0) == 0)
    std::cerr << "loragrad: unknown flag '" << one_line(cmd) << "' before the command (flags follow the command: "
              << "loragrad COMMAND --flag; see loragrad --help)\n";
  else
    std::cerr << "loragrad: unknown command '" << one_line(cmd) << "' (commands: " << command_names()
              << "; see loragrad --help)\n";
  return 2;
}

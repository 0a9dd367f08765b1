#pragma once
// What several loragrad subcommands share: loading a checkpoint (and an
// adapter), refusing to overwrite, formatting.
#include <cstdint>
#include <memory>
#include <string>

#include "loragrad/app/args.hpp"
#include "loragrad/format.hpp"
#include "loragrad/data/byte_dataset.hpp"
#include "loragrad/nn/tiny_gpt.hpp"

namespace loragrad::cli {

using app::Args;
using app::UsageError;

// Each subcommand: argv[1] is its name; returns the exit status.
int run_pretrain(int argc, char** argv);
int run_finetune(int argc, char** argv);
int run_generate(int argc, char** argv);
int run_info(int argc, char** argv);
int run_eval(int argc, char** argv);
int run_merge(int argc, char** argv);
int run_gradcheck(int argc, char** argv);
int run_bench(int argc, char** argv);

// IOError unless `path` can be written: it must not exist unless force.
void check_can_write(const std::string& path, bool force, const std::string& flag);
// IOError naming the flag and path unless it is an existing regular file / directory.
void check_file(const std::string& path, const std::string& flag);
void check_dir(const std::string& path, const std::string& flag);
// check_dir, then: the directory must hold adapter_config.json. When it does
// not but holds named adapters (finetune --adapter-name NAME writes
// OUT/NAME/, as PEFT's save_pretrained does), the IOError names them.
void check_adapter_dir(const std::string& path, const std::string& flag);

// A TinyGPT checkpoint, in eval mode.
std::shared_ptr<nn::TinyGPT> load_checkpoint(const std::string& path);
// --base CKPT, plus --adapter DIR when given (frozen: for inference).
std::shared_ptr<nn::TinyGPT> load_model(const Args& a);

// Threads from --threads (0 or absent: the default, thread_pool.hpp's num_threads()).
void set_threads(const Args& a);

// Bytes a terminal should not interpret become '?'.
std::string terminal_safe(const std::string& s);

}  // namespace loragrad::cli

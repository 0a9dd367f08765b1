#pragma once
// Data named on the command line, for training and for eval: a file (plain
// text, or instruction examples when its name ends in .jsonl) or a built-in
// domain (three generated corpora and one instruction task).
#include <cstdint>
#include <memory>
#include <string>

#include "loragrad/data/instruction_dataset.hpp"
#include "loragrad/data/source.hpp"

namespace loragrad::cli {

// For messages and --help.
constexpr const char* kDomainNames = "stories|recipes|code|recipe-qa";

// --data FILE: a ByteDataset, or an InstructionDataset for FILE.jsonl (split
// by examples: the last `fraction` of them validate). IOError naming `flag`
// and the file (and the line, for JSONL) on bad input.
std::unique_ptr<data::Source> file_source(const std::string& path, double fraction, const std::string& flag);

// --domain NAME: 512 KiB of a corpus (stories, recipes, code) or 4000
// recipe-qa examples, generated from `seed`. UsageError naming `flag` for
// an unknown name.
std::unique_ptr<data::Source> builtin_source(const std::string& name, uint64_t seed, double fraction,
                                             const std::string& flag);

// The InstructionDataset behind a source (a MixedSource's primary), or null for text.
const data::InstructionDataset* instructions_of(const data::Source* s);

// One split, for the log: "12,345 bytes" or "120 examples, 9,000 response bytes scored, 3 truncated".
std::string describe(const data::Source& s, data::Split split, int64_t seq);

}  // namespace loragrad::cli

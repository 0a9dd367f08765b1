#include "data_sources.hpp"

#include "common.hpp"
#include "loragrad/data/byte_dataset.hpp"
#include "loragrad/data/corpus.hpp"
#include "loragrad/data/instruction_dataset.hpp"
#include "loragrad/data/mixed_source.hpp"

namespace loragrad::cli {

std::unique_ptr<data::Source> file_source(const std::string& path, double fraction, const std::string& flag) {
  check_file(path, flag);
  if (data::is_jsonl_path(path))
    return std::make_unique<data::InstructionDataset>(data::InstructionDataset::from_file(path, fraction));
  return std::make_unique<data::ByteDataset>(data::ByteDataset::from_file(path, fraction));
}

std::unique_ptr<data::Source> builtin_source(const std::string& name, uint64_t seed, double fraction,
                                             const std::string& flag) {
  if (name == "recipe-qa")
    return std::make_unique<data::InstructionDataset>(data::recipe_questions(4000, seed), fraction);
  if (name != "stories" && name != "recipes" && name != "code")
    throw UsageError(flag + " must be stories, recipes, code or recipe-qa, got '" + name + "'");
  return std::make_unique<data::ByteDataset>(data::builtin_corpus(data::parse_domain(name), size_t{512} << 10, seed),
                                             fraction);
}

const data::InstructionDataset* instructions_of(const data::Source* s) {
  if (const auto* m = dynamic_cast<const data::MixedSource*>(s)) return instructions_of(&m->primary());
  return dynamic_cast<const data::InstructionDataset*>(s);
}

std::string describe(const data::Source& s, data::Split split, int64_t seq) {
  if (const auto* ins = instructions_of(&s)) return ins->stats(split, seq).str();
  return with_commas(s.size(split)) + " bytes";
}

}  // namespace loragrad::cli

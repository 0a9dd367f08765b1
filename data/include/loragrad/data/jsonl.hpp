#pragma once
// Instruction data as JSON Lines: one {"prompt": "...", "response": "..."}
// object per line (other keys are ignored; blank lines are skipped).
//
// A string may hold any bytes: invalid UTF-8 (a byte model does not care)
// is taken byte for byte rather than refused, which a JSON parser would do.
// Every other mistake is an IOError naming the file and the line:
//   "data.jsonl:7: missing key \"response\""
//   "data.jsonl:9: key \"prompt\" must be a string, got number"
//   "data.jsonl:3: invalid JSON: ... at column 12"
#include <string>
#include <string_view>
#include <vector>

namespace loragrad::data {

struct Example {
  std::string prompt;    // context the model reads and is not trained to write
  std::string response;  // what the loss is measured on
};

// The examples of a JSONL text; `path` names the file in messages. IOError
// on an empty text (or one of blank lines only).
std::vector<Example> parse_jsonl(std::string_view text, const std::string& path);
// The examples of a file; IOError naming the path when it cannot be read.
std::vector<Example> read_jsonl(const std::string& path);

// A path that names JSON Lines instruction data: it ends with ".jsonl".
bool is_jsonl_path(const std::string& path);

}  // namespace loragrad::data

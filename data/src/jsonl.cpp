// JSON Lines instruction data: nlohmann::json per line, with invalid UTF-8 kept as bytes.
#include "loragrad/data/jsonl.hpp"

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "loragrad/error.hpp"

namespace loragrad::data {

namespace {

using json = nlohmann::json;

// Length of the valid UTF-8 sequence at s[i] (RFC 3629: no overlong forms,
// no surrogates, nothing above U+10FFFF), or 0 when s[i] does not start one.
size_t utf8_length(std::string_view s, size_t i) {
  const auto at = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = at(i);
  if (c < 0x80) return 1;
  size_t n = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // the range of the second byte
  if (c >= 0xC2 && c <= 0xDF) n = 2;
  else if (c == 0xE0) n = 3, lo = 0xA0;
  else if (c >= 0xE1 && c <= 0xEC) n = 3;
  else if (c == 0xED) n = 3, hi = 0x9F;
  else if (c >= 0xEE && c <= 0xEF) n = 3;
  else if (c == 0xF0) n = 4, lo = 0x90;
  else if (c >= 0xF1 && c <= 0xF3) n = 4;
  else if (c == 0xF4) n = 4, hi = 0x8F;
  else return 0;
  if (i + n > s.size() || at(i + 1) < lo || at(i + 1) > hi) return 0;
  for (size_t k = 2; k < n; ++k)
    if (at(i + k) < 0x80 || at(i + k) > 0xBF) return 0;
  return n;
}

// An invalid byte b (0x80..0xFF) travels through the JSON parser as the
// private-use code point U+10FF00 + b, UTF-8 F4 8F BE|BF xx, and is turned
// back into b afterwards. A line that holds those code points itself is
// refused rather than misread (it is only done for lines with invalid UTF-8).
constexpr unsigned char kMarker0 = 0xF4, kMarker1 = 0x8F;

bool is_marker(std::string_view s, size_t i) {
  return i + 4 <= s.size() && static_cast<unsigned char>(s[i]) == kMarker0 &&
         static_cast<unsigned char>(s[i + 1]) == kMarker1 &&
         (static_cast<unsigned char>(s[i + 2]) == 0xBE || static_cast<unsigned char>(s[i + 2]) == 0xBF);
}

// The line with each invalid byte replaced by its marker; false when the line
// is valid UTF-8 (nothing to do).
bool mark_invalid_bytes(std::string_view line, std::string& out) {
  bool any = false;
  out.clear();
  for (size_t i = 0; i < line.size();) {
    const size_t n = utf8_length(line, i);
    if (n > 0) {
      out.append(line.substr(i, n));
      i += n;
      continue;
    }
    const unsigned char b = static_cast<unsigned char>(line[i++]);
    out += static_cast<char>(kMarker0);
    out += static_cast<char>(kMarker1);
    out += static_cast<char>(0xBE + ((b - 0x80) >> 6));
    out += static_cast<char>(0x80 + (b & 0x3F));
    any = true;
  }
  return any;
}

std::string unmark(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    if (is_marker(s, i)) {
      out += static_cast<char>(0x80 + ((static_cast<unsigned char>(s[i + 2]) - 0xBE) << 6) +
                               (static_cast<unsigned char>(s[i + 3]) & 0x3F));
      i += 4;
    } else {
      out += s[i++];
    }
  }
  return out;
}

const char* json_type(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
    case json::value_t::number_float: return "a number";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    default: return "a string";
  }
}

// The text of nlohmann's message after its "[json.exception.parse_error.N] " tag.
std::string parse_message(const json::exception& e) {
  const std::string what = e.what();
  const size_t close = what.find("] ");
  return printable(close == std::string::npos ? what : what.substr(close + 2));
}

}  // namespace

bool is_jsonl_path(const std::string& path) {
  const std::string ext = ".jsonl";
  return path.size() > ext.size() && path.compare(path.size() - ext.size(), ext.size(), ext) == 0;
}

std::vector<Example> parse_jsonl(std::string_view text, const std::string& path) {
  std::vector<Example> examples;
  std::string marked;
  size_t line_no = 0;
  for (size_t pos = 0; pos < text.size();) {
    const size_t end = std::min(text.find('\n', pos), text.size());
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);  // CRLF files
    if (line.find_first_not_of(" \t") == std::string_view::npos) continue;

    const std::string where = path + ":" + std::to_string(line_no) + ": ";
    const bool has_invalid = mark_invalid_bytes(line, marked);
    if (has_invalid)
      for (size_t i = 0; i < line.size(); ++i)
        if (is_marker(line, i))
          throw IOError(where + "holds both invalid UTF-8 and the code points U+10FF80..U+10FFFF, which loragrad "
                                "uses to carry invalid bytes through the JSON parser");
    json j;
    try {
      j = json::parse(has_invalid ? std::string_view(marked) : line);
    } catch (const json::exception& e) {
      // parse_error, and out_of_range for a number beyond double (1e400)
      throw IOError(where + "invalid JSON: " + parse_message(e));
    }
    if (!j.is_object()) throw IOError(where + "expected an object {\"prompt\": ..., \"response\": ...}, got " +
                                      std::string(json_type(j)));
    Example ex;
    for (const char* key : {"prompt", "response"}) {
      const auto it = j.find(key);
      if (it == j.end()) throw IOError(where + "missing key \"" + key + "\"");
      if (!it->is_string())
        throw IOError(where + "key \"" + key + "\" must be a string, got " + std::string(json_type(*it)));
      std::string value = it->get<std::string>();
      if (has_invalid) value = unmark(value);
      (std::string(key) == "prompt" ? ex.prompt : ex.response) = std::move(value);
    }
    if (ex.response.empty()) throw IOError(where + "key \"response\" is empty: the example has nothing to learn");
    examples.push_back(std::move(ex));
  }
  if (examples.empty()) throw IOError(path + ": no examples (an empty file, or only blank lines)");
  return examples;
}

std::vector<Example> read_jsonl(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IOError(path + ": cannot open");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw IOError(path + ": read error");
  return parse_jsonl(ss.str(), path);
}

}  // namespace loragrad::data

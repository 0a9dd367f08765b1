#pragma once
// A SAX handler for nlohmann::json that accepts every event and keeps the
// parse error's text: the base of the one-pass checks that readers of
// untrusted JSON run before building a value (duplicate keys in a
// safetensors header, which key a bad number belongs to in adapter_config.json).
#include <string>

#include <nlohmann/json.hpp>

namespace loragrad {

struct JsonSaxBase : nlohmann::json_sax<nlohmann::json> {
  std::string error;  // the parse error, if any

  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    error = e.what();
    return false;
  }
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return true; }
  bool end_object() override { return true; }
  bool key(string_t&) override { return true; }
  bool start_array(std::size_t) override { return true; }
  bool end_array() override { return true; }
};

}  // namespace loragrad
